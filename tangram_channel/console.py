"""
What the admin console reads and does, under ``/admin``, with the admin token it logs in with.

The console used to scrape ``/metrics``, which a proxy keeps for monitoring hosts (the
documented nginx block does): behind it the page showed ``NaN`` and "Redis down". So the
console reads ``GET /admin/stats``, a JSON view of this node, through the path that
serves the page. Each request carries ``Authorization: Bearer <admin token>``, the JWT
the page joins ``admin`` with; there are no cookies, so another site cannot make a
browser send it.

``/admin/stats`` also lists this node's channels with their message counts and their
agents by the user ``id`` of their tokens, and the last minutes of the totals
(``history``). ``POST /admin/publish`` sends a message to a channel through Redis, as a
plugin would; ``POST /admin/disconnect`` closes a client's socket on this node. Both are
logged with the admin's ``id`` and what was done, never a token.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from . import frames
from .hub import Hub
from .history import History, Sample
from .metrics import PREFIX, Metrics
from .protocol import CLOSE_POLICY, PhoenixFactory
from .errors import RedisTimeout, RedisUnavailable
from .bus import RedisBridge
from .naming import ADMIN_TOPIC, to_channel
from .tokens import Grant, TokenAuthority, TokenRefused
from .web import BodyRefused, json_object

log = Logger()

# agents named per channel: a channel of thousands would make every poll megabytes
AGENTS_NAMED = 500

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
        return tokens.verify(token.strip(), ADMIN_TOPIC)
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


class NodeView:
    """What the console shows of this node: its totals and its channels."""

    def __init__(self, metrics: Metrics, bridge: RedisBridge, hub: Hub) -> None:
        self._metrics = metrics
        self._bridge = bridge
        self._hub = hub

    def totals(self) -> Sample:
        sample = self._metrics.registry.get_sample_value
        totals = {name: sample(PREFIX + metric) or 0.0 for name, metric in COUNTERS.items()}
        totals["sockets"] = sample(PREFIX + "sockets") or 0.0
        return totals

    def channels(self) -> list[dict[str, Any]]:
        """Each channel with members here: their count, its messages, and its agents' user ids (all nodes')."""
        view = []
        for topic, members in sorted(self._hub.members.items()):
            replica = self._hub.presence.replicas.get(topic)
            entries = list(replica.entries.items())[:AGENTS_NAMED] if replica is not None else []
            messages_in, messages_out = self._hub.traffic.of(topic)
            view.append({
                "channel": topic, "members": len(members), "messages_in": messages_in,
                "messages_out": messages_out, "agents": {ref: key for ref, (key, _) in entries},
            })
        return view

    @property
    def redis_connected(self) -> bool:
        return self._bridge.connected


class StatsResource(AdminResource):
    """``GET /admin/stats``: this node's totals, Redis state, channels and history, as JSON."""

    def __init__(self, tokens: TokenAuthority, view: NodeView, history: History) -> None:
        super().__init__(tokens)
        self._view = view
        self._history = history

    def authorized(self, request: Request, grant: Grant) -> bytes:
        if request.method != b"GET":
            request.setHeader(b"allow", b"GET")
            return json_answer(request, 405, {"error": "use GET"})
        body: dict[str, Any] = dict(self._view.totals())
        body.update(
            redis_connected=self._view.redis_connected, channels=self._view.channels(),
            history=list(self._history.samples),
        )
        return json_answer(request, 200, body)


class ActionResource(AdminResource):
    """An admin's action: ``POST`` with a JSON object body."""

    example = "{}"

    def authorized(self, request: Request, grant: Grant) -> Any:
        if request.method != b"POST":
            request.setHeader(b"allow", b"POST")
            return json_answer(request, 405, {"error": "use POST with a JSON body"})
        try:
            return self.act(request, grant, json_object(request, self.example))
        except BodyRefused as e:
            return json_answer(request, e.code, {"error": e.sentence})

    def act(self, request: Request, grant: Grant, fields: dict[str, Any]) -> Any:
        raise NotImplementedError


def _text_field(fields: dict[str, Any], name: str) -> str:
    value = fields.get(name)
    if not isinstance(value, str) or not value or len(value) > 256:
        raise BodyRefused(422, f'"{name}" is required: a string of 1 to 256 characters')
    return value


class PublishResource(ActionResource):
    """``POST /admin/publish {"channel", "event", "payload"}``: ``PUBLISH to:<channel>:<event>``, as a plugin does."""

    example = '{"channel": "system", "event": "test", "payload": {"msg": "hi"}}'

    def __init__(self, tokens: TokenAuthority, bridge: RedisBridge) -> None:
        super().__init__(tokens)
        self._bridge = bridge

    def act(self, request: Request, grant: Grant, fields: dict[str, Any]) -> Any:
        channel, event = _text_field(fields, "channel"), _text_field(fields, "event")
        if ":" in event:
            raise BodyRefused(422, "\"event\" must not contain ':' (the channel name ends at the last one)")
        payload = frames.dumps(fields.get("payload", {}))
        log.info(
            "admin {admin} publishes {size} bytes to channel {channel}, event {event}",
            admin=grant.id, size=len(payload), channel=channel, event=event,
        )
        lost: list[Any] = []  # the client may go while Redis answers: then nothing is written
        request.notifyFinish().addErrback(lost.append)
        d = self._bridge.publish(to_channel(channel, event), payload)
        d.addCallbacks(
            lambda nodes: json_answer(request, 200, {"published": True, "nodes": nodes}),
            self._failed, errbackArgs=(request, grant),
        )
        d.addCallback(lambda body: lost or (request.write(body), request.finish()))
        return NOT_DONE_YET

    def _failed(self, failure: Failure, request: Request, grant: Grant) -> bytes:
        if not failure.check(RedisUnavailable, RedisTimeout):
            log.failure("admin {admin}'s publish failed", failure, admin=grant.id)
        return json_answer(request, 503, {"error": f"not published: {failure.getErrorMessage() or 'redis unavailable'}"})


class DisconnectResource(ActionResource):
    """``POST /admin/disconnect {"agent"}``: close the socket of that agent (a ``phx_ref``) if it is on this node."""

    example = '{"agent": "<phx_ref>"}'

    def __init__(self, tokens: TokenAuthority, factory: PhoenixFactory) -> None:
        super().__init__(tokens)
        self._factory = factory

    def act(self, request: Request, grant: Grant, fields: dict[str, Any]) -> bytes:
        conn_id = _text_field(fields, "agent").split(":", 1)[0]
        session = self._factory.session_of(conn_id)
        if session is None:
            return json_answer(request, 404, {"error": f"no connection {conn_id} on this node"})
        users = sorted({member.key for member in session.joins.values()})
        log.info(
            "admin {admin} disconnects connection {conn} (users {users})", admin=grant.id, conn=conn_id, users=users
        )
        session.outbox.close(CLOSE_POLICY, "disconnected by an admin")
        return json_answer(request, 200, {"disconnected": conn_id, "users": users})


def console_endpoints(
    tokens: TokenAuthority, view: NodeView, history: History, bridge: RedisBridge, factory: PhoenixFactory
) -> dict[bytes, Resource]:
    """The console's endpoints, by their name under ``/admin``."""
    return {
        b"stats": StatsResource(tokens, view, history),
        b"publish": PublishResource(tokens, bridge),
        b"disconnect": DisconnectResource(tokens, factory),
    }
