"""
The two Redis connections of a process, kept alive across outages.

One connection subscribes (``PSUBSCRIBE to:<topic>:*`` for each topic with members
here, or ``to:*`` once there are many, see ``WATCH_ALL_ABOVE``) and feeds every message
to the hub; the other runs commands (``PUBLISH``, the presence scripts). Both reconnect
on their own; the subscriber re-issues every subscription each time it comes back,
since Redis forgets them with the connection. Under Sentinel both go wherever the
sentinels say the primary is (see ``sentinel``); in a Redis Cluster the commands go to
the primary of the presence slot and the subscriber to any node (see ``cluster``).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import txredisapi
from twisted.application.internet import ClientService, TimerService, backoffPolicy
from twisted.application.service import MultiService
from twisted.internet import defer, protocol
from twisted.internet.endpoints import HostnameEndpoint, UNIXClientEndpoint, wrapClientTLS
from twisted.internet.interfaces import (
    IDelayedCall,
    IOpenSSLClientConnectionCreator,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.logger import ILogObserver, LogLevel, Logger, globalLogPublisher
from twisted.protocols.policies import ProtocolWrapper
from twisted.python.failure import Failure
from OpenSSL import SSL, crypto
from zope.interface import implementer, provider

from . import outputlimit
from .cluster import DEFAULT_PORT as CLUSTER_PORT, ClusterNodes, Redirected, redirection
from .config import mask_url
from .errors import RedisTimeout, RedisUnavailable, unless_unavailable
from .logs import ThrottledLog
from .metrics import Metrics
from .naming import ALL_TOPICS_PATTERN, SPLIT_NAME_LIMIT, split_channel, topic_pattern
from .pending import PendingMessages
from .readbuffer import read_into_kept_buffer
from .replicas import ReplicaWait
from .sentinel import (
    SWITCH_CHANNEL, Address, PrimaryEndpoint, Rotation, Sentinels, is_role_reply, parse_addresses, parse_master,
    role_of, show, switched,
)

log = Logger()

SCHEMES = ("redis", "rediss", "unix", "redis+sentinel", "rediss+sentinel", "redis+cluster", "rediss+cluster")
FAILOVERS_KEPT = 10  # the last failovers, for /healthz; all are counted in /metrics
# how often a cluster's nodes are asked who holds the presence slot: a primary that hangs
# (or is cut off) rather than dies closes no connection, and answers no MOVED until it is back
CLUSTER_CHECK_INTERVAL = 1.0
# PING's answer on a subscriber connection, subscribed (RESP2) or not yet
PONGS = ([b"pong", b""], ["pong", ""], b"PONG", "PONG")

# what the subscriber's socket reads a reactor turn (Twisted reads 64 KiB): as much as
# Redis has written since, so a turn spent handing a large message on costs no reading
SUBSCRIBER_READ_SIZE = 4 * 1024 * 1024
# what hiredis's reader is fed at a time: after each reply it moves what is left of its
# buffer to the front, so a read fed whole costs time quadratic in its size (2 KB
# messages: 0.65 us each fed 16 KiB at a time, 2.9 us in a 200 KB read, 22 us in 2 MB)
FEED_BYTES = 16 * 1024

# Redis matches every PUBLISH against every pattern of every subscriber: with a pattern
# per topic, 1,000 topics cost Redis about 100 us per PUBLISH (W5: it saturated at
# 10,000 msg/s, below what the service can write). Past this many watched topics the
# subscriber holds the one pattern ``to:*`` instead and drops what no member here wants;
# the cost moves to reading messages for topics without members here, which only other
# processes sharing the Redis have. It stays so until the subscriber reconnects.
WATCH_ALL_ABOVE = 64
# channels whose route (``RedisBridge._route``) is remembered; past this many, all are
# forgotten: a busy service sees the same few thousand again and again, and anyone who
# may publish can name channels without end
ROUTES_KEPT = 4096
_UNKNOWN = ("", "", b"")  # a channel not in ``RedisBridge._routes``


class RedisURL:
    """
    A parsed ``redis://``, ``rediss://``, ``unix://`` or Sentinel URL
    (``redis+sentinel://host1:26379,host2:26379/<master-name>[/db]``, ``rediss+sentinel://``
    for TLS to the sentinels and the servers they name), or a Redis Cluster's seed nodes
    (``redis+cluster://host1:7000,host2:7001``, ``rediss+cluster://`` for TLS).
    """

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in SCHEMES:
            raise ValueError(
                "redis_url must start with redis://, rediss://, unix://, redis+sentinel://, rediss+sentinel://, "
                "redis+cluster:// or rediss+cluster://, "
                f"not {mask_url(url)!r}"
            )
        self.scheme = parts.scheme
        self.username = unquote(parts.username) if parts.username else None
        self.password = unquote(parts.password) if parts.password is not None else None
        query = parse_qs(parts.query)
        self.ca_file = query.get("ssl_ca_certs", [None])[0]
        strict = query.get("ssl_verify_strict", ["true"])[0]
        if strict not in ("true", "false"):
            raise ValueError(f"redis_url: ssl_verify_strict must be true or false, not {strict!r}")
        self.verify_strict = strict == "true"
        sentinel_auth = query.get("sentinel_auth", ["false"])[0]
        if sentinel_auth not in ("true", "false"):
            raise ValueError(f"redis_url: sentinel_auth must be true or false, not {sentinel_auth!r}")
        self.sentinel_auth = sentinel_auth == "true"  # the sentinels want the servers' credentials too
        self.path: str | None = None  # a unix:// URL's socket
        self.host: str | None = None  # the others' address
        self.port: int | None = None
        self.sentinels: list[Address] = []  # a Sentinel URL's sentinels, and the name they know the primary by
        self.master_name: str | None = None
        self.cluster_nodes: list[Address] = []  # a Cluster URL's seed nodes
        if self.scheme == "unix":
            self.path = parts.path or parts.netloc
            db = query.get("db", ["0"])[0]
        elif self.scheme.endswith("+sentinel"):
            try:
                self.sentinels = parse_addresses(parts.netloc.rpartition("@")[2])
                self.master_name, self.db = parse_master(parts.path)
            except ValueError as e:
                raise ValueError(f"redis_url {mask_url(url)!r}: {e}") from None
            return
        elif self.scheme.endswith("+cluster"):
            try:
                self.cluster_nodes = parse_addresses(parts.netloc.rpartition("@")[2], CLUSTER_PORT, "cluster node")
            except ValueError as e:
                raise ValueError(f"redis_url {mask_url(url)!r}: {e}") from None
            if parts.path.strip("/") not in ("", "0"):
                raise ValueError(f"redis_url {mask_url(url)!r}: a Redis Cluster has database 0 only")
            self.db = 0
            return
        else:
            self.host = parts.hostname or "127.0.0.1"
            try:
                self.port = parts.port or 6379
            except ValueError:
                raise ValueError(f"redis_url has an invalid port: {url!r}") from None
            db = parts.path.strip("/") or "0"
        try:
            self.db = int(db)
        except ValueError:
            raise ValueError(f"redis_url has an invalid database number: {url!r}") from None

    @property
    def tls(self) -> bool:
        return self.scheme.startswith("rediss")

    def at(self, address: Address) -> RedisURL:
        """The server a Sentinel URL's sentinels named, with this URL's credentials, database and TLS."""
        copy = RedisURL("rediss://" if self.tls else "redis://")
        copy.__dict__.update(self.__dict__, scheme=copy.scheme, sentinels=[], master_name=None, cluster_nodes=[])
        copy.host, copy.port = address
        return copy

    def sentinel(self, address: Address) -> RedisURL:
        """One of the sentinels: TLS as the URL says, the credentials only with ``sentinel_auth=true``."""
        copy = self.at(address)
        if not self.sentinel_auth:
            copy.username = copy.password = None
        copy.db = 0
        return copy

    @property
    def follows_primary(self) -> bool:
        """Whether the URL names no server but a way to find the primary (Sentinel, Cluster)."""
        return bool(self.sentinels or self.cluster_nodes)

    @property
    def is_local(self) -> bool:
        """Whether a private redis-server could stand in at this address."""
        return self.scheme == "unix" or (self.scheme == "redis" and self.host in ("127.0.0.1", "localhost", "::1"))

    @property
    def tcp_address(self) -> tuple[str, int]:
        """Host and port; a ``unix://`` or Sentinel URL has none."""
        if self.host is None or self.port is None:
            what = "sentinels" if self.sentinels else "cluster nodes" if self.cluster_nodes else "a Unix socket"
            raise ValueError(f"{self} names {what}, not a TCP address")
        return self.host, self.port

    def endpoint(self, reactor: Any) -> IStreamClientEndpoint:
        if self.path is not None:
            return UNIXClientEndpoint(reactor, self.path, timeout=5)
        host, port = self.tcp_address
        endpoint: IStreamClientEndpoint = HostnameEndpoint(reactor, host, port, timeout=5)
        if self.tls:
            trust = Certificate.loadPEM(_read(self.ca_file)) if self.ca_file else None
            creator = optionsForClientTLS(host, trustRoot=trust)
            endpoint = wrapClientTLS(_StrictX509(creator) if self.verify_strict else creator, endpoint)
        return endpoint

    def explain(self, transport: Any, why: Failure) -> str:
        """Why a connection was lost before it was ready; for a certificate, what is wrong with it."""
        message = why.getErrorMessage()
        if not self.tls or "certificate verify failed" not in message:
            return message
        chain = transport.getHandle().get_peer_cert_chain()
        try:
            problem = chain and self._certificate_problem(chain, self.verify_strict)
            only_strict_refuses = (
                self.verify_strict and bool(problem) and not self._certificate_problem(chain, strict=False)
            )
        except (OSError, crypto.Error):  # e.g. the CA file went away since the connection started
            return message
        if not problem:
            return message
        if only_strict_refuses:
            return (
                f"certificate verify failed: {problem} (the certificate is trusted but fails the strict X.509 "
                "checks, as Python 3.13 does; ssl_verify_strict=false in redis_url relaxes them)"
            )
        return f"certificate verify failed: {problem}"

    def _certificate_problem(self, chain: list[crypto.X509], strict: bool) -> str | None:
        """OpenSSL's reason the server's chain fails verification against the trusted authorities, or None."""
        store = crypto.X509Store()
        if self.ca_file:
            store.add_cert(crypto.load_certificate(crypto.FILETYPE_PEM, _read(self.ca_file)))
        else:  # the system's authorities, as optionsForClientTLS trusts without a trustRoot
            defaults = ssl.get_default_verify_paths()
            if defaults.cafile or defaults.capath:
                store.load_locations(defaults.cafile, defaults.capath)
        if strict:
            store.set_flags(crypto.X509StoreFlags.X509_STRICT)
        try:
            crypto.X509StoreContext(store, chain[0], chain[1:]).verify_certificate()
        except crypto.X509StoreContextError as e:
            return str(e)
        return None

    def __str__(self) -> str:
        """The URL with the password hidden, for logs."""
        auth = ""
        if self.username or self.password:
            auth = f"{self.username or ''}:***@"
        if self.scheme == "unix":
            return f"unix://{self.path}"
        if self.sentinels:
            hosts = ",".join(show(address) for address in self.sentinels)
            return f"{self.scheme}://{auth}{hosts}/{self.master_name}/{self.db}"
        if self.cluster_nodes:
            return f"{self.scheme}://{auth}{','.join(show(address) for address in self.cluster_nodes)}"
        return f"{self.scheme}://{auth}{self.host}:{self.port}/{self.db}"


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


@implementer(IOpenSSLClientConnectionCreator)
class _StrictX509:
    """
    TLS connections that also make OpenSSL's strict X.509 checks, as Python 3.13's
    default context does, so a CA without the extensions a real one has fails the
    same on every Python.
    """

    def __init__(self, creator: IOpenSSLClientConnectionCreator) -> None:
        self._creator = creator

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        connection = self._creator.clientConnectionForTLS(tlsProtocol)
        store = connection.get_context().get_cert_store()
        assert store is not None  # OpenSSL gives every context one
        store.set_flags(crypto.X509StoreFlags.X509_STRICT)
        return connection


@dataclass
class _Watch:
    """A watched topic: its joiners, and its PSUBSCRIBE pattern, kept for as long as it is watched."""

    pattern: bytes
    count: int = 0
    subscribed: bool = False  # whether its own pattern is subscribed on this connection


class _Factory(protocol.Factory):
    """
    Builds txredisapi protocols for a ClientService. txredisapi's protocol calls back
    into its factory when AUTH or SELECT fails; those calls land here and are logged.
    """

    isLazy = False
    noisy = False

    def __init__(
        self,
        protocol_class: type,
        url: RedisURL,
        on_ready: Callable[[Any], None],
        on_refused: Callable[[str], None] | None = None,
    ) -> None:
        self._protocol_class = protocol_class
        self._url = url
        self._on_ready = on_ready
        self._on_refused = on_refused

    def buildProtocol(self, addr: Any) -> Any:
        p = self._protocol_class(
            charset=None,
            password=self._url.password,
            username=self._url.username,
            dbid=self._url.db or None,
            convertNumbers=False,
        )
        p.factory = self
        p.whenConnected().addCallback(self._on_ready)
        return p

    def stopTrying(self) -> None:
        pass

    def connectionError(self, why: str) -> None:
        if self._on_refused is not None:
            self._on_refused(why)
        else:
            log.error("Redis refused the connection: {why}", why=why)


@provider(ILogObserver)
def _warnings_only(event: dict[str, Any]) -> None:
    if event["log_level"] >= LogLevel.warn:
        globalLogPublisher(event)


class _ReconnectingService(ClientService):
    """A ClientService that does not log every retry: the bridge says once that Redis is down."""

    _log = Logger(observer=_warnings_only)


class _ReportsEarlyLoss(txredisapi.BaseRedisProtocol):
    """
    Reports a connection lost before it was ready, e.g. a TLS certificate that failed
    verification: txredisapi itself says nothing then.
    """

    def connectionLost(self, why: Any) -> None:
        if not self._ready:
            self.factory.connectionError(self.factory._url.explain(self.transport, why))
        super().connectionLost(why)


class _Commands(_ReportsEarlyLoss, txredisapi.RedisProtocol):
    pass


class _Subscriber(_ReportsEarlyLoss, txredisapi.SubscriberProtocol):
    on_message: Callable[[bytes | None, bytes, bytes], None] = staticmethod(lambda pattern, channel, message: None)
    on_read_over: Callable[[], None] = staticmethod(lambda: None)
    reads = 0  # how many times the socket was read: a count that stands still says Redis is silent

    def probe(self) -> None:
        """A ``PING`` whose answer nobody waits for: any read after it says the server is there."""
        self.transport.write(b"PING\r\n")

    def on_messages(self, replies: list[list[Any]]) -> None:
        """
        Messages as ``[kind, pattern, channel, message]`` replies, in the order read: each
        to ``on_message``, unless a handler of the whole list takes this one's place.
        """
        for _, pattern, channel, message in replies:
            self.on_message(pattern, channel, message)

    def dataReceived(self, data: bytes, unpause: bool = False) -> None:
        """Parse a read, then say it is over (``on_read_over``), however the parse ended."""
        self.reads += 1
        try:
            self._parse(data, unpause)
        finally:  # what the read queued is handed on, even if a reply broke the parser
            self.on_read_over()

    def _parse(self, data: bytes, unpause: bool) -> None:
        """
        Hand the ``pmessage`` replies read to ``on_messages`` together, straight from
        hiredis's reader, and every other reply to txredisapi as usual. Its path converts
        each reply element (nothing to convert here: no charset, no numbers) and tests it
        for transactions and subscription replies, several calls per message that W5's
        profile showed.
        """
        reader = getattr(self, "_reader", None)
        if reader is None:  # txredisapi without hiredis: its own parser
            super().dataReceived(data, unpause)
            return
        messages: list[list[Any]] = []
        try:
            for start in range(0, max(len(data), 1), FEED_BYTES):
                if data:
                    reader.feed(data, start, min(FEED_BYTES, len(data) - start))
                reply = reader.gets()
                while reply is not False:
                    if type(reply) is list and len(reply) == 4 and reply[0] == b"pmessage":
                        messages.append(reply)
                    else:
                        if messages:  # first: the reply may change what they mean (a subscription's ack)
                            handed, messages = messages, []
                            self.on_messages(handed)
                        self._other_reply(reply)
                    reply = reader.gets()
        finally:  # the messages before a reply that broke the parser are whole: handed on
            if messages:
                self.on_messages(messages)

    def _other_reply(self, reply: Any) -> None:
        """What ``HiredisProtocol.dataReceived`` does with one reply."""
        if isinstance(reply, (str, bytes, list)):
            reply = self.tryConvertData(reply)
        if reply == "QUEUED":
            self.transactions += 1
        else:
            reply = self.handleTransactionData(reply)
        self.replyReceived(reply)

    def messageReceived(self, pattern: bytes | None, channel: bytes, message: bytes) -> None:
        self.on_messages([[b"pmessage" if pattern is not None else b"message", pattern, channel, message]])

    def replyReceived(self, reply: Any) -> None:
        # txredisapi's subscriber keeps the last three items of any other reply, which
        # would cut a replica's ROLE answer (asked before subscribing) to its last three
        if is_role_reply(reply):
            self.replyQueue.put(reply)
        elif reply in PONGS:  # a probe's answer (subscribed or not): no command waits for it
            return
        else:
            super().replyReceived(reply)


class RedisBridge(MultiService):
    """
    Publishes for the hub and feeds it what Redis delivers.

    ``on_messages([(topic, event, payload), ...])`` gets the messages on watched topics
    in order, about ``pending.SLICE_BYTES`` of them at a time (all that arrived, when
    less), so a burst can be written to each client in one go, the first slice in the
    reactor turn of the read that brought it and the rest a turn each (see ``pending``),
    and answers how many deliveries (frames to sockets) they made; ``on_connect()`` runs each time
    both connections are up, the first time and after every outage, so the owner can
    restore what Redis lost.
    """

    def __init__(
        self,
        reactor: IReactorTime,
        url: RedisURL,
        metrics: Metrics | None = None,
        timeout: float = 5.0,
        max_pending_bytes: int = 64 * 1024 * 1024,
        max_message_size: int = 1024 * 1024,
        wait_replicas: int = 0,
        read_delay: float = 0.0,
    ) -> None:
        super().__init__()
        self.url = url
        self.timeout = timeout
        self.max_message_size = max_message_size
        self._disconnections: int | None = None  # Redis's count of clients cut for their output buffer
        self._errors = ThrottledLog(log, reactor)
        self.metrics = metrics if metrics is not None else Metrics()
        self.on_messages: Callable[[list[tuple[str, str, bytes]]], int] = lambda messages: 0
        self._pending: PendingMessages[tuple[str, str, bytes]] = PendingMessages(
            reactor, self._deliver, max_pending_bytes, self.metrics, read_delay=read_delay
        )
        self.metrics.count_pending(lambda: self._pending.bytes, lambda: self._pending.busy)
        self.on_connect: Callable[[], None] = lambda: None
        self._watched: dict[str, _Watch] = {}
        # channel -> (topic, event, the topic's pattern), or None if no watched topic
        # takes it; forgotten whenever a topic is first watched or last unwatched
        self._routes: dict[bytes, tuple[str, str, bytes] | None] = {}
        self._confirming: dict[str, list[defer.Deferred[None]]] = {}
        # ``to:*`` on this connection: asked for, confirmed, and the joins waiting for it
        self._all_asked = False
        self._all_confirmed = False
        self._all_waiters: list[defer.Deferred[None]] = []
        self._commands: Any = None
        self._subscriber: Any = None
        self._was_connected = False
        self._reported_down = False
        self._reported_refusal = False
        self._clock = reactor
        # Commands not yet answered, and their deadlines, oldest first: all share one
        # timeout, so deadlines come in order and one timer, armed for the oldest,
        # serves them all (a timer per command cost a heap entry and a cancel each).
        self._deadlines: dict[defer.Deferred[Any], float] = {}
        self._deadline_timer: IDelayedCall | None = None
        self._expiring = False
        self._unanswered = 0  # until Redis answers, timed out or not
        self._all_answered: list[defer.Deferred[None]] = []
        # WAIT's own timeout is shorter than ours, so that Redis says how many replicas confirmed
        if wait_replicas and url.cluster_nodes:
            # a cluster sends PUBLISH to the other nodes over its bus, not down the
            # replication stream: WAIT would confirm nothing about a push
            log.warn("redis_wait_replicas = {n} has no effect on a Redis Cluster: PUBLISH reaches the other nodes "
                     "over the cluster bus, not through replication; pushes are answered once a node took them",
                     n=wait_replicas)
            wait_replicas = 0
        self._replica_wait = ReplicaWait(reactor, self.execute, wait_replicas, timeout / 2) if wait_replicas else None
        self.address: str | None = None  # the server the commands go to, and what ROLE called it
        self.role = "unknown"
        self.subscriber_address: str | None = None  # the subscriber's server (another node, in a cluster)
        # the last moves of the primary followed (Sentinel, Cluster), oldest first
        self.failovers: list[dict[str, Any]] = []
        self._cluster: ClusterNodes | None = None
        self._slot_primary: PrimaryEndpoint | None = None  # a cluster's commands endpoint
        self._redirected: Redirected | None = None  # where a cluster's redirections send commands
        self._moved_to: Address | None = None  # the primary a MOVED named, until the commands reconnect
        self._named_elsewhere: Address | None = None  # the other primary the last check heard of
        self._subscriber_reads = 0  # the subscriber's reads at the last check
        self._silent_since: float | None = None  # when the subscriber was last found silent, and probed
        retry = backoffPolicy(initialDelay=0.1, maxDelay=2.0)
        commands, subscriber = self._endpoints(reactor, url, retry)
        self._connections = {
            "_commands": _ReconnectingService(
                commands, _Factory(_Commands, url, self._checked(self._commands_ready, True), self._refused),
                retryPolicy=retry,
            ),
            "_subscriber": _ReconnectingService(
                subscriber, _Factory(_Subscriber, url, self._checked(self._subscriber_ready, False), self._refused),
                retryPolicy=retry,
            ),
        }
        for service in self._connections.values():
            service.setServiceParent(self)

    def _endpoints(
        self, reactor: Any, url: RedisURL, retry: Callable[[int], float]
    ) -> tuple[IStreamClientEndpoint, IStreamClientEndpoint]:
        """
        Where the commands and the subscriber go: the URL's server; or the primary the
        sentinels name on each attempt, while a third connection listens to one sentinel
        for failovers; or in a cluster the primary of the presence slot, and any node.
        """
        if url.cluster_nodes:

            def connect(address: Address) -> Any:
                return connect_once(reactor, url.at(address))

            self._cluster = ClusterNodes(reactor, url.cluster_nodes, connect, timeout=self.timeout)
            self._redirected = Redirected(reactor, connect, self._send_again, self.timeout)

            def at(address: Address) -> IStreamClientEndpoint:
                return url.at(address).endpoint(reactor)

            self._slot_primary = PrimaryEndpoint(self._cluster, at, self._refused)
            for each_second in (self._check_slot_owner, self._check_subscriber):
                check = TimerService(CLUSTER_CHECK_INTERVAL, each_second)
                check.clock = reactor
                check.setServiceParent(self)
            return self._slot_primary, Rotation(self._cluster.addresses, at)
        if url.master_name is None:
            return url.endpoint(reactor), url.endpoint(reactor)
        sentinels = Sentinels(
            reactor, url.sentinels, url.master_name, lambda address: connect_once(reactor, url.sentinel(address)),
            timeout=self.timeout,
        )
        watch = Rotation(url.sentinels, lambda address: url.sentinel(address).endpoint(reactor))
        announcements = _Factory(_Subscriber, url.sentinel(url.sentinels[0]), self._watch_failovers, self._refused)
        _ReconnectingService(watch, announcements, retryPolicy=retry).setServiceParent(self)
        primary = PrimaryEndpoint(sentinels, lambda address: url.at(address).endpoint(reactor), self._refused)
        return primary, primary

    def deliver_to(
        self, on_messages: Callable[[list[tuple[str, str, bytes]]], int], on_connect: Callable[[], None]
    ) -> None:
        """
        Who gets what Redis delivers, and who restores state when it connects (the hub and
        presence). Not constructor arguments: they publish through this bridge, so it is
        built first and connected to them afterwards, in ``makeService``.
        """
        self.on_messages = on_messages
        self.on_connect = on_connect

    @property
    def connected(self) -> bool:
        return self._commands is not None and self._subscriber is not None

    @property
    def watched_topics(self) -> list[str]:
        return list(self._watched)

    # connection state

    def _checked(self, ready: Callable[[Any], None], commands: bool) -> Callable[[Any], None]:
        """
        ``ready`` for a connection once ``ROLE`` has answered: the commands connection's
        role is shown in /healthz, and a server the sentinels named that is not the
        primary is left. The subscriber of a plain URL needs no asking.
        """

        def check(conn: Any) -> None:
            if self.url.master_name is None and not commands:
                ready(conn)
                return
            asked = self._within_timeout(conn.role().addErrback(_unavailable_on_connection_error))
            arguments = (conn, ready, commands)
            asked.addCallbacks(self._role_answered, self._role_unknown, callbackArgs=arguments, errbackArgs=arguments)

        return check

    def _role_answered(self, reply: Any, conn: Any, ready: Callable[[Any], None], commands: bool) -> None:
        role = role_of(reply)
        if self.url.follows_primary and role != "master":
            who = "the cluster" if self.url.cluster_nodes else "the sentinels"
            self._errors.emit(
                "not primary",
                "{address}, named by {who} as the primary of {what}, answers ROLE with {role!r}; asking {who} again",
                address=_peer(conn), who=who, what=self._primary_of, role=role,
            )
            conn.transport.loseConnection()
            return
        if commands:
            self.role = role
        ready(conn)

    def _role_unknown(self, failure: Failure, conn: Any, ready: Callable[[Any], None], commands: bool) -> None:
        """A managed Redis may refuse ROLE; a Sentinel setup's server must answer it."""
        if not self.url.follows_primary and failure.check(txredisapi.ResponseError):
            self._role_answered(None, conn, ready, commands)
            return
        if not failure.check(RedisUnavailable) or failure.check(RedisTimeout):  # a lost connection tells itself
            self._errors.emit("no role", "{address} did not answer ROLE: {why}; leaving it", address=_peer(conn),
                              why=failure.getErrorMessage())
        conn.transport.loseConnection()

    def _commands_ready(self, conn: Any) -> None:
        self._commands = conn
        self._moved_to = None
        conn.whenDisconnected().addCallback(self._lost, "_commands")
        self._maybe_up()

    def _subscriber_ready(self, conn: Any) -> None:
        conn.on_messages = self._received
        conn.on_read_over = self._pending.read_over
        transport = conn.transport
        while isinstance(transport, ProtocolWrapper):  # TLS: its socket reads for it
            transport = transport.transport
        reader = read_into_kept_buffer(transport, SUBSCRIBER_READ_SIZE)
        self._pending.attach(transport, reader.read_now)
        self._subscriber = conn
        conn.whenDisconnected().addCallback(self._lost, "_subscriber")
        self._all_asked = self._all_confirmed = False
        for watch in self._watched.values():
            watch.subscribed = False
        if len(self._watched) > WATCH_ALL_ABOVE:
            self._watch_all()
        else:
            for topic in self._watched:
                self._psubscribe(topic)
        self._maybe_up()

    def _maybe_up(self) -> None:
        if not self.connected:
            return
        address = _peer(self._commands)
        if self.url.master_name is not None and address != _peer(self._subscriber):
            # the sentinels named two primaries, one attempt each, during a failover
            log.warn("the Redis connections went to {one} and {other}; connecting both again", one=address,
                     other=_peer(self._subscriber))
            self._commands.transport.loseConnection()
            self._subscriber.transport.loseConnection()
            return
        self.metrics.redis_connected.set(1)
        self.metrics.redis_server.clear()
        self.metrics.redis_server.labels(address, self.role).set(1)
        if self.url.follows_primary and self.address not in (None, address):
            assert self.address is not None
            self._failed_over(self.address, address)
        subscriber = _peer(self._subscriber)
        if self.url.cluster_nodes and self.subscriber_address not in (None, subscriber):
            log.warn("the subscriber moved from {old} to {new}", old=self.subscriber_address, new=subscriber)
        self.subscriber_address = subscriber
        if self._was_connected:
            self.metrics.redis_reconnects.inc()
            moved = "" if address == self.address else f", now on {address} (was {self.address})"
            log.info("Redis at {url} is back{moved}; restoring subscriptions and presence", url=str(self.url),
                     moved=moved)
        else:
            log.info("connected to Redis at {url}: {address}, {role}", url=str(self.url), address=address,
                     role=self.role)
        self.address = address
        if not self._was_connected:
            self._check_output_limit()
        self._was_connected = True
        self._reported_down = False
        self._reported_refusal = False
        self._count_disconnections().addCallbacks(self._remember_disconnections, self._not_read)
        self.on_connect()

    # failovers (Sentinel URLs)

    def _watch_failovers(self, conn: Any) -> None:
        conn.on_message = self._announced
        conn.subscribe([SWITCH_CHANNEL]).addErrback(lambda failure: None)  # lost: the next one subscribes

    def _announced(self, pattern: bytes | None, channel: bytes, message: bytes) -> None:
        assert self.url.master_name is not None
        switch = switched(message, self.url.master_name) if channel == SWITCH_CHANNEL else None
        if switch is None:
            return
        old, new = (show(address) for address in switch)
        self._failed_over(old, new)
        for attribute, service in self._connections.items():
            conn = getattr(self, attribute)
            if self.running and (conn is None or _peer(conn) != new):
                # at once, not after the backoff: the old address is dead or demoted
                service.stopService().addCallback(self._restart, service)

    def _check_slot_owner(self) -> defer.Deferred[None] | None:
        """Ask the cluster who holds the presence slot; leave a primary it no longer names."""
        if self._commands is None or self._cluster is None:  # not connected: each attempt asks anyway
            return None
        return self._cluster.primary().addCallbacks(self._slot_owner, lambda failure: None)

    def _check_subscriber(self) -> None:
        """
        Leave a subscriber's node that has said nothing for ``timeout`` seconds since a
        probe. In a cluster the subscriber may sit on another node than the commands:
        one that hangs or is cut off closes nothing and answers no command, and without
        this its broadcasts would stop for good. A subscriber whose reading is paused
        (the queue of messages to deliver is full) is not judged.
        """
        conn = self._subscriber
        if conn is None or self._pending.paused or conn.reads != self._subscriber_reads:
            self._subscriber_reads = conn.reads if conn is not None else 0
            self._silent_since = None
            return
        now = self._clock.seconds()
        if self._silent_since is None:
            self._silent_since = now
            conn.probe()
        elif now - self._silent_since >= self.timeout:
            log.warn("the subscriber's Redis at {address} gave no answer within {timeout} s; leaving it",
                     address=_peer(conn), timeout=self.timeout)
            self._silent_since = None
            conn.transport.abortConnection()

    def _slot_owner(self, owner: Address) -> None:
        """
        Leave when two checks in a row name the same other primary: one answer may come
        from a node that has not yet heard of a failover the connection already followed.
        """
        # compared with the address connected to, not the peer's: the cluster may name hosts
        assert self._slot_primary is not None
        connected = self._slot_primary.address
        named_before, self._named_elsewhere = self._named_elsewhere, None
        if self._commands is None or not self.running or connected in (None, owner):
            return
        if named_before != owner:
            self._named_elsewhere = owner
            return
        assert connected is not None
        log.warn("Redis Cluster names {new} the primary of the presence slot; leaving {old}", new=show(owner),
                 old=show(connected))
        service = self._connections["_commands"]
        service.stopService().addCallback(self._restart, service)

    @property
    def _primary_of(self) -> str:
        """What the primary followed is the primary of."""
        return "the presence slot" if self.url.cluster_nodes else repr(self.url.master_name)

    def _failed_over(self, old: str, new: str) -> None:
        """
        Count and log a move of the primary once: heard from the sentinel, or seen on
        reconnecting (the watched sentinel may tell later, or not at all if it was down).
        """
        if self.failovers and (self.failovers[-1]["from"], self.failovers[-1]["to"]) == (old, new):
            return
        self.failovers.append({"from": old, "to": new, "at": round(self._clock.seconds(), 3)})
        del self.failovers[:-FAILOVERS_KEPT]
        self.metrics.redis_failovers.inc()
        log.warn("{how}: the primary of {what} moved from {old} to {new}",
                 how="Redis Cluster" if self.url.cluster_nodes else "Sentinel", what=self._primary_of, old=old, new=new)

    def _restart(self, stopped: None, service: ClientService) -> None:
        if self.running:
            service.startService()

    def _lost(self, conn: Any, attribute: str) -> None:
        if getattr(self, attribute) is conn:
            setattr(self, attribute, None)
            self.metrics.redis_connected.set(0)
        if attribute == "_subscriber" and self.running and not self.url.cluster_nodes:
            # (in a cluster the commands go to another node, whose counts say nothing of the subscriber's)
            self._diagnose_subscriber_loss()
        if self.running and not self._reported_down:
            self._reported_down = True
            log.warn("lost the connection to Redis at {url}; reconnecting", url=str(self.url))

    def _refused(self, why: str) -> None:
        """Say once, not on every retry, why Redis would not have us (TLS, AUTH, SELECT)."""
        if self.running and not self._reported_refusal:
            self._reported_refusal = True
            log.error("could not connect to Redis at {url}: {why}; retrying", url=str(self.url), why=why)

    # Redis's limit on subscribers (see outputlimit)

    def _check_output_limit(self) -> None:
        """Warn at start-up when a burst of large messages can make Redis cut the subscriber."""
        limit = self.execute("CONFIG", "GET", "client-output-buffer-limit")
        limit.addCallbacks(self._warn_if_too_low, self._not_read)

    def _warn_if_too_low(self, reply: list[bytes]) -> None:
        limits = outputlimit.pubsub_limits(reply)
        if limits is None or not outputlimit.too_low(limits, self.max_message_size):
            return
        hard, soft, seconds = limits
        log.warn(
            "Redis's client-output-buffer-limit pubsub is {hard} {soft} {seconds}: a burst of messages of "
            "max_message_size ({size} bytes) can pass it, and Redis then closes the subscriber and messages on "
            "every channel are lost; {advice}",
            hard=hard, soft=soft, seconds=seconds, size=self.max_message_size,
            advice=outputlimit.advice(self.max_message_size),
        )

    def _count_disconnections(self) -> defer.Deferred[int | None]:
        return self.execute("INFO", "stats").addCallback(outputlimit.disconnections)

    def _remember_disconnections(self, count: int | None) -> None:
        self._disconnections = count

    def _not_read(self, failure: Failure) -> None:
        """Redis gone (its outage is logged already) or CONFIG refused (a managed Redis): nothing to tell."""
        failure.trap(RedisUnavailable, txredisapi.ResponseError)

    def _diagnose_subscriber_loss(self) -> None:
        """Ask Redis, if it still answers commands, whether it cut the subscriber for its output buffer."""
        before = self._disconnections
        self._count_disconnections().addCallbacks(self._report_cut, self._not_read, callbackArgs=(before,))

    def _report_cut(self, after: int | None, before: int | None) -> None:
        self._disconnections = after
        self.metrics.redis_subscriber_cut.inc()
        self._errors.emit(
            "subscriber cut",
            "Redis closed the subscriber connection: {cause}; messages published meanwhile are lost on every "
            "channel; resubscribing",
            level=LogLevel.error,
            cause=outputlimit.cut_cause(before, after, self.max_message_size),
        )

    # subscriptions

    def watch(self, topic: str) -> defer.Deferred[None]:
        """
        Subscribe to ``to:<topic>:*``; fires once Redis confirmed (or at once if the
        topic is already watched). Counted: each watch needs one unwatch.
        """
        watch = self._watched.get(topic)
        if watch is None:
            watch = self._watched[topic] = _Watch(topic_pattern(topic))
            self._routes.clear()
        watch.count += 1
        if watch.count > 1:
            # a second joiner must not be answered before Redis confirmed the first's
            # PSUBSCRIBE either, or a plugin's reply to its phx_join could be lost
            waiters = self._confirming.get(topic)
            if waiters is None:
                return defer.succeed(None)
            d: defer.Deferred[None] = defer.Deferred()
            waiters.append(d)
            return d
        if self._subscriber is None:
            # restored by _subscriber_ready when Redis is back
            return defer.fail(RedisUnavailable())
        if not self._all_asked and len(self._watched) > WATCH_ALL_ABOVE:
            self._watch_all()
        if self._all_asked:
            if self._all_confirmed:
                return defer.succeed(None)
            waiter: defer.Deferred[None] = defer.Deferred()
            self._all_waiters.append(waiter)
            return self._within_timeout(waiter)
        waiters = self._confirming[topic] = []
        return self._within_timeout(self._psubscribe(topic)).addBoth(self._confirmed, topic, waiters)

    def _watch_all(self) -> None:
        """Subscribe ``to:*``; once Redis confirms, drop the topics' own patterns."""
        log.info(
            "watching more than {limit} topics: subscribing to:* instead of a pattern per topic", limit=WATCH_ALL_ABOVE
        )
        self._all_asked = True
        d = self._subscriber.psubscribe([ALL_TOPICS_PATTERN])
        d.addCallbacks(self._all_subscribed, self._all_refused, callbackArgs=(self._subscriber,))

    def _all_subscribed(self, ack: Any, conn: Any) -> None:
        # Runs as Redis's confirmation is read, in order with the messages: every message
        # after it comes through to:* too, and ``_received`` now keeps only that copy.
        if conn is not self._subscriber:
            return
        self._all_confirmed = True
        for watch in self._watched.values():
            if watch.subscribed:
                watch.subscribed = False
                self._punsubscribe(watch.pattern)
        waiters, self._all_waiters = self._all_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def _all_refused(self, failure: Failure) -> None:
        """The connection went (``_subscriber_ready`` starts over) or Redis refused: the waiting joins fail."""
        waiters, self._all_waiters = self._all_waiters, []
        for waiter in waiters:
            waiter.errback(RedisUnavailable())

    def _confirmed(self, result: Any, topic: str, waiters: list[defer.Deferred[None]]) -> Any:
        if self._confirming.get(topic) is waiters:
            del self._confirming[topic]
        for d in waiters:
            if isinstance(result, Failure):
                d.errback(result)
            else:
                d.callback(result)
        return result

    def unwatch(self, topic: str) -> None:
        watch = self._watched.get(topic)
        if watch is None:
            return
        if watch.count > 1:
            watch.count -= 1
            return
        del self._watched[topic]
        self._routes.clear()
        if watch.subscribed:
            self._punsubscribe(watch.pattern)

    def _punsubscribe(self, pattern: bytes) -> None:
        if self._subscriber is not None:
            d = self._subscriber.punsubscribe([pattern]).addErrback(_unavailable_on_connection_error)
            d.addErrback(unless_unavailable(self._errors, "unsubscribing"))

    def _psubscribe(self, topic: str) -> defer.Deferred[None]:
        watch = self._watched[topic]
        watch.subscribed = True
        d = self._subscriber.psubscribe([watch.pattern])
        d.addCallback(lambda ack: None)
        return d.addErrback(lambda f: defer.fail(RedisUnavailable()))

    def _received(self, replies: list[list[Any]]) -> None:
        """
        Queue the messages of one read for watched topics as ``(topic, event, payload)``;
        the rest are dropped as they are read, before they take room in the queue: under
        ``to:*`` each worker reads every topic's messages, most of them for another
        worker's members. One call per read, not per message: W5 reads a hundred at a time.
        """
        all_confirmed, routes, chunk_bytes = self._all_confirmed, self._routes, self._pending.slice_bytes
        queued: list[tuple[str, str, bytes]] = []
        size = 0
        for _, pattern, channel, message in replies:
            is_all = pattern == ALL_TOPICS_PATTERN
            if is_all is not all_confirmed:
                continue  # the other copy of a message, while a topic's pattern and to:* overlap
            route = routes.get(channel, _UNKNOWN)
            if route is _UNKNOWN:
                route = self._route(channel)
            if route is None:
                continue
            topic, event, topic_pattern = route
            # A topic "a" also matches "to:a:b:event" through its pattern "to:a:*"; only
            # the pattern of the topic the channel names may deliver it, or members of
            # "a:b" would get it twice.
            if not is_all and pattern != topic_pattern:
                continue
            queued.append((topic, event, message))
            size += len(message)
            if size >= chunk_bytes:  # a slice's worth: the queue hands on no more in one turn
                self._pending.extend(queued, size)
                queued, size = [], 0
        if queued:
            self._pending.extend(queued, size)

    def _route(self, channel: bytes) -> tuple[str, str, bytes] | None:
        """
        ``channel``'s topic, event and the topic's pattern, or None if it names no watched
        topic; remembered: one dictionary lookup a message instead of a split and another.
        """
        split = split_channel(channel)
        watch = None if split is None else self._watched.get(split[0])
        route = None if split is None or watch is None else (split[0], split[1], watch.pattern)
        if len(channel) <= SPLIT_NAME_LIMIT:  # a long name would hold its bytes in the cache
            routes = self._routes
            if len(routes) >= ROUTES_KEPT:
                routes.clear()
            routes[channel] = route
        return route

    def _deliver(self, messages: list[tuple[str, str, bytes]]) -> int:
        return self.on_messages(messages)

    # commands

    def execute(self, *command: Any, answered: Callable[[], None] | None = None) -> defer.Deferred[Any]:
        """
        Run a command. Fails with RedisUnavailable at once while Redis is down, and with
        RedisTimeout when Redis has not answered within ``timeout`` seconds. ``answered``
        runs once the command is done with: answered, dropped with the connection, or
        never sent; after a timeout too, when the late answer comes.
        """
        conn = self._commands
        d = None
        if conn is not None:
            try:
                d = conn.execute_command(*command)
            except txredisapi.ConnectionError:
                pass
        if d is None and self._moved_to is not None and self._redirected is not None:
            # reconnecting to the primary a MOVED named: meanwhile the commands go to it directly
            d = self._redirected.send(self._moved_to, command)
        if d is None:
            if answered is not None:
                answered()
            return defer.fail(RedisUnavailable())
        if self._redirected is not None:
            d.addErrback(self._moved, conn, command)
        return self._within_timeout(d.addErrback(_unavailable_on_connection_error), answered)

    def _moved(self, failure: Failure, conn: Any, command: tuple[Any, ...]) -> Any:
        """
        A cluster's redirection, followed (see ``cluster.Redirected``); on ``MOVED`` the
        presence slot has another primary (a failover, a resharding), and the command
        connection goes there too, by asking the node named first.
        """
        failure.trap(txredisapi.ResponseError)
        to = redirection(failure.getErrorMessage())
        if to is None:
            return failure
        kind, address = to
        assert self._cluster is not None and self._redirected is not None
        if kind == "MOVED" and conn is self._commands:
            assert address is not None
            self._cluster.to_front(address)
            self._moved_to = address
            self._errors.emit("moved", "Redis Cluster moved the presence slot to {address}; following it",
                              address=show(address))
            conn.transport.loseConnection()
        return self._redirected.follow(kind, address, command, 0, self._clock.seconds() + self.timeout)

    def _send_again(self, *command: Any) -> defer.Deferred[Any]:
        """A command on the command connection again, its answer not yet timed (its first sending's is)."""
        conn = self._commands
        if conn is None:
            return defer.fail(RedisUnavailable())
        return defer.maybeDeferred(conn.execute_command, *command)

    def _within_timeout(
        self, answer: defer.Deferred[Any], answered: Callable[[], None] | None = None
    ) -> defer.Deferred[Any]:
        """
        ``answer``'s outcome, or RedisTimeout after ``timeout`` seconds. ``answer`` itself
        is never cancelled: txredisapi pairs replies with commands in order, and a
        cancelled one would hand the next command this one's reply.
        """
        result: defer.Deferred[Any] = defer.Deferred()
        self._deadlines[result] = self._clock.seconds() + self.timeout
        if self._deadline_timer is None and not self._expiring:
            self._deadline_timer = self._clock.callLater(self.timeout, self._expire)
        self._unanswered += 1
        answer.addBoth(self._answered, result, answered)
        return result

    def _answered(self, outcome: Any, result: defer.Deferred[Any], answered: Callable[[], None] | None) -> None:
        self._unanswered -= 1
        if not self._unanswered:
            waiting, self._all_answered = self._all_answered, []
            for each in waiting:
                each.callback(None)
        if self._deadlines.pop(result, None) is not None:  # else the caller was told of a timeout
            if isinstance(outcome, Failure):
                result.errback(outcome)
            else:
                result.callback(outcome)
        if answered is not None:  # after the caller heard: what this lets through comes after
            answered()

    def _expire(self) -> None:
        """Fail the commands past their deadline with RedisTimeout, then wait for the next one's."""
        self._deadline_timer = None
        self._expiring = True  # what the errbacks send is timed from the timer armed below
        try:
            now = self._clock.seconds()
            while self._deadlines:
                result, deadline = next(iter(self._deadlines.items()))
                if deadline > now:
                    self._deadline_timer = self._clock.callLater(deadline - now, self._expire)
                    return
                del self._deadlines[result]
                self._timed_out(result)
        finally:
            self._expiring = False

    def _timed_out(self, result: defer.Deferred[Any]) -> None:
        self.metrics.redis_timeouts.inc()
        self._errors.emit(
            "timeout", "Redis at {url} gave no answer within {timeout} s", url=str(self.url), timeout=self.timeout
        )
        result.errback(RedisTimeout())

    def publish(
        self, channel: bytes, payload: bytes, answered: Callable[[], None] | None = None
    ) -> defer.Deferred[Any]:
        """
        ``PUBLISH``; with ``wait_replicas``, answered once that many replicas have it too
        (``answered`` still runs when Redis answered the ``PUBLISH``).
        """
        published = self.execute("PUBLISH", channel, payload, answered=answered)
        if self._replica_wait is None or self._commands is None:
            return published
        replicated = self._replica_wait.after_publish()

        def confirmed(receivers: Any) -> defer.Deferred[Any]:
            return replicated.addCallback(lambda _: receivers)

        def failed(failure: Failure) -> Failure:
            replicated.addErrback(lambda _: None)
            return failure

        return published.addCallbacks(confirmed, failed)

    def stopService(self) -> defer.Deferred[None]:
        """
        Close the connections once the commands already sent are answered (presence
        withdraws this node's entries during shutdown): a socket closed with replies
        unread is reset, and Redis then drops the commands it has not run yet.
        """
        self._reported_down = True
        answered: defer.Deferred[None] = defer.Deferred()
        if self._unanswered:
            self._all_answered.append(answered)
        else:
            answered.callback(None)
        answered.addTimeout(3, self._clock, onTimeoutCancel=lambda result, timeout: None)
        return answered.addCallback(self._stop_connections)

    def _stop_connections(self, _: None) -> defer.Deferred[None]:
        self._pending.stop()
        if self._redirected is not None:
            self._redirected.close()
        return super().stopService()


async def connect_once(reactor: Any, url: RedisURL, subscriber: bool = False) -> Any:
    """
    One txredisapi connection, authenticated and ready, for short-lived tools; with a
    Sentinel URL, to the primary the sentinels name (NoPrimary if none does); with a
    Cluster URL, to the primary of the presence slot.
    """
    if url.master_name is not None:
        sentinels = Sentinels(reactor, url.sentinels, url.master_name, lambda a: connect_once(reactor, url.sentinel(a)))
        url = url.at(await sentinels.primary())
    elif url.cluster_nodes:
        url = url.at(await ClusterNodes(reactor, url.cluster_nodes, lambda a: connect_once(reactor, url.at(a))).primary())
    ready: defer.Deferred[Any] = defer.Deferred()
    factory = _Factory(_Subscriber if subscriber else _Commands, url, ready.callback)
    conn: Any = await url.endpoint(reactor).connect(factory)
    try:
        return await ready
    except defer.CancelledError:  # given up (a sentinel that takes no AUTH answer): not left open
        conn.transport.loseConnection()
        raise


def _peer(conn: Any) -> str:
    """``host:port`` of the server a connection is on (a Unix socket's path)."""
    peer = conn.transport.getPeer()
    if hasattr(peer, "port"):
        return show((peer.host, peer.port))
    return str(getattr(peer, "name", peer))


def _unavailable_on_connection_error(failure: Any) -> Any:
    failure.trap(txredisapi.ConnectionError)
    raise RedisUnavailable()
