"""
Redis Sentinel with real processes: a primary, two replicas and three sentinels on
free loopback ports, two ``twistd`` service processes with joined clients, and the
primary SIGKILLed under them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import protocol

from .conftest import ROOT, RedisServer, free_port
from .e2e import captured_log
from .fake_sentinel import FakeSentinel
from .presence_view import Tab, join_as, truth
from .live import RawSocket, event_of, payload_of, reply_reason, reply_status, start_twistd, token
from .sentinels import MASTER, Recorder, SentinelSet, replica_of, start_sentinel
from .test_redis_tls import Authority, tls_redis
from .waiting import eventually, wait_until

TOPIC = "room"
RECOVERY = 10.0  # seconds from the sentinels' promotion, as the issue asks


@pytest.fixture
def sentinel_set(redis_binary, tmp_path):
    deployment = SentinelSet(redis_binary, tmp_path)
    try:
        deployment.start()
        yield deployment
    finally:
        deployment.stop()


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    """``tangram-channel ARGS`` (``python -m tangram_channel``), with this tree on the path."""
    return subprocess.run([sys.executable, "-m", "tangram_channel", *args], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})


def pubsub_clients(redis: Any) -> list[str]:
    """``CLIENT LIST TYPE pubsub`` without the sentinels' own (``__sentinel__:hello``): a line per connection."""
    listed = redis.execute_command("CLIENT", "LIST", "TYPE", "pubsub")
    text = listed.decode() if isinstance(listed, bytes) else str(listed)
    return [line for line in text.splitlines() if line and " name=sentinel-" not in line]


def health(port: int) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise AssertionError(f"no {name} in /metrics")


def push_ok(client: RawSocket, join_ref: str, marker: str) -> bool:
    """Push ``{"marker": ...}`` on the topic; whether the service acknowledged it."""
    return reply_status(client.reply(client.push(TOPIC, "msg", {"marker": marker}, join_ref))) == "ok"


def broadcast_reaches(redis: Any, client: RawSocket, n: int) -> bool:
    """Publish a numbered broadcast on ``redis``; whether ``client`` gets it within 0.3 s."""
    redis.publish(f"to:{TOPIC}:probe", json.dumps({"n": n}))
    try:
        client.until(lambda m: event_of(m) == "probe" and payload_of(m) == {"n": n}, timeout=0.3)
    except TimeoutError:
        return False
    return True


def broadcasts_back(redis: Any, clients: dict[str, tuple[RawSocket, str]], since: float) -> None:
    """Numbered broadcasts published on ``redis`` until each client got one, within RECOVERY seconds of ``since``."""
    n = 0
    for name, (client, _) in clients.items():
        while not broadcast_reaches(redis, client, n):
            assert time.monotonic() - since < RECOVERY, f"{name} got no broadcast"
            n += 1
        n += 1


def two_processes_on(twistd: Any, url: str, primary: RedisServer) -> list[Any]:
    """Two service processes on ``url`` with ``redis_wait_replicas = 1``, each checked to be on ``primary``."""
    nodes = [start_twistd(twistd, "--redis-url", url, datetime_interval=0, redis_wait_replicas=1) for _ in range(2)]
    for node in nodes:
        node.wait_for_log(f"127.0.0.1:{primary.port}, master")
        code, body = health(node.port)
        assert code == 200 and body["redis"]["address"] == f"127.0.0.1:{primary.port}", body
        assert body["redis"]["role"] == "master" and body["redis"]["failovers"] == []
    return nodes


def joined(nodes: list[Any]) -> dict[str, tuple[RawSocket, str]]:
    """Two clients joined on each service process, by name."""
    clients = {}
    for i, node in enumerate(nodes):
        for j in range(2):
            client = RawSocket(node.port)
            name = f"n{i}c{j}"
            join_ref, _ = client.join_ok(TOPIC, token(TOPIC, name))
            clients[name] = (client, join_ref)
    return clients


def acknowledged_pushes(clients: dict[str, tuple[RawSocket, str]]) -> list[str]:
    """Ten pushes from each client, each answered ok: their markers."""
    acknowledged = []
    for name, (client, join_ref) in clients.items():
        for k in range(10):
            marker = f"before-{name}-{k}"
            assert push_ok(client, join_ref, marker)
            acknowledged.append(marker)
    return acknowledged


def newcomers_presence(port: int, name: str) -> dict[str, Any] | None:
    """
    The presence a newcomer joining now is shown; None if its join is refused, as it is
    ``redis unavailable`` while the process has yet to reach the new primary.
    """
    client = RawSocket(port)
    try:
        reply = client.reply(client.join(TOPIC, token(TOPIC, name)))
        if reply_status(reply) != "ok":
            assert reply_reason(reply) == "redis unavailable", reply
            return None
        return payload_of(client.until(lambda m: event_of(m) == "presence_state"))
    finally:
        client.close()


def test_a_failover_under_two_processes_restores_broadcasts_presence_and_pushes(twistd, sentinel_set):
    """
    SIGKILL of the primary: within 10 s of the sentinels' promotion every client joined
    before gets broadcasts on its old socket, presence is whole on both processes,
    pushes are acknowledged, and each push acknowledged before the kill reached the new
    primary (a plugin subscribed there saw it): with ``redis_wait_replicas = 1`` a push is
    answered once a replica has it, and Sentinel promotes the most advanced replica.
    """
    nodes = two_processes_on(twistd, sentinel_set.url(), sentinel_set.primary)
    clients = joined(nodes)
    # plugins subscribed on each replica: one of them becomes the primary
    recorders = {replica.port: Recorder(replica.port) for replica in sentinel_set.replicas}
    acknowledged = acknowledged_pushes(clients)

    sentinel_set.primary.kill()  # SIGKILL
    old_port = sentinel_set.primary.port
    wait_until(lambda: sentinel_set.primary_port() != old_port, 30, "the sentinels to promote a replica")
    promoted_at = time.monotonic()
    new_primary = sentinel_set.server_at(sentinel_set.primary_port())
    redis = new_primary.client()

    broadcasts_back(redis, clients, promoted_at)
    everyone = set(clients)
    wait_until(lambda: set(truth(redis, TOPIC)) >= everyone,
               RECOVERY, "every member's presence on the new primary")
    for i, node in enumerate(nodes):  # each process serves the whole presence to a newcomer
        state = wait_until(lambda: newcomers_presence(node.port, f"late{i}"), RECOVERY, "a newcomer's join")
        assert everyone <= set(state), state
    for name, (client, join_ref) in clients.items():
        assert push_ok(client, join_ref, f"after-{name}")
    recovered = time.monotonic() - promoted_at
    print(f"\nbroadcasts, presence and pushes back {recovered:.2f}s after the promotion")
    assert recovered < RECOVERY

    seen = recorders[new_primary.port].seen
    missing = [marker for marker in acknowledged if f'"{marker}"'.encode() not in seen]
    assert not missing, f"{len(missing)} acknowledged pushes never reached the new primary"

    for node in nodes:
        code, body = health(node.port)
        assert code == 200 and body["redis"]["address"] == f"127.0.0.1:{new_primary.port}", body
        assert [(f["from"], f["to"]) for f in body["redis"]["failovers"]] == [
            (f"127.0.0.1:{old_port}", f"127.0.0.1:{new_primary.port}")
        ]
        assert metric(node.port, "tangram_channel_redis_failovers_total") == 1
        log = node.log()
        assert f"Sentinel: the primary of '{MASTER}' moved from 127.0.0.1:{old_port} to " \
               f"127.0.0.1:{new_primary.port}" in log, log
        assert "Traceback" not in log, log
    for recorder in recorders.values():
        recorder.close()
    # Redis counts a closed connection until it reads the close: the recorders, and a
    # subscriber connection a node's failover replaced (CI once counted a third receiver
    # below). So first the two services' subscribers alone; a third that stays fails here.
    wait_until(lambda: len(pubsub_clients(redis)) == 2, RECOVERY,
               "two pub/sub connections on the new primary (the services')")

    # the command-line tool finds the new primary through the sentinels too
    published = cli("publish", "--redis-url", sentinel_set.url(), TOPIC, "cli", "{}")
    assert published.returncode == 0 and "(2 service connections received it)" in published.stdout, published


def assert_unreachable_url_is_named_masked(twistd, url: str, shown: str, problem: str, cli_problem: str) -> None:
    """
    Nothing at ``url`` answers: the service logs one line naming it as ``shown`` (password
    masked) with each address's reason, no traceback, and answers 503; the CLI says one line.
    """
    port = free_port()
    proc = twistd("--redis-url", url, "--listen", f"tcp:{port}:interface=127.0.0.1", "--embedded-redis", "false",
                  port=port, env={"TANGRAM_CHANNEL_JWT_SECRET": "x" * 40})
    proc.wait_for_log(problem)
    log = proc.log()
    line = next(line for line in log.splitlines() if problem in line)
    assert shown in line, line
    for address in shown.split("@", 1)[1].split("/", 1)[0].split(","):
        assert f"{address}: " in line, line
    assert "hunter2" not in log and "Traceback" not in log, log
    code, body = health(port)
    assert code == 503 and body["redis"]["connected"] is False
    assert proc.stop(signal.SIGTERM) == 0

    refused = cli("publish", "--redis-url", url, TOPIC, "event", "{}")
    assert refused.returncode == 1 and refused.stdout == "", refused
    assert refused.stderr.startswith(f"tangram-channel: Redis at {shown.split(',', 1)[0]}")
    assert cli_problem in refused.stderr and len(refused.stderr.splitlines()) == 1
    assert "hunter2" not in refused.stderr


def test_a_sentinel_url_without_a_primary_is_named_with_its_password_masked(twistd):
    """No sentinel answers: one error line naming the URL (password hidden), no traceback; 503."""
    dead = free_port()
    assert_unreachable_url_is_named_masked(
        twistd,
        f"redis+sentinel://tangram:hunter2@no-such-sentinel.invalid:26379,127.0.0.1:{dead}/{MASTER}",
        f"redis+sentinel://tangram:***@no-such-sentinel.invalid:26379,127.0.0.1:{dead}/{MASTER}/0",
        "no sentinel named a primary",
        "no sentinel named a primary for 'mymaster'",
    )


def test_with_no_replica_to_confirm_a_push_is_answered_not_replicated(twistd, own_redis):
    """redis_wait_replicas = 1 on a Redis without replicas: the push ran, but the client is told it is not safe."""
    node = start_twistd(twistd, "--redis-url", own_redis.url, datetime_interval=0, redis_wait_replicas=1,
                        redis_timeout=0.4)
    client = RawSocket(node.port)
    join_ref, _ = client.join_ok(TOPIC, token(TOPIC, "alone"))
    reply = client.reply(client.push(TOPIC, "msg", {"marker": "unconfirmed"}, join_ref))
    assert (reply_status(reply), reply_reason(reply)) == ("error", "redis not replicated")
    assert "Traceback" not in node.log()


@contextmanager
def steered_sentinel(primary: RedisServer) -> Iterator[tuple[FakeSentinel, str]]:
    """A ``FakeSentinel`` naming ``primary``, listening on loopback, and the URL that names it."""
    from twisted.internet import reactor

    sentinel = FakeSentinel(("127.0.0.1", primary.port))
    port = reactor.listenTCP(0, sentinel, interface="127.0.0.1")
    try:
        yield sentinel, f"redis+sentinel://127.0.0.1:{port.getHost().port}/{MASTER}"
    finally:
        port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_replica_the_sentinels_name_is_left_until_they_name_the_primary(
    start_service, own_redis, redis_binary, tmp_path
):
    """ROLE says slave: neither connection is used, the log says why; named the primary, the node connects."""
    replica = replica_of(redis_binary, own_redis, tmp_path)
    replica.start()
    try:
        with steered_sentinel(replica) as (sentinel, url), captured_log() as lines:
            service = await start_service(redis_url=url, wait_for_redis=False, datetime_interval=0)
            refusal = f"127.0.0.1:{replica.port}, named by the sentinels as the primary of 'mymaster', answers ROLE " \
                      "with 'slave'"
            await eventually(lambda: sentinel.asked >= 4, what="the sentinel asked again after each refusal")
            assert any(refusal in line for line in lines), lines
            assert not service.bridge.connected and service.bridge.address is None
            sentinel.primary = ("127.0.0.1", own_redis.port)
            await eventually(lambda: service.bridge.connected, what="the node on the primary")
            assert (service.bridge.address, service.bridge.role) == (f"127.0.0.1:{own_redis.port}", "master")
    finally:
        replica.kill()


@pytest_twisted.ensureDeferred
async def test_switch_master_moves_both_connections_off_a_primary_that_still_answers(
    start_service, own_redis, redis_binary
):
    """
    The sentinels announce a new primary while the old one is alive (a manual failover,
    a partition): the node leaves the old one at once, and a member joined before gets
    broadcasts published on the new one, with its presence there.
    """
    second = RedisServer(redis_binary, free_port())
    second.start()
    try:
        with steered_sentinel(own_redis) as (sentinel, url):
            service = await start_service(redis_url=url, datetime_interval=0)
            assert service.bridge.address == f"127.0.0.1:{own_redis.port}"
            tab = await Tab.open(service.ws_url, TOPIC)
            await join_as(service, tab, "stayer")
            await eventually(lambda: sentinel.subscribers, what="the node's subscription to +switch-master")
            old = own_redis.client()
            ours = len(old.client_list()) - 1  # all but this one

            sentinel.switch(MASTER, ("127.0.0.1", second.port))
            await eventually(lambda: service.bridge.connected and service.bridge.address.endswith(f":{second.port}"),
                             what="the node on the new primary")
            await eventually(lambda: len(old.client_list()) == 1, what="no connection of the node left on the old")
            assert ours == 2
            assert [(f["from"], f["to"]) for f in service.bridge.failovers] == [
                (f"127.0.0.1:{own_redis.port}", f"127.0.0.1:{second.port}")
            ]
            new = second.client()
            await eventually(lambda: "stayer" in truth(new, TOPIC), what="presence written on the new primary")
            new.publish(f"to:{TOPIC}:news", '{"on":"second"}')
            frame = await tab.until(lambda f: f[3] == "news")
            assert frame[4] == {"on": "second"}
            await tab.close()
    finally:
        second.kill()


def test_sentinels_with_the_servers_password_are_asked_with_it_when_the_url_says(twistd, redis_binary, tmp_path):
    """?sentinel_auth=true: the URL's password opens the sentinels too; without it they refuse, and the log says so."""
    primary = RedisServer(redis_binary, free_port(), ("--requirepass", "s3cret"))
    primary.start()
    port = free_port()
    sentinel = start_sentinel(redis_binary, tmp_path, port, primary.port,
                              "requirepass s3cret\nsentinel auth-pass mymaster s3cret\n")
    try:
        url = f"redis+sentinel://:s3cret@127.0.0.1:{port}/{MASTER}"
        shared = start_twistd(twistd, "--redis-url", url + "?sentinel_auth=true", datetime_interval=0)
        assert f"127.0.0.1:{primary.port}, master" in shared.log()
        refused = twistd("--redis-url", url, env={"TANGRAM_CHANNEL_JWT_SECRET": "x" * 40,
                                                   "TANGRAM_CHANNEL_EMBEDDED_REDIS": "false",
                                                   "TANGRAM_CHANNEL_PORT": str(free_port())})
        refused.wait_for_log("no sentinel named a primary")
        assert "NOAUTH" in refused.log() and "s3cret" not in refused.log() + shared.log()
    finally:
        sentinel.kill()
        sentinel.wait()
        primary.kill()


@pytest_twisted.ensureDeferred
async def test_rediss_sentinel_speaks_tls_to_the_sentinel_and_to_the_primary(start_service, redis_binary, tmp_path):
    """rediss+sentinel://: the sentinel and the primary it names listen on TLS ports only, verified by the URL's CA."""
    authority = Authority(tmp_path, "test-ca")
    cert, key = authority.issue("sentinel-tls", ["localhost"], ["127.0.0.1"])
    primary = tls_redis(redis_binary, authority, (cert, key))
    port = free_port()
    tls = (f"port 0\ntls-port {port}\ntls-cert-file {cert}\ntls-key-file {key}\n"
           f"tls-ca-cert-file {authority.path}\ntls-auth-clients no\ntls-replication yes\n")
    sentinel = start_sentinel(redis_binary, tmp_path, port, primary.port, tls)
    try:
        url = f"rediss+sentinel://alice:pw@127.0.0.1:{port}/{MASTER}?ssl_ca_certs={authority.path}"
        service = await start_service(redis_url=url, datetime_interval=0)
        assert (service.bridge.address, service.bridge.role) == (f"127.0.0.1:{primary.port}", "master")
        assert str(service.bridge.url) == f"rediss+sentinel://alice:***@127.0.0.1:{port}/{MASTER}/0"
    finally:
        sentinel.kill()
        sentinel.wait()
        primary.kill()


class _Silent(protocol.Protocol):
    """Accepts and never answers, as a frozen sentinel would; counts what is open."""

    factory: Any

    def connectionMade(self) -> None:
        self.factory.accepted += 1
        self.factory.open += 1

    def connectionLost(self, reason: Any = None) -> None:
        self.factory.open -= 1


@pytest_twisted.ensureDeferred
async def test_a_sentinel_that_never_answers_is_given_up_each_attempt_without_leaving_a_connection(start_service):
    """Its AUTH unanswered within redis_timeout, each attempt's connection is closed, not left open."""
    from twisted.internet import reactor

    silent = protocol.Factory.forProtocol(_Silent)
    silent.accepted = silent.open = 0
    port = reactor.listenTCP(0, silent, interface="127.0.0.1")
    try:
        url = f"redis+sentinel://:pw@127.0.0.1:{port.getHost().port}/{MASTER}?sentinel_auth=true"
        with captured_log() as lines:
            await start_service(redis_url=url, wait_for_redis=False, redis_timeout=0.3, datetime_interval=0)
            await eventually(lambda: silent.accepted >= 6, what="several attempts")
            assert silent.open <= 3  # the attempts under way: the two connections' and the watch's
            assert any("no answer within 0.3 s" in line for line in lines), lines
    finally:
        port.stopListening()
