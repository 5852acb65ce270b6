"""
Messages still arriving: each socket holds the first 64 KiB of its message on its own,
the rest comes from one pool for the process (``max_partial_message_bytes``), and a
socket whose message the pool cannot hold is closed with 1013. The pool alone, then the
protocol on a StringTransport (real Autobahn framing, a Clock).
"""

from __future__ import annotations

import zlib

import pytest
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure

from tangram_channel.deflate import Compression
from tangram_channel.partials import OWN_BYTES, PartialMessages
from tangram_channel.protocol import CLOSE_TRY_AGAIN, PhoenixFactory

from .fakes import World, reply
from .live import frame
from .test_compression import CHROME_OFFER
from .test_protocol_memory import CLOSE, IDLE, TEXT, Client, server_frames

KIB = 1024
CONTINUATION = 0x0
POOL = 256 * KIB


def test_a_message_within_a_sockets_own_bytes_draws_nothing_from_the_pool() -> None:
    pool = PartialMessages(POOL)
    message = pool.message()
    assert message.take(OWN_BYTES - 1) and message.take(1)
    assert pool.bytes == 0
    assert message.take(10)
    assert pool.bytes == 10


def test_what_a_message_drew_goes_back_to_the_pool_when_it_ends() -> None:
    pool = PartialMessages(POOL)
    message = pool.message()
    assert message.take(OWN_BYTES + 100 * KIB)
    assert pool.bytes == 100 * KIB
    message.end()
    assert pool.bytes == 0
    assert message.take(OWN_BYTES)  # the next message has its own bytes again
    assert pool.bytes == 0


def test_a_piece_the_pool_cannot_hold_is_refused_whole_and_small_messages_still_pass() -> None:
    pool = PartialMessages(POOL)
    first, second, third = pool.message(), pool.message(), pool.message()
    assert first.take(OWN_BYTES + POOL - 10)
    assert not second.take(OWN_BYTES + 11)
    assert pool.bytes == POOL - 10  # nothing of the refused piece was taken
    assert second.take(OWN_BYTES + 10)  # what is left still serves
    assert pool.bytes == POOL
    assert third.take(OWN_BYTES)  # a socket's own bytes never wait on the pool
    assert not third.take(1)
    first.end()
    assert third.take(1)


def test_a_limit_of_zero_bounds_nothing() -> None:
    pool = PartialMessages(0)
    assert pool.message().take(OWN_BYTES + (1 << 30))
    assert pool.bytes == 1 << 30


# on the protocol

MAX_MESSAGE = 1024 * KIB
UNMATCHED_TOPIC = reply(None, "1", "nowhere", "error", {"reason": "unmatched topic"})


@pytest.fixture
def world() -> World:
    return World()


def factory_with_pool(world: World, pool: int = POOL) -> PhoenixFactory:
    return PhoenixFactory(
        hub=world.hub,
        clock=world.clock,
        idle_timeout=IDLE,
        max_message_size=MAX_MESSAGE,
        max_partial_message_bytes=pool,
        compression=Compression(),
    )


def push_of(size: int) -> bytes:
    """A push of ``size`` bytes to a topic the socket has not joined (answered "unmatched topic")."""
    head = b'[null,"1","nowhere","big",{"pad":"'
    return head + b"x" * (size - len(head) - 3) + b'"}]'


def frame_head(size: int, opcode: int = TEXT, fin: bool = True) -> bytes:
    """The header of a masked frame of ``size`` bytes, with a zero mask (the payload goes as it is)."""
    first = (0x80 if fin else 0) | opcode
    if size < 1 << 16:
        return bytes((first, 0x80 | 126)) + size.to_bytes(2, "big") + b"\0\0\0\0"
    return bytes((first, 0x80 | 127)) + size.to_bytes(8, "big") + b"\0\0\0\0"


def start_message(client: Client, message: bytes, sent: int) -> None:
    """Send the head of a frame carrying ``message`` and its first ``sent`` bytes."""
    client.protocol.dataReceived(frame_head(len(message)) + message[:sent])


def samples(factory: PhoenixFactory) -> tuple[float | None, float | None]:
    registry = factory.metrics.registry
    return (
        registry.get_sample_value("tangram_channel_partial_message_bytes"),
        registry.get_sample_value("tangram_channel_partial_message_closes_total"),
    )


def test_a_message_arriving_holds_the_pool_past_its_own_bytes_until_it_is_handled(world: World) -> None:
    factory = factory_with_pool(world)
    client = Client(world, factory=factory)
    message = push_of(200 * KIB)
    start_message(client, message, 100 * KIB)
    assert samples(factory) == (100 * KIB - OWN_BYTES, 0)
    client.protocol.dataReceived(message[100 * KIB :])
    assert client.received() == [(TEXT, UNMATCHED_TOPIC)]
    assert samples(factory) == (0, 0)


def test_a_socket_whose_message_the_pool_cannot_hold_is_closed_with_1013_and_its_bytes_freed(world: World) -> None:
    """The pool is shared: the socket that would pass it is closed; the others finish their messages."""
    factory = factory_with_pool(world)
    holder, refused, small = (Client(world, factory=factory) for _ in range(3))
    held = push_of(OWN_BYTES + POOL)
    start_message(holder, held, OWN_BYTES + POOL - 10 * KIB)
    big = push_of(OWN_BYTES + 20 * KIB)
    start_message(refused, big, 40 * KIB)
    refused.protocol.dataReceived(big[40 * KIB : OWN_BYTES + 11 * KIB])  # 11 KiB past its own: too much
    assert refused.close_code() == CLOSE_TRY_AGAIN
    assert refused.transport.disconnecting
    assert samples(factory) == (POOL - 10 * KIB, 1)
    assert refused.protocol.message_data == []  # freed now, not when the connection goes
    refused.protocol.dataReceived(big[OWN_BYTES + 11 * KIB :])  # what TLS may still hand over
    assert [op for op, _ in server_frames(refused.transport.value())] == [CLOSE]  # nothing handled after the close
    # a message within a socket's own bytes never waits on the pool
    small.send_text(push_of(OWN_BYTES - 100))
    assert small.received() == [(TEXT, UNMATCHED_TOPIC)]
    holder.protocol.dataReceived(held[OWN_BYTES + POOL - 10 * KIB :])
    assert holder.received() == [(TEXT, UNMATCHED_TOPIC)]
    assert samples(factory) == (0, 1)


def test_pieces_of_a_fragmented_message_add_up(world: World) -> None:
    """The pool counts the message, not the frame: fragments past 64 KiB together draw from it."""
    factory = factory_with_pool(world, pool=100 * KIB)
    client = Client(world, factory=factory)
    message = push_of(200 * KIB)
    pieces = [message[i : i + 50 * KIB] for i in range(0, len(message), 50 * KIB)]
    for n, piece in enumerate(pieces):
        head = frame_head(len(piece), TEXT if n == 0 else CONTINUATION, fin=n == len(pieces) - 1)
        client.protocol.dataReceived(head + piece)
        if n == 2:  # 150 KiB arrived: 86 KiB drawn
            assert samples(factory) == (150 * KIB - OWN_BYTES, 0)
    assert client.close_code() == CLOSE_TRY_AGAIN  # the fourth piece needed 136 KiB of a 100 KiB pool
    assert samples(factory) == (0, 1)


def test_a_socket_closed_mid_message_gives_its_bytes_back(world: World) -> None:
    """Bytes of a message that never ends are not a message: the idle timer still runs, and the close frees them."""
    factory = factory_with_pool(world)
    client = Client(world, factory=factory)
    start_message(client, push_of(200 * KIB), 150 * KIB)
    assert samples(factory)[0] == 150 * KIB - OWN_BYTES
    world.clock.advance(IDLE)
    assert client.close_code() == 4000
    client.protocol.connectionLost(Failure(ConnectionDone()))
    assert samples(factory) == (0, 0)


def test_a_compressed_message_draws_what_it_inflates_to(world: World) -> None:
    """What is kept of a compressed message is its inflated bytes: those are what count."""
    factory = factory_with_pool(world)
    client = Client(world, factory=factory, extensions=CHROME_OFFER)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    piece = compressor.compress(push_of(200 * KIB)[: 100 * KIB]) + compressor.flush(zlib.Z_SYNC_FLUSH)
    assert len(piece) < 2 * KIB
    client.protocol.dataReceived(frame(TEXT, piece, fin=False, rsv=4))
    assert samples(factory) == (100 * KIB - OWN_BYTES, 0)
    client.protocol.connectionLost(Failure(ConnectionDone()))
    assert samples(factory) == (0, 0)
