"""
Long-poll sessions across processes: a session lives in the process that opened it, but
under ``workers = N`` the kernel hands each new connection to any worker, and a load
balancer without sticky sessions sends each request to any node, so a poll or a POST
may land on another process. Each process then also listens on a route port that serves
only the long-poll path (loopback, or ``longpoll_route_host``, an address the other
nodes reach); a session's token names that address, signed with the service's secret
(HMAC-SHA256, so a forged token cannot make a process connect anywhere else), and a
process that gets a request for another's session forwards it there and relays the
answer. Phoenix routes such requests through its PubSub; an HTTP hop is the same idea.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
from collections.abc import Callable
from typing import Any, cast

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IListeningPort
from twisted.python.failure import Failure
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool, IResponse, readBody
from twisted.web.http_headers import Headers
from twisted.web.server import NOT_DONE_YET, Request, Site

_MAC_BYTES = 16


class SessionRoutes:
    """Session tokens that name this process's route address, and the address a token names."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret
        self.address: tuple[str, int] | None = None  # until the route port listens: tokens name none

    def token(self, session_id: str) -> str:
        if self.address is None:
            return session_id
        host, port = self.address
        name = base64.urlsafe_b64encode(f"{host}:{port}".encode("utf-8")).decode("ascii").rstrip("=")
        route = f"{name}.{session_id}"
        return f"{route}.{self._mac(route)}"

    def elsewhere(self, token: str) -> tuple[str, int] | None:
        """The route address of the process holding the session of ``token``, if that is another process."""
        route, _, mac = token.rpartition(".")
        name, _, _ = route.partition(".")
        if not name or not hmac.compare_digest(mac, self._mac(route)):
            return None
        try:
            host, _, port = base64.urlsafe_b64decode(name + "=" * (-len(name) % 4)).decode("utf-8").rpartition(":")
        except (ValueError, UnicodeDecodeError):
            return None
        if not port.isdigit():
            return None
        owner = (host, int(port))
        return owner if owner != self.address else None

    def _mac(self, route: str) -> str:
        digest = hmac.new(self._secret, route.encode("utf-8"), hashlib.sha256).digest()[:_MAC_BYTES]
        return base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")


class Forwarder:
    """Relays a long-poll request to the process that holds its session, within ``timeout`` seconds."""

    def __init__(self, reactor: Any, timeout: float, report: Callable[[str], None]) -> None:
        self._reactor = reactor
        self._pool = HTTPConnectionPool(reactor, persistent=True)
        self._agent = Agent(reactor, pool=self._pool)
        self._timeout = timeout
        self._report = report  # rate-limited by the caller: a dead owner fails every poll of its sessions

    def close(self) -> Any:
        """Close the kept-alive connections to the other processes (at shutdown)."""
        return self._pool.closeCachedConnections()

    def forward(self, request: Request, owner: tuple[str, int], body: bytes) -> Any:
        query = request.uri.partition(b"?")[2]
        headers = Headers()
        for name in (b"content-type", b"x-phoenix-longpoll-token"):
            value = request.getHeader(name)
            if value is not None:
                headers.setRawHeaders(name, [value])
        producer = FileBodyProducer(io.BytesIO(body)) if request.method == b"POST" else None
        url = b"http://%s:%d/longpoll?%s" % (owner[0].encode("idna"), owner[1], query)
        d = self._agent.request(request.method, url, headers, producer)
        d.addCallback(lambda response: readBody(response).addCallback(lambda data: (response, data)))
        d.addTimeout(self._timeout, self._reactor)
        lost: list[Failure] = []
        d.addCallbacks(self._relay, self._gone, callbackArgs=(request, lost), errbackArgs=(request, lost))

        def client_gone(failure: Failure) -> None:  # so does the hop, and the owner sees its poll end
            lost.append(failure)
            d.cancel()

        request.notifyFinish().addErrback(client_gone)
        return NOT_DONE_YET

    def _relay(self, answer: tuple[IResponse, bytes], request: Request, lost: list[Failure]) -> None:
        response, data = answer
        if not lost:
            request.setResponseCode(response.code)
            finish_json(request, data)

    def _gone(self, failure: Failure, request: Request, lost: list[Failure]) -> None:
        """The owner did not answer (it stopped, or restarts): the session is gone, and phoenix.js opens another."""
        self._report(f"a long-poll request for a session of another process failed: {failure.getErrorMessage()}")
        if not lost:
            finish_json(request, b'{"status":410}')


def json_body(request: Request, body: bytes) -> bytes:
    """``body`` as a long-poll answer: JSON, never cached (the token rides in the URL)."""
    request.setHeader(b"content-type", b"application/json; charset=utf-8")
    request.setHeader(b"cache-control", b"no-store")
    return body


def finish_json(request: Request, body: bytes) -> None:
    """Answer a request that waited, with a length (not chunked), as a returned body would be."""
    request.setHeader(b"content-length", b"%d" % len(body))
    request.write(json_body(request, body))
    request.finish()


class RoutePort(Service):
    """This process's route port on ``host``, serving ``site`` (the long-poll path alone), named in its tokens."""

    def __init__(self, reactor: Any, routes: SessionRoutes, site: Site, host: str, forwarder: Forwarder) -> None:
        self._reactor = reactor
        self._routes = routes
        self._site = site
        self._host = host
        self._forwarder = forwarder  # whose connections to the other processes close with this port
        self._port: IListeningPort | None = None

    def startService(self) -> None:
        super().startService()
        self._port = self._reactor.listenTCP(0, self._site, interface=self._host)
        self._routes.address = (self._host, cast(IPv4Address, self._port.getHost()).port)

    def stopService(self) -> Any:
        super().stopService()
        port, self._port = self._port, None
        return defer.gatherResults([
            defer.maybeDeferred(port.stopListening) if port is not None else defer.succeed(None),
            defer.maybeDeferred(self._forwarder.close),
        ])
