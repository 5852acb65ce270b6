"""
One frame to many sockets, or a frame each to many, in one system call.

A broadcast writes the same bytes to every member's socket. Sent one ``send()`` at a
time, each call also wakes the reading process, which on a busy machine then runs
between our calls, reads its one frame, sleeps and is woken again by the next: the
two processes take turns hundreds of times per broadcast. Linux AIO's ``io_submit``
takes all the writes at once; a socket write completes inside the call, so the
readers wake once, after it, and find everything there.

Only for non-blocking stream sockets: ``io_submit`` runs each write as ``write()``
would, so a full buffer answers ``-EAGAIN`` and the caller queues the rest as usual.
Linux on x86-64, arm64 and riscv64; elsewhere ``SendMany.open`` answers None and the
caller sends one socket at a time. A context that fails while in use (``io_getevents``
refusing, or a write not completed within a second) is ``broken``: the writes it may or
may not have made are reported unknown, and the caller goes on without it.

The completions are read from the context's ring, which the kernel maps into the
process (the context's id is its address), as ``io_getevents`` would copy them: a
socket write completes inside ``io_submit``, so they are there when it returns, and
each batch makes one system call instead of two (``benchmarks/sendmany.py``: 1.6-1.9 us
less CPU a call to one socket). A ring that the process's memory map does not show at that address,
or whose header is not the one described here, is not read: ``io_getevents`` it is.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import sys
from array import array
from collections.abc import Sequence
from typing import Literal

from twisted.logger import Logger

log = Logger()

# io_setup, io_destroy, io_submit, io_getevents
_SYSCALLS = {
    "x86_64": (206, 207, 209, 208),
    "aarch64": (0, 1, 2, 4),
    "riscv64": (0, 1, 2, 4),
}
_IOCB_CMD_PWRITE = 1
# struct iocb is eight 64-bit words (little-endian layout): the ones set here are
# aio_data (0), aio_lio_opcode | aio_fildes << 32 (2), aio_buf (3), aio_nbytes (4)
_IOCB_WORDS = 8
_IOCB_BYTES = 8 * _IOCB_WORDS
# struct io_event is four: data (0), obj (1), res (2), res2 (3)
_EVENT_WORDS = 4
# struct aio_ring, eight 32-bit words: id, nr (its events), head, tail, magic,
# compat_features, incompat_features, header_length; its io_events follow
_RING_NR, _RING_HEAD, _RING_TAIL, _RING_MAGIC, _RING_INCOMPAT, _RING_HEADER_LENGTH = 1, 2, 3, 4, 6, 7
_RING_HEADER_WORDS = 8
_AIO_RING_MAGIC = 0xA10A10A1


class SendMany:
    """A Linux AIO context for sending one buffer to many sockets; ``capacity`` per call."""

    def __init__(self, capacity: int = 512) -> None:
        machine = platform.machine()
        if not sys.platform.startswith("linux") or sys.byteorder != "little" or machine not in _SYSCALLS:
            raise OSError(errno.ENOSYS, f"Linux AIO is not supported here ({sys.platform}, {machine})")
        self._setup, self._destroy, self._submit, self._getevents = _SYSCALLS[machine]
        self._syscall = ctypes.CDLL(None, use_errno=True).syscall
        self._syscall.restype = ctypes.c_long
        self.capacity = capacity
        self.broken = False
        self._refusal_logged = False
        self._timeout = array("q", [1, 0])  # struct timespec: how long io_getevents may wait
        context = ctypes.c_ulong(0)
        if self._syscall(ctypes.c_long(self._setup), ctypes.c_long(capacity), ctypes.byref(context)) < 0:
            code = ctypes.get_errno()
            raise OSError(code, f"io_setup: {os.strerror(code)}")
        self._context: int | None = context.value
        self._iocbs = array("Q", bytes(_IOCB_BYTES * capacity))
        self._iocbs[0::_IOCB_WORDS] = array("Q", range(capacity))  # aio_data: the slot, to match replies
        first = self._iocbs.buffer_info()[0]
        self._pointers = array("Q", range(first, first + _IOCB_BYTES * capacity, _IOCB_BYTES))
        self._events = array("q", bytes(8 * _EVENT_WORDS * capacity))
        # the arguments every call passes, made once: a ctypes object costs as much as the call
        self._submit_number, self._getevents_number = ctypes.c_long(self._submit), ctypes.c_long(self._getevents)
        self._context_argument = ctypes.c_ulong(context.value)
        self._iocb_pointers = ctypes.c_void_p(self._pointers.buffer_info()[0])
        self._events_pointer = ctypes.c_void_p(self._events.buffer_info()[0])
        self._timeout_pointer = ctypes.c_void_p(self._timeout.buffer_info()[0])
        self._ring: memoryview | None = _ring_header(context.value)
        self._ring_events: memoryview | None = None
        if self._ring is not None:
            size = 4 * _RING_HEADER_WORDS + 8 * _EVENT_WORDS * self._ring[_RING_NR]
            self._ring_events = _words_at(context.value, size, "q")

    @classmethod
    def open(cls, capacity: int = 512) -> SendMany | None:
        """A sender, or None (logged) where Linux AIO cannot be had: unsupported, or aio-max-nr reached."""
        try:
            return cls(capacity)
        except OSError as e:
            log.info("writing to each socket in turn: {why}", why=e.strerror)
            return None

    def send(self, fds: Sequence[int], data: bytes) -> list[int | None] | None:
        """
        Write ``data`` to each non-blocking socket in ``fds``. Returns None if every socket
        took it all (the usual case: the caller has no list to go through), else, in
        order, the bytes each took: all, some, 0 if it was not tried, ``-errno``
        (``-EAGAIN`` when full), or None if it is not known (the context broke with the
        write submitted).
        """
        return self._send(fds, array("Q", [_address(data)]) * len(fds), array("Q", [len(data)]) * len(fds))

    def send_each(self, fds: Sequence[int], datas: Sequence[bytes]) -> list[int | None] | None:
        """Write ``datas[i]`` to ``fds[i]``, each socket once at most; returns as ``send`` does."""
        return self._send(fds, _addresses(datas), array("Q", map(len, datas)))

    def _send(self, fds: Sequence[int], addresses: array[int], sizes: array[int]) -> list[int | None] | None:
        if len(fds) <= self.capacity and not self.broken:
            return self._send_chunk(fds, addresses, sizes)
        sent: list[int | None] = []
        for start in range(0, len(fds), self.capacity):
            end = start + self.capacity
            chunk = fds[start:end]
            taken = [0] * len(chunk) if self.broken else self._send_chunk(chunk, addresses[start:end], sizes[start:end])
            sent += sizes[start:end].tolist() if taken is None else taken
        return sent

    def _send_chunk(self, fds: Sequence[int], addresses: array[int], sizes: array[int]) -> list[int | None] | None:
        if self._context is None:
            raise ValueError("this SendMany is closed")
        count = len(fds)
        words = _IOCB_WORDS * count
        iocbs = self._iocbs
        iocbs[2:words:_IOCB_WORDS] = array("Q", [_IOCB_CMD_PWRITE | fd << 32 for fd in fds])
        # the buffers are read inside io_submit, while the caller still references them
        iocbs[3:words:_IOCB_WORDS] = addresses
        iocbs[4:words:_IOCB_WORDS] = sizes
        # io_submit stops at an iocb it cannot take (a closed descriptor): those after it
        # stay at 0, and their callers write the usual way, which reports the error
        submitted = self._io_submit(count)
        sent: list[int | None] | None = None
        reaped = 0
        try:
            while reaped < submitted:
                events, first, got = self._completions(submitted - reaped)
                end = first + _EVENT_WORDS * got
                # a write takes no more than its size, so the sums are equal only if each
                # took all: then nothing is gone through one by one
                if got == count and sum(events[first + 2 : end : _EVENT_WORDS]) == sum(sizes):
                    return None
                if sent is None:
                    sent = [None] * submitted + [0] * (count - submitted)
                for i in range(first, end, _EVENT_WORDS):
                    sent[events[i]] = events[i + 2]
                reaped += got
        except OSError as e:
            self.broken = True
            log.error("Linux AIO failed ({why}); writing to each socket in turn from now on", why=e.strerror)
        return sent if sent is not None else [None] * submitted + [0] * (count - submitted)

    def _io_submit(self, count: int) -> int:
        """How many of the first ``count`` iocbs the kernel took (0 if it refused them all)."""
        taken = self._syscall(self._submit_number, self._context_argument, ctypes.c_long(count), self._iocb_pointers)
        if taken < 0 and not self._refusal_logged:
            # harmless (the callers write the usual way) but slower: say so once
            self._refusal_logged = True
            code = ctypes.get_errno()
            log.warn("io_submit refused a batch ({why}); writing those sockets the usual way", why=os.strerror(code))
        return max(int(taken), 0)

    def _completions(self, most: int) -> tuple[Sequence[int], int, int]:
        """
        Up to ``most`` completions as ``(words, first, count)``: ``count`` io_events from
        ``words[first]`` on, taken off the ring. Every socket write has completed inside
        io_submit, so the ring holds them and nothing waits; from ``io_getevents`` if the
        ring cannot be read (then it waits up to a second, for a kernel that differs).
        """
        ring, events = self._ring, self._ring_events
        if ring is not None and events is not None:
            head, size = ring[_RING_HEAD], ring[_RING_NR]
            # the completions of one batch may wrap past the ring's end: those up to it now
            got = min((ring[_RING_TAIL] - head) % size, size - head, most)
            if got:
                ring[_RING_HEAD] = (head + got) % size  # the slots are the kernel's again at the next io_submit
                return events, _RING_HEADER_WORDS // 2 + _EVENT_WORDS * head, got
        return self._events, 0, self._io_getevents(most)

    def _io_getevents(self, count: int) -> int:
        """Collect up to ``count`` completions into ``_events``, at least one within a second."""
        while True:
            got = self._syscall(
                self._getevents_number,
                self._context_argument,
                ctypes.c_long(1),
                ctypes.c_long(count),
                self._events_pointer,
                self._timeout_pointer,
            )
            if got > 0:
                return int(got)
            if got == 0:
                raise OSError(errno.ETIMEDOUT, "io_getevents: no write completed within a second")
            code = ctypes.get_errno()
            if code != errno.EINTR:
                raise OSError(code, f"io_getevents: {os.strerror(code)}")

    def close(self) -> None:
        """Give the context back to the kernel (counted against ``fs.aio-max-nr``)."""
        if self._context is not None:
            # the ring's views go first: the kernel unmaps it
            self._ring = self._ring_events = None
            self._syscall(ctypes.c_long(self._destroy), ctypes.c_ulong(self._context))
            self._context = None


def _ring_header(context: int) -> memoryview | None:
    """
    The header of the ring at ``context``, as 32-bit words, if it is the ring this module
    knows: mapped there (``_maps_ring``), with its magic, no incompatible features and a
    header of its size; else None.
    """
    if not _maps_ring(context):
        return None
    header = _words_at(context, 4 * _RING_HEADER_WORDS, "I")
    if (
        header[_RING_MAGIC] != _AIO_RING_MAGIC
        or header[_RING_INCOMPAT] != 0
        or header[_RING_HEADER_LENGTH] != 4 * _RING_HEADER_WORDS
        or header[_RING_NR] == 0
    ):
        return None
    return header


def _words_at(address: int, size: int, word: Literal["I", "q"]) -> memoryview:
    """The ``size`` bytes of memory at ``address``, uncopied, as words of the ``struct`` format ``word``."""
    return memoryview((ctypes.c_char * size).from_address(address)).cast("B").cast(word)


def _maps_ring(context: int) -> bool:
    """
    Whether the process's memory map has the kernel's AIO ring at ``context``, readable
    and writable: where a kernel (or a sandbox's) names its contexts otherwise, reading
    the address would crash the process.
    """
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                span, _, rest = line.partition(" ")
                if int(span.partition("-")[0], 16) == context:
                    return rest.startswith("rw") and "[aio]" in rest
    except (OSError, ValueError):
        pass
    return False


def _address_from_ctypes(data: bytes) -> int:
    """Where the bytes of ``data`` are: ctypes hands C a bytes object's own buffer, uncopied."""
    address = ctypes.cast(ctypes.c_char_p(data), ctypes.c_void_p).value
    assert address is not None  # only a NULL pointer reads as None
    return address


def _id_offset() -> int | None:
    """
    ``_address_from_ctypes`` costs 2 us, once per write; in CPython a bytes object's buffer
    lies at a fixed offset from ``id()`` (its address), which costs 0.1 us. The offset is
    taken from ctypes and checked on bytes of two sizes; None if it does not hold.
    """
    probes = [b"probe", b"a longer probe" * 100]
    offset = _address_from_ctypes(probes[0]) - id(probes[0])
    if any(_address_from_ctypes(probe) != id(probe) + offset for probe in probes):
        return None
    return offset


_ID_OFFSET = _id_offset()


def _address(data: bytes) -> int:
    """Where the bytes of ``data`` are."""
    return _address_from_ctypes(data) if _ID_OFFSET is None else id(data) + _ID_OFFSET


def _addresses(datas: Sequence[bytes]) -> array[int]:
    """``_address`` of each, without a Python call apiece where the offset holds."""
    if _ID_OFFSET is None:
        return array("Q", map(_address_from_ctypes, datas))
    return array("Q", map(_ID_OFFSET.__add__, map(id, datas)))
