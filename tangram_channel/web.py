"""
The HTTP surface: one ``Site`` serving ``POST /token`` and the WebSocket upgrade.

The socket answers at ``/websocket`` (Tangram's frontend: ``new Socket(baseUrl)``
appends ``/websocket``), ``/socket/websocket`` (Phoenix's default) and
``/websocket/websocket`` (``new Phoenix.Socket("/websocket")``). Every response carries
CORS headers, and any ``OPTIONS`` preflight gets 204.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Mapping
from typing import Any

from autobahn.twisted.resource import WebSocketResource
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from . import frames
from .protocol import CONFORMANCE_PATH, PhoenixFactory
from .tokens import TokenAuthority, is_admin_channel

MAX_TOKEN_REQUEST = 64 * 1024


def _json_response(request: Request, code: int, body: dict[str, Any]) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json")
    return json.dumps(body).encode("utf-8")


def _error(request: Request, code: int, sentence: str) -> bytes:
    return _json_response(request, code, {"error": sentence})


class TokenResource(Resource):
    """``POST /token {"channel", "id"}`` mints a join token (admin needs the admin key)."""

    isLeaf = True

    def __init__(self, tokens: TokenAuthority, admin_key: str | None) -> None:
        super().__init__()
        self._tokens = tokens
        self._admin_key = admin_key

    def render(self, request: Request) -> bytes:
        if request.method != b"POST":
            request.setHeader(b"allow", b"POST, OPTIONS")
            return _error(request, 405, "use POST with a JSON body")
        return self._mint(request)

    def _mint(self, request: Request) -> bytes:
        content_type = (request.getHeader("content-type") or "").split(";")[0].strip().lower()
        if content_type != "application/json":
            return _error(request, 415, "send the body as Content-Type: application/json")
        body = request.content.read(MAX_TOKEN_REQUEST + 1)
        if len(body) > MAX_TOKEN_REQUEST:
            return _error(request, 413, f"the body must be at most {MAX_TOKEN_REQUEST} bytes")
        try:
            fields = frames.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            return _error(request, 400, "the body is not valid JSON")
        if not isinstance(fields, dict):
            return _error(request, 422, 'the body must be a JSON object like {"channel": "system"}')
        channel, client_id = fields.get("channel"), fields.get("id")
        if not isinstance(channel, str) or not channel:
            return _error(request, 422, '"channel" is required and must be a non-empty string')
        if client_id is not None and not isinstance(client_id, str):
            return _error(request, 422, '"id" must be a string or null')
        problem = self._tokens.claims_problem(channel, client_id)
        if problem is not None:
            return _error(request, 422, problem)
        if is_admin_channel(channel) and not self._admin_allowed(request):
            if self._admin_key is None:
                return _error(request, 403, "admin tokens are minted with 'tangram-channel token --channel admin'")
            return _error(request, 403, "an admin token needs Authorization: Bearer <admin_key>")
        client_id, token = self._tokens.mint(channel, client_id)
        return _json_response(request, 200, {"channel": channel, "id": client_id, "token": token})

    def _admin_allowed(self, request: Request) -> bool:
        if self._admin_key is None:
            return False
        offered = (request.getHeader("authorization") or "").encode("utf-8")
        return hmac.compare_digest(offered, b"Bearer " + self._admin_key.encode("utf-8"))


class SocketResource(Resource):
    """
    The WebSocket upgrade, after the checks that deserve a clear HTTP answer:
    the serializer version and the Origin.
    """

    isLeaf = True

    def __init__(self, factory: PhoenixFactory, allowed_origins: tuple[str, ...]) -> None:
        super().__init__()
        self._websocket = WebSocketResource(factory)
        self._allowed_origins = allowed_origins

    def render(self, request: Request) -> Any:
        if request.postpath not in ([], [b""], [b"websocket"]):
            return _error(request, 404, "no such resource")
        vsn = request.args.get(b"vsn", [frames.V2.encode()])[0].decode("utf-8", "replace")
        if vsn not in frames.VERSIONS:
            return _error(request, 400, f"unsupported vsn {vsn[:40]!r}: use 2.0.0 or 1.0.0")
        origin = request.getHeader("origin")
        if "*" not in self._allowed_origins and origin not in self._allowed_origins:
            return _error(request, 403, "this Origin may not open a socket here")
        if (request.getHeader("upgrade") or "").lower() != "websocket":
            request.setHeader(b"upgrade", b"websocket")
            return _error(request, 426, "this is a WebSocket endpoint: connect with a WebSocket client")
        return self._websocket.render(request)


class NotFound(Resource):
    isLeaf = True

    def render(self, request: Request) -> bytes:
        return _error(request, 404, "no such resource")


class Root(Resource):
    """The routes below; anything else is a JSON 404."""

    def getChild(self, path: bytes, request: Request) -> Resource:
        return NotFound()


class CORSRequest(Request):
    """Adds CORS headers to every response and answers every preflight."""

    cors_origins: tuple[str, ...] = ("*",)

    def process(self) -> None:
        origin = self.getHeader("origin")
        if "*" in self.cors_origins:
            self.setHeader(b"access-control-allow-origin", b"*")
        elif origin in self.cors_origins:
            self.setHeader(b"access-control-allow-origin", origin.encode("utf-8"))
            self.setHeader(b"vary", b"Origin")
        if self.method == b"OPTIONS":
            self.setResponseCode(204)
            self.setHeader(b"access-control-allow-methods", b"GET, POST, OPTIONS")
            self.setHeader(b"access-control-allow-headers", b"Content-Type, Authorization")
            self.setHeader(b"access-control-max-age", b"86400")
            self.finish()
            return
        super().process()


def make_site(
    factory: PhoenixFactory,
    tokens: TokenAuthority,
    admin_key: str | None,
    cors_origins: tuple[str, ...],
    allowed_origins: tuple[str, ...],
    conformance_echo: bool = False,
    routes: Mapping[bytes, Resource] | None = None,
) -> Site:
    """The Site; ``routes`` adds top-level resources (``/metrics``, ``/healthz``, ``/admin``)."""
    socket = SocketResource(factory, allowed_origins)
    root = Root()
    if conformance_echo:
        root.putChild(CONFORMANCE_PATH.strip("/").encode(), socket)
    root.putChild(b"token", TokenResource(tokens, admin_key))
    for path, resource in (routes or {}).items():
        root.putChild(path, resource)
    root.putChild(b"websocket", socket)  # also /websocket/websocket: the resource is a leaf
    phoenix_default = Root()
    phoenix_default.putChild(b"websocket", socket)
    root.putChild(b"socket", phoenix_default)
    request_class = type("ConfiguredCORSRequest", (CORSRequest,), {"cors_origins": cors_origins})
    site = QuietSite(root, requestFactory=request_class)
    site.displayTracebacks = False
    site.noisy = False
    return site


class QuietSite(Site):
    """A Site without an access log: its lines would carry ``?userToken=`` query strings."""

    def log(self, request: Request) -> None:
        pass
