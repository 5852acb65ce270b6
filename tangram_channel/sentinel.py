"""
Redis Sentinel: where the primary is, and when it moves.

A ``redis+sentinel://`` URL names sentinels and a master name instead of a server.
Before every connection attempt the sentinels are asked in turn, as Redis's guidelines
for Sentinel clients say (the first that answers moves to the front), and the
connection goes to the address they name. A node that answers ``ROLE`` with anything
but ``master`` is refused: a sentinel may still name a demoted primary for a moment.
A subscription to ``+switch-master`` on one sentinel tells of a failover as soon as
the sentinels decide it, rather than when a connection breaks.

txredisapi's own ``Sentinel`` is not used: it connects with the global reactor and its
own pools (no TLS, no endpoint of ours, so no TLS diagnostics), checks ``ROLE`` on
command connections only, and learns of a failover only when a connection drops. Its
protocol's commands are used (``sentinel_get_master_addr_by_name``, ``role``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import unquote

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from zope.interface import implementer

Address = tuple[str, int]

DEFAULT_PORT = 26379
SWITCH_CHANNEL = b"+switch-master"


class NoPrimary(Exception):
    """No sentinel named a primary: each one's reason, in the message."""


def parse_addresses(netloc: str, default_port: int = DEFAULT_PORT, what: str = "sentinel") -> list[Address]:
    """``host1:26379,[::1]:26380,host3`` (credentials already removed) as addresses (of sentinels or cluster nodes)."""
    addresses = []
    for item in netloc.split(","):
        item = item.strip()
        if not item:
            raise ValueError(f"an empty {what} address")
        if item.startswith("["):  # [IPv6]:port
            host, _, rest = item[1:].partition("]")
            port = rest[1:] if rest.startswith(":") else ""
            if rest and not rest.startswith(":"):
                raise ValueError(f"a bad {what} address {item!r}")
        elif item.count(":") == 1:
            host, port = item.split(":")
        else:
            host, port = item, ""
        if not host:
            raise ValueError(f"a {what} address without a host: {item!r}")
        try:
            number = int(port) if port else default_port
        except ValueError:
            raise ValueError(f"a {what} address with an invalid port: {item!r}") from None
        if not 0 < number < 65536:
            raise ValueError(f"a {what} address with an invalid port: {item!r}")
        addresses.append((unquote(host), number))
    return addresses


def parse_master(path: str) -> tuple[str, int]:
    """``/<master-name>[/db]`` as the name and the database number (0 when absent)."""
    parts = path.strip("/").split("/")
    if not parts[0]:
        raise ValueError("a Sentinel URL needs the master name as its path: redis+sentinel://hosts/<master-name>")
    if len(parts) > 2:
        raise ValueError(f"a Sentinel URL's path is /<master-name>[/db], not {path!r}")
    try:
        db = int(parts[1]) if len(parts) == 2 else 0
    except ValueError:
        raise ValueError(f"a Sentinel URL has an invalid database number: {parts[1]!r}") from None
    return unquote(parts[0]), db


ROLES = (b"master", b"slave", b"sentinel")


def is_role_reply(reply: Any) -> bool:
    return isinstance(reply, list) and bool(reply) and reply[0] in ROLES


def role_of(reply: Any) -> str:
    """The role a ``ROLE`` reply names (``master``, ``slave``, ``sentinel``), or ``unknown``."""
    return reply[0].decode() if is_role_reply(reply) else "unknown"


def switched(message: bytes, name: str) -> tuple[Address, Address] | None:
    """The old and new primary a ``+switch-master`` message names, when it is about ``name``."""
    fields = message.decode("utf-8", "replace").split(" ")
    if len(fields) != 5 or fields[0] != name:
        return None
    try:
        return (fields[1], int(fields[2])), (fields[3], int(fields[4]))
    except ValueError:
        return None


def show(address: Address) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Sentinels:
    """
    The sentinels of one master name, asked in turn for its primary. ``connect(address)``
    gives a ready command connection to a sentinel; each is closed after its answer.
    """

    def __init__(
        self,
        clock: IReactorTime,
        addresses: list[Address],
        name: str,
        connect: Callable[[Address], Awaitable[Any]],
        timeout: float = 2.0,
    ) -> None:
        self.addresses = list(addresses)
        self.name = name
        self._clock = clock
        self._connect = connect
        self._timeout = timeout

    def primary(self) -> defer.Deferred[Address]:
        """The primary's address, from the first sentinel that names one; NoPrimary if none does."""
        return defer.ensureDeferred(self._ask_in_turn())

    async def _ask_in_turn(self) -> Address:
        problems = []
        for address in list(self.addresses):
            asking = defer.ensureDeferred(self._ask(address))
            try:
                primary = await asking.addTimeout(self._timeout, self._clock)
            except defer.CancelledError:  # the connection attempt was given up: ask no further
                raise
            except defer.TimeoutError:
                problems.append(f"{show(address)}: no answer within {self._timeout} s")
                continue
            except Exception as e:
                problems.append(f"{show(address)}: {_reason(e)}")
                continue
            if primary is None:
                problems.append(f"{show(address)}: {self.unknown}")
                continue
            self.to_front(address)
            return primary
        raise NoPrimary(f"{self.nobody} ({'; '.join(problems)})")

    @property
    def unknown(self) -> str:
        """Why an answer named no primary."""
        return f"does not know master {self.name!r}"

    @property
    def nobody(self) -> str:
        return f"no sentinel named a primary for {self.name!r}"

    def to_front(self, address: Address) -> None:
        """Ask ``address`` first next time: it answered, or (Redis Cluster) a redirection named it."""
        if address in self.addresses:
            self.addresses.remove(address)
        self.addresses.insert(0, address)

    async def _ask(self, address: Address) -> Address | None:
        conn = await self._connect(address)
        try:
            reply = await conn.sentinel_get_master_addr_by_name(self.name)
        finally:
            conn.transport.loseConnection()
        if not reply:
            return None
        host, port = reply
        return host.decode(), int(port)


def _reason(error: Exception) -> str:
    """An error's words without its class path: a DNS failure says which name."""
    text = str(error).strip()
    return text or type(error).__name__


@implementer(IStreamClientEndpoint)
class PrimaryEndpoint:
    """
    Connects wherever the sentinels say the primary is, asking them on every attempt;
    ``endpoint_at(address)`` makes the endpoint for an address (TLS or not).
    ``on_failure(why)`` hears why no primary could be found.
    """

    def __init__(
        self,
        sentinels: Sentinels,
        endpoint_at: Callable[[Address], IStreamClientEndpoint],
        on_failure: Callable[[str], None],
    ) -> None:
        self._sentinels = sentinels
        self._endpoint_at = endpoint_at
        self._on_failure = on_failure
        self.address: Address | None = None  # where the last attempt went: the connection's, once up

    def connect(self, protocolFactory: Any) -> defer.Deferred[Any]:
        d = self._sentinels.primary()
        d.addErrback(self._not_found)
        return d.addCallback(self._connect, protocolFactory)

    def _connect(self, address: Address, protocolFactory: Any) -> defer.Deferred[Any]:
        self.address = address
        return self._endpoint_at(address).connect(protocolFactory)

    def _not_found(self, failure: Any) -> Any:
        failure.trap(NoPrimary)
        self._on_failure(failure.getErrorMessage())
        return failure


@implementer(IStreamClientEndpoint)
class Rotation:
    """
    Each connection attempt to the address after the one tried last: one sentinel (or
    cluster node) down, try the next. ``addresses`` is read at each attempt, so a list
    that grows or is reordered (the nodes a cluster names, the one that answered moved to
    the front) is followed, and the node just left is not the next one tried.
    """

    def __init__(self, addresses: list[Address], endpoint_at: Callable[[Address], IStreamClientEndpoint]) -> None:
        self._addresses = addresses
        self._endpoint_at = endpoint_at
        self._last: Address | None = None

    def connect(self, protocolFactory: Any) -> defer.Deferred[Any]:
        after = self._addresses.index(self._last) + 1 if self._last in self._addresses else 0
        self._last = address = self._addresses[after % len(self._addresses)]
        return self._endpoint_at(address).connect(protocolFactory)
