"""
A small Phoenix test client over Autobahn, for tests that run in the Twisted reactor.

Every frame received is queued; ``await client.next()`` takes the next one (decoded
JSON for text frames, raw bytes for binary frames), ``await client.reply(ref)`` waits for the
``phx_reply`` to one push, skipping others. ``client.raw`` keeps every frame as received
(bytes, is_binary), for tests about exact bytes. The client speaks the serializer named by
the URL's ``vsn`` (array frames, or objects for ``1.0.0``), and ``wss://`` with a given
trust root.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qs, urlsplit

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import defer, reactor
from twisted.internet.defer import DeferredQueue
from twisted.internet.endpoints import TCP4ClientEndpoint, wrapClientTLS
from twisted.internet.ssl import Certificate, optionsForClientTLS

V1 = "1.0.0"


def fields(frame: Any) -> tuple[Any, Any, Any, Any, Any]:
    """``(join_ref, ref, topic, event, payload)`` of a decoded text frame of either serializer."""
    if isinstance(frame, dict):
        return frame.get("join_ref"), frame.get("ref"), frame.get("topic"), frame.get("event"), frame.get("payload")
    if isinstance(frame, list) and len(frame) == 5:
        return tuple(frame)  # type: ignore[return-value]
    return None, None, None, None, None


def binary_push(join_ref: str | None, ref: str, topic: str, event: str, payload: bytes) -> bytes:
    """A client push in Phoenix's binary serializer (kind 0)."""
    header = [(join_ref or "").encode(), ref.encode(), topic.encode(), event.encode()]
    return bytes([0, *(len(h) for h in header)]) + b"".join(header) + payload


def binary_broadcast(topic: str, event: str, payload: bytes) -> bytes:
    """A server broadcast in Phoenix's binary serializer (kind 2), as the client should receive it."""
    return bytes([2, len(topic.encode()), len(event.encode())]) + topic.encode() + event.encode() + payload


class _Protocol(WebSocketClientProtocol):
    def onConnect(self, response: Any) -> None:
        self.factory.client.response = response

    def onOpen(self) -> None:
        self.factory.client.protocol = self
        self.factory.opened.callback(self.factory.client)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.factory.client.raw.append((payload, isBinary))
        self.factory.client.frames.put(payload if isBinary else json.loads(payload))

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        client = self.factory.client
        client.close_code = code
        if not self.factory.opened.called:
            self.factory.opened.errback(ConnectionError(f"handshake failed: {reason}"))
        if not client.closed.called:
            client.closed.callback(code)


class PhoenixTestClient:
    def __init__(self, vsn: str | None = None) -> None:
        self.vsn = vsn
        self.frames: DeferredQueue = DeferredQueue()
        self.raw: list[tuple[bytes, bool]] = []
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

    def send_message(self, join_ref: str | None, ref: str | None, topic: str, event: str, payload: Any) -> None:
        """One text frame in this client's serializer."""
        if self.vsn == V1:
            frame: Any = {"topic": topic, "event": event, "payload": payload, "ref": ref, "join_ref": join_ref}
        else:
            frame = [join_ref, ref, topic, event, payload]
        self.send_raw(json.dumps(frame))

    def push(self, topic: str, event: str, payload: Any, join_ref: str | None = None) -> str:
        ref = self.next_ref()
        self.send_message(join_ref, ref, topic, event, payload)
        return ref

    def push_binary(self, topic: str, event: str, payload: bytes, join_ref: str | None = None) -> str:
        ref = self.next_ref()
        self.send_raw(binary_push(join_ref, ref, topic, event, payload), binary=True)
        return ref

    def join(self, topic: str, token: str | None, join_ref: str | None = None, **payload: Any) -> str:
        ref = self.next_ref()
        join_ref = join_ref or ref
        body = dict(payload)
        if token is not None:
            body["token"] = token
        self.send_message(join_ref, ref, topic, "phx_join", body)
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
        return await self.until(lambda f: fields(f)[3] == "phx_reply" and fields(f)[1] == ref, timeout)

    def close(self) -> None:
        if self.protocol is not None:
            self.protocol.sendClose(1000)

    async def wait_closed(self, timeout: float = 5.0) -> int | None:
        """The close code once the connection is gone; fails after ``timeout``."""
        done: defer.Deferred[int | None] = defer.Deferred()

        def closed(code: int | None) -> int | None:
            if not done.called:
                done.callback(code)
            return code

        self.closed.addCallback(closed)
        done.addTimeout(timeout, reactor)
        return await done


async def connect(
    url: str,
    protocols: list[str] | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 5.0,
    trust: Certificate | None = None,
) -> PhoenixTestClient:
    """Open a WebSocket to ``url`` (ws:// or wss://host:port/path?query); ``trust`` is the CA for wss."""
    parts = urlsplit(url)
    factory = WebSocketClientFactory(url, protocols=protocols, headers=headers)
    factory.protocol = _Protocol
    factory.client = PhoenixTestClient(parse_qs(parts.query).get("vsn", [None])[0])
    factory.opened = defer.Deferred()
    factory.opened.addTimeout(timeout, reactor)
    endpoint = TCP4ClientEndpoint(reactor, parts.hostname, parts.port)
    if parts.scheme == "wss":
        endpoint = wrapClientTLS(optionsForClientTLS(parts.hostname, trustRoot=trust), endpoint)
    await endpoint.connect(factory)
    return await factory.opened
