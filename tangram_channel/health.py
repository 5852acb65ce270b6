"""
``GET /healthz``: whether this node can serve, for load balancers and orchestrators.

200 while Redis answers and takes writes, 503 while it does not (sockets stay open
then, but pushes fail or hang and broadcasts stop, so traffic is better sent to another
node). The body says why. A connected socket is not enough: a frozen Redis keeps its
connections, and one demoted to a replica by a failover answers but refuses writes, so
a probe writes to Redis every second.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.application.service import Service
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import Request

from . import __version__
from .metrics import Metrics
from .naming import HEALTH_KEY
from .protocol import PhoenixFactory
from .errors import REDIS_UNAVAILABLE, RedisUnavailable
from .bus import RedisBridge

class RedisProbe(Service):
    """
    Writes a short-lived key every ``interval`` seconds, one write at a time, and tells
    what is wrong with Redis: not connected, not answering within ``deadline`` seconds,
    or refusing writes (read-only, out of memory), with Redis's own words for the last.
    """

    def __init__(
        self, bridge: RedisBridge, clock: IReactorTime, metrics: Metrics, interval: float = 1.0, deadline: float = 2.0
    ) -> None:
        self._bridge = bridge
        self._clock = clock
        self._interval = interval
        self._deadline = deadline
        self._sent_at: float | None = None
        self._refusal: str | None = None
        self._loop = LoopingCall(self._probe)
        self._loop.clock = clock
        metrics.redis_healthy.set_function(lambda: self.problem() is None)

    def startService(self) -> None:
        super().startService()
        self._loop.start(self._interval, now=False)

    def stopService(self) -> None:
        super().stopService()
        self._loop.stop()

    def problem(self) -> str | None:
        """What keeps this node from serving, or None when Redis is fine."""
        if not self._bridge.connected:
            return REDIS_UNAVAILABLE
        if self._sent_at is not None and self._clock.seconds() - self._sent_at > self._deadline:
            return "redis not answering"
        if self._refusal is not None:
            return f"redis refuses writes: {self._refusal}"
        return None

    def _probe(self) -> None:
        if self._sent_at is not None or not self._bridge.connected:
            return
        self._sent_at = self._clock.seconds()
        written = self._bridge.execute("SET", HEALTH_KEY, b"1", b"PX", b"10000", answered=self._answered)
        written.addCallbacks(self._written, self._refused)

    def _written(self, reply: Any) -> None:
        self._refusal = None

    def _refused(self, failure: Failure) -> None:
        # unavailable and late are told by the connection and the clock
        if not failure.check(RedisUnavailable):
            self._refusal = str(failure.value)[:200]

    def _answered(self) -> None:
        self._sent_at = None


class HealthResource(Resource):
    isLeaf = True

    def __init__(
        self,
        bridge: RedisBridge,
        probe: RedisProbe,
        factory: PhoenixFactory,
        clock: IReactorTime,
        public_url: str | None = None,
    ) -> None:
        super().__init__()
        self._public_url = public_url
        self._bridge = bridge
        self._probe = probe
        self._factory = factory
        self._clock = clock
        self._started = clock.seconds()

    def status(self) -> dict[str, object]:
        problem = self._probe.problem()
        return {
            "status": problem or "ok",
            "redis": {
                "connected": self._bridge.connected,
                "healthy": problem is None,
                "url": str(self._bridge.url),
                # the server the commands last went to, its role by ROLE, the subscriber's
                # server (another node in a cluster), and (Sentinel, Cluster) the failovers followed
                "address": self._bridge.address,
                "role": self._bridge.role,
                "subscriber": self._bridge.subscriber_address,
                "failovers": self._bridge.failovers,
            },
            "subscriptions": len(self._bridge.watched_topics),
            "sockets": len(self._factory.sockets),
            "uptime_seconds": round(self._clock.seconds() - self._started, 3),
            "version": __version__,
            "public_url": self._public_url,
        }

    def render_GET(self, request: Request) -> bytes:
        body = self.status()
        request.setResponseCode(200 if body["status"] == "ok" else 503)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        return json.dumps(body).encode("utf-8")
