"""The presence merge logic without I/O: diffs, replicas, and batching over a fake Redis with a Clock."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from txredisapi import ResponseError

from tangram_channel import frames, presence
from tangram_channel.errors import RedisUnavailable
from tangram_channel.naming import CHANNELS_KEY, NODES_KEY, presence_key
from tangram_channel.presence import MAX_RETRY, SWEEP_BUDGET, UPDATE, Diff, Presence, Replica, encode_entry

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


def test_state_json_is_the_state_through_moves_re_adds_and_last_leaves() -> None:
    replica = Replica()
    steps: list[tuple[str, Any]] = [
        ("add", ("alice", meta("a1"))),
        ("add", ("alice", meta("a2"))),
        ("add", ("bob", meta("b1"))),
        ("add", ("alice", meta("a1", online_at=5))),  # the same presence again: its newer meta, in place
        ("add", ("carol", meta("a2"))),  # a ref seen under another key moves there
        ("remove", meta("b1")),  # bob's last: bob goes
        ("add", ("bob", meta("b2"))),
        ("add", ("dan\ud800", meta("d1"))),  # a lone surrogate: escaped, still JSON
    ]
    for kind, argument in steps:
        if kind == "add":
            replica.add(*argument)
        else:
            replica.remove(argument)
        assert frames.loads(replica.state_json()) == replica.state()
    assert refs(replica) == {"alice": ["a1"], "carol": ["a2"], "bob": ["b2"], "dan\ud800": ["d1"]}
    assert replica.state()["alice"]["metas"] == [meta("a1", online_at=5)]


def test_a_join_re_encodes_only_its_own_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """A storm's joiners each get the state as it is: encoded whole each time, that was O(N²)."""
    replica = Replica()
    for n in range(1000):
        replica.add(f"user{n}", meta(f"r{n}"))
    replica.state_json()
    encoded: list[Any] = []
    dumps = frames.dumps
    monkeypatch.setattr(frames, "dumps", lambda value: encoded.append(value) or dumps(value))
    replica.add("user1000", meta("r1000"))
    replica.remove(meta("r5"))
    state = replica.state_json()
    assert encoded == [{"user1000": {"metas": [meta("r1000")]}}]
    assert len(frames.loads(state)) == 1000 and "user5" not in frames.loads(state)


# Presence over a fake Redis


class Node:
    """One process's Presence over a fake Redis, with the fired track results."""

    def __init__(self, redis: FakeRedis | None = None, name: str = "node-a") -> None:
        self.clock = Clock()
        self.redis = redis or FakeRedis()
        self.presence = Presence(store=self.redis, clock=self.clock, node=name, window=WINDOW, node_timeout=15.0)
        self.changes: list[tuple[str, dict[str, Any]]] = []
        self.presence.report_to(self)
        self.replicas: list[Replica] = []

    # presence.Listener

    def channel_changed(self, change: str, payload: dict[str, Any]) -> None:
        self.changes.append((change, payload))

    def resynced(self, topic: str, diff: dict[str, Any]) -> None:
        """Resyncs are the hub's to send: test_channels.py looks at them."""

    def track(self, topic: str, key: str, ref: str) -> None:
        self.presence.track(topic, key, meta(ref)).addCallback(self.replicas.append)

    def untrack(self, topic: str, key: str, ref: str) -> None:
        self.presence.untrack(topic, key, meta(ref))

    def evals(self) -> list[tuple[Any, ...]]:
        """The scripts run, one EVALSHA each (the first of each is sent again whole)."""
        return [command for command in self.redis.commands if command[0] == "EVALSHA"]

    def diffs(self, topic: str) -> list[Any]:
        return self.redis.published_to(f"to:{topic}:presence_diff")


def script_args(command: tuple[Any, ...]) -> tuple[Any, ...]:
    """ARGV of an EVAL or EVALSHA command."""
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


TAKEN_FOR_DEAD = "this node was taken for dead by the others"


def test_a_node_reaped_while_it_stalled_says_so_and_writes_its_presence_again(node: Node) -> None:
    """Its heartbeat finds it gone from the node zset, though Redis never went away."""
    node.track("room", "alice", "a1")
    node.clock.advance(WINDOW)
    node.presence.beat()
    node.redis.server.zrem(NODES_KEY, "node-a")  # what a survivor's heartbeat does to a silent node
    node.redis.server.hdel(presence_key("room"), "a1")
    with capturedLogs() as events:
        node.presence.beat()
        node.clock.advance(WINDOW)
    assert [e["log_format"] for e in events if TAKEN_FOR_DEAD in e["log_format"]] != []
    assert set(node.redis.presence("room")) == {"a1"}


@pytest.mark.parametrize("members", [True, False])
def test_a_lone_node_back_from_a_redis_restart_was_not_taken_for_dead(node: Node, members: bool) -> None:
    """Redis restarted empty: the node's registration is new there, which is no sign of being reaped."""
    if members:
        node.track("room", "alice", "a1")
        node.clock.advance(WINDOW)
    node.presence.beat()
    node.redis.server.flushall()
    with capturedLogs() as events:
        node.presence.restore()  # what the bridge calls once reconnected
        node.clock.advance(WINDOW)
        node.presence.beat()
    assert [e for e in events if TAKEN_FOR_DEAD in e.get("log_format", "")] == []
    assert node.redis.server.zscore(NODES_KEY, "node-a") is not None
    assert set(node.redis.presence("room")) == ({"a1"} if members else set())


# Ghost presence (issue 13, point 4)


class RefusingRedis(FakeRedis):
    """A Redis that stays connected but, while ``refusing``, answers presence writes with an error (read-only)."""

    def __init__(self) -> None:
        super().__init__()
        self.refusing = False

    def execute(self, *command: Any) -> defer.Deferred[Any]:
        if self.refusing and command[:2] == ("EVALSHA", UPDATE.sha):
            self.commands.append(command)
            return defer.fail(ResponseError("READONLY You can't write against a read only replica."))
        return super().execute(*command)


@pytest.fixture
def refusing() -> Node:
    return Node(RefusingRedis())


def alice_and_bob(node: Node) -> None:
    node.track("room", "alice", "a1")
    node.track("room", "bob", "b1")
    node.clock.advance(WINDOW)
    assert set(node.redis.presence("room")) == {"a1", "b1"}


def test_a_refused_leave_is_written_again_while_the_connection_stays_up(refusing: Node) -> None:
    """No reconnect will come to write it: a retry with backoff does, and the leave is announced then."""
    alice_and_bob(refusing)
    refusing.redis.refusing = True
    refusing.untrack("room", "bob", "b1")
    refusing.clock.advance(WINDOW)
    assert set(refusing.redis.presence("room")) == {"a1", "b1"}
    assert refusing.diffs("room") == [diff({"alice": ["a1"], "bob": ["b1"]})]  # nothing announced yet
    refusing.redis.refusing = False
    refusing.clock.pump([WINDOW] * int(2 * MAX_RETRY / WINDOW))
    assert set(refusing.redis.presence("room")) == {"a1"}
    assert refusing.diffs("room")[-1] == diff(leaves={"bob": ["b1"]})


def test_refused_writes_are_retried_with_a_capped_backoff(refusing: Node) -> None:
    """Tried again and again while Redis refuses, but not in a storm: a handful of attempts in a minute."""
    alice_and_bob(refusing)
    refusing.redis.refusing = True
    refusing.untrack("room", "bob", "b1")
    before = len(refusing.evals())
    refusing.clock.pump([0.1] * 600)
    attempts = len(refusing.evals()) - before
    assert 6 <= attempts <= 20
    refusing.clock.pump([0.1] * int(2 * MAX_RETRY / 0.1))  # still trying at the cap
    assert len(refusing.evals()) - before > attempts


def test_a_refused_join_fails_its_joiner_and_is_not_retried_for_it(refusing: Node) -> None:
    """The joiner gets its error (its session answers it); once it is gone nothing writes its entry."""
    refusing.redis.refusing = True
    failures: list[Any] = []
    refusing.presence.track("room", "carol", meta("c1")).addErrback(failures.append)
    refusing.clock.advance(WINDOW)
    assert len(failures) == 1 and failures[0].check(RedisUnavailable)  # "redis unavailable", not "internal error"
    refusing.untrack("room", "carol", "c1")  # what the session does with a failed join
    refusing.redis.refusing = False
    refusing.clock.pump([WINDOW] * int(2 * MAX_RETRY / WINDOW))
    assert refusing.redis.presence("room") == {}


def test_stop_writes_the_leaves_a_refused_write_left(refusing: Node) -> None:
    """A clean stop right after Redis takes writes again withdraws the refused leave too, then leaves the node zset."""
    alice_and_bob(refusing)
    refusing.redis.refusing = True
    refusing.untrack("room", "bob", "b1")
    refusing.clock.advance(WINDOW)
    refusing.redis.refusing = False
    refusing.presence.stop()
    assert refusing.redis.presence("room") == {}
    assert refusing.diffs("room")[-1] == diff(leaves={"alice": ["a1"], "bob": ["b1"]})
    assert refusing.redis.server.zscore(NODES_KEY, "node-a") is None
    assert refusing.clock.getDelayedCalls() == []


def test_a_stop_redis_refuses_keeps_the_node_so_survivors_reap_its_entries(refusing: Node) -> None:
    """The node record stays while its entries are in Redis: survivors withdraw and announce them once it times out."""
    alice_and_bob(refusing)
    refusing.redis.refusing = True
    refusing.presence.stop()
    assert refusing.clock.getDelayedCalls() == []  # no retry after stop
    assert refusing.redis.server.zscore(NODES_KEY, "node-a") is not None
    refusing.redis.refusing = False
    survivor = Node(refusing.redis, "node-b")
    refusing.redis.server.zadd(NODES_KEY, {"node-a": 0})  # silent since
    survivor.presence.beat()
    assert refusing.redis.presence("room") == {}
    assert survivor.diffs("room")[-1] == diff(leaves={"alice": ["a1"], "bob": ["b1"]})


def test_a_topic_empty_of_local_members_leaves_the_node_set_with_its_last_leave(node: Node) -> None:
    """So the stop's check (and a reaper) see only topics where this node still has entries."""
    node_set = "{tangram-channel}:node:node-a"
    node.track("room", "alice", "a1")
    node.track("lobby", "bob", "b1")
    node.clock.advance(WINDOW)
    assert node.redis.server.smembers(node_set) == {b"room", b"lobby"}
    node.untrack("room", "alice", "a1")
    node.clock.advance(WINDOW)
    assert node.redis.server.smembers(node_set) == {b"lobby"}


def plant(redis: FakeRedis, topic: str, ref: str, owner: str) -> None:
    """An entry of ``owner`` written straight into Redis, as a node that is gone left it."""
    redis.server.hset(presence_key(topic), ref, encode_entry(owner, ref.upper(), meta(ref)))
    redis.server.sadd(CHANNELS_KEY, topic)


def test_a_survivor_withdraws_and_announces_entries_of_a_node_not_in_the_zset(node: Node) -> None:
    """An orphan (its node's record is gone, so no reaper will find it) is swept; live entries stay."""
    node.track("admin", "operator", "o1")
    node.track("room", "alice", "a1")
    node.clock.advance(WINDOW)
    plant(node.redis, "room", "g1", "node-gone")
    plant(node.redis, "empty", "g2", "node-gone")
    live = Node(node.redis, "node-b")  # registered by its first write, before any beat
    live.track("room", "bob", "b1")
    live.clock.advance(WINDOW)
    node.presence.beat()
    assert set(node.redis.presence("room")) == {"a1", "b1"}
    assert node.redis.presence("empty") == {}
    assert node.diffs("room")[-1] == diff(leaves={"G1": ["g1"]})
    assert node.diffs("empty") == [diff(leaves={"G2": ["g2"]})]
    assert not node.redis.server.sismember(CHANNELS_KEY, "empty")
    assert node.changes[-1] == ("remove", {"channel": "empty", "channels": ["admin", "room"]})


def test_the_sweep_looks_at_a_bounded_number_of_entries_a_beat(node: Node) -> None:
    """A big channel is swept over several beats, each at a bounded cost."""
    orphans = 3 * SWEEP_BUDGET
    node.redis.server.hset(
        presence_key("big"), mapping={f"g{i}": encode_entry("node-gone", "k", meta(f"g{i}")) for i in range(orphans)}
    )
    node.redis.server.sadd(CHANNELS_KEY, "big")
    node.presence.beat()
    left = len(node.redis.presence("big"))
    assert 0 < left < orphans
    for _ in range(10):
        node.presence.beat()
    assert node.redis.presence("big") == {}
    withdrawn = [m for d in node.diffs("big") for p in d["leaves"].values() for m in p["metas"]]
    assert len(withdrawn) == orphans


def test_entries_a_refused_rewrite_left_out_are_written_once_redis_takes_writes(refusing: Node) -> None:
    """After an outage Redis came back empty but refusing (-OOM): this node's members are written by a retry."""
    alice_and_bob(refusing)
    refusing.redis.server.flushall()
    refusing.redis.refusing = True
    refusing.presence.restore()
    refusing.clock.advance(WINDOW)
    assert refusing.redis.presence("room") == {}
    refusing.redis.refusing = False
    refusing.clock.pump([WINDOW] * int(2 * MAX_RETRY / WINDOW))
    assert set(refusing.redis.presence("room")) == {"a1", "b1"}


def test_refused_joins_leave_nothing_kept_for_retry(refusing: Node) -> None:
    """A client retrying a join Redis refuses (it ran none of it) grows nothing: there is nothing to withdraw."""
    refusing.redis.refusing = True
    failures: list[Any] = []
    for i in range(50):
        ref = f"c{i}"
        refusing.presence.track("room", "carol", meta(ref)).addErrback(failures.append)
        refusing.clock.advance(WINDOW)
        refusing.untrack("room", "carol", ref)  # what the session does with a failed join
        refusing.clock.advance(WINDOW)
    assert len(failures) == 50
    assert refusing.presence._unwritten == {} and refusing.presence._local == {}


def test_a_refused_rejoin_still_withdraws_the_refused_leave_before_it(refusing: Node) -> None:
    """Leave (refused), join again with the same phx_ref (refused), give up: the old entry still goes."""
    alice_and_bob(refusing)
    refusing.redis.refusing = True
    refusing.untrack("room", "bob", "b1")
    refusing.clock.advance(WINDOW)
    failures: list[Any] = []
    refusing.presence.track("room", "bob", meta("b1")).addErrback(failures.append)
    refusing.clock.advance(WINDOW)
    assert len(failures) == 1
    refusing.untrack("room", "bob", "b1")
    refusing.redis.refusing = False
    refusing.clock.pump([WINDOW] * int(2 * MAX_RETRY / WINDOW))
    assert set(refusing.redis.presence("room")) == {"a1"}


def test_a_topic_whose_last_join_here_was_refused_is_forgotten_once_redis_takes_writes(refusing: Node) -> None:
    """Its replica and the node's mark on it go, as when its last member leaves: nothing stays behind per topic."""
    refusing.track("room", "alice", "a1")
    refusing.clock.advance(WINDOW)
    refusing.untrack("room", "alice", "a1")
    refusing.redis.mode = "hold"
    refusing.clock.advance(WINDOW)  # alice's leave is in flight...
    refusing.track("room", "carol", "c1")  # ...when carol joins
    refusing.redis.release()
    assert "room" in refusing.presence.replicas
    refusing.redis.refusing = True
    refusing.clock.advance(WINDOW)  # carol's join is refused
    refusing.untrack("room", "carol", "c1")
    refusing.redis.refusing = False
    refusing.clock.pump([WINDOW] * int(2 * MAX_RETRY / WINDOW))
    assert refusing.presence.replicas == {}
    assert refusing.redis.server.smembers("{tangram-channel}:node:node-a") == set()
