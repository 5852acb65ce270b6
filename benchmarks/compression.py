"""
permessage-deflate on a Tangram-shaped payload: N clients join one channel and R state
messages (a few hundred aircraft as JSON, 30-60 KB) a second are published for D
seconds, once with clients that offer permessage-deflate and once with clients that
do not, against one ``twistd`` in the same run.

Prints JSON, then the two ratios (compressing / plain): the bytes the clients read
off the wire, and the server's CPU per delivery (utime+stime from /proc).

    python benchmarks/compression.py --clients 100 --rate 20 --duration 5 --idle 1000

``--idle N`` adds the server's RSS per joined, idle socket, plain and compressing, each
on a fresh server.
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import socket
import struct
import time
from base64 import b64encode

import redis

import harness as h

OFFER = "permessage-deflate; client_max_window_bits"


def state(aircraft: int, seq: int) -> bytes:
    """Aircraft state as Tangram streams it: records of the same keys, numbers changing."""
    return json.dumps(
        {
            "seq": seq,
            "count": aircraft,
            "aircraft": [
                {
                    "icao24": f"{0x3C0000 + i:06x}",
                    "callsign": f"AFR{1000 + i}",
                    "latitude": round(43.5 + i * 0.0123 + seq * 1e-4, 5),
                    "longitude": round(1.3 + i * 0.0071 - seq * 1e-4, 5),
                    "altitude": 30000 + (i * 37 + seq) % 9000,
                    "groundspeed": 420 + (i + seq) % 60,
                    "track": (i * 13 + seq) % 360,
                    "vertical_rate": (i % 7 - 3) * 64,
                    "squawk": f"{1000 + i % 6777:04d}",
                    "last_seen": 1764979200 + seq,
                }
                for i in range(aircraft)
            ],
        },
        separators=(",", ":"),
    ).encode()


def masked(payload: bytes) -> bytes:
    """A client's text frame (masked, as RFC 6455 requires)."""
    key = os.urandom(4)
    n = len(payload)
    head = bytes([0x81]) + (bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack("!H", n))
    stream = (key * (n // 4 + 1))[:n]
    return head + key + bytes(a ^ b for a, b in zip(payload, stream))


class Member:
    """One socket that counts the bytes it reads and the large data frames (deliveries) among them."""

    def __init__(self, port: int, channel: str, index: int, offer: bool) -> None:
        tok = h.token(f"c{index}", channel)
        self.sock = socket.create_connection(("127.0.0.1", port))
        lines = [f"GET /websocket?vsn=2.0.0&userToken={tok} HTTP/1.1", "Host: 127.0.0.1", "Upgrade: websocket",
                 "Connection: Upgrade", f"Sec-WebSocket-Key: {b64encode(os.urandom(16)).decode()}",
                 "Sec-WebSocket-Version: 13"]
        if offer:
            lines.append(f"Sec-WebSocket-Extensions: {OFFER}")
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += self.sock.recv(4096)
        head, _, self.buffer = head.partition(b"\r\n\r\n")
        self.compressing = b"permessage-deflate" in head
        assert offer == self.compressing, head
        self.sock.sendall(masked(json.dumps(["1", "1", channel, "phx_join", {}]).encode()))
        self.sock.setblocking(False)
        self.wire = 0
        self.deliveries = 0
        self.compressed = 0

    def read(self) -> None:
        try:
            data = self.sock.recv(1 << 20)
        except BlockingIOError:
            return
        self.wire += len(data)
        self.buffer += data
        while len(self.buffer) >= 2:
            n, start = self.buffer[1] & 0x7F, 2
            if n == 126:
                n, start = struct.unpack_from("!H", self.buffer, 2)[0], 4
            elif n == 127:
                n, start = struct.unpack_from("!Q", self.buffer, 2)[0], 10
            if len(self.buffer) < start + n:
                return
            if n > 1000:
                self.deliveries += 1
                self.compressed += bool(self.buffer[0] & 0x40)
            self.buffer = self.buffer[start + n :]


def phase(port: int, redis_url: str, server: h.Proc, args: argparse.Namespace, offer: bool) -> dict:
    channel = f"state-{'deflate' if offer else 'plain'}"
    members = [Member(port, channel, i, offer) for i in range(args.clients)]
    selector = selectors.DefaultSelector()
    for m in members:
        selector.register(m.sock, selectors.EVENT_READ, m)

    def pump(seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            for key, _ in selector.select(0.05):
                key.data.read()

    pump(2.0)  # joins answered, presence diffs delivered
    wire_before = sum(m.wire for m in members)
    for m in members:
        m.deliveries = m.compressed = 0
    client = redis.Redis.from_url(redis_url)
    payloads = [state(args.aircraft, seq) for seq in range(int(args.rate * args.duration))]
    before = server.usage()
    start = time.monotonic()
    for seq, payload in enumerate(payloads):
        due = start + seq / args.rate
        pump(max(due - time.monotonic(), 0))
        client.publish(f"to:{channel}:state", payload)
    expected = len(payloads) * len(members)
    deadline = time.monotonic() + 20
    while sum(m.deliveries for m in members) < expected and time.monotonic() < deadline:
        pump(0.1)
    spent = server.usage() - before
    delivered = sum(m.deliveries for m in members)
    for m in members:
        m.sock.close()
    return {
        "compressing": offer,
        "payload_bytes": sum(map(len, payloads)) // len(payloads),
        "deliveries": delivered,
        "expected": expected,
        "compressed_deliveries": sum(m.compressed for m in members),
        "wire_bytes": sum(m.wire for m in members) - wire_before,
        "server_cpu_us_per_delivery": spent.cpu_s * 1e6 / max(delivered, 1),
    }


def idle_rss_per_socket(redis_url: str, count: int, offer: bool) -> float:
    """KB of server RSS per joined, idle socket, on a fresh server: compressing sockets hold no zlib state."""
    port = h.free_port()
    server = h.start_ours(port, redis_url, env={"TANGRAM_CHANNEL_DATETIME_INTERVAL": "0"})
    try:
        time.sleep(1)
        before = server.usage().rss_kb
        members = [Member(port, "idle", i, offer) for i in range(count)]
        time.sleep(3)
        for m in members:  # every socket has read its replies and diffs: nothing waits in a buffer
            for _ in range(10):
                m.read()
        grown = server.usage().rss_kb - before
        for m in members:
            m.sock.close()
        return grown / count
    finally:
        server.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, default=100)
    p.add_argument("--rate", type=float, default=20.0, help="messages a second")
    p.add_argument("--duration", type=float, default=5.0, help="seconds of publishing per phase")
    p.add_argument("--aircraft", type=int, default=300, help="records per message (300: about 60 KB)")
    p.add_argument("--idle", type=int, default=0, help="also measure RSS per idle socket with this many sockets")
    args = p.parse_args()
    h.prepare()
    with h.redis_server() as (redis_url, _):
        port = h.free_port()
        server = h.start_ours(port, redis_url, env={"TANGRAM_CHANNEL_DATETIME_INTERVAL": "0"})
        try:
            plain = phase(port, redis_url, server, args, offer=False)
            zipped = phase(port, redis_url, server, args, offer=True)
        finally:
            server.stop()
        idle = {offer: idle_rss_per_socket(redis_url, args.idle, offer) for offer in (False, True)} if args.idle else {}
    bytes_ratio = zipped["wire_bytes"] / plain["wire_bytes"]
    cpu_ratio = zipped["server_cpu_us_per_delivery"] / plain["server_cpu_us_per_delivery"]
    print(json.dumps({"plain": plain, "compressing": zipped, "bytes_ratio": bytes_ratio, "cpu_ratio": cpu_ratio}, indent=1))
    print(f"payload {plain['payload_bytes']} bytes to {args.clients} members, {args.rate:g}/s for {args.duration:g} s")
    for r in (plain, zipped):
        print(f"  {'compressing' if r['compressing'] else 'plain      '}: {r['deliveries']}/{r['expected']} delivered, "
              f"{r['wire_bytes'] / 1e6:.1f} MB on the wire, {r['server_cpu_us_per_delivery']:.1f} us CPU per delivery")
    print(f"bytes on the wire: {bytes_ratio:.3f}x; server CPU per delivery: {cpu_ratio:.2f}x")
    if idle:
        print(f"RSS per idle socket ({args.idle}): plain {idle[False]:.1f} KB, compressing {idle[True]:.1f} KB, "
              f"{idle[True] / idle[False]:.2f}x")


if __name__ == "__main__":
    main()
