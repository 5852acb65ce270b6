"""
What the admin console reads and does (issue 16, point 8), below the page: per-channel
counts, the kept history, and the two actions, which only an admin token may take.
"""

from __future__ import annotations

import json

import pytest_twisted
import treq
from twisted.internet.task import Clock

from tangram_channel.history import History
from tangram_channel.metrics import ChannelTraffic

from .e2e import RedisListener, captured_log, forge_token
from .waiting import eventually, sleep
from .wsclient import PhoenixTestClient, connect, fields


def test_history_keeps_the_last_span_of_samples_stamped_with_the_clock():
    """Every interval one sample of the totals; older than span, gone; stopping stops sampling."""
    clock = Clock()
    clock.advance(1000)
    totals = iter(range(100))
    history = History(clock, lambda: {"sockets": float(next(totals))}, interval=5.0, span=20.0)
    history.startService()
    clock.pump([5.0] * 10)
    assert [sample["t"] for sample in history.samples] == [1030.0, 1035.0, 1040.0, 1045.0, 1050.0]
    assert [sample["sockets"] for sample in history.samples] == [6.0, 7.0, 8.0, 9.0, 10.0]
    history.stopService()
    clock.pump([5.0] * 3)
    assert history.samples[-1]["t"] == 1050.0


def test_channel_traffic_counts_each_channel_until_it_is_forgotten():
    traffic = ChannelTraffic()
    traffic.received("room")
    traffic.sent("room", 3)
    traffic.sent("other", 2)
    assert traffic.of("room") == (1, 3) and traffic.of("other") == (0, 2)
    traffic.forget("room")
    assert traffic.of("room") == (0, 0) and traffic.of("other") == (0, 2)


def admin_headers(service, admin_id: str = "operator") -> dict[str, str]:
    return {"authorization": "Bearer " + forge_token(service.jwt_secret, "admin", admin_id)}


async def stats(service) -> dict:
    response = await treq.get(service.base_url + "/admin/stats", headers=admin_headers(service))
    assert response.code == 200
    return json.loads(await response.content())


async def post(service, path: str, body: dict, headers: dict[str, str]) -> tuple[int, dict]:
    response = await treq.post(
        service.base_url + "/admin/" + path, json.dumps(body).encode(),
        headers={"content-type": "application/json", **headers},
    )
    return response.code, json.loads(await response.content())


async def joined_visitor(service) -> tuple[PhoenixTestClient, str]:
    """A client joined to ``room`` with a token whose id is ``visitor``, and its agent id."""
    visitor = await connect(service.ws_url)
    reply = await visitor.reply(visitor.join("room", forge_token(service.jwt_secret, "room", "visitor")))
    return visitor, fields(reply)[4]["response"]["id"]


@pytest_twisted.ensureDeferred
async def test_stats_list_channels_with_their_messages_and_agents_by_user_id(start_service, redis_server):
    """A member's pushes count in, broadcasts count out per member; agents map to token ids; a left channel goes."""
    service = await start_service(datetime_interval=0)
    visitor, agent = await joined_visitor(service)
    for n in range(3):
        await visitor.reply(visitor.push("room", "note", {"n": n}))
    for n in range(2):
        redis_server.client().publish("to:room:news", json.dumps({"n": n}))
        await visitor.until(lambda f: fields(f)[3] == "news")
    room = next(c for c in (await stats(service))["channels"] if c["channel"] == "room")
    # out: the join's presence_diff, then the two broadcasts
    assert room == {"channel": "room", "members": 1, "messages_in": 3, "messages_out": 3, "agents": {agent: "visitor"}}

    await visitor.reply(visitor.push("room", "phx_leave", {}))
    assert "room" not in [c["channel"] for c in (await stats(service))["channels"]]
    visitor.close()


@pytest_twisted.ensureDeferred
async def test_stats_carry_history_from_the_start(start_service):
    """A console opened now gets the samples kept so far (the first is taken at start-up)."""
    service = await start_service(datetime_interval=0)
    history = (await stats(service))["history"]
    assert len(history) >= 1
    assert set(history[0]) == {"t", "sockets", "joins", "messages_in", "messages_out", "bytes_in", "bytes_out"}


@pytest_twisted.ensureDeferred
async def test_publish_reaches_a_joined_client_and_is_logged_without_the_token(start_service):
    service = await start_service(datetime_interval=0)
    visitor, _ = await joined_visitor(service)
    headers = admin_headers(service)
    with captured_log() as lines:
        code, answer = await post(service, "publish", {"channel": "room", "event": "test", "payload": {"msg": "hi"}},
                                  headers)
    assert (code, answer) == (200, {"published": True, "nodes": 1})
    frame = await visitor.until(lambda f: fields(f)[3] == "test")
    assert fields(frame) == (None, None, "room", "test", {"msg": "hi"})
    logged = [line for line in lines if "publishes" in line]
    assert "admin operator publishes 12 bytes to channel room, event test" in logged[0]
    assert headers["authorization"].split()[1] not in "".join(lines)
    visitor.close()


@pytest_twisted.ensureDeferred
async def test_disconnect_closes_the_agents_socket_and_is_logged(start_service):
    service = await start_service(datetime_interval=0)
    visitor, agent = await joined_visitor(service)
    with captured_log() as lines:
        code, answer = await post(service, "disconnect", {"agent": agent}, admin_headers(service))
    conn = agent.split(":")[0]
    assert (code, answer) == (200, {"disconnected": conn, "users": ["visitor"]})
    assert await visitor.wait_closed() == 1008
    assert any(f"admin operator disconnects connection {conn} (users ['visitor'])" in line for line in lines)
    assert (await post(service, "disconnect", {"agent": agent}, admin_headers(service)))[0] == 404


@pytest_twisted.ensureDeferred
async def test_actions_need_an_admin_token(start_service, redis_server):
    """No token, or a member's token: 401, nothing published, nobody disconnected."""
    service = await start_service(datetime_interval=0)
    visitor, agent = await joined_visitor(service)
    listener = RedisListener(redis_server.client(), "to:room:*")
    member = {"authorization": "Bearer " + forge_token(service.jwt_secret, "room", "visitor")}
    for headers in ({}, member):
        publish = {"channel": "room", "event": "test", "payload": {}}
        assert (await post(service, "publish", publish, headers))[0] == 401
        assert (await post(service, "disconnect", {"agent": agent}, headers))[0] == 401
    await sleep(0.2)
    assert listener.pending() == []
    assert not visitor.closed.called
    await visitor.reply(visitor.push("room", "still_here", {}))
    listener.close()
    visitor.close()


@pytest_twisted.ensureDeferred
async def test_actions_refuse_bad_requests(start_service):
    """GET is 405; an event with ':' or a missing channel is 422: nothing is published."""
    service = await start_service(datetime_interval=0)
    headers = admin_headers(service)
    response = await treq.get(service.base_url + "/admin/publish", headers=headers)
    assert response.code == 405
    assert (await post(service, "publish", {"channel": "room", "event": "a:b"}, headers))[0] == 422
    assert (await post(service, "publish", {"event": "test"}, headers))[0] == 422


@pytest_twisted.ensureDeferred
async def test_publish_while_redis_is_down_says_so(start_service, own_redis):
    """Redis gone: 503 naming why, not a hung request or a 200."""
    service = await start_service(redis=own_redis, datetime_interval=0)
    own_redis.kill()
    await eventually(lambda: not service.bridge.connected, what="the outage noticed")
    code, answer = await post(service, "publish", {"channel": "room", "event": "test"}, admin_headers(service))
    assert code == 503 and answer["error"].startswith("not published")
