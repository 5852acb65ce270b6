"""
Join storm: N clients join one channel at once; how many frames and bytes does the
service send, and how long until every client holds the full presence?

Starts its own redis-server and ``twistd -n tangram-channel`` (one process, on free
ports), opens N WebSockets from this one asyncio process (not timed), then sends every
``phx_join`` as fast as it can and reads until each client has seen all N ``phx_ref``s
through its ``presence_state`` and ``presence_diff`` frames. Without coalescing this
costs O(N^2) frames; with it, about N + N x (storm length / presence_window).

Usage: python benchmarks/join_storm.py [--clients 2000] [--window 0.05] [--spread 0] [--deflate] [--json-only]

``--deflate``: the clients offer permessage-deflate (as browsers do); ``wire_bytes`` is
what they read off their sockets, compressed or not, ``bytes_sent`` what that inflates to.
Needs the ``websockets`` package (pip install websockets).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time

import websockets
from websockets.asyncio.client import ClientConnection

import harness as h

sys.path.insert(0, str(h.ROOT))

from tangram_channel.tokens import TokenAuthority  # noqa: E402

TOPIC = "storm"
PHX_REF = re.compile(rb'"phx_ref":"([^"]+)"')


class Client:
    """
    One socket: counts what it receives and the distinct phx_refs it has seen, as marks in
    a bytearray indexed by a number every client shares for a phx_ref (a set of N refs per
    client was N^2 objects: 13 GB at 10,000 clients, and the storm stalled on it).
    """

    numbers: dict[bytes, int] = {}  # phx_ref -> its index in every client's marks

    def __init__(self, ws, n: int) -> None:
        self.ws = ws
        self.n = n
        self.frames = 0
        self.bytes = 0
        self.marks = bytearray(n)
        self.distinct = 0
        self.diff_refs = 0  # phx_refs carried by diffs: N when each join is announced once
        self.state_refs = 0
        self.complete_at: float | None = None

    async def read(self, done: asyncio.Event, counter: list[int]) -> None:
        async for message in self.ws:
            data = message if isinstance(message, bytes) else message.encode()
            self.frames += 1
            self.bytes += len(data)
            # a storm has only joins, so every phx_ref in a state or diff is present
            is_diff = b'"presence_diff"' in data
            if is_diff or b'"presence_state"' in data:
                found = PHX_REF.findall(data)
                if is_diff:
                    self.diff_refs += len(found)
                else:
                    self.state_refs += len(found)
                if self.complete_at is not None:
                    continue
                for ref in found:
                    number = self.numbers.setdefault(ref, len(self.numbers))
                    if number >= len(self.marks):
                        self.marks.extend(bytes(number + 1 - len(self.marks)))
                    if not self.marks[number]:
                        self.marks[number] = 1
                        self.distinct += 1
                if self.distinct >= self.n:
                    self.complete_at = time.monotonic()
                    counter[0] += 1
                    if counter[0] == self.n:
                        done.set()


class CountingConnection(ClientConnection):
    """A connection that counts the bytes read off its socket."""

    wire = 0

    def data_received(self, data: bytes) -> None:
        self.wire += len(data)
        super().data_received(data)


async def storm(url: str, n: int, tokens: TokenAuthority, spread: float, deflate: bool = False) -> dict:
    clients = []
    for i in range(n):  # connecting is not part of the storm
        ws = await websockets.connect(url, max_size=None, ping_interval=None, compression="deflate" if deflate else None,
                                      create_connection=CountingConnection)
        clients.append(Client(ws, n))
    done = asyncio.Event()
    counter = [0]
    readers = [asyncio.create_task(c.read(done, counter)) for c in clients]
    joins = [json.dumps(["1", "1", TOPIC, "phx_join", {"token": tokens.mint(TOPIC, f"user{i}")[1]}])
             for i in range(n)]
    cpu_before = time.process_time()
    started = time.monotonic()
    for i, (client, join) in enumerate(zip(clients, joins)):
        await client.ws.send(join)
        if spread:  # joins evenly over `spread` seconds instead of all at once
            await asyncio.sleep(max(0.0, started + spread * (i + 1) / n - time.monotonic()))
    sent = time.monotonic()
    await asyncio.wait_for(done.wait(), timeout=600)
    finished = time.monotonic()
    await asyncio.sleep(1.0)  # diffs still in flight once everyone is complete count too
    cpu_client = time.process_time() - cpu_before
    frames = sum(c.frames for c in clients)  # counted before the teardown's leaves
    sent_bytes = sum(c.bytes for c in clients)
    wire_bytes = sum(c.ws.wire for c in clients)
    diff_refs = sum(c.diff_refs for c in clients)
    state_refs = sum(c.state_refs for c in clients)
    await asyncio.gather(*(client.ws.close() for client in clients))
    for reader in readers:
        reader.cancel()
    return {
        "clients": n,
        "frames_sent": frames,
        "frames_per_client": round(frames / n, 1),
        "bytes_sent": sent_bytes,
        "wire_bytes": wire_bytes,
        "diff_presences_per_client": round(diff_refs / n, 1),
        "state_presences_per_client": round(state_refs / n, 1),
        "joins_sent_s": round(sent - started, 3),
        "full_presence_s": round(finished - started, 3),
        "client_cpu_s": round(cpu_client, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=2000)
    parser.add_argument("--window", type=float, default=0.05, help="presence_window of the service")
    parser.add_argument("--spread", type=float, default=0.0, help="send the joins over this many seconds")
    parser.add_argument("--deflate", action="store_true", help="clients offer permessage-deflate")
    parser.add_argument("--json-only", action="store_true")
    args = parser.parse_args()

    h.prepare()
    with h.redis_server() as (redis_url, _):
        port = h.free_port()
        server = h.start_ours(port, redis_url, ["--datetime-interval", "0"],
                              env={"TANGRAM_CHANNEL_PRESENCE_WINDOW": str(args.window)})
        try:
            tokens = TokenAuthority(h.SECRET, 3600, 60, 8, time.time)
            server_cpu = server.usage().cpu_s
            result = asyncio.run(storm(f"ws://127.0.0.1:{port}/websocket?vsn=2.0.0", args.clients, tokens, args.spread,
                                         args.deflate))
            result["server_cpu_s"] = round(server.usage().cpu_s - server_cpu, 2)
            result["presence_window_s"] = args.window
            result["spread_s"] = args.spread
        finally:
            server.stop()
    print(json.dumps(result))
    if not args.json_only:
        n = result["clients"]
        print(
            f"{n} clients joined one channel (presence_window {args.window}s, joins sent over "
            f"{result['joins_sent_s']}s): every client had all {n} "
            f"presences after {result['full_presence_s']}s; the service sent {result['frames_sent']} frames "
            f"({result['frames_per_client']} per client; N^2 would be {n * n}) and "
            f"{result['bytes_sent'] / 1e6:.1f} MB ({result['wire_bytes'] / 1e6:.1f} MB on the wire). CPU: service {result['server_cpu_s']}s, "
            f"load client {result['client_cpu_s']}s."
        )


if __name__ == "__main__":
    main()
