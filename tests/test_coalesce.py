"""When a channel's messages are written: the coalescing policy on a Clock, no sockets."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.task import Clock

from tangram_channel.coalesce import Coalescer
from tangram_channel.frames import Broadcast

DELAY = 0.003


class Recorder:
    """A Coalescer whose writes are recorded as (time, topic, events)."""

    def __init__(self, delay: float = DELAY) -> None:
        self.clock = Clock()
        self.writes: list[tuple[float, str, list[str]]] = []
        self.coalescer = Coalescer(self.clock, delay, self._write)

    def _write(self, topic: str, broadcasts: list[Broadcast]) -> None:
        self.writes.append((self.clock.seconds(), topic, [b.event for b in broadcasts]))

    def arrive(self, topic: str, *events: str) -> None:
        self.coalescer.arrived(topic, [Broadcast.from_value(topic, event, {}) for event in events])

    def advance(self, seconds: float) -> None:
        """Advance to each timer's due time in turn, so that writes record when they were due."""
        target = self.clock.seconds() + seconds
        while self.clock.getDelayedCalls() and min(c.getTime() for c in self.clock.getDelayedCalls()) <= target:
            self.clock.advance(max(0.0, min(c.getTime() for c in self.clock.getDelayedCalls()) - self.clock.seconds()))
        self.clock.advance(target - self.clock.seconds())

    def events(self) -> list[list[str]]:
        return [events for _, _, events in self.writes]


def test_a_quiet_channel_is_written_at_once() -> None:
    r = Recorder()
    r.arrive("room", "a")
    r.clock.advance(1)
    r.arrive("room", "b")
    assert r.writes == [(0, "room", ["a"]), (1, "room", ["b"])]


def test_a_busy_channel_holds_a_lone_message_for_the_next() -> None:
    r = Recorder()
    r.arrive("room", "a")
    r.clock.advance(0.002)
    r.arrive("room", "b")
    assert r.events() == [["a"]]  # b is held: the channel had a message 2 ms ago
    r.clock.advance(0.002)
    r.arrive("room", "c")
    assert r.writes[1:] == [(0.004, "room", ["b", "c"])]


def test_a_held_message_waits_no_longer_than_the_delay() -> None:
    r = Recorder()
    r.arrive("room", "a")
    r.clock.advance(0.001)
    r.arrive("room", "b")
    r.clock.advance(DELAY - 0.0001)
    assert r.events() == [["a"]]
    r.clock.advance(0.0001)
    assert r.writes[1:] == [(pytest.approx(0.001 + DELAY), "room", ["b"])]
    assert r.clock.getDelayedCalls() == []


def test_several_messages_from_one_read_are_written_together_at_once() -> None:
    r = Recorder()
    r.arrive("room", "a")
    r.clock.advance(0.001)
    r.arrive("room", "b", "c")
    assert r.events() == [["a"], ["b", "c"]]
    assert r.clock.getDelayedCalls() == []


def test_a_message_for_another_channel_first_releases_the_held_one() -> None:
    """A socket in both channels gets them in the order they came."""
    r = Recorder()
    r.arrive("one", "a")
    r.clock.advance(0.001)
    r.arrive("one", "b")
    r.arrive("two", "x")
    assert r.writes == [(0, "one", ["a"]), (0.001, "one", ["b"]), (0.001, "two", ["x"])]
    assert r.clock.getDelayedCalls() == []


def test_a_delay_of_zero_never_holds() -> None:
    r = Recorder(delay=0)
    for event in "abc":
        r.arrive("room", event)
    assert r.events() == [["a"], ["b"], ["c"]]
    assert r.clock.getDelayedCalls() == []


def test_forget_drops_what_was_held_and_its_timer() -> None:
    r = Recorder()
    r.arrive("room", "a")
    r.arrive("room", "b")
    r.coalescer.forget("room")
    assert r.clock.getDelayedCalls() == []
    r.clock.advance(1)
    assert r.events() == [["a"]]
    # the channel's history went too: its next message is not held
    r.arrive("room", "c")
    r.arrive("room", "d")
    assert r.events() == [["a"], ["c"]]


def test_flush_writes_what_is_held_at_once() -> None:
    r = Recorder()
    r.arrive("one", "a")
    r.arrive("one", "b")
    r.coalescer.flush()
    assert r.events() == [["a"], ["b"]]
    assert r.clock.getDelayedCalls() == []
    r.coalescer.flush()
    assert r.events() == [["a"], ["b"]]


def test_forget_leaves_another_channels_held_message_alone() -> None:
    r = Recorder()
    r.arrive("one", "a")
    r.arrive("one", "b")
    r.coalescer.forget("two")
    r.advance(DELAY)
    assert r.events() == [["a"], ["b"]]


@given(st.lists(st.tuples(st.sampled_from(["one", "two"]), st.integers(1, 3), st.floats(0, 0.01)), max_size=40))
def test_every_message_is_written_once_in_arrival_order_and_within_the_delay(
    arrivals: list[tuple[str, int, float]],
) -> None:
    r = Recorder()
    sent: list[str] = []
    born: dict[str, float] = {}
    for n, (topic, count, gap) in enumerate(arrivals):
        r.advance(gap)
        events = [f"{topic}.{n}.{i}" for i in range(count)]
        sent += events
        born.update(dict.fromkeys(events, r.clock.seconds()))
        r.arrive(topic, *events)
    r.advance(DELAY)
    assert [e for _, _, written in r.writes for e in written] == sent
    for when, topic, written in r.writes:
        assert all(e.startswith(topic + ".") and when - born[e] <= DELAY + 1e-9 for e in written)


def test_lets_through_a_quiet_channels_lone_message_and_records_it() -> None:
    r = Recorder()
    assert r.coalescer.lets_through(r.coalescer.arrival("room"), 0.0)
    r.clock.advance(0.002)
    r.arrive("room", "b")  # busy: the message let through came 2 ms ago
    assert r.writes == []
    r.advance(DELAY)
    assert r.events() == [["b"]]


def test_a_channels_arrival_is_one_list_until_the_channel_is_forgotten() -> None:
    """What a lone member keeps (``hub.Member.lone_push``) is what ``arrived`` records into."""
    r = Recorder()
    kept = r.coalescer.arrival("room")
    assert r.coalescer.arrival("room") is kept
    r.arrive("room", "a")
    assert kept == [r.clock.seconds()]
    assert not r.coalescer.lets_through(kept, r.clock.seconds() + 0.001)  # busy: a came 1 ms ago
    r.coalescer.forget("room")
    assert r.coalescer.arrival("room") is not kept


def test_lets_nothing_through_while_the_channel_is_busy_or_a_message_is_held() -> None:
    r = Recorder()
    r.arrive("room", "a")
    r.clock.advance(0.001)
    assert not r.coalescer.lets_through(r.coalescer.arrival("room"), r.clock.seconds())  # a came 1 ms ago
    r.arrive("room", "b")  # held, for the same reason
    assert r.events() == [["a"]]
    assert not r.coalescer.lets_through(r.coalescer.arrival("other"), r.clock.seconds())  # it must go after b
    r.advance(DELAY)
    assert r.events() == [["a"], ["b"]]
    assert r.coalescer.lets_through(r.coalescer.arrival("other"), r.clock.seconds())
