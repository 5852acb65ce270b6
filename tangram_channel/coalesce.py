"""
When a channel's messages are written to its members: at once, or held a moment so
that two share one write.

Writing to a socket is the service's main cost (a system call and, behind it, TCP's
work per segment), and it is paid per write, hardly per byte. A channel that gets
messages faster than one per ``delay`` seconds has its lone message held until the
next arrives, and both go to each member in one write; a message is never held longer
than ``delay``. Several messages from one read of the subscriber are written together
at once, and a channel that is quiet gets its message at once, so only busy channels
wait, and never longer than the gap to their next message.

Messages are written in the order they came, across channels too (a socket may be in
several): a message for any other channel first releases what is held.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime

from .frames import Broadcast


class Coalescer:
    def __init__(self, clock: IReactorTime, delay: float, write: Callable[[str, list[Broadcast]], None]) -> None:
        self._clock = clock
        self._delay = delay
        self._write = write
        # each channel's last message's arrival, in a list of one to read and set in place
        self._last_arrival: dict[str, list[float]] = {}
        self._held: tuple[str, list[Broadcast], IDelayedCall] | None = None

    def arrived(self, topic: str, broadcasts: list[Broadcast]) -> None:
        """Consecutive broadcasts for ``topic``: write them now, or hold a lone busy one."""
        busy = self._arrives(self.arrival(topic), self._clock.seconds())
        if self._held is not None:
            held_topic, earlier, timer = self._held
            if held_topic == topic:
                self._held = None
                timer.cancel()
                broadcasts = earlier + broadcasts
            else:
                self.flush()
        if len(broadcasts) > 1 or not busy:
            self._write(topic, broadcasts)
        else:
            self._held = (topic, broadcasts, self._clock.callLater(self._delay, self.flush))

    def arrival(self, topic: str) -> list[float]:
        """
        When ``topic``'s last message came, in a list of one, kept until ``forget``: a
        member alone in its channel keeps it (``hub.Member.lone_push``) rather than have
        it looked up for each message.
        """
        arrival = self._last_arrival.get(topic)
        if arrival is None:
            arrival = self._last_arrival[topic] = [-math.inf]
        return arrival

    def _arrives(self, arrival: list[float], now: float) -> bool:
        """Record a channel's message (its ``arrival``) coming ``now``: whether the channel is busy (one came within ``delay``)."""
        previous = arrival[0]
        arrival[0] = now
        return now - previous < self._delay

    def lets_through(self, arrival: list[float], now: float) -> bool:
        """
        Whether a lone broadcast for the channel of ``arrival`` coming ``now`` may be
        written at once without ``arrived``: nothing is held, and the channel is not busy.
        Its arrival is recorded unless something is held; one not let through for being
        busy goes to ``arrived`` next, which finds the channel busy just the same.
        """
        return self._held is None and not self._arrives(arrival, now)

    def forget(self, topic: str) -> None:
        """The channel has no members left here: drop what was held for it."""
        self._last_arrival.pop(topic, None)
        if self._held is not None and self._held[0] == topic:
            self._held[2].cancel()
            self._held = None

    def flush(self) -> None:
        """Write what is held now (its time is up, another channel's message came, or the service stops)."""
        if self._held is None:
            return
        topic, broadcasts, timer = self._held
        self._held = None
        if timer.active():
            timer.cancel()
        self._write(topic, broadcasts)
