"""
What clients had published through Redis that Redis has not answered yet, and the bound on it.

A client that pushes faster than Redis answers (a frozen Redis, a slow link, a flood)
would otherwise grow the service without end: each push waits, encoded, in the
buffer toward Redis. So each socket may have ``socket_commands`` publishes and
``socket_bytes`` bytes unanswered, and the process ``process_commands`` and
``process_bytes``; past any of them the socket is no longer read until Redis has
answered enough (TCP then pushes back on the client). Bytes count until Redis really
answers (or the connection drops), not until the client was told of a timeout: until
then they are still held.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


class Reader(Protocol):
    """A socket whose reading can be stopped and started again."""

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


@dataclass(frozen=True)
class InFlightLimits:
    socket_commands: int = 100
    socket_bytes: int = 4 * 1024 * 1024
    process_commands: int = 10_000
    process_bytes: int = 64 * 1024 * 1024


class InFlight:
    """The process's unanswered publishes, and the sockets waiting for them to drain."""

    def __init__(self, limits: InFlightLimits = InFlightLimits()) -> None:
        self.limits = limits
        self.commands = 0
        self.bytes = 0
        self._waiting: dict[Account, None] = {}  # paused accounts, in the order they paused

    def account(self, reader: Reader) -> Account:
        return Account(self, reader)

    @property
    def waiting(self) -> int:
        """How many sockets are not read until Redis answers."""
        return len(self._waiting)

    @property
    def full(self) -> bool:
        return self.commands >= self.limits.process_commands or self.bytes >= self.limits.process_bytes

    def _drained(self) -> None:
        """The process is under its bounds again: start the waiting sockets that are under theirs."""
        for account in list(self._waiting):
            if self.full:
                return
            if not account.full:
                account._resume()


class Account:
    """One socket's unanswered publishes."""

    __slots__ = ("_pool", "_reader", "commands", "bytes", "paused")

    def __init__(self, pool: InFlight, reader: Reader) -> None:
        self._pool = pool
        self._reader = reader
        self.commands = 0
        self.bytes = 0
        self.paused = False

    @property
    def full(self) -> bool:
        limits = self._pool.limits
        return self.commands >= limits.socket_commands or self.bytes >= limits.socket_bytes

    def sent(self, size: int) -> None:
        """A publish of ``size`` bytes went to Redis; stop reading if that reached a bound."""
        pool = self._pool
        self.commands += 1
        self.bytes += size
        pool.commands += 1
        pool.bytes += size
        if not self.paused and (self.full or pool.full):
            self.paused = True
            pool._waiting[self] = None
            self._reader.pause_reading()

    def answered(self, size: int) -> None:
        """Redis answered (or dropped) a publish of ``size`` bytes."""
        pool = self._pool
        was_full = pool.full
        self.commands -= 1
        self.bytes -= size
        pool.commands -= 1
        pool.bytes -= size
        if self.paused and not self.full and not pool.full:
            self._resume()
        if was_full and not pool.full:
            pool._drained()

    def close(self) -> None:
        """The socket is gone: never resume it (its publishes still count until answered)."""
        self.paused = False
        self._pool._waiting.pop(self, None)

    def _resume(self) -> None:
        self.paused = False
        self._pool._waiting.pop(self, None)
        self._reader.resume_reading()
