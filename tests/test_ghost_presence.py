"""
Ghost presence (issue 13, point 4) with a real redis-server: a presence write Redis
refuses while the connection stays up (a read-only replica after a failover) is
written once Redis takes writes again, a stop does not orphan what it could not
withdraw, and survivors withdraw entries whose node is gone.
"""

from __future__ import annotations

import pytest_twisted

from tangram_channel.naming import CHANNELS_KEY, NODES_KEY, presence_key
from tangram_channel.presence import encode_entry

from .conftest import JWT_SECRET, free_port
from .presence_view import TOPIC, Tab, joined, settle_all, truth
from .waiting import eventually


def refuse_writes(redis) -> int:
    """Make Redis a read-only replica (of no master: it keeps its data); returns the refusals so far."""
    before = refusals(redis)
    redis.execute_command("REPLICAOF", "127.0.0.1", "1")
    return before


def accept_writes(redis) -> None:
    redis.execute_command("REPLICAOF", "NO", "ONE")


def refusals(redis, error: str = "READONLY") -> int:
    """How many commands Redis answered with this error (-READONLY, -OOM)."""
    stat = redis.info("errorstats").get(f"errorstat_{error}", {})
    if isinstance(stat, str):  # redis-py before 5.0.1 leaves "count=N,..." unparsed
        stat = dict(field.split("=") for field in stat.split(","))
    return int(stat.get("count", 0))


async def node_in_twistd(twistd, redis_url: str, node_timeout: float) -> tuple[object, str]:
    """``twistd -n tangram-channel`` on ``redis_url`` that accepts ``start_service``'s tokens; (process, ws URL)."""
    port = free_port()
    env = {
        "TANGRAM_CHANNEL_JWT_SECRET": JWT_SECRET,
        "TANGRAM_CHANNEL_NODE_TIMEOUT": str(node_timeout),
        "TANGRAM_CHANNEL_PRESENCE_WINDOW": "0",
        "TANGRAM_CHANNEL_DATETIME_INTERVAL": "0",
    }
    listen = f"tcp:{port}:interface=127.0.0.1"
    proc = twistd("--listen", listen, "--redis-url", redis_url, "--embedded-redis", "false", env=env, port=port)
    proc.wait_for_log("connected to Redis")
    return proc, f"ws://127.0.0.1:{port}/websocket"


async def refused_leave_on_a_twistd_node(start_service, own_redis, twistd, node_timeout: float):
    """
    A watcher on an in-process survivor, alice on a twistd node; Redis turns read-only
    and refuses alice's leave. Returns the Redis client, the twistd node and the watcher.
    """
    redis = own_redis.client()
    survivor = await start_service(redis=own_redis, datetime_interval=0, node_timeout=node_timeout)
    proc, ws_url = await node_in_twistd(twistd, own_redis.url, node_timeout)
    watcher = await joined(survivor, "watcher")
    alice = await Tab.open(ws_url, TOPIC)
    await alice.join(survivor.hub.tokens.mint(TOPIC, "alice")[1])
    await settle_all([watcher, alice], {"watcher": [watcher.agent_id], "alice": [alice.agent_id]})
    before = refuse_writes(redis)
    await alice.leave()
    await eventually(lambda: refusals(redis) > before)
    assert truth(redis) == {"watcher": [watcher.agent_id], "alice": [alice.agent_id]}
    return redis, proc, watcher


@pytest_twisted.ensureDeferred
async def test_a_leave_a_read_only_redis_refused_reaches_it_once_it_takes_writes(start_service, own_redis):
    """The connection never drops, so no reconnect rewrites it: the retry does, and the other members see the leave."""
    redis = own_redis.client()
    service = await start_service(redis=own_redis, datetime_interval=0, presence_window=0, node_timeout=60)
    watcher = await joined(service, "watcher")
    bob = await joined(service, "bob")
    await settle_all([watcher, bob], {"watcher": [watcher.agent_id], "bob": [bob.agent_id]})
    before = refuse_writes(redis)
    await bob.leave()
    await eventually(lambda: refusals(redis) > before)
    assert truth(redis) == {"watcher": [watcher.agent_id], "bob": [bob.agent_id]}
    accept_writes(redis)
    await eventually(lambda: truth(redis) == {"watcher": [watcher.agent_id]})
    await watcher.settle({"watcher": [watcher.agent_id]})
    assert service.bridge.connected
    await watcher.close()
    await bob.close()


@pytest_twisted.ensureDeferred
async def test_a_clean_stop_after_a_refused_leave_leaves_no_ghost(start_service, own_redis, twistd):
    """
    The issue's ghost: a leave refused while Redis was read-only, then SIGTERM once it
    takes writes again. The entry is gone from Redis and the survivor's member saw it go.
    """
    redis, proc, watcher = await refused_leave_on_a_twistd_node(start_service, own_redis, twistd, node_timeout=60)
    accept_writes(redis)
    assert proc.stop() == 0
    await eventually(lambda: truth(redis) == {"watcher": [watcher.agent_id]})
    await watcher.settle({"watcher": [watcher.agent_id]})
    assert redis.zcard(NODES_KEY) == 1  # the survivor's
    await watcher.close()


@pytest_twisted.ensureDeferred
async def test_a_node_stopped_while_redis_refuses_writes_is_reaped_by_a_survivor(start_service, own_redis, twistd):
    """
    SIGTERM while every write is refused: the stop ends (exit 0), and once Redis takes
    writes a survivor withdraws the entries the node could not.
    """
    redis, proc, watcher = await refused_leave_on_a_twistd_node(start_service, own_redis, twistd, node_timeout=3)
    assert proc.stop() == 0
    assert truth(redis)["alice"]  # the node could not withdraw it
    accept_writes(redis)
    await eventually(lambda: truth(redis) == {"watcher": [watcher.agent_id]})
    await watcher.settle({"watcher": [watcher.agent_id]})
    await watcher.close()


@pytest_twisted.ensureDeferred
async def test_a_survivor_withdraws_an_orphan_whose_node_is_not_in_the_zset(start_service, flushed_redis):
    """Entries planted by hand for a node Redis never heard of are withdrawn, and members see them leave."""
    redis = flushed_redis.client()
    for topic, ref in ((TOPIC, "ghost-1"), ("elsewhere", "ghost-2")):
        entry = encode_entry("node-that-is-gone", "ghost", {"phx_ref": ref, "online_at": 0})
        redis.hset(presence_key(topic), ref, entry)
        redis.sadd(CHANNELS_KEY, topic)
    service = await start_service(datetime_interval=0, node_timeout=1.5)
    watcher = await joined(service, "watcher")
    assert "ghost" in watcher.view.state
    await watcher.settle({"watcher": [watcher.agent_id]})
    assert truth(redis) == {"watcher": [watcher.agent_id]}
    await eventually(lambda: not redis.exists(presence_key("elsewhere")))
    assert not redis.sismember(CHANNELS_KEY, "elsewhere")
    await watcher.close()


@pytest_twisted.ensureDeferred
async def test_members_a_full_redis_refused_to_rewrite_are_written_once_it_has_room(start_service, own_redis):
    """
    Redis comes back empty and out of memory (-OOM): rewriting this node's members is
    refused, and so is a new join (answered with an error). Once Redis has room, the
    members are written again without another reconnect; the refused joiner is not.
    """
    service = await start_service(redis=own_redis, datetime_interval=0, node_timeout=60)
    alice = await joined(service, "alice")
    own_redis.kill()
    await eventually(lambda: not service.bridge.connected)
    own_redis.extra = ("--maxmemory", "1", "--maxmemory-policy", "noeviction")
    own_redis.start()
    redis = own_redis.client()
    await eventually(lambda: refusals(redis, "OOM") > 0)
    carol = await Tab.open(service.ws_url, TOPIC)
    ref = carol.client.join(TOPIC, service.hub.tokens.mint(TOPIC, "carol")[1])
    reply = await carol.until(lambda f: f[3] == "phx_reply" and f[1] == ref)
    assert reply[4] == {"status": "error", "response": {"reason": "redis unavailable"}}
    assert truth(redis) == {}
    redis.config_set("maxmemory", 0)
    await eventually(lambda: truth(redis) == {"alice": [alice.agent_id]})
    assert service.bridge.connected
    await alice.close()
    await carol.close()
