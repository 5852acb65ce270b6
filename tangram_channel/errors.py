"""
What can go wrong on the way to Redis, the words clients are told, and the one policy
for what reaches the log.

Redis being unavailable or late is expected: the bridge says once that it is down (and
logs each timeout, rate-limited), and each client is told in its reply, so errbacks
stay quiet about it. Anything else (a refusal such as ``READONLY``, or a bug) is logged,
at most a line a minute per kind, with its traceback.
"""

from __future__ import annotations

from collections.abc import Callable
from twisted.logger import LogLevel
from twisted.python.failure import Failure
from txredisapi import ResponseError

from .logs import ThrottledLog

# the reasons of error replies
REDIS_UNAVAILABLE = "redis unavailable"
REDIS_TIMEOUT = "redis timeout"
REDIS_NOT_REPLICATED = "redis not replicated"
INTERNAL_ERROR = "internal error"


class RedisUnavailable(Exception):
    """Redis cannot take the command now; the caller answers its client with an error."""

    def __init__(self, reason: str = REDIS_UNAVAILABLE) -> None:
        super().__init__(reason)


class RedisTimeout(RedisUnavailable):
    """Redis gave no answer in time; the command may still run (the client is told "redis timeout")."""

    def __init__(self) -> None:
        super().__init__(REDIS_TIMEOUT)


class NotReplicated(RedisUnavailable):
    """Redis ran the publish, but not enough replicas confirmed it in time (``redis_wait_replicas``)."""

    def __init__(self) -> None:
        super().__init__(REDIS_NOT_REPLICATED)


def reason(failure: Failure) -> str:
    """What a client is told of ``failure``: never its details, which may name internals."""
    if failure.check(RedisTimeout):
        return REDIS_TIMEOUT
    if failure.check(NotReplicated):
        return REDIS_NOT_REPLICATED
    if failure.check(RedisUnavailable):
        return REDIS_UNAVAILABLE
    return INTERNAL_ERROR


def unless_unavailable(errors: ThrottledLog, what: str) -> Callable[[Failure], None]:
    """
    An errback for a call nobody waits on: quiet if Redis is unavailable; a line if Redis
    refused (``-READONLY``, ``-OOM``: its own words say it all); a traceback for anything
    else, which is a bug.
    """

    def logged(failure: Failure) -> None:
        if failure.check(RedisUnavailable):
            return
        if failure.check(ResponseError):
            errors.emit(what, "{what} failed: Redis answered {error}", what=what, error=failure.getErrorMessage())
        else:
            errors.emit(what, "{what} failed", failure, LogLevel.error, what=what)

    return logged
