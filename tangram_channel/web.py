"""
The HTTP surface: one ``Site`` serving ``POST /token``, the WebSocket upgrade and its
long-poll fallback.

The socket answers at ``/websocket`` (Tangram's frontend: ``new Socket(baseUrl)``
appends ``/websocket``), ``/socket/websocket`` (Phoenix's default) and
``/websocket/websocket`` (``new Phoenix.Socket("/websocket")``); phoenix.js long-polls
the same path with ``longpoll`` for its last ``websocket``: ``/longpoll``,
``/socket/longpoll``, ``/websocket/longpoll`` (``longpoll.py``). Every response carries
CORS headers, and any ``OPTIONS`` preflight gets 204.
"""

from __future__ import annotations

import hmac
import io
import json
from collections.abc import Mapping
from typing import IO, Any, cast

from autobahn.twisted.resource import WebSocketResource
from twisted.internet.interfaces import IAddress, IDelayedCall
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.http import HTTPChannel
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request, Site

from . import frames
from .metrics import Metrics
from .longpoll import LongPollResource, LongPolls
from .peers import PeerConnections
from .pollroute import Forwarder
from .protocol import CONFORMANCE_PATH, PhoenixFactory
from .naming import is_admin_topic
from .tokens import TokenAuthority
from .logs import ThrottledLog

log = Logger()

# also the largest body any path but the long-poll one reads (an upgrade has none)
MAX_TOKEN_REQUEST = 64 * 1024


def is_longpoll_path(path: bytes) -> bool:
    """Whether a request target (query included) is one of the long-poll paths, whose bodies are frames."""
    return path.split(b"?", 1)[0].rstrip(b"/").endswith(b"/longpoll")


def _json_response(request: Request, code: int, body: dict[str, Any]) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json")
    return json.dumps(body).encode("utf-8")


def _error(request: Request, code: int, sentence: str) -> bytes:
    return _json_response(request, code, {"error": sentence})


class BodyRefused(Exception):
    """A request body that is not what the resource takes: the HTTP code and a sentence saying why."""

    def __init__(self, code: int, sentence: str) -> None:
        super().__init__(sentence)
        self.code = code
        self.sentence = sentence


def json_object(request: Request, example: str) -> dict[str, Any]:
    """The request's JSON object body (at most ``MAX_TOKEN_REQUEST`` bytes), or BodyRefused naming ``example``."""
    content_type = (request.getHeader("content-type") or "").split(";")[0].strip().lower()
    if content_type != "application/json":
        raise BodyRefused(415, "send the body as Content-Type: application/json")
    # twisted.web leaves Request.content (and .args) typed by their class default, None
    body = cast(IO[bytes], request.content).read(MAX_TOKEN_REQUEST + 1)
    if len(body) > MAX_TOKEN_REQUEST:
        raise BodyRefused(413, f"the body must be at most {MAX_TOKEN_REQUEST} bytes")
    try:
        fields = frames.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise BodyRefused(400, "the body is not valid JSON") from None
    if not isinstance(fields, dict):
        raise BodyRefused(422, f"the body must be a JSON object like {example}")
    return fields


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
        try:
            fields = json_object(request, '{"channel": "system"}')
        except BodyRefused as e:
            return _error(request, e.code, e.sentence)
        channel, client_id = fields.get("channel"), fields.get("id")
        if not isinstance(channel, str) or not channel:
            return _error(request, 422, '"channel" is required and must be a non-empty string')
        if client_id is not None and not isinstance(client_id, str):
            return _error(request, 422, '"id" must be a string or null')
        problem = self._tokens.claims_problem(channel, client_id)
        if problem is not None:
            return _error(request, 422, problem)
        if is_admin_topic(channel) and not self._admin_allowed(request):
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

    def __init__(
        self, factory: PhoenixFactory, allowed_origins: tuple[str, ...], peers: PeerConnections | None = None
    ) -> None:
        super().__init__()
        upgrades = factory if peers is None or not peers.limit else _CountedUpgrades(factory, peers)
        self._websocket = WebSocketResource(upgrades)
        self._allowed_origins = allowed_origins

    def render(self, request: Request) -> Any:
        if request.postpath not in ([], [b""], [b"websocket"]):
            return _error(request, 404, "no such resource")
        args = cast(dict[bytes, list[bytes]], request.args)
        vsn = args.get(b"vsn", [frames.V2.encode()])[0].decode("utf-8", "replace")
        if vsn not in frames.VERSIONS:
            return _error(request, 400, f"unsupported vsn {vsn[:40]!r}: use 2.0.0 or 1.0.0")
        origin = request.getHeader("origin")
        if "*" not in self._allowed_origins and origin not in self._allowed_origins:
            return _error(request, 403, "this Origin may not open a socket here")
        if (request.getHeader("upgrade") or "").lower() != "websocket":
            request.setHeader(b"upgrade", b"websocket")
            return _error(request, 426, "this is a WebSocket endpoint: connect with a WebSocket client")
        return self._websocket.render(request)


class _CountedUpgrades:
    """
    Builds the WebSocket protocols of ``factory``; each releases its peer's connection
    when it closes. An upgraded connection never tells its HTTP channel that it ended.
    """

    def __init__(self, factory: PhoenixFactory, peers: PeerConnections) -> None:
        self._factory = factory
        self._peers = peers

    def buildProtocol(self, addr: IAddress) -> Any:
        protocol = self._factory.buildProtocol(addr)
        host = getattr(addr, "host", None)
        if protocol is not None and host is not None:
            protocol.is_closed.addBoth(lambda _: self._peers.release(host))
        return protocol


class SocketPaths(Resource):
    """
    ``/websocket``: the socket itself, ``/websocket/websocket`` too, and
    ``/websocket/longpoll``, the long-poll path phoenix.js derives from the latter.
    """

    def __init__(self, socket: Resource, longpoll: Resource) -> None:
        super().__init__()
        self._socket = socket
        self._longpoll = longpoll

    def render(self, request: Request) -> Any:
        return self._socket.render(request)

    def getChild(self, path: bytes, request: Request) -> Resource:
        if path == b"longpoll":
            return self._longpoll
        if path in (b"", b"websocket"):
            return self._socket
        return NotFound()


class NotFound(Resource):
    isLeaf = True

    def render(self, request: Request) -> bytes:
        return _error(request, 404, "no such resource")


class Root(Resource):
    """The routes below; anything else is a JSON 404."""

    def getChild(self, path: bytes, request: Request) -> Resource:
        return NotFound()


def cors_headers(cors_origins: tuple[str, ...], origin: str | None) -> dict[bytes, bytes]:
    """The CORS headers of an answer to a request from ``origin``."""
    if "*" in cors_origins:
        return {b"access-control-allow-origin": b"*"}
    if origin in cors_origins:
        return {b"access-control-allow-origin": origin.encode("utf-8"), b"vary": b"Origin"}
    return {}


class CORSRequest(Request):
    """
    Adds CORS headers to every response and answers every preflight. Holds at most one
    byte more of a body than any resource accepts, however much is sent.
    """

    cors_origins: tuple[str, ...] = ("*",)
    body_size = 0
    body_limit = MAX_TOKEN_REQUEST

    @property
    def body_too_large(self) -> bool:
        return self.body_size > self.body_limit

    def gotLength(self, length: int | None) -> None:
        # twisted.web spools a body of unknown or large length to a temporary file
        self.content = io.BytesIO()  # type: ignore[assignment]  # declared by its default, None
        if isinstance(self.channel, GuardedHTTPChannel):  # not in tests' in-memory sites
            self.body_limit = self.channel.body_limit()

    def handleContentChunk(self, data: bytes) -> None:
        room = self.body_limit + 1 - self.body_size
        self.body_size += len(data)
        if room > 0:
            super().handleContentChunk(data[:room])

    def process(self) -> None:
        for name, value in cors_headers(self.cors_origins, self.getHeader("origin")).items():
            self.setHeader(name, value)
        if self.method == b"OPTIONS":
            self.setResponseCode(204)
            self.setHeader(b"access-control-allow-methods", b"GET, POST, OPTIONS")
            self.setHeader(
                b"access-control-allow-headers",
                b"Content-Type, Authorization, X-Phoenix-AuthToken, X-Phoenix-LongPoll-Token",
            )
            self.setHeader(b"access-control-max-age", b"86400")
            self.finish()
            return
        super().process()


class GuardedHTTPChannel(HTTPChannel):
    """
    twisted.web's channel with the bounds it lacks: a request head must arrive whole
    within ``site.request_head_timeout`` of its first byte (twisted.web only times out
    silence, which a byte every few seconds avoids), and a body larger than
    ``body_limit()`` is refused with 413 by its Content-Length before it is read, or as
    soon as a chunked one grows past it.
    """

    site: QuietSite
    peer_host: str | None = None
    _head_deadline: IDelayedCall | None = None
    _refused = False

    def dataReceived(self, data: bytes) -> None:
        if self._refused:
            return
        if self.line_mode and self._head_deadline is None:
            self._head_deadline = self.callLater(self.site.request_head_timeout, self._head_too_slow)
        super().dataReceived(data)

    def allHeadersReceived(self) -> None:
        self._cancel_head_deadline()
        if self.length is not None and self.length > self.body_limit():
            self._refuse_body()
            return
        super().allHeadersReceived()

    def rawDataReceived(self, data: bytes) -> None:
        super().rawDataReceived(data)
        receiving_body = self._transferDecoder is not None and not self._handlingRequest
        if receiving_body and self.requests[-1].body_too_large:
            self._refuse_body()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._cancel_head_deadline()
        if self.peer_host is not None:
            self.site.peers.release(self.peer_host)
        super().connectionLost(reason)

    def body_limit(self) -> int:
        """The largest body the request being read may have: a long-poll batch, or ``MAX_TOKEN_REQUEST``."""
        # the request target, kept by HTTPChannel from the request line until the request is built
        # (pinned by tests/test_http_limits.py)
        path: bytes = getattr(self, "_path", b"")
        return self.site.longpoll_body if is_longpoll_path(path) else MAX_TOKEN_REQUEST

    def _cancel_head_deadline(self) -> None:
        if self._head_deadline is not None and self._head_deadline.active():
            self._head_deadline.cancel()
        self._head_deadline = None

    def _head_too_slow(self) -> None:
        self._head_deadline = None
        self.site.refused("slow request head", "closed connections that sent a request head too slowly")
        self._refuse(408, "Request Timeout", "the request head took too long", {})

    def _refuse_body(self) -> None:
        self.site.refused("body too large", "refused request bodies over the limit")
        request = self.requests[-1]
        cors = cors_headers(request.cors_origins, request.getHeader("origin"))
        self._refuse(413, "Content Too Large", f"the body must be at most {self.body_limit()} bytes", cors)

    def _refuse(self, code: int, phrase: str, sentence: str, headers: dict[bytes, bytes]) -> None:
        """Answer ``code`` and close, reading nothing more (no request is in progress)."""
        self._refused = True
        body = json.dumps({"error": sentence}).encode("utf-8")
        head = [
            b"HTTP/1.1 %d %s" % (code, phrase.encode("ascii")),
            b"content-type: application/json",
            b"content-length: %d" % len(body),
            b"connection: close",
            *(name + b": " + value for name, value in headers.items()),
        ]
        assert self.transport is not None  # refusing what a connected client sent
        self.transport.write(b"\r\n".join(head) + b"\r\n\r\n" + body)
        self.loseConnection()


def make_site(
    *,
    factory: PhoenixFactory,
    tokens: TokenAuthority,
    admin_key: str | None = None,
    cors_origins: tuple[str, ...] = ("*",),
    allowed_origins: tuple[str, ...] = ("*",),
    conformance_echo: bool = False,
    routes: Mapping[bytes, IResource] | None = None,
    reactor: Any = None,
    request_head_timeout: float = 10.0,
    http_idle_timeout: float = 60.0,
    max_connections_per_ip: int = 0,
    metrics: Metrics | None = None,
    longpolls: LongPolls | None = None,
    forwarder: Forwarder | None = None,
) -> Site:
    """
    The Site; ``routes`` adds top-level resources (``/metrics``, ``/healthz``, ``/admin``);
    ``longpolls`` serves the long-poll paths (none without).
    """
    peers = PeerConnections(max_connections_per_ip)
    socket = SocketResource(factory, allowed_origins, peers)
    longpoll: Resource = NotFound()
    if longpolls is not None:
        longpoll = LongPollResource(
            factory=factory, polls=longpolls, allowed_origins=allowed_origins, forwarder=forwarder
        )
    root = Root()
    if conformance_echo:
        root.putChild(CONFORMANCE_PATH.strip("/").encode(), socket)
    root.putChild(b"token", TokenResource(tokens, admin_key))
    for path, resource in (routes or {}).items():
        root.putChild(path, resource)
    root.putChild(b"websocket", SocketPaths(socket, longpoll))
    root.putChild(b"longpoll", longpoll)
    phoenix_default = Root()
    phoenix_default.putChild(b"websocket", socket)
    phoenix_default.putChild(b"longpoll", longpoll)
    root.putChild(b"socket", phoenix_default)
    request_class = type("ConfiguredCORSRequest", (CORSRequest,), {"cors_origins": cors_origins})
    site = QuietSite(
        root, requestFactory=request_class, reactor=reactor, timeout=http_idle_timeout, peers=peers,
        request_head_timeout=request_head_timeout, metrics=metrics or Metrics(),
        longpoll_body=factory.max_message_size,
    )
    site.displayTracebacks = False
    site.noisy = False
    return site


def make_route_site(*, factory: PhoenixFactory, longpolls: LongPolls, reactor: Any, metrics: Metrics) -> Site:
    """
    A process's route site (``pollroute.RoutePort``): ``/longpoll`` alone, for the
    requests other processes forward, which they checked (Origin, vsn) before forwarding.
    """
    root = Root()
    root.putChild(
        b"longpoll", LongPollResource(factory=factory, polls=longpolls, allowed_origins=("*",), opens_sessions=False)
    )
    site = QuietSite(
        root, reactor=reactor, peers=PeerConnections(0), request_head_timeout=10.0, metrics=metrics,
        longpoll_body=factory.max_message_size,
    )
    site.displayTracebacks = False
    site.noisy = False
    return site


class QuietSite(Site):
    """
    A Site without an access log (its lines would carry ``?userToken=`` query strings),
    whose channels bound what a client may send, and that closes a connection at accept
    when its address already has ``peers.limit`` open.
    """

    # twisted.web types Site.protocol and buildProtocol by their default, a wrapper that
    # negotiates HTTP/2; this site builds its HTTP/1.1 GuardedHTTPChannel itself
    protocol = GuardedHTTPChannel  # type: ignore[assignment]

    def __init__(
        self,
        resource: Resource,
        *,
        peers: PeerConnections,
        request_head_timeout: float,
        metrics: Metrics,
        longpoll_body: int = MAX_TOKEN_REQUEST,
        **kwargs: Any,
    ) -> None:
        super().__init__(resource, **kwargs)
        self.longpoll_body = longpoll_body
        self.peers = peers
        self.request_head_timeout = request_head_timeout
        self._metrics = metrics
        self._refusals = ThrottledLog(log, self.reactor)

    def buildProtocol(self, addr: IAddress | None) -> GuardedHTTPChannel | None:  # type: ignore[override]
        host = getattr(addr, "host", None) if self.peers.limit else None
        if host is not None and not self.peers.admit(host):
            self.refused("connection cap", f"refused connections past max_connections_per_ip = {self.peers.limit}")
            return None
        channel = cast(GuardedHTTPChannel, super().buildProtocol(addr))
        channel.peer_host = host
        return channel

    def refused(self, reason: str, what: str) -> None:
        """Count a refusal; log one line a minute for each ``reason``, with how many were not."""
        self._metrics.http_refusals.labels(reason).inc()
        self._refusals.emit(reason, "{what}", level=LogLevel.info, what=what)

    def log(self, request: http.Request) -> None:
        pass
