"""
Presence: who is in each channel, the same from every process sharing one Redis.

Redis holds the truth: a hash per topic (``{tangram-channel}:presence:<topic>``) maps
each join's ``phx_ref`` to ``<node>\\n<json [key, meta]>``, so the processes that
survive a crashed one can find and withdraw its entries. Every process announces its
joins and leaves as ``presence_diff`` messages on ``to:<topic>:presence_diff`` (as
Tangram does), coalesced per topic over ``window`` seconds, so a storm of N joins
costs O(N) frames rather than one frame per member per join.

Each process keeps a replica of each topic it has members in, read from Redis once
and then kept current by the diffs, so a joiner's ``presence_state`` costs no Redis
round trip; joiners of one window share one encoding of it.

A process is in the node zset from its first entry on and beats there; the
survivors withdraw and announce the entries of a node silent for ``node_timeout``
(atomically, so exactly one of them does), and, a bounded number a beat, entries of
nodes not in the zset at all. After an outage a process writes its entries (and the
leaves it could not write) again and tells its own members what changed elsewhere
meanwhile. A write Redis refuses with the connection up (read-only after a failover,
-OOM, -LOADING, -BUSY) is retried with backoff, since no reconnect will come to do
it; at shutdown a process leaves the node zset only once its entries are withdrawn.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from txredisapi import ResponseError

from . import frames
from .logs import ThrottledLog
from .errors import RedisUnavailable, unless_unavailable
from .naming import ADMIN_TOPIC, CHANNELS_KEY, KEY_PREFIX, NODES_KEY, node_key, presence_key, to_channel
from .scripts import Script

log = Logger()


# Failed writes are tried again after FIRST_RETRY seconds, doubling up to MAX_RETRY.
FIRST_RETRY = 0.5
MAX_RETRY = 10.0
# Orphans are looked for among this many entries, in at most this many channels, a beat.
SWEEP_BUDGET = 1000
SWEEP_TOPICS = 100


UPDATE = Script("update")
HEARTBEAT = Script("heartbeat")
SWEEP = Script("sweep")
RETIRE = Script("retire")
LIST = Script("list")


class Updated(NamedTuple):
    """What update.lua reports of a flush."""

    appeared: int
    vanished: int
    channels: list[bytes]  # only when a channel appeared or vanished and an admin is joined
    entries: list[bytes]  # the topic's fields and values, flat, when the state was asked for
    node_was_unknown: int  # this node was not in the node zset
    admins: int  # an admin is joined anywhere


class Withdrawal(NamedTuple):
    """A topic's entries a script withdrew (of a dead node, or orphans)."""

    topic: str
    vanished: int  # they were the topic's last
    entries: list[bytes]  # fields and values, flat


def withdrawals(flat: list[Any]) -> list[Withdrawal]:
    """heartbeat.lua's and sweep.lua's topic, vanished, entries triples."""
    return [Withdrawal(flat[i].decode(), flat[i + 1], flat[i + 2]) for i in range(0, len(flat), 3)]


class Beat(NamedTuple):
    """What heartbeat.lua reports."""

    withdrawn: list[Withdrawal]
    channels: list[bytes]
    node_was_unknown: int  # this node was not in the node zset: first beat, or reaped by others

    @classmethod
    def decode(cls, reply: list[Any]) -> Beat:
        return cls(withdrawals(reply[:-2]), reply[-2], reply[-1])


class Swept(NamedTuple):
    """What sweep.lua reports."""

    withdrawn: list[Withdrawal]
    finished: int  # topics looked at to their end
    cursor: bytes  # the HSCAN cursor in the next topic
    channels: list[bytes]  # only when a channel vanished

    @classmethod
    def decode(cls, reply: list[Any]) -> Swept:
        return cls(withdrawals(reply[:-3]), *reply[-3:])


class Store(Protocol):
    """The Redis commands presence needs (``RedisBridge`` provides them)."""

    @property
    def connected(self) -> bool:
        """Whether commands run and announcements are heard (both connections up)."""

    def execute(self, *command: Any) -> defer.Deferred[Any]: ...

    def publish(self, channel: bytes, payload: bytes) -> defer.Deferred[Any]: ...


@dataclass
class Diff:
    """Joins and leaves of one topic not yet announced, in Phoenix's diff shape."""

    joins: dict[str, dict[str, list[dict[str, Any]]]] = field(default_factory=dict)
    leaves: dict[str, dict[str, list[dict[str, Any]]]] = field(default_factory=dict)

    def join(self, key: str, meta: dict[str, Any]) -> None:
        self.joins.setdefault(key, {"metas": []})["metas"].append(meta)

    def leave(self, key: str, meta: dict[str, Any]) -> None:
        self.leaves.setdefault(key, {"metas": []})["metas"].append(meta)

    def __bool__(self) -> bool:
        return bool(self.joins or self.leaves)

    def payload(self) -> dict[str, Any]:
        return {"joins": self.joins, "leaves": self.leaves}


class Replica:
    """
    One topic's presence as this process sees it: ``phx_ref -> (key, meta)``.

    A joiner is sent the whole state, and in a join storm it changes between joiners:
    encoded whole each time, a storm of N cost O(N²) in JSON encoding (most of a 20,000
    client storm's CPU). Each key's part is encoded once per change of that key instead,
    and the state is the parts joined.
    """

    def __init__(self) -> None:
        self.entries: dict[str, tuple[str, dict[str, Any]]] = {}
        self._metas: dict[str, list[dict[str, Any]]] = {}  # key -> its metas, in the order they came
        self._parts: dict[str, bytes] = {}  # key -> ``"key":{"metas":[...]}``, as of the last encoding
        self._changed: set[str] = set()  # keys whose part is out of date
        self._state: bytes | None = None

    def add(self, key: str, meta: dict[str, Any]) -> None:
        ref = meta["phx_ref"]
        previous = self.entries.get(ref)
        self.entries[ref] = (key, meta)
        if previous is not None and previous[0] == key:  # the same presence again: its meta in place
            metas = self._metas[key]
            metas[metas.index(previous[1])] = meta
        else:
            if previous is not None:
                self._forget(previous[0], ref)
            self._metas.setdefault(key, []).append(meta)
        self._change(key)

    def remove(self, meta: dict[str, Any]) -> None:
        entry = self.entries.pop(meta["phx_ref"], None)
        if entry is not None:
            self._forget(entry[0], meta["phx_ref"])

    def _forget(self, key: str, ref: str) -> None:
        metas = [meta for meta in self._metas[key] if meta["phx_ref"] != ref]
        if metas:
            self._metas[key] = metas
        else:
            del self._metas[key]
        self._change(key)

    def _change(self, key: str) -> None:
        self._changed.add(key)
        self._state = None

    def apply(self, diff: Any) -> None:
        """Apply a diff as phoenix.js does: joins, then leaves, each idempotent."""
        if not isinstance(diff, dict):
            return
        for part, change in (("joins", self.add), ("leaves", lambda key, meta: self.remove(meta))):
            section = diff.get(part)
            if not isinstance(section, dict):
                continue
            for key, value in section.items():
                metas = value.get("metas") if isinstance(value, dict) else None
                for meta in metas if isinstance(metas, list) else ():
                    if isinstance(meta, dict) and isinstance(meta.get("phx_ref"), str):
                        change(key, meta)

    def state(self) -> dict[str, Any]:
        """``{key: {"metas": [...]}}``, Phoenix's ``presence_state`` payload."""
        return {key: {"metas": list(metas)} for key, metas in self._metas.items()}

    def state_json(self) -> bytes:
        """``state()`` as JSON, encoded once until the next change, and then only the keys that changed."""
        if self._state is None:
            for key in self._changed:
                metas = self._metas.get(key)
                if metas:
                    self._parts[key] = frames.dumps({key: {"metas": metas}})[1:-1]
                else:
                    self._parts.pop(key, None)
            self._changed.clear()
            self._state = b"{" + b",".join(self._parts.values()) + b"}"
        return self._state

    def agents(self) -> list[str]:
        return list(self.entries)


def encode_entry(node: str, key: str, meta: dict[str, Any]) -> bytes:
    return node.encode() + b"\n" + frames.dumps([key, meta])


def decode_entry(value: bytes) -> tuple[str, str, dict[str, Any]]:
    node, _, data = value.partition(b"\n")
    key, meta = json.loads(data)
    return node.decode(), key, meta


@dataclass
class _Batch:
    """What one topic's next flush writes to Redis and announces."""

    adds: dict[str, tuple[str, dict[str, Any]]] = field(default_factory=dict)
    removes: dict[str, tuple[str, dict[str, Any]]] = field(default_factory=dict)
    waiting: list[defer.Deferred[Replica]] = field(default_factory=list)
    flush_timer: IDelayedCall | None = None
    # phx_refs added by joins waiting on this flush, and earlier leaves of the same
    # phx_refs that the adds overwrite (needed again if Redis refuses the adds)
    joining: set[str] = field(default_factory=set)
    superseded: dict[str, tuple[str, dict[str, Any]]] = field(default_factory=dict)


class Listener(Protocol):
    """Who hears what presence learns (the ``Hub``)."""

    def channel_changed(self, change: str, payload: dict[str, Any]) -> None:
        """A channel appeared or vanished anywhere: ``"add"``/``"remove"``, ``{"channel", "channels"}``."""

    def resynced(self, topic: str, diff: dict[str, Any]) -> None:
        """
        After an outage: the diff between what this process's clients were last told
        and what Redis holds now, for local members only.
        """


class _Unheard:
    def channel_changed(self, change: str, payload: dict[str, Any]) -> None:
        pass

    def resynced(self, topic: str, diff: dict[str, Any]) -> None:
        pass


class Presence:
    """
    Tracks this process's joins in Redis and keeps replicas of the topics it serves;
    tells its ``Listener`` (see ``report_to``) what it learns.
    """

    def __init__(
        self,
        *,
        store: Store,
        clock: IReactorTime,
        node: str,
        window: float,
        node_timeout: float,
    ) -> None:
        self._store = store
        self._clock = clock
        self._errors = ThrottledLog(log, clock)
        self.node = node
        self._window = window
        self._node_timeout = node_timeout
        self.replicas: dict[str, Replica] = {}
        # Whether an admin was joined anywhere at the last flush. Admin agent events
        # carry every agent of the channel, O(N^2) bytes in a join storm: not worth
        # publishing (into every process's subscriber) when nobody reads them.
        self.admins_present = True
        self._local: dict[str, dict[str, tuple[str, dict[str, Any]]]] = {}
        self._batches: dict[str, _Batch] = {}
        self._early_diffs: dict[str, list[Any]] = {}
        # Per topic, what a failed write did not get into Redis: the next flush of the
        # topic carries it, and a retry with backoff makes sure there is one.
        self._unwritten: dict[str, _Batch] = {}
        self._retry: IDelayedCall | None = None
        self._retries = 0
        self._stopping = False
        self._sweep_topics: list[bytes] = []  # as Redis has them: a sweep needs no decoding
        self._sweep_channel_cursor = b"0"
        self._sweep_hash_cursor = b"0"
        self._sweeping = False
        self._stale: dict[str, Replica] = {}  # replicas from before an outage
        self._known = False  # whether this node is in the node zset of the Redis it is connected to
        self._heartbeat = LoopingCall(self.beat)
        self._heartbeat.clock = clock
        self._listener: Listener = _Unheard()

    def report_to(self, listener: Listener) -> None:
        """
        Tell ``listener`` of channel changes and resyncs from now on. Not a constructor
        argument: the listener (the hub) is built with this presence, so one of the two
        must be connected afterwards, in ``makeService``.
        """
        self._listener = listener

    # joins and leaves of this process

    def track(self, topic: str, key: str, meta: dict[str, Any]) -> defer.Deferred[Replica]:
        """
        Record a join; fires with the topic's replica (joiner included) once Redis has
        it, or fails with RedisUnavailable.
        """
        self._local.setdefault(topic, {})[meta["phx_ref"]] = (key, meta)
        pending = self._batches.get(topic)
        if pending is not None and meta["phx_ref"] in pending.removes:
            # The same phx_ref left and joins again (a client reusing its join_ref):
            # one diff cannot say "leave, then join" (Phoenix applies joins first),
            # so the leave goes out now, in its own flush, ahead of the join.
            if pending.flush_timer is not None and pending.flush_timer.active():
                pending.flush_timer.cancel()
            self._flush(topic)
        batch = self._batch(topic)
        batch.adds[meta["phx_ref"]] = (key, meta)
        batch.joining.add(meta["phx_ref"])
        d: defer.Deferred[Replica] = defer.Deferred()
        batch.waiting.append(d)
        return d

    def untrack(self, topic: str, key: str, meta: dict[str, Any]) -> None:
        """Record a leave; announced with the next flush of the topic."""
        local = self._local.get(topic, {})
        if local.pop(meta["phx_ref"], None) is None:
            return
        if not local:
            del self._local[topic]
        batch = self._batch(topic)
        if batch.adds.pop(meta["phx_ref"], None) is None:
            batch.removes[meta["phx_ref"]] = (key, meta)

    def _batch(self, topic: str) -> _Batch:
        batch = self._batches.get(topic)
        if batch is None:
            batch = self._batches[topic] = _Batch()
            batch.flush_timer = self._clock.callLater(self.window_for(topic), self._flush, topic)
        return batch

    def window_for(self, topic: str) -> float:
        """
        How long a topic's changes gather before they are announced. Every diff goes to
        every member, so the window grows with the channel (up to a second): a join
        storm on a big channel then costs a bounded number of diffs per member.
        """
        replica = self.replicas.get(topic)
        members = len(replica.entries) if replica is not None else 0
        return min(self._window * max(1.0, members / 500), max(self._window, 1.0))

    def _flush(self, topic: str) -> defer.Deferred[None]:
        batch = self._batches.pop(topic)
        local = self._local.get(topic, {})
        unwritten = self._unwritten.pop(topic, None)
        if unwritten is not None:
            for ref, entry in unwritten.adds.items():
                if ref in local:
                    batch.adds.setdefault(ref, entry)
            for ref, entry in unwritten.removes.items():
                if ref in batch.adds:  # joined again since: the add overwrites it
                    batch.superseded[ref] = entry
                else:
                    batch.removes.setdefault(ref, entry)
        replica = self.replicas.get(topic)
        want_state = replica is None and bool(local)
        args: list[Any] = [topic, "state" if want_state else "-" if local else "forget", self.node]
        for ref, (key, meta) in batch.adds.items():
            args += [ref, encode_entry(self.node, key, meta)]
        args.append("|")
        args += list(batch.removes)
        if want_state:
            # keep what an earlier snapshot still in flight collected: that flush
            # builds the replica and applies them
            self._early_diffs.setdefault(topic, [])
        keys = [presence_key(topic), node_key(self.node), CHANNELS_KEY, NODES_KEY, presence_key(ADMIN_TOPIC)]
        d = UPDATE.run(self._store, keys, args)
        d.addCallback(self._flushed, topic, batch)
        d.addErrback(self._flush_failed, topic, batch)
        return d

    def _flushed(self, reply: list[Any], topic: str, batch: _Batch) -> None:
        updated = Updated(*reply)
        self.admins_present = bool(updated.admins)
        self._retries = 0
        replica = None
        if topic not in self._local:
            self.replicas.pop(topic, None)
            self._early_diffs.pop(topic, None)
            self._stale.pop(topic, None)
        else:
            replica = self.replicas.get(topic)
            if replica is None:
                replica = self.replicas[topic] = Replica()
                for value in updated.entries[1::2]:
                    _, key, meta = decode_entry(value)
                    replica.add(key, meta)
                # diffs that crossed the snapshot on the other connection
                for diff in self._early_diffs.pop(topic, ()):
                    replica.apply(diff)
            for key, meta in batch.adds.values():
                replica.add(key, meta)
            for _, meta in batch.removes.values():
                replica.remove(meta)
            self._resync(topic, replica)
        self._announce(topic, batch.adds.values(), batch.removes.values())
        if self.admins_present:
            self._report_channel(topic, updated.appeared, updated.vanished, updated.channels)
        # joiners last, so admin sees channel.add before their channel.join; those
        # who left meanwhile get an empty replica (their session ignores it)
        for d in batch.waiting:
            d.callback(replica if replica is not None else Replica())
        self._registered(updated.node_was_unknown)

    def _resync(self, topic: str, replica: Replica) -> None:
        """Tell local members what changed elsewhere while they could not hear it."""
        stale = self._stale.pop(topic, None)
        if stale is None:
            return
        diff = Diff()
        for ref, (key, meta) in replica.entries.items():
            if ref not in stale.entries:
                diff.join(key, meta)
        for ref, (key, meta) in stale.entries.items():
            if ref not in replica.entries:
                diff.leave(key, meta)
        if diff:
            self._listener.resynced(topic, diff.payload())

    def _flush_failed(self, failure: Any, topic: str, batch: _Batch) -> None:
        self._early_diffs.pop(topic, None)
        unless_unavailable(self._errors, "presence write")(failure)
        local = self._local.get(topic, {})
        if failure.check(ResponseError):
            # Refused at the script's first write (read-only, -OOM, -LOADING, -BUSY):
            # these joins left nothing in Redis to withdraw, so nothing is kept for
            # them however often a client tries. For the joiner, as for a push, Redis
            # cannot take it now.
            for ref in batch.joining & batch.adds.keys():
                local.pop(ref, None)
            if not local:
                self._local.pop(topic, None)
            failure = Failure(RedisUnavailable(f"redis refused the write: {failure.getErrorMessage()}"))
        for d in batch.waiting:
            d.errback(failure)  # their sessions answer with an error and untrack them
        # Nothing else would write the rest again while the connection stays up: a
        # leave lost here would be a ghost for good. Adds still local are members
        # restore() wrote again; joiners that left are removes now. A topic left with
        # no member here still needs the flush that drops its replica and its mark.
        adds = {ref: entry for ref, entry in batch.adds.items() if ref in local}
        removes = {**batch.removes, **batch.superseded}
        if adds or removes or (topic in self.replicas and topic not in self._local):
            unwritten = self._unwritten.setdefault(topic, _Batch())
            unwritten.adds.update(adds)
            unwritten.removes.update(removes)
            self._retry_later()

    def _retry_later(self) -> None:
        """Flush the topics with unwritten changes after a backoff (with jitter)."""
        if self._stopping or (self._retry is not None and self._retry.active()):
            return
        delay = min(MAX_RETRY, FIRST_RETRY * 2**self._retries) * random.uniform(0.5, 1.0)
        self._retries += 1
        self._retry = self._clock.callLater(delay, self._retry_unwritten)

    def _retry_unwritten(self) -> None:
        # While a connection is down, restore() writes it all once both are back: a
        # retry before that could announce a leave to a subscriber that is not there,
        # and local members would never hear of it.
        if self._store.connected:
            self._flush_unwritten()

    def _flush_unwritten(self) -> None:
        """Have a flush scheduled for each topic with changes a failed write left."""
        for topic in self._unwritten:
            self._batch(topic)

    def _announce(
        self, topic: str, joins: Iterable[tuple[str, dict[str, Any]]], leaves: Iterable[tuple[str, dict[str, Any]]]
    ) -> None:
        diff = Diff()
        for key, meta in joins:
            diff.join(key, meta)
        for key, meta in leaves:
            diff.leave(key, meta)
        if diff:
            d = self._store.publish(to_channel(topic, "presence_diff"), frames.dumps(diff.payload()))
            d.addErrback(unless_unavailable(self._errors, "publishing a presence_diff"))

    def _report_channel(self, topic: str, appeared: int, vanished: int, channels: list[bytes]) -> None:
        if appeared or vanished:
            names = sorted(c.decode() for c in channels)
            self._listener.channel_changed("add" if appeared else "remove", {"channel": topic, "channels": names})

    # what other processes announce

    def diff_received(self, topic: str, payload: bytes) -> None:
        try:
            diff = json.loads(payload)
        except (ValueError, RecursionError):
            self._errors.emit("presence_diff", "ignored a malformed presence_diff on {topic}", topic=topic)
            return
        replica = self.replicas.get(topic)
        if replica is not None:
            replica.apply(diff)
        elif topic in self._early_diffs:
            self._early_diffs[topic].append(diff)

    def agents(self, topic: str) -> list[str]:
        """The phx_refs present in ``topic``, as this process's replica has them (none without one)."""
        replica = self.replicas.get(topic)
        return replica.agents() if replica is not None else []

    def channels(self) -> defer.Deferred[list[tuple[str, list[str]]]]:
        """Every channel with members on any process, with its agents, from Redis."""
        d = LIST.run(self._store, [CHANNELS_KEY], [KEY_PREFIX])
        d.addCallback(
            lambda flat: sorted(
                (flat[i].decode(), sorted(ref.decode() for ref in flat[i + 1])) for i in range(0, len(flat), 2)
            )
        )
        return d

    # liveness of processes

    def start(self) -> None:
        self._heartbeat.start(self._node_timeout / 3, now=True)

    def stop(self) -> defer.Deferred[None]:
        """
        Withdraw every entry of this process now (shutdown), the unwritten leaves too;
        fires when Redis answered. The node leaves the node zset only if Redis took
        them all: else the survivors reap what is left once it times out.
        """
        self._stopping = True
        if self._heartbeat.running:
            self._heartbeat.stop()
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        for topic, entries in list(self._local.items()):
            for key, meta in list(entries.values()):
                self.untrack(topic, key, meta)
        self._flush_unwritten()
        flushes = []
        for topic, batch in list(self._batches.items()):
            if batch.flush_timer is not None and batch.flush_timer.active():
                batch.flush_timer.cancel()
            flushes.append(self._flush(topic))
        # sent with the flushes, so it runs after them and within the bridge's wait
        retire = RETIRE.run(self._store, [NODES_KEY, node_key(self.node)], [self.node])
        flushes.append(retire.addCallback(self._retired))
        return defer.DeferredList(flushes, consumeErrors=True).addCallback(lambda _: None)

    def _retired(self, left: int) -> None:
        # a refused or lost retire is already logged with the writes that failed before it
        if not left:
            log.warn("could not withdraw all of this node's presence; the other nodes will once it times out")

    def beat(self) -> defer.Deferred[None]:
        """Say this node is alive; withdraw and announce nodes that are not, and orphans."""
        timeout_ms = int(self._node_timeout * 1000)
        d = HEARTBEAT.run(self._store, [NODES_KEY, CHANNELS_KEY], [self.node, timeout_ms, KEY_PREFIX])
        d.addCallback(self._reaped)
        d.addErrback(unless_unavailable(self._errors, "presence heartbeat"))
        if not self._sweeping:
            self._sweeping = True
            self._sweep().addErrback(unless_unavailable(self._errors, "orphan sweep")).addBoth(self._swept)
        return d

    def _reaped(self, reply: list[Any]) -> None:
        beat = Beat.decode(reply)
        self._registered(beat.node_was_unknown)
        self._withdrawn(beat.withdrawn, beat.channels, "a vanished node")

    def _withdrawn(self, withdrawn: list[Withdrawal], channels: list[bytes], whose: str) -> None:
        """Announce entries a script withdrew."""
        for topic, vanished, entries in withdrawn:
            leaves = []
            for value in entries[1::2]:
                _, key, meta = decode_entry(value)
                leaves.append((key, meta))
            if leaves:
                log.info("withdrew {n} presences of {whose} on {topic}", n=len(leaves), whose=whose, topic=topic)
            self._announce(topic, (), leaves)
            self._report_channel(topic, 0, vanished, channels)

    def _sweep(self) -> defer.Deferred[None]:
        """One bounded step through every channel, withdrawing orphans (see sweep.lua)."""
        if self._sweep_topics:
            return self._sweep_step()
        d = self._store.execute("SSCAN", CHANNELS_KEY, self._sweep_channel_cursor, "COUNT", SWEEP_TOPICS)
        d.addCallback(self._listed)
        return d

    def _listed(self, result: list[Any]) -> defer.Deferred[None] | None:
        self._sweep_channel_cursor, topics = result
        self._sweep_topics = topics
        return self._sweep_step() if self._sweep_topics else None

    def _sweep_step(self) -> defer.Deferred[None]:
        topics = self._sweep_topics[:SWEEP_TOPICS]
        d = SWEEP.run(self._store, [NODES_KEY, CHANNELS_KEY], [KEY_PREFIX, SWEEP_BUDGET, self._sweep_hash_cursor, *topics])
        d.addCallback(self._orphans_withdrawn)
        return d

    def _orphans_withdrawn(self, reply: list[Any]) -> None:
        swept = Swept.decode(reply)
        self._sweep_hash_cursor = swept.cursor
        del self._sweep_topics[: swept.finished]
        self._withdrawn(swept.withdrawn, swept.channels, "nodes that are gone")

    def _swept(self, _: Any) -> None:
        self._sweeping = False

    def _registered(self, node_was_unknown: int) -> None:
        """Note that Redis knows this node; if it had forgotten it, others reaped us."""
        if node_was_unknown and self._known:
            log.warn("this node was taken for dead by the others; writing its presence again")
            self.restore()
        self._known = True

    def restore(self) -> None:
        """
        After a Redis outage (or after being reaped as dead): write this process's
        entries again, withdraw the leaves Redis missed, and re-read replicas.
        """
        # Redis may be a restarted, empty one: this node's next registration there is
        # new, which says nothing about the others having reaped it
        self._known = False
        for topic, replica in self.replicas.items():
            self._stale.setdefault(topic, replica)  # the oldest: what clients last saw
        self.replicas.clear()
        for topic, entries in self._local.items():
            batch = self._batch(topic)
            for ref, entry in entries.items():
                batch.adds.setdefault(ref, entry)
        self._flush_unwritten()
