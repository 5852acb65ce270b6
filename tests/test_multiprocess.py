"""
Two real ``twistd -n tangram-channel`` processes sharing one private Redis behave as
one service (PROTOCOL.md section 9): one presence, each diff and each broadcast once
per member, and the presence of a SIGKILLed process withdrawn by the survivor.
"""

from __future__ import annotations

import signal
import time

import pytest_twisted

from tangram_channel.config import Config
from tangram_channel.naming import NODES_KEY
from tangram_channel.tokens import TokenAuthority

from .conftest import free_port
from .presence_view import Tab, metas, truth
from .waiting import eventually

SECRET = "multiprocess-test-secret-long-enough-for-hs256"
NODE_TIMEOUT = 3
TOPIC = "room"


def test_default_node_timeout_reaps_within_30_seconds():
    """A killed process's presence is withdrawn within 30 s by default (node_timeout plus one beat)."""
    timeout = Config().node_timeout
    assert timeout + timeout / 3 <= 30


def start_node(twistd, redis):
    """Start one service process; return it and its WebSocket URL."""
    port = free_port()
    proc = twistd(
        "--redis-url", redis.url, "--listen", f"tcp:{port}:interface=127.0.0.1", "--jwt-secret", SECRET,
        "--embedded-redis", "false", "--datetime-interval", "0",
        port=port, env={"TANGRAM_CHANNEL_NODE_TIMEOUT": str(NODE_TIMEOUT)},
    )
    proc.wait_for_log("connected to Redis")  # it listens first: a join before this is refused
    return proc, f"ws://127.0.0.1:{port}/websocket"


async def beats(redis, count: int) -> None:
    """Until every node in the node zset has beaten ``count`` more times (each beat moves its score)."""
    seen = {node: [score] for node, score in redis.zrange(NODES_KEY, 0, -1, withscores=True)}

    def beaten() -> bool:
        for node, score in redis.zrange(NODES_KEY, 0, -1, withscores=True):
            if node in seen and seen[node][-1] != score:
                seen[node].append(score)
        return all(len(scores) > count for scores in seen.values())

    await eventually(beaten, timeout=4 * NODE_TIMEOUT, what=f"{count} heartbeats of every node", interval=0.05)


@pytest_twisted.ensureDeferred
async def test_two_processes_share_presence_broadcasts_and_reap_a_killed_one(twistd, flushed_redis):
    """
    A client on each process sees the other join, leave and rejoin; a broadcast
    published once reaches each member once; after SIGKILL of one process the other
    announces its member's leave within 30 s; each diff reached the survivor once.
    """
    redis = flushed_redis.client()
    tokens = TokenAuthority(SECRET, 3600, 0, 8, time.time)
    (_, url_a), (node_b, url_b) = start_node(twistd, flushed_redis), start_node(twistd, flushed_redis)

    alice = await Tab.open(url_a, TOPIC)
    await alice.join(tokens.mint(TOPIC, "alice")[1])
    bob = await Tab.open(url_b, TOPIC)
    await bob.join(tokens.mint(TOPIC, "bob")[1])
    both = {"alice": [alice.agent_id], "bob": [bob.agent_id]}
    await alice.settle(both)  # a sees b join
    await bob.settle(both)

    # a broadcast published once reaches each member once
    assert redis.publish(f"to:{TOPIC}:news", b'{"n":1}') == 2  # one subscriber per process
    marker = redis.publish(f"to:{TOPIC}:marker", b"{}")
    assert marker == 2
    for tab in (alice, bob):
        await tab.until(lambda f: f[3] == "marker")
        assert [f for f in tab.frames if f[3] == "news"] == [[None, None, TOPIC, "news", {"n": 1}]]

    # b leaves and joins again: a sees both
    await bob.leave()
    await alice.settle({"alice": [alice.agent_id]})
    await bob.join(tokens.mint(TOPIC, "bob")[1])
    both = {"alice": [alice.agent_id], "bob": [bob.agent_id]}
    await alice.settle(both)

    # b's process dies without a word; a sees bob vanish
    killed_at = time.monotonic()
    assert node_b.stop(signal.SIGKILL) == -signal.SIGKILL
    await alice.settle({"alice": [alice.agent_id]}, timeout=30)
    assert time.monotonic() - killed_at <= 30
    assert truth(redis) == {"alice": [alice.agent_id]}

    # every diff reached alice exactly once
    seen = [(part, m["phx_ref"]) for d in alice.diffs() for part in ("joins", "leaves") for m in metas(d, part)]
    assert len(seen) == len(set(seen)), seen
    await alice.close()


@pytest_twisted.ensureDeferred
async def test_survivors_announce_a_killed_process_leaves_once(twistd, start_service, flushed_redis):
    """
    Two surviving services race to reap a SIGKILLed third: its members' leaves reach
    each surviving member once, and Redis ends with only the survivors' entries.
    """
    redis = flushed_redis.client()
    survivors = [await start_service(datetime_interval=0, node_timeout=NODE_TIMEOUT, jwt_secret=SECRET)
                 for _ in range(2)]
    tokens = TokenAuthority(SECRET, 3600, 0, 8, time.time)
    victim, url = start_node(twistd, flushed_redis)
    doomed = []
    for i in range(3):
        tab = await Tab.open(url, TOPIC)
        await tab.join(tokens.mint(TOPIC, f"doomed{i}")[1])
        doomed.append(tab)
    tabs = []
    for i, service in enumerate(survivors):
        tab = await Tab.open(service.ws_url, TOPIC)
        await tab.join(tokens.mint(TOPIC, f"survivor{i}")[1])
        tabs.append(tab)
    everyone = {f"doomed{i}": [t.agent_id] for i, t in enumerate(doomed)}
    everyone.update({f"survivor{i}": [t.agent_id] for i, t in enumerate(tabs)})
    for tab in tabs:
        await tab.settle(everyone)

    assert victim.stop(signal.SIGKILL) == -signal.SIGKILL
    rest = {f"survivor{i}": [t.agent_id] for i, t in enumerate(tabs)}
    for tab in tabs:
        await tab.settle(rest, timeout=30)
    # both survivors beat twice more: a second reaping would show by now
    await beats(redis, 2)
    redis.publish(f"to:{TOPIC}:marker", "{}")
    for tab in tabs:
        await tab.until(lambda f: f[3] == "marker")
        left = [m["phx_ref"] for d in tab.diffs() for m in metas(d, "leaves")]
        assert sorted(left) == sorted(t.agent_id for t in doomed)
        await tab.close()
    assert truth(redis) == rest
