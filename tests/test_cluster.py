"""
Redis Cluster with real processes: three primaries and three replicas on free loopback
ports, two ``twistd`` service processes with joined clients, and a node SIGKILLed under
them: the primary of the presence slot, or the node a subscriber is on.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from redis.exceptions import ClusterDownError, ResponseError

from .clusters import ClusterSet
from .conftest import RedisServer, free_port
from .live import RawSocket, reply_reason, start_twistd, token
from .presence_view import truth
from .sentinels import Recorder
from .test_sentinel import (
    RECOVERY,
    TOPIC,
    acknowledged_pushes,
    broadcasts_back,
    assert_unreachable_url_is_named_masked,
    broadcast_reaches,
    cli,
    health,
    joined,
    metric,
    newcomers_presence,
    push_ok,
    two_processes_on,
)
from .waiting import wait_until


@pytest.fixture
def cluster(redis_binary, tmp_path):
    deployment = ClusterSet(redis_binary, tmp_path)
    try:
        deployment.start()
        yield deployment
    finally:
        deployment.stop()


def held_presence(redis: Any) -> dict[str, list[str]]:
    """The presence ``redis`` holds, or none while it answers CLUSTERDOWN (it has not seen the promotion yet)."""
    try:
        return truth(redis, TOPIC)
    except ResponseError as e:
        # redis-py 5.0 (the lowest version) raises a plain ResponseError for it
        if isinstance(e, ClusterDownError) or str(e).startswith("CLUSTERDOWN"):
            return {}
        raise


def recovered(nodes: list[Any], clients: dict[str, tuple[RawSocket, str]], primary: RedisServer, since: float) -> float:
    """
    Within RECOVERY seconds of ``since``: every client gets a broadcast published on
    the presence slot's ``primary`` on its old socket, ``primary`` holds every member,
    each process is on it and serves all of them to a newcomer, and pushes are
    acknowledged. The seconds it took.
    """
    redis = primary.client()
    broadcasts_back(redis, clients, since)
    everyone = set(clients)
    wait_until(lambda: set(held_presence(redis)) >= everyone, max(0.1, since + RECOVERY - time.monotonic()),
               "every member's presence on the presence slot's primary")
    for i, node in enumerate(nodes):
        # the keys were replicated: the process may still be finding the new primary
        on_primary = (200, f"127.0.0.1:{primary.port}")
        wait_until(lambda: (lambda answer: (answer[0], answer[1]["redis"]["address"]))(health(node.port)) == on_primary,
                   max(0.1, since + RECOVERY - time.monotonic()), "the process on the presence slot's primary")
        state = wait_until(lambda: newcomers_presence(node.port, f"late{i}"),
                           max(0.1, since + RECOVERY - time.monotonic()), "a newcomer's join")
        assert everyone <= set(state), state
    for name, (client, join_ref) in clients.items():
        assert push_ok(client, join_ref, f"after-{name}")
    took = time.monotonic() - since
    assert took < RECOVERY
    return took


def test_killing_the_presence_slots_primary_restores_broadcasts_presence_and_pushes(twistd, cluster):
    """
    SIGKILL of the primary holding the presence slot: within 10 s of its replica's
    promotion every client joined before gets broadcasts on its old socket, presence is
    whole on both processes, and pushes are acknowledged. Every push acknowledged before
    the kill reached the primary's replicas (a plugin subscribed there saw it, over the
    cluster bus), checked before the kill: Redis answers a PUBLISH before its bus message
    leaves, so one acknowledged a moment before a SIGKILL may never leave (seen once in
    CI). redis_wait_replicas is set and said to have no effect: the bus, not
    replication, carries a PUBLISH.
    """
    primary = cluster.presence_primary()
    nodes = two_processes_on(twistd, cluster.url(), primary)
    clients = joined(nodes)
    recorders = {replica.port: Recorder(replica.port) for replica in cluster.replicas_of(primary)}
    assert recorders
    acknowledged = acknowledged_pushes(clients)

    def on_every_replica() -> bool:
        return all(f'"{m}"'.encode() in r.seen for m in acknowledged for r in recorders.values())

    wait_until(on_every_replica, 5, "every acknowledged push on the primary's replicas")
    primary.kill()  # SIGKILL
    promoted = wait_until(lambda: cluster.promoted(primary), 30, "a replica promoted for the presence slot")
    since = time.monotonic()
    took = recovered(nodes, clients, promoted, since)
    print(f"\nbroadcasts, presence and pushes back {took:.2f}s after the promotion")

    for node in nodes:
        code, body = health(node.port)
        assert code == 200 and body["redis"]["address"] == f"127.0.0.1:{promoted.port}", body
        assert body["redis"]["role"] == "master"
        assert [(f["from"], f["to"]) for f in body["redis"]["failovers"]] == [
            (f"127.0.0.1:{primary.port}", f"127.0.0.1:{promoted.port}")
        ]
        assert metric(node.port, "tangram_channel_redis_failovers_total") == 1
        log = node.log()
        assert f"Redis Cluster: the primary of the presence slot moved from 127.0.0.1:{primary.port} to " \
               f"127.0.0.1:{promoted.port}" in log, log
        assert "redis_wait_replicas = 1 has no effect on a Redis Cluster" in log, log
        assert "Traceback" not in log, log
    for recorder in recorders.values():
        recorder.close()

    # the command-line tool finds the presence slot's primary too (PUBLISH counts that node's subscribers)
    published = cli("publish", "--redis-url", cluster.url(), TOPIC, "cli", "{}")
    assert published.returncode == 0, published


def test_killing_the_node_a_subscriber_is_on_moves_the_subscriber(twistd, cluster):
    """
    SIGKILL of the node both subscribers are on (the first the URL names, the primary of
    another slot range): within 10 s of its replica's promotion each client gets
    broadcasts again on its old socket, presence is whole, pushes are acknowledged; the
    processes say where their subscriber went.
    """
    presence = cluster.presence_primary()
    doomed = next(node for node in cluster.nodes if node is not presence and node.client().info(
        "replication")["role"] == "master")
    url = "redis+cluster://" + ",".join(f"127.0.0.1:{node.port}" for node in [
        doomed, *(node for node in cluster.nodes if node is not doomed)])
    nodes = [start_twistd(twistd, "--redis-url", url, datetime_interval=0) for _ in range(2)]
    for node in nodes:
        _, body = health(node.port)
        assert body["redis"]["subscriber"] == f"127.0.0.1:{doomed.port}", body
        assert body["redis"]["address"] == f"127.0.0.1:{presence.port}", body
    clients = joined(nodes)
    replicas = cluster.replicas_of(doomed)

    doomed.kill()
    wait_until(lambda: any(node.client().info("replication")["role"] == "master" for node in replicas), 30,
               "the dead node's replica promoted")
    since = time.monotonic()
    took = recovered(nodes, clients, presence, since)
    print(f"\nbroadcasts, presence and pushes back {took:.2f}s after the promotion")
    for node in nodes:
        _, body = health(node.port)
        assert body["redis"]["subscriber"] not in (None, f"127.0.0.1:{doomed.port}"), body
        assert body["redis"]["address"] == f"127.0.0.1:{presence.port}" and body["redis"]["failovers"] == []
        log = node.log()
        assert f"the subscriber moved from 127.0.0.1:{doomed.port} to " in log, log
        assert "Traceback" not in log, log


def test_a_subscriber_whose_node_hangs_moves_to_another_node(twistd, cluster):
    """
    SIGSTOP of the replica the subscriber is on closes nothing and starts no failover:
    the node hears nothing after a probe, leaves it within redis_timeout (default
    settings), and broadcasts reach the old sockets again within 10 s, while the frozen
    node is still frozen.
    """
    presence = cluster.presence_primary()
    frozen = next(node for node in cluster.nodes if node.client().info("replication")["role"] == "slave")
    url = "redis+cluster://" + ",".join(f"127.0.0.1:{node.port}" for node in [
        frozen, *(node for node in cluster.nodes if node is not frozen)])
    node = start_twistd(twistd, "--redis-url", url, datetime_interval=0)
    assert health(node.port)[1]["redis"]["subscriber"] == f"127.0.0.1:{frozen.port}"
    clients = joined([node])
    redis = presence.client()
    with frozen.frozen():
        since = time.monotonic()
        broadcasts_back(redis, clients, since)
        print(f"\nbroadcasts back {time.monotonic() - since:.2f}s after the subscriber's node froze")
        subscriber = health(node.port)[1]["redis"]["subscriber"]
        assert subscriber not in (None, f"127.0.0.1:{frozen.port}")
    log = node.log()
    assert f"the subscriber's Redis at 127.0.0.1:{frozen.port} gave no answer within 5.0 s; leaving it" in log, log
    assert f"the subscriber moved from 127.0.0.1:{frozen.port} to {subscriber}" in log, log
    assert "Traceback" not in log, log


def test_a_cluster_url_without_a_node_is_named_with_its_password_masked(twistd):
    """No node answers: one error line naming the URL (password hidden), no traceback; 503; the CLI says one line."""
    dead = free_port()
    assert_unreachable_url_is_named_masked(
        twistd,
        f"redis+cluster://tangram:hunter2@no-such-node.invalid:7000,127.0.0.1:{dead}",
        f"redis+cluster://tangram:***@no-such-node.invalid:7000,127.0.0.1:{dead}",
        "no Redis Cluster node named the primary",
        "no Redis Cluster node named the primary",
    )


def test_a_plain_redis_server_is_not_a_cluster(twistd, own_redis: RedisServer):
    """A Cluster URL naming a Redis that is not in cluster mode: its CLUSTER error is named, retried, no traceback."""
    port = free_port()
    url = f"redis+cluster://127.0.0.1:{own_redis.port}"
    proc = twistd("--redis-url", url, "--listen", f"tcp:{port}:interface=127.0.0.1", "--embedded-redis", "false",
                  port=port, env={"TANGRAM_CHANNEL_JWT_SECRET": "x" * 40})
    proc.wait_for_log("cluster support disabled")
    assert "Traceback" not in proc.log()
    assert health(port)[0] == 503


def asking_calls(node: RedisServer) -> int:
    """How many ``ASKING`` commands ``node`` has run: redirections followed to it."""
    return int(node.client().info("commandstats").get("cmdstat_asking", {}).get("calls", 0))


def test_the_command_connection_follows_the_presence_slot_when_it_is_resharded(twistd, cluster):
    """
    An operator moves the presence slot to another primary (IMPORTING, MIGRATING, MIGRATE,
    SETSLOT NODE): midway, commands answered ASK are sent to the new node after ASKING,
    and a join answered TRYAGAIN (its keys split between the two) is tried again, not
    refused; after it the first command is answered MOVED, the node reconnects to the
    named primary, and joins, presence and broadcasts carry on there.
    """
    source = cluster.presence_primary()
    target = next(node for node in cluster.nodes if node is not source and node.client().info(
        "replication")["role"] == "master")
    node = start_twistd(twistd, "--redis-url", cluster.url(), datetime_interval=0, node_timeout=1.5)  # a heartbeat each 0.5 s
    first = RawSocket(node.port)
    first.join_ok(TOPIC, token(TOPIC, "first"))

    src, dst = source.client(), target.client()
    slot = src.execute_command("CLUSTER", "KEYSLOT", "{tangram-channel}")
    src_id, dst_id = src.execute_command("CLUSTER", "MYID"), dst.execute_command("CLUSTER", "MYID")
    dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
    src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)
    keys = src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 1000)
    assert keys  # the presence of "first", the node list...
    src.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *keys)
    # mid-migration the source answers ASK: the node's heartbeats follow it to the target
    before = asking_calls(target)
    wait_until(lambda: asking_calls(target) > before, RECOVERY, "a command followed to the importing node")
    midway = RawSocket(node.port)
    midway_ref = midway.join(TOPIC, token(TOPIC, "midway"))  # held: TRYAGAIN until the slot has moved
    assert health(node.port)[1]["redis"]["address"] == f"127.0.0.1:{source.port}"
    for each in (dst, src):  # the others learn it over the bus
        each.execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)
    moved_at = time.monotonic()
    answer = midway.reply(midway_ref)
    assert answer[4]["status"] == "ok", (answer, node.log())  # answered, within the command timeout

    def joins() -> bool:
        client = RawSocket(node.port)
        ref = client.join(TOPIC, token(TOPIC, "second"))
        return client.reply(ref)[4]["status"] == "ok"

    wait_until(joins, RECOVERY, "a join answered on the slot's new primary")
    print(f"\njoins answered again {time.monotonic() - moved_at:.2f}s after the slot moved")
    wait_until(lambda: {"first", "midway", "second"} <= set(truth(dst, TOPIC)), RECOVERY, "presence on the new primary")
    assert broadcast_reaches(dst, first, 1) or broadcast_reaches(dst, first, 2)
    wait_until(lambda: health(node.port)[1]["redis"]["address"] == f"127.0.0.1:{target.port}", RECOVERY,
               "the command connection on the new primary")
    log = node.log()
    assert f"Redis Cluster moved the presence slot to 127.0.0.1:{target.port}; following it" in log, log
    assert f"the primary of the presence slot moved from 127.0.0.1:{source.port} to 127.0.0.1:{target.port}" in log
    assert "redis unavailable" not in log.lower() and "Traceback" not in log, log


def test_a_presence_slot_primary_that_hangs_is_left_once_the_cluster_promotes_its_replica(twistd, cluster):
    """
    SIGSTOP of the presence slot's primary closes no connection: the node hears of the
    promotion by asking the cluster each second, and within 10 s of it joins, presence
    and broadcasts work on the promoted node; the frozen one is never waited for.
    """
    primary = cluster.presence_primary()
    node = start_twistd(twistd, "--redis-url", cluster.url(), datetime_interval=0, redis_timeout=2)
    clients = joined([node])
    with primary.frozen():
        alive = [each for each in cluster.alive if each is not primary]
        promoted = wait_until(lambda: cluster.promoted(primary, asking=alive[0]), 30, "the replica promoted")
        since = time.monotonic()
        took = recovered([node], clients, promoted, since)
        print(f"\nbroadcasts, presence and pushes back {took:.2f}s after the promotion")
        _, body = health(node.port)
        assert body["redis"]["address"] == f"127.0.0.1:{promoted.port}", body
        log = node.log()
        assert f"Redis Cluster names 127.0.0.1:{promoted.port} the primary of the presence slot; leaving " \
               f"127.0.0.1:{primary.port}" in log, log
        assert "Traceback" not in log, log
