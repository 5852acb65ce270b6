"""
``GET /healthz``: whether this node can serve, for load balancers and orchestrators.

200 while Redis is connected, 503 while it is not (sockets stay open then, but pushes
fail and broadcasts stop, so traffic is better sent to another node). The body says why.
"""

from __future__ import annotations

import json

from twisted.internet.interfaces import IReactorTime
from twisted.web.resource import Resource
from twisted.web.server import Request

from . import __version__
from .protocol import PhoenixFactory
from .redis import RedisBridge


class HealthResource(Resource):
    isLeaf = True

    def __init__(
        self, bridge: RedisBridge, factory: PhoenixFactory, clock: IReactorTime, public_url: str | None = None
    ) -> None:
        super().__init__()
        self._public_url = public_url
        self._bridge = bridge
        self._factory = factory
        self._clock = clock
        self._started = clock.seconds()

    def status(self) -> dict[str, object]:
        connected = self._bridge.connected
        return {
            "status": "ok" if connected else "redis unavailable",
            "redis": {"connected": connected, "url": str(self._bridge.url)},
            "subscriptions": len(self._bridge.watched_topics),
            "sockets": len(self._factory.sockets),
            "uptime_seconds": round(self._clock.seconds() - self._started, 3),
            "version": __version__,
            "public_url": self._public_url,
        }

    def render_GET(self, request: Request) -> bytes:
        body = self.status()
        request.setResponseCode(200 if body["redis"]["connected"] else 503)  # type: ignore[index]
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        return json.dumps(body).encode("utf-8")
