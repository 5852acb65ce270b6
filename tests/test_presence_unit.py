"""The presence merge logic without I/O: diffs, replicas, and batching over a fake Redis with a Clock."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.task import Clock

from tangram_channel import frames, presence
from tangram_channel.presence import NODES_KEY, Diff, Presence, Replica, encode_entry, presence_key

from .fakes import WINDOW, FakeRedis


def meta(ref: str, online_at: int = 0) -> dict[str, Any]:
    return {"phx_ref": ref, "online_at": online_at}


def diff(joins: dict[str, list[str]] | None = None, leaves: dict[str, list[str]] | None = None) -> dict[str, Any]:
    """A presence_diff payload from key -> phx_refs."""

    def section(part: dict[str, list[str]] | None) -> dict[str, Any]:
        return {key: {"metas": [meta(ref) for ref in refs]} for key, refs in (part or {}).items()}

    return {"joins": section(joins), "leaves": section(leaves)}


def refs(replica: Replica) -> dict[str, list[str]]:
    """key -> phx_refs of a replica's state."""
    return {key: [m["phx_ref"] for m in value["metas"]] for key, value in replica.state().items()}


# Diff


def test_an_empty_diff_is_false() -> None:
    assert not Diff()
    assert Diff().payload() == {"joins": {}, "leaves": {}}


def test_a_diff_gathers_metas_by_key_in_phoenix_shape() -> None:
    d = Diff()
    d.join("alice", meta("a1"))
    d.join("alice", meta("a2"))
    d.leave("bob", meta("b1"))
    assert d
    assert d.payload() == {
        "joins": {"alice": {"metas": [meta("a1"), meta("a2")]}},
        "leaves": {"bob": {"metas": [meta("b1")]}},
    }


# Replica


def test_replica_holds_several_metas_per_key() -> None:
    replica = Replica()
    replica.apply(diff({"alice": ["a1", "a2"], "bob": ["b1"]}))
    assert refs(replica) == {"alice": ["a1", "a2"], "bob": ["b1"]}
    assert sorted(replica.agents()) == ["a1", "a2", "b1"]


def test_replica_applies_joins_then_leaves() -> None:
    """As phoenix.js does: a ref that joins and leaves in one diff is gone."""
    replica = Replica()
    replica.apply(diff({"alice": ["a1", "a2"]}, {"alice": ["a1"]}))
    assert refs(replica) == {"alice": ["a2"]}


def test_replica_apply_is_idempotent() -> None:
    replica = Replica()
    for _ in range(2):
        replica.apply(diff({"alice": ["a1"], "bob": ["b1"]}, {"carol": ["c1"]}))
    assert refs(replica) == {"alice": ["a1"], "bob": ["b1"]}
    for _ in range(2):
        replica.apply(diff(leaves={"bob": ["b1"]}))
    assert refs(replica) == {"alice": ["a1"]}


@pytest.mark.parametrize(
    "malformed",
    [
        "text",
        [1, 2],
        {"joins": ["alice"]},
        {"joins": {"alice": "x"}},
        {"joins": {"alice": {"metas": "x"}}},
        {"joins": {"alice": {"metas": [{"online_at": 1}, "x", {"phx_ref": 5}]}}},
        {"leaves": {"alice": {"metas": [None]}}},
    ],
)
def test_replica_ignores_malformed_diffs(malformed: Any) -> None:
    replica = Replica()
    replica.apply(diff({"alice": ["a1"]}))
    replica.apply(malformed)
    assert refs(replica) == {"alice": ["a1"]}


def test_state_json_is_encoded_once_until_a_change() -> None:
    replica = Replica()
    replica.add("alice", meta("a1"))
    first = replica.state_json()
    assert replica.state_json() is first
    assert frames.loads(first) == {"alice": {"metas": [meta("a1")]}}
    replica.remove(meta("nobody"))
    assert replica.state_json() is first  # nothing changed
    replica.add("bob", meta("b1"))
    second = replica.state_json()
    assert frames.loads(second) == {"alice": {"metas": [meta("a1")]}, "bob": {"metas": [meta("b1")]}}
    replica.remove(meta("a1"))
    assert frames.loads(replica.state_json()) == {"bob": {"metas": [meta("b1")]}}


def test_state_json_follows_applied_diffs() -> None:
    replica = Replica()
    before = replica.state_json()
    replica.apply(diff({"alice": ["a1"]}))
    assert frames.loads(replica.state_json()) == {"alice": {"metas": [meta("a1")]}}
    assert before == b"{}"


# Presence over a fake Redis


class Node:
    """One process's Presence over a fake Redis, with the fired track results."""

    def __init__(self, redis: FakeRedis | None = None, name: str = "node-a") -> None:
        self.clock = Clock()
        self.redis = redis or FakeRedis()
        self.presence = Presence(self.redis, self.clock, name, WINDOW, 15.0)
        self.changes: list[tuple[str, dict[str, Any]]] = []
        self.presence.on_channel_change = lambda event, payload: self.changes.append((event, payload))
        self.replicas: list[Replica] = []

    def track(self, topic: str, key: str, ref: str) -> None:
        self.presence.track(topic, key, meta(ref)).addCallback(self.replicas.append)

    def untrack(self, topic: str, key: str, ref: str) -> None:
        self.presence.untrack(topic, key, meta(ref))

    def evals(self) -> list[tuple[Any, ...]]:
        return [command for command in self.redis.commands if command[0] == "EVAL"]

    def diffs(self, topic: str) -> list[Any]:
        return self.redis.published_to(f"to:{topic}:presence_diff")


def script_args(command: tuple[Any, ...]) -> tuple[Any, ...]:
    """ARGV of an EVAL command."""
    return command[3 + command[2] :]


@pytest.fixture
def node() -> Node:
    return Node()


def test_joins_within_the_window_are_one_write_and_one_diff(node: Node) -> None:
    node.track("room", "alice", "a1")
    node.track("room", "alice", "a2")
    node.track("room", "bob", "b1")
    assert node.redis.commands == [] and node.redis.published == []
    node.clock.advance(WINDOW)
    assert len(node.evals()) == 1
    assert set(node.redis.presence("room")) == {"a1", "a2", "b1"}
    assert node.diffs("room") == [diff({"alice": ["a1", "a2"], "bob": ["b1"]})]
    assert len(node.replicas) == 3 and all(r is node.replicas[0] for r in node.replicas)
    assert refs(node.replicas[0]) == {"alice": ["a1", "a2"], "bob": ["b1"]}


def test_the_next_window_is_another_write(node: Node) -> None:
    node.track("room", "alice", "a1")
    node.clock.advance(WINDOW)
    node.track("room", "bob", "b1")
    node.untrack("room", "alice", "a1")
    node.clock.advance(WINDOW)
    assert len(node.evals()) == 2
    assert set(node.redis.presence("room")) == {"b1"}
    assert node.diffs("room")[-1] == diff({"bob": ["b1"]}, {"alice": ["a1"]})
    assert refs(node.presence.replicas["room"]) == {"bob": ["b1"]}


def test_entries_name_their_node_so_survivors_can_reap_them(node: Node) -> None:
    node.track("room", "alice", "a1")
    node.clock.advance(WINDOW)
    assert node.redis.presence("room")["a1"] == encode_entry("node-a", "alice", meta("a1"))


def test_a_join_and_leave_in_one_window_never_reach_redis(node: Node) -> None:
    node.track("room", "alice", "gone-1")
    node.untrack("room", "alice", "gone-1")
    node.clock.advance(WINDOW)
    assert not any("gone-1" in repr(command[2:]) for command in node.redis.commands)  # [1] is a script
    assert node.redis.presence("room") == {}
    assert node.diffs("room") == []
    assert "room" not in node.presence.replicas


def test_diffs_during_the_first_state_read_apply_after_the_snapshot(node: Node) -> None:
    """Another process's join and leave that cross our first read of the hash are not lost."""
    node.redis.server.hset(presence_key("room"), "c1", encode_entry("node-b", "carol", meta("c1")))
    node.redis.mode = "hold"
    node.track("room", "alice", "a1")
    node.clock.advance(WINDOW)
    assert script_args(node.evals()[0])[1] == "state"  # the first write also reads the state
    node.presence.diff_received("room", frames.dumps(diff({"bob": ["b1"]}, {"carol": ["c1"]})))
    assert node.replicas == []
    node.redis.release()
    assert refs(node.replicas[0]) == {"alice": ["a1"], "bob": ["b1"]}


def test_later_diffs_apply_to_the_replica(node: Node) -> None:
    node.track("room", "alice", "a1")
    node.clock.advance(WINDOW)
    node.presence.diff_received("room", frames.dumps(diff({"bob": ["b1"]})))
    node.presence.diff_received("room", b"not json")
    assert refs(node.presence.replicas["room"]) == {"alice": ["a1"], "bob": ["b1"]}


def test_malformed_diffs_are_ignored_and_logged_once_a_minute(node: Node, monkeypatch: pytest.MonkeyPatch) -> None:
    """Anyone who can PUBLISH may send them, deep enough to exhaust the parser's recursion too."""
    events: list[dict[str, Any]] = []
    monkeypatch.setattr(presence.log, "observer", events.append)
    node.track("room", "alice", "a1")
    node.clock.advance(WINDOW)
    for _ in range(50):
        node.presence.diff_received("room", b"not json")
        node.presence.diff_received("room", b"[" * 100_000 + b"]" * 100_000)
    assert len(events) == 1
    node.presence.diff_received("room", frames.dumps(diff({"bob": ["b1"]})))
    assert refs(node.presence.replicas["room"]) == {"alice": ["a1"], "bob": ["b1"]}


def test_diffs_of_topics_without_members_here_are_ignored(node: Node) -> None:
    node.presence.diff_received("elsewhere", frames.dumps(diff({"bob": ["b1"]})))
    assert node.presence.replicas == {}


def test_a_failed_write_fails_the_joins_and_announces_nothing(node: Node) -> None:
    failures: list[Any] = []
    node.redis.mode = "fail"
    node.presence.track("room", "alice", meta("a1")).addErrback(failures.append)
    node.clock.advance(WINDOW)
    assert len(failures) == 1
    assert node.diffs("room") == []


def test_channels_appearing_and_vanishing_are_reported_while_an_admin_watches(node: Node) -> None:
    node.track("admin", "operator", "o1")
    node.clock.advance(WINDOW)
    node.track("room", "alice", "a1")
    node.clock.advance(WINDOW)
    node.untrack("room", "alice", "a1")
    node.clock.advance(WINDOW)
    assert node.changes == [
        ("add", {"channel": "admin", "channels": ["admin"]}),
        ("add", {"channel": "room", "channels": ["admin", "room"]}),
        ("remove", {"channel": "room", "channels": ["admin"]}),
    ]


def test_channel_changes_are_not_read_nor_reported_without_an_admin(node: Node) -> None:
    """The channel list grows with the channels; nobody reads it without an admin."""
    node.track("room", "alice", "a1")
    node.clock.advance(WINDOW)
    node.untrack("room", "alice", "a1")
    node.clock.advance(WINDOW)
    assert node.changes == []


def test_stop_withdraws_everything(node: Node) -> None:
    node.track("room", "alice", "a1")
    node.track("lobby", "alice", "a2")
    node.track("lobby", "bob", "b1")
    node.clock.advance(WINDOW)
    node.track("room", "carol", "c1")  # still in its window
    stopped: list[Any] = []
    node.presence.stop().addCallback(stopped.append)
    assert stopped == [None]
    assert node.redis.presence("room") == {} and node.redis.presence("lobby") == {}
    assert node.diffs("lobby")[-1] == diff(leaves={"alice": ["a2"], "bob": ["b1"]})
    assert node.diffs("room")[-1] == diff(leaves={"alice": ["a1"]})
    assert node.redis.server.zscore(NODES_KEY, "node-a") is None
    assert node.clock.getDelayedCalls() == []


def test_a_silent_node_is_reaped_and_its_entries_announced_as_leaves(node: Node) -> None:
    """What the survivors do for a process that died without cleaning up (SIGKILL)."""
    dead = Node(node.redis, "node-b")
    dead.track("room", "bob", "b1")
    dead.clock.advance(WINDOW)
    node.track("room", "alice", "a1")
    node.clock.advance(WINDOW)
    node.redis.server.zadd(NODES_KEY, {"node-b": 0})  # its last beat, long ago
    node.presence.beat()
    assert set(node.redis.presence("room")) == {"a1"}
    assert node.diffs("room")[-1] == diff(leaves={"bob": ["b1"]})


def test_a_live_node_is_not_reaped(node: Node) -> None:
    alive = Node(node.redis, "node-b")
    alive.track("room", "bob", "b1")
    alive.clock.advance(WINDOW)
    alive.presence.beat()
    published = list(node.redis.published)
    node.presence.beat()
    assert set(node.redis.presence("room")) == {"b1"}
    assert node.redis.published == published
