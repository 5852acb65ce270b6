"""
A plugin burst must not cut the subscriber (issue 13, point 8): 200 x 1 MB published at
once passed Redis's ``client-output-buffer-limit pubsub`` and Redis closed the
subscriber, losing messages on every channel. The subscriber is now read as fast as
Redis writes, a cut is diagnosed and counted, and a limit too low is warned about.
"""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from tangram_channel.metrics import Metrics
from tangram_channel.pending import PendingMessages


def queue(
    max_bytes: int = 1000, slice_bytes: int = 100, metrics: Metrics | None = None
) -> tuple[PendingMessages[str], list[list[str]], Clock]:
    clock, delivered = Clock(), []
    pending = PendingMessages(clock, delivered.append, max_bytes, metrics or Metrics(), slice_bytes)
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
    """Nothing is handed over while reading; then one slice of about slice_bytes per reactor turn, in order."""
    pending, delivered, clock = queue(slice_bytes=100)
    for n in range(5):
        pending.add(f"m{n}", 60)
    assert delivered == [] and pending.bytes == 300
    turn(clock)
    assert delivered == [["m0", "m1"]] and pending.bytes == 180
    turn(clock)
    turn(clock)
    assert delivered == [["m0", "m1"], ["m2", "m3"], ["m4"]] and pending.bytes == 0
    turn(clock)
    assert len(delivered) == 3


def test_a_message_larger_than_a_slice_goes_alone() -> None:
    pending, delivered, clock = queue(slice_bytes=100)
    pending.add("big", 500)
    pending.add("small", 10)
    turn(clock)
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
        pending.add("m", 100)
    assert transport.producerState == "producing"
    pending.add("m", 100)
    pending.add("m", 100)
    assert transport.producerState == "paused" and pending.bytes == 1200
    turn(clock)  # 1000 left
    turn(clock)  # 800
    turn(clock)  # 600
    assert transport.producerState == "paused"
    turn(clock)  # 400
    assert transport.producerState == "producing"
    assert metrics.registry.get_sample_value("tangram_channel_redis_subscriber_pauses_total") == 1


def test_a_new_connection_is_paused_while_the_queue_is_still_full() -> None:
    """The subscriber reconnected while paused: its new socket is not read either, until the queue drains."""
    pending, delivered, clock = queue(max_bytes=100, slice_bytes=50)
    pending.add("m", 200)
    assert pending.paused
    fresh = StringTransport()
    pending.attach(fresh)
    assert fresh.producerState == "paused"
    turn(clock)
    assert fresh.producerState == "producing"


def test_an_error_in_the_consumer_does_not_stall_the_queue() -> None:
    clock, delivered = Clock(), []

    def deliver(items: list[str]) -> None:
        delivered.append(items)
        if items == ["bad"]:
            raise ValueError("consumer failed")

    pending = PendingMessages(clock, deliver, 1000, Metrics(), slice_bytes=10)
    pending.add("bad", 10)
    pending.add("good", 10)
    with pytest.raises(ValueError):
        turn(clock)
    turn(clock)
    assert delivered == [["bad"], ["good"]]
