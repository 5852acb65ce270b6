"""
One WebSocket's view of channels: the topics it joined, the replies it owes, and what
each Phoenix event it sends does (heartbeat, join, leave, push). The process's view,
members per topic and the way in from Redis, is the ``Hub``'s.
"""

from __future__ import annotations

import secrets
from typing import Any

from twisted.internet import defer
from twisted.logger import LogLevel
from twisted.python.failure import Failure

from . import frames
from .frames import FrameError, Message
from .hub import Hub, Member, Outbox
from .naming import HEARTBEAT_TOPIC, from_channel
from .presence import Replica
from .errors import INTERNAL_ERROR, RedisUnavailable, reason, unless_unavailable
from .tokens import TokenRefused

class Session:
    """One socket's joins, and what each incoming message does."""

    def __init__(self, hub: Hub, outbox: Outbox, socket_token: str | None, conn_id: str | None = None) -> None:
        self.hub = hub
        self.outbox = outbox
        self.socket_token = socket_token
        self.conn_id = conn_id or secrets.token_hex(8)
        self.joins: dict[str, Member] = {}
        self.closed = False
        # this socket's publishes Redis has not answered yet, and while they are too many,
        # the messages already read that wait for it (no more are read meanwhile)
        self.inflight = hub.inflight.account(self)
        self._held: list[Message[str]] | None = None

    def received(self, message: Message[str]) -> None:
        """Act on ``message``; a bug met on the way costs its sender an error reply, not the socket."""
        if self._held is not None:
            self._held.append(message)
            return
        try:
            self._act_on(message)
        except Exception:
            self._internal_error(Failure(), message)

    def _act_on(self, message: Message[str]) -> None:
        if message.event == "heartbeat" and message.topic == HEARTBEAT_TOPIC:
            self.hub.metrics.heartbeats.inc()
            self._reply_ok(message, {})
            self._publish(message).addErrback(unless_unavailable(self.hub.errors, "publishing a heartbeat"))
        elif message.event == "phx_join":
            self._join(message)
        elif message.event == "phx_leave":
            self._leave(message)
        elif ":" in message.event:
            # published as from:<topic>:<event>, it would land in another topic's namespace
            self._reply(message.join_ref, message.ref, message.topic, "error", {"reason": "event must not contain ':'"})
        elif message.topic in self.joins:
            self._push(message)
        else:
            self._reply(None, message.ref, message.topic, "error", {"reason": "unmatched topic"})

    def frame_error(self, error: FrameError) -> None:
        """Answer an unparseable frame if it can be answered (see ``FrameError.answerable``)."""
        if error.answerable:
            self._reply(error.join_ref, error.ref, error.topic, "error", {"reason": error.reason})

    def pause_reading(self) -> None:
        """
        Redis is behind with this socket's publishes: read nothing more. The messages
        already read (at most one read's worth) wait, in order, until it catches up.
        """
        if self._held is None:
            self._held = []
        self.outbox.pause_reading()

    def resume_reading(self) -> None:
        held, self._held = self._held or [], None
        for message in held:
            self.received(message)  # may pause again: the rest then waits again
        if self._held is None and not self.closed:
            self.outbox.resume_reading()

    def disconnected(self) -> None:
        self.closed = True
        self._held = None
        self.inflight.close()
        for member in list(self.joins.values()):
            self._drop(member, send_close=False)

    # events

    def _join(self, message: Message[str]) -> None:
        topic, join_ref = message.topic, message.join_ref
        if join_ref is None:
            self._refuse(None, message, "join_ref required")
            return
        payload = message.payload if isinstance(message.payload, dict) else {}
        token = payload.get("token")
        try:
            grant = self.hub.tokens.verify(token if isinstance(token, str) else self.socket_token, topic)
        except TokenRefused as e:
            self._refuse(join_ref, message, e.reason)
            return
        previous = self.joins.get(topic)
        if previous is not None:
            self._drop(previous, send_close=True)
        elif len(self.joins) >= self.hub.max_channels_per_socket:
            self._refuse(join_ref, message, "too many channels joined")
            return
        agent_id = f"{self.conn_id}:{topic}:{join_ref}"
        meta = {"phx_ref": agent_id, "online_at": int(self.hub.clock.seconds() * 1000)}
        member = self.joins[topic] = Member(self.outbox, topic, join_ref, grant.id, meta)
        d = self.hub.join(member)
        d.addCallbacks(
            self._joined, self._join_failed, callbackArgs=(member, message), errbackArgs=(member, message)
        )
        d.addErrback(self._completion_failed, member)

    def _joined(self, replica: Replica | None, member: Member, message: Message[str]) -> None:
        if replica is None or self.joins.get(member.topic) is not member:
            return  # left, rejoined or disconnected while Redis answered
        self.hub.metrics.joins.inc()
        self._reply(member.join_ref, message.ref, member.topic, "ok", {"id": member.agent_id})
        self.outbox.send_frame(
            frames.splice(member.join_ref, member.topic, "presence_state", replica.state_json(), self.outbox.vsn),
            False,
        )
        backlog, member.backlog = member.backlog or [], None
        self.outbox.release(backlog)
        for burst in backlog:  # framed once for every joiner
            self.outbox.send_burst(burst)
        payload = message.payload
        if isinstance(payload, dict):
            payload = {k: v for k, v in payload.items() if k != "token"}
        self._publish(message, payload).addErrback(unless_unavailable(self.hub.errors, "publishing a join"))
        self.hub.joined(member)

    def _join_failed(self, failure: Any, member: Member, message: Message[str]) -> None:
        if self.joins.get(member.topic) is member:
            self._drop(member, send_close=False, was_joined=False)
            self._refuse(member.join_ref, message, reason(failure))
        if not failure.check(RedisUnavailable):
            self.hub.errors.emit("join", "join of {topic} failed", failure, LogLevel.error, topic=member.topic)

    def _completion_failed(self, failure: Any, member: Member) -> None:
        """A join is whole or gone: a member left half-joined would keep a backlog forever."""
        if self.joins.get(member.topic) is member:
            self._drop(member, send_close=True)
        self.hub.errors.emit(
            "join completion", "completing a join of {topic} failed", failure, LogLevel.error, topic=member.topic
        )

    def _leave(self, message: Message[str]) -> None:
        member = self.joins.get(message.topic)
        if member is None:
            self._reply_ok(message, {})
            return
        self._reply_ok(message, {"id": member.agent_id})
        self._drop(member, send_close=True)
        self._publish(message).addErrback(unless_unavailable(self.hub.errors, "publishing a leave"))

    def _push(self, message: Message[str]) -> None:
        self.hub.traffic.received(message.topic)
        d = self._publish(message)
        d.addCallbacks(
            lambda _: self._reply_ok(message, {}),
            lambda f: self._reply(message.join_ref, message.ref, message.topic, "error", {"reason": reason(f)}),
        )

    # helpers

    def _drop(self, member: Member, send_close: bool, was_joined: bool = True) -> None:
        """End a join: tell the client if asked, withdraw presence, maybe unsubscribe."""
        del self.joins[member.topic]
        member.active = False
        was_joined = was_joined and member.backlog is None
        if member.backlog:
            self.outbox.release(member.backlog)
        member.backlog = None
        if send_close:
            self.outbox.send(Message(member.join_ref, member.join_ref, member.topic, "phx_close", {}))
        self.hub.leave(member, was_joined=was_joined)

    def _publish(self, message: Message[str], payload: Any = None) -> defer.Deferred[Any]:
        body = message.payload if payload is None else payload
        data = body if isinstance(body, bytes) else frames.dumps(body)
        channel = from_channel(message.topic, message.event)
        size = len(channel) + len(data)
        self.inflight.sent(size)
        try:
            return self.hub.bus.publish(channel, data, answered=lambda: self.inflight.answered(size))
        except Exception:
            self.inflight.answered(size)
            raise

    def _internal_error(self, failure: Failure, message: Message[str]) -> None:
        self.hub.errors.emit(
            "client message", "handling a client's {event} failed", failure, LogLevel.error, event=message.event
        )
        self._reply(message.join_ref, message.ref, message.topic, "error", {"reason": INTERNAL_ERROR})

    def _refuse(self, join_ref: str | None, message: Message[str], reason: str) -> None:
        self.hub.metrics.refused(reason)
        self._reply(join_ref, message.ref, message.topic, "error", {"reason": reason})

    def _reply_ok(self, message: Message[str], response: Any) -> None:
        self._reply(message.join_ref, message.ref, message.topic, "ok", response)

    def _reply(self, join_ref: str | None, ref: str | None, topic: str | None, status: str, response: Any) -> None:
        if not self.closed:
            self.outbox.send(frames.reply(join_ref, ref, topic, status, response))
