"""
What the admin console reads, under ``/admin``, with the admin token it logs in with.

The console used to scrape ``/metrics``, which a proxy keeps for monitoring hosts (the
documented nginx block does): behind it the page showed ``NaN`` and "Redis down". So the
console reads ``GET /admin/stats``, a JSON view of this node, through the path that
serves the page. Each request carries ``Authorization: Bearer <admin token>``, the JWT
the page joins ``admin`` with; there are no cookies, so another site cannot make a
browser send it.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.web.resource import Resource
from twisted.web.server import Request

from .metrics import PREFIX, Metrics
from .redis import RedisBridge
from .tokens import ADMIN_CHANNEL, Grant, TokenAuthority, TokenRefused

# this node's counters, as the console names them
COUNTERS = {
    "joins": "joins_total",
    "messages_in": "messages_received_total",
    "messages_out": "messages_sent_total",
    "bytes_in": "bytes_received_total",
    "bytes_out": "bytes_sent_total",
}


def json_answer(request: Request, code: int, body: Any) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    return json.dumps(body).encode("utf-8")


def admin_grant(request: Request, tokens: TokenAuthority) -> Grant | None:
    """The admin token's grant from ``Authorization: Bearer``, or None if there is no valid one."""
    scheme, _, token = (request.getHeader("authorization") or "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    try:
        return tokens.verify(token.strip(), ADMIN_CHANNEL)
    except TokenRefused:
        return None


class AdminResource(Resource):
    """A console endpoint: answers 401 unless the request carries an admin token."""

    isLeaf = True

    def __init__(self, tokens: TokenAuthority) -> None:
        super().__init__()
        self._tokens = tokens

    def render(self, request: Request) -> bytes:
        grant = admin_grant(request, self._tokens)
        if grant is None:
            request.setHeader(b"www-authenticate", b'Bearer realm="tangram-channel admin"')
            return json_answer(request, 401, {"error": "send an admin token as Authorization: Bearer <token>"})
        return self.authorized(request, grant)

    def authorized(self, request: Request, grant: Grant) -> bytes:
        raise NotImplementedError


class StatsResource(AdminResource):
    """``GET /admin/stats``: this node's sockets, Redis state and counters, as JSON."""

    def __init__(self, tokens: TokenAuthority, metrics: Metrics, bridge: RedisBridge) -> None:
        super().__init__(tokens)
        self._metrics = metrics
        self._bridge = bridge

    def stats(self) -> dict[str, Any]:
        sample = self._metrics.registry.get_sample_value
        body: dict[str, Any] = {name: sample(PREFIX + metric) for name, metric in COUNTERS.items()}
        body["sockets"] = sample(PREFIX + "sockets")
        body["redis_connected"] = self._bridge.connected
        return body

    def authorized(self, request: Request, grant: Grant) -> bytes:
        if request.method != b"GET":
            request.setHeader(b"allow", b"GET")
            return json_answer(request, 405, {"error": "use GET"})
        return json_answer(request, 200, self.stats())
