"""The bound on publishes Redis has not answered: pure logic, then a Session over a fake Redis."""

from __future__ import annotations

from typing import Any

import pytest

from tangram_channel.frames import Message
from tangram_channel.inflight import InFlight, InFlightLimits

from .fakes import World, reply


class Reader:
    def __init__(self) -> None:
        self.reading = True
        self.pauses = 0

    def pause_reading(self) -> None:
        self.reading = False
        self.pauses += 1

    def resume_reading(self) -> None:
        self.reading = True


@pytest.mark.parametrize(
    "limits, size",
    [
        (InFlightLimits(socket_commands=2, socket_bytes=100, process_commands=10, process_bytes=1000), 10),
        (InFlightLimits(socket_commands=10, socket_bytes=100, process_commands=10, process_bytes=1000), 60),
    ],
    ids=["commands", "bytes"],
)
def test_a_socket_stops_being_read_at_its_bound_and_starts_again_below_it(limits: InFlightLimits, size: int) -> None:
    pool = InFlight(limits)
    reader = Reader()
    account = pool.account(reader)
    account.sent(size)
    assert reader.reading
    account.sent(size)
    assert not reader.reading and pool.waiting == 1
    account.answered(size)
    assert reader.reading and pool.waiting == 0
    assert (account.commands, account.bytes, pool.commands, pool.bytes) == (1, size, 1, size)


def test_a_full_process_stops_every_socket_that_publishes_and_starts_them_when_it_drains() -> None:
    pool = InFlight(InFlightLimits(socket_commands=10, socket_bytes=1000, process_commands=3, process_bytes=1000))
    readers = [Reader() for _ in range(3)]
    accounts = [pool.account(reader) for reader in readers]
    accounts[0].sent(1)
    accounts[0].sent(1)
    accounts[1].sent(1)  # the third: the process is full, the socket that published stops
    assert [r.reading for r in readers] == [True, False, True]
    accounts[2].sent(1)  # over: this one stops too
    assert [r.reading for r in readers] == [True, False, False]
    accounts[0].answered(1)
    assert pool.full  # 3 still unanswered
    accounts[0].answered(1)
    assert [r.reading for r in readers] == [True, True, True]


def test_a_closed_socket_is_never_started_again_but_its_publishes_count_until_answered() -> None:
    pool = InFlight(InFlightLimits(socket_commands=1, socket_bytes=100, process_commands=10, process_bytes=1000))
    reader = Reader()
    account = pool.account(reader)
    account.sent(5)
    account.close()
    assert pool.commands == 1 and pool.waiting == 0
    account.answered(5)
    assert not reader.reading and pool.commands == 0


def push(ref: str) -> Message:
    return Message("1", ref, "room", "talk", {"n": ref})


def test_a_session_over_its_bound_holds_what_it_read_and_acts_on_it_in_order_once_redis_answers() -> None:
    limits = InFlightLimits(socket_commands=2, socket_bytes=10**6, process_commands=100, process_bytes=10**7)
    world = World(inflight=InFlight(limits))
    session, outbox = world.connect()
    world.join(session, "room")
    world.echo()
    outbox.take()
    published_before = len(world.redis.published)
    world.redis.mode = "hold"
    for ref in ("a", "b", "c", "d"):
        session.received(push(ref))
    assert not outbox.reading
    assert [p for _, p in world.redis.published[published_before:]] == [b'{"n":"a"}', b'{"n":"b"}']
    assert outbox.take() == []  # c and d wait, unread as far as the client can tell
    world.redis.release()
    assert outbox.reading
    assert [p for _, p in world.redis.published[published_before:]] == [
        b'{"n":"a"}', b'{"n":"b"}', b'{"n":"c"}', b'{"n":"d"}'
    ]
    assert outbox.take() == [reply("1", ref, "room", "ok", {}) for ref in ("a", "b", "c", "d")]


def test_a_timed_out_or_failed_publish_is_answered_and_frees_its_place(monkeypatch: Any) -> None:
    limits = InFlightLimits(socket_commands=1, socket_bytes=10**6, process_commands=100, process_bytes=10**7)
    world = World(inflight=InFlight(limits))
    session, outbox = world.connect()
    world.join(session, "room")
    outbox.take()
    world.redis.mode = "hold"
    session.received(push("a"))
    assert not outbox.reading
    world.redis.fail_held()
    assert outbox.reading
    assert outbox.take() == [reply("1", "a", "room", "error", {"reason": "redis unavailable"})]
    assert world.hub.inflight.commands == 0
