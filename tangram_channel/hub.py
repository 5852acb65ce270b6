"""
The process's view of channels: which sockets are members of which topic, and the
path from a Redis message to every member (decoded once, coalesced, framed once per
serializer, fanned out). No I/O of its own: Redis (``Bus``), presence and the sockets
(``Outbox``) are handed in, so it runs in tests against fakes and a ``Clock``.
What each socket's messages do is ``session.py``'s.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any, Protocol

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from . import frames
from .coalesce import Coalescer
from .fanout import DirectOutbox, Fanout
from .errors import unless_unavailable
from .frames import Broadcast, Burst, FrameError, Message
from .inflight import InFlight
from .logs import ThrottledLog
from .metrics import ChannelTraffic, Metrics
from .naming import ADMIN_TOPIC, SYSTEM_TOPIC, to_channel
from .presence import Presence, Replica
from .tokens import TokenAuthority

log = Logger()

ALWAYS_WATCHED = (SYSTEM_TOPIC, ADMIN_TOPIC)
# sockets a datetime tick is written to in one reactor turn (see ``Hub._tick``): about
# 0.3 ms of sends, the longest a slice holds a message read meanwhile
TICK_SLICE = 32
# the longest a tick to more than TICK_SLICE members waits for each socket's next lone
# write to share (a quarter of the interval if that is shorter; see ``Hub._tick``)
TICK_RIDE = 0.25
# the longest topic and event (together) whose push parts a member keeps: a long event
# name from Redis would hold its bytes on every member it went to
PUSH_PARTS_NAME_LIMIT = 512


class Outbox(DirectOutbox, Protocol):
    """Where a session's frames go: one WebSocket."""

    def send(self, message: Message[str | None]) -> None:
        """Encode and send a message meant for this socket alone."""

    def send_frame(self, frame: bytes, is_binary: bool) -> None:
        """Send frame bytes already encoded for this socket's serializer."""

    def pause_reading(self) -> None:
        """Read nothing more from the client for now."""

    def resume_reading(self) -> None:
        """Read from the client again."""

    def hold(self, burst: Burst) -> bool:
        """Count a burst kept in a join backlog toward the send budget; False if that closed the socket."""

    def release(self, bursts: list[Burst]) -> None:
        """Stop counting bursts that left a join backlog."""

    def close(self, code: int, reason: str) -> None:
        """Leave every channel now and close the socket with ``code``."""


class Bus(Protocol):
    """Redis as the hub sees it (``RedisBridge`` provides it)."""

    def watch(self, topic: str) -> defer.Deferred[None]: ...

    def unwatch(self, topic: str) -> None: ...

    def publish(
        self, channel: bytes, payload: bytes, answered: Callable[[], None] | None = None
    ) -> defer.Deferred[Any]: ...


class Member:
    """One join of one session to one topic."""

    __slots__ = ("outbox", "direct", "topic", "join_ref", "key", "meta", "backlog", "active", "lone_push")

    def __init__(self, outbox: Outbox, topic: str, join_ref: str, key: str, meta: dict[str, Any]) -> None:
        self.outbox = outbox
        self.direct = outbox.direct  # its socket's fast write path, at hand for a lone push
        self.topic = topic
        self.join_ref = join_ref
        self.key = key
        self.meta = meta
        # Broadcasts that arrive before the join reply wait here, so the client sees
        # the reply, then presence_state, then everything else; their bytes count
        # toward the socket's send budget, which bounds the backlog.
        self.backlog: list[Burst] | None = []
        # until the session drops it (a leave, a rejoin, a disconnect), maybe while Redis
        # is still confirming the join
        self.active = True
        # for the last event pushed to it alone (``Hub._send_alone``): the event, what goes
        # around a payload, and the topic's traffic counts and last arrival, kept in place
        self.lone_push: tuple[str, bytes, bytes, list[int], list[float]] | None = None

    @property
    def agent_id(self) -> str:
        return self.meta["phx_ref"]

    def ready_for(self, burst: Burst) -> bool:
        """Whether ``burst`` may be sent now; if not, it waits in the backlog for the join reply."""
        if self.backlog is None:
            return True
        if self.outbox.hold(burst):
            self.backlog.append(burst)
        return False


class Hub:
    """Members of each topic in this process, and the way in from Redis."""

    def __init__(
        self,
        *,
        tokens: TokenAuthority,
        bus: Bus,
        presence: Presence,
        clock: IReactorTime,
        fanout: Fanout | None = None,
        max_channels_per_socket: int = 100,
        datetime_interval: float = 1.0,
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
        # the member of each topic that has one alone (Tangram's streaming-<id>), so that
        # a message for it reaches it without the set
        self._alone: dict[str, Member] = {}
        self.traffic = ChannelTraffic()
        self.metrics.count_channels(lambda: len(self.members))
        self._datetime_counter = 0
        self._ticker: LoopingCall | None = None
        if datetime_interval > 0:
            self._ticker = LoopingCall(self._tick)
            self._ticker.clock = clock
        self._datetime_interval = datetime_interval
        self._ticking: IDelayedCall | None = None  # the tick's next slice (or its ride's end), while it is sent
        # while a tick rides (``_tick``): it, and the members of system waiting for it, by socket
        self._tick_burst = Burst([])
        self._tick_riders: dict[DirectOutbox, Member] = {}
        self._coalescer = Coalescer(clock, write_delay, self._write)
        self._tally: list[int] | None = None  # frames and bytes sent in this slice from Redis, while in deliver
        self.fanout = fanout if fanout is not None else Fanout()

    def start(self) -> None:
        for topic in ALWAYS_WATCHED:
            # while Redis is down, restored on connect
            self.bus.watch(topic).addErrback(unless_unavailable(self.errors, f"watching {topic}"))
        if self._ticker is not None:
            self._ticker.start(self._datetime_interval, now=False)

    def stop(self) -> None:
        """Stop ticking, and write what is held (before the sockets close)."""
        if self._ticker is not None and self._ticker.running:
            self._ticker.stop()
        if self._ticking is not None and self._ticking.active():
            self._ticking.cancel()
        self._tick_riders = {}
        self._coalescer.flush()

    # membership

    def join(self, member: Member) -> defer.Deferred[Replica | None]:
        """
        Subscribe (if first here), then record presence; fires with the topic's replica,
        or None when the member left while Redis answered.
        """
        members = self.members.setdefault(member.topic, set())
        members.add(member)
        self._note_alone(member.topic, members)
        self.metrics.members.inc()
        return defer.Deferred.fromCoroutine(self._watch_and_track(member))

    async def _watch_and_track(self, member: Member) -> Replica | None:
        await self.bus.watch(member.topic)
        # A leave or disconnect while Redis confirmed the subscription has already
        # untracked (nothing); tracking now would leave a presence nobody withdraws.
        if not member.active:
            return None
        return await self.presence.track(member.topic, member.key, member.meta)

    def leave(self, member: Member, was_joined: bool) -> None:
        members = self.members.get(member.topic)
        if members is not None and member in members:
            members.discard(member)
            self.metrics.members.dec()
            self._note_alone(member.topic, members)
            if not members:
                del self.members[member.topic]
                self._coalescer.forget(member.topic)
                self.traffic.forget(member.topic)
        self.bus.unwatch(member.topic)
        self.presence.untrack(member.topic, member.key, member.meta)
        if was_joined and self.presence.admins_present:
            self.publish_admin("channel.leave", self._agent_event(member))

    def _note_alone(self, topic: str, members: set[Member]) -> None:
        if len(members) == 1:
            (self._alone[topic],) = members
        else:
            self._alone.pop(topic, None)

    def _agent_event(self, member: Member) -> dict[str, Any]:
        """``{"agent", "agents", "channel"}``; ``agents`` as they are after the event."""
        agents = self.presence.agents(member.topic)
        if not member.active:  # a leave not yet flushed
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

        self.presence.channels().addCallback(publish).addErrback(unless_unavailable(self.errors, "listing channels"))

    def publish_admin(self, event: str, payload: dict[str, Any]) -> None:
        d = self.bus.publish(to_channel(ADMIN_TOPIC, event), frames.dumps(payload))
        d.addErrback(unless_unavailable(self.errors, "publishing to admin"))

    # the way in from Redis

    def deliver(self, messages: list[tuple[str, str, bytes]]) -> int:
        """
        ``(topic, event, payload)`` messages from one slice of what Redis sent, in order: each
        encoded once, and each run of messages for one topic written to every member
        together (see ``coalesce``); the writes to channels of one member go out in one
        system call at the end (see ``fanout``). Answers how many deliveries (a message to
        a member) they make, written now or held to share a write.
        """
        self.fanout.hold_lone_writes()
        self._tally = [0, 0]
        try:
            return self._deliver(messages)
        finally:
            self.fanout.flush()
            frames_sent, bytes_sent = self._tally
            self._tally = None
            if frames_sent:
                self.metrics.sent(frames_sent, bytes_sent)

    def _deliver(self, messages: list[tuple[str, str, bytes]]) -> int:
        run: list[Broadcast] = []
        deliveries = lone_frames = lone_bytes = 0  # deliveries, and the frames written alone (counted at the end)
        now = self.clock.seconds()
        last = len(messages) - 1
        alone, all_members = self._alone, self.members
        for index, (topic, event, payload) in enumerate(messages):
            if event == "presence_diff":
                self.presence.diff_received(topic, payload)
            member = alone.get(topic)
            if member is None:
                members = all_members.get(topic)
                if members is None:
                    continue
                count = len(members)
            else:
                count = 1
            if run and run[0].topic != topic:
                self._coalescer.arrived(run[0].topic, run)
                run = []
            is_text = frames.is_json_document(payload)
            if (
                member is not None
                and is_text
                and not run
                and (index == last or messages[index + 1][0] != topic)  # else a run: one write for all
            ):
                sent = self._send_alone(member, topic, event, payload, now)
                if sent:
                    deliveries += 1
                    lone_frames += 1
                    lone_bytes += sent
                    continue
            try:
                broadcast = Broadcast(topic, event, payload, is_text)
            except FrameError as e:
                self.errors.emit(
                    "redis message", "dropped a message for {topic}: {reason}", topic=topic, reason=e.reason
                )
                continue
            run.append(broadcast)
            deliveries += count
        if run:
            self._coalescer.arrived(run[0].topic, run)
        if lone_frames:
            tally = self._tally
            assert tally is not None  # set by ``deliver``
            tally[0] += lone_frames
            tally[1] += lone_bytes
        return deliveries

    def _send_alone(self, member: Member, topic: str, event: str, payload: bytes, now: float) -> int:
        """
        Send one text broadcast to the one member of ``topic`` (Tangram's streaming
        channels), framed for its socket without a Broadcast, a Burst or a framing cache,
        when it may go at once: the member is joined, its socket takes it as it is, and the
        coalescer holds nothing and would not hold this. Answers the frame's size in bytes
        (the tick riding with it counts apart), or 0: nothing was done, the usual path.

        What goes around the payload, and where the topic's counts and last arrival are,
        is kept on the member for its last event: a busy stream pushes one event, and the
        member is at hand where a lookup by topic is not (reaching memory is most of this
        path's cost).
        """
        if member.backlog is not None:
            return 0
        outbox = member.outbox
        lone = member.lone_push
        if lone is None or lone[0] is not event:  # the same event is the same object: see bus.RedisBridge._route
            head, _, tail = frames.splice_parts(None, topic, event, b"", outbox.vsn)
            lone = (event, head, tail, self.traffic.counts(topic), self._coalescer.arrival(topic))
            if len(topic) + len(event) <= PUSH_PARTS_NAME_LIMIT:
                member.lone_push = lone
        _, head, tail, counts, arrival = lone
        direct = member.direct
        frame = direct.lone_text_frame(head, payload, tail)
        if frame is None or not self._coalescer.lets_through(arrival, now):
            return 0
        counts[1] += 1
        self.fanout.send_frame(direct, self._behind_tick(outbox, frame) if self._tick_riders else frame)
        return len(frame)

    def _write(self, topic: str, broadcasts: list[Broadcast]) -> None:
        """Send to every member of ``topic``, counting every frame (by the size of the first framing)."""
        members = self.members.get(topic)
        if not members:
            return
        burst = Burst(broadcasts)
        if len(members) == 1:  # Tangram's streaming channels: no list to make, nothing to gather
            (member,) = members
            if member.backlog is None or member.ready_for(burst):
                self.fanout.send_one(member.outbox, burst)
            self._count_burst(topic, burst, 1)
        else:
            # a copy: a backlog over the send budget closes its socket, and the member leaves
            self._send_to(topic, list(members), burst)

    def _send_to(self, topic: str, members: list[Member], burst: Burst) -> None:
        """Write ``burst`` to ``members``, or keep it in the join backlogs of those still joining."""
        # ``backlog is None`` first saves a call per member once joined
        ready: list[DirectOutbox] = [
            member.outbox for member in members if member.backlog is None or member.ready_for(burst)
        ]
        self.fanout.send(ready, burst)
        self._count_burst(topic, burst, len(members))

    def _count_burst(self, topic: str, burst: Burst, members: int) -> None:
        """Count every frame of ``burst`` to ``members`` sockets, by the size of its first framing."""
        framed = next(iter(burst.prepared.values()), b"")
        self._count_sent(topic, members * len(burst.broadcasts), members * len(framed))

    def _count_sent(self, topic: str, frames_sent: int, bytes_sent: int) -> None:
        tally = self._tally
        if tally is None:
            self.metrics.sent(frames_sent, bytes_sent)
        else:  # counted once for the whole slice: a Prometheus counter takes a lock per call
            tally[0] += frames_sent
            tally[1] += bytes_sent
        self.traffic.sent(topic, frames_sent)

    # what presence reports (presence.Listener)

    def channel_changed(self, change: str, payload: dict[str, Any]) -> None:
        self.publish_admin(f"channel.{change}", payload)

    def resynced(self, topic: str, diff: dict[str, Any]) -> None:
        # like Redis's messages, behind anything held for the topic
        if topic in self.members:
            self._coalescer.arrived(topic, [Broadcast.from_value(topic, "presence_diff", diff)])

    def _tick(self) -> None:
        """
        Send ``datetime`` to every member of ``system``.

        To more than ``TICK_SLICE`` members, the tick first rides for up to ``TICK_RIDE``:
        a socket that is written a message of a channel it has alone meanwhile gets the
        tick in the same write (``_behind_tick``). Each Tangram browser has its own
        streaming channel besides ``system``, so a busy one gets its tick for no write of
        its own (W5 with ticks off: 18.5 against 21.7 us per delivery). The datetime it tells
        is when it was made.

        Then it goes to the rest ``TICK_SLICE`` sockets a reactor turn: each write costs
        the kernel some microseconds, and Redis is read between slices, so a channel of
        1,000 does not hold every other channel's messages for the whole fan-out (W5's
        p99 was 5.8-8.0 ms with slices of 256, 5.7-6.0 with 32, 4.9-5.4 with no tick) nor
        20,000 for a fraction of a second. The tick comes from no Redis stream, so a
        message that overtakes it for some members is in order.
        """
        self._datetime_counter += 1
        members = self.members.get(SYSTEM_TOPIC)
        if not members or (self._ticking is not None and self._ticking.active()):
            return  # nobody to tell, or the last tick is still going out (the process is behind): skipped
        now = datetime.fromtimestamp(self.clock.seconds(), timezone.utc)
        response = {"datetime": now.isoformat(timespec="milliseconds"), "counter": self._datetime_counter}
        tick = Broadcast.from_value(SYSTEM_TOPIC, "datetime", {"status": "ok", "response": response})
        if len(members) <= TICK_SLICE:
            self._coalescer.arrived(SYSTEM_TOPIC, [tick])  # behind what is held for system
            return
        self._coalescer.flush()
        self._tick_burst = Burst([tick])
        self._tick_riders = {member.outbox: member for member in members}
        ride = min(TICK_RIDE, self._datetime_interval / 4)
        self._ticking = self.clock.callLater(ride, self._ride_over)

    def _behind_tick(self, outbox: DirectOutbox, frame: bytes) -> bytes:
        """``frame`` behind the riding tick, if it waits for ``outbox`` and may go to it now."""
        rider = self._tick_riders.pop(outbox, None)
        if rider is None or not rider.active:  # not waiting, or it left system since
            return frame
        if rider.backlog is not None:  # still joining: the tick waits in its backlog, from the slices
            self._tick_riders[outbox] = rider
            return frame
        tick = outbox.framed(self._tick_burst)
        if tick is None:
            return frame
        self._count_sent(SYSTEM_TOPIC, 1, len(tick))
        return tick + frame

    def _ride_over(self) -> None:
        """The tick goes to the members that no lone write took it to, a slice a turn."""
        riders, self._tick_riders = self._tick_riders, {}
        self._ticking = None
        if riders:
            self._tick_slices(list(riders.values()), 0, self._tick_burst)

    def _tick_slices(self, members: list[Member], start: int, burst: Burst) -> None:
        end = start + TICK_SLICE
        # members that left since the tick began (``active`` false) get nothing
        self._send_to(SYSTEM_TOPIC, [member for member in members[start:end] if member.active], burst)
        self._ticking = self.clock.callLater(0, self._tick_slices, members, end, burst) if end < len(members) else None
