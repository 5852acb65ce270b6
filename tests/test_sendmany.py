"""
``SendMany`` on real sockets: what each socket took, whatever the others did.
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
from array import array
from collections.abc import Iterator

import pytest

from tangram_channel.fanout import Fanout
from tangram_channel.frames import Broadcast, Burst
from tangram_channel import sendmany
from tangram_channel.sendmany import SendMany

from .e2e import captured_log


@pytest.fixture
def sender() -> Iterator[SendMany]:
    many = SendMany(capacity=4)
    yield many
    many.close()


def socket_pairs(count: int) -> list[tuple[socket.socket, socket.socket]]:
    """``(ours, theirs)`` stream pairs; ours is non-blocking, as the reactor's are."""
    pairs = []
    for _ in range(count):
        ours, theirs = socket.socketpair()
        ours.setblocking(False)
        pairs.append((ours, theirs))
    return pairs


def read_all(sock: socket.socket) -> bytes:
    sock.setblocking(False)
    data = b""
    while True:
        try:
            chunk = sock.recv(1 << 20)
        except BlockingIOError:
            return data
        if not chunk:
            return data
        data += chunk


def test_every_socket_gets_the_bytes_in_chunks_of_capacity(sender):
    """Ten sockets with a capacity of four: three io_submit calls, each answer at its socket's place."""
    pairs = socket_pairs(10)
    pairs[6][1].close()
    sent = sender.send([ours.fileno() for ours, _ in pairs], b"frame")
    assert sent[:6] + sent[7:] == [5] * 9
    assert sent[6] in (-errno.EPIPE, -errno.ECONNRESET)
    assert [read_all(theirs) for index, (_, theirs) in enumerate(pairs) if index != 6] == [b"frame"] * 9


def test_a_full_socket_takes_part_or_nothing_and_its_neighbours_get_everything(sender):
    """
    A reader that does not read: its socket takes what fits, then -EAGAIN, as ``send``
    would answer; the results stay matched to their sockets.
    """
    pairs = socket_pairs(3)
    stalled = pairs[1][0]
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    data = os.urandom(50_000)
    first = sender.send([ours.fileno() for ours, _ in pairs], data)
    assert first[0] == first[2] == len(data)
    assert 0 < first[1] < len(data)
    second = sender.send([ours.fileno() for ours, _ in pairs], b"next")
    assert second == [4, -errno.EAGAIN, 4]
    assert read_all(pairs[0][1]) == read_all(pairs[2][1]) == data + b"next"
    assert read_all(pairs[1][1]) == data[: first[1]]


def test_a_closed_peer_answers_an_error_and_the_rest_are_sent(sender):
    pairs = socket_pairs(3)
    pairs[1][1].close()
    sent = sender.send([ours.fileno() for ours, _ in pairs], b"frame")
    assert sent[0] == sent[2] == 5
    assert sent[1] in (-errno.EPIPE, -errno.ECONNRESET)
    assert read_all(pairs[0][1]) == read_all(pairs[2][1]) == b"frame"


def test_sockets_after_a_bad_descriptor_are_not_tried_and_say_so(sender):
    """io_submit stops at a descriptor it cannot take: those after it answer 0 and are left untouched."""
    pairs = socket_pairs(3)
    closed = socket.socket()
    bad = closed.fileno()
    closed.close()
    sent = sender.send([pairs[0][0].fileno(), bad, pairs[2][0].fileno()], b"frame")
    assert sent == [5, 0, 0]
    assert read_all(pairs[0][1]) == b"frame"
    assert read_all(pairs[2][1]) == b""


def test_a_closed_sender_refuses_to_send_and_closes_once():
    many = SendMany(capacity=4)
    many.close()
    many.close()
    ours, _ = socket_pairs(1)[0]
    with pytest.raises(ValueError):
        many.send([ours.fileno()], b"frame")


def test_open_answers_none_and_says_why_when_the_kernel_refuses():
    """More events than the kernel allows one context: the caller falls back to one socket at a time."""
    with captured_log() as lines:
        assert SendMany.open(capacity=2**31 - 1) is None
    assert any("writing to each socket in turn" in line for line in lines)


def test_a_refused_batch_is_reported_once_and_tried_nowhere(sender):
    """A first descriptor the kernel refuses: nothing is sent, every caller writes the usual way, one warning."""
    pairs = socket_pairs(2)
    closed = socket.socket()
    bad = closed.fileno()
    closed.close()
    with captured_log() as lines:
        assert sender.send([bad, pairs[1][0].fileno()], b"frame") == [0, 0]
        assert sender.send([bad], b"frame") == [0]
    assert len([line for line in lines if "io_submit refused a batch (Bad file descriptor)" in line]) == 1
    assert read_all(pairs[1][1]) == b""


def test_a_context_that_fails_while_in_use_reports_its_writes_unknown_and_is_not_used_again(sender):
    """
    io_getevents refusing (it never has here, but a kernel may): the writes io_submit took
    are unknown (None) rather than an exception through the caller, and later sends try nothing.
    """
    real_syscall = sender._syscall
    sender._ring = None  # as on a kernel whose ring is not read: completions come from io_getevents

    def getevents_fails(number, *args):
        if number.value == sender._getevents:
            ctypes.set_errno(errno.EINVAL)
            return -1
        return real_syscall(number, *args)

    sender._syscall = getevents_fails
    pairs = socket_pairs(6)
    fds = [ours.fileno() for ours, _ in pairs]
    with captured_log() as lines:
        assert sender.send(fds, b"frame") == [None] * 4 + [0, 0]  # capacity 4: the second chunk is not tried
        assert sender.send(fds[:1], b"frame") == [0]
    assert sender.broken
    assert len([line for line in lines if "Linux AIO failed (io_getevents: Invalid argument)" in line]) == 1
    assert [read_all(theirs) for _, theirs in pairs] == [b"frame"] * 4 + [b""] * 2


def test_completions_are_read_off_the_ring_past_its_end_and_the_kernel_takes_more(sender):
    """
    The ring (a hundred-odd events for a context of four) wraps many times over: every
    batch's answers stay matched to their sockets, whole or not, and io_submit keeps
    taking batches, so the kernel sees the events read though no io_getevents ran.
    """
    assert sender._ring is not None  # Linux's ring, as this module knows it
    size = sender._ring[sendmany._RING_NR]
    pairs = socket_pairs(3)
    stalled = pairs[1][0]
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    fds = [ours.fileno() for ours, _ in pairs]
    first = sender.send(fds, os.urandom(50_000))
    assert first[0] == first[2] == 50_000 and 0 < first[1] < 50_000
    for n in range(3 * size):
        data = b"%d" % n
        assert sender.send(fds, data) == [len(data), -errno.EAGAIN, len(data)]
        # None: all of each; a list where a batch's answers wrapped past the ring's end
        assert sender.send_each([fds[0], fds[2]], [data, data * 2]) in (None, [len(data), 2 * len(data)])
        assert read_all(pairs[0][1])[-2 * len(data) :] == data * 2
        assert read_all(pairs[2][1])[-3 * len(data) :] == data * 3
    assert not sender.broken


def test_completions_the_ring_does_not_show_are_collected_by_io_getevents(sender):
    """
    A ring that shows no completion after io_submit (a kernel that completes elsewhere):
    io_getevents collects them, the answers are right, and the real ring reads on after it.
    """
    pairs = socket_pairs(3)
    fds = [ours.fileno() for ours, _ in pairs]
    real_ring = sender._ring
    assert real_ring is not None
    real_getevents = sender._io_getevents
    calls = []
    sender._io_getevents = lambda count: calls.append(count) or real_getevents(count)
    sender._ring = memoryview(array("I", [0, real_ring[sendmany._RING_NR], 0, 0, 0, 0, 0, 32]))  # head = tail
    assert sender.send_each(fds, [b"a", b"bb", b"ccc"]) is None
    assert calls == [3]
    sender._ring = real_ring
    assert sender.send_each(fds, [b"d", b"ee", b"fff"]) is None
    assert calls == [3]  # off the ring again
    assert [read_all(theirs) for _, theirs in pairs] == [b"ad", b"bbee", b"cccfff"]
    assert not sender.broken


def test_only_a_mapped_aio_ring_is_read(sender):
    """
    The ring is read only where the memory map shows it: any other address (a bytes
    object's, or none mapped at all) is left alone, where reading could crash the process.
    """
    assert sendmany._maps_ring(sender._context)
    assert sendmany._ring_header(id(b"not a ring")) is None
    assert sendmany._ring_header(8) is None  # the first page is never mapped


def test_send_each_writes_each_socket_its_own_buffer(sender):
    """Six sockets, a buffer each, capacity four: every socket gets its own bytes, counted at its place."""
    pairs = socket_pairs(6)
    datas = [b"frame-%d" % n * (n + 1) for n in range(6)]
    sent = sender.send_each([ours.fileno() for ours, _ in pairs], datas)
    assert sent == [len(data) for data in datas]  # two chunks: the answers of both, in order
    assert [read_all(theirs) for _, theirs in pairs] == datas
    assert sender.send_each([ours.fileno() for ours, _ in pairs[:4]], datas[:4]) is None  # one chunk, all taken
    assert [read_all(theirs) for _, theirs in pairs[:4]] == datas[:4]


@pytest.mark.parametrize("data", [b"", b"x", b"\0" * 7, bytes(range(256)) * 300])
def test_a_buffer_address_from_id_is_where_ctypes_finds_it(data: bytes) -> None:
    """The cheap address (id plus an offset) names the very bytes the kernel is to read."""
    assert sendmany._ID_OFFSET is not None  # CPython: the offset was found
    address = sendmany._address(data)
    assert address == sendmany._address_from_ctypes(data)
    assert ctypes.string_at(address, len(data)) == data
    assert sendmany._addresses([b"other", data]).tolist() == [sendmany._address_from_ctypes(b"other"), address]


class LoneSocket:
    """A ``DirectOutbox`` on a real socket whose bursts are one frame of bytes; counts its plain writes."""

    vsn = framing = "2.0.0"

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.plain_writes = 0

    @property
    def direct(self) -> LoneSocket:
        return self

    def framed(self, burst: Burst) -> bytes:
        return burst.prepared.setdefault(self.vsn, b"".join(b.payload for b in burst.broadcasts))

    def direct_fd(self) -> int:
        return self.sock.fileno()

    def write_now(self, frame: bytes) -> None:
        self.plain_writes += 1
        self.sock.send(frame)

    def wrote_directly(self, frame: bytes, sent: int | None) -> None:
        assert sent == len(frame)

    def send_burst(self, burst: Burst) -> None:
        self.write_now(self.framed(burst))


def burst(data: bytes) -> Burst:
    return Burst([Broadcast("t", "e", data, True)])


def test_held_lone_writes_go_out_together_and_each_socket_in_order(monkeypatch):
    """
    Between hold_lone_writes and flush, bursts to one socket wait and leave in one
    io_submit; a second burst for a socket already waiting, or a burst to several,
    first writes what waited, so every socket reads its frames in order.
    """
    fanout = Fanout(batched=True)
    fanout.startService()
    assert fanout.sender is not None
    calls = []
    send_each = fanout.sender.send_each
    monkeypatch.setattr(fanout.sender, "send_each", lambda fds, datas: calls.append(len(fds)) or send_each(fds, datas))
    pairs = socket_pairs(3)
    a, b, c = (LoneSocket(ours) for ours, _ in pairs)
    try:
        fanout.hold_lone_writes()
        fanout.send([a], burst(b"a1"))
        fanout.send([b], burst(b"b1"))
        assert calls == [] and [read_all(theirs) for _, theirs in pairs] == [b"", b"", b""]
        fanout.send([a], burst(b"a2"))  # a's first must go first
        assert calls == [2]
        fanout.send([c], burst(b"c1"))
        fanout.send([b, c], burst(b"all"))  # several: what waited goes first
        fanout.send([c], burst(b"c2"))
        fanout.flush()
        fanout.send([c], burst(b"c3"))  # not held any more: at once
        assert calls == [2, 2]
        assert [read_all(theirs) for _, theirs in pairs] == [b"a1a2", b"b1all", b"c1allc2c3"]
        assert (a.plain_writes, b.plain_writes, c.plain_writes) == (0, 0, 2)  # c2 alone at flush, c3 after
    finally:
        fanout.stopService()
