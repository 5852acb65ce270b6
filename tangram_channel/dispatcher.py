"""
Channels and routing: what each Phoenix event does, with no I/O of its own.

A ``Session`` is one WebSocket's view: the topics it joined and the replies it owes.
The ``Hub`` is the process's view: which sessions are members of which topic, and the
path from a Redis message to every member. Sockets, Redis and presence are handed in,
so all of this runs in tests against fakes and a ``Clock``.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any, Protocol

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from . import frames
from .coalesce import Coalescer
from .frames import Broadcast, Burst, FrameError, Message
from .inflight import InFlight
from .logs import ThrottledLog
from .metrics import Metrics
from .presence import Presence, Replica
from .redis import RedisTimeout, RedisUnavailable
from .tokens import TokenAuthority, TokenRefused

log = Logger()

HEARTBEAT_TOPIC = "phoenix"
SYSTEM_TOPIC = "system"
ADMIN_TOPIC = "admin"
ALWAYS_WATCHED = (SYSTEM_TOPIC, ADMIN_TOPIC)


class Outbox(Protocol):
    """Where a session's frames go: one WebSocket."""

    vsn: str

    def send(self, message: Message) -> None:
        """Encode and send a message meant for this socket alone."""

    def send_frame(self, frame: bytes, is_binary: bool) -> None:
        """Send frame bytes already encoded for this socket's serializer."""

    def send_burst(self, burst: Burst) -> None:
        """Send a topic's broadcasts, reusing the framing other members already paid for."""

    def pause_reading(self) -> None:
        """Read nothing more from the client for now."""

    def resume_reading(self) -> None:
        """Read from the client again."""

    def hold(self, burst: Burst) -> bool:
        """Count a burst kept in a join backlog toward the send budget; False if that closed the socket."""

    def release(self, bursts: list[Burst]) -> None:
        """Stop counting bursts that left a join backlog."""


class Bus(Protocol):
    """Redis as the hub sees it (``RedisBridge`` provides it)."""

    def watch(self, topic: str) -> defer.Deferred[None]: ...

    def unwatch(self, topic: str) -> None: ...

    def publish(
        self, channel: bytes, payload: bytes, answered: Callable[[], None] | None = None
    ) -> defer.Deferred[Any]: ...


class Member:
    """One join of one session to one topic."""

    __slots__ = ("session", "topic", "join_ref", "key", "meta", "backlog")

    def __init__(self, session: Session, topic: str, join_ref: str, key: str, meta: dict[str, Any]) -> None:
        self.session = session
        self.topic = topic
        self.join_ref = join_ref
        self.key = key
        self.meta = meta
        # Broadcasts that arrive before the join reply wait here, so the client sees
        # the reply, then presence_state, then everything else; their bytes count
        # toward the socket's send budget, which bounds the backlog.
        self.backlog: list[Burst] | None = []

    @property
    def agent_id(self) -> str:
        return self.meta["phx_ref"]

    def ready_for(self, burst: Burst) -> bool:
        """Whether ``burst`` may be sent now; if not, it waits in the backlog for the join reply."""
        if self.backlog is None:
            return True
        if self.session.outbox.hold(burst):
            self.backlog.append(burst)
        return False


def send_to_each(outboxes: list[Outbox], burst: Burst) -> None:
    for outbox in outboxes:
        outbox.send_burst(burst)


class Hub:
    """Members of each topic in this process, and the way in from Redis."""

    def __init__(
        self,
        tokens: TokenAuthority,
        bus: Bus,
        presence: Presence,
        clock: IReactorTime,
        max_channels_per_socket: int,
        datetime_interval: float,
        write_delay: float = 0.0,
        metrics: Metrics | None = None,
        inflight: InFlight | None = None,
    ) -> None:
        self.tokens = tokens
        self.metrics = metrics if metrics is not None else Metrics()
        self.inflight = inflight if inflight is not None else InFlight()
        self.metrics.count_in_flight(self.inflight)
        self.bus = bus
        self.presence = presence
        self.clock = clock
        self.errors = ThrottledLog(log, clock)
        self.max_channels_per_socket = max_channels_per_socket
        self.members: dict[str, set[Member]] = {}
        self.sessions: set[Session] = set()
        self.metrics.count_channels(lambda: len(self.members))
        self._datetime_counter = 0
        self._ticker: LoopingCall | None = None
        if datetime_interval > 0:
            self._ticker = LoopingCall(self._tick)
            self._ticker.clock = clock
        self._datetime_interval = datetime_interval
        self._coalescer = Coalescer(clock, write_delay, self._write)
        # how a burst reaches its members' sockets; the WebSocket factory offers one that
        # sends to all of them at once
        self.fanout: Callable[[list[Outbox], Burst], None] = send_to_each
        presence.on_channel_change = lambda change, payload: self.publish_admin(f"channel.{change}", payload)
        presence.on_resync = self._resync

    def start(self) -> None:
        for topic in ALWAYS_WATCHED:
            self.bus.watch(topic).addErrback(lambda f: None)  # restored on connect
        if self._ticker is not None:
            self._ticker.start(self._datetime_interval, now=False)

    def stop(self) -> None:
        """Stop ticking, and write what is held (before the sockets close)."""
        if self._ticker is not None and self._ticker.running:
            self._ticker.stop()
        self._coalescer.flush()

    def connect(self, outbox: Outbox, socket_token: str | None) -> Session:
        session = Session(self, outbox, socket_token, secrets.token_hex(8))
        self.sessions.add(session)
        return session

    # membership

    def join(self, member: Member) -> defer.Deferred[Replica]:
        """Subscribe (if first here), then record presence; fires with the topic's replica."""
        self.members.setdefault(member.topic, set()).add(member)
        self.metrics.members.inc()
        d = self.bus.watch(member.topic)
        d.addCallback(self._track, member)
        return d

    def _track(self, _: None, member: Member) -> defer.Deferred[Replica] | None:
        # A leave or disconnect while Redis confirmed the subscription has already
        # untracked (nothing); tracking now would leave a presence nobody withdraws.
        if member.session.joins.get(member.topic) is not member:
            return None
        return self.presence.track(member.topic, member.key, member.meta)

    def leave(self, member: Member, was_joined: bool) -> None:
        members = self.members.get(member.topic)
        if members is not None and member in members:
            members.discard(member)
            self.metrics.members.dec()
            if not members:
                del self.members[member.topic]
                self._coalescer.forget(member.topic)
        self.bus.unwatch(member.topic)
        self.presence.untrack(member.topic, member.key, member.meta)
        if was_joined and self.presence.admins_present:
            self.publish_admin("channel.leave", self._agent_event(member))

    def _agent_event(self, member: Member) -> dict[str, Any]:
        """``{"agent", "agents", "channel"}``; ``agents`` as they are after the event."""
        replica = self.presence.replicas.get(member.topic)
        agents = replica.agents() if replica is not None else []
        if member.session.joins.get(member.topic) is not member:  # a leave not yet flushed
            agents = [agent for agent in agents if agent != member.agent_id]
        return {"agent": member.agent_id, "agents": agents, "channel": member.topic}

    def joined(self, member: Member) -> None:
        if self.presence.admins_present:
            self.publish_admin("channel.join", self._agent_event(member))
        if member.topic == ADMIN_TOPIC:
            self._list_channels()

    def _list_channels(self) -> None:
        # from Redis: the replicas only cover channels with members in this process
        def publish(channels: list[tuple[str, list[str]]]) -> None:
            for topic, agents in channels:
                self.publish_admin("channel.list", {"channel": topic, "agents": agents})

        self.presence.channels().addCallbacks(publish, lambda f: None)

    def publish_admin(self, event: str, payload: dict[str, Any]) -> None:
        self.bus.publish(f"to:{ADMIN_TOPIC}:{event}".encode(), frames.dumps(payload)).addErrback(lambda f: None)

    # the way in from Redis

    def deliver(self, messages: list[tuple[str, str, bytes]]) -> None:
        """
        ``(topic, event, payload)`` messages from one slice of what Redis sent, in order: each
        encoded once, and each run of messages for one topic written to every member
        together (see ``coalesce``).
        """
        run: list[Broadcast] = []
        for topic, event, payload in messages:
            if event == "presence_diff":
                self.presence.diff_received(topic, payload)
            if topic not in self.members:
                continue
            try:
                broadcast = Broadcast.from_redis(topic, event, payload)
            except FrameError as e:
                self.errors.emit(
                    "redis message", "dropped a message for {topic}: {reason}", topic=topic, reason=e.reason
                )
                continue
            if run and run[0].topic != topic:
                self._coalescer.arrived(run[0].topic, run)
                run = []
            run.append(broadcast)
        if run:
            self._coalescer.arrived(run[0].topic, run)

    def _write(self, topic: str, broadcasts: list[Broadcast]) -> None:
        """Send to every member of ``topic``, counting every frame (by the size of the first framing)."""
        members = self.members.get(topic)
        if not members:
            return
        burst = Burst(broadcasts)
        # a copy: a backlog over the send budget closes its socket, and the member leaves
        self.fanout([member.session.outbox for member in list(members) if member.ready_for(burst)], burst)
        framed = next(iter(burst.prepared.values()), b"")
        self.metrics.sent(len(members) * len(broadcasts), len(members) * len(framed))

    def _resync(self, topic: str, diff: dict[str, Any]) -> None:
        # like Redis's messages, behind anything held for the topic
        if topic in self.members:
            self._coalescer.arrived(topic, [Broadcast.from_value(topic, "presence_diff", diff)])

    def _tick(self) -> None:
        self._datetime_counter += 1
        if SYSTEM_TOPIC not in self.members:
            return
        now = datetime.fromtimestamp(self.clock.seconds(), timezone.utc)
        response = {"datetime": now.isoformat(timespec="milliseconds"), "counter": self._datetime_counter}
        tick = Broadcast.from_value(SYSTEM_TOPIC, "datetime", {"status": "ok", "response": response})
        self._coalescer.arrived(SYSTEM_TOPIC, [tick])


class Session:
    """One socket's joins, and what each incoming message does."""

    def __init__(self, hub: Hub, outbox: Outbox, socket_token: str | None, conn_id: str) -> None:
        self.hub = hub
        self.outbox = outbox
        self.socket_token = socket_token
        self.conn_id = conn_id
        self.joins: dict[str, Member] = {}
        self.closed = False
        # this socket's publishes Redis has not answered yet, and while they are too many,
        # the messages already read that wait for it (no more are read meanwhile)
        self.inflight = hub.inflight.account(self)
        self._held: list[Message] | None = None

    def received(self, message: Message) -> None:
        """Act on ``message``; a bug met on the way costs its sender an error reply, not the socket."""
        if self._held is not None:
            self._held.append(message)
            return
        try:
            self._act_on(message)
        except Exception:
            self._internal_error(Failure(), message)

    def _act_on(self, message: Message) -> None:
        if message.event == "heartbeat" and message.topic == HEARTBEAT_TOPIC:
            self.hub.metrics.heartbeats.inc()
            self._reply_ok(message, {})
            self._publish(message).addErrback(lambda f: None)
        elif message.event == "phx_join":
            self._join(message)
        elif message.event == "phx_leave":
            self._leave(message)
        elif ":" in message.event:
            # published as from:<topic>:<event>, it would land in another topic's namespace
            reason = "event must not contain ':'"
            self._reply(message.join_ref, message.ref, message.topic, "error", {"reason": reason})
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
        self.hub.sessions.discard(self)
        for member in list(self.joins.values()):
            self._drop(member, send_close=False)

    # events

    def _join(self, message: Message) -> None:
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
        member = self.joins[topic] = Member(self, topic, join_ref, grant.id, meta)
        d = self.hub.join(member)
        d.addCallbacks(self._joined, self._join_failed, (member, message), None, (member, message))
        d.addErrback(self._completion_failed, member)

    def _joined(self, replica: Replica, member: Member, message: Message) -> None:
        if self.joins.get(member.topic) is not member:
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
        self._publish(message, payload).addErrback(lambda f: None)
        self.hub.joined(member)

    def _join_failed(self, failure: Any, member: Member, message: Message) -> None:
        if self.joins.get(member.topic) is member:
            self._drop(member, send_close=False, was_joined=False)
            self._refuse(member.join_ref, message, _reason(failure))
        if not failure.check(RedisUnavailable):
            self.hub.errors.emit("join", "join of {topic} failed", failure, LogLevel.error, topic=member.topic)

    def _completion_failed(self, failure: Any, member: Member) -> None:
        """A join is whole or gone: a member left half-joined would keep a backlog forever."""
        if self.joins.get(member.topic) is member:
            self._drop(member, send_close=True)
        self.hub.errors.emit(
            "join completion", "completing a join of {topic} failed", failure, LogLevel.error, topic=member.topic
        )

    def _leave(self, message: Message) -> None:
        member = self.joins.get(message.topic)
        if member is None:
            self._reply_ok(message, {})
            return
        self._reply_ok(message, {"id": member.agent_id})
        self._drop(member, send_close=True)
        self._publish(message).addErrback(lambda f: None)

    def _push(self, message: Message) -> None:
        d = self._publish(message)
        d.addCallbacks(
            lambda _: self._reply_ok(message, {}),
            lambda f: self._reply(message.join_ref, message.ref, message.topic, "error", {"reason": _reason(f)}),
        )

    # helpers

    def _drop(self, member: Member, send_close: bool, was_joined: bool = True) -> None:
        """End a join: tell the client if asked, withdraw presence, maybe unsubscribe."""
        del self.joins[member.topic]
        was_joined = was_joined and member.backlog is None
        if member.backlog:
            self.outbox.release(member.backlog)
        member.backlog = None
        if send_close:
            self.outbox.send(Message(member.join_ref, member.join_ref, member.topic, "phx_close", {}))
        self.hub.leave(member, was_joined=was_joined)

    def _publish(self, message: Message, payload: Any = None) -> defer.Deferred[Any]:
        body = message.payload if payload is None else payload
        data = body if isinstance(body, bytes) else frames.dumps(body)
        channel = f"from:{message.topic}:{message.event}".encode()
        size = len(channel) + len(data)
        self.inflight.sent(size)
        try:
            return self.hub.bus.publish(channel, data, answered=lambda: self.inflight.answered(size))
        except Exception:
            self.inflight.answered(size)
            raise

    def _internal_error(self, failure: Failure, message: Message) -> None:
        self.hub.errors.emit(
            "client message", "handling a client's {event} failed", failure, LogLevel.error, event=message.event
        )
        self._reply(message.join_ref, message.ref, message.topic, "error", {"reason": "internal error"})

    def _refuse(self, join_ref: str | None, message: Message, reason: str) -> None:
        self.hub.metrics.refused(reason)
        self._reply(join_ref, message.ref, message.topic, "error", {"reason": reason})

    def _reply_ok(self, message: Message, response: Any) -> None:
        self._reply(message.join_ref, message.ref, message.topic, "ok", response)

    def _reply(self, join_ref: str | None, ref: str | None, topic: str | None, status: str, response: Any) -> None:
        if not self.closed:
            self.outbox.send(frames.reply(join_ref, ref, topic, status, response))


def _reason(failure: Any) -> str:
    if failure.check(RedisTimeout):
        return "redis timeout"
    if failure.check(RedisUnavailable):
        return "redis unavailable"
    return "internal error"
