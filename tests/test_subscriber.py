"""
A plugin burst must not cut the subscriber (issue 13, point 8): 200 x 1 MB published at
once passed Redis's ``client-output-buffer-limit pubsub`` and Redis closed the
subscriber, losing messages on every channel. The subscriber is now read as fast as
Redis writes, a cut is diagnosed and counted, and a limit too low is warned about.
"""

from __future__ import annotations

import ctypes
import json
import mmap
import socket
import threading
import time
import tracemalloc
from collections.abc import Callable
from types import SimpleNamespace

import pytest
from twisted.internet import main, reactor, tcp
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport

from tangram_channel import bus, outputlimit
from tangram_channel.bus import FEED_BYTES, RedisBridge, RedisURL, _Subscriber, _Watch
from tangram_channel.metrics import Metrics
from tangram_channel.naming import ALL_TOPICS_PATTERN, topic_pattern
from tangram_channel.pending import BUSY_SHARE, CALM_SHARE, LOAD_PERIOD, REST_BELOW, PendingMessages
from tangram_channel.readbuffer import RESIDENT_BYTES, read_into_kept_buffer

from .conftest import RedisServer, free_port
from .e2e import captured_log
from .live import RawSocket, event_of, metric, payload_of, start_twistd, token


def recorder(delivered: list[list[str]]) -> Callable[[list[str]], int]:
    """A consumer that keeps each slice and answers one delivery per item, or the number an item names."""

    def deliver(items: list[str]) -> int:
        delivered.append(items)
        return sum(int(item) if item.isdigit() else 1 for item in items)

    return deliver


def queue(
    max_bytes: int = 1000, slice_bytes: int = 100, metrics: Metrics | None = None
) -> tuple[PendingMessages[str], list[list[str]], Clock]:
    clock, delivered = Clock(), []
    pending = PendingMessages(clock, recorder(delivered), max_bytes, metrics or Metrics(), slice_bytes)
    return pending, delivered, clock


def turn(clock: Clock) -> None:
    """
    One reactor turn: the calls due when it starts, not those they schedule (Clock.advance
    would run those too; the reactor reads its sockets first).
    """
    due = [call for call in clock.getDelayedCalls() if call.getTime() <= clock.seconds()]
    for call in due:
        clock.calls.remove(call)
        call.called = 1
        call.func(*call.args, **call.kw)


def test_the_read_loop_only_queues_and_each_turn_delivers_one_slice() -> None:
    """
    Nothing is handed over while reading, and no timer is set; when the read is over, one
    slice of about slice_bytes, then one per reactor turn, in order.
    """
    pending, delivered, clock = queue(slice_bytes=100)
    for n in range(5):
        pending.extend([f"m{n}"], 60)
    assert delivered == [] and pending.bytes == 300 and clock.getDelayedCalls() == []
    pending.read_over()
    assert delivered == [["m0", "m1"]] and pending.bytes == 180
    turn(clock)
    turn(clock)
    assert delivered == [["m0", "m1"], ["m2", "m3"], ["m4"]] and pending.bytes == 0
    turn(clock)
    assert len(delivered) == 3


def test_a_message_larger_than_a_slice_goes_alone() -> None:
    pending, delivered, clock = queue(slice_bytes=100)
    pending.extend(["big"], 500)
    pending.extend(["small"], 10)
    pending.read_over()
    assert delivered == [["big"]]
    turn(clock)
    assert delivered == [["big"], ["small"]]


def test_past_max_bytes_the_socket_is_paused_until_half_is_delivered() -> None:
    """Paused once over max_bytes (counted once), resumed when the queue is at or below half of it."""
    metrics = Metrics()
    pending, delivered, clock = queue(max_bytes=1000, slice_bytes=200, metrics=metrics)
    transport = StringTransport()
    pending.attach(transport)
    for _ in range(10):
        pending.extend(["m"], 100)
    assert transport.producerState == "producing"
    pending.extend(["m"], 100)
    pending.extend(["m"], 100)
    assert transport.producerState == "paused" and pending.bytes == 1200
    pending.read_over()  # 1000 left
    turn(clock)  # 800
    turn(clock)  # 600
    assert transport.producerState == "paused"
    turn(clock)  # 400
    assert transport.producerState == "producing"
    assert metrics.registry.get_sample_value("tangram_channel_redis_subscriber_pauses_total") == 1


def test_a_new_connection_is_paused_while_the_queue_is_still_full() -> None:
    """The subscriber reconnected while paused: its new socket is not read either, until the queue drains."""
    pending, delivered, clock = queue(max_bytes=100, slice_bytes=50)
    pending.extend(["m"], 200)
    assert pending.paused
    fresh = StringTransport()
    pending.attach(fresh)
    assert fresh.producerState == "paused"
    pending.read_over()
    assert fresh.producerState == "producing"


def bridge_under_to_all(clock: Clock) -> tuple[RedisBridge, list[list[tuple[str, str, bytes]]]]:
    """A bridge subscribed to ``to:*`` (as past WATCH_ALL_ABOVE topics), and the slices it hands on."""
    bridge = RedisBridge(clock, RedisURL("redis://127.0.0.1:1"), timeout=5)
    handed: list[list[tuple[str, str, bytes]]] = []
    bridge.deliver_to(lambda messages: handed.append(messages) or len(messages), lambda: None)
    bridge._all_confirmed = True
    return bridge, handed


def test_messages_no_topic_here_watches_are_dropped_as_read_and_take_no_room() -> None:
    """Under ``to:*`` a worker reads every topic's messages; only its own are queued, as ``(topic, event, payload)``."""
    clock = MemoryReactorClock()
    bridge, handed = bridge_under_to_all(clock)
    for topic in ("mine", "a:b"):
        bridge._watched[topic] = _Watch(topic_pattern(topic))
    bridge._received(
        [
            [b"pmessage", ALL_TOPICS_PATTERN, b"to:theirs:tick", b'{"n":1}'],
            [b"pmessage", topic_pattern("a"), b"to:a:b:tick", b'{"n":2}'],  # "a" matches "a:b"'s channels: a copy
            [b"pmessage", topic_pattern("mine"), b"to:mine:tick", b'{"n":3}'],  # its own pattern's copy, under to:*
        ]
    )
    assert bridge._pending.bytes == 0
    bridge._received(
        [
            [b"pmessage", ALL_TOPICS_PATTERN, b"to:mine:tick", b'{"n":4}'],
            [b"pmessage", topic_pattern("mine"), b"to:mine:tick", b'{"n":3}'],
            [b"pmessage", ALL_TOPICS_PATTERN, b"to:a:b:tick", b'{"n":5}'],
        ]
    )
    assert bridge._pending.bytes == 14
    bridge._pending.read_over()
    assert handed == [[("mine", "tick", b'{"n":4}'), ("a:b", "tick", b'{"n":5}')]]


def test_a_channels_route_is_remembered_within_a_cap_until_a_topic_is_first_watched_or_last_unwatched() -> None:
    clock = MemoryReactorClock()
    bridge, handed = bridge_under_to_all(clock)

    def read(channel: bytes = b"to:room:tick") -> None:
        bridge._received([[b"pmessage", ALL_TOPICS_PATTERN, channel, b"{}"]])
        bridge._pending.read_over()

    read()  # nobody watches room: dropped, and remembered as such
    bridge.watch("room").addErrback(lambda failure: None)  # Redis is away; the topic is watched all the same
    read()
    bridge.watch("room").addErrback(lambda failure: None)
    bridge.unwatch("room")
    read()  # one watcher is left
    bridge.unwatch("room")
    read()
    assert handed == [[("room", "tick", b"{}")]] * 2
    for n in range(bus.ROUTES_KEPT + 10):
        read(b"to:other:e%d" % n)
    assert 0 < len(bridge._routes) <= bus.ROUTES_KEPT


def test_a_read_larger_than_a_slice_is_handed_on_a_slice_a_turn() -> None:
    """The messages of one read are queued in chunks of a slice: a 4 MiB read is not handed on in one turn."""
    clock = MemoryReactorClock()
    bridge, handed = bridge_under_to_all(clock)
    bridge._watched["mine"] = _Watch(topic_pattern("mine"))
    message = b'{"pad":"%s"}' % (b"x" * 990)  # 1,000 bytes
    slice_bytes = bridge._pending.slice_bytes
    count = 3 * slice_bytes // len(message) + 7
    bridge._received([[b"pmessage", ALL_TOPICS_PATTERN, b"to:mine:n%d" % n, message] for n in range(count)])
    assert bridge._pending.bytes == count * len(message)
    bridge._pending.read_over()
    assert len(handed) == 1
    while bridge._pending.bytes:
        turn(clock)
    assert len(handed) == 4
    assert all(len(messages) * len(message) <= slice_bytes + len(message) for messages in handed)
    assert [event for messages in handed for _, event, _ in messages] == [f"n{n}" for n in range(count)]


def pmessage(pattern: bytes, channel: bytes, message: bytes) -> bytes:
    parts = [b"pmessage", pattern, channel, message]
    return b"*4\r\n" + b"".join(b"$%d\r\n%s\r\n" % (len(part), part) for part in parts)


def test_a_large_read_is_fed_to_the_reply_parser_in_pieces_and_every_message_comes_whole() -> None:
    """
    hiredis moves what is left of its buffer after every reply, so a read fed whole costs
    time quadratic in its size; fed ``FEED_BYTES`` at a time, messages smaller and larger
    than a piece, and one cut between two reads, all come whole and in order.
    """
    subscriber = _Subscriber()
    got: list[tuple[bytes, bytes, bytes]] = []
    subscriber.on_message = lambda *message: got.append(message)
    reader, fed = subscriber._reader, []

    class Spy:
        def feed(self, data: bytes, start: int = 0, length: int = -1) -> None:
            fed.append(len(data) - start if length < 0 else length)
            reader.feed(data, start, length)

        gets = reader.gets

    subscriber._reader = Spy()
    sizes = [10, FEED_BYTES - 40, 3 * FEED_BYTES + 7, 100, 2000, FEED_BYTES, 1]
    messages = [(b"to:*", b"to:t%d:tick" % i, b'"%s"' % (b"x" * size)) for i, size in enumerate(sizes * 20)]
    data = b"".join(pmessage(*message) for message in messages)
    cut = len(data) // 2 + 5
    subscriber.dataReceived(data[:cut])
    subscriber.dataReceived(data[cut:])
    assert got == messages
    assert sum(fed) == len(data) and max(fed) <= FEED_BYTES


def resident_kib(buffer: mmap.mmap) -> int:
    """How much of ``buffer`` is in memory, from the kernel's own account of the mapping."""
    view = ctypes.c_char.from_buffer(buffer)
    start = ctypes.addressof(view)
    del view
    with open("/proc/self/smaps") as smaps:
        inside = False
        for line in smaps:
            first = line.split()[0]
            if "-" in first and not first.endswith(":"):
                low, high = (int(edge, 16) for edge in first.split("-"))
                inside = low <= start < high
            elif inside and first == "Rss:":
                return int(line.split()[1])
    raise AssertionError("the buffer's mapping is not in /proc/self/smaps")


def test_a_large_read_gives_its_pages_back_and_a_small_one_keeps_them() -> None:
    """The kept buffer holds at most ``RESIDENT_BYTES`` in memory between reads, whatever one read took."""

    class Waiting:
        """A socket with ``size`` bytes waiting."""

        size = 0

        def recv_into(self, buffer: mmap.mmap) -> int:
            buffer[: self.size] = b"z" * self.size
            return self.size

    got: list[bytes] = []
    waiting = Waiting()
    transport = SimpleNamespace(socket=waiting, _dataReceived=got.append)
    read_into_kept_buffer(transport, 4 * 1024 * 1024)
    buffer = transport.doRead._buffer
    waiting.size = 100_000
    transport.doRead()
    assert 97 <= resident_kib(buffer) <= 120  # a busy stream's read: kept for the next
    waiting.size = 3_000_000
    transport.doRead()
    assert [len(data) for data in got] == [100_000, 3_000_000] and got[1] == b"z" * 3_000_000
    assert resident_kib(buffer) <= RESIDENT_BYTES // 1024


def test_the_messages_of_a_read_are_handed_on_together_and_before_any_other_reply() -> None:
    """One call per read, not per message; a reply between them (a subscription's ack) splits them, in order."""
    subscriber = _Subscriber()
    seen: list[object] = []
    subscriber.on_messages = lambda replies: seen.append([reply[2] for reply in replies])  # type: ignore[method-assign]
    subscriber._other_reply = seen.append  # type: ignore[method-assign]
    a, b, c = (pmessage(b"to:*", b"to:%s:e" % name, b"{}") for name in (b"a", b"b", b"c"))
    subscriber.dataReceived(a + b + b"*3\r\n$10\r\npsubscribe\r\n$4\r\nto:*\r\n:2\r\n" + c)
    assert seen == [[b"to:a:e", b"to:b:e"], [b"psubscribe", b"to:*", 2], [b"to:c:e"]]


def test_the_subscriber_socket_reads_into_one_kept_buffer() -> None:
    """
    A read takes what came, up to the buffer's size, and allocates about that much, not
    the buffer's size (CPython's ``recv(4 MiB)`` allocated 4 MiB each time); a closed peer
    is a clean end, as with Twisted's own read.
    """
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    received: list[bytes] = []
    receiver = Protocol()
    receiver.dataReceived = received.append  # type: ignore[method-assign]
    transport = tcp.Connection(ours, receiver)
    size = 4 * 1024 * 1024
    read_into_kept_buffer(transport, size)
    assert transport.doRead() is None and received == []  # nothing there: EWOULDBLOCK
    theirs.sendall(b"first")
    tracemalloc.start()
    try:
        assert transport.doRead() is None
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert received == [b"first"] and peak < 64 * 1024
    theirs.sendall(b"y" * 100_000)
    while sum(map(len, received)) < 100_005:
        transport.doRead()
    assert b"".join(received) == b"first" + b"y" * 100_000
    theirs.close()
    assert transport.doRead() is main.CONNECTION_DONE
    ours.close()


def test_a_socket_out_of_the_reactors_watch_is_read_now_as_the_reactor_would() -> None:
    """
    ``read_now`` after a rest: what came is read (True), nothing there says watch it again
    (False), and the peer's end disconnects it as the reactor's own read would.
    """
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    received: list[bytes] = []
    lost: list[object] = []
    receiver = Protocol()
    receiver.dataReceived = received.append  # type: ignore[method-assign]
    receiver.connectionLost = lost.append  # type: ignore[method-assign]
    transport = tcp.Connection(ours, receiver, reactor=reactor)
    transport.connected = 1
    reader = read_into_kept_buffer(transport, 64 * 1024)
    assert reader.read_now() is False and received == []
    theirs.sendall(b"came while resting")
    assert reader.read_now() is True and received == [b"came while resting"] and lost == []
    theirs.close()
    assert reader.read_now() is True and len(lost) == 1 and lost[0].check(ConnectionDone)  # type: ignore[attr-defined]
    assert reader.read_now() is False and len(lost) == 1  # disconnected: never read again
    assert ours.fileno() == -1


def test_an_error_in_the_protocol_during_a_read_now_is_logged_and_disconnects() -> None:
    """As from the reactor's read: a subscriber that failed mid-read is not left paused forever."""
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    lost: list[object] = []
    receiver = Protocol()

    def fail(data: bytes) -> None:
        raise ValueError("parser failed")

    receiver.dataReceived = fail  # type: ignore[method-assign]
    receiver.connectionLost = lost.append  # type: ignore[method-assign]
    transport = tcp.Connection(ours, receiver, reactor=reactor)
    transport.connected = 1
    reader = read_into_kept_buffer(transport, 64 * 1024)
    theirs.sendall(b"x")
    with captured_log() as lines:
        assert reader.read_now() is True
    assert any("reading the Redis subscriber" in line and "parser failed" in line for line in lines)
    assert len(lost) == 1 and lost[0].check(ValueError)  # type: ignore[attr-defined]
    theirs.close()


def reading_queue(
    found: list[bool],
) -> tuple[PendingMessages[str], list[list[str]], Clock, StringTransport, list[int]]:
    """A resting queue whose reader, at each rest's end, pops whether anything had come (and queues it)."""
    pending, delivered, clock, transport = resting_queue()
    reads: list[int] = []

    def read_now() -> bool:
        reads.append(1)
        came = found.pop(0)
        if came:
            pending.extend(["m"], 10)
            pending.read_over()
        return came

    pending.attach(transport, read_now)
    return pending, delivered, clock, transport, reads


def test_a_busy_stream_is_read_from_the_rests_timer_and_stays_out_of_the_reactors_watch() -> None:
    """What came during a rest is read when it ends, and the socket rests again without being watched."""
    pending, delivered, clock, transport, reads = reading_queue([True, True, False])
    pending.read_over()
    pending.extend(["m"], 10)
    pending.read_over()
    assert transport.producerState == "paused"
    clock.advance(0.002)
    assert len(reads) == 1 and delivered == [["m"], ["m"]] and transport.producerState == "paused"
    clock.advance(0.002)
    assert len(reads) == 2 and len(delivered) == 3 and transport.producerState == "paused"
    clock.advance(0.002)  # nothing had come: watched again, no rest
    assert len(reads) == 3 and transport.producerState == "producing" and clock.getDelayedCalls() == []


def test_a_read_from_the_rests_timer_that_fanned_out_widely_watches_the_socket_again() -> None:
    pending, delivered, clock, transport = resting_queue()
    reads: list[int] = []

    def read_many() -> bool:
        reads.append(1)
        pending.extend([str(REST_BELOW)], 10)
        pending.read_over()
        return True

    pending.attach(transport, read_many)
    pending.read_over()
    pending.read_over()
    assert transport.producerState == "paused"
    clock.advance(0.002)
    assert len(reads) == 1 and transport.producerState == "producing" and clock.getDelayedCalls() == []


def queue_with_a_bad_message(*before: str) -> tuple[PendingMessages[str], list[list[str]], Clock]:
    """A queue holding ``before``, then "bad", whose delivery raises, then "good"; a slice each."""
    clock, delivered = Clock(), []

    def deliver(items: list[str]) -> int:
        delivered.append(items)
        if items == ["bad"]:
            raise ValueError("consumer failed")
        return len(items)

    pending = PendingMessages(clock, deliver, 1000, Metrics(), slice_bytes=10)
    for item in (*before, "bad", "good"):
        pending.extend([item], 10)
    return pending, delivered, clock


def test_an_error_in_the_consumer_does_not_stall_the_queue() -> None:
    pending, delivered, clock = queue_with_a_bad_message("first")
    pending.read_over()
    with pytest.raises(ValueError):
        turn(clock)
    turn(clock)
    assert delivered == [["first"], ["bad"], ["good"]]


def test_a_read_whose_parse_failed_still_hands_on_what_it_queued() -> None:
    """The queue hands on only when a read is over: the subscriber says so however its parse ended."""
    subscriber = _Subscriber()
    seen: list[object] = []
    over: list[int] = []
    subscriber.on_messages = lambda replies: seen.append([reply[2] for reply in replies])  # type: ignore[method-assign]
    subscriber.on_read_over = lambda: over.append(len(seen))  # type: ignore[method-assign]
    with pytest.raises(Exception, match="Protocol error"):
        subscriber.dataReceived(pmessage(b"to:*", b"to:a:e", b"{}") + b"?not a reply\r\n")
    assert seen == [[b"to:a:e"]] and over == [1]


def test_when_a_read_is_over_its_first_slice_goes_in_the_same_turn() -> None:
    """read_over hands the first slice on at once, without waiting for a turn; the rest a turn each, as before."""
    pending, delivered, clock = queue(slice_bytes=100)
    for n in range(3):
        pending.extend([f"m{n}"], 60)
    pending.read_over()
    assert delivered == [["m0", "m1"]] and pending.bytes == 60
    pending.read_over()  # nothing to hand on before the next turn: it waits for it
    assert delivered == [["m0", "m1"]]
    turn(clock)
    assert delivered == [["m0", "m1"], ["m2"]] and clock.getDelayedCalls() == []
    pending.read_over()  # an empty read
    assert len(delivered) == 2


class ProcessCPU:
    """The CPU a service's process takes: ``share`` of a core of every second on ``clock``, as told."""

    def __init__(self, clock: Clock, share: float) -> None:
        self.clock, self.share = clock, share
        self.seconds, self._since = 0.0, clock.seconds()

    def __call__(self) -> float:
        now = self.clock.seconds()
        self.seconds += max(0.0, now - self._since) * self.share  # a clock set back takes no CPU back
        self._since = now
        return self.seconds


def resting_queue(
    max_bytes: int = 1000, cpu: ProcessCPU | None = None
) -> tuple[PendingMessages[str], list[list[str]], Clock, StringTransport]:
    """
    A queue with a 2 ms read delay, reading from a transport, in a service that has
    taken ``cpu``'s share of a core (twice ``BUSY_SHARE`` if not given) for a second.
    """
    if cpu is None:
        cpu = ProcessCPU(Clock(), 2 * BUSY_SHARE)
    clock = cpu.clock
    delivered: list[list[str]] = []
    pending = PendingMessages(
        clock, recorder(delivered), max_bytes, Metrics(), slice_bytes=100, read_delay=0.002, cpu_seconds=cpu
    )
    clock.advance(LOAD_PERIOD)
    transport = StringTransport()
    pending.attach(transport)
    return pending, delivered, clock, transport


def test_busy_streams_rest_only_while_the_service_takes_a_fifth_of_a_core_until_it_takes_under_a_tenth() -> None:
    """
    A rest delays what comes during it: a service with CPU to spare reads at once, and
    one whose CPU passed BUSY_SHARE over a second rests until it falls under CALM_SHARE.
    """
    cpu = ProcessCPU(Clock(), BUSY_SHARE - 0.01)
    pending, delivered, clock, transport = resting_queue(cpu=cpu)

    def reads_soon_after_another() -> str:
        pending.read_over()
        clock.advance(0.001)
        pending.extend(["m"], 10)
        pending.read_over()
        state = transport.producerState
        clock.advance(0.01)  # any rest is over, and the next read comes after a quiet spell
        return state

    assert reads_soon_after_another() == "producing" and not pending.busy
    cpu.share = BUSY_SHARE + 0.01
    clock.advance(LOAD_PERIOD)
    assert reads_soon_after_another() == "paused" and pending.busy
    cpu.share = CALM_SHARE + 0.01  # not under it: still busy
    clock.advance(LOAD_PERIOD)
    assert reads_soon_after_another() == "paused"
    cpu.share = CALM_SHARE - 0.01
    clock.advance(LOAD_PERIOD)
    assert reads_soon_after_another() == "producing" and not pending.busy
    cpu.share = BUSY_SHARE - 0.01  # not past BUSY_SHARE again: read at once
    clock.advance(LOAD_PERIOD)
    assert reads_soon_after_another() == "producing"
    assert len(delivered) == 5


def test_a_clock_set_back_restarts_the_weighing_of_the_service_cpu() -> None:
    """An hour back (an NTP step): the service is weighed again a second later, not an hour later."""
    cpu = ProcessCPU(Clock(), CALM_SHARE / 2)
    pending, delivered, clock, transport = resting_queue(cpu=cpu)
    pending.read_over()
    assert not pending.busy
    cpu.share = 1.0
    clock.rightNow -= 3600
    pending.read_over()
    assert not pending.busy  # weighed from now on
    clock.advance(LOAD_PERIOD)
    pending.read_over()
    assert pending.busy


def test_metrics_say_whether_a_busy_stream_rests_between_reads() -> None:
    bridge = RedisBridge(MemoryReactorClock(), RedisURL("redis://127.0.0.1:1"), timeout=5, read_delay=0.001)
    registry = bridge.metrics.registry
    assert registry.get_sample_value("tangram_channel_redis_reads_gathered") == 0
    bridge._pending.busy = True
    assert registry.get_sample_value("tangram_channel_redis_reads_gathered") == 1


def test_a_queue_weighs_the_cpu_of_the_process_it_runs_in() -> None:
    """By default the share is this process's CPU time over the clock's seconds."""
    clock = Clock()
    pending: PendingMessages[str] = PendingMessages(clock, lambda items: 0, 1000, Metrics(), read_delay=0.002)
    clock.advance(LOAD_PERIOD)
    pending.read_over()
    assert pending.busy is False  # next to no CPU over the period
    deadline = time.process_time() + 1.5 * BUSY_SHARE * LOAD_PERIOD
    while time.process_time() < deadline:
        pass
    clock.advance(LOAD_PERIOD)
    pending.read_over()
    assert pending.busy is True


def test_a_read_after_a_quiet_spell_is_not_followed_by_a_rest() -> None:
    pending, delivered, clock, transport = resting_queue()
    pending.extend(["m"], 10)
    pending.read_over()
    clock.advance(0.01)
    pending.extend(["n"], 10)
    pending.read_over()
    assert delivered == [["m"], ["n"]] and transport.producerState == "producing"
    assert clock.getDelayedCalls() == []


def test_a_read_soon_after_another_rests_the_socket_for_the_read_delay() -> None:
    """What it read is handed on at once; the socket is read again 2 ms later, and rests again if data was waiting."""
    pending, delivered, clock, transport = resting_queue()
    pending.read_over()
    clock.advance(0.001)
    pending.extend(["m"], 10)
    pending.read_over()
    assert delivered == [["m"]] and transport.producerState == "paused"
    clock.advance(0.0015)
    assert transport.producerState == "paused"
    clock.advance(0.001)
    assert transport.producerState == "producing"
    pending.extend(["n"], 10)  # waiting when the rest ended: still busy
    pending.read_over()
    assert delivered == [["m"], ["n"]] and transport.producerState == "paused"
    clock.advance(0.002)
    clock.advance(0.0021)
    pending.read_over()  # quiet for longer than the delay since
    assert transport.producerState == "producing"


def test_a_read_that_fanned_out_to_many_sockets_is_not_followed_by_a_rest() -> None:
    """Its wake-up is paid for: a broadcast to 64 members (W1's shape) is read on at once, one to 63 is not."""
    pending, delivered, clock, transport = resting_queue()
    pending.read_over()
    pending.extend([str(REST_BELOW)], 10)
    pending.read_over()
    assert transport.producerState == "producing" and clock.getDelayedCalls() == []
    pending.extend([str(REST_BELOW - 1)], 10)
    pending.read_over()
    assert transport.producerState == "paused"


def test_a_full_queue_stays_paused_through_the_end_of_a_rest_and_a_rest_through_draining() -> None:
    """Two reasons not to read, each kept: the socket is read again only once neither holds."""
    pending, delivered, clock, transport = resting_queue(max_bytes=100)
    pending.read_over()
    for _ in range(6):
        pending.extend(["m"], 60)
    pending.read_over()  # a rest begins, the queue is over its bound; a slice goes: 240 bytes left
    assert pending.paused and transport.producerState == "paused"
    clock.rightNow += 0.003
    turn(clock)  # the rest is over; a slice more, and the queue is still over half of its bound
    assert pending.bytes == 120 and transport.producerState == "paused"
    turn(clock)  # drained
    assert not pending.paused and transport.producerState == "producing"
    pending.read_over()
    pending.extend(["m"], 200)
    pending.read_over()  # over the bound and resting
    turn(clock)  # drained while resting: not read yet
    assert not pending.paused and transport.producerState == "paused"
    clock.advance(0.002)
    assert transport.producerState == "producing"


def test_a_new_connection_ends_a_rest() -> None:
    pending, delivered, clock, transport = resting_queue()
    pending.read_over()
    pending.read_over()
    assert transport.producerState == "paused"
    fresh = StringTransport()
    pending.attach(fresh)
    assert fresh.producerState == "producing" and clock.getDelayedCalls() == []


def test_a_stop_reads_on_so_the_connection_can_close_and_drops_what_is_queued() -> None:
    """
    Stopped at rest with the queue full, the socket is read again (TLS must read the
    server's close_notify to close; a paused socket hung the service's stop) and never
    paused again; what was queued, and what comes, is for sockets already closed.
    """
    pending, delivered, clock, transport = resting_queue(max_bytes=100)
    pending.read_over()
    for _ in range(6):
        pending.extend(["m"], 60)
    pending.read_over()
    assert pending.paused and transport.producerState == "paused"
    pending.stop()
    assert transport.producerState == "producing" and clock.getDelayedCalls() == []
    assert pending.bytes == 0 and not pending.paused
    pending.extend(["late"], 500)
    pending.read_over()
    pending.read_over()
    assert transport.producerState == "producing" and clock.getDelayedCalls() == []
    assert delivered == [["m", "m"]]


def test_an_error_in_the_consumer_when_a_read_is_over_is_logged_and_the_queue_goes_on() -> None:
    pending, delivered, clock = queue_with_a_bad_message()
    with captured_log() as lines:
        pending.read_over()
    assert any("handing on messages from Redis" in line and "consumer failed" in line for line in lines)
    turn(clock)
    assert delivered == [["bad"], ["good"]]


def test_the_pubsub_limit_is_read_from_config_get() -> None:
    reply = [b"client-output-buffer-limit", b"normal 0 0 0 slave 268435456 67108864 60 pubsub 33554432 8388608 60"]
    assert outputlimit.pubsub_limits(reply) == (33554432, 8388608, 60)
    assert outputlimit.pubsub_limits([b"client-output-buffer-limit", b"normal 0 0 0"]) is None


@pytest.mark.parametrize(
    "limits, too_low",
    [((0, 0, 0), False), ((32 * 2**20, 8 * 2**20, 60), True), ((32 * 2**20, 0, 0), False), ((2**20, 0, 0), True)],
)
def test_a_limit_is_too_low_when_a_nonzero_one_holds_fewer_than_32_messages(
    limits: tuple[int, int, int], too_low: bool
) -> None:
    assert outputlimit.too_low(limits, 2**20) is too_low


def test_redis_count_of_cut_clients_is_read_where_redis_keeps_one() -> None:
    """Newer Redis versions count them in INFO stats; 7.0 does not (None: cannot tell)."""
    info = b"# Stats\r\nevicted_clients:0\r\nclient_output_buffer_limit_disconnections:3\r\ntotal_reads:9\r\n"
    assert outputlimit.disconnections(info) == 3
    assert outputlimit.disconnections(b"# Stats\r\nevicted_clients:0\r\n") is None


@pytest.mark.parametrize(
    "before, after, cause, advised",
    [
        (3, 4, "pubsub was exceeded; set `client-output-buffer-limit pubsub 0 0 0`", True),
        (None, None, "most likely its client-output-buffer-limit pubsub was exceeded", True),
        (3, 3, "not for its output buffer limit", False),
    ],
)
def test_a_cut_is_blamed_on_the_limit_only_where_redis_counted_one_or_cannot_say(
    before: int | None, after: int | None, cause: str, advised: bool
) -> None:
    """Where Redis counts its output-buffer closings, a rise is certain and no rise is another cause."""
    said = outputlimit.cut_cause(before, after, 2**20)
    assert cause in said
    assert ("at least 33554432 bytes" in said) is advised


# A live service, a real redis-server with a low limit, real sockets


def drain(ws: RawSocket, size: int, timeout: float) -> threading.Thread:
    """Read ``size`` bytes from ``ws`` in a thread, as a browser that keeps up would; ``.got`` says how many came."""

    def read() -> None:
        ws.sock.settimeout(timeout)
        try:
            while reader.got < size:
                data = ws.sock.recv(1 << 20)
                if not data:
                    return
                reader.got += len(data)
        except OSError:
            pass

    reader = threading.Thread(target=read, daemon=True)
    reader.got = 0  # type: ignore[attr-defined]
    reader.start()
    return reader


@pytest.mark.alone  # its speed against Redis's limit is the point
def test_a_burst_handed_on_slower_than_it_arrives_cuts_no_channel(twistd, own_redis: RedisServer) -> None:
    """
    A plugin publishes 120 JSON documents of 600 KB at about 75 MB/s under Redis's
    default limit (32mb 8mb 60). Checking each one takes the service ~25 ms here, so it
    hands them on at ~25 MB/s: reading only that fast (the old read loop) left Redis
    holding over 32 MB and it closed the subscriber. Read ahead (within the default
    max_pending_redis_bytes), every document reaches its member and a client on another
    channel gets every message published among them.
    """
    redis = own_redis.client()
    redis.config_set("client-output-buffer-limit", "pubsub 32mb 8mb 60")
    service = start_twistd(twistd, "--redis-url", own_redis.url, datetime_interval=0)
    member = RawSocket(service.port)
    member.join_ok("plugin", token("plugin", "member"))
    other = RawSocket(service.port)
    other.join_ok("quiet", token("quiet", "other"))
    document = json.dumps([1] * 200_000).encode()
    reader = drain(member, 120 * len(document), timeout=60)
    for n in range(120):
        redis.publish("to:plugin:chunk", document)
        if n % 10 == 0:
            redis.publish("to:quiet:tick", json.dumps({"n": n // 10}))
        time.sleep(0.008)
    redis.publish("to:quiet:tick", json.dumps({"n": 12}))
    ticks = [payload_of(other.until(lambda m: event_of(m) == "tick", timeout=30))["n"] for _ in range(13)]
    assert ticks == list(range(13))
    reader.join(60)
    assert reader.got >= 120 * len(document), f"the member got {reader.got / 1e6:.0f} MB of 72"
    assert "Redis closed the subscriber" not in service.log()
    assert metric(service.port, "redis_subscriber_cut_total") == 0


def test_a_subscriber_redis_cuts_is_diagnosed_counted_and_resubscribed(twistd, own_redis: RedisServer) -> None:
    """
    A message larger than Redis's hard limit makes Redis close the subscriber at once:
    the log says why and what to set, /metrics counts it, and the service subscribes
    again and delivers once the limit is raised.
    """
    redis = own_redis.client()
    redis.config_set("client-output-buffer-limit", "pubsub 256kb 0 0")
    service = start_twistd(twistd, "--redis-url", own_redis.url, datetime_interval=0)
    member = RawSocket(service.port)
    member.join_ok("plugin", token("plugin", "member"))
    redis.publish("to:plugin:chunk", json.dumps({"blob": "x" * 1_000_000}))
    service.wait_for_log("Redis closed the subscriber connection")
    assert "client-output-buffer-limit pubsub was exceeded" in service.log()
    assert "`client-output-buffer-limit pubsub 0 0 0`" in service.log()
    assert metric(service.port, "redis_subscriber_cut_total") == 1
    redis.config_set("client-output-buffer-limit", "pubsub 0 0 0")
    service.wait_for_log("restoring subscriptions")
    deadline = time.monotonic() + 10
    while redis.pubsub_numpat() < 1:  # a presence pattern or the topic's, both restored together
        assert time.monotonic() < deadline, "the service did not subscribe again"
        time.sleep(0.02)
    redis.publish("to:plugin:after", json.dumps({"n": 1}))
    assert payload_of(member.until(lambda m: event_of(m) == "after", timeout=10)) == {"n": 1}


@pytest.mark.parametrize(
    "limit, warned", [("pubsub 32mb 8mb 60", True), ("pubsub 0 0 0", False), ("pubsub 64mb 0 0", False)]
)
def test_a_limit_too_low_for_max_message_size_is_warned_about_at_start_up(
    twistd, own_redis: RedisServer, limit: str, warned: bool
) -> None:
    """Redis's default soft limit (8 MB) holds fewer than 32 messages of 1 MiB; 0 (no limit) or 64 MB do."""
    own_redis.client().config_set("client-output-buffer-limit", limit)
    service = start_twistd(twistd, "--redis-url", own_redis.url, datetime_interval=0, max_message_size=2**20)
    # a join waits on Redis commands sent after the start-up check, answered in order
    RawSocket(service.port).join_ok("room", token("room"))
    assert ("client-output-buffer-limit pubsub is" in service.log()) == warned
    if warned:
        assert "33554432 8388608 60" in service.log() and "at least 33554432 bytes" in service.log()


def test_a_redis_that_refuses_config_is_left_unchecked_quietly(twistd, redis_binary: str) -> None:
    """A managed Redis often disables CONFIG: no warning, no traceback, and the service works."""
    server = RedisServer(redis_binary, free_port(), extra=("--rename-command", "CONFIG", ""))
    server.start()
    try:
        service = start_twistd(twistd, "--redis-url", server.url, datetime_interval=0)
        RawSocket(service.port).join_ok("room", token("room"))
        assert "client-output-buffer-limit" not in service.log()
        assert "Traceback" not in service.log() and "Unhandled" not in service.log()
    finally:
        server.kill()
