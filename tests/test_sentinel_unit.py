"""
The pure parts of Sentinel support, without I/O: the URL, the replies of ROLE and
+switch-master, asking sentinels in turn (fake connections on a Clock), and one WAIT
per reactor turn of publishes.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock

from tangram_channel.bus import RedisURL
from tangram_channel.config import Config, mask_url
from tangram_channel.errors import NotReplicated, RedisUnavailable, reason
from tangram_channel.replicas import ReplicaWait
from tangram_channel.sentinel import NoPrimary, Rotation, Sentinels, parse_addresses, parse_master, role_of, switched


def test_a_sentinel_url_names_its_sentinels_master_database_and_credentials() -> None:
    url = RedisURL("rediss+sentinel://app:p%40ss@s1:26380,[::1]:26381,s3/my%20master/2?ssl_ca_certs=/ca.pem")
    assert url.sentinels == [("s1", 26380), ("::1", 26381), ("s3", 26379)]
    assert (url.master_name, url.db, url.username, url.password, url.tls) == ("my master", 2, "app", "p@ss", True)
    assert str(url) == "rediss+sentinel://app:***@s1:26380,[::1]:26381,s3:26379/my master/2"
    assert url.host is None and not url.is_local
    with pytest.raises(ValueError, match="sentinels, not a TCP address"):
        url.tcp_address


def test_the_servers_and_sentinels_of_a_sentinel_url_keep_what_each_needs() -> None:
    url = RedisURL("rediss+sentinel://app:secret@s1/mymaster/3?ssl_ca_certs=/ca.pem&ssl_verify_strict=false")
    primary = url.at(("10.0.0.7", 6380))
    assert (primary.scheme, primary.host, primary.port, primary.db) == ("rediss", "10.0.0.7", 6380, 3)
    assert (primary.username, primary.password, primary.ca_file, primary.verify_strict) == (
        "app", "secret", "/ca.pem", False
    )
    assert primary.master_name is None and primary.sentinels == []
    sentinel = url.sentinel(("s1", 26379))
    assert (sentinel.scheme, sentinel.host, sentinel.password, sentinel.db) == ("rediss", "s1", None, 0)
    assert RedisURL("redis+sentinel://s1/m").at(("h", 1)).scheme == "redis"
    shared = RedisURL("redis+sentinel://app:secret@s1/m?sentinel_auth=true").sentinel(("s1", 26379))
    assert (shared.username, shared.password) == ("app", "secret")
    with pytest.raises(ValueError, match="sentinel_auth must be true or false"):
        RedisURL("redis+sentinel://s1/m?sentinel_auth=yes")


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("redis+sentinel://app:hunter2@s1:port/m", "invalid port"),
        ("redis+sentinel://app:hunter2@s1:70000/m", "invalid port"),
        ("redis+sentinel://app:hunter2@s1,,s2/m", "empty sentinel address"),
        ("redis+sentinel://app:hunter2@s1/", "needs the master name"),
        ("redis+sentinel://app:hunter2@s1/m/x", "invalid database number"),
        ("redis+sentinel://app:hunter2@s1/m/1/2", "path is /<master-name>"),
    ],
)
def test_a_bad_sentinel_url_is_refused_naming_it_with_the_password_hidden(url: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem) as refused:
        RedisURL(url)
    assert "hunter2" not in str(refused.value) and "app:********@s1" in str(refused.value)


def test_the_other_schemes_are_still_named_when_refused() -> None:
    with pytest.raises(ValueError, match=r"redis\+sentinel://"):
        RedisURL("http://app:hunter2@host/")


def test_shown_settings_hide_a_sentinel_urls_password() -> None:
    assert mask_url("redis+sentinel://app:hunter2@s1,s2/m") == "redis+sentinel://app:********@s1,s2/m"
    assert Config(redis_url="rediss+sentinel://:hunter2@s1/m").masked()["redis_url"] == (
        "rediss+sentinel://:********@s1/m"
    )


def test_sentinel_addresses_and_master_path_parse_alone() -> None:
    assert parse_addresses("a,b:1") == [("a", 26379), ("b", 1)]
    assert parse_addresses("[fe80::1]") == [("fe80::1", 26379)]
    assert parse_master("/m") == ("m", 0) and parse_master("/m/5") == ("m", 5)
    with pytest.raises(ValueError):
        parse_addresses("[::1]x")


def test_role_replies_name_the_role() -> None:
    assert role_of([b"master", 3129659, [[b"127.0.0.1", b"9001", b"3129242"]]]) == "master"
    assert role_of([b"slave", b"127.0.0.1", 9000, b"connected", 3167038]) == "slave"
    assert role_of(None) == role_of([]) == "unknown"


def test_switch_master_messages_about_our_master_give_old_and_new() -> None:
    assert switched(b"mymaster 127.0.0.1 6379 10.0.0.2 6380", "mymaster") == (("127.0.0.1", 6379), ("10.0.0.2", 6380))
    assert switched(b"other 127.0.0.1 6379 10.0.0.2 6380", "mymaster") is None
    assert switched(b"mymaster 127.0.0.1 x 10.0.0.2 6380", "mymaster") is None
    assert switched(b"garbage", "mymaster") is None


class FakeSentinel:
    """A connection to a sentinel answering GET-MASTER-ADDR-BY-NAME, or never (``answer=...``)."""

    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self.closed = False
        self.transport = self

    def loseConnection(self) -> None:
        self.closed = True

    def sentinel_get_master_addr_by_name(self, name: str) -> defer.Deferred[Any]:
        return defer.Deferred() if self.answer is Ellipsis else defer.succeed(self.answer)


def ask(answers: dict[tuple[str, int], Any], clock: Clock, timeout: float = 1.0) -> tuple[Sentinels, list[Any]]:
    connections: list[FakeSentinel] = []

    def connect(address: tuple[str, int]) -> defer.Deferred[Any]:
        answer = answers[address]
        if isinstance(answer, Exception):
            return defer.fail(answer)
        connections.append(FakeSentinel(answer))
        return defer.succeed(connections[-1])

    return Sentinels(clock, list(answers), "mymaster", connect, timeout), connections


def test_sentinels_are_asked_in_turn_and_the_one_that_answered_is_asked_first_next_time() -> None:
    clock = Clock()
    answers = {
        ("s1", 1): ConnectionRefusedError(),
        ("s2", 2): None,  # does not know the master
        ("s3", 3): [b"10.0.0.9", b"6390"],
    }
    sentinels, connections = ask(answers, clock)
    found = sentinels.primary()
    assert found.result == ("10.0.0.9", 6390)
    assert sentinels.addresses == [("s3", 3), ("s1", 1), ("s2", 2)]
    assert all(c.closed for c in connections)


def test_no_primary_names_every_sentinels_reason() -> None:
    clock = Clock()
    answers = {("s1", 1): ConnectionRefusedError(), ("s2", 2): None, ("s3", 3): Ellipsis}
    sentinels, connections = ask(answers, clock, timeout=1.0)
    failures: list[Any] = []
    sentinels.primary().addErrback(failures.append)
    assert not failures
    clock.advance(1.0)  # s3 never answers
    (failure,) = failures
    assert failure.check(NoPrimary)
    message = failure.getErrorMessage()
    assert "s1:1: Connection was refused" in message
    assert "s2:2: does not know master 'mymaster'" in message
    assert "s3:3: no answer within 1.0 s" in message
    assert all(c.closed for c in connections)


def test_a_given_up_connection_attempt_asks_no_further_sentinel() -> None:
    clock = Clock()
    sentinels, connections = ask({("s1", 1): Ellipsis, ("s2", 2): [b"h", b"1"]}, clock)
    asking = sentinels.primary()
    asking.addErrback(lambda f: f.trap(defer.CancelledError))
    asking.cancel()
    assert len(connections) == 1 and connections[0].closed


class FakeWait:
    def __init__(self) -> None:
        self.sent: list[tuple[Any, ...]] = []
        self.answers: list[defer.Deferred[Any]] = []

    def execute(self, *command: Any) -> defer.Deferred[Any]:
        self.sent.append(command)
        self.answers.append(defer.Deferred())
        return self.answers[-1]


def test_one_wait_at_a_time_covers_the_publishes_before_it() -> None:
    clock, redis = Clock(), FakeWait()
    wait = ReplicaWait(clock, redis.execute, replicas=1, timeout=2.5)
    first = [wait.after_publish() for _ in range(3)]
    assert redis.sent == []  # sent after the turn's publishes
    clock.advance(0)
    assert redis.sent == [("WAIT", 1, 2500)]
    second = [wait.after_publish() for _ in range(2)]
    clock.advance(0)
    assert len(redis.sent) == 1  # Redis would hold a second behind the first
    redis.answers[0].callback(1)
    assert [d.called for d in first] == [True] * 3 and not any(d.called for d in second)
    assert len(redis.sent) == 2
    redis.answers[1].callback(0)  # no replica confirmed in time
    failures: list[Any] = []
    for d in second:
        d.addErrback(failures.append)
    assert len(failures) == 2 and failures[0].check(NotReplicated) and reason(failures[0]) == "redis not replicated"
    wait.after_publish()
    clock.advance(0)
    assert len(redis.sent) == 3  # idle again: the next publish gets its WAIT


def test_a_wait_redis_could_not_answer_fails_its_publishes_as_unavailable() -> None:
    clock, redis = Clock(), FakeWait()
    wait = ReplicaWait(clock, redis.execute, replicas=2, timeout=1)
    d = wait.after_publish()
    clock.advance(0)
    redis.answers[0].errback(RedisUnavailable())
    failures: list[Any] = []
    d.addErrback(failures.append)
    assert reason(failures[0]) == "redis unavailable"


def test_a_rotation_tries_the_address_after_the_one_it_left_even_when_the_list_is_reordered() -> None:
    addresses = [("a", 1), ("b", 2), ("c", 3)]
    tried: list[tuple[str, int]] = []

    class Endpoint:
        def __init__(self, address: tuple[str, int]) -> None:
            self.address = address

        def connect(self, factory: Any) -> defer.Deferred[Any]:
            tried.append(self.address)
            return defer.succeed(None)

    rotation = Rotation(addresses, Endpoint)  # type: ignore[arg-type]
    rotation.connect(None)
    rotation.connect(None)
    addresses.insert(0, addresses.pop(2))  # "c" answered a cluster query: moved to the front
    rotation.connect(None)  # after "b", now last: the front one, not "b" once more
    addresses.append(("d", 4))  # a node the cluster named
    rotation.connect(None)
    rotation.connect(None)
    assert tried == [("a", 1), ("b", 2), ("c", 3), ("a", 1), ("b", 2)]
