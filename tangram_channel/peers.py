"""What one client address holds open, counted so that it can be capped."""

from __future__ import annotations


class PeerConnections:
    """
    Open connections by peer IP address, refused past ``limit`` (0 is no cap: then the
    site counts nothing). Pure bookkeeping: the site admits at accept, and the connection
    releases when it ends, whether it stayed HTTP or became a WebSocket; long-poll
    sessions are counted the same way, in a table of their own.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._open: dict[str, int] = {}

    def admit(self, host: str) -> bool:
        """Count one more connection from ``host``, unless it already has ``limit``."""
        count = self._open.get(host, 0)
        if count >= self.limit:
            return False
        self._open[host] = count + 1
        return True

    def release(self, host: str) -> None:
        count = self._open.pop(host) - 1
        if count:
            self._open[host] = count
