"""
The Redis subscriber's socket, read into one buffer kept for the connection.

Twisted's ``doRead`` asks ``recv`` for ``bufferSize`` bytes, and CPython allocates that
much for every call before it shrinks the result to what came. The subscriber reads up
to 4 MiB a turn (``bus.SUBSCRIBER_READ_SIZE``), so each read mapped 4 MiB fresh from the
kernel, faulted in the pages it wrote and unmapped them again: W5's profile put that at
about 6 % of the service's CPU. Reading into a kept buffer costs one copy of what came.
The pages a read writes stay in memory for the next, up to ``RESIDENT_BYTES``: past
that, a large read (a burst, a join storm's presence) gives its pages back after it.
"""

from __future__ import annotations

import mmap
from errno import EWOULDBLOCK
from typing import Any

from twisted.internet import main

# what the buffer keeps in memory between reads; a busy stream's reads (W5: tens of KB) fit
RESIDENT_BYTES = 256 * 1024


class KeptBufferRead:
    """A ``tcp.Connection.doRead`` that receives into ``size`` bytes mapped once."""

    def __init__(self, transport: Any, size: int) -> None:
        self._transport = transport
        # anonymous memory: only the pages a read has written to take room
        self._buffer = mmap.mmap(-1, size)

    def __call__(self) -> Any:
        transport = self._transport
        try:
            received = transport.socket.recv_into(self._buffer)
        except OSError as e:
            if e.args[0] == EWOULDBLOCK:
                return None
            return main.CONNECTION_LOST
        data = self._buffer[:received]
        if received > RESIDENT_BYTES:
            self._buffer.madvise(mmap.MADV_DONTNEED, RESIDENT_BYTES, received - RESIDENT_BYTES)
        return transport._dataReceived(data)


def read_into_kept_buffer(transport: Any, size: int) -> None:
    """Make ``transport``, a plain ``tcp.Connection``, read up to ``size`` bytes at a time into one buffer."""
    transport.doRead = KeptBufferRead(transport, size)
