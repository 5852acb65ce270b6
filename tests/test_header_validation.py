"""
Header fields a live ``twistd`` service refuses (PROTOCOL.md 9): lone surrogates, fields
over their caps, pushed events with ``:``. Each is answered with an error reply; the
socket, its neighbours and Redis are unharmed, and the log grows by a line, not a
line per attempt. Malformed presence diffs from Redis cost as little.
"""

from __future__ import annotations

import time

from .live import (
    BINARY,
    TEXT,
    RawSocket,
    event_of,
    payload_of,
    post_token,
    ref_of,
    reply_reason,
    reply_status,
    start_twistd,
    token,
)

SURROGATE = "\ud800"  # json.dumps writes it as the escape \ud800: legal JSON, no Unicode scalar


def binary_push(join_ref: bytes, ref: bytes, topic: bytes, event: bytes, payload: bytes) -> bytes:
    return bytes((0, len(join_ref), len(ref), len(topic), len(event))) + join_ref + ref + topic + event + payload


def refusal(client: RawSocket, ref: str | None) -> str:
    """The reason of the error reply to ``ref`` (None: to the next reply that carries none)."""
    reply = client.until(lambda m: event_of(m) == "phx_reply" and ref_of(m) == ref)
    assert reply_status(reply) == "error", reply
    return reply_reason(reply)


def published_channels(pubsub, until: bytes, timeout: float = 5.0) -> list[bytes]:
    """Channels of the messages on ``pubsub`` up to and including ``until``."""
    seen: list[bytes] = []
    deadline = time.monotonic() + timeout
    while until not in seen:
        assert time.monotonic() < deadline, f"{until!r} not published; saw {seen}"
        message = pubsub.get_message(timeout=0.5)
        if message is not None and message["type"] == "pmessage":
            seen.append(message["channel"])
    return seen


def test_bad_header_fields_are_answered_and_harm_no_one(twistd, flushed_redis):
    service = start_twistd(twistd, "--redis-url", flushed_redis.url, datetime_interval=0)
    pubsub = flushed_redis.client().pubsub()
    pubsub.psubscribe("from:room:*")
    while pubsub.get_message(timeout=1) is None:  # the subscription is confirmed
        pass
    neighbour, v2, v1 = RawSocket(service.port), RawSocket(service.port), RawSocket(service.port, "/websocket?vsn=1.0.0")
    neighbour.join_ok("room", token("room", "neighbour"))
    v2.join_ok("room", token("room", "v2"))
    v1.join_ok("room", token("room", "v1"))

    # a lone surrogate, in either serializer, in an event or a topic
    assert refusal(v2, v2.push("room", SURROGATE, {}, "1")).startswith("event is not valid Unicode")
    assert refusal(v1, v1.push("room", "x" + SURROGATE, {}, "1")).startswith("event is not valid Unicode")
    assert refusal(v2, v2.join(SURROGATE, token(SURROGATE))).startswith("topic is not valid Unicode")
    # over the caps: the reply never echoes the field it refuses
    v2.send_json(["j" * 500_000, "big", "room", "talk", {}])
    reply = v2.until(lambda m: ref_of(m) == "big")
    assert reply[0] is None and reply_reason(reply) == "join_ref is longer than 64 bytes"
    v2.send_json(["1", "r" * 65, "room", "talk", {}])
    assert refusal(v2, None) == "ref is longer than 64 bytes"
    assert refusal(v2, v2.join("t" * 257, token("t" * 257))) == "topic is longer than 256 bytes"
    assert refusal(v2, v2.join("room", token("room", "i" * 129))) == "token id is longer than 128 bytes"
    # binary frames: a ref over its cap, and an event in another topic's namespace
    v2.send_frame(BINARY, binary_push(b"1", b"r" * 65, b"room", b"talk", b"raw"))
    assert refusal(v2, None) == "ref is longer than 64 bytes"
    v2.send_frame(BINARY, binary_push(b"1", b"b1", b"room", b"other:talk", b"raw"))
    assert refusal(v2, "b1") == "event must not contain ':'"
    assert refusal(v1, v1.push("room", "other:talk", {}, "1")) == "event must not contain ':'"

    # every socket lives; Redis got the pushes that were valid and nothing else
    for client in (v2, v1):
        assert reply_status(client.reply(client.push("room", "talk", {"ok": True}, "1"))) == "ok"
    seen = published_channels(pubsub, b"from:room:talk")
    assert set(seen) <= {b"from:room:phx_join", b"from:room:talk"}, seen
    neighbour.send_json([None, "hb", "phoenix", "heartbeat", {}])
    assert reply_status(neighbour.reply("hb")) == "ok"
    assert "Traceback" not in service.log()


def test_token_refuses_what_a_join_would_refuse(twistd, flushed_redis):
    service = start_twistd(twistd, "--redis-url", flushed_redis.url, datetime_interval=0)
    assert post_token(service.port, {"channel": "room" + SURROGATE}) == (
        422, {"error": '"channel" is not valid Unicode (it holds a lone surrogate)'}
    )
    assert post_token(service.port, {"channel": "room", "id": "i" * 129}) == (
        422, {"error": '"id" is longer than 128 bytes'}
    )
    code, body = post_token(service.port, {"channel": "admin:ops"})
    assert code == 403 and body["error"]


KINDS = 4  # of bad frames a client sends in turn, three of them answerable


def test_a_client_provoking_errors_a_thousand_times_costs_a_line_of_log_and_not_its_socket(twistd, flushed_redis):
    service = start_twistd(twistd, "--redis-url", flushed_redis.url, datetime_interval=0)
    client = RawSocket(service.port)
    client.join_ok("room", token("room"))
    logged_before = service.log().splitlines()
    for n in range(1000):
        kind = n % KINDS
        if kind == 0:
            client.send_frame(TEXT, b'["1", "x", "room"')  # not JSON
        elif kind == 1:
            client.send_json(["1", str(n), "room", SURROGATE, {}])
        elif kind == 2:
            client.send_json(["1", str(n) + "r" * 100, "room", "talk", {}])
        else:
            client.send_json(["1", str(n), "room", "a:b", {}])
    client.send_json([None, "hb", "phoenix", "heartbeat", {}])
    replies = []
    while not replies or ref_of(replies[-1]) != "hb":
        replies.append(client.until(lambda m: event_of(m) == "phx_reply", timeout=10))
    assert reply_status(replies[-1]) == "ok"
    errors = [m for m in replies if payload_of(m)["status"] == "error"]
    assert len(errors) == 1000 * (KINDS - 1) // KINDS
    new_lines = service.log().splitlines()[len(logged_before) :]
    assert len(new_lines) <= 2, new_lines
    assert "Traceback" not in service.log()


def test_malformed_presence_diffs_from_redis_cost_a_line_of_log_and_no_message(twistd, flushed_redis):
    """Anyone who can PUBLISH can send them, nested deep enough to exhaust the JSON parser."""
    service = start_twistd(twistd, "--redis-url", flushed_redis.url, datetime_interval=0)
    client = RawSocket(service.port)
    client.join_ok("room", token("room"))
    logged_before = service.log().splitlines()
    redis = flushed_redis.client()
    for _ in range(100):
        redis.publish("to:room:presence_diff", "[" * 100_000 + "]" * 100_000)
        redis.publish("to:room:presence_diff", "not json")
    redis.publish("to:room:news", '{"after": "the diffs"}')
    assert payload_of(client.until(lambda m: event_of(m) == "news")) == {"after": "the diffs"}
    new_lines = service.log().splitlines()[len(logged_before) :]
    assert len(new_lines) <= 1, new_lines


def test_clients_breaking_the_websocket_protocol_in_a_loop_cost_a_couple_of_log_lines(twistd, flushed_redis):
    """Autobahn warns for each such connection; a client reconnecting in a loop must not fill the log."""
    service = start_twistd(twistd, "--redis-url", flushed_redis.url, datetime_interval=0)
    logged_before = service.log().splitlines()
    for n in range(60):
        client = RawSocket(service.port)
        client.send_frame(TEXT if n % 2 else 0x3, b"\xff\xfe")  # bad UTF-8, or a reserved opcode
        assert client.close_code() == (1007 if n % 2 else 1002)
        client.close()
    neighbour = RawSocket(service.port)
    neighbour.send_json([None, "hb", "phoenix", "heartbeat", {}])
    assert reply_status(neighbour.reply("hb")) == "ok"
    new_lines = service.log().splitlines()[len(logged_before) :]
    assert len(new_lines) <= 2, new_lines
