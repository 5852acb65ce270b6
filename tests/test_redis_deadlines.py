"""
The timeout on Redis commands, as pure logic: one timer serves every unanswered command,
and each still fails at its own deadline (``RedisBridge.execute`` on a held connection
and a memory reactor's clock; the real frozen Redis is in ``test_redis_backpressure``).
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock as Clock
from twisted.python.failure import Failure

from tangram_channel.bus import RedisBridge, RedisURL
from tangram_channel.errors import RedisTimeout


class HeldConnection:
    """A command connection whose replies come when the test says, in order."""

    def __init__(self) -> None:
        self.held: list[defer.Deferred[Any]] = []

    def execute_command(self, *command: Any) -> defer.Deferred[Any]:
        self.held.append(defer.Deferred())
        return self.held[-1]

    def answer_all(self) -> None:
        held, self.held = self.held, []
        for each in held:
            each.callback(b"PONG")


def bridge_on(clock: Clock) -> tuple[RedisBridge, HeldConnection]:
    bridge = RedisBridge(clock, RedisURL("redis://127.0.0.1:1"), timeout=5)
    connection = HeldConnection()
    bridge._commands = connection
    return bridge, connection


def outcomes(d: defer.Deferred[Any]) -> list[Any]:
    seen: list[Any] = []
    d.addBoth(lambda result: seen.append(result.type if isinstance(result, Failure) else result))
    return seen


def test_each_command_fails_at_its_own_deadline_under_one_timer() -> None:
    clock = Clock()
    bridge, connection = bridge_on(clock)
    first = outcomes(bridge.execute("PING"))
    clock.advance(2)
    second = outcomes(bridge.execute("PING"))
    third = outcomes(bridge.execute("PING"))
    assert len(clock.getDelayedCalls()) == 1
    clock.advance(2.9)
    assert first == second == []
    clock.advance(0.1)  # t=5: the first's deadline
    assert first == [RedisTimeout] and second == []
    clock.advance(1.9)
    assert second == []
    clock.advance(0.1)  # t=7
    assert second == third == [RedisTimeout]
    assert bridge.metrics.redis_timeouts._value.get() == 3
    assert clock.getDelayedCalls() == []


def test_an_answer_in_time_is_passed_on_and_a_late_one_only_frees_its_place() -> None:
    clock = Clock()
    bridge, connection = bridge_on(clock)
    freed: list[str] = []
    late = outcomes(bridge.execute("PING", answered=lambda: freed.append("late")))
    clock.advance(5)
    timely = outcomes(bridge.execute("PING", answered=lambda: freed.append("timely")))
    assert late == [RedisTimeout] and freed == []
    connection.answer_all()
    assert late == [RedisTimeout]  # told once
    assert timely == [b"PONG"]
    assert freed == ["late", "timely"]


def test_a_command_sent_while_others_time_out_gets_its_full_timeout() -> None:
    clock = Clock()
    bridge, connection = bridge_on(clock)
    retried: list[list[Any]] = []
    bridge.execute("PING").addErrback(lambda _: retried.append(outcomes(bridge.execute("PING"))))
    pending = outcomes(bridge.execute("PING"))
    clock.advance(5)
    assert pending == [RedisTimeout] and retried == [[]]
    clock.advance(4.9)
    assert retried == [[]]
    clock.advance(0.1)
    assert retried == [[RedisTimeout]]


def test_stopping_waits_for_every_command_sent_even_a_timed_out_one() -> None:
    clock = Clock()
    bridge, connection = bridge_on(clock)
    bridge.execute("PING").addErrback(lambda _: None)
    clock.advance(5)
    stopped: list[bool] = []
    defer.maybeDeferred(bridge.stopService).addCallback(lambda _: stopped.append(True))
    assert stopped == []
    connection.answer_all()
    assert stopped == [True]
