"""
Pushes acknowledged only once replicas have them (``redis_wait_replicas``).

Redis replicates asynchronously: a push answered "ok" once the primary ran its
``PUBLISH`` can still be lost if the primary dies before a replica read it, and the
replica promoted then never had it. ``WAIT n timeout`` answers when ``n`` replicas have
everything this connection wrote before it; one ``WAIT`` after the publishes of a
reactor turn (or sent while the last ``WAIT`` was out) covers them all, so a burst
costs a round trip or two to a replica, not one per push. Sentinel promotes the replica with the most replicated data, so with ``n=1``
every push answered "ok" is on the new primary.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from .errors import NotReplicated


class ReplicaWait:
    """
    ``after_publish()`` gives a Deferred that fires when the next ``WAIT`` sent after
    the publish confirms ``replicas`` replicas, or fails with NotReplicated (or the
    bridge's own failure: Redis unavailable, late). ``execute`` runs a command on the
    connection the publishes went through.
    """

    def __init__(
        self, clock: IReactorTime, execute: Callable[..., defer.Deferred[Any]], replicas: int, timeout: float
    ) -> None:
        self._clock = clock
        self._execute = execute
        self.replicas = replicas
        self._timeout_ms = max(1, int(timeout * 1000))
        self._waiting: list[defer.Deferred[None]] = []  # publishes no WAIT sent yet covers
        self._busy = False  # a WAIT is due this turn or unanswered

    def after_publish(self) -> defer.Deferred[None]:
        d: defer.Deferred[None] = defer.Deferred()
        self._waiting.append(d)
        if not self._busy:
            self._busy = True
            self._clock.callLater(0, self._wait)
        return d

    def _wait(self) -> None:
        # One WAIT at a time: Redis holds the connection while it waits, so a second would
        # only queue behind it, and its timeout would run out before it had its turn
        waiting, self._waiting = self._waiting, []
        asked = self._execute("WAIT", self.replicas, self._timeout_ms)
        asked.addBoth(self._answered, waiting)

    def _answered(self, reply: Any, waiting: list[defer.Deferred[None]]) -> None:
        if not isinstance(reply, Failure) and int(reply) < self.replicas:
            reply = Failure(NotReplicated())
        for d in waiting:
            if isinstance(reply, Failure):
                d.errback(reply)
            else:
                d.callback(None)
        if self._waiting:  # published while this WAIT was out: the next covers them
            self._wait()
        else:
            self._busy = False
