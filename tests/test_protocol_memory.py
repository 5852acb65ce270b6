"""
The Phoenix WebSocket protocol on a StringTransport: real Autobahn framing, a fake
Redis, a Clock; no socket. The client side is a few lines of RFC 6455 below.
"""

from __future__ import annotations

import json
import socket
import sys
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from tangram_channel.deflate import server_frame
from tangram_channel.frames import V1, V2, Broadcast, Burst, splice_parts
from tangram_channel.protocol import (
    CLOSE_IDLE,
    CLOSE_POLICY,
    OWN_BYTES_BEFORE_READ_PAUSE,
    RATE_GRACE,
    STALLED_BY,
    DirectWriter,
    PhoenixFactory,
    PhoenixProtocol,
)

from .fakes import World, offered, rejected_frames, reply

TEXT, BINARY, CLOSE, PING, PONG = 0x1, 0x2, 0x8, 0x9, 0xA
IDLE = 30.0
MAX_MESSAGE = 4096
MAX_BUFFER = 64 * 1024


def client_frame(payload: bytes, opcode: int) -> bytes:
    """One masked, unfragmented frame, as a client must send it."""
    mask = b"\x37\xfa\x21\x3d"
    n = len(payload)
    if n < 126:
        header = bytes((0x80 | opcode, 0x80 | n))
    elif n < 1 << 16:
        header = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        header = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def server_frames(data: bytes) -> list[tuple[int, bytes]]:
    """Split the server's unmasked, unfragmented frames into (opcode, payload)."""
    out = []
    i = 0
    while i < len(data):
        opcode, n = data[i] & 0x0F, data[i + 1] & 0x7F
        i += 2
        if n == 126:
            n, i = int.from_bytes(data[i : i + 2], "big"), i + 2
        elif n == 127:
            n, i = int.from_bytes(data[i : i + 8], "big"), i + 8
        out.append((opcode, data[i : i + n]))
        i += n
    return out


class Client:
    """One WebSocket to a PhoenixProtocol over a StringTransport."""

    def __init__(
        self,
        world: World,
        query: str = "",
        protocols: list[str] | None = None,
        extensions: str | None = None,
        factory: PhoenixFactory | None = None,
    ) -> None:
        self.world = world
        if factory is None:
            factory = PhoenixFactory(
                hub=world.hub, clock=world.clock, idle_timeout=IDLE, max_message_size=MAX_MESSAGE, max_send_buffer=MAX_BUFFER
            )
        self.protocol: PhoenixProtocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        self.transport = StringTransport()
        # Behind web.SocketResource the HTTP channel is the transport's producer at
        # upgrade time, and the protocol replaces it: stand in for that channel.
        self.transport.registerProducer(StringTransport(), True)
        self.protocol.makeConnection(self.transport)
        lines = [
            f"GET /websocket{query} HTTP/1.1",
            "Host: tangram.test",
            "Upgrade: websocket",
            "Connection: Upgrade",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
            "Sec-WebSocket-Version: 13",
        ]
        if protocols:
            lines.append("Sec-WebSocket-Protocol: " + ", ".join(protocols))
        if extensions:
            lines.append("Sec-WebSocket-Extensions: " + extensions)
        self.protocol.dataReceived(("\r\n".join(lines) + "\r\n\r\n").encode())
        head, _, rest = self.transport.value().partition(b"\r\n\r\n")
        self.handshake = head.decode()
        assert self.handshake.startswith("HTTP/1.1 101"), self.handshake
        self.transport.clear()
        self._pending = rest

    def send_text(self, value: Any) -> None:
        data = value if isinstance(value, bytes) else json.dumps(value).encode()
        self.protocol.dataReceived(client_frame(data, TEXT))

    def send_binary(self, data: bytes) -> None:
        self.protocol.dataReceived(client_frame(data, BINARY))

    def received(self) -> list[tuple[int, Any]]:
        """Frames since the last call: text decoded from JSON, binary as bytes."""
        data, self._pending = self._pending + self.transport.value(), b""
        self.transport.clear()
        return [(op, json.loads(p) if op == TEXT else p) for op, p in server_frames(data)]

    def close_code(self) -> int | None:
        closes = [p for op, p in server_frames(self.transport.value()) if op == CLOSE]
        return int.from_bytes(closes[0][:2], "big") if closes else None

    def join(self, topic: str, join_ref: str = "1", **payload: Any) -> list[tuple[int, Any]]:
        self.send_text([join_ref, join_ref, topic, "phx_join", payload])
        self.world.settle()
        return self.received()


@pytest.fixture
def world() -> World:
    return World()


def test_v2_join_over_the_wire_is_a_reply_then_presence_state(world: World) -> None:
    client = Client(world, "?vsn=2.0.0")
    sent = client.join("room", "1", token=world.token("room"))
    assert [op for op, _ in sent] == [TEXT, TEXT]
    assert sent[0][1][:4] == ["1", "1", "room", "phx_reply"]
    assert sent[0][1][4]["status"] == "ok"
    assert sent[1][1][:4] == ["1", None, "room", "presence_state"]


def test_an_open_socket_keeps_no_copy_of_the_upgrade_request_and_its_token(world: World) -> None:
    """Autobahn keeps the request (its URL carries ``userToken``), its headers and the answer; once open they go."""
    token = world.token("room")
    client = Client(world, f"?vsn=2.0.0&userToken={token}", protocols=["phoenix", "x-extra"])
    kept = repr(vars(client.protocol))
    assert token not in kept
    assert "tangram.test" not in kept and "x-extra" not in kept  # the Host header, the subprotocols offered
    assert client.join("room", "1")[0][1][4]["status"] == "ok"  # the socket's token still joins


def test_an_open_socket_holds_a_small_send_queue_that_autobahn_still_uses_in_order(world: World) -> None:
    """Autobahn's 760-byte deque becomes a list once open; a chopped write still goes through it, in order."""
    client = Client(world, f"?vsn=2.0.0&userToken={world.token('room')}")
    assert client.join("room", "1")[0][1][4]["status"] == "ok"
    queue = client.protocol.send_queue
    assert sys.getsizeof(queue) < 100
    sent = len(client.transport.value())
    client.protocol.sendData(b"abcdefgh", chopsize=3)  # queued in three parts, the first written now
    assert client.transport.value()[sent:] == b"abc" and [part for part, _ in queue] == [b"def", b"gh"]
    assert queue.popleft() == (b"def", True) and list(queue) == [(b"gh", True)]


def test_autobahn_settings_are_held_once_per_factory_not_once_per_socket(world: World) -> None:
    factory = PhoenixFactory(hub=world.hub, clock=world.clock, max_message_size=MAX_MESSAGE)
    first, second = Client(world, factory=factory), Client(world, factory=factory)
    assert type(first.protocol) is type(second.protocol)
    assert "maxMessagePayloadSize" not in vars(first.protocol)
    assert first.protocol.maxMessagePayloadSize == MAX_MESSAGE
    assert first.protocol.perMessageCompressionAccept([]) is None  # a function setting stays a function
    factory.setProtocolOptions(maxMessagePayloadSize=2 * MAX_MESSAGE, maxFramePayloadSize=2 * MAX_MESSAGE)
    later = Client(world, factory=factory)
    assert later.protocol.maxMessagePayloadSize == 2 * MAX_MESSAGE  # a changed setting: a new class
    assert first.protocol.maxMessagePayloadSize == MAX_MESSAGE
    later.send_text(["1", "1", "room", "phx_join", {"pad": "x" * (MAX_MESSAGE + 100)}])
    assert later.close_code() is None  # within the new limit: still open
    first.send_text(["1", "1", "room", "phx_join", {"pad": "x" * (MAX_MESSAGE + 100)}])
    assert first.close_code() == 1009


@pytest.mark.parametrize("room", [0, 60_000], ids=["none-taken", "some-taken"])
def test_a_large_frame_written_behind_its_header_queues_what_the_socket_did_not_take(
    world: World, room: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    A presence_state goes out as header and payload in one ``writev``, uncopied; what the
    socket does not take (cut in the header or in the payload) is queued, in order.
    """
    client = Client(world, "?vsn=2.0.0")
    reader, writer = socket.socketpair()
    with reader, writer:
        writer.setblocking(False)
        # fill the socket until ``room`` bytes at most are left in it
        filler = b"f" * 4096
        while True:
            try:
                writer.send(filler)
            except BlockingIOError:
                break
        reader.setblocking(False)
        drained = 0
        while drained < room:
            try:
                drained += len(reader.recv(min(4096, room - drained)))
            except BlockingIOError:  # held less than ``room``: all of it is free
                break
        monkeypatch.setattr(DirectWriter, "direct_fd", lambda self: writer.fileno())
        payload = b'["1",null,"room","presence_state",{"k":"' + b"x" * 200_000 + b'"}]'
        client.protocol.send_frame(payload, False)
        queued = client.transport.value()
        written = b""
        while True:
            try:
                chunk = reader.recv(1 << 20)
            except BlockingIOError:
                break
            written += chunk
    taken = written.lstrip(b"f")
    frame = taken + queued
    assert queued, "the socket took it all: nothing tested"
    if room:
        assert taken, "the socket took none: the cut in the payload untested"
    assert frame == server_frame(payload, False)


def test_v1_sockets_speak_objects(world: World) -> None:
    client = Client(world, "?vsn=1.0.0")
    client.send_text({"topic": "phoenix", "event": "heartbeat", "payload": {}, "ref": "5", "join_ref": None})
    assert client.received() == [
        (TEXT, {"topic": "phoenix", "event": "phx_reply", "payload": {"status": "ok", "response": {}}, "ref": "5", "join_ref": None})
    ]


def test_v1_join_gets_presence_state_as_an_object_with_the_join_ref(world: World) -> None:
    client = Client(world, "?vsn=1.0.0")
    client.send_text({"topic": "room", "event": "phx_join", "payload": {"token": world.token("room")}, "ref": "1", "join_ref": "1"})
    world.settle()
    (_, joined), (_, state) = client.received()
    assert (joined["event"], joined["payload"]["status"]) == ("phx_reply", "ok")
    assert {k: state[k] for k in ("topic", "event", "ref", "join_ref")} == {
        "topic": "room",
        "event": "presence_state",
        "ref": None,
        "join_ref": "1",
    }
    assert list(state["payload"]) == ["alice"]


def test_a_malformed_frame_is_answered_and_the_socket_stays_open(world: World) -> None:
    client = Client(world)
    client.send_text(b'["1","2","room",5,{}]')
    client.send_text(b"{not json")
    client.send_binary(b"\x07junk")
    assert client.received() == [
        (TEXT, reply("1", "2", "room", "error", {"reason": "event must be a non-empty string"}))
    ]
    assert rejected_frames(client.protocol.factory.metrics) == 3
    client.send_text([None, "3", "phoenix", "heartbeat", {}])
    assert client.received() == [(TEXT, reply(None, "3", "phoenix", "ok", {}))]
    assert not client.transport.disconnecting


def test_broadcasts_go_out_as_text_or_binary_frames(world: World) -> None:
    client = Client(world)
    client.join("room", token=world.token("room"))
    world.hub.deliver([("room", "message", b'{"a": 1}')])
    world.hub.deliver([("room", "update-node", b"Hello from plugin")])
    assert client.received() == [
        (TEXT, [None, None, "room", "message", {"a": 1}]),
        (BINARY, bytes((2, 4, 11)) + b"roomupdate-nodeHello from plugin"),
    ]


def test_a_binary_push_is_published_raw(world: World) -> None:
    client = Client(world)
    client.join("room", token=world.token("room"))
    client.send_binary(bytes((0, 1, 1, 4, 6)) + b"12roomupload" + b"\x00\x01\xff")
    assert world.redis.published[-1] == (b"from:room:upload", b"\x00\x01\xff")
    assert client.received() == [(TEXT, reply("1", "2", "room", "ok", {}))]


def test_user_token_in_the_query_is_the_join_fallback(world: World) -> None:
    client = Client(world, "?vsn=2.0.0&userToken=" + world.token("room"))
    assert client.join("room")[0][1][4]["status"] == "ok"


def test_the_phoenix_subprotocol_carries_a_token(world: World) -> None:
    client = Client(world, protocols=["phoenix", offered(world.token("room"))])
    assert "sec-websocket-protocol: phoenix" in client.handshake.lower()
    assert client.join("room")[0][1][4]["status"] == "ok"


def test_an_idle_socket_is_closed_with_4000_and_leaves(world: World) -> None:
    client = Client(world)
    client.join("room", token=world.token("room"))
    world.clock.advance(IDLE - 1)
    client.send_text([None, "9", "phoenix", "heartbeat", {}])  # activity resets the timer
    world.clock.advance(IDLE - 1)
    assert client.close_code() is None
    world.clock.advance(1)
    assert client.close_code() == CLOSE_IDLE
    assert world.hub.members == {}


def test_a_heartbeat_waiting_through_a_stall_of_the_process_keeps_its_socket(world: World) -> None:
    """
    The reactor runs due timers before it reads: after the process itself stalled past
    the idle timeout, the timer fires first, and the heartbeat waiting in the socket is
    only read in the poll after it. The socket is not closed for that.
    """
    client = Client(world)
    client.join("room", token=world.token("room"))
    world.clock.advance(IDLE + 5)  # the timer fires 5 s late
    assert client.close_code() is None
    client.send_text([None, "9", "phoenix", "heartbeat", {}])  # read in the next poll
    world.clock.advance(IDLE - 1)
    assert client.close_code() is None
    world.clock.advance(1)  # silent for the whole timeout since
    assert client.close_code() == CLOSE_IDLE


def test_a_silent_socket_is_still_closed_after_a_stall_of_the_process(world: World) -> None:
    client = Client(world)
    client.join("room", token=world.token("room"))
    world.clock.advance(IDLE + 5)
    world.clock.advance(STALLED_BY)
    assert client.close_code() == CLOSE_IDLE
    assert world.hub.members == {}


@pytest.mark.parametrize("vsn", [V1, V2])
def test_a_frame_for_a_lone_member_is_the_bytes_its_burst_would_be(world: World, vsn: str) -> None:
    client = Client(world, f"?vsn={vsn}")
    payload = b'{"aircraft":[{"icao24":"39c4a1"}]}'
    burst = Burst([Broadcast("streaming-c1", "new-data", payload, True)])
    head, _, tail = splice_parts(None, "streaming-c1", "new-data", b"", vsn)
    frame = client.protocol.direct.lone_text_frame(head, payload, tail)
    assert frame is not None and frame == client.protocol.framed(burst)
    client.protocol.pauseProducing()  # bytes now count toward the budget: the usual path does that
    assert client.protocol.direct.lone_text_frame(head, payload, tail) is None


def test_a_message_over_the_limit_closes_with_1009(world: World) -> None:
    client = Client(world)
    client.join("room", token=world.token("room"))
    client.send_text(b'["1","2","room","ev","' + b"x" * MAX_MESSAGE + b'"]')
    assert client.close_code() == 1009
    client.protocol.dataReceived(client_frame((1009).to_bytes(2, "big"), CLOSE))  # the client's close reply
    assert client.transport.disconnecting
    client.protocol.connectionLost(Failure(ConnectionDone()))
    assert world.hub.members == {}


def test_a_flood_past_the_budget_is_parsed_no_further_than_its_close(world: World) -> None:
    """
    One read of thousands of pings past the message budget: the socket is closed with
    1008 at the end of the grace, and the rest of the read is dropped unparsed (Autobahn
    would parse every frame of it, 14 us each, while waiting for the client's close).
    """
    factory = PhoenixFactory(hub=world.hub, clock=world.clock, message_rate=1, message_burst=5)
    client = Client(world, factory=factory)
    client.protocol.dataReceived(client_frame(b"", PING) * 5000)
    pongs = [op for op, _ in server_frames(client.transport.value())].count(PONG)
    assert pongs == 5
    assert client.close_code() == CLOSE_POLICY
    assert client.transport.disconnecting
    registry = factory.metrics.registry
    # the grace's pings were parsed and left unanswered; the one past it closed the socket
    assert registry.get_sample_value("tangram_channel_pongs_skipped_total") == RATE_GRACE
    assert registry.get_sample_value("tangram_channel_rate_clients_closed_total") == 1
    client.protocol.dataReceived(client_frame(b"", PING) * 100)  # what TLS may still hand over
    assert registry.get_sample_value("tangram_channel_pongs_skipped_total") == RATE_GRACE


def test_a_client_flooding_instead_of_answering_a_close_is_dropped(world: World) -> None:
    """
    Once the service has sent a close (here 1009), it waits for the client's close
    frame; frames past the budget meanwhile drop the connection, and are not parsed.
    """
    factory = PhoenixFactory(hub=world.hub, clock=world.clock, max_message_size=MAX_MESSAGE, message_rate=1, message_burst=5)
    client = Client(world, factory=factory)
    client.send_text(b'["1","2","room","ev","' + b"x" * MAX_MESSAGE + b'"]')
    assert client.close_code() == 1009
    assert not client.transport.disconnecting  # waiting for the close reply
    client.protocol.dataReceived(client_frame(b"", PING) * 5000)
    assert client.transport.disconnecting
    assert [op for op, _ in server_frames(client.transport.value())] == [CLOSE]  # no second close, no pong
    registry = factory.metrics.registry
    assert registry.get_sample_value("tangram_channel_pongs_skipped_total") == RATE_GRACE
    assert registry.get_sample_value("tangram_channel_rate_clients_closed_total") == 1


def test_a_client_that_stops_reading_is_closed_with_1008_and_leaves(world: World) -> None:
    client = Client(world)
    client.join("room", token=world.token("room"))
    client.protocol.pauseProducing()
    big = b'{"pad":"' + b"x" * 8000 + b'"}'
    for _ in range(MAX_BUFFER // len(big) + 1):
        world.hub.deliver([("room", "message", big)])
    assert client.close_code() == CLOSE_POLICY
    assert [op for op, _ in server_frames(client.transport.value())][-1] == CLOSE  # nothing after the close
    assert world.hub.members == {}
    registry = client.protocol.factory.metrics.registry
    assert registry.get_sample_value("tangram_channel_slow_clients_closed_total") == 1


def test_the_buffer_bound_resets_when_the_client_reads_again(world: World) -> None:
    client = Client(world)
    client.join("room", token=world.token("room"))
    big = b'{"pad":"' + b"x" * 8000 + b'"}'
    for _ in range(3):
        client.protocol.pauseProducing()
        for _ in range(MAX_BUFFER // len(big) - 1):
            world.hub.deliver([("room", "message", big)])
        client.protocol.resumeProducing()
    assert client.close_code() is None


PAD = b'{"pad":"' + b"x" * 8000 + b'"}'


def test_a_join_backlog_counts_toward_the_send_buffer_and_past_it_closes_with_1008(world: World) -> None:
    """Broadcasts held for a join Redis has not confirmed are bytes held for the client."""
    client = Client(world)
    world.redis.mode = "hold"  # the join waits on presence
    client.send_text(["1", "1", "room", "phx_join", {"token": world.token("room")}])
    for _ in range(MAX_BUFFER // len(PAD) + 1):
        world.hub.deliver([("room", "message", PAD)])
    assert client.close_code() == CLOSE_POLICY
    assert world.hub.members == {}
    world.redis.release()
    world.settle()
    assert world.hub.members == {}
    assert world.redis.presence("room") == {}


def test_a_released_join_backlog_no_longer_counts(world: World) -> None:
    """Once the join reply has gone out, its backlog is sent and its bytes are not held twice."""
    client = Client(world)
    for _ in range(3):
        world.redis.mode = "hold"
        client.send_text(["1", "1", "room", "phx_join", {"token": world.token("room")}])
        for _ in range(MAX_BUFFER // len(PAD) - 1):
            world.hub.deliver([("room", "message", PAD)])
        world.redis.release()
        world.settle()
        events = [frame[3] for op, frame in client.received() if op == TEXT]
        assert events[-(MAX_BUFFER // len(PAD) - 1) :] == ["message"] * (MAX_BUFFER // len(PAD) - 1)
    assert client.close_code() is None


# A client that pushes and never reads what it is answered

UNMATCHED = [None, "r" * 60, "t" * 200, "e", {}]  # answered "unmatched topic", the topic and ref echoed


def unread_world_client(world: World) -> Client:
    """A client with room for more than the replies that pause its reads, not reading."""
    factory = PhoenixFactory(
        hub=world.hub, clock=world.clock, idle_timeout=IDLE, max_send_buffer=16 * OWN_BYTES_BEFORE_READ_PAUSE
    )
    client = Client(world, factory=factory)
    client.join("room", token=world.token("room"))
    client.protocol.pauseProducing()  # the transport is full: what is written now waits
    return client


def push_until_paused(client: Client) -> int:
    """Push until the service stops reading the client; how many pushes that took."""
    pushes = 0
    while client.transport.producerState != "paused":
        assert pushes < 10_000, "10,000 unread replies and the client is still read"
        client.send_text(UNMATCHED)
        pushes += 1
    return pushes


def test_a_client_that_does_not_read_its_replies_is_read_no_further_until_it_does(world: World) -> None:
    """
    Replies wait behind a full transport: past 64 KiB of them the socket is not read
    (TCP then stops the client), and once the transport has drained it is read again.
    """
    client = unread_world_client(world)
    client.received()
    pushes = push_until_paused(client)
    written = len(client.transport.value())
    assert OWN_BYTES_BEFORE_READ_PAUSE < written <= OWN_BYTES_BEFORE_READ_PAUSE + written // pushes
    expected = reply(None, UNMATCHED[1], UNMATCHED[2], "error", {"reason": "unmatched topic"})
    assert client.received() == [(TEXT, expected)] * pushes
    registry = client.protocol.factory.metrics.registry
    assert registry.get_sample_value("tangram_channel_reads_paused_unread_total") == 1
    client.protocol.resumeProducing()  # the client read everything
    assert client.transport.producerState == "producing"
    client.protocol.pauseProducing()  # full again: the count starts from nothing
    assert push_until_paused(client) == pushes
    assert registry.get_sample_value("tangram_channel_reads_paused_unread_total") == 2
    assert client.close_code() is None


def test_broadcasts_waiting_for_a_slow_reader_do_not_stop_its_reads(world: World) -> None:
    """What a slow reader is sent by others is bounded by max_send_buffer alone: its pushes are still read."""
    client = unread_world_client(world)
    for _ in range(4 * OWN_BYTES_BEFORE_READ_PAUSE // len(PAD)):
        world.hub.deliver([("room", "message", PAD)])
    client.send_text([None, "9", "phoenix", "heartbeat", {}])
    assert client.transport.producerState == "producing"
    assert client.close_code() is None


def test_a_client_not_read_for_its_unread_replies_is_closed_after_the_idle_timeout(world: World) -> None:
    """Not read, it sends no heartbeat we would see: it is closed (1008) once it has not read for the idle timeout."""
    client = unread_world_client(world)
    push_until_paused(client)  # its last message read is the one that paused it
    world.clock.advance(IDLE - 1)
    assert client.close_code() is None
    world.clock.advance(1)
    assert client.close_code() == CLOSE_POLICY
    assert world.hub.members == {}
    registry = client.protocol.factory.metrics.registry
    assert registry.get_sample_value("tangram_channel_slow_clients_closed_total") == 1


def test_the_idle_timeout_of_an_unread_client_counts_from_when_its_reads_stopped(world: World) -> None:
    """A presence state too large to wait stops its reads 10 s after its last heartbeat: 10 s more."""
    client = unread_world_client(world)
    client.send_text([None, "9", "phoenix", "heartbeat", {}])
    world.clock.advance(10)
    client.protocol.send_frame(b'{"state":"' + b"x" * OWN_BYTES_BEFORE_READ_PAUSE + b'"}', False)
    assert client.transport.producerState == "paused"
    world.clock.advance(IDLE - 10)
    assert client.close_code() is None
    world.clock.advance(10)
    assert client.close_code() == CLOSE_POLICY


def test_a_client_that_reads_its_replies_in_time_stays(world: World) -> None:
    client = unread_world_client(world)
    push_until_paused(client)
    world.clock.advance(IDLE - 1)
    client.protocol.resumeProducing()
    client.send_text([None, "9", "phoenix", "heartbeat", {}])
    world.clock.advance(IDLE - 1)
    assert client.close_code() is None
