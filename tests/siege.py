"""
The two sides of the budget test, each run as its own process so that neither steals
the other's interpreter (``python -m tests.siege clients|attack ...``).

``clients``: N well-behaved Phoenix clients (raw sockets, see ``_Client``) join one
channel and heartbeat as phoenix.js does, while a plugin publishes stamped broadcasts
to it through Redis; each client notes every broadcast's latency. Prints ``ready``
once all are joined, waits for a line on stdin, publishes for the given time, then
prints one JSON summary.

``attack``: hostile sockets, one per behaviour of issue 13's points 1-3 and 16, each
reconnecting whenever the service closes it, until the time is up; prints what each
did as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
import threading
import time
from typing import Any

from .live import CLOSE, CONTINUATION, PING, PONG, TEXT, FrameParser, frame, token, upgrade_request

TOPIC = "siege"


# the well-behaved side


class _Client(asyncio.Protocol):
    """
    One well-behaved client on a raw socket, joining and heartbeating as phoenix.js does.
    Not the ``websockets`` library: 500 of them in one process spent tens of ms reading
    each broadcast's 500 frames, and the latencies measured that, not the service.
    """

    def __init__(self, index: int, latencies: list[float], joined: asyncio.Event, stats: dict[str, Any]) -> None:
        self.index = index
        self.latencies = latencies
        self.joined = joined
        self.stats = stats
        self.parser = FrameParser()
        self.head: bytes | None = b""  # the HTTP response head until the upgrade, then None
        self.close_code: int | str | None = None
        self.transport: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.transport.write(upgrade_request("/websocket?vsn=2.0.0"))

    def send(self, message: list[Any]) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(frame(TEXT, json.dumps(message).encode()))

    def data_received(self, data: bytes) -> None:
        now = time.time()
        if self.head is not None:
            self.head += data
            if b"\r\n\r\n" not in self.head:
                return
            head, _, data = self.head.partition(b"\r\n\r\n")
            self.head = None
            if not head.startswith(b"HTTP/1.1 101"):
                self.close_code = head.split(b"\r\n", 1)[0].decode()
                return
            self.send(["1", "1", TOPIC, "phx_join", {"token": token(TOPIC, f"good{self.index}")}])
        for _, opcode, payload in self.parser.feed(data):
            if opcode == PING:
                self.transport.write(frame(PONG, payload))
            elif opcode == CLOSE:
                self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None
            elif opcode == TEXT:
                join_ref, _, _, event, body = json.loads(payload)
                if event == "tick":
                    self.latencies.append(now - body["t"])
                    self.stats["ticks"][self.index] += 1
                elif event == "phx_reply" and join_ref == "1" and body["status"] == "ok":
                    self.stats["joined"] += 1
                    if self.stats["joined"] == self.stats["clients"]:
                        self.joined.set()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.stats["stopping"]:
            self.stats["closed"].append((self.index, self.close_code or "ended"))


async def _heartbeats(clients: list[_Client]) -> None:
    """Every 5 s, as phoenix.js does (well within the idle timeout)."""
    ref = 1
    while True:
        await asyncio.sleep(5)
        ref += 1
        for client in clients:
            client.send([None, str(ref), "phoenix", "heartbeat", {}])


async def _publish(redis_port: int, rate: float, duration: float) -> int:
    import redis.asyncio

    client = redis.asyncio.Redis(port=redis_port)
    sent = 0
    start = time.monotonic()
    try:
        while time.monotonic() - start < duration:
            sent += 1
            await client.publish(f"to:{TOPIC}:tick", json.dumps({"seq": sent, "t": time.time(), "pad": "x" * 150}))
            await asyncio.sleep(max(0.0, start + sent / rate - time.monotonic()))
    finally:
        await client.aclose()
    return sent


async def _clients(args: argparse.Namespace) -> dict[str, Any]:
    latencies: list[float] = []
    joined = asyncio.Event()
    stats: dict[str, Any] = {"clients": args.clients, "joined": 0, "ticks": [0] * args.clients, "closed": [],
                             "stopping": False}
    loop = asyncio.get_running_loop()
    clients = []
    for index in range(args.clients):
        _, client = await loop.create_connection(
            lambda index=index: _Client(index, latencies, joined, stats), "127.0.0.1", args.port
        )
        clients.append(client)
        if index % 50 == 49:
            await asyncio.sleep(0.05)  # as browsers arrive, not all in one instant
    beating = asyncio.ensure_future(_heartbeats(clients))
    await asyncio.wait_for(joined.wait(), 60)
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    published = await _publish(args.redis_port, args.rate, args.duration)
    deadline = time.monotonic() + 5
    while min(stats["ticks"]) < published and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    stats["stopping"] = True
    beating.cancel()
    for client in clients:
        if client.transport is not None:
            client.transport.close()
    latencies.sort()
    return {
        "published": published,
        "least_received": min(stats["ticks"]),
        "most_received": max(stats["ticks"]),
        "deliveries": len(latencies),
        "p50_ms": 1000 * latencies[len(latencies) // 2] if latencies else None,
        "p99_ms": 1000 * latencies[int(len(latencies) * 0.99)] if latencies else None,
        "max_ms": 1000 * latencies[-1] if latencies else None,
        "closed": stats["closed"],
    }


# the hostile side


class _Attacker(threading.Thread):
    """One hostile socket, reconnected whenever the service drops it, until ``deadline``."""

    def __init__(self, kind: str, port: int, deadline: float) -> None:
        super().__init__(daemon=True)
        self.kind = kind
        self.port = port
        self.deadline = deadline
        self.connections = 0
        self.sent = 0
        self.refused = 0

    def run(self) -> None:
        while time.monotonic() < self.deadline:
            try:
                sock = socket.create_connection(("127.0.0.1", self.port), timeout=2)
            except OSError:
                self.refused += 1
                time.sleep(0.05)
                continue
            self.connections += 1
            try:
                sock.settimeout(1)
                sock.sendall(upgrade_request("/websocket?vsn=2.0.0"))
                getattr(self, self.kind)(sock)
            except OSError:
                pass  # closed by the service, as it should: come back
            finally:
                sock.close()

    def _send(self, sock: socket.socket, data: bytes) -> None:
        try:
            sock.sendall(data)
            self.sent += len(data)
        except socket.timeout:
            pass  # the service stopped reading us: keep the socket, keep pushing

    def _json(self, value: Any) -> bytes:
        return frame(TEXT, json.dumps(value).encode())

    def big_joins(self, sock: socket.socket) -> None:
        """Point 1: joins with 400 KB join_refs, never reading what comes back."""
        n = 0
        while time.monotonic() < self.deadline:
            n += 1
            join_ref = f"{n}-" + "j" * 400_000
            self._send(sock, self._json([join_ref, str(n), TOPIC, "phx_join", {"token": token(TOPIC, f"bad{n}")}]))

    def pings(self, sock: socket.socket) -> None:
        """Point 2: 125-byte pings as fast as the socket takes them, never reading a pong."""
        ping = frame(PING, b"p" * 125) * 64
        while time.monotonic() < self.deadline:
            self._send(sock, ping)

    def big_pushes(self, sock: socket.socket) -> None:
        """Point 3: joined, then 878 KB pushes as fast as they go, never reading a reply."""
        sock.sendall(self._json(["1", "1", TOPIC, "phx_join", {"token": token(TOPIC, "pusher")}]))
        push = self._json(["1", "2", TOPIC, "flood", {"blob": "b" * 878_000}])
        while time.monotonic() < self.deadline:
            self._send(sock, push)

    def heartbeats(self, sock: socket.socket) -> None:
        """Point 16: heartbeats without end, never reading the replies."""
        beats = b"".join(self._json([None, str(i), "phoenix", "heartbeat", {}]) for i in range(200))
        while time.monotonic() < self.deadline:
            self._send(sock, beats)

    def fragments(self, sock: socket.socket) -> None:
        """Point 16: one message in one-byte fragments, without end."""
        self._send(sock, frame(TEXT, b"[", fin=False))
        more = frame(CONTINUATION, b" ", fin=False) * 1000
        while time.monotonic() < self.deadline:
            self._send(sock, more)


ATTACKS = ("big_joins", "pings", "big_pushes", "heartbeats", "fragments")


def _attack(args: argparse.Namespace) -> dict[str, Any]:
    deadline = time.monotonic() + args.duration
    attackers = [_Attacker(kind, args.port, deadline) for kind in ATTACKS]
    for attacker in attackers:
        attacker.start()
    for attacker in attackers:
        attacker.join(args.duration + 10)
    return {a.kind: {"connections": a.connections, "bytes_sent": a.sent, "refused": a.refused} for a in attackers}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("side", choices=("clients", "attack"))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--redis-port", type=int)
    parser.add_argument("--clients", type=int, default=500)
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--duration", type=float, default=30.0)
    args = parser.parse_args()
    result = asyncio.run(_clients(args)) if args.side == "clients" else _attack(args)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
