"""
Redis Cluster: which node holds the presence keys, and where it moves.

Every key this service stores carries one hash tag (see ``naming``), so all of them,
and every presence script, live in one slot: the command connection talks to the
primary of that slot alone, found before every connection attempt by asking the
known nodes in turn (``CLUSTER KEYSLOT``, ``CLUSTER SLOTS``; the first that answers
moves to the front, as with sentinels). A ``MOVED`` reply puts the node it names
first. Classic pub/sub reaches every node of a cluster, so the subscriber may sit on
any node, and moves to the next one it knows when its node goes away.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from twisted.internet.interfaces import IReactorTime

from .naming import KEY_PREFIX
from .sentinel import Address, Sentinels

DEFAULT_PORT = 6379


def owner(slots: list[Any], slot: int, asked: Address) -> Address | None:
    """
    The primary a ``CLUSTER SLOTS`` reply gives ``slot`` to; an empty host means the
    node asked (Redis's way of saying "the address you reached me at").
    """
    for entry in slots:
        start, end, primary = int(entry[0]), int(entry[1]), entry[2]
        if start <= slot <= end:
            host = primary[0].decode() if primary[0] else asked[0]
            return host, int(primary[1])
    return None


def nodes_of(slots: list[Any], asked: Address) -> list[Address]:
    """Every node (primaries and replicas) a ``CLUSTER SLOTS`` reply names."""
    found = []
    for entry in slots:
        for node in entry[2:]:
            found.append((node[0].decode() if node[0] else asked[0], int(node[1])))
    return found


class ClusterNodes(Sentinels):
    """
    The nodes of a cluster, asked in turn for the primary of the presence slot: the seed
    addresses of the URL, then every node an answer named, so that the seeds may all go
    away. ``connect(address)`` gives a ready command connection to a node.
    """

    def __init__(
        self,
        clock: IReactorTime,
        seeds: list[Address],
        connect: Callable[[Address], Awaitable[Any]],
        timeout: float = 2.0,
    ) -> None:
        super().__init__(clock, seeds, KEY_PREFIX, connect, timeout)

    @property
    def unknown(self) -> str:
        return "no primary serves the presence slot (is the cluster's slot map complete?)"

    @property
    def nobody(self) -> str:
        return "no Redis Cluster node named the primary of the presence slot"

    async def _ask(self, address: Address) -> Address | None:
        conn = await self._connect(address)
        try:
            slot = int(await conn.execute_command("CLUSTER", "KEYSLOT", KEY_PREFIX))
            slots = await conn.execute_command("CLUSTER", "SLOTS")
        finally:
            conn.transport.loseConnection()
        for node in nodes_of(slots, address):
            if node not in self.addresses:
                self.addresses.append(node)
        return owner(slots, slot, address)


def redirection(message: str) -> tuple[str, Address] | None:
    """``MOVED`` or ``ASK`` and the node such an error (``MOVED <slot> <host>:<port>``) names; None for others."""
    words = message.split()
    if len(words) != 3 or words[0] not in ("MOVED", "ASK"):
        return None
    host, _, port = words[2].rpartition(":")
    try:
        return words[0], (host.strip("[]"), int(port))
    except ValueError:
        return None
