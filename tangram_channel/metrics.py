"""
What the service counts, for ``GET /metrics`` (Prometheus text format).

Each service holds its own ``Metrics``, with its own ``CollectorRegistry``, so several
services in one process (tests, workers) never share or clash over instruments. The
hub, the WebSocket factory and the Redis bridge are handed it by ``makeService``; built
directly (in tests) they make a fresh one.

Counting stays off the per-member path: a broadcast to N members is counted once, as N
deliveries of one frame size.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, disable_created_metrics
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector
from twisted.web.resource import IResource

from .inflight import InFlight
from .partials import PartialMessages

PREFIX = "tangram_channel_"


def reason_label(reason: str) -> str:
    """A bounded label for a reason: the text before any detail (``invalid JSON: ...``)."""
    return reason.split(":", 1)[0][:60]


class Metrics:
    """The registry and every instrument of one service."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.sockets = Gauge(PREFIX + "sockets", "Open client connections: WebSockets and long-poll sessions", registry=r)
        self.joins = Counter(PREFIX + "joins", "Joins accepted", registry=r)
        self.join_refusals = Counter(PREFIX + "join_refusals", "Joins refused, by reason", ["reason"], registry=r)
        self.channels = Gauge(PREFIX + "channels", "Channels with members on this process", registry=r)
        self.members = Gauge(PREFIX + "members", "Joins (members of channels) on this process", registry=r)
        self.messages_received = Counter(PREFIX + "messages_received", "Frames received from clients", registry=r)
        self.bytes_received = Counter(PREFIX + "bytes_received", "Payload bytes received from clients", registry=r)
        # plain numbers, read at scrape time: added to for every slice read from Redis,
        # where a Counter takes a lock per call (W5's profile: 0.8-1.2 % of the service's time)
        self.frames_sent = 0
        self.bytes_sent = 0
        r.register(_SentCounts(self))
        self.redis_connected = Gauge(PREFIX + "redis_connected", "1 while both Redis connections are up", registry=r)
        self.redis_healthy = Gauge(
            PREFIX + "redis_healthy", "1 while Redis answers the health probe's writes in time", registry=r
        )
        self.redis_server = Gauge(
            PREFIX + "redis_server",
            "1 for the Redis server this node is on (host:port) and the role it answered ROLE with",
            ["address", "role"],
            registry=r,
        )
        self.redis_failovers = Counter(
            PREFIX + "redis_failovers",
            "Moves of the primary this node followed (announced by Sentinel's +switch-master, or found on reconnecting)",
            registry=r,
        )
        self.redis_reconnects = Counter(
            PREFIX + "redis_reconnects", "Times Redis came back after an outage", registry=r
        )
        self.slow_clients_closed = Counter(
            PREFIX + "slow_clients_closed", "Sockets closed with 1008 for not reading", registry=r
        )
        self.reads_paused_unread = Counter(
            PREFIX + "reads_paused_unread",
            "Times a socket was read no further until it read the replies it had asked for (64 KiB of them waiting)",
            registry=r,
        )
        self.frames_rejected = Counter(
            PREFIX + "frames_rejected", "Client frames that could not be parsed, by reason", ["reason"], registry=r
        )
        self.redis_timeouts = Counter(
            PREFIX + "redis_timeouts", "Redis commands not answered within redis_timeout", registry=r
        )
        self.redis_commands_in_flight = Gauge(
            PREFIX + "redis_commands_in_flight", "Client publishes Redis has not answered yet", registry=r
        )
        self.redis_bytes_in_flight = Gauge(
            PREFIX + "redis_bytes_in_flight", "Bytes of client publishes Redis has not answered yet", registry=r
        )
        self.sockets_waiting_for_redis = Gauge(
            PREFIX + "sockets_waiting_for_redis", "Sockets not read until Redis answers their publishes", registry=r
        )
        self.redis_pending_bytes = Gauge(
            PREFIX + "redis_pending_bytes", "Bytes read from the Redis subscriber not yet handed to clients", registry=r
        )
        self.redis_reads_gathered = Gauge(
            PREFIX + "redis_reads_gathered",
            "1 while the service is busy enough that a busy Redis stream rests between reads (redis_read_delay)",
            registry=r,
        )
        self.redis_subscriber_pauses = Counter(
            PREFIX + "redis_subscriber_pauses",
            "Times the Redis subscriber was not read because max_pending_redis_bytes were pending",
            registry=r,
        )
        self.redis_subscriber_cut = Counter(
            PREFIX + "redis_subscriber_cut",
            "Times Redis closed the subscriber connection while it still answered commands",
            registry=r,
        )
        self.heartbeats = Counter(PREFIX + "heartbeats", "Heartbeats received from clients", registry=r)
        self.http_refusals = Counter(
            PREFIX + "http_refusals",
            "HTTP connections closed at accept or for what they sent, by reason "
            "(body too large, slow request head, connection cap, descriptors)",
            ["reason"],
            registry=r,
        )
        self.rate_limited = Counter(
            PREFIX + "rate_limited", "Client messages answered 'rate limit exceeded'", registry=r
        )
        self.rate_clients_closed = Counter(
            PREFIX + "rate_clients_closed", "Sockets closed with 1008 for sending over message_rate", registry=r
        )
        self.pongs_skipped = Counter(PREFIX + "pongs_skipped", "Pings over message_rate left unanswered", registry=r)
        self.longpoll_sessions = Gauge(
            PREFIX + "longpoll_sessions", "Open long-poll sessions (also counted in sockets)", registry=r
        )
        self.longpoll_expired = Counter(
            PREFIX + "longpoll_expired", "Long-poll sessions ended for no poll in longpoll_session_timeout", registry=r
        )
        self.receive_throttled = Counter(
            PREFIX + "receive_throttled",
            "Times a socket was not read for a moment for sending over max_receive_rate",
            registry=r,
        )
        self.partial_message_bytes = Gauge(
            PREFIX + "partial_message_bytes", "What messages still arriving hold past 64 KiB each, in bytes", registry=r
        )
        self.partial_message_closes = Counter(
            PREFIX + "partial_message_closes",
            "Sockets closed with 1013 because their message still arriving did not fit in max_partial_message_bytes",
            registry=r,
        )

    def count_sockets(self, sockets: Callable[[], float]) -> None:
        """Read the open-socket count at scrape time rather than tracking it."""
        self.sockets.set_function(sockets)

    def count_in_flight(self, inflight: InFlight) -> None:
        """Read what clients have waiting on Redis (an ``InFlight``) at scrape time."""
        self.redis_commands_in_flight.set_function(lambda: inflight.commands)
        self.redis_bytes_in_flight.set_function(lambda: inflight.bytes)
        self.sockets_waiting_for_redis.set_function(lambda: inflight.waiting)

    def count_partial_messages(self, pool: PartialMessages) -> None:
        """Read what messages still arriving hold from the process's pool at scrape time."""
        self.partial_message_bytes.set_function(lambda: pool.bytes)

    def count_pending(self, pending_bytes: Callable[[], float], gathering: Callable[[], float]) -> None:
        """Read, at scrape time, the bytes waiting between the Redis subscriber and the hub, and whether its reads are gathered."""
        self.redis_pending_bytes.set_function(pending_bytes)
        self.redis_reads_gathered.set_function(gathering)

    def count_channels(self, channels: Callable[[], float]) -> None:
        self.channels.set_function(channels)

    def sent(self, frames: int, size: int) -> None:
        """``frames`` frames went out, ``size`` bytes in all (one call per burst)."""
        self.frames_sent += frames
        self.bytes_sent += size

    def received(self, size: int) -> None:
        self.messages_received.inc()
        self.bytes_received.inc(size)

    def refused(self, reason: str) -> None:
        self.join_refusals.labels(reason_label(reason)).inc()

    def rejected(self, reason: str) -> None:
        self.frames_rejected.labels(reason_label(reason)).inc()


class _SentCounts(Collector):
    """``Metrics.frames_sent`` and ``bytes_sent`` as the two counters Prometheus is shown."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily(
            PREFIX + "messages_sent",
            "Frames sent to clients; a broadcast counts once per member",
            value=self._metrics.frames_sent,
        )
        yield CounterMetricFamily(
            PREFIX + "bytes_sent",
            "Frame bytes sent to clients; a broadcast counts once per member",
            value=self._metrics.bytes_sent,
        )


class ChannelTraffic:
    """
    Messages in (client pushes) and out (deliveries, once per member) of each channel
    with members on this process, for the admin console's per-channel rates. Not in
    ``/metrics``: a label per channel would grow without bound there. A channel's counts
    go when its last member leaves here, so this holds no more channels than the hub.
    """

    def __init__(self) -> None:
        self._counts: dict[str, list[int]] = {}

    def received(self, topic: str) -> None:
        self._counts.setdefault(topic, [0, 0])[0] += 1

    def sent(self, topic: str, deliveries: int) -> None:
        self.counts(topic)[1] += deliveries

    def counts(self, topic: str) -> list[int]:
        """
        ``[messages in, messages out]`` of ``topic``, counted in place: a member alone in its
        channel keeps the list (``hub.Member.lone_push``) rather than have it looked up per message.
        """
        counts = self._counts.get(topic)  # not setdefault: its new list, made each call, is the cost
        if counts is None:
            counts = self._counts[topic] = [0, 0]
        return counts

    def forget(self, topic: str) -> None:
        self._counts.pop(topic, None)

    def of(self, topic: str) -> tuple[int, int]:
        """``(messages in, messages out)`` of ``topic`` since it last had members here."""
        counts = self._counts.get(topic, (0, 0))
        return counts[0], counts[1]


def metrics_resource(metrics: Metrics) -> IResource:
    """``GET /metrics``: prometheus_client's own Twisted resource on this service's registry."""
    from prometheus_client.twisted import MetricsResource

    # Each counter would come twice, with a ``_created`` timestamp series that Prometheus
    # does not need for rates: a process-wide switch, which no other registry here wants
    disable_created_metrics()
    return MetricsResource(metrics.registry)
