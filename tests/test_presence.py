"""
Presence over real sockets and a real Redis (PROTOCOL.md section 6): what the joiner
gets, what every member gets on each change, and that clients applying the frames as
phoenix.js does all end with the presence Redis holds, across two services.
"""

from __future__ import annotations

import random
import time

import pytest_twisted

from .conftest import RunningService
from .presence_view import TOPIC, Tab, join_as, joined, metas, refs, settle_all, truth
from .waiting import eventually


async def watched_alice(start_service) -> tuple[RunningService, Tab, Tab]:
    """A service with a watcher and alice (join_ref "1") joined to TOPIC, each seeing both present."""
    service = await start_service(datetime_interval=0)
    watcher = await joined(service, "watcher")
    tab = await joined(service, "alice", join_ref="1")
    await settle_all([watcher, tab], both_present(watcher, tab))
    return service, watcher, tab


def both_present(watcher: Tab, alice: Tab) -> dict[str, list[str]]:
    """The presence of ``watched_alice``'s two tabs under their current agents, in ``refs`` form."""
    return {"watcher": [watcher.agent_id], "alice": [alice.agent_id]}


@pytest_twisted.ensureDeferred
async def test_joiner_gets_reply_then_state_with_its_join_ref_and_meta(start_service, flushed_redis):
    """The reply names the agent; presence_state follows, under the join's join_ref, with phx_ref and online_at."""
    service = await start_service(datetime_interval=0)
    before = int(time.time() * 1000)
    tab = await Tab.open(service.ws_url, TOPIC)
    reply, state = await join_as(service, tab, "alice", join_ref="42")
    after = int(time.time() * 1000)
    assert reply[0] == "42"
    agent = reply[4]["response"]["id"]
    assert agent.endswith(f":{TOPIC}:42")
    assert state[:4] == ["42", None, TOPIC, "presence_state"]
    [meta] = state[4]["alice"]["metas"]
    assert meta["phx_ref"] == agent
    assert before <= meta["online_at"] <= after
    diff = await tab.until(lambda f: f[3] == "presence_diff")
    assert diff == [None, None, TOPIC, "presence_diff", {"joins": {"alice": {"metas": [meta]}}, "leaves": {}}]
    await tab.close()


@pytest_twisted.ensureDeferred
async def test_two_tabs_with_one_id_are_one_key_with_two_metas(start_service, flushed_redis):
    """Two sockets with tokens for the same id: one presence key holding both metas."""
    service = await start_service(datetime_interval=0)
    first = await joined(service, "alice")
    second = await joined(service, "alice")
    expected = {"alice": sorted([first.agent_id, second.agent_id])}
    assert refs(second.view.state) == expected
    await settle_all([first, second], expected)
    assert truth(flushed_redis.client()) == expected
    await second.close()
    await first.settle({"alice": [first.agent_id]})
    await first.close()


@pytest_twisted.ensureDeferred
async def test_every_member_gets_each_join_leave_disconnect_and_rejoin_once(start_service, flushed_redis):
    """
    Members on two services sharing one Redis see every change as a presence_diff
    with join_ref null, each exactly once, and all end with the presence in Redis.
    """
    redis = flushed_redis.client()
    one = await start_service(datetime_interval=0)
    two = await start_service(datetime_interval=0)
    alice = await joined(one, "alice")
    bob = await joined(two, "bob")
    carol = await joined(one, "carol")
    tabs = [alice, bob, carol]
    expected = {key: [tab.agent_id]
                for key, tab in zip(("alice", "bob", "carol"), tabs)}
    await settle_all(tabs, expected)
    assert truth(redis) == expected

    await bob.leave()  # leave
    del expected["bob"]
    await settle_all([alice, carol], expected)
    assert truth(redis) == expected

    await carol.close()  # disconnect
    await alice.settle({"alice": [alice.agent_id]})
    assert truth(redis) == {"alice": [alice.agent_id]}

    old_agent = alice.agent_id  # second join of the same topic on the same socket
    dave = await joined(two, "dave")
    reply, state = await join_as(one, alice, "alice")
    assert alice.agent_id != old_agent
    assert reply[0] == state[0] == alice.view.channel_join_ref
    expected = {"alice": [alice.agent_id], "dave": [dave.agent_id]}
    await settle_all([alice, dave], expected)
    assert truth(redis) == expected

    for tab in tabs + [dave]:
        for diff in tab.diffs():
            assert diff[0] is None and diff[1] is None
    # each join and leave reached each member once
    for tab in (alice, dave):
        for ref in {m["phx_ref"] for d in tab.diffs() for part in ("joins", "leaves") for m in metas(d, part)}:
            assert [m["phx_ref"] for d in tab.diffs() for m in metas(d, "joins")].count(ref) <= 1
            assert [m["phx_ref"] for d in tab.diffs() for m in metas(d, "leaves")].count(ref) <= 1
    await alice.close()
    await dave.close()


@pytest_twisted.ensureDeferred
async def test_rejoin_closes_the_old_join_and_diffs_the_swap(start_service, flushed_redis):
    """A second phx_join of a joined topic: phx_close for the old join_ref, then one diff joining the new meta and leaving the old."""
    service, watcher, tab = await watched_alice(start_service)
    old = tab.agent_id
    await join_as(service, tab, "alice", join_ref="2")
    assert ["1", "1", TOPIC, "phx_close", {}] in tab.frames
    new = tab.agent_id
    await settle_all([watcher, tab], both_present(watcher, tab))
    swap = [d[4] for d in watcher.diffs() if "alice" in d[4]["leaves"]]
    assert [[m["phx_ref"] for m in d["leaves"]["alice"]["metas"]] for d in swap] == [[old]]
    assert any(m["phx_ref"] == new for d in watcher.diffs() for m in metas(d, "joins"))
    await tab.close()
    await watcher.close()


@pytest_twisted.ensureDeferred
async def test_rejoin_with_the_same_join_ref_stays_present(start_service, flushed_redis):
    """A client rejoining with its old join_ref (same agent id) is present afterwards, for others and in Redis."""
    service, watcher, tab = await watched_alice(start_service)
    agent, expected = tab.agent_id, both_present(watcher, tab)
    for _ in range(3):
        await join_as(service, tab, "alice", join_ref="1")
        assert tab.agent_id == agent
    await settle_all([watcher, tab], expected)
    await eventually(lambda: truth(flushed_redis.client()) == expected)
    flushed_redis.client().publish(f"to:{TOPIC}:marker", "{}")
    for t in (watcher, tab):
        await t.until(lambda f: f[3] == "marker")
        assert refs(t.view.state) == expected
    await tab.close()
    await watcher.close()


@pytest_twisted.ensureDeferred
async def test_concurrent_churn_on_two_services_converges_on_every_client(start_service, flushed_redis):
    """Joins, leaves and disconnects fired without waiting, on two services: every survivor ends with Redis's presence."""
    redis = flushed_redis.client()
    services = [await start_service(datetime_interval=0) for _ in range(2)]
    rng = random.Random(3)
    tabs = [await Tab.open(services[i % 2].ws_url, TOPIC) for i in range(24)]
    for i, tab in enumerate(tabs):
        tab.client.join(TOPIC, services[i % 2].hub.tokens.mint(TOPIC, f"user{i % 9}")[1])  # ref and join_ref "1"
        tab.view.channel_join_ref = "1"
    leavers = rng.sample(tabs, 6)
    closers = rng.sample([t for t in tabs if t not in leavers], 6)
    for tab in leavers:
        tab.client.push(TOPIC, "phx_leave", {}, "1")
        tab.view.channel_join_ref = None
    for tab in closers:
        tab.client.close()
    survivors = [t for t in tabs if t not in leavers and t not in closers]
    expected: dict[str, list[str]] = {}
    for i, tab in enumerate(tabs):
        if tab in survivors:
            reply = await tab.until(lambda f: f[3] == "phx_reply" and f[1] == "1")
            tab.agent_id = reply[4]["response"]["id"]
            expected.setdefault(f"user{i % 9}", []).append(tab.agent_id)
    expected = {key: sorted(agents) for key, agents in expected.items()}
    await settle_all(survivors, expected)
    assert truth(redis) == expected
    for tab in survivors + leavers:
        await tab.close()


@pytest_twisted.ensureDeferred
async def test_presence_is_written_again_when_redis_comes_back_empty(start_service, own_redis):
    """After Redis restarts without its data, this process's members are in Redis again and new joiners see them."""
    service = await start_service(redis=own_redis, datetime_interval=0)
    alice = await joined(service, "alice")
    own_redis.kill()
    await eventually(lambda: not service.bridge.connected)
    own_redis.start()
    await eventually(lambda: service.bridge.connected)
    await eventually(lambda: truth(own_redis.client()) == {"alice": [alice.agent_id]})
    assert own_redis.client().zscore("{tangram-channel}:nodes", service.channel.presence.node) is not None
    bob = await joined(service, "bob")
    expected = {"alice": [alice.agent_id], "bob": [bob.agent_id]}
    assert refs(bob.view.state) == expected
    await settle_all([alice, bob], expected)
    await alice.close()
    await bob.close()


@pytest_twisted.ensureDeferred
async def test_leave_during_a_redis_blip_is_withdrawn_when_redis_is_back(start_service, own_redis):
    """A leave whose write failed while the Redis connections were down is written and announced on reconnect."""
    redis = own_redis.client()
    service = await start_service(redis=own_redis, datetime_interval=0, presence_window=0)
    alice = await joined(service, "alice")
    bob = await joined(service, "bob")
    await settle_all([alice, bob], {"alice": [alice.agent_id], "bob": [bob.agent_id]})
    redis.client_kill_filter(_type="normal")
    redis.client_kill_filter(_type="pubsub")
    await eventually(lambda: not service.bridge.connected)
    await bob.leave()
    await eventually(lambda: service.bridge.connected)
    await alice.settle({"alice": [alice.agent_id]})
    await eventually(lambda: truth(redis) == {"alice": [alice.agent_id]})
    await alice.close()
    await bob.close()


@pytest_twisted.ensureDeferred
async def test_changes_elsewhere_during_a_redis_blip_reach_members_on_reconnect(start_service, own_redis):
    """While one service is cut off from Redis, a member of another leaves and one joins: its members learn both when it is back."""
    redis = own_redis.client()
    cut = await start_service(redis=own_redis, datetime_interval=0)
    other = await start_service(redis=own_redis, datetime_interval=0)
    alice = await joined(cut, "alice")
    bob = await joined(other, "bob")
    await alice.settle({"alice": [alice.agent_id], "bob": [bob.agent_id]})
    # keep `cut` out: no new connections, then drop its two
    redis.config_set("maxclients", len(redis.client_list()))
    for conn in (cut.bridge._commands, cut.bridge._subscriber):
        redis.client_kill(f"127.0.0.1:{conn.transport.getHost().port}")
    await eventually(lambda: not cut.bridge.connected)
    await bob.leave()
    carol = await joined(other, "carol")
    expected = {"alice": [alice.agent_id], "carol": [carol.agent_id]}
    await eventually(lambda: truth(redis) == expected)
    redis.config_set("maxclients", 10000)
    await eventually(lambda: cut.bridge.connected)
    await alice.settle(expected)
    for tab in (alice, bob, carol):
        await tab.close()


@pytest_twisted.ensureDeferred
async def test_presence_survives_redis_forgetting_its_scripts(start_service, flushed_redis):
    """After SCRIPT FLUSH (a restarted or failed-over Redis), EVALSHA's NOSCRIPT sends the script again."""
    service, watcher, alice = await watched_alice(start_service)
    flushed_redis.client().script_flush()
    bob = await joined(service, "bob")
    expected = {**both_present(watcher, alice), "bob": [bob.agent_id]}
    await settle_all([watcher, alice, bob], expected)
    assert truth(flushed_redis.client()) == expected
