"""
``GET /metrics`` and ``GET /healthz`` (issue 7, points 1 and 2) on a real service and a
real ``redis-server``: after traffic, each number moved by exactly what was done.
"""

from __future__ import annotations

import json
import time

import pytest_twisted
import treq
from prometheus_client.parser import text_string_to_metric_families

from .conftest import RedisServer, free_port
from .e2e import forge_token
from .waiting import eventually
from .wsclient import PhoenixTestClient, connect, fields


async def scrape(service) -> dict[str, float]:
    """Every sample of ``/metrics``, keyed like ``name{label="value"}``."""
    response = await treq.get(service.base_url + "/metrics")
    assert response.code == 200
    assert response.headers.getRawHeaders("content-type")[0].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families((await response.content()).decode()):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[sample.name + (f"{{{labels}}}" if labels else "")] = sample.value
    return samples


def moved(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """What changed between two scrapes."""
    return {key: after[key] - before.get(key, 0.0) for key in after if after[key] != before.get(key, 0.0)}


async def health(service) -> tuple[int, dict]:
    response = await treq.get(service.base_url + "/healthz")
    return response.code, json.loads(await response.content())


async def joined(service, topic: str, client_id: str) -> PhoenixTestClient:
    client = await connect(service.ws_url)
    reply = await client.reply(client.join(topic, forge_token(service.jwt_secret, topic, client_id)))
    assert fields(reply)[4]["status"] == "ok", reply
    await client.until(lambda f: fields(f)[3] == "presence_state")
    return client


M = "tangram_channel_"


@pytest_twisted.ensureDeferred
async def test_metrics_count_sockets_joins_refusals_members_and_client_frames(start_service):
    """Two joins, a refused join, a heartbeat and a bad frame each move their counter by one."""
    service = await start_service(datetime_interval=0)
    before = await scrape(service)
    alice = await joined(service, "room", "alice")
    bob = await joined(service, "room", "bob")
    await alice.until(lambda f: fields(f)[3] == "presence_diff" and "bob" in fields(f)[4]["joins"])
    await alice.reply(alice.join("other", forge_token("wrong-secret", "other")))
    await alice.reply(alice.push("phoenix", "heartbeat", {}))
    alice.send_raw("not json")
    await alice.reply(alice.push("phoenix", "heartbeat", {}))
    after = await scrape(service)
    changes = moved(before, after)
    assert changes[M + "sockets"] == 2
    assert changes[M + "joins_total"] == 2
    assert changes[M + 'join_refusals_total{reason="unauthorized"}'] == 1
    assert changes[M + "channels"] == 1
    assert changes[M + "members"] == 2
    assert changes[M + "heartbeats_total"] == 2
    assert changes[M + 'frames_rejected_total{reason="invalid JSON"}'] == 1
    # alice sent 5 frames (2 joins, 2 heartbeats, 1 bad), bob 1 join
    assert changes[M + "messages_received_total"] == 6
    assert changes[M + "bytes_received_total"] > 6

    bob.close()
    await bob.closed
    await eventually(lambda: len(service.hub.members["room"]) == 1, what="bob's leave")
    changes = moved(after, await scrape(service))
    assert changes[M + "sockets"] == -1 and changes[M + "members"] == -1
    alice.close()
    await alice.closed


@pytest_twisted.ensureDeferred
async def test_a_broadcast_counts_one_delivery_per_member(start_service, flushed_redis):
    """A Redis message to a channel of two members: two frames sent, each of the frame's size."""
    service = await start_service(datetime_interval=0)
    alice = await joined(service, "room", "alice")
    bob = await joined(service, "room", "bob")
    await alice.until(lambda f: fields(f)[3] == "presence_diff" and "bob" in fields(f)[4]["joins"])
    before = await scrape(service)
    assert flushed_redis.client().publish("to:room:news", '{"n": 1}') == 1
    for client in (alice, bob):
        await client.until(lambda f: fields(f)[3] == "news")
    changes = moved(before, await scrape(service))
    frame = alice.raw[-1][0]
    assert changes[M + "messages_sent_total"] == 2
    assert changes[M + "bytes_sent_total"] == 2 * (len(frame) + 2)  # a 2-byte WebSocket header each
    for client in (alice, bob):
        client.close()
        await client.closed


@pytest_twisted.ensureDeferred
async def test_health_is_503_while_redis_is_down_and_metrics_count_the_reconnect(start_service, own_redis):
    """healthz: 200 with Redis, 503 while it is unreachable, 200 again after; metrics follow."""
    service = await start_service(redis=own_redis, datetime_interval=0, public_url="https://tangram.example.org")
    code, body = await health(service)
    assert code == 200
    assert body["status"] == "ok"
    assert body["redis"] == {
        "connected": True, "healthy": True, "url": f"redis://127.0.0.1:{own_redis.port}/0",
        "address": f"127.0.0.1:{own_redis.port}", "role": "master", "subscriber": f"127.0.0.1:{own_redis.port}",
        "failovers": [],
    }
    assert body["subscriptions"] == 2  # system and admin, always
    assert body["sockets"] == 0 and body["uptime_seconds"] >= 0 and body["version"]
    assert body["public_url"] == "https://tangram.example.org"
    assert (await scrape(service))[M + "redis_connected"] == 1

    own_redis.kill()
    await eventually(lambda: not service.bridge.connected, what="the bridge to notice")
    code, body = await health(service)
    assert code == 503 and body["redis"]["connected"] is False and body["status"] != "ok"
    assert (await scrape(service))[M + "redis_connected"] == 0

    own_redis.start()
    await eventually(lambda: service.bridge.connected, timeout=10, what="the bridge to reconnect")
    assert (await health(service))[0] == 200
    samples = await scrape(service)
    assert samples[M + "redis_connected"] == 1 and samples[M + "redis_reconnects_total"] == 1


async def health_turns(service, code: int, timeout: float) -> tuple[float, dict]:
    """Poll healthz until it answers ``code``: how long that took, and the body."""
    started = time.monotonic()

    async def answered() -> dict | None:
        got, body = await health(service)
        return body if got == code else None

    body = await eventually(answered, timeout, f"healthz answering {code}", 0.1)
    return time.monotonic() - started, body


@pytest_twisted.ensureDeferred
async def test_health_is_503_within_seconds_while_redis_is_frozen(start_service, own_redis):
    """A SIGSTOPped Redis keeps its connections open: only a probe that must be answered tells."""
    service = await start_service(redis=own_redis, datetime_interval=0)
    await health_turns(service, 200, timeout=5)
    with own_redis.frozen():
        waited, body = await health_turns(service, 503, timeout=5)
        assert body["status"] == "redis not answering", body
        assert body["redis"]["connected"] is True and body["redis"]["healthy"] is False
        assert (await scrape(service))[M + "redis_healthy"] == 0
    waited, body = await health_turns(service, 200, timeout=5)
    assert body["status"] == "ok"
    assert (await scrape(service))[M + "redis_healthy"] == 1


@pytest_twisted.ensureDeferred
async def test_health_is_503_while_redis_refuses_writes(start_service, own_redis):
    """A Redis demoted to a replica by a failover answers PING but refuses every write."""
    service = await start_service(redis=own_redis, datetime_interval=0)
    await health_turns(service, 200, timeout=5)
    own_redis.client().replicaof("127.0.0.1", "1")
    try:
        waited, body = await health_turns(service, 503, timeout=5)
        assert body["status"].startswith("redis refuses writes: READONLY"), body
        assert body["redis"]["connected"] is True
    finally:
        own_redis.client().replicaof("no", "one")
    await health_turns(service, 200, timeout=5)


@pytest_twisted.ensureDeferred
async def test_health_masks_the_redis_password(start_service, redis_binary):
    """The Redis URL in healthz never shows the password."""
    server = RedisServer(redis_binary, free_port(), ("--requirepass", "hunter2-password"))
    server.start()
    try:
        service = await start_service(redis_url=f"redis://:hunter2-password@127.0.0.1:{server.port}")
        code, body = await health(service)
        assert code == 200
        assert "hunter2" not in json.dumps(body) and "***" in body["redis"]["url"]
    finally:
        server.kill()


@pytest_twisted.ensureDeferred
async def test_counters_come_without_created_series(start_service):
    """Each counter is one ``_total`` series (per label set), not also a ``_created`` timestamp."""
    service = await start_service(datetime_interval=0)
    client = await connect(service.ws_url)
    reply = await client.reply(client.join("room", "not-a-token"))
    assert fields(reply)[4]["status"] == "error"
    text = (await (await treq.get(service.base_url + "/metrics")).content()).decode()
    assert M + "join_refusals_total{" in text and M + "heartbeats_total " in text
    assert "_created" not in text
    client.close()
    await client.closed


@pytest_twisted.ensureDeferred
async def test_two_services_in_one_process_keep_their_own_metrics(start_service):
    """Each service has its own registry: a socket on one is not counted by the other."""
    first = await start_service(datetime_interval=0)
    second = await start_service(datetime_interval=0)
    client = await connect(first.ws_url)
    await client.reply(client.push("phoenix", "heartbeat", {}))
    assert (await scrape(first))[M + "sockets"] == 1
    assert (await scrape(second))[M + "sockets"] == 0
    client.close()
    await client.closed
