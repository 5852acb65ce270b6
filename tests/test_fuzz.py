"""
Bad input, property-based, against a live ``twistd`` service on a real Redis.

Every example opens a fresh socket (or HTTP request) and sends something malformed:
Phoenix frames of either serializer with wrong arity, types, nulls, huge numbers,
deep nesting or long fields; binary pushes with lying or undecodable headers;
WebSocket-level oddities (fragments, pings with payloads, unsolicited pongs, invalid
UTF-8, protocol violations); ``/token`` bodies and headers; upgrade requests. After
each one a neighbour client that has been joined all along must still get broadcasts
and push acknowledgements, and the service must still run.

"Carries a ref" means a reply can be addressed: a string ``ref`` and a non-empty
string ``topic`` where the serializer puts them. Such frames must get a ``phx_reply``
with that exact ref, an error unless the frame is well formed.
"""

from __future__ import annotations

import json
import socket
import struct
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tangram_channel import frames

from .live import (
    BINARY, CLOSE, CONTINUATION, PING, PONG, TEXT, Closed, RawSocket, event_of, payload_of, ref_of, reply_status,
    start_twistd, token,
)

ORIGIN = "http://good.example"
HEADERS = {"Origin": ORIGIN}
EXAMPLES = settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)


class Neighbourhood:
    """A live service with one well-behaved client joined to ``calm`` for the whole test."""

    def __init__(self, service: Any, redis: Any) -> None:
        self.service = service
        self.redis = redis.client()
        self.neighbour = RawSocket(service.port, headers=HEADERS)
        self.join_ref, _ = self.neighbour.join_ok("calm", token("calm", "neighbour"))
        self.ticks = 0

    def socket(self, vsn: str = frames.V2) -> RawSocket:
        """A fresh socket joined to ``fuzz``, so pushes on that topic are routed too."""
        client = RawSocket(self.service.port, f"/websocket?vsn={vsn}", headers=HEADERS)
        client.join_ok("fuzz", token("fuzz", "fuzzer"))
        return client

    def still_fine(self) -> None:
        """The service runs, and the neighbour gets broadcasts and acknowledgements."""
        assert self.service.process.poll() is None, self.service.log()
        self.ticks += 1
        self.redis.publish("to:calm:tick", json.dumps({"n": self.ticks}))
        tick = self.neighbour.until(lambda m: event_of(m) == "tick")
        assert payload_of(tick) == {"n": self.ticks}
        ref = self.neighbour.push("calm", "talk", {"n": self.ticks}, self.join_ref)
        assert reply_status(self.neighbour.reply(ref)) == "ok"


@pytest.fixture
def hood(twistd, flushed_redis) -> Neighbourhood:
    service = start_twistd(twistd, "--redis-url", flushed_redis.url, allowed_origins=ORIGIN, datetime_interval=0)
    return Neighbourhood(service, flushed_redis)


def answers(client: RawSocket, after_violation: bool = False) -> tuple[dict[str, Any], list[bytes], int | None]:
    """
    Replies by ref and pong payloads the server sent before answering a push sent now,
    and the close code if it closed the socket instead. A push, not a heartbeat: its
    reply waits for Redis like those of earlier pushes, so it comes after them.
    ``after_violation``: the server may have closed the socket already, so the push may
    not go out; what it sent before is read all the same.
    """
    sentinel = "sentinel"
    try:
        client.send_json(
            {"topic": "fuzz", "event": "sentinel", "payload": {}, "ref": sentinel, "join_ref": None}
            if client.vsn == frames.V1 else [None, sentinel, "fuzz", "sentinel", {}]
        )
    except (BrokenPipeError, ConnectionResetError):
        if not after_violation:
            raise
    replies, pongs = {}, []
    try:
        while True:
            fin, opcode, payload = client.recv_frame(5)
            if opcode == CLOSE:
                return replies, pongs, struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
            if opcode == PONG:
                pongs.append(payload)
            elif opcode == TEXT:
                message = json.loads(payload)
                if event_of(message) == "phx_reply":
                    if ref_of(message) == sentinel:
                        return replies, pongs, None
                    replies[ref_of(message)] = message
    except Closed as closed:
        return replies, pongs, closed.code


# Phoenix text frames

names = st.sampled_from(["phoenix", "fuzz", "calm", "heartbeat", "phx_join", "phx_leave", "phx_reply", "talk", ""])
scalars = (
    st.none() | st.booleans() | st.integers(min_value=-(2**200), max_value=2**200)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12)
)
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)
fields = names | json_values | st.text(min_size=256, max_size=300)  # header fields over 255 bytes too
refs = st.text(max_size=8) | st.sampled_from(["1", "2"])


def usually(valid: st.SearchStrategy) -> st.SearchStrategy:
    """A field that is often what the serializer wants and otherwise anything."""
    return valid | valid | valid | fields


v2_frames = st.builds(
    lambda head, arity, tail: (list(head) + tail)[:arity],
    st.tuples(usually(st.none() | refs), usually(refs), usually(names), usually(names), json_values),
    st.sampled_from([5, 5, 5, 0, 1, 2, 3, 4, 6, 7]),
    st.lists(fields, min_size=2, max_size=2),
)
v1_frames = st.fixed_dictionaries({}, optional={
    "topic": usually(names), "event": usually(names), "payload": json_values, "ref": usually(refs),
    "join_ref": usually(st.none() | refs), "other": fields,
})

# Raw JSON texts: deep nesting and numbers beyond what a parser may accept, around a
# frame that would otherwise be a heartbeat.
special_texts = st.sampled_from([
    '[null,"r","phoenix","heartbeat",' + "[" * 40 + "]" * 40 + "]",
    '[null,"r","phoenix","heartbeat",' + "[" * 50000 + "]" * 50000 + "]",
    '[null,"r","phoenix","heartbeat",' + "9" * 1000 + "]",
    '[null,"r","phoenix","heartbeat",' + "9" * 10000 + "]",
    '[null,"r","phoenix","heartbeat",1e999]',
    '[null,"r","phoenix","heartbeat",NaN]',
    '[null,"r","phoenix","heartbeat"',
    "",
    "null",
])


def within(value: Any, cap: int) -> bool:
    """A header string within its default cap (hypothesis's text holds no lone surrogates)."""
    return isinstance(value, str) and len(value.encode("utf-8")) <= cap


def addressable(value: Any, vsn: str) -> tuple[str | None, bool]:
    """The ref a reply must carry (None: no reply can be addressed) and whether the frame is well formed."""
    if vsn == frames.V1:
        if not isinstance(value, dict):
            return None, False
        ref, topic, event = value.get("ref"), value.get("topic"), value.get("event")
        join_ref = value.get("join_ref")
        complete = {"topic", "event", "payload", "ref"} <= value.keys()
    else:
        if not isinstance(value, list):
            return None, False
        join_ref, ref, topic, event = (value + [None] * 4)[:4]
        complete = len(value) == 5
    well_formed = (
        complete and all(v is None or within(v, 64) for v in (join_ref, ref))
        and within(topic, 256) and topic != "" and within(event, 256) and event != "" and ":" not in event
    )
    if within(ref, 64):
        return ref, well_formed
    return None, well_formed


def check_reply(replies: dict[str, Any], ref: str | None, well_formed: bool) -> None:
    event("carries a ref" if ref is not None else "no ref")
    if ref is None:
        return
    assert ref in replies, f"no reply to ref {ref!r}"
    if not well_formed:
        assert reply_status(replies[ref]) == "error", replies[ref]


@given(
    vsn=st.sampled_from(frames.VERSIONS),
    v2=v2_frames,
    v1=v1_frames,
    raw=st.none() | st.none() | st.none() | special_texts | st.text(max_size=40),
)
@EXAMPLES
def test_text_frames_are_answered_and_harm_nobody(hood, vsn, v2, v1, raw):
    client = hood.socket(vsn)
    if raw is None:
        value = v1 if vsn == frames.V1 else v2
        client.send_json(value)
    else:
        client.send_frame(TEXT, raw.encode("utf-8", "surrogatepass") if _is_utf8(raw) else b"")
        try:
            value = frames.loads(raw)
        except (ValueError, RecursionError):
            value = None
    replies, _, code = answers(client)
    assert code is None, f"closed with {code}"
    check_reply(replies, *addressable(value, vsn))
    client.close()
    hood.still_fine()


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


# Binary pushes

utf8_fields = st.text(min_size=1, max_size=10).map(str.encode) | st.sampled_from([b"1", b"fuzz", b"phoenix", b"talk"])
header_fields = utf8_fields | utf8_fields | st.sampled_from([b"", b"\xff\xfe", b"\xc3"]) | st.binary(max_size=300)


def _utf8(data: bytes) -> str | None:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


@given(
    kind=st.sampled_from([0, 0, 0, 0, 0, 1, 2, 255]),
    parts=st.tuples(header_fields, header_fields, header_fields, header_fields),
    lie=st.none() | st.none() | st.none() | st.tuples(*[st.integers(0, 255)] * 4),
    payload=st.binary(max_size=100),
    garbage=st.none() | st.none() | st.none() | st.binary(max_size=20),
)
@EXAMPLES
def test_binary_frames_are_answered_and_harm_nobody(hood, kind, parts, lie, payload, garbage):
    client = hood.socket()
    lengths = lie or tuple(len(p) % 256 for p in parts)
    data = garbage if garbage is not None else bytes([kind, *lengths]) + b"".join(parts) + payload
    client.send_frame(BINARY, data)
    replies, _, code = answers(client)
    assert code is None, f"closed with {code}"
    honest = garbage is None and kind == 0 and lengths == tuple(len(p) for p in parts)
    join_ref, ref, topic, event_name = (_utf8(p) for p in parts)
    if honest and join_ref is not None and ref and within(ref, 64):
        well_formed = bool(event_name) and ":" not in event_name and within(join_ref, 64) and within(topic, 256)
        check_reply(replies, ref, well_formed)
    else:
        event("no ref")
    client.close()
    hood.still_fine()


# WebSocket framing

HEARTBEAT = '[null,"{ref}","phoenix","heartbeat",{{"pad":"{pad}"}}]'


@st.composite
def benign(draw: Any) -> tuple[str, Any]:
    """Something a correct client may do: (kind, what to expect)."""
    kind = draw(st.sampled_from(["fragments", "ping", "pong"]))
    if kind == "fragments":
        ref = f"frag-{draw(st.integers(0, 10**6))}"
        message = HEARTBEAT.format(ref=ref, pad="é" * draw(st.integers(0, 40))).encode()
        cuts = sorted(draw(st.lists(st.integers(0, len(message)), max_size=4)))
        pieces = [message[a:b] for a, b in zip([0, *cuts], [*cuts, len(message)])]
        pings = draw(st.lists(st.booleans(), min_size=len(pieces), max_size=len(pieces)))
        return kind, (ref, pieces, pings)
    return kind, draw(st.binary(max_size=125))


violations = st.sampled_from([
    "bad utf-8", "bad utf-8 in fragments", "reserved opcode", "rsv bit", "long ping", "fragmented ping",
    "lone continuation", "unmasked", "text inside fragments", "close with bad utf-8 reason",
])
EXPECTED_CLOSE = {
    "bad utf-8": {1007}, "bad utf-8 in fragments": {1007},
    # the client started the closing handshake: the server may answer 1007 or just drop it
    "close with bad utf-8 reason": {1007, None},
}


def _send_violation(client: RawSocket, name: str) -> None:
    send = client.send_frame
    if name == "bad utf-8":
        send(TEXT, b'["1","2","fuzz","talk","\xc3\x28"]')
    elif name == "bad utf-8 in fragments":
        send(TEXT, b'["1","2","fuzz","talk","\xe2', fin=False)
        send(CONTINUATION, b'\x28\xa1"]')
    elif name == "reserved opcode":
        send(0x3, b"x")
    elif name == "rsv bit":
        send(TEXT, b"[]", rsv=4)
    elif name == "long ping":
        send(PING, b"x" * 126)
    elif name == "fragmented ping":
        send(PING, b"x", fin=False)
    elif name == "lone continuation":
        send(CONTINUATION, b"x")
    elif name == "unmasked":
        send(TEXT, b"[]", mask=False)
    elif name == "text inside fragments":
        send(TEXT, b"[", fin=False)
        send(TEXT, b"]")
    elif name == "close with bad utf-8 reason":
        send(CLOSE, struct.pack("!H", 1000) + b"\xff")


@given(actions=st.lists(benign(), max_size=5), violation=st.none() | violations)
@EXAMPLES
def test_websocket_framing_oddities_harm_nobody(hood, actions, violation):
    """Fragments and control frames are handled; violations close only that socket (1002, 1007)."""
    client = hood.socket()
    refs, pings = [], []
    for kind, detail in actions:
        if kind == "fragments":
            ref, pieces, interleave = detail
            for i, (piece, ping) in enumerate(zip(pieces, interleave)):
                client.send_frame(TEXT if i == 0 else CONTINUATION, piece, fin=i == len(pieces) - 1)
                if ping:
                    client.send_frame(PING, b"between")
                    pings.append(b"between")
            refs.append(ref)
        elif kind == "ping":
            client.send_frame(PING, detail)
            pings.append(detail)
        else:
            client.send_frame(PONG, detail)
    if violation is not None:
        _send_violation(client, violation)
    replies, pongs, code = answers(client, after_violation=violation is not None)
    if violation is None:
        assert code is None, f"closed with {code}"
        assert pongs == pings
        for ref in refs:
            assert reply_status(replies[ref]) == "ok"
    else:
        assert code in EXPECTED_CLOSE.get(violation, {1002})
    client.close()
    hood.still_fine()


# HTTP: /token and the upgrade


def http(port: int, request: bytes) -> int | None:
    """Send one raw HTTP request; the response's status code (None: closed without one)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        head = b""
        try:
            conn.sendall(request)
            while b"\r\n" not in head:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                head += chunk
        except ConnectionResetError:
            pass
    return int(head.split()[1]) if head else None


header_text = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=60)


@given(
    body=json_values.map(lambda v: json.dumps(v).encode()) | st.binary(max_size=200),
    content_type=st.sampled_from(["application/json", "application/json; charset=utf-8", "text/plain", ""])
    | header_text,
    authorization=st.none() | header_text,
    padding=st.sampled_from([0, 100, 20_000, 70_000]),
)
@EXAMPLES
def test_token_requests_never_fail_the_service(hood, body, content_type, authorization, padding):
    """
    Any body or header gets a 4xx or a token, never a 5xx. Header lines over 16 KiB are
    refused by twisted.web: 400, or the connection closed at once (a line that long).
    """
    lines = [b"POST /token HTTP/1.1", b"Host: 127.0.0.1", b"Connection: close",
             b"Content-Type: " + content_type.encode(), b"Content-Length: %d" % len(body)]
    if authorization is not None:
        lines.append(b"Authorization: " + authorization.encode())
    if padding:
        lines.append(b"X-Padding: " + b"p" * padding)
    status = http(hood.service.port, b"\r\n".join(lines) + b"\r\n\r\n" + body)
    if padding > 16_384:
        assert status in (400, None)
    else:
        assert status in (200, 400, 403, 413, 415, 422), status
    hood.still_fine()


token_chars = st.text(st.sampled_from("abcdefghijklmnopqrstuvwxyz0123456789.-_~!#$%&'*+^`|"), min_size=1, max_size=20)


@given(
    vsn=st.none() | st.sampled_from(["1.0.0", "2.0.0", "3.0.0", "2.0", "1.0.0 "]) | header_text,
    protocols=st.none() | st.lists(st.sampled_from(["phoenix", "base64url.bearer.phx.!!"]) | token_chars, max_size=4),
    origin=st.none() | st.just(ORIGIN) | header_text,
)
@EXAMPLES
def test_upgrade_requests_get_clear_answers(hood, vsn, protocols, origin):
    """Bad vsn: 400; other Origins: 403; unknown subprotocols are not chosen, duplicates refused."""
    path = "/websocket" if vsn is None else f"/websocket?vsn={quote(vsn, safe='')}"
    headers = {}
    if protocols is not None:
        headers["Sec-WebSocket-Protocol"] = ", ".join(protocols)
    if origin is not None:
        headers["Origin"] = origin
    client = RawSocket(hood.service.port, path, headers=headers)
    if vsn not in (None, "1.0.0", "2.0.0"):
        assert client.status == 400
    elif origin != ORIGIN:
        assert client.status == 403
    elif protocols is not None and len(set(protocols)) < len(protocols):
        assert client.status == 400
    else:
        assert client.status == 101
        chosen = client.headers.get("sec-websocket-protocol")
        assert chosen == ("phoenix" if protocols and "phoenix" in protocols else None)
    client.close()
    hood.still_fine()
