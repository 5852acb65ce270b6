"""
A small Phoenix test client over Autobahn, for tests that run in the Twisted reactor.

Every frame received is queued; ``await client.next()`` takes the next one (decoded
JSON for text frames, raw bytes for binary frames), ``await client.reply(ref)`` waits for the
``phx_reply`` to one push, skipping others.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import defer, reactor
from twisted.internet.defer import DeferredQueue
from twisted.internet.endpoints import TCP4ClientEndpoint


class _Protocol(WebSocketClientProtocol):
    def onConnect(self, response: Any) -> None:
        self.factory.client.response = response

    def onOpen(self) -> None:
        self.factory.client.protocol = self
        self.factory.opened.callback(self.factory.client)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.factory.client.frames.put(payload if isBinary else json.loads(payload))

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        client = self.factory.client
        client.close_code = code
        if not self.factory.opened.called:
            self.factory.opened.errback(ConnectionError(f"handshake failed: {reason}"))
        if not client.closed.called:
            client.closed.callback(code)


class PhoenixTestClient:
    def __init__(self) -> None:
        self.frames: DeferredQueue = DeferredQueue()
        self.closed: defer.Deferred[int | None] = defer.Deferred()
        self.close_code: int | None = None
        self.protocol: Any = None
        self.response: Any = None
        self._ref = 0

    def next_ref(self) -> str:
        self._ref += 1
        return str(self._ref)

    def send_raw(self, data: bytes | str, binary: bool = False) -> None:
        self.protocol.sendMessage(data.encode() if isinstance(data, str) else data, binary)

    def push(self, topic: str, event: str, payload: Any, join_ref: str | None = None) -> str:
        ref = self.next_ref()
        self.send_raw(json.dumps([join_ref, ref, topic, event, payload]))
        return ref

    def join(self, topic: str, token: str | None, join_ref: str | None = None, **payload: Any) -> str:
        ref = self.next_ref()
        join_ref = join_ref or ref
        body = dict(payload)
        if token is not None:
            body["token"] = token
        self.send_raw(json.dumps([join_ref, ref, topic, "phx_join", body]))
        return ref

    async def next(self, timeout: float = 5.0) -> Any:
        d = self.frames.get()
        d.addTimeout(timeout, reactor)
        return await d

    async def until(self, predicate, timeout: float = 5.0) -> Any:
        """The next frame for which ``predicate(frame)`` holds; others are dropped."""
        while True:
            frame = await self.next(timeout)
            if predicate(frame):
                return frame

    async def reply(self, ref: str, timeout: float = 5.0) -> Any:
        return await self.until(lambda f: isinstance(f, list) and f[3] == "phx_reply" and f[1] == ref, timeout)

    def close(self) -> None:
        if self.protocol is not None:
            self.protocol.sendClose(1000)


async def connect(
    url: str, protocols: list[str] | None = None, headers: dict[str, str] | None = None, timeout: float = 5.0
) -> PhoenixTestClient:
    """Open a WebSocket to ``url`` (ws://host:port/path?query)."""
    parts = urlsplit(url)
    factory = WebSocketClientFactory(url, protocols=protocols, headers=headers)
    factory.protocol = _Protocol
    factory.client = PhoenixTestClient()
    factory.opened = defer.Deferred()
    factory.opened.addTimeout(timeout, reactor)
    await TCP4ClientEndpoint(reactor, parts.hostname, parts.port).connect(factory)
    return await factory.opened
