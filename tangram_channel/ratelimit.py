"""
Rates and log lines a client cannot push past a bound.

``TokenBucket`` is the budget of one socket (messages, pings, bytes read) or one process:
``rate`` a second, with bursts up to ``burst``. ``LogThrottle`` lets each kind of error through
to the log at most once an interval and counts the rest, so a client that provokes an
error in a loop costs one log line a minute, not one per attempt.

Both read time from an injected clock and do no I/O.
"""

from __future__ import annotations

from twisted.internet.interfaces import IReactorTime


class TokenBucket:
    """``rate`` events a second on average, up to ``burst`` at once; a rate of 0 is no limit."""

    __slots__ = ("_clock", "rate", "burst", "_tokens", "_last")

    def __init__(self, clock: IReactorTime, rate: float, burst: float) -> None:
        self._clock = clock
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._last = clock.seconds()

    def take(self, cost: float = 1.0) -> bool:
        """Spend ``cost`` if the bucket holds it; False (and nothing spent) if not."""
        if self.rate <= 0:
            return True
        self._refill()
        if self._tokens < cost:
            return False
        self._tokens -= cost
        return True

    def charge(self, cost: float) -> float:
        """
        Spend ``cost`` even past what the bucket holds (it was already spent: bytes read);
        the seconds until the debt is paid back, 0 if there is none.
        """
        if self.rate <= 0:
            return 0.0
        self._refill()
        self._tokens -= cost
        return -self._tokens / self.rate if self._tokens < 0 else 0.0

    def _refill(self) -> None:
        now = self._clock.seconds()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now


class LogThrottle:
    """
    At most one line per ``interval`` seconds for each kind of event.

    Kinds are names the code chooses (``"frame"``, ``"join failed"``), never text a
    client sent, so the table stays as small as the code's list of error paths.
    """

    def __init__(self, clock: IReactorTime, interval: float = 60.0) -> None:
        self._clock = clock
        self.interval = interval
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def allow(self, kind: str) -> int | None:
        """
        None if a line of ``kind`` was let through less than ``interval`` ago (this one is
        counted and dropped); else how many were dropped since the last one let through.
        """
        now = self._clock.seconds()
        last = self._last.get(kind)
        if last is not None and now - last < self.interval:
            self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
            return None
        self._last[kind] = now
        return self._suppressed.pop(kind, 0)
