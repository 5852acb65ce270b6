"""
The hostile side of the budget test, run as its own process so that it does not steal
the test's interpreter (``python -m tests.siege --port PORT --duration S``): hostile
sockets, one per behaviour of issue 13's points 1-3 and 16, each reconnecting whenever
the service closes it, until the time is up; prints what each did as JSON.

The well-behaved side is the benchmarks' C load client: a Python client reading 500
sockets measured its own interpreter's delays, not the service's.
"""

from __future__ import annotations

import argparse
import json
import socket
import threading
import time
from typing import Any

from .live import CONTINUATION, PING, TEXT, frame, token, upgrade_request

TOPIC = "siege"


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
    attackers = [_Attacker(kind, args.port, deadline) for kind in args.only or ATTACKS]
    for attacker in attackers:
        attacker.start()
    for attacker in attackers:
        attacker.join(args.duration + 10)
    return {a.kind: {"connections": a.connections, "bytes_sent": a.sent, "refused": a.refused} for a in attackers}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--only", action="append", choices=ATTACKS, help="this attack alone (repeatable)")
    print(json.dumps(_attack(parser.parse_args())), flush=True)


if __name__ == "__main__":
    main()
