"""
``GET /admin``: the operator's console, one static page with no build step.

The page asks for an admin token, joins ``admin`` with a small Phoenix client of its
own, and keeps a table of channels and their agents from the admin events
(``channel.list``/``add``/``remove``/``join``/``leave``); message rates come from
``/metrics``. It holds no secret: without an admin token it shows nothing.
"""

from __future__ import annotations

from importlib.resources import files

from twisted.web.resource import Resource
from twisted.web.server import Request

# inline script and style only; the socket and /metrics on this origin
_POLICY = (
    b"default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    b"connect-src 'self' ws: wss:; form-action 'none'; frame-ancestors 'none'"
)


class AdminPage(Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self._page = files(__package__).joinpath("admin.html").read_bytes()

    def render_GET(self, request: Request) -> bytes:
        if request.postpath not in ([], [b""]):
            request.setResponseCode(404)
            request.setHeader(b"content-type", b"application/json")
            return b'{"error": "no such resource"}'
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        request.setHeader(b"content-security-policy", _POLICY)
        request.setHeader(b"referrer-policy", b"no-referrer")
        request.setHeader(b"x-content-type-options", b"nosniff")
        return self._page
