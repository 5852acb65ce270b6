"""
Messages still arriving from clients, the bytes they hold, and the process's bound on them.

Autobahn keeps a message's frames until its last byte has come, up to
``max_message_size`` (1 MiB by default) per socket. A client that sends all of a large
message but its end, on each of thousands of sockets, had the service hold a megabyte
a socket until each went idle (300 sockets: 290 MB more). So a socket holds the first
``OWN_BYTES`` of a message still arriving on its own (a read's worth; Tangram's messages
are a few hundred bytes), and what a message holds past them is drawn from one pool for
the process, ``max_partial_message_bytes``. A socket whose message the pool cannot take
is closed (1013, try again later: phoenix.js reconnects) and what it held is freed. It is
closed rather than read later: sockets that never finish their messages would hold the
pool, and every socket waiting on it would wait with them.
"""

from __future__ import annotations

# what a socket's message still arriving may hold before it draws from the pool
OWN_BYTES = 64 * 1024


class PartialMessages:
    """The pool: what the process's messages still arriving hold past each socket's ``OWN_BYTES``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit  # 0: no bound
        self.bytes = 0

    def message(self) -> PartialMessage:
        """One socket's account, for the message it is receiving (one at a time)."""
        return PartialMessage(self)


class PartialMessage:
    """The bytes of one socket's message still arriving, and which of them are the pool's."""

    __slots__ = ("_pool", "_held", "_drawn")

    def __init__(self, pool: PartialMessages) -> None:
        self._pool = pool
        self._held = 0
        self._drawn = 0

    def take(self, size: int) -> bool:
        """
        ``size`` more bytes of the message have come; False, and nothing taken, if the pool
        cannot hold them (the socket is then closed, and its message dropped).
        """
        held = self._held + size
        more = held - OWN_BYTES - self._drawn
        if more > 0:
            pool = self._pool
            if pool.limit and pool.bytes + more > pool.limit:
                return False
            pool.bytes += more
            self._drawn += more
        self._held = held
        return True

    def end(self) -> None:
        """The message was handed on, or dropped with its socket: what it held is free."""
        self._pool.bytes -= self._drawn
        self._held = self._drawn = 0
