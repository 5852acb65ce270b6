"""
The two sides of the budget test, each run as its own process so that neither steals
the other's interpreter (``python -m tests.siege clients|attack ...``).

``clients``: N well-behaved Phoenix clients (the ``websockets`` library) join one
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

from .live import CONTINUATION, PING, TEXT, frame, token, upgrade_request

TOPIC = "siege"


# the well-behaved side


async def _client(port: int, index: int, latencies: list[float], joined: asyncio.Event, stats: dict[str, Any]):
    import websockets

    url = f"ws://127.0.0.1:{port}/websocket?vsn=2.0.0"
    async with websockets.connect(url, max_size=None, ping_interval=None, close_timeout=1) as ws:
        await ws.send(json.dumps(["1", "1", TOPIC, "phx_join", {"token": token(TOPIC, f"good{index}")}]))
        ref = 1

        async def heartbeat() -> None:
            nonlocal ref
            while True:
                await asyncio.sleep(5)
                ref += 1
                await ws.send(json.dumps([None, str(ref), "phoenix", "heartbeat", {}]))

        beating = asyncio.ensure_future(heartbeat())
        try:
            async for raw in ws:
                now = time.time()
                join_ref, _, topic, event, payload = json.loads(raw)
                if event == "phx_reply" and join_ref == "1" and payload["status"] == "ok":
                    stats["joined"] += 1
                    if stats["joined"] == stats["clients"]:
                        joined.set()
                elif event == "tick":
                    latencies.append(now - payload["t"])
                    stats["ticks"][index] += 1
        except websockets.ConnectionClosed as closed:
            stats["closed"].append((index, closed.rcvd.code if closed.rcvd else None))
        finally:
            beating.cancel()
    if not stats["stopping"]:
        stats["closed"].append((index, "ended"))


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
    tasks = []
    for index in range(args.clients):
        tasks.append(asyncio.ensure_future(_client(args.port, index, latencies, joined, stats)))
        if index % 50 == 49:
            await asyncio.sleep(0.05)  # as browsers arrive, not all in one instant
    await asyncio.wait_for(joined.wait(), 60)
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    published = await _publish(args.redis_port, args.rate, args.duration)
    deadline = time.monotonic() + 5
    while min(stats["ticks"]) < published and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    stats["stopping"] = True
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
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
