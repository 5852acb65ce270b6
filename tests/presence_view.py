"""
Presence as a phoenix.js client sees it, for tests over real sockets.

``sync_state`` and ``sync_diff`` are a line-by-line port of phoenix.js's
``Presence.syncState``/``Presence.syncDiff`` (1.8), and ``PresenceView`` follows its
``Presence`` class: diffs are buffered until the ``presence_state`` of the channel's
current join arrives. ``Tab`` is one socket joined to one topic that feeds every frame
it receives to its view and keeps them for assertions; the rest are shared helpers.
"""

from __future__ import annotations

import copy
from typing import Any

from twisted.internet import defer

from tangram_channel.naming import presence_key
from tangram_channel.presence import decode_entry

from .wsclient import PhoenixTestClient, connect

State = dict[str, dict[str, list[dict[str, Any]]]]

TOPIC = "room"


def sync_diff(state: State, diff: dict[str, Any]) -> State:
    """phoenix.js ``syncDiff``: joins (merged by ``phx_ref``), then leaves."""
    diff = copy.deepcopy(diff)
    for key, new_presence in diff["joins"].items():
        current = state.get(key)
        state[key] = copy.deepcopy(new_presence)
        if current:
            joined_refs = [m["phx_ref"] for m in state[key]["metas"]]
            kept = [m for m in current["metas"] if m["phx_ref"] not in joined_refs]
            state[key]["metas"][:0] = kept
    for key, left in diff["leaves"].items():
        current = state.get(key)
        if not current:
            continue
        gone = [m["phx_ref"] for m in left["metas"]]
        current["metas"] = [m for m in current["metas"] if m["phx_ref"] not in gone]
        if not current["metas"]:
            del state[key]
    return state


def sync_state(current: State, new: State) -> State:
    """phoenix.js ``syncState``: the difference to ``new`` applied as one diff."""
    state = copy.deepcopy(current)
    joins: State = {}
    leaves: State = {}
    for key, presence in state.items():
        if key not in new:
            leaves[key] = presence
    for key, new_presence in new.items():
        cur = state.get(key)
        if cur:
            new_refs = [m["phx_ref"] for m in new_presence["metas"]]
            cur_refs = [m["phx_ref"] for m in cur["metas"]]
            joined = [m for m in new_presence["metas"] if m["phx_ref"] not in cur_refs]
            left = [m for m in cur["metas"] if m["phx_ref"] not in new_refs]
            if joined:
                joins[key] = {**new_presence, "metas": joined}
            if left:
                leaves[key] = {**copy.deepcopy(cur), "metas": left}
        else:
            joins[key] = new_presence
    return sync_diff(state, {"joins": joins, "leaves": leaves})


def refs(state: State) -> dict[str, list[str]]:
    """``{key: sorted phx_refs}``: a state in a form that compares regardless of order."""
    return {key: sorted(m["phx_ref"] for m in p["metas"]) for key, p in state.items()}


class PresenceView:
    """phoenix.js ``Presence`` for one channel: state, pending diffs, the synced join."""

    def __init__(self) -> None:
        self.state: State = {}
        self.pending: list[dict[str, Any]] = []
        self.channel_join_ref: str | None = None
        self.synced_join_ref: str | None = None

    def feed(self, frame: Any) -> None:
        if not isinstance(frame, list) or frame[3] not in ("presence_state", "presence_diff"):
            return
        if frame[3] == "presence_state":
            # phoenix.js delivers a channel's frames only for its current join_ref
            if frame[0] != self.channel_join_ref:
                return
            self.synced_join_ref = self.channel_join_ref
            self.state = sync_state(self.state, frame[4])
            for diff in self.pending:
                self.state = sync_diff(self.state, diff)
            self.pending = []
        elif self.synced_join_ref is None or self.synced_join_ref != self.channel_join_ref:
            self.pending.append(frame[4])
        else:
            self.state = sync_diff(self.state, frame[4])


class Tab:
    """One socket joined to one topic, keeping every frame it got and its presence view."""

    def __init__(self, client: PhoenixTestClient, topic: str) -> None:
        self.client = client
        self.topic = topic
        self.view = PresenceView()
        self.frames: list[Any] = []
        self.agent_id: str | None = None

    @classmethod
    async def open(cls, ws_url: str, topic: str) -> Tab:
        return cls(await connect(ws_url + "?vsn=2.0.0"), topic)

    async def next(self, timeout: float = 5.0) -> Any:
        frame = await self.client.next(timeout)
        self.frames.append(frame)
        self.view.feed(frame)
        return frame

    async def until(self, predicate, timeout: float = 5.0) -> Any:
        while True:
            frame = await self.next(timeout)
            if predicate(frame):
                return frame

    async def join(self, token: str, join_ref: str | None = None) -> tuple[Any, Any]:
        """Join and return (reply, presence_state); the reply must be ok."""
        ref = self.client.join(self.topic, token, join_ref)
        self.view.channel_join_ref = join_ref or ref
        reply = await self.until(lambda f: f[3] == "phx_reply" and f[1] == ref)
        assert reply[4]["status"] == "ok", reply
        self.agent_id = reply[4]["response"]["id"]
        state = await self.next()
        assert state[3] == "presence_state", state
        return reply, state

    async def leave(self) -> Any:
        ref = self.client.push(self.topic, "phx_leave", {}, self.view.channel_join_ref)
        return await self.until(lambda f: f[3] == "phx_reply" and f[1] == ref)

    async def settle(self, expected: dict[str, list[str]], timeout: float = 10.0) -> None:
        """Read frames until the view holds ``expected`` (in ``refs`` form)."""
        try:
            while refs(self.view.state) != expected:
                await self.next(timeout)
        except defer.TimeoutError:
            raise AssertionError(f"presence stuck at {refs(self.view.state)}, expected {expected}") from None

    def diffs(self) -> list[Any]:
        return [f for f in self.frames if isinstance(f, list) and f[3] == "presence_diff"]

    async def close(self) -> None:
        self.client.close()
        await self.client.closed


def truth(redis, topic: str = TOPIC) -> dict[str, list[str]]:
    """The presence Redis holds for ``topic``, in ``refs`` form."""
    state: dict[str, list[str]] = {}
    for value in redis.hgetall(presence_key(topic)).values():
        _, key, meta = decode_entry(value)
        state.setdefault(key, []).append(meta["phx_ref"])
    return {key: sorted(v) for key, v in state.items()}


async def join_as(service, tab: Tab, client_id: str, join_ref: str | None = None) -> tuple[Any, Any]:
    """``tab`` joins its topic as ``client_id`` with a token of ``service``; (reply, presence_state)."""
    return await tab.join(service.hub.tokens.mint(tab.topic, client_id)[1], join_ref)


async def joined(service, client_id: str, topic: str = TOPIC, join_ref: str | None = None) -> Tab:
    """A socket on an in-process ``service`` joined to ``topic`` as ``client_id``."""
    tab = await Tab.open(service.ws_url, topic)
    await join_as(service, tab, client_id, join_ref)
    return tab


def metas(diff_frame, part: str) -> list[dict]:
    """Every meta in the ``joins`` or ``leaves`` of a presence_diff frame."""
    return [m for p in diff_frame[4][part].values() for m in p["metas"]]


async def settle_all(tabs: list[Tab], expected: dict[str, list[str]]) -> None:
    """Every tab's view holds ``expected``."""
    await defer.gatherResults([defer.ensureDeferred(tab.settle(expected)) for tab in tabs])
