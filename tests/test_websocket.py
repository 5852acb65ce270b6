"""
The WebSocket side and the Redis bridge end to end (PROTOCOL.md sections 1, 3-5 and 7):
the service runs in this reactor on a real port, against a real ``redis-server``, and
is driven by a real WebSocket client and redis-py.
"""

from __future__ import annotations

import base64
import errno
import json
import subprocess
import sys
from urllib.parse import quote

import pytest
import pytest_twisted
import treq
from twisted.internet import threads

from tangram_channel import frames
from tangram_channel.protocol import DirectWriter

from .conftest import RedisServer, free_port
from .e2e import RedisListener, RedisMonitor, captured_log, forge_token
from .fakes import rejected_frames
from .waiting import eventually
from .wsclient import PhoenixTestClient, binary_broadcast, connect, fields

PATHS = ["/websocket", "/socket/websocket", "/websocket/websocket"]


def socket_url(service, path: str = "/websocket", query: str = "") -> str:
    return f"ws://127.0.0.1:{service.port}{path}{query}"


async def join(client: PhoenixTestClient, topic: str, token: str | None, **payload) -> list:
    """Join and return the reply; frames received before it are dropped."""
    ref = client.join(topic, token, **payload)
    return await client.reply(ref)


async def joined_client(service, topic: str, query: str = "", client_id: str = "tester") -> PhoenixTestClient:
    """A client joined to ``topic`` that has also received its ``presence_state``."""
    client = await connect(socket_url(service, query=query))
    reply = await join(client, topic, forge_token(service.jwt_secret, topic, client_id))
    assert fields(reply)[4]["status"] == "ok", reply
    await client.until(lambda f: fields(f)[3] == "presence_state")
    return client


async def next_broadcast(client: PhoenixTestClient):
    """The next frame that is not presence traffic (a broadcast from Redis)."""
    return await client.until(lambda f: isinstance(f, bytes) or fields(f)[3] not in ("presence_diff", "presence_state"))


def error(reason: str) -> dict:
    """A reply payload refusing with ``reason``."""
    return {"status": "error", "response": {"reason": reason}}


OK_EMPTY = {"status": "ok", "response": {}}


def numpat(redis) -> int:
    return redis.execute_command("PUBSUB", "NUMPAT")


# HTTP surface and serializers


@pytest.mark.parametrize("path", PATHS)
@pytest_twisted.ensureDeferred
async def test_socket_served_on_every_path(start_service, path):
    """Tangram's /websocket, Phoenix's /socket/websocket and the seed's /websocket/websocket all speak Phoenix."""
    service = await start_service(datetime_interval=0)
    client = await connect(socket_url(service, path))
    ref = client.push("phoenix", "heartbeat", {})
    assert await client.reply(ref) == [None, ref, "phoenix", "phx_reply", OK_EMPTY]


@pytest_twisted.ensureDeferred
async def test_v2_join_reply_and_presence_state_are_arrays(start_service):
    """Without vsn the frames are V2 arrays; refs are echoed exactly; presence_state follows the reply."""
    service = await start_service(datetime_interval=0)
    client = await connect(socket_url(service))
    token = forge_token(service.jwt_secret, "room", "alice")
    client.send_raw(json.dumps(["j-7", "r-8", "room", "phx_join", {"token": token}]))
    reply = await client.next()
    assert reply[:4] == ["j-7", "r-8", "room", "phx_reply"]
    assert reply[4]["status"] == "ok"
    conn_id, topic, join_ref = reply[4]["response"]["id"].rsplit(":", 2)
    assert (topic, join_ref) == ("room", "j-7") and conn_id
    state = await client.next()
    assert state[:4] == ["j-7", None, "room", "presence_state"]


@pytest_twisted.ensureDeferred
async def test_v1_objects_for_join_reply_and_broadcast(start_service, flushed_redis):
    """?vsn=1.0.0 speaks JSON objects both ways: join, its reply, presence_state and Redis broadcasts."""
    service = await start_service(datetime_interval=0)
    client = await connect(socket_url(service, query="?vsn=1.0.0"))
    ref = client.join("room", forge_token(service.jwt_secret, "room"))
    reply = await client.next()
    assert reply == {
        "topic": "room",
        "event": "phx_reply",
        "payload": {"status": "ok", "response": {"id": reply["payload"]["response"]["id"]}},
        "ref": ref,
        "join_ref": ref,
    }
    state = await client.next()
    assert (state["event"], state["ref"], state["join_ref"]) == ("presence_state", None, ref)
    assert flushed_redis.client().publish("to:room:news", '{"headline": "v1"}') == 1
    assert await next_broadcast(client) == {
        "topic": "room",
        "event": "news",
        "payload": {"headline": "v1"},
        "ref": None,
        "join_ref": None,
    }


@pytest_twisted.ensureDeferred
async def test_unknown_vsn_is_refused_with_http_400(start_service):
    """An unsupported serializer version is refused at the upgrade with a body that says why."""
    service = await start_service(datetime_interval=0)
    response = await treq.get(
        service.base_url + "/websocket?vsn=3.0.0",
        headers={
            "Upgrade": "websocket",
            "Connection": "Upgrade",
            "Sec-WebSocket-Key": base64.b64encode(b"0123456789abcdef").decode(),
            "Sec-WebSocket-Version": "13",
        },
    )
    assert response.code == 400
    body = json.loads(await response.content())
    assert "vsn" in body["error"] and "3.0.0" in body["error"] and "2.0.0" in body["error"]


@pytest_twisted.ensureDeferred
async def test_unparseable_frames_never_drop_the_socket(start_service):
    """Garbage text or binary frames are ignored or answered with an error when they carry a ref; the socket lives."""
    service = await start_service(datetime_interval=0)
    client = await connect(socket_url(service))
    client.send_raw("not json at all")
    client.send_raw(b"\x07\x01", binary=True)
    client.send_raw(json.dumps(["j", "r", "room"]))
    client.send_raw(json.dumps([1, "r-5", "room", "say", {}]))
    assert await client.next() == ["j", "r", "room", "phx_reply", error("a 2.0.0 frame must be an array of 5 elements")]
    assert await client.next() == [None, "r-5", "room", "phx_reply", error("join_ref must be a string or null")]
    beat = client.push("phoenix", "heartbeat", {})
    assert await client.next() == [None, beat, "phoenix", "phx_reply", OK_EMPTY]
    assert rejected_frames(service.channel.factory.metrics) == 4


# binary frames


@pytest_twisted.ensureDeferred
async def test_binary_push_publishes_raw_bytes(start_service, flushed_redis):
    """A binary (kind 0) push is published byte for byte to from:<topic>:<event> and answered ok."""
    service = await start_service(datetime_interval=0)
    client = await joined_client(service, "feed")
    listener = RedisListener(flushed_redis.client())
    raw = b"\x00\xffARROW1\x00not json \xc3"
    ref = client.push_binary("feed", "upload", raw, join_ref="1")
    assert fields(await client.reply(ref))[4] == OK_EMPTY
    assert await listener.until(b"from:feed:upload") == raw


@pytest.mark.parametrize(
    "payload",
    [b"Hello from plugin", b'"a bare string"', b"42", b"\xff\x00ARROW1", b'{"not": "utf-8 \xff"}', b"{broken"],
)
@pytest_twisted.ensureDeferred
async def test_non_json_document_from_redis_arrives_as_binary_broadcast(start_service, flushed_redis, payload):
    """Anything but a JSON object/array in valid UTF-8 goes out as a kind-2 binary frame with the raw bytes."""
    service = await start_service(datetime_interval=0)
    client = await joined_client(service, "feed")
    assert flushed_redis.client().publish("to:feed:blob", payload) == 1
    frame = await next_broadcast(client)
    assert frame == binary_broadcast("feed", "blob", payload)
    assert client.raw[-1] == (frame, True)


@pytest.mark.parametrize("payload", [b'{"a": 1, "b": [true, null]}', b"[1, 2.5, \"\xc3\xa9\"]", b' \n{"x":{}}'])
@pytest_twisted.ensureDeferred
async def test_json_document_from_redis_arrives_as_text_frame_with_payload_bytes_kept(
    start_service, flushed_redis, payload
):
    """A JSON object or array becomes the text frame [null, null, topic, event, payload], payload bytes as sent."""
    service = await start_service(datetime_interval=0)
    client = await joined_client(service, "feed")
    flushed_redis.client().publish("to:feed:doc", payload)
    frame = await next_broadcast(client)
    assert frame == [None, None, "feed", "doc", json.loads(payload)]
    assert client.raw[-1] == (b'[null,null,"feed","doc",' + payload + b"]", False)


# heartbeat


@pytest_twisted.ensureDeferred
async def test_heartbeat_without_any_join_replies_and_publishes(start_service, flushed_redis):
    """A heartbeat needs no join: it is answered ok {} and published to from:phoenix:heartbeat."""
    service = await start_service(datetime_interval=0)
    listener = RedisListener(flushed_redis.client())
    client = await connect(socket_url(service))
    ref = client.push("phoenix", "heartbeat", {"beat": 1})
    assert await client.reply(ref) == [None, ref, "phoenix", "phx_reply", OK_EMPTY]
    assert await listener.until(b"from:phoenix:heartbeat") == b'{"beat":1}'


# join and its token checks


REFUSED_TOKENS = {
    "hs512 with the right secret": dict(algorithm="HS512"),
    "alg none": dict(algorithm="none"),
    "signed with another secret": dict(secret="some-other-secret-that-is-long-enough"),
    "expired beyond the leeway": dict(expires_in=-120, reason="token expired"),
    "no exp claim": dict(expires_in=None),
    "claim names another channel": dict(channel="elsewhere"),
    "id claim not a string": dict(id=42),
    "not a jwt": dict(raw="not-a-token"),
    "no token at all": dict(raw=None),
}


def refused_token(service, topic: str, case: dict) -> str | None:
    if "raw" in case:
        return case["raw"]
    claims = {"id": case["id"]} if "id" in case else {}
    return forge_token(
        case.get("secret", service.jwt_secret),
        case.get("channel", topic),
        expires_in=case.get("expires_in", 3600),
        algorithm=case.get("algorithm", "HS256"),
        **claims,
    )


@pytest.mark.parametrize("case", REFUSED_TOKENS.values(), ids=REFUSED_TOKENS.keys())
@pytest_twisted.ensureDeferred
async def test_refused_join_replies_error_and_socket_stays_usable(start_service, case):
    """Each bad token gets an error reply (not silence) and the same socket then joins with a good one."""
    service = await start_service(datetime_interval=0)
    client = await connect(socket_url(service))
    ref = client.join("room", refused_token(service, "room", case))
    reply = await client.reply(ref)
    assert reply == [ref, ref, "room", "phx_reply", error(case.get("reason", "unauthorized"))]
    good = await join(client, "room", forge_token(service.jwt_secret, "room"))
    assert good[4]["status"] == "ok"
    assert not client.closed.called


@pytest_twisted.ensureDeferred
async def test_expired_token_within_leeway_is_accepted(start_service):
    """A token expired for less than jwt_leeway_secs (60 by default) still joins."""
    service = await start_service(datetime_interval=0)
    client = await connect(socket_url(service))
    reply = await join(client, "room", forge_token(service.jwt_secret, "room", expires_in=-30))
    assert reply[4]["status"] == "ok"


@pytest_twisted.ensureDeferred
async def test_join_without_join_ref_is_refused(start_service):
    """A join needs a join_ref to be answerable later; without one it is refused with a reason."""
    service = await start_service(datetime_interval=0)
    client = await connect(socket_url(service))
    client.send_raw(json.dumps([None, "1", "room", "phx_join", {"token": forge_token(service.jwt_secret, "room")}]))
    assert await client.reply("1") == [None, "1", "room", "phx_reply", error("join_ref required")]


@pytest_twisted.ensureDeferred
async def test_user_token_query_is_the_fallback_for_joins_without_token(start_service):
    """?userToken= admits joins whose payload has no token; a token in the payload still wins."""
    service = await start_service(datetime_interval=0)
    user_token = forge_token(service.jwt_secret, "room")
    client = await connect(socket_url(service, query=f"?vsn=2.0.0&userToken={user_token}"))
    wrong = await join(client, "room", forge_token(service.jwt_secret, "elsewhere"))
    assert wrong[4] == error("unauthorized")
    assert (await join(client, "room", None))[4]["status"] == "ok"


@pytest_twisted.ensureDeferred
async def test_phoenix_1_8_subprotocol_token(start_service):
    """A token offered as subprotocol base64url.bearer.phx.<b64> admits joins; the server picks 'phoenix'."""
    service = await start_service(datetime_interval=0)
    token = forge_token(service.jwt_secret, "room")
    encoded = base64.urlsafe_b64encode(token.encode()).decode().rstrip("=")
    client = await connect(socket_url(service), protocols=["phoenix", f"base64url.bearer.phx.{encoded}"])
    assert client.response.protocol == "phoenix"
    assert (await join(client, "room", None))[4]["status"] == "ok"
    assert (await join(client, "other", None))[4] == error("unauthorized")


# leave, rejoin, unmatched topics


@pytest_twisted.ensureDeferred
async def test_leave_replies_with_agent_id_then_phx_close_and_publishes(start_service, flushed_redis):
    """phx_leave: ok {"id": agent} then [jr, jr, topic, phx_close, {}], published to from:<topic>:phx_leave."""
    service = await start_service(datetime_interval=0)
    client = await connect(socket_url(service))
    joined = await join(client, "room", forge_token(service.jwt_secret, "room"), join_ref="J")
    agent = joined[4]["response"]["id"]
    listener = RedisListener(flushed_redis.client())
    ref = client.push("room", "phx_leave", {}, join_ref="J")
    assert await client.reply(ref) == ["J", ref, "room", "phx_reply", {"status": "ok", "response": {"id": agent}}]
    assert await client.until(lambda f: f[3] != "presence_diff") == ["J", "J", "room", "phx_close", {}]
    assert await listener.until(b"from:room:phx_leave") == b"{}"
    again = client.push("room", "phx_leave", {}, join_ref="J")
    assert await client.until(lambda f: f[3] != "presence_diff") == [
        "J", again, "room", "phx_reply", OK_EMPTY
    ]


@pytest_twisted.ensureDeferred
async def test_second_join_of_a_topic_closes_the_first(start_service):
    """Rejoining a joined topic first closes the old join with its join_ref, then answers the new one."""
    service = await start_service(datetime_interval=0)
    client = await connect(socket_url(service))
    token = forge_token(service.jwt_secret, "room")
    await join(client, "room", token, join_ref="old")
    ref = client.join("room", token, join_ref="new")
    not_presence = lambda f: f[3] not in ("presence_diff", "presence_state")  # noqa: E731
    assert await client.until(not_presence) == ["old", "old", "room", "phx_close", {}]
    reply = await client.until(not_presence)
    assert reply[:4] == ["new", ref, "room", "phx_reply"]
    assert reply[4]["status"] == "ok" and reply[4]["response"]["id"].endswith(":room:new")
    assert len(service.hub.members["room"]) == 1


@pytest_twisted.ensureDeferred
async def test_push_to_topic_not_joined_is_unmatched_and_not_published(start_service, flushed_redis):
    """An event on a topic this socket has not joined is answered 'unmatched topic' and never reaches Redis."""
    service = await start_service(datetime_interval=0)
    listener = RedisListener(flushed_redis.client())
    client = await connect(socket_url(service))
    ref = client.push("room", "say", {"text": "hi"}, join_ref="1")
    assert await client.reply(ref) == [None, ref, "room", "phx_reply", error("unmatched topic")]
    beat = client.push("phoenix", "heartbeat", {})
    await client.reply(beat)
    assert await listener.next() == (b"from:phoenix:heartbeat", b"{}")


# pushes to Redis


@pytest_twisted.ensureDeferred
async def test_push_is_answered_ok_only_after_redis_acknowledged(start_service, own_redis):
    """While Redis is paused a push waits for its acknowledgement; a later heartbeat is answered first."""
    service = await start_service(redis=own_redis, datetime_interval=0)
    client = await joined_client(service, "room")
    listener = RedisListener(own_redis.client())
    own_redis.client().execute_command("CLIENT", "PAUSE", 500, "ALL")
    push = client.push("room", "say", {"text": "hi"}, join_ref="1")
    beat = client.push("phoenix", "heartbeat", {})
    replies = [await client.until(lambda f: f[3] == "phx_reply") for _ in range(2)]
    assert [r[1] for r in replies] == [beat, push]
    assert replies[1][4] == OK_EMPTY
    assert await listener.next() == (b"from:room:say", b'{"text":"hi"}')


@pytest_twisted.ensureDeferred
async def test_push_while_redis_is_down_replies_redis_unavailable(start_service, own_redis):
    """With Redis gone, a push is answered error 'redis unavailable' and the socket stays open and usable."""
    service = await start_service(redis=own_redis, datetime_interval=0)
    client = await joined_client(service, "room")
    own_redis.kill()
    for _ in range(2):  # before and after the service noticed the outage
        ref = client.push("room", "say", {}, join_ref="1")
        assert await client.reply(ref) == ["1", ref, "room", "phx_reply", error("redis unavailable")]
        await eventually(lambda: not service.bridge.connected, what="the bridge to notice")
    beat = client.push("phoenix", "heartbeat", {})
    assert (await client.reply(beat))[4] == OK_EMPTY
    assert not client.closed.called


LOSSLESS_PAYLOAD = (
    '{"message":"kept","request_id":"r-1","zeta":1,"alpha":{"nested":[1,{"b":null,"a":true}],"empty":{}},'
    '"big":123456789012345678901234567890123,"negative":-18446744073709551617,"text":"été 東京 😀 \\u0000 \\"q\\""}'
)


@pytest_twisted.ensureDeferred
async def test_push_payload_is_published_without_loss(start_service, flushed_redis):
    """Key order, integers beyond 64 bits, unicode, escapes and nesting reach Redis exactly as sent."""
    service = await start_service(datetime_interval=0)
    client = await joined_client(service, "room")
    listener = RedisListener(flushed_redis.client())
    client.send_raw(f'["1","p","room","say",{LOSSLESS_PAYLOAD}]')
    assert (await client.reply("p"))[4]["status"] == "ok"
    assert await listener.until(b"from:room:say") == LOSSLESS_PAYLOAD.encode()


@pytest_twisted.ensureDeferred
async def test_join_payload_is_published_without_its_token(start_service, flushed_redis):
    """from:<topic>:phx_join carries the join payload minus the token."""
    service = await start_service(datetime_interval=0)
    listener = RedisListener(flushed_redis.client())
    client = await connect(socket_url(service))
    await join(client, "room", forge_token(service.jwt_secret, "room"), name="alice", n=1)
    assert await listener.until(b"from:room:phx_join") == b'{"name":"alice","n":1}'


# tokens never leave the socket


@pytest_twisted.ensureDeferred
async def test_tokens_never_reach_redis_or_the_log(start_service, own_redis):
    """Joins by payload token, userToken and subprotocol, good and bad: no token in any Redis command or log line."""
    service = await start_service(redis=own_redis, datetime_interval=0)
    redis = own_redis.client()
    tokens = [forge_token(service.jwt_secret, "secret-room", f"user{i}") for i in range(3)]
    bad = forge_token("not-the-secret-at-all-but-long-enough", "secret-room")
    monitor = RedisMonitor(own_redis.port)
    with captured_log() as log:
        client = await connect(socket_url(service))
        assert (await join(client, "secret-room", bad))[4]["status"] == "error"
        assert (await join(client, "secret-room", tokens[0], note="x"))[4]["status"] == "ok"
        by_query = await connect(socket_url(service, query=f"?userToken={tokens[1]}"))
        assert (await join(by_query, "secret-room", None))[4]["status"] == "ok"
        encoded = base64.urlsafe_b64encode(tokens[2].encode()).decode().rstrip("=")
        by_protocol = await connect(socket_url(service), protocols=["phoenix", f"base64url.bearer.phx.{encoded}"])
        assert (await join(by_protocol, "secret-room", None))[4]["status"] == "ok"
        client.send_raw(f'["1","2","secret-room","say",{{"token":"{tokens[0]}"')  # truncated: logged as rejected
        # a socket's frames are handled in order: once the heartbeat is answered, the rejection was logged
        await client.reply(client.push("phoenix", "heartbeat", {}))
        by_query.close()
        await by_query.wait_closed()
        await monitor.sync(redis)
    monitor.close()
    assert b"from:secret-room:phx_join" in monitor.seen  # the monitor saw the joins
    assert any("rejected a frame" in line for line in log)  # and the log is captured
    for token in [*tokens, bad]:
        signature = token.rsplit(".", 1)[1]
        assert signature.encode() not in monitor.seen
        assert not [line for line in log if signature in line]


# the Redis bridge


@pytest_twisted.ensureDeferred
async def test_one_subscriber_and_one_command_connection_per_process(start_service, own_redis):
    """However many sockets and channels, the service holds two Redis connections: one subscribing, one commanding."""
    service = await start_service(redis=own_redis, datetime_interval=0)
    redis = own_redis.client(client_name="test")
    clients = []
    for i in range(3):
        client = await connect(socket_url(service))
        for topic in ("alpha", "beta"):
            assert (await join(client, topic, forge_token(service.jwt_secret, topic, f"u{i}")))[4]["status"] == "ok"
        clients.append(client)
    ref = clients[0].push("alpha", "say", {}, join_ref=None)
    await clients[0].reply(ref)
    service_connections = [c for c in redis.client_list() if c["name"] != "test"]
    assert len(service_connections) == 2
    subscriber = [c for c in service_connections if "P" in c["flags"]]
    assert len(subscriber) == 1
    assert subscriber[0]["psub"] == "4"  # system, admin, alpha, beta


@pytest_twisted.ensureDeferred
async def test_subscribed_only_to_channels_with_members_here(start_service, own_redis):
    """PSUBSCRIBE covers system and admin plus topics with members here, and is dropped when a channel empties."""
    service = await start_service(redis=own_redis, datetime_interval=0)
    redis = own_redis.client()
    await eventually(lambda: numpat(redis) == 2, what="system and admin to be subscribed")
    assert sorted(service.bridge.watched_topics) == ["admin", "system"]
    first = await joined_client(service, "alpha", client_id="a")
    second = await joined_client(service, "alpha", client_id="b")
    assert numpat(redis) == 3
    ref = first.push("alpha", "phx_leave", {}, join_ref="1")
    await first.reply(ref)
    await first.until(lambda f: f[3] == "phx_close")
    assert numpat(redis) == 3
    assert sorted(service.bridge.watched_topics) == ["admin", "alpha", "system"]
    second.close()
    await second.wait_closed()
    await eventually(lambda: numpat(redis) == 2, what="alpha to be unsubscribed after its last member left")
    assert redis.publish("to:alpha:x", "{}") == 0
    assert sorted(service.bridge.watched_topics) == ["admin", "system"]


@pytest.mark.parametrize("topic,other", [("a*", "abc"), ("q?", "qx"), ("s[ab]", "sa"), ("back\\slash", "backslash")])
@pytest_twisted.ensureDeferred
async def test_glob_characters_in_topics_are_escaped(start_service, flushed_redis, topic, other):
    """A member of a topic with glob characters gets its own messages, not those of topics the glob would match."""
    service = await start_service(datetime_interval=0)
    client = await joined_client(service, topic)
    redis = flushed_redis.client()
    assert redis.publish(f"to:{other}:x", '{"n":"other"}') == 0
    assert redis.publish(f"to:{topic}:x", '{"n":"own"}') == 1
    assert await next_broadcast(client) == [None, None, topic, "x", {"n": "own"}]


@pytest_twisted.ensureDeferred
async def test_redis_channel_is_split_at_its_last_colon(start_service, flushed_redis):
    """to:datalink:feed:message goes to datalink:feed only, once, even to a socket that also joined datalink."""
    service = await start_service(datetime_interval=0)
    both = await joined_client(service, "datalink:feed")
    assert (await join(both, "datalink", forge_token(service.jwt_secret, "datalink")))[4]["status"] == "ok"
    parent_only = await joined_client(service, "datalink")
    redis = flushed_redis.client()
    redis.publish("to:datalink:feed:message", '{"n":1}')
    redis.publish("to:datalink:sentinel", '{"n":2}')
    assert await next_broadcast(both) == [None, None, "datalink:feed", "message", {"n": 1}]
    assert await next_broadcast(both) == [None, None, "datalink", "sentinel", {"n": 2}]
    assert await next_broadcast(parent_only) == [None, None, "datalink", "sentinel", {"n": 2}]


@pytest_twisted.ensureDeferred
async def test_redis_message_reaches_each_member_once_with_identical_bytes(start_service, flushed_redis, monkeypatch):
    """One Redis message is encoded once and the same frame bytes reach every member, exactly once each."""
    encodings = []
    splice_parts = frames.splice_parts

    def counted(join_ref, topic, event, payload, vsn):
        encodings.append((event, vsn))
        return splice_parts(join_ref, topic, event, payload, vsn)

    monkeypatch.setattr(frames, "splice_parts", counted)
    service = await start_service(datetime_interval=0)
    members = [await joined_client(service, "fan", client_id=f"m{i}") for i in range(4)]
    payload = '{"b": 2, "a": [1, 2.50, "é"], "big": 340282366920938463463374607431768211457}'
    flushed_redis.client().publish("to:fan:update", payload)
    flushed_redis.client().publish("to:fan:sentinel", "{}")
    expected = b'[null,null,"fan","update",' + payload.encode() + b"]"
    for member in members:
        await member.until(lambda f: fields(f)[3] == "sentinel")
        updates = [raw for raw, binary in member.raw if b'"update"' in raw]
        assert updates == [expected]
    assert encodings.count(("update", frames.V2)) == 1


@pytest_twisted.ensureDeferred
async def test_broadcasts_keep_redis_order_per_channel(start_service, flushed_redis):
    """Messages published in a row reach a member in the order Redis delivered them."""
    service = await start_service(datetime_interval=0)
    client = await joined_client(service, "ordered")
    redis = flushed_redis.client()
    for n in range(50):
        redis.publish("to:ordered:n", json.dumps({"n": n}) if n % 2 else str(n))
    got = [await next_broadcast(client) for _ in range(50)]
    assert got == [
        [None, None, "ordered", "n", {"n": n}] if n % 2 else binary_broadcast("ordered", "n", str(n).encode())
        for n in range(50)
    ]


@pytest_twisted.ensureDeferred
async def test_members_on_each_serializer_get_their_own_framing_from_one_fanout(start_service, flushed_redis):
    """
    The sockets of one channel are written to together, grouped by serializer: objects
    for 1.0.0, arrays for 2.0.0, the same binary frame for both, every member once.
    """
    service = await start_service(datetime_interval=0, batched_writes=True)
    v1 = [await joined_client(service, "mixed", query="?vsn=1.0.0", client_id=f"v1-{i}") for i in range(2)]
    v2 = [await joined_client(service, "mixed", client_id=f"v2-{i}") for i in range(2)]
    calls = []
    sender = service.hub.fanout.sender
    assert sender is not None, "Linux AIO is expected on the machines the tests run on"
    send = sender.send
    sender.send = lambda fds, data: (calls.append(len(fds)), send(fds, data))[1]
    redis = flushed_redis.client()
    redis.publish("to:mixed:news", '{"n": 1}')
    redis.publish("to:mixed:raw", "not json")
    for client in v1:
        assert await next_broadcast(client) == {
            "topic": "mixed", "event": "news", "payload": {"n": 1}, "ref": None, "join_ref": None
        }
        assert await next_broadcast(client) == binary_broadcast("mixed", "raw", b"not json")
    for client in v2:
        assert await next_broadcast(client) == [None, None, "mixed", "news", {"n": 1}]
        assert await next_broadcast(client) == binary_broadcast("mixed", "raw", b"not json")
    assert calls and set(calls) == {2}, calls


@pytest_twisted.ensureDeferred
async def test_redis_url_with_user_password_and_database(start_service, redis_binary):
    """redis://user:pass@host:port/db authenticates with an ACL user (password URL-decoded) and selects the db."""
    password = "p@ss:w/rd%"
    acl = ("--user", "default", "off", "--user", "bridge", "on", f">{password}", "~*", "&*", "+@all")
    server = RedisServer(redis_binary, free_port(), acl)
    server.start()
    try:
        url = f"redis://bridge:{quote(password, safe='')}@127.0.0.1:{server.port}/3"
        service = await start_service(redis_url=url, datetime_interval=0)
        client = await joined_client(service, "room")
        redis = server.client(username="bridge", password=password)
        assert redis.publish("to:room:x", "{}") == 1
        assert fields(await next_broadcast(client))[3] == "x"
        assert server.client(username="bridge", password=password, db=3).keys("*room*")
        assert not redis.keys("*room*")  # nothing in db 0
    finally:
        server.kill()


@pytest_twisted.ensureDeferred
async def test_redis_url_unix_socket(start_service, redis_binary, tmp_path):
    """unix:///path reaches a Redis listening on a Unix socket only."""
    path = tmp_path / "redis.sock"
    server = RedisServer(redis_binary, free_port(), ("--unixsocket", str(path), "--unixsocketperm", "700"))
    server.start()
    try:
        service = await start_service(redis_url=f"unix://{path}", datetime_interval=0)
        client = await joined_client(service, "room")
        redis = server.client()
        # Redis cuts a long socket path short in CLIENT LIST (as under pytest-xdist's tmp_path)
        on_socket = [c for c in redis.client_list() if c["laddr"].startswith("/") and str(path).startswith(c["laddr"])]
        assert len(on_socket) == 2
        assert redis.publish("to:room:x", "{}") == 1
        assert fields(await next_broadcast(client))[3] == "x"
    finally:
        server.kill()


async def members_with_counted_writes(
    service, topic: str, count: int, monkeypatch: pytest.MonkeyPatch
) -> tuple[list[PhoenixTestClient], list[bytes]]:
    """
    ``count`` clients joined to ``topic``, and the list that every write of a broadcast
    to a socket appends to: one per socket of each ``io_submit``, and each direct send.
    """
    clients = [await joined_client(service, topic, client_id=f"c{i}") for i in range(count)]
    writes: list[bytes] = []
    sender = service.hub.fanout.sender
    if sender is not None:  # else (batched_writes off) every write is a write_now
        send = sender.send
        sender.send = lambda fds, data: (writes.extend([data] * len(fds)), send(fds, data))[1]
    writers = {proto.direct for proto in service.channel.factory.sockets}
    write_now = DirectWriter.write_now

    def counted(writer: DirectWriter, frame: bytes, tail: bytes = b"") -> None:
        if writer in writers:
            writes.append(frame)
        write_now(writer, frame, tail)

    monkeypatch.setattr(DirectWriter, "write_now", counted)
    return clients, writes


@pytest_twisted.ensureDeferred
async def test_a_burst_from_redis_reaches_every_member_in_order_in_few_writes(start_service, flushed_redis, monkeypatch):
    """
    Messages that arrive in one read of the subscriber (a pipelined burst) are written to
    each member together: each member still gets all of them, in Redis's order.
    """
    service = await start_service(datetime_interval=0)
    clients, writes = await members_with_counted_writes(service, "burst", 3, monkeypatch)
    pipe = flushed_redis.client().pipeline(transaction=False)
    for n in range(200):
        pipe.publish("to:burst:n", json.dumps({"n": n}))
    pipe.execute()
    for client in clients:
        received = [(await next_broadcast(client))[4]["n"] for _ in range(200)]
        assert received == list(range(200))
    # a burst is written together: far fewer socket writes than deliveries (600)
    assert 0 < len(writes) < 300, len(writes)


@pytest.mark.parametrize("batched_writes", [True, False])
@pytest_twisted.ensureDeferred
async def test_a_broadcast_reaches_members_on_both_serializers_with_batched_writes_on_and_off(
    start_service, flushed_redis, batched_writes
):
    service = await start_service(datetime_interval=0, batched_writes=batched_writes)
    assert (service.hub.fanout.sender is not None) is batched_writes
    clients = [
        await joined_client(service, "both", query="?vsn=1.0.0" if i % 2 else "", client_id=f"c{i}") for i in range(6)
    ]
    pipe = flushed_redis.client().pipeline(transaction=False)
    for n in range(50):
        pipe.publish("to:both:n", json.dumps({"n": n}))
    pipe.execute()
    for i, client in enumerate(clients):
        received = [await next_broadcast(client) for _ in range(50)]
        numbers = [m["payload"]["n"] if i % 2 else m[4]["n"] for m in received]
        assert numbers == list(range(50))


@pytest_twisted.ensureDeferred
async def test_linux_aio_failing_in_use_drops_only_the_sockets_it_may_have_written_and_is_given_up(
    start_service, flushed_redis
):
    """
    io_getevents refusing mid-broadcast: those members' streams are in an unknown state,
    so they are dropped (phoenix.js reconnects); the subscriber, other channels and later
    broadcasts go on, written one socket at a time.
    """
    service = await start_service(datetime_interval=0, batched_writes=True)
    fanout = service.hub.fanout
    hit = [await joined_client(service, "hit", client_id=f"h{i}") for i in range(3)]
    spared = await joined_client(service, "spared")
    sender = fanout.sender

    def getevents_fails(count: int) -> int:
        raise OSError(errno.EINVAL, "io_getevents: Invalid argument")

    sender._ring = None  # as on a kernel whose ring is not read: the completions come from io_getevents
    sender._io_getevents = getevents_fails
    redis = flushed_redis.client()
    redis.publish("to:hit:n", "{}")
    for client in hit:
        await client.closed
    await eventually(lambda: fanout.sender is None, what="the sender given up")
    redis.publish("to:spared:n", '{"after": true}')
    assert (await next_broadcast(spared))[4] == {"after": True}
    late = await joined_client(service, "hit", client_id="late")
    redis.publish("to:hit:n", '{"late": true}')
    assert (await next_broadcast(late))[4] == {"late": True}


@pytest_twisted.ensureDeferred
async def test_a_busy_channel_pairs_messages_into_fewer_writes_in_order(start_service, flushed_redis, monkeypatch):
    """
    A plugin publishing every millisecond, each message in its own read: with the
    default write_delay (3 ms) lone messages wait for the next, so the members get
    everything, in order, in fewer writes than messages.
    """
    service = await start_service(datetime_interval=0)
    clients, writes = await members_with_counted_writes(service, "busy", 2, monkeypatch)
    # another process, so that the publishing pace does not depend on this reactor
    publisher = (
        "import sys, time, redis\n"
        "r = redis.Redis.from_url(sys.argv[1])\n"
        "for n in range(100):\n"
        "    r.publish('to:busy:n', '{\"n\": %d}' % n)\n"
        "    time.sleep(0.001)\n"
    )
    done = threads.deferToThread(subprocess.run, [sys.executable, "-c", publisher, flushed_redis.url], check=True)
    for client in clients:
        received = [(await next_broadcast(client))[4]["n"] for _ in range(100)]
        assert received == list(range(100))
    await done
    assert 0 < len(writes) < 200, len(writes)
