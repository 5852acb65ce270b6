"""The Phoenix codec on bytes alone: text and binary frames, errors, broadcasts, lossless JSON."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tangram_channel import frames
from tangram_channel.frames import V1, V2, Broadcast, FrameError, Message


def from_redis(topic: str, event: str, payload: bytes) -> Broadcast:
    """A message from Redis as the hub makes it: text when its payload is a JSON document."""
    return Broadcast(topic, event, payload, frames.is_json_document(payload))


def binary_push(join_ref: bytes, ref: bytes, topic: bytes, event: bytes, payload: bytes) -> bytes:
    """A client's binary push, laid out as phoenix.js does."""
    return bytes((0, len(join_ref), len(ref), len(topic), len(event))) + join_ref + ref + topic + event + payload


# text frames


def test_v2_array_decodes_to_a_message() -> None:
    message = frames.decode_text(b'["1","2","room:lobby","new_msg",{"body":"hi"}]', V2)
    assert message == Message("1", "2", "room:lobby", "new_msg", {"body": "hi"})


def test_v2_null_refs_are_allowed() -> None:
    assert frames.decode_text(b'[null,null,"phoenix","heartbeat",{}]', V2) == Message(
        None, None, "phoenix", "heartbeat", {}
    )


def test_v1_object_decodes_to_a_message_and_join_ref_is_optional() -> None:
    data = b'{"topic":"room","event":"ping","payload":[1,2],"ref":"7"}'
    assert frames.decode_text(data, V1) == Message(None, "7", "room", "ping", [1, 2])


@pytest.mark.parametrize("join_ref, ref", [("1", "2"), ("007", "0x1f"), ("", " "), (None, "ünï"), ("9" * 40, None)])
@pytest.mark.parametrize("vsn", [V1, V2])
def test_refs_are_echoed_exactly(vsn: str, join_ref: str | None, ref: str | None) -> None:
    """Whatever strings the client used as refs come back byte for byte in the reply."""
    incoming = Message(join_ref, ref, "room", "ping", {})
    decoded = frames.decode_text(frames.encode(incoming, vsn), vsn)
    answer = frames.reply(decoded.join_ref, decoded.ref, decoded.topic, "ok", {})
    echoed = frames.decode_text(frames.encode(answer, vsn), vsn)
    assert (echoed.join_ref, echoed.ref) == (join_ref, ref)


def test_v2_encoding_is_the_phoenix_array() -> None:
    message = frames.reply("1", "2", "room", "ok", {"id": "x"})
    assert frames.encode(message, V2) == b'["1","2","room","phx_reply",{"status":"ok","response":{"id":"x"}}]'


def test_v1_encoding_is_the_phoenix_object() -> None:
    encoded = json.loads(frames.encode(Message("1", "2", "room", "ev", {"a": 1}), V1))
    assert encoded == {"topic": "room", "event": "ev", "payload": {"a": 1}, "ref": "2", "join_ref": "1"}


# malformed text frames: (frame, vsn, expected join_ref, ref, topic on the error)
MALFORMED = [
    pytest.param(b'["1","2","room","ev"]', V2, "1", "2", "room", id="v2-four-elements"),
    pytest.param(b'["1","2","room","ev",{},6]', V2, "1", "2", "room", id="v2-six-elements"),
    pytest.param(b'[null,"2"]', V2, None, "2", None, id="v2-two-elements"),
    pytest.param(b"[]", V2, None, None, None, id="v2-empty-array"),
    pytest.param(b'{"a":1}', V2, None, None, None, id="v2-object"),
    pytest.param(b'"text"', V2, None, None, None, id="v2-string"),
    pytest.param(b'["1",2,"room","ev",{}]', V2, "1", None, "room", id="v2-ref-number"),
    pytest.param(b'[1,"2","room","ev",{}]', V2, None, "2", "room", id="v2-join-ref-number"),
    pytest.param(b'["1","2",null,"ev",{}]', V2, "1", "2", None, id="v2-topic-null"),
    pytest.param(b'["1","2","","ev",{}]', V2, "1", "2", None, id="v2-topic-empty"),
    pytest.param(b'["1","2",["room"],"ev",{}]', V2, "1", "2", None, id="v2-topic-array"),
    pytest.param(b'["1","2","room",null,{}]', V2, "1", "2", "room", id="v2-event-null"),
    pytest.param(b'["1","2","room",5,{}]', V2, "1", "2", "room", id="v2-event-number"),
    pytest.param(b'["1","2","room","",{}]', V2, "1", "2", "room", id="v2-event-empty"),
    pytest.param(b"not json", V2, None, None, None, id="non-json"),
    pytest.param(b"", V2, None, None, None, id="empty"),
    pytest.param(b'["1","2","room","ev",NaN]', V2, None, None, None, id="nan"),
    pytest.param(b'["1","2","room","ev",Infinity]', V2, None, None, None, id="infinity"),
    pytest.param(b'["1","2","room","ev",-Infinity]', V2, None, None, None, id="minus-infinity"),
    pytest.param(b'["1","2","room","ev",1e400]', V2, None, None, None, id="float-overflow"),
    pytest.param(b"[" * 100_000 + b"]" * 100_000, V2, None, None, None, id="deep-nesting"),
    pytest.param(b'["1","2","room","ev","\xff\xfe"]', V2, None, None, None, id="invalid-utf8"),
    pytest.param(b'["1","2","room","ev",{}]', V1, None, None, None, id="v1-array"),
    pytest.param(b'{"topic":"room","ref":"2","join_ref":"1"}', V1, "1", "2", "room", id="v1-missing-event"),
    pytest.param(b'{"topic":"room","event":"ev","payload":{},"ref":3}', V1, None, None, "room", id="v1-ref-number"),
    pytest.param(b'{"topic":null,"event":"ev","payload":{},"ref":"2"}', V1, None, "2", None, id="v1-topic-null"),
]


@pytest.mark.parametrize("data, vsn, join_ref, ref, topic", MALFORMED)
def test_malformed_text_frame_is_a_frame_error_with_usable_headers(
    data: bytes, vsn: str, join_ref: str | None, ref: str | None, topic: str | None
) -> None:
    """Never another exception; the header fields that were usable are kept for the error reply."""
    with pytest.raises(FrameError) as caught:
        frames.decode_text(data, vsn)
    error = caught.value
    assert error.reason
    assert (error.join_ref, error.ref, error.topic) == (join_ref, ref, topic)


# header fields: Unicode scalar strings within caps (PROTOCOL 9)

SURROGATE = "\ud800"  # legal in a JSON \u escape, impossible in UTF-8


def text_frame(vsn: str, join_ref: object, ref: object, topic: object, event: object) -> bytes:
    """A text frame with any header, as a client could send it (ensure_ascii escapes surrogates)."""
    if vsn == V1:
        return json.dumps({"topic": topic, "event": event, "payload": {}, "ref": ref, "join_ref": join_ref}).encode()
    return json.dumps([join_ref, ref, topic, event, {}]).encode()


@pytest.mark.parametrize("vsn", [V1, V2])
@pytest.mark.parametrize(
    "join_ref, ref, topic, event, reason, echoed",
    [
        pytest.param("1", "2", "room", SURROGATE, "event is not valid Unicode", ("1", "2", "room"), id="event-surrogate"),
        pytest.param("1", "2", "a" + SURROGATE, "ev", "topic is not valid Unicode", ("1", "2", None), id="topic-surrogate"),
        pytest.param("1", SURROGATE, "room", "ev", "ref is not valid Unicode", ("1", None, "room"), id="ref-surrogate"),
        pytest.param("\udc00" + SURROGATE, "2", "room", "ev", "join_ref is not valid Unicode", (None, "2", "room"),
                     id="join-ref-reversed-pair"),
        pytest.param("j" * (1 << 20), "2", "room", "ev", "join_ref is longer than 64 bytes", (None, "2", "room"),
                     id="join-ref-1MiB"),
        pytest.param("1", "r" * 65, "room", "ev", "ref is longer than 64 bytes", ("1", None, "room"), id="ref-65"),
        pytest.param("1", "2", "t" * 257, "ev", "topic is longer than 256 bytes", ("1", "2", None), id="topic-257"),
        pytest.param("1", "2", "é" * 129, "ev", "topic is longer than 256 bytes", ("1", "2", None),
                     id="topic-258-bytes-in-129-characters"),
        pytest.param("1", "2", "room", "e" * 257, "event is longer than 256 bytes", ("1", "2", "room"), id="event-257"),
    ],
)
def test_a_header_field_that_is_not_a_capped_unicode_string_is_refused_and_never_echoed(
    vsn: str, join_ref: str, ref: str, topic: str, event: str, reason: str, echoed: tuple
) -> None:
    """The error names the field and is answered; its reply echoes only the valid fields."""
    with pytest.raises(FrameError) as caught:
        frames.decode_text(text_frame(vsn, join_ref, ref, topic, event), vsn)
    error = caught.value
    assert error.reason.startswith(reason)
    assert (error.join_ref, error.ref, error.topic) == echoed
    assert error.answerable


@pytest.mark.parametrize("vsn", [V1, V2])
def test_header_fields_at_their_caps_are_accepted(vsn: str) -> None:
    """Caps count bytes of UTF-8: 64-byte refs and 256-byte topics and events pass, multi-byte or not."""
    fields = ("j" * 64, "ü" * 32, "t" * 254 + "é", "\U0001f6eb" * 64)  # a surrogate pair in JSON is one scalar
    message = frames.decode_text(text_frame(vsn, *fields), vsn)
    assert (message.join_ref, message.ref, message.topic, message.event) == fields


def test_caps_come_from_the_limits_given() -> None:
    limits = frames.HeaderLimits(topic=4, event=4, ref=2)
    assert frames.decode_text(b'["12","12","room","push",{}]', V2, limits).topic == "room"
    for data in (b'["123","1","room","push",{}]', b'["1","1","rooms","push",{}]', b'["1","1","room","pushy",{}]'):
        with pytest.raises(FrameError):
            frames.decode_text(data, V2, limits)


def test_a_binary_header_over_its_cap_is_refused_and_never_echoed() -> None:
    with pytest.raises(FrameError) as caught:
        frames.decode_binary(binary_push(b"1", b"r" * 65, b"room", b"ev", b"x"))
    assert caught.value.reason == "ref is longer than 64 bytes"
    assert (caught.value.join_ref, caught.value.ref, caught.value.topic) == ("1", None, "room")
    # a frame cut short keeps only the fields within caps for its reply
    with pytest.raises(FrameError) as caught:
        frames.decode_binary(binary_push(b"j" * 200, b"2", b"room", b"ev", b"")[:-1])
    assert (caught.value.join_ref, caught.value.ref, caught.value.topic) == (None, "2", "room")


def test_a_long_field_is_refused_by_its_length_whatever_it_holds() -> None:
    assert frames.field_problem("ref", SURROGATE * (1 << 20), 64) == "ref is longer than 64 bytes"
    assert frames.field_problem("ref", "ok", 64) is None


# binary pushes


def test_binary_push_decodes_with_raw_payload() -> None:
    data = binary_push(b"1", b"2", b"room", b"upload", b"\x00\xff raw")
    assert frames.decode_binary(data) == Message("1", "2", "room", "upload", b"\x00\xff raw")


def test_binary_push_with_empty_refs_has_null_refs() -> None:
    assert frames.decode_binary(binary_push(b"", b"", b"room", b"ev", b"")) == Message(None, None, "room", "ev", b"")


def test_binary_push_header_fields_are_utf8() -> None:
    topic = "salle:été".encode()
    assert frames.decode_binary(binary_push(b"1", b"2", topic, b"ev", b"x")).topic == "salle:été"


@pytest.mark.parametrize(
    "data, join_ref, ref, topic",
    [
        pytest.param(b"", None, None, None, id="empty"),
        pytest.param(b"\x00\x01\x01", None, None, None, id="short-header"),
        pytest.param(b"\x01" + binary_push(b"1", b"2", b"room", b"ev", b"")[1:], None, None, None, id="kind-1"),
        pytest.param(b"\x02" + binary_push(b"1", b"2", b"room", b"ev", b"")[1:], None, None, None, id="kind-2"),
        pytest.param(binary_push(b"1", b"2", b"room", b"ev", b"")[:-1], "1", "2", "room", id="truncated-event"),
        pytest.param(bytes((0, 1, 1, 200, 2)) + b"12room", "1", "2", None, id="topic-length-past-end"),
        pytest.param(binary_push(b"1", b"2", b"ro\xffm", b"ev", b""), "1", "2", None, id="topic-not-utf8"),
        pytest.param(binary_push(b"1", b"2", b"room", b"e\xff", b""), "1", "2", "room", id="event-not-utf8"),
        pytest.param(binary_push(b"\xc3", b"2", b"room", b"ev", b""), None, None, None, id="join-ref-not-utf8"),
        pytest.param(binary_push(b"1", b"2", b"", b"ev", b""), "1", "2", None, id="empty-topic"),
        pytest.param(binary_push(b"1", b"2", b"room", b"", b""), "1", "2", "room", id="empty-event"),
    ],
)
def test_malformed_binary_frame_is_a_frame_error_with_usable_headers(
    data: bytes, join_ref: str | None, ref: str | None, topic: str | None
) -> None:
    with pytest.raises(FrameError) as caught:
        frames.decode_binary(data)
    error = caught.value
    assert error.reason
    assert (error.join_ref, error.ref, error.topic) == (join_ref, ref, topic)


@settings(deadline=None)  # no timed assertions: a slow machine must not fail it
@given(
    join_ref=st.text(max_size=20),
    ref=st.text(max_size=20),
    topic=st.text(min_size=1, max_size=60),
    event=st.text(min_size=1, max_size=60),
    payload=st.binary(max_size=64),
)
def test_binary_push_round_trips_any_fields(join_ref: str, ref: str, topic: str, event: str, payload: bytes) -> None:
    data = binary_push(join_ref.encode(), ref.encode(), topic.encode(), event.encode(), payload)
    assert frames.decode_binary(data) == Message(join_ref or None, ref or None, topic, event, payload)


# broadcasts from Redis


@pytest.mark.parametrize("payload", [b'{"b": 1,  "a":[1, 2.50]}', b' [1, "x", null] ', b'{"big":123456789012345678901234567890}'])
def test_json_document_broadcast_is_spliced_verbatim_into_a_text_frame(payload: bytes) -> None:
    """The Redis bytes are not re-encoded: spacing, key order and number spelling survive."""
    broadcast = from_redis("datalink:feed", "message", payload)
    assert broadcast.is_text
    assert broadcast.frame(V2) == b'[null,null,"datalink:feed","message",' + payload + b"]"
    v1 = broadcast.frame(V1)
    assert payload in v1
    assert json.loads(v1) == {
        "topic": "datalink:feed",
        "event": "message",
        "payload": json.loads(payload),
        "ref": None,
        "join_ref": None,
    }


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(b'["\\ud800"]', id="lone-surrogate-escape"),
        pytest.param(b'{"digits":' + b"9" * 400 + b"}", id="integer-past-a-double"),
        pytest.param(b"[18446744073709551616]", id="integer-past-64-bits"),
    ],
)
def test_json_that_simdjson_refuses_is_still_text(payload: bytes) -> None:
    """simdjson checks first; what it refuses but JSON allows (and browsers parse) is not made binary."""
    broadcast = from_redis("room", "ev", payload)
    assert broadcast.is_text
    assert broadcast.frame(V2).endswith(payload + b"]")


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(b'[1e999]', id="float-overflow"),
        pytest.param(b'[1,]', id="trailing-comma"),
        pytest.param(b'["\x01"]', id="control-character"),
        pytest.param(b'[1] [2]', id="two-documents"),
        pytest.param(b'"a bare string"', id="string"),
        pytest.param(b"42", id="number"),
        pytest.param(b"null", id="null"),
        pytest.param(b"Hello from plugin", id="text"),
        pytest.param(b'{"unterminated": ', id="invalid-json"),
        pytest.param(b'{"a": NaN}', id="nan"),
        pytest.param(b'{"a": "\xff"}', id="invalid-utf8"),
        pytest.param(b"\xff\xff\xff\xff\x10\x00\x00\x00ARROW1\x00\x00", id="arrow-like"),
        pytest.param(b"", id="empty"),
    ],
)
def test_anything_else_is_a_binary_broadcast(payload: bytes) -> None:
    """Layout: 2, topic_len, event_len, topic, event, payload; the same frame whatever the serializer."""
    broadcast = from_redis("system", "update-node", payload)
    assert not broadcast.is_text
    expected = bytes((2, len(b"system"), len(b"update-node"))) + b"system" + b"update-node" + payload
    assert broadcast.frame(V2) == expected
    assert broadcast.frame(V1) is broadcast.frame(V2)


def test_binary_broadcast_header_lengths_count_utf8_bytes() -> None:
    frame = from_redis("salle:été", "évt", b"x").frame(V2)
    assert frame[:3] == bytes((2, len("salle:été".encode()), len("évt".encode())))


def test_binary_broadcast_refuses_a_topic_or_event_over_255_bytes() -> None:
    """Refused when made, so that a broadcast once made can always be framed."""
    with pytest.raises(FrameError):
        from_redis("t" * 256, "ev", b"x")
    with pytest.raises(FrameError):
        from_redis("room", "é" * 128, b"x")
    assert from_redis("t" * 256, "ev", b"{}").frame(V2).startswith(b'[null,null,"ttt')


@pytest.mark.parametrize("vsn", [V1, V2])
@pytest.mark.parametrize("payload", [b'{"a":1}', b"raw"])
def test_a_broadcast_is_encoded_once_per_serializer(vsn: str, payload: bytes) -> None:
    """Every member gets the very same bytes object: no per-member encoding."""
    broadcast = from_redis("room", "ev", payload)
    assert broadcast.frame(vsn) is broadcast.frame(vsn)


def test_broadcast_from_a_value_is_a_text_frame() -> None:
    broadcast = Broadcast.from_value("system", "datetime", {"status": "ok"})
    assert broadcast.frame(V2) == b'[null,null,"system","datetime",{"status":"ok"}]'


def test_splice_puts_the_join_ref_in_a_server_push() -> None:
    assert frames.splice("3", "room", "presence_state", b"{}", V2) == b'["3",null,"room","presence_state",{}]'


# lossless JSON


def test_dumps_keeps_key_order() -> None:
    assert frames.dumps({"z": 1, "a": 2, "m": {"y": 0, "b": 1}}) == b'{"z":1,"a":2,"m":{"y":0,"b":1}}'


def test_dumps_keeps_integers_of_any_size() -> None:
    big = 2**200 + 1
    assert frames.dumps([big, -big]) == f"[{big},{-big}]".encode()


def test_dumps_writes_unicode_as_utf8() -> None:
    assert frames.dumps({"msg": "héllo ☃ 😀"}) == '{"msg":"héllo ☃ 😀"}'.encode()


def test_dumps_escapes_lone_surrogates_instead_of_failing() -> None:
    """A lone surrogate is legal in JSON escapes and must survive the trip through us."""
    value = frames.loads(b'{"s":"\\ud800x","t":"\xc3\xa9"}')
    encoded = frames.dumps(value)
    encoded.decode("utf-8")
    assert frames.loads(encoded) == value


def test_client_payload_round_trips_without_loss() -> None:
    data = '{"request_id":"r-1","message":{"z":[1,2.5,true,null]},"n":99999999999999999999999,"é":"ü"}'
    assert frames.dumps(frames.loads(data.encode())) == data.encode()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


def _strict_json(payload: bytes) -> bool:
    try:
        frames.loads(payload)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return False
    return True


_json_bytes = st.sampled_from(list(b'{}[],:"\\ 0123456789.eE+-tfnulxu\t\n\x00\x01\x0c\x7f\x80\xc3\xa9\xed\xa0\xff'))


@settings(deadline=None)
@given(st.lists(_json_bytes, max_size=40).map(bytes), json_values.map(frames.dumps), st.integers(0, 40))
def test_a_payload_is_text_exactly_when_strict_json_takes_it_as_an_object_or_array(
    noise: bytes, document: bytes, cut: int
) -> None:
    """Whatever simdjson answers, the verdict is the strict parser's: never text that is not JSON."""
    for payload in (noise, b"[" + noise, b'{"a":' + noise, document, b"[" + document + b"]", document[:cut] + noise):
        is_container = payload.lstrip(b" \t\r\n")[:1] in (b"{", b"[")
        assert frames.is_json_document(payload) == (is_container and _strict_json(payload))


@pytest.mark.parametrize("extra", [-1, 0, 1, 5 * frames.PARSER_KEEPS_BYTES])
def test_documents_past_what_the_kept_parser_takes_are_checked_too(extra: int) -> None:
    """Past ``PARSER_KEEPS_BYTES`` a parser of their own checks them: still text when valid, else binary."""
    padding = frames.PARSER_KEEPS_BYTES + extra - len(b'{"pad":""}')
    valid = b'{"pad":"' + b"x" * padding + b'"}'
    assert len(valid) == frames.PARSER_KEEPS_BYTES + extra
    assert frames.is_json_document(valid)
    assert not frames.is_json_document(valid[:-1])
    assert not frames.is_json_document(valid[:-2] + b'\xff"}')
    assert frames.is_json_document(b'{"pad":"' + b"x" * padding + b'\\ud800"}')  # simdjson refuses, JSON allows
    assert frames.is_json_document(b'{"a":1}')  # the kept parser still answers after


@settings(deadline=None)
@given(json_values)
def test_dumps_then_loads_is_the_identity(value: object) -> None:
    assert frames.loads(frames.dumps(value)) == value


@pytest.mark.parametrize("topic", ["streaming-c1", "a\"b", "a\\b", "é", "tab\there", "del\x7f", "~ !#[]{}"])
def test_a_spliced_broadcast_is_the_json_of_its_header_around_the_payload(topic: str) -> None:
    """The shortcut for plain names and the encoder for the rest give the same bytes."""
    framed = frames.splice(None, topic, "ev", b'{"a":1}', frames.V2)
    assert framed == frames.dumps([None, None, topic, "ev"])[:-1] + b',{"a":1}]'
    assert json.loads(framed) == [None, None, topic, "ev", {"a": 1}]
