"""
The pure parts of Redis Cluster support, without I/O: the URL, reading CLUSTER SLOTS,
redirection errors, and asking the nodes in turn (fake connections).
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from txredisapi import ResponseError

from tangram_channel.bus import RedisURL
from tangram_channel.cluster import (
    MAX_REDIRECTIONS, REDIRECTED_IDLE, TRYAGAIN_FIRST_WAIT, ClusterNodes, Redirected, nodes_of, owner, redirection,
)
from tangram_channel.errors import RedisUnavailable
from tangram_channel.naming import CHANNELS_KEY, HEALTH_KEY, NODES_KEY, KEY_PREFIX, node_key, presence_key
from tangram_channel.sentinel import NoPrimary

# CLUSTER SLOTS of three primaries with a replica each, as Redis 7 answers it
SLOTS = [
    [0, 5460, [b"10.0.0.1", 7000, b"id1", {}], [b"10.0.0.4", 7003, b"id4", {}]],
    [5461, 10922, [b"", 7001, b"id2", {}], [b"10.0.0.5", 7004, b"id5", {}]],
    [10923, 16383, [b"10.0.0.3", 7002, b"id3", {}], [b"10.0.0.6", 7005, b"id6", {}]],
]


def test_a_cluster_url_names_its_seed_nodes_and_credentials() -> None:
    url = RedisURL("rediss+cluster://app:p%40ss@n1:7000,[::1]:7001,n3?ssl_ca_certs=/ca.pem")
    assert url.cluster_nodes == [("n1", 7000), ("::1", 7001), ("n3", 6379)]
    assert (url.db, url.username, url.password, url.tls, url.follows_primary) == (0, "app", "p@ss", True, True)
    assert str(url) == "rediss+cluster://app:***@n1:7000,[::1]:7001,n3:6379"
    assert not url.is_local
    with pytest.raises(ValueError, match="cluster nodes, not a TCP address"):
        url.tcp_address
    node = url.at(("10.0.0.7", 7005))
    assert (node.scheme, node.host, node.port, node.password, node.cluster_nodes) == (
        "rediss", "10.0.0.7", 7005, "p@ss", []
    )
    assert not RedisURL("redis://h").follows_primary


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("redis+cluster://app:hunter2@n1:port", "cluster node address with an invalid port"),
        ("redis+cluster://app:hunter2@n1,,n2", "empty cluster node address"),
        ("redis+cluster://app:hunter2@n1/3", "database 0 only"),
    ],
)
def test_a_bad_cluster_url_is_refused_with_its_password_masked(url: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem) as refused:
        RedisURL(url)
    assert "hunter2" not in str(refused.value) and "redis+cluster://app:" in str(refused.value)


def test_every_key_carries_one_hash_tag() -> None:
    keys = [CHANNELS_KEY, NODES_KEY, HEALTH_KEY, presence_key("a:{b}"), node_key("n")]
    assert KEY_PREFIX == "{tangram-channel}:" and all(key.startswith(KEY_PREFIX) for key in keys)


def test_cluster_slots_give_the_owner_of_a_slot_and_every_node() -> None:
    asked = ("seed", 7001)
    assert owner(SLOTS, 0, asked) == ("10.0.0.1", 7000)
    assert owner(SLOTS, 10922, asked) == ("seed", 7001)  # an empty host: the node asked
    assert owner(SLOTS[:1], 16000, asked) is None
    assert nodes_of(SLOTS, asked) == [
        ("10.0.0.1", 7000), ("10.0.0.4", 7003), ("seed", 7001), ("10.0.0.5", 7004), ("10.0.0.3", 7002),
        ("10.0.0.6", 7005),
    ]


def test_redirections_name_their_kind_and_node() -> None:
    assert redirection("MOVED 3999 127.0.0.1:6381") == ("MOVED", ("127.0.0.1", 6381))
    assert redirection("ASK 3999 [::1]:6381") == ("ASK", ("::1", 6381))
    assert redirection("ERR unknown command") is None
    assert redirection("MOVED 3999 nowhere") is None
    assert redirection("TRYAGAIN Multiple keys request during rehashing of slot") == ("TRYAGAIN", None)


class FakeNode:
    def __init__(self, slots: Any) -> None:
        self.slots = slots
        self.transport = self
        self.closed = False

    def loseConnection(self) -> None:
        self.closed = True

    def execute_command(self, *command: Any) -> defer.Deferred[Any]:
        if command[:2] == ("CLUSTER", "KEYSLOT"):
            return defer.succeed(10000)
        assert command == ("CLUSTER", "SLOTS")
        return defer.succeed(self.slots)


def test_nodes_are_asked_in_turn_and_every_node_named_is_asked_later() -> None:
    connections: list[FakeNode] = []
    answers: dict[tuple[str, int], Any] = {("s1", 1): ConnectionRefusedError(), ("s2", 2): SLOTS}

    def connect(address: tuple[str, int]) -> defer.Deferred[Any]:
        answer = answers[address]
        if isinstance(answer, Exception):
            return defer.fail(answer)
        connections.append(FakeNode(answer))
        return defer.succeed(connections[-1])

    nodes = ClusterNodes(Clock(), list(answers), connect)
    assert nodes.primary().result == ("s2", 7001)  # slot 10000's primary, named with an empty host
    assert nodes.addresses[:2] == [("s2", 2), ("s1", 1)] and ("10.0.0.6", 7005) in nodes.addresses
    assert all(c.closed for c in connections)
    nodes.to_front(("10.0.0.3", 7002))  # a MOVED named it
    assert nodes.addresses[0] == ("10.0.0.3", 7002) and nodes.addresses.count(("10.0.0.3", 7002)) == 1

    answers[("s2", 2)] = SLOTS[:1]  # slot 10000 unserved
    nobody = ClusterNodes(Clock(), [("s1", 1), ("s2", 2)], connect)
    failures: list[Any] = []
    nobody.primary().addErrback(failures.append)
    (failure,) = failures
    assert failure.check(NoPrimary)
    message = failure.getErrorMessage()
    assert message.startswith("no Redis Cluster node named the primary of the presence slot")
    assert "s1:1: Connection was refused" in message and "s2:2: no primary serves the presence slot" in message


class ScriptedNode:
    """A node's command connection that answers each command from ``answers`` in turn, and records them."""

    def __init__(self, *answers: Any) -> None:
        self.answers = list(answers)
        self.sent: list[tuple[Any, ...]] = []
        self.transport = self
        self.closed = False

    def loseConnection(self) -> None:
        self.closed = True

    def execute_command(self, *command: Any) -> defer.Deferred[Any]:
        self.sent.append(command)
        if command == ("ASKING",):
            return defer.succeed("OK")
        answer = self.answers.pop(0)
        return defer.fail(answer) if isinstance(answer, Exception) else defer.succeed(answer)


def redirected(nodes: dict[tuple[str, int], ScriptedNode], primary: ScriptedNode, clock: Clock) -> Redirected:
    opened: list[tuple[str, int]] = []

    def connect(address: tuple[str, int]) -> defer.Deferred[Any]:
        opened.append(address)
        return defer.succeed(nodes[address])

    following = Redirected(clock, connect, primary.execute_command, timeout=5)
    following.opened = opened  # type: ignore[attr-defined]
    return following


def outcome(d: Any) -> Any:
    results: list[Any] = []
    d.addBoth(results.append)
    (result,) = results
    return result


def test_ask_sends_the_command_after_asking_to_the_node_named_on_one_connection() -> None:
    clock = Clock()
    target = ScriptedNode("first", "second")
    following = redirected({("n2", 7001): target}, ScriptedNode(), clock)
    assert outcome(following.follow("ASK", ("n2", 7001), ("EVALSHA", "x", 1, "k"), 0, 5)) == "first"
    assert outcome(following.follow("ASK", ("n2", 7001), ("GET", "k"), 0, 5)) == "second"
    assert target.sent == [("ASKING",), ("EVALSHA", "x", 1, "k"), ("ASKING",), ("GET", "k")]
    assert following.opened == [("n2", 7001)]  # type: ignore[attr-defined]
    clock.advance(REDIRECTED_IDLE)  # unused that long: closed
    assert target.closed


def test_moved_sends_the_command_to_the_new_primary_without_asking() -> None:
    target = ScriptedNode(7)
    following = redirected({("n3", 7002): target}, ScriptedNode(), Clock())
    assert outcome(following.follow("MOVED", ("n3", 7002), ("PUBLISH", "c", "m"), 0, 5)) == 7
    assert target.sent == [("PUBLISH", "c", "m")]


def test_another_node_named_replaces_the_connection() -> None:
    first, second = ScriptedNode("a"), ScriptedNode("b")
    following = redirected({("n1", 1): first, ("n2", 2): second}, ScriptedNode(), Clock())
    outcome(following.follow("ASK", ("n1", 1), ("GET", "k"), 0, 5))
    assert outcome(following.follow("ASK", ("n2", 2), ("GET", "k"), 0, 5)) == "b"
    assert first.closed and not second.closed


def test_tryagain_waits_and_resends_on_the_command_connection_until_it_is_answered() -> None:
    clock = Clock()
    rehashing = ResponseError("TRYAGAIN Multiple keys request during rehashing of slot")
    primary = ScriptedNode(rehashing, rehashing, "done")
    following = redirected({}, primary, clock)
    answer: list[Any] = []
    following.follow("TRYAGAIN", None, ("EVALSHA", "x", 2, "a", "b"), 0, 5).addBoth(answer.append)
    assert answer == [] and primary.sent == []
    clock.advance(TRYAGAIN_FIRST_WAIT)
    assert primary.sent == [("EVALSHA", "x", 2, "a", "b")] and answer == []
    clock.advance(TRYAGAIN_FIRST_WAIT * 2)  # the wait doubles
    assert len(primary.sent) == 2 and answer == []
    clock.advance(TRYAGAIN_FIRST_WAIT * 4)
    assert answer == ["done"]


def test_a_command_redirected_in_circles_fails_as_with_redis_away() -> None:
    clock = Clock()
    ask_back = [ResponseError("ASK 1 n2:2")] * (MAX_REDIRECTIONS + 1)
    following = redirected({("n2", 2): ScriptedNode(*ask_back)}, ScriptedNode(), clock)
    failure = outcome(following.follow("ASK", ("n2", 2), ("GET", "k"), 0, 5))
    assert failure.check(RedisUnavailable)


def test_a_command_is_not_followed_past_its_deadline() -> None:
    clock = Clock()
    rehashing = ResponseError("TRYAGAIN Multiple keys request during rehashing of slot")
    following = redirected({}, ScriptedNode(*[rehashing] * 100), clock)
    answer: list[Any] = []
    following.follow("TRYAGAIN", None, ("GET", "k"), 0, give_up_at=1.0).addBoth(answer.append)
    clock.pump([0.1] * 20)
    (failure,) = answer
    assert failure.check(RedisUnavailable)
    assert clock.getDelayedCalls() == []


def test_closing_fails_the_commands_waiting_for_the_connection() -> None:
    pending: defer.Deferred[Any] = defer.Deferred()
    following = Redirected(Clock(), lambda address: pending, ScriptedNode().execute_command, timeout=5)
    answer: list[Any] = []
    following.follow("ASK", ("n2", 2), ("GET", "k"), 0, 5).addBoth(answer.append)
    assert answer == []
    following.close()
    (failure,) = answer
    assert failure.check(RedisUnavailable)
    late = ScriptedNode()
    pending.callback(late)  # connected after all: closed at once
    assert late.closed


def test_commands_held_for_a_node_that_never_answers_fail_after_the_timeout_and_none_stay_held() -> None:
    """
    A redirection to a node that neither accepts nor refuses holds its commands while it
    connects: they wait no longer than the timeout, all fail as with Redis away, and the
    queue they waited in is empty again (its size is bounded by the commands in flight).
    """
    clock = Clock()
    silent: defer.Deferred[Any] = defer.Deferred()
    following = Redirected(clock, lambda address: silent, ScriptedNode().execute_command, timeout=5)
    answers: list[Any] = []
    for n in range(100):
        following.follow("MOVED", ("n2", 2), ("PUBLISH", "c", str(n)), 0, 60).addBoth(answers.append)
    assert answers == [] and len(following._waiting) == 100
    clock.advance(4.9)
    assert answers == []
    clock.advance(0.2)
    assert len(answers) == 100 and all(answer.check(RedisUnavailable) for answer in answers)
    assert following._waiting == []
