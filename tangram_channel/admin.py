"""
``GET /admin``: the operator's console, one static page with no build step.

The page asks for an admin token, joins ``admin`` with a small Phoenix client of its
own, and keeps a table of channels and their agents from the admin events
(``channel.list``/``add``/``remove``/``join``/``leave``); this node's numbers come from
``/admin/stats`` (``console``), below the page's own path, so a proxy that serves the
page serves them. It holds no secret: without an admin token it shows nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib.resources import files

from twisted.web.resource import Resource
from twisted.web.server import Request

from .web import NotFound

# inline script and style only; the socket and /admin/stats on this origin
_POLICY = (
    b"default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    b"connect-src 'self' ws: wss:; form-action 'none'; frame-ancestors 'none'"
)


class AdminPage(Resource):
    """The page at ``/admin`` (and ``/admin/``), and the console's endpoints below it."""

    def __init__(self, endpoints: Mapping[bytes, Resource]) -> None:
        super().__init__()
        self._page = files(__package__).joinpath("admin.html").read_bytes()
        for name, endpoint in endpoints.items():
            self.putChild(name, endpoint)

    def getChild(self, path: bytes, request: Request) -> Resource:
        if path == b"" and not request.postpath:
            return self
        return NotFound()

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        request.setHeader(b"content-security-policy", _POLICY)
        request.setHeader(b"referrer-policy", b"no-referrer")
        request.setHeader(b"x-content-type-options", b"nosniff")
        return self._page

