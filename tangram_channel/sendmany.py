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
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import sys
from array import array
from collections.abc import Sequence

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
        context = self._context
        if context is None:
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
        submitted = self._io_submit(context, count)
        sent: list[int | None] | None = None
        reaped = 0
        try:
            while reaped < submitted:
                # every socket write has completed inside io_submit: this does not wait
                got = self._io_getevents(context, submitted - reaped)
                events = self._events
                # a write takes no more than its size, so the sums are equal only if each
                # took all: then nothing is gone through one by one
                if got == count and sum(events[2 : _EVENT_WORDS * got : _EVENT_WORDS]) == sum(sizes):
                    return None
                if sent is None:
                    sent = [None] * submitted + [0] * (count - submitted)
                for i in range(0, _EVENT_WORDS * got, _EVENT_WORDS):
                    sent[events[i]] = events[i + 2]
                reaped += got
        except OSError as e:
            self.broken = True
            log.error("Linux AIO failed ({why}); writing to each socket in turn from now on", why=e.strerror)
        return sent if sent is not None else [None] * submitted + [0] * (count - submitted)

    def _io_submit(self, context: int, count: int) -> int:
        """How many of the first ``count`` iocbs the kernel took (0 if it refused them all)."""
        taken = self._syscall(
            ctypes.c_long(self._submit),
            ctypes.c_ulong(context),
            ctypes.c_long(count),
            ctypes.c_void_p(self._pointers.buffer_info()[0]),
        )
        if taken < 0 and not self._refusal_logged:
            # harmless (the callers write the usual way) but slower: say so once
            self._refusal_logged = True
            code = ctypes.get_errno()
            log.warn("io_submit refused a batch ({why}); writing those sockets the usual way", why=os.strerror(code))
        return max(int(taken), 0)

    def _io_getevents(self, context: int, count: int) -> int:
        """Collect up to ``count`` completions into ``_events``, at least one within a second."""
        while True:
            got = self._syscall(
                ctypes.c_long(self._getevents),
                ctypes.c_ulong(context),
                ctypes.c_long(1),
                ctypes.c_long(count),
                ctypes.c_void_p(self._events.buffer_info()[0]),
                ctypes.c_void_p(self._timeout.buffer_info()[0]),
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
            self._syscall(ctypes.c_long(self._destroy), ctypes.c_ulong(self._context))
            self._context = None


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
