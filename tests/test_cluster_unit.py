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

from tangram_channel.bus import RedisURL
from tangram_channel.cluster import ClusterNodes, nodes_of, owner, redirection
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
