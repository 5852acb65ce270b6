"""
Limits of a live ``twistd`` service on a real Redis: idle sockets, oversized messages,
clients that stop reading, and the number of channels per socket.
"""

from __future__ import annotations

import json
import selectors
import socket
import time

from .live import TEXT, FrameParser, RawSocket, event_of, payload_of, reply_reason, reply_status, rss_kib, start_twistd, token


def test_idle_socket_closed_with_4000_and_heartbeats_keep_one_open(twistd, flushed_redis):
    """
    One socket heartbeats back to back while its neighbour stays silent: the silent one's
    close proves the idle timeout passed for both, whatever the machine's pace.
    """
    service = start_twistd(twistd, "--redis-url", flushed_redis.url, idle_timeout=1, datetime_interval=0)
    silent = RawSocket(service.port)
    talking = RawSocket(service.port)
    deadline = time.monotonic() + 30
    with selectors.DefaultSelector() as waiting:
        waiting.register(silent.sock, selectors.EVENT_READ)
        while not waiting.select(0.05):  # the silent socket hears nothing but its close
            assert time.monotonic() < deadline, "the silent socket was not closed"
            ref = talking.push("phoenix", "heartbeat", {})
            assert reply_status(talking.reply(ref)) == "ok"
    assert silent.close_code() == 4000
    ref = talking.push("phoenix", "heartbeat", {})
    assert reply_status(talking.reply(ref)) == "ok"


def test_message_over_max_message_size_closes_that_socket_with_1009_only(twistd, flushed_redis):
    service = start_twistd(twistd, "--redis-url", flushed_redis.url, max_message_size=65536, datetime_interval=0)
    neighbour, big = RawSocket(service.port), RawSocket(service.port)
    neighbour.join_ok("room", token("room", "neighbour"))
    big.join_ok("room", token("room", "big"))
    big.send_frame(TEXT, json.dumps([None, "9", "room", "shout", "x" * 70000]).encode())
    assert big.close_code() == 1009
    ref = neighbour.push("room", "talk", {"still": "here"})
    assert reply_status(neighbour.reply(ref)) == "ok"
    flushed_redis.client().publish("to:room:news", '{"n":1}')
    assert payload_of(neighbour.until(lambda m: event_of(m) == "news")) == {"n": 1}


def test_too_many_channels_joined_is_refused_and_the_socket_stays(twistd, flushed_redis):
    service = start_twistd(
        twistd, "--redis-url", flushed_redis.url, max_channels_per_socket=3, datetime_interval=0
    )
    client = RawSocket(service.port)
    for topic in ("a", "b", "c"):
        client.join_ok(topic, token(topic))
    ref = client.join("d", token("d"))
    reply = client.reply(ref)
    assert (reply_status(reply), reply_reason(reply)) == ("error", "too many channels joined")
    ref = client.push("a", "talk", {})
    assert reply_status(client.reply(ref)) == "ok"


MEMBERS = 100
STREAM = 2000  # messages of about 3 KB: 6 MB for each member
WINDOW = 30  # messages (90 KB) a member may lag behind: well within socket buffers, so never paused


class StreamReaders:
    """Many sockets read in one thread, each keeping the numbers of the stream it saw."""

    def __init__(self, sockets: list[RawSocket]) -> None:
        self.selector = selectors.DefaultSelector()
        self.seen: dict[RawSocket, list[int]] = {s: [] for s in sockets}
        self.parsers = {s: FrameParser() for s in sockets}
        self.leaves: set[str] = set()
        for s in sockets:
            s.sock.setblocking(False)
            for _, opcode, payload in s.pending:  # frames read with the upgrade
                self._handle(s, opcode, payload)
            self.selector.register(s.sock, selectors.EVENT_READ, s)

    def _handle(self, s: RawSocket, opcode: int, payload: bytes) -> None:
        assert opcode == TEXT, f"unexpected frame {opcode} {payload[:80]!r}"
        message = json.loads(payload)
        if event_of(message) == "msg":
            self.seen[s].append(payload_of(message)["n"])
        elif event_of(message) == "presence_diff":
            self.leaves.update(payload_of(message)["leaves"])

    def poll(self, timeout: float = 0.05) -> None:
        for key, _ in self.selector.select(timeout):
            s = key.data
            data = s.sock.recv(1 << 20)
            assert data, "a healthy member was disconnected"
            for _, opcode, payload in self.parsers[s].feed(data):
                self._handle(s, opcode, payload)

    def lowest(self) -> int:
        return min(len(seen) for seen in self.seen.values())


def test_client_that_stops_reading_is_closed_with_1008_and_others_get_everything(twistd, flushed_redis):
    """
    A member that never reads (small receive buffer) is closed with 1008 once its queue
    passes max_send_buffer, and its presence leaves; 100 members of the same channel
    get every message of the stream, in order, and the service's memory stays bounded.
    """
    service = start_twistd(
        twistd, "--redis-url", flushed_redis.url, max_send_buffer=256 * 1024, datetime_interval=0
    )
    stalled = RawSocket(service.port, rcvbuf=4096)
    stalled.join_ok("stream", token("stream", "stalled"))
    members = []
    for i in range(MEMBERS):
        member = RawSocket(service.port)
        member.join_ok("stream", token("stream", f"member-{i}"))
        members.append(member)
    readers = StreamReaders(members)
    redis = flushed_redis.client()
    rss_before = rss_kib(service.process.pid)
    started = time.monotonic()
    published = 0
    pad = "x" * 3000
    stalled_code = "never read"
    while published < STREAM or readers.lowest() < STREAM:
        while published < STREAM and published - readers.lowest() < WINDOW:
            redis.publish("to:stream:msg", json.dumps({"n": published, "pad": pad}))
            published += 1
        readers.poll()
        if "stalled" in readers.leaves and stalled_code == "never read":
            # read now, before the service gives up waiting for the close handshake
            stalled.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            stalled_code = stalled.close_code(timeout=10)
        assert time.monotonic() - started < 120, f"stream stuck at {readers.lowest()} of {STREAM}"
    elapsed = time.monotonic() - started
    rss_after = rss_kib(service.process.pid)
    print(
        f"\n{MEMBERS} members x {STREAM} messages of 3 KB in {elapsed:.1f}s; "
        f"service RSS {rss_before / 1024:.1f} MiB before, {rss_after / 1024:.1f} MiB after; "
        f"the stalled client was closed with {stalled_code}"
    )

    assert all(seen == list(range(STREAM)) for seen in readers.seen.values())
    assert "stalled" in readers.leaves
    assert "closing a client that stopped reading" in service.log()
    assert stalled_code == 1008
    # 600 MB went out; a service that queued for the stalled client would hold its 6 MB
    # and more. Loose: the point is "bounded", not a number.
    assert rss_after - rss_before < 64 * 1024


def test_a_member_that_reads_late_gets_every_message_once_in_order(twistd, flushed_redis):
    """
    A member with a tiny receive buffer that reads only after the stream: each broadcast
    to it fills its socket part-way, the rest queues behind, and once it reads it finds
    every message whole, once, in order, while its neighbour got them all at once.
    """
    service = start_twistd(twistd, "--redis-url", flushed_redis.url, datetime_interval=0)
    late = RawSocket(service.port, rcvbuf=4096)
    late.join_ok("stream", token("stream", "late"))
    prompt = RawSocket(service.port)
    prompt.join_ok("stream", token("stream", "prompt"))
    readers = StreamReaders([prompt])
    redis = flushed_redis.client()
    pad = "x" * 3000
    for n in range(LATE_STREAM):
        redis.publish("to:stream:msg", json.dumps({"n": n, "pad": pad}))
    started = time.monotonic()
    while readers.lowest() < LATE_STREAM:
        readers.poll()
        assert time.monotonic() - started < 30, f"prompt member stuck at {readers.lowest()}"
    late_readers = StreamReaders([late])
    while late_readers.lowest() < LATE_STREAM:
        late_readers.poll()
        assert time.monotonic() - started < 60, f"late member stuck at {late_readers.lowest()}"
    assert readers.seen[prompt] == late_readers.seen[late] == list(range(LATE_STREAM))


LATE_STREAM = 2000  # 6 MB: more than the late member's socket and the kernel's send buffer hold, under max_send_buffer
