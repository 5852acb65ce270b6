"""
The Redis subscriber's socket, read into one buffer kept for the connection.

Twisted's ``doRead`` asks ``recv`` for ``bufferSize`` bytes, and CPython allocates that
much for every call before it shrinks the result to what came. The subscriber reads up
to 4 MiB a turn (``bus.SUBSCRIBER_READ_SIZE``), so each read mapped 4 MiB fresh from the
kernel, faulted in the pages it wrote and unmapped them again: W5's profile put that at
about 6 % of the service's CPU. Reading into a kept buffer costs one copy of what came.
The pages a read writes stay in memory for the next, up to ``RESIDENT_BYTES``: past
that, a large read (a burst, a join storm's presence) gives its pages back after it.

``read_now`` reads the socket while it is out of the reactor's watch: ``pending`` rests a
busy stream between reads and then reads it straight from the rest's timer. A socket
re-registered with epoll after each rest cost a register and an unregister, a reactor
turn and its log context per read (about a tenth of W5's CPU).
"""

from __future__ import annotations

import mmap
from errno import EWOULDBLOCK
from typing import Any

from twisted.internet import main
from twisted.logger import Logger

log = Logger()

# what the buffer keeps in memory between reads; a busy stream's reads (W5: tens of KB) fit
RESIDENT_BYTES = 256 * 1024


class KeptBufferRead:
    """A ``tcp.Connection.doRead`` that receives into ``size`` bytes mapped once."""

    def __init__(self, transport: Any, size: int) -> None:
        self._transport = transport
        # anonymous memory: only the pages a read has written to take room
        self._buffer = mmap.mmap(-1, size)
        self.found_nothing = False  # whether the last read found nothing there yet

    def __call__(self) -> Any:
        transport = self._transport
        try:
            received = transport.socket.recv_into(self._buffer)
        except OSError as e:
            if e.args[0] == EWOULDBLOCK:
                self.found_nothing = True
                return None
            return main.CONNECTION_LOST
        data = self._buffer[:received]
        if received > RESIDENT_BYTES:
            self._buffer.madvise(mmap.MADV_DONTNEED, RESIDENT_BYTES, received - RESIDENT_BYTES)
        return transport._dataReceived(data)

    def read_now(self) -> bool:
        """
        Read as the reactor does when epoll finds the socket readable, though it is not
        watched: what came, its end or an error is handled as the reactor would (an end
        or an error disconnects it). False if nothing had come: watch it again to wait.
        """
        transport = self._transport
        if not transport.connected or transport.disconnecting:
            return False
        self.found_nothing = False
        try:
            why = self()
        except Exception as e:  # the protocol's: as the reactor does, logged and disconnected
            log.failure("reading the Redis subscriber")
            why = e
        if self.found_nothing:
            return False
        if why:
            transport.reactor._disconnectSelectable(transport, why, True)
        return True


def read_into_kept_buffer(transport: Any, size: int) -> KeptBufferRead:
    """Make ``transport``, a plain ``tcp.Connection``, read up to ``size`` bytes at a time into one buffer."""
    reader = KeptBufferRead(transport, size)
    transport.doRead = reader
    return reader
