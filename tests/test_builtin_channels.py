"""
The built-in channels over real sockets (PROTOCOL.md section 8): ``system`` datetime
ticks, ``admin`` channel events with Tangram's names and shapes (the same from two
services sharing one Redis), and ``phoenix`` heartbeats.
"""

from __future__ import annotations

import re
import time
from datetime import datetime

import pytest_twisted

from .presence_view import Tab, joined
from .waiting import eventually

ISO_MS_OFFSET = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d$")


@pytest_twisted.ensureDeferred
async def test_system_members_get_datetime_ticks_with_a_counter(start_service, flushed_redis):
    """Each tick is [null, null, "system", "datetime", {"status": "ok", "response": {"datetime", "counter"}}]."""
    service = await start_service(datetime_interval=0.1)
    tab = await joined(service, "watcher", topic="system")
    ticks = [await tab.until(lambda f: f[3] == "datetime") for _ in range(3)]
    counters = []
    for frame in ticks:
        assert frame[:3] == [None, None, "system"]
        assert frame[4]["status"] == "ok" and set(frame[4]["response"]) == {"datetime", "counter"}
        stamp = frame[4]["response"]["datetime"]
        assert ISO_MS_OFFSET.match(stamp), stamp
        assert datetime.fromisoformat(stamp).utcoffset() is not None
        counters.append(frame[4]["response"]["counter"])
    assert counters == list(range(counters[0], counters[0] + 3))
    await tab.close()


async def tick_times(tab: Tab, count: int) -> list[float]:
    """When each of the next ``count`` datetime ticks arrived."""
    times = []
    for _ in range(count):
        await tab.until(lambda f: f[3] == "datetime")
        times.append(time.monotonic())
    return times


@pytest_twisted.ensureDeferred
async def test_the_default_datetime_interval_is_one_second(start_service, flushed_redis):
    """Five ticks with no datetime_interval set are about 1 s apart (0.5 s or 2 s would fail)."""
    service = await start_service()
    tab = await joined(service, "watcher", topic="system")
    times = await tick_times(tab, 5)
    gaps = [later - earlier for earlier, later in zip(times, times[1:])]
    assert 0.8 < sum(gaps) / len(gaps) < 1.25, gaps
    await tab.close()


@pytest_twisted.ensureDeferred
async def test_datetime_interval_zero_sends_no_ticks(start_service, flushed_redis):
    """
    With datetime_interval 0 nothing but plugin broadcasts arrives on system, while a
    service with the default interval ticks twice (so more than one default interval passed).
    """
    service = await start_service(datetime_interval=0)
    tab = await joined(service, "watcher", topic="system")
    reference = await joined(await start_service(), "reference", topic="system")
    await tick_times(reference, 2)
    flushed_redis.client().publish("to:system:marker", "{}")
    await tab.until(lambda f: f[3] == "marker")
    assert [f for f in tab.frames if f[3] == "datetime"] == []
    await tab.close()
    await reference.close()


def admin_events(tab: Tab, event: str) -> list[dict]:
    return [f[4] for f in tab.frames if f[:3] == [None, None, "admin"] and f[3] == event]


@pytest_twisted.ensureDeferred
async def test_admin_gets_channel_list_add_join_leave_remove_across_services(start_service, flushed_redis):
    """
    An admin joining on one service gets channel.list for every channel, also those
    whose members are on the other service; then channel.add, channel.join,
    channel.leave and channel.remove as a channel comes and goes.
    """
    one = await start_service(datetime_interval=0)
    two = await start_service(datetime_interval=0)
    user = await joined(two, "user", topic="room")
    admin = await joined(one, "op", topic="admin")
    listed = await admin.until(lambda f: f[3] == "channel.list" and f[4]["channel"] == "room")
    assert listed[:4] == [None, None, "admin", "channel.list"]
    assert listed[4] == {"channel": "room", "agents": [user.agent_id]}
    assert admin_events(admin, "channel.list") == [  # one per channel, sorted
        {"channel": "admin", "agents": [admin.agent_id]}, {"channel": "room", "agents": [user.agent_id]}]

    visitor = await joined(two, "visitor", topic="lobby")
    await admin.until(lambda f: f[3] == "channel.join" and f[4]["channel"] == "lobby")
    added = [e for e in admin_events(admin, "channel.add") if e["channel"] == "lobby"]
    assert added == [{"channel": "lobby", "channels": ["admin", "lobby", "room"]}]
    assert admin_events(admin, "channel.join")[-1] == {
        "agent": visitor.agent_id, "agents": [visitor.agent_id], "channel": "lobby"}

    await visitor.leave()
    await admin.until(lambda f: f[3] == "channel.remove")
    assert admin_events(admin, "channel.leave") == [{"agent": visitor.agent_id, "agents": [], "channel": "lobby"}]
    assert admin_events(admin, "channel.remove") == [{"channel": "lobby", "channels": ["admin", "room"]}]
    for tab in (user, admin, visitor):
        await tab.close()


@pytest_twisted.ensureDeferred
async def test_no_admin_agent_events_while_no_admin_is_joined(start_service, flushed_redis):
    """
    Admin events carry every agent or every channel (O(N^2) in a join storm): none is
    published while no admin listens.
    """
    service = await start_service(datetime_interval=0)
    listener = flushed_redis.client().pubsub()
    listener.psubscribe("to:admin:*")
    visitor = await joined(service, "visitor", topic="lobby")
    await visitor.leave()
    await visitor.close()
    await eventually(lambda: "lobby" not in service.channel.presence.replicas)
    flushed_redis.client().publish("to:admin:marker", "{}")
    seen = []
    while not seen or seen[-1] != b"to:admin:marker":
        message = listener.get_message(timeout=5)
        assert message is not None, seen
        if message["type"] == "pmessage":
            seen.append(message["channel"])
    listener.close()
    assert seen == [b"to:admin:marker"]


@pytest_twisted.ensureDeferred
async def test_admin_token_over_http_needs_the_admin_key(start_service, flushed_redis):
    """/token mints an admin token with Authorization: Bearer <admin_key>, which joins admin."""
    import json

    import treq

    service = await start_service(datetime_interval=0, admin_key="k3y")
    body = json.dumps({"channel": "admin", "id": "op"}).encode()
    headers = {"content-type": "application/json"}
    refused = await treq.post(service.base_url + "/token", body, headers=headers)
    assert refused.code == 403
    await refused.content()
    minted = await treq.post(service.base_url + "/token", body, headers={**headers, "authorization": "Bearer k3y"})
    token = json.loads(await minted.content())["token"]
    tab = await Tab.open(service.ws_url, "admin")
    await tab.join(token)
    await tab.until(lambda f: f[3] == "channel.join" and f[4]["agent"] == tab.agent_id)
    await tab.close()


@pytest_twisted.ensureDeferred
async def test_phoenix_heartbeat_is_answered_without_a_join(start_service, flushed_redis):
    """heartbeat on phoenix: reply ok {} with the client's refs, no channel joined."""
    service = await start_service(datetime_interval=0)
    tab = await Tab.open(service.ws_url, "phoenix")
    ref = tab.client.push("phoenix", "heartbeat", {})
    reply = await tab.until(lambda f: f[3] == "phx_reply")
    assert reply == [None, ref, "phoenix", "phx_reply", {"status": "ok", "response": {}}]
    await tab.close()
