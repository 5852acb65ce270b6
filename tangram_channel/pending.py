"""
What the Redis subscriber has read and the hub has not been handed yet.

Redis closes a subscriber whose output buffer passes ``client-output-buffer-limit
pubsub``, and every channel then loses messages. So the subscriber's read loop only
queues what arrives; the hub gets it in slices of about ``slice_bytes``, one slice a
reactor turn, and between them the reactor reads the socket again: Redis is read as
fast as it writes, however slow validation and fan-out are. The queue is bounded in
bytes: past ``max_bytes`` the subscriber is not read until half of it is delivered,
and Redis holds the rest (and may cut us, which the bridge diagnoses).

When a read is over (``read_over``, which the reader calls after every read, however
it ends) its first slice is handed on in the same reactor turn, the rest a turn each:
with messages that trickle in one per read, as on many quiet channels, that saves a
reactor turn per message, and a busy stream's read sets up no timer to hand it on.

A read that comes within ``read_delay`` of the one before, and whose messages made
fewer than ``REST_BELOW`` deliveries, is followed by a rest of ``read_delay`` in which
the socket is not read, while the service is busy: its process took ``BUSY_SHARE`` of
a core or more over a second, and until it takes less than ``CALM_SHARE``. Each
wake-up (epoll, the reactor's turn, a read, the writes' system call) costs about as
much as delivering a few messages to one member, and a busy stream of messages for one
member each (Tangram's ``streaming-<id>``) arrives a few at a time: resting lets a read
gather many. A rest delays what comes during it by up to ``read_delay``, though: on a
machine where the service has CPU to spare that is most of a message's latency (W5
on a quick machine: p99 1.3-1.4 ms resting against 0.24-0.44 ms reading at once, for
5.8-7.5 against 8-11 us of CPU per delivery), so only a busy service pays it. A stream
that is quiet is read at once, and so is one whose reads each fan out to many sockets:
their wake-ups are paid for already. When a rest ends the socket is read from its
timer (``read_now``, where the reader gives one) and watched again only if nothing had
come: a busy stream stays out of epoll.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.logger import Logger

from .metrics import Metrics

SLICE_BYTES = 256 * 1024
# a read whose slice made this many deliveries or more has paid for its wake-up: no rest
REST_BELOW = 64
# the service's CPU, in shares of a core over a second, from which busy streams rest
# between reads, and under which they are read at once again: W5's 10,000 deliveries a
# second took 8-11 % of a core read at once on a quick machine, and about 20 % resting
# on a slow one
BUSY_SHARE = 0.2
CALM_SHARE = 0.1
LOAD_PERIOD = 1.0  # seconds over which the service's CPU is weighed

log = Logger()

T = TypeVar("T")


class PendingMessages(Generic[T]):
    """A byte-bounded queue between a socket's read loop and a slow consumer."""

    def __init__(
        self,
        clock: IReactorTime,
        deliver: Callable[[list[T]], int],
        max_bytes: int,
        metrics: Metrics,
        slice_bytes: int = SLICE_BYTES,
        read_delay: float = 0.0,
        cpu_seconds: Callable[[], float] = time.process_time,
    ) -> None:
        self._clock = clock
        self._deliver = deliver
        self._max_bytes = max_bytes
        self.slice_bytes = slice_bytes
        self._metrics = metrics
        self._read_delay = read_delay
        self._last_read = float("-inf")
        self._cpu_seconds = cpu_seconds
        self._weighed_at = clock.seconds()
        self._cpu_at_weighing = cpu_seconds()
        self.busy = False  # whether the service's CPU lets busy streams rest (BUSY_SHARE)
        self._rest: Any = None  # the call that ends a rest between reads
        self._stopped = False
        self._queue: deque[tuple[list[T], int]] = deque()  # chunks of items and their size in bytes
        self._call: Any = None  # the next turn's slice, while more than one slice is queued
        self._producer: IPushProducer | None = None
        self._read_now: Callable[[], bool] | None = None
        self.bytes = 0
        self.paused = False

    def attach(self, producer: IPushProducer, read_now: Callable[[], bool] | None = None) -> None:
        """
        Read from ``producer`` now (a new connection); paused at once while the queue is full.
        ``read_now`` reads it while paused, True if anything had come (see ``_rested``).
        """
        self._producer = producer
        self._read_now = read_now
        self._end_rest()
        if self.paused:
            producer.pauseProducing()

    def stop(self) -> None:
        """
        The service stops: what is queued is dropped (the sockets it was for are closed),
        and the socket is read on without pausing, so that its connection can close: TLS
        waits to read the server's close_notify, which a socket at rest never would.
        """
        self._stopped = True
        self._read_delay = 0.0  # no read is soon after another any more: no rest
        self._end_rest()
        if self._call is not None:
            self._call.cancel()
            self._call = None
        self._queue.clear()
        self.bytes = 0
        self.paused = False
        if self._producer is not None:
            self._producer.resumeProducing()

    def _end_rest(self) -> None:
        if self._rest is not None:
            self._rest.cancel()
            self._rest = None

    def extend(self, items: list[T], size: int) -> None:
        """
        Queue ``items``, ``size`` bytes in all, to be handed on together (with other chunks
        while a slice has room) once the read is over: the caller keeps a chunk to about
        ``slice_bytes``. Called from the read loop, so it only appends; a chunk is a list,
        not an entry per item.
        """
        if self._stopped:
            return
        self._queue.append((items, size))
        self.bytes += size
        if not self.paused and self.bytes > self._max_bytes:
            self.paused = True
            self._metrics.redis_subscriber_pauses.inc()
            if self._producer is not None:
                self._producer.pauseProducing()

    def read_over(self) -> None:
        """
        The socket's read is parsed: hand its first slice on now (the rest, a turn each,
        as before), then rest if the read came soon after the last and made few deliveries.
        """
        now = self._clock.seconds()
        since = now - self._weighed_at
        if since >= LOAD_PERIOD or since < 0:  # a second has passed, or the clock was set back
            self._weigh_load(now, since)
        soon = now - self._last_read < self._read_delay
        self._last_read = now
        deliveries = 0
        if self._queue and self._call is None:  # else nothing came, or a slice is already due next turn
            try:
                deliveries = self._deliver_slice()
            except Exception:
                # as the reactor would for its call: logged, and the read loop goes on
                log.failure("handing on messages from Redis")
        if soon and self.busy and deliveries < REST_BELOW and self._rest is None and self._producer is not None:
            self._rest = self._clock.callLater(self._read_delay, self._rested)
            self._producer.pauseProducing()

    def _weigh_load(self, now: float, since: float) -> None:
        """Whether the service is busy: its CPU over the ``since`` seconds since the last weighing."""
        cpu = self._cpu_seconds()
        if since > 0:  # else weighed again from now on
            share = (cpu - self._cpu_at_weighing) / since
            self.busy = share >= (CALM_SHARE if self.busy else BUSY_SHARE)
        self._weighed_at, self._cpu_at_weighing = now, cpu

    def _deliver_slice(self) -> int:
        items: list[T] = []
        taken = 0
        while self._queue and taken < self.slice_bytes:
            chunk, size = self._queue.popleft()
            if items:
                items.extend(chunk)
            else:
                items = chunk  # most slices are one chunk: no copy
            taken += size
        self.bytes -= taken
        # set up before handing over, so an error in the consumer cannot stall the queue
        self._call = self._clock.callLater(0, self._deliver_slice) if self._queue else None
        if self.paused and self.bytes <= self._max_bytes // 2:
            self.paused = False
            if self._producer is not None and self._rest is None:
                self._producer.resumeProducing()
        return self._deliver(items)

    def _rested(self) -> None:
        self._rest = None
        self._last_read = self._clock.seconds()  # busy still if data is waiting now: another rest after it
        if self.paused or self._producer is None:
            return
        # what came during the rest is read now, and ``read_over`` may rest again: then
        # the socket stays paused, out of the reactor's watch
        if self._read_now is not None and self._read_now() and (self._rest is not None or self.paused):
            return
        self._producer.resumeProducing()
