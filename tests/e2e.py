"""
Helpers for the end-to-end tests, which run in the Twisted reactor against real
sockets and a real ``redis-server``: tokens, watching what reaches Redis and capturing the
service's log.

Blocking redis-py calls are fine here when they return at once; anything that waits
for Redis to *send* something polls without blocking, so the reactor keeps serving
the service under test.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import jwt
import treq
from twisted.logger import formatEvent, globalLogPublisher

from .waiting import eventually


def forge_token(
    secret: str,
    channel: str,
    client_id: str = "tester",
    expires_in: float | None = 3600,
    algorithm: str = "HS256",
    now: float | None = None,
    **claims: Any,
) -> str:
    """
    A JWT made outside the service, to try every way a token can be wrong: issued ``now``
    (the wall clock unless given), ``claims`` add to or replace the usual ones, and a
    claim given as None is left out.
    """
    issued = int(time.time() if now is None else now)
    body: dict[str, Any] = {"id": client_id, "channel": channel, "iat": issued}
    if expires_in is not None:
        body["exp"] = int(issued + expires_in)
    body.update(claims)
    body = {name: value for name, value in body.items() if value is not None}
    with warnings.catch_warnings():  # short keys for HS512 are the point of some tests
        warnings.simplefilter("ignore")
        return jwt.encode(body, secret if algorithm != "none" else None, algorithm=algorithm)


async def mint(base_url: str, channel: str, client_id: str | None = None, agent: Any = None) -> dict[str, Any]:
    """``POST /token`` and the decoded 200 answer."""
    post = agent.post if agent is not None else treq.post
    response = await post(
        base_url + "/token",
        json.dumps({"channel": channel, "id": client_id}).encode(),
        headers={"content-type": "application/json"},
    )
    body = await response.content()
    assert response.code == 200, body
    return json.loads(body)


class RedisListener:
    """``PSUBSCRIBE`` on the test's Redis (default ``from:*``): what the service published."""

    def __init__(self, client: Any, pattern: str = "from:*") -> None:
        # redis-py closes a client's connections when the client is collected: keep it
        self._client = client
        self._pubsub = client.pubsub()
        self._pubsub.psubscribe(pattern)
        # the subscription is confirmed before anything the test does next is published
        confirmation = self._pubsub.get_message(timeout=5.0)
        assert confirmation is not None and confirmation["type"] == "psubscribe", confirmation

    async def next(self, timeout: float = 5.0) -> tuple[bytes, bytes]:
        """The next ``(channel, data)`` published to a matching channel."""
        message = await eventually(lambda: self._pubsub.get_message(timeout=0), timeout, "a Redis message")
        return message["channel"], message["data"]

    async def until(self, channel: bytes, timeout: float = 5.0) -> bytes:
        """The data of the next message on ``channel``; messages on other channels are dropped."""
        while True:
            got, data = await self.next(timeout)
            if got == channel:
                return data

    def pending(self) -> list[tuple[bytes, bytes]]:
        """Messages already received, without waiting."""
        found = []
        while (message := self._pubsub.get_message(timeout=0)) is not None:
            found.append((message["channel"], message["data"]))
        return found

    def close(self) -> None:
        self._pubsub.close()


class RedisStream:
    """
    One raw connection to Redis that sends ``command`` (waiting for ``confirmed`` in the
    answer, if given) and is then read by a thread into ``seen`` until it ends: what
    arrived is kept even when a failover closes it.
    """

    def __init__(self, port: int, command: bytes, confirmed: bytes | None = None) -> None:
        self.seen = bytearray()
        self._socket = socket.create_connection(("127.0.0.1", port))
        self._socket.sendall(command)
        while confirmed is not None and confirmed not in self.seen:
            self.seen += self._socket.recv(65536)
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while True:
            try:
                chunk = self._socket.recv(65536)
            except OSError:
                return
            if not chunk:
                return
            self.seen += chunk

    def close(self) -> None:
        self._socket.close()
        self._thread.join(timeout=2)


class RedisMonitor(RedisStream):
    """Everything Redis executes (``MONITOR``), read by a thread into ``self.seen``."""

    def __init__(self, port: int) -> None:
        super().__init__(port, b"MONITOR\r\n")

    async def sync(self, client: Any) -> None:
        """Wait until every command Redis ran before this call has reached ``seen``."""
        marker = f"monitor-sync-{time.monotonic_ns()}"
        client.echo(marker)
        await eventually(lambda: marker.encode() in self.seen, what="MONITOR to catch up")


@contextmanager
def captured_log() -> Iterator[list[str]]:
    """Every log event of this process while inside, formatted, with its raw fields."""
    lines: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        lines.append(f"{formatEvent(event)} {event!r}")

    globalLogPublisher.addObserver(observe)
    try:
        yield lines
    finally:
        globalLogPublisher.removeObserver(observe)
