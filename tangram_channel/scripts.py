"""
Lua scripts for Redis, kept in ``tangram_channel/lua/*.lua`` (package data) where they
read as Lua, each opening with its contract (KEYS, ARGV, reply).

A script is sent whole once per Redis, then run by its SHA1 with ``EVALSHA``, so a
heartbeat or a flush costs its arguments and not the script's kilobyte. A Redis that
does not know the SHA (restarted, failed over, ``SCRIPT FLUSH``) answers ``NOSCRIPT``:
the script is then sent with ``EVAL``, which also caches it again.
"""

from __future__ import annotations

import hashlib
from importlib import resources
from typing import Any, Protocol

from twisted.internet import defer
from twisted.python.failure import Failure
from txredisapi import ResponseError


class Executor(Protocol):
    def execute(self, *command: Any) -> defer.Deferred[Any]: ...


class Script:
    """One Lua script of the package, by the name of its file."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.body = (resources.files(__package__) / "lua" / f"{name}.lua").read_bytes()
        self.sha = hashlib.sha1(self.body).hexdigest()

    def run(self, redis: Executor, keys: list[Any], args: list[Any]) -> defer.Deferred[Any]:
        """The script's reply, run by SHA, or sent whole if Redis does not know it."""
        d = redis.execute("EVALSHA", self.sha, len(keys), *keys, *args)
        return d.addErrback(self._unknown, redis, keys, args)

    def _unknown(self, failure: Failure, redis: Executor, keys: list[Any], args: list[Any]) -> Any:
        if failure.check(ResponseError) and str(failure.value).startswith("NOSCRIPT"):
            return redis.execute("EVAL", self.body, len(keys), *keys, *args)
        return failure
