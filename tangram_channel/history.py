"""
The last minutes of this node's numbers, for the admin console's charts.

A sample of the totals is taken every ``interval`` seconds and the last ``span`` seconds
of them kept, so a console opened now draws the past ten minutes at once instead of
starting blank; the page turns successive totals into rates. Bounded: a fixed number of
samples of a fixed set of numbers.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from twisted.application.service import Service
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall

Sample = dict[str, float]


class History(Service):
    """Keeps ``sample()`` (named totals) every ``interval`` seconds, for ``span`` seconds, stamped with the clock."""

    def __init__(
        self, clock: IReactorTime, sample: Callable[[], Sample], interval: float = 5.0, span: float = 600.0
    ) -> None:
        self._clock = clock
        self._sample = sample
        self.samples: deque[Sample] = deque(maxlen=int(span / interval) + 1)
        self._loop = LoopingCall(self.take)
        self._loop.clock = clock
        self._interval = interval

    def take(self) -> None:
        self.samples.append({"t": self._clock.seconds(), **self._sample()})

    def startService(self) -> None:
        super().startService()
        self._loop.start(self._interval, now=True)

    def stopService(self) -> None:
        super().stopService()
        if self._loop.running:
            self._loop.stop()
