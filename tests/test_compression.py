"""
permessage-deflate: what is negotiated, what is compressed, the bytes a broadcast
shares among its compressing members, and the bound on what a client's message may
inflate to. In memory first (StringTransport), then against ``twistd`` with a raw
client that inflates what it gets.
"""

from __future__ import annotations

import json
import resource
import zlib
from typing import Any

import pytest
from autobahn.websocket.compress import PerMessageDeflateOffer
from websockets.extensions.permessage_deflate import PerMessageDeflate
from websockets.sync.client import connect

from tangram_channel.deflate import Compression, LeanDeflate, accept_offer, compressed_frame, deflate, server_frame
from tangram_channel.frames import V2, Broadcast, Burst, splice_parts
from tangram_channel.protocol import PhoenixFactory

from .fakes import World
from .live import BINARY, CLOSE, CONTINUATION, TEXT, FrameParser, RawSocket, frame, start_twistd, token
from .test_protocol_memory import IDLE, MAX_BUFFER, MAX_MESSAGE, Client, server_frames

CHROME_OFFER = "permessage-deflate; client_max_window_bits"
TAIL = b"\x00\x00\xff\xff"


def inflate(data: bytes) -> bytes:
    """One message compressed without context, as a client inflates it."""
    return zlib.decompressobj(-15).decompress(data + TAIL)


def state_payload(aircraft: int = 300) -> bytes:
    """JSON shaped like Tangram's aircraft state: a few hundred records of the same keys."""
    return json.dumps(
        {
            "count": aircraft,
            "aircraft": [
                {
                    "icao24": f"{0x3C0000 + i:06x}",
                    "callsign": f"AFR{1000 + i}",
                    "latitude": 43.5 + i * 0.0123,
                    "longitude": 1.3 + i * 0.0071,
                    "altitude": 30000 + (i * 37) % 9000,
                    "groundspeed": 420 + i % 60,
                    "track": (i * 13) % 360,
                    "vertical_rate": (i % 7 - 3) * 64,
                    "squawk": f"{1000 + i % 6777:04d}",
                    "last_seen": 1764979200 + i % 30,
                }
                for i in range(aircraft)
            ],
        },
        separators=(",", ":"),
    ).encode()


# negotiation, without a socket


def test_an_offer_is_answered_without_context_takeover_both_ways() -> None:
    accept = accept_offer([PerMessageDeflateOffer.parse({})], max_message_size=1000)
    assert accept is not None
    assert accept.get_extension_string() == (
        "permessage-deflate; client_no_context_takeover; server_no_context_takeover"
    )


def test_a_client_asking_for_no_server_context_takeover_is_answered_once() -> None:
    accept = accept_offer([PerMessageDeflateOffer.parse({"server_no_context_takeover": [True]})], 1000)
    assert accept is not None
    assert accept.get_extension_string().count("server_no_context_takeover") == 1


def test_a_client_asking_for_a_small_server_window_gets_it() -> None:
    accept = accept_offer([PerMessageDeflateOffer.parse({"server_max_window_bits": ["10"]})], 1000)
    assert accept is not None and accept.window_bits == 10
    assert "server_max_window_bits=10" in accept.get_extension_string()


def test_a_message_is_compressed_from_min_size_on_and_inflates_back() -> None:
    small, big = b'{"a":1}', state_payload(10)
    assert compressed_frame(small, False, 15, min_size=len(small) + 1) == server_frame(small, False)
    framed = compressed_frame(big, False, 15, min_size=len(big))
    assert framed[0] == 0xC1  # FIN, RSV1, text
    assert inflate(framed[4:]) == big
    assert len(framed) < len(big) / 3


def test_what_deflate_does_not_shrink_goes_out_plain() -> None:
    noise = bytes(range(256)) * 2
    noise = zlib.compress(noise)  # already compressed: deflate only adds to it
    assert compressed_frame(noise, True, 15, min_size=0) == server_frame(noise, True)


def test_a_small_window_makes_a_stream_a_small_window_can_inflate() -> None:
    payload = state_payload(50)
    assert zlib.decompressobj(-9).decompress(deflate(payload, 9) + TAIL) == payload


# the protocol in memory


def compressing(world: World, compression: Compression = Compression(), max_message: int = MAX_MESSAGE, **options: Any) -> Client:
    factory = PhoenixFactory(
        hub=world.hub,
        clock=world.clock,
        idle_timeout=IDLE,
        max_message_size=max_message,
        max_send_buffer=MAX_BUFFER,
        compression=compression,
    )
    return Client(world, "?vsn=2.0.0", factory=factory, **options)


@pytest.fixture
def world() -> World:
    return World()


def test_compressing_members_share_one_compressed_framing_of_a_broadcast(world: World) -> None:
    alice, bob = (compressing(world, extensions=CHROME_OFFER) for _ in range(2))
    plain = compressing(world)
    assert "permessage-deflate" in alice.handshake and "permessage-deflate" not in plain.handshake
    burst = Burst([Broadcast("room", "state", state_payload(), True)])
    mine, theirs, unzipped = (c.protocol.framed(burst) for c in (alice, bob, plain))
    assert mine is theirs  # one compression, one bytes object, for every compressing member
    assert mine is not None and unzipped is not None
    assert mine[0] == 0xC1 and unzipped[0] == 0x81
    assert len(mine) < len(unzipped) / 5
    assert len(burst.prepared) == 2  # one framing each way, whatever the number of members


def test_a_lone_compressing_member_gets_its_channels_message_compressed(world: World) -> None:
    alice = compressing(world, extensions=CHROME_OFFER)
    alice.join("room", token=world.token("room"))
    assert alice.protocol.direct.lone_text_frame(*splice_parts(None, "room", "state", b"{}", V2)) is None  # compressed by its Burst
    payload = state_payload()
    world.hub.deliver([("room", "state", payload)])
    data = alice.transport.value()
    assert data[0] == 0xC1  # FIN, RSV1 (compressed), text
    [(_, compressed)] = server_frames(data)
    assert inflate(compressed) == b'[null,null,"room","state",' + payload + b"]"


def test_compression_off_answers_no_offer(world: World) -> None:
    client = compressing(world, Compression(enabled=False), extensions=CHROME_OFFER)
    assert "Sec-WebSocket-Extensions" not in client.handshake


def test_small_messages_go_out_uncompressed(world: World) -> None:
    client = compressing(world, Compression(min_size=256), extensions=CHROME_OFFER)
    client.protocol.dataReceived(frame(TEXT, b'[null,"1","phoenix","heartbeat",{}]'))
    reply = client.transport.value()
    assert reply[0] == 0x81  # RSV1 clear
    assert json.loads(reply[2:])[3] == "phx_reply"


def test_the_inflater_is_freed_between_messages(world: World) -> None:
    client = compressing(world, extensions=CHROME_OFFER)
    deflater = client.protocol._perMessageCompress
    assert isinstance(deflater, LeanDeflate) and deflater.client_no_context_takeover
    client.protocol.dataReceived(frame(TEXT, deflate(b'[null,"1","phoenix","heartbeat",{}]'), rsv=4))
    assert json.loads(client.transport.value()[2:])[4]["status"] == "ok"
    assert deflater._decompressor is None and deflater._compressor is None


def test_a_compressed_bomb_is_closed_1009_without_being_inflated(world: World) -> None:
    """1 MB of compressed zeros would inflate to about a gigabyte; it may cost max_message_size at most."""
    client = compressing(world, max_message=1024 * 1024, extensions=CHROME_OFFER)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    zeros = bytes(1 << 20)
    bomb = b"".join(compressor.compress(zeros) for _ in range(1000)) + compressor.flush(zlib.Z_SYNC_FLUSH)[:-4]
    assert len(bomb) < 1100 * 1024
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    client.protocol.dataReceived(frame(TEXT, bomb, rsv=4))
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    closes = [payload for _, opcode, payload in FrameParser().feed(client.transport.value()) if opcode == CLOSE]
    assert closes and int.from_bytes(closes[0][:2], "big") == 1009
    assert grown_kib < 64 * 1024, f"inflating the bomb grew the process by {grown_kib} KiB"


def test_a_bomb_in_many_frames_is_counted_across_them(world: World) -> None:
    """
    Each frame inflates to under the limit, the message to far past it: closed 1009 once
    the frames together pass it (Autobahn 24.4 bounded each frame alone), and what was
    inflated stays within the limit and a byte.
    """
    limit = 256 * 1024
    client = compressing(world, max_message=limit, extensions=CHROME_OFFER)
    deflater = client.protocol._perMessageCompress
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    piece = bytes(limit // 4)
    frames = [frame(TEXT, compressor.compress(piece) + compressor.flush(zlib.Z_SYNC_FLUSH), fin=False, rsv=4)]
    frames += [frame(CONTINUATION, compressor.compress(piece) + compressor.flush(zlib.Z_SYNC_FLUSH), fin=False)
               for _ in range(40)]  # 10 times the limit
    for each in frames:
        client.protocol.dataReceived(each)
    closes = [payload for _, opcode, payload in FrameParser().feed(client.transport.value()) if opcode == CLOSE]
    assert closes and int.from_bytes(closes[0][:2], "big") == 1009
    assert isinstance(deflater, LeanDeflate) and limit < deflater._inflated <= limit + 1


def test_a_message_that_does_not_inflate_is_closed_1007(world: World) -> None:
    client = compressing(world, extensions=CHROME_OFFER)
    client.protocol.dataReceived(frame(TEXT, b"\xff" * 64, rsv=4))  # no valid deflate block starts 0xff 0xff
    closes = [payload for _, opcode, payload in FrameParser().feed(client.transport.value()) if opcode == CLOSE]
    assert closes and int.from_bytes(closes[0][:2], "big") == 1007


# against twistd, with a raw client that inflates


class InflatingParser(FrameParser):
    """Frames as the client reads them: compressed ones (RSV1) inflated and counted, wire bytes summed."""

    def __init__(self) -> None:
        super().__init__()
        self.wire = 0
        self.compressed = 0
        self.plain = 0

    def _one(self) -> tuple[bool, int, bytes] | None:
        size, first = len(self._buffer), self._buffer[:1]
        parsed = super()._one()
        if parsed is None:
            return None
        self.wire += size - len(self._buffer)
        fin, opcode, payload = parsed
        if first[0] & 0x40:
            self.compressed += 1
            return fin, opcode, inflate(payload)
        if opcode in (TEXT, BINARY):
            self.plain += 1
        return parsed


def member(port: int, topic: str, offer: str | None) -> tuple[RawSocket, InflatingParser]:
    headers = {"Sec-WebSocket-Extensions": offer} if offer else {}
    client = RawSocket(port, headers=headers)
    assert client.status == 101
    parser = client.parser = InflatingParser()
    client.join_ok(topic, token(topic))
    return client, parser


def test_a_broadcast_reaches_compressing_and_plain_members_alike(twistd, flushed_redis) -> None:
    service = start_twistd(twistd, "--redis-url", flushed_redis.url, datetime_interval=0)
    zipped, zipped_wire = member(service.port, "state", CHROME_OFFER)
    plain, plain_wire = member(service.port, "state", None)
    assert "permessage-deflate" in zipped.headers.get("sec-websocket-extensions", "")
    payload = state_payload()
    wire_before = (zipped_wire.wire, plain_wire.wire)
    flushed_redis.client().publish("to:state:update", payload)
    for client in (zipped, plain):
        got = client.until(lambda m: m[3] == "update")
        assert got[4] == json.loads(payload)
    zipped_bytes, plain_bytes = zipped_wire.wire - wire_before[0], plain_wire.wire - wire_before[1]
    assert zipped_wire.compressed >= 1 and plain_wire.compressed == 0
    assert zipped_bytes < plain_bytes / 5, (zipped_bytes, plain_bytes)


def test_a_python_client_negotiates_and_inflates_a_broadcast(twistd, flushed_redis) -> None:
    """websockets (as Python plugins and tools use it) offers permessage-deflate by default."""
    service = start_twistd(twistd, "--redis-url", flushed_redis.url, datetime_interval=0)
    url = f"ws://127.0.0.1:{service.port}/websocket?vsn=2.0.0&userToken={token('state')}"
    with connect(url, open_timeout=5) as ws:
        (extension,) = ws.protocol.extensions
        assert isinstance(extension, PerMessageDeflate)
        assert extension.remote_no_context_takeover and extension.local_no_context_takeover
        ws.send(json.dumps(["1", "1", "state", "phx_join", {}]))
        assert json.loads(ws.recv(timeout=5))[4]["status"] == "ok"
        payload = state_payload()
        flushed_redis.client().publish("to:state:update", payload)
        while (message := json.loads(ws.recv(timeout=5)))[3] != "update":
            pass
        assert message[4] == json.loads(payload)
