"""The one error policy: Redis unavailable is quiet, a Redis refusal is a line, a bug is a traceback; all rate-limited."""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from txredisapi import ResponseError

from tangram_channel.errors import (
    INTERNAL_ERROR,
    REDIS_TIMEOUT,
    REDIS_UNAVAILABLE,
    RedisTimeout,
    RedisUnavailable,
    reason,
    unless_unavailable,
)
from tangram_channel.logs import ThrottledLog


def logged_errback(what: str = "publishing") -> tuple[Any, list[dict[str, Any]], Clock]:
    events: list[dict[str, Any]] = []
    clock = Clock()
    return unless_unavailable(ThrottledLog(Logger(observer=events.append), clock), what), events, clock


def failure_of(error: Exception) -> Failure:
    try:
        raise error
    except Exception:
        return Failure()


def test_redis_unavailable_or_late_is_quiet():
    errback, events, _ = logged_errback()
    errback(failure_of(RedisUnavailable()))
    errback(failure_of(RedisTimeout()))
    assert events == []


def test_a_redis_refusal_is_one_line_in_its_own_words_without_a_traceback():
    errback, events, _ = logged_errback("presence write")
    errback(failure_of(ResponseError("READONLY You can't write against a read only replica.")))
    [event] = events
    assert event["log_level"] == LogLevel.warn and "log_failure" not in event
    assert event["error"] == "READONLY You can't write against a read only replica."


def test_a_bug_is_logged_with_its_traceback_once_a_minute():
    errback, events, clock = logged_errback("presence heartbeat")
    for _ in range(5):
        errback(failure_of(KeyError("a bug in a callback")))
    [event] = events
    assert event["log_level"] == LogLevel.error and event["log_failure"].check(KeyError)
    clock.advance(61)
    errback(failure_of(KeyError("a bug in a callback")))
    assert len(events) == 2 and events[1]["dropped"] == 4


def test_clients_are_told_the_kind_of_failure_and_never_its_details():
    assert reason(failure_of(RedisTimeout())) == REDIS_TIMEOUT
    assert reason(failure_of(RedisUnavailable("redis refused the write: READONLY ..."))) == REDIS_UNAVAILABLE
    assert reason(failure_of(ValueError("/srv/secret/path"))) == INTERNAL_ERROR
