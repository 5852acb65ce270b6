"""
Redis Cluster: which node holds the presence keys, and where it moves.

Every key this service stores carries one hash tag (see ``naming``), so all of them,
and every presence script, live in one slot: the command connection talks to the
primary of that slot alone, found before every connection attempt by asking the
known nodes in turn (``CLUSTER KEYSLOT``, ``CLUSTER SLOTS``; the first that answers
moves to the front, as with sentinels). A ``MOVED`` reply puts the node it names
first. Classic pub/sub reaches every node of a cluster, so the subscriber may sit on
any node, and moves to the next one it knows when its node goes away.

While the slot moves (a resharding: ``ASK``, ``TRYAGAIN``) or after its primary changed
(``MOVED``) a command is not failed but followed: sent to the node named, or tried again
shortly, within the command's own timeout (see ``Redirected``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import txredisapi
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from .errors import RedisUnavailable
from .naming import KEY_PREFIX
from .sentinel import Address, Sentinels

DEFAULT_PORT = 6379
# a command followed through more redirections than this is failed: a slot map that
# sends it round in circles must not hold it (nor a connection) for its whole timeout
MAX_REDIRECTIONS = 16
# TRYAGAIN (a multi-key command while the slot's keys are split between two nodes): the
# first wait, doubled at each try up to the last; a migration of the presence slot's few
# keys takes milliseconds
TRYAGAIN_FIRST_WAIT = 0.02
TRYAGAIN_LONGEST_WAIT = 0.5
# the connection to the node a redirection names is closed once this long unused
REDIRECTED_IDLE = 10.0


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


def redirection(message: str) -> tuple[str, Address | None] | None:
    """
    ``MOVED`` or ``ASK`` and the node such an error (``MOVED <slot> <host>:<port>``)
    names; ``TRYAGAIN`` and no node; None for other errors.
    """
    words = message.split()
    if words[:1] == ["TRYAGAIN"]:
        return "TRYAGAIN", None
    if len(words) != 3 or words[0] not in ("MOVED", "ASK"):
        return None
    host, _, port = words[2].rpartition(":")
    try:
        return words[0], (host.strip("[]"), int(port))
    except ValueError:
        return None


class Redirected:
    """
    Where the commands a cluster answers ``ASK``, ``MOVED`` or ``TRYAGAIN`` go next.

    ``ASK`` (the slot is migrating and the keys are on the node named) and ``MOVED`` (the
    slot has a new primary, which the command connection is reconnecting to) send the
    command to the node named, ``ASK`` after ``ASKING``. ``TRYAGAIN`` sends it again
    through ``resend`` after a short wait. Each command is followed at most
    ``MAX_REDIRECTIONS`` times and never past ``give_up_at``; then it fails as with Redis
    away. The nodes named share one connection, opened on the first redirection to a
    node, replaced when another node is named and closed once idle: what a cluster's
    answers can make this process open is one connection.
    """

    def __init__(
        self,
        clock: IReactorTime,
        connect: Callable[[Address], Awaitable[Any]],
        resend: Callable[..., defer.Deferred[Any]],
        timeout: float,
    ) -> None:
        self._clock = clock
        self._connect = connect
        self._resend = resend
        self._timeout = timeout
        self._address: Address | None = None
        self._conn: Any = None
        self._waiting: list[defer.Deferred[Any]] = []  # commands held while it connects
        self._idle: IDelayedCall | None = None

    def follow(
        self, kind: str, address: Address | None, command: tuple[Any, ...], hops: int, give_up_at: float
    ) -> defer.Deferred[Any] | Failure:
        """The command's answer from where the redirection sends it (which may redirect it again)."""
        if hops >= MAX_REDIRECTIONS or self._clock.seconds() >= give_up_at:
            return Failure(RedisUnavailable())
        if kind == "TRYAGAIN":
            wait = min(TRYAGAIN_LONGEST_WAIT, TRYAGAIN_FIRST_WAIT * 2 ** hops, give_up_at - self._clock.seconds())
            sent: defer.Deferred[Any] = defer.Deferred()
            self._clock.callLater(wait, lambda: self._resend(*command).chainDeferred(sent))
        else:
            assert address is not None
            sent = self.send(address, command, asking=kind == "ASK")
        return sent.addErrback(self.followed, command, hops + 1, give_up_at)

    def followed(
        self, failure: Failure, command: tuple[Any, ...], hops: int, give_up_at: float
    ) -> defer.Deferred[Any] | Failure:
        """An errback: ``failure`` followed if it is a redirection, else passed on."""
        failure.trap(txredisapi.ResponseError)
        to = redirection(failure.getErrorMessage())
        if to is None:
            return failure
        return self.follow(to[0], to[1], command, hops, give_up_at)

    def close(self) -> None:
        """Close the connection to the node last named; commands waiting for it fail."""
        self._address = None
        if self._idle is not None and self._idle.active():
            self._idle.cancel()
        self._idle = None
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.transport.loseConnection()
        waiting, self._waiting = self._waiting, []
        for each in waiting:
            each.errback(RedisUnavailable())

    def send(self, address: Address, command: tuple[Any, ...], asking: bool = False) -> defer.Deferred[Any]:
        """``command`` on the node at ``address`` (the connection to the node last named is reused)."""
        if address != self._address:
            self.close()
            self._address = address
            connecting: defer.Deferred[Any] = defer.ensureDeferred(self._connect(address))  # type: ignore[arg-type]
            connecting.addTimeout(self._timeout, self._clock)
            connecting.addBoth(self._connected, address)
        if self._idle is not None and self._idle.active():
            self._idle.reset(REDIRECTED_IDLE)
        else:
            self._idle = self._clock.callLater(REDIRECTED_IDLE, self.close)
        if self._conn is None:
            ready: defer.Deferred[Any] = defer.Deferred()
            self._waiting.append(ready)
            return ready.addCallback(self._run, command, asking)
        return defer.maybeDeferred(self._run, self._conn, command, asking)

    def _connected(self, result: Any, address: Address) -> None:
        if address != self._address:  # replaced or closed meanwhile
            if not isinstance(result, Failure):
                result.transport.loseConnection()
            return
        if isinstance(result, Failure):
            self.close()
            return
        self._conn = result
        waiting, self._waiting = self._waiting, []
        for each in waiting:
            each.callback(result)

    def _run(self, conn: Any, command: tuple[Any, ...], asking: bool) -> defer.Deferred[Any]:
        """The command on ``conn``; ``ASKING`` first, on the same connection, holds for one command."""
        try:
            if asking:
                conn.execute_command("ASKING").addErrback(lambda _: None)
            return conn.execute_command(*command)
        except txredisapi.ConnectionError:
            if conn is self._conn:
                self.close()
            raise RedisUnavailable() from None
