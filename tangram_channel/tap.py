"""
``twistd tangram-channel``: command-line options and the service tree.

``makeService`` only wires objects together: Redis (maybe a private one), presence,
the hub, the WebSocket factory and the HTTP site on every listening endpoint.
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
import sys
from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.logger import Logger
from twisted.python import usage

from . import __version__
from . import config as configuration
from .dispatcher import Hub
from .admin import AdminPage
from .embedded import EmbeddedRedis, find_redis_server, is_listening, server_arguments
from .health import HealthResource
from .inflight import InFlight
from .logs import LoggedService, twistd_observer
from .metrics import Metrics, metrics_resource
from .memory import keep_large_buffers_separate
from .presence import Presence
from .protocol import PhoenixFactory
from .redis import RedisBridge, RedisURL
from .service import ChannelService, ExitZeroOnSignal
from .tokens import TokenAuthority
from .web import make_site
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
        ["redis-url", None, None, "redis://[user:pass@]host:port/db, rediss://... or unix://path."],
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
        """Refuse a bad configuration while parsing, where twistd reports it without a traceback."""
        try:
            checked_config(self, dict(os.environ), quiet=True)
        except usage.UsageError as e:
            if self.parent is None:  # not under twistd
                raise
            # twistd before 26.10 prints a usage error but exits 0: a refused start must fail
            sys.stderr.write(f"tangram-channel: {e}\n")
            raise SystemExit(1) from None

    def command_line(self) -> dict[str, Any]:
        """The settings given on the command line, by config key."""
        given = {key.replace("-", "_"): self[key] for key, *_ in self.optParameters if key != "config"}
        given["listen"] = self["listen"] or None
        return given


# settings that may hold a secret, which ``ps`` would show every user of the machine
SECRET_KEYS = ("jwt_secret", "admin_key", "redis_url")


def worker_command(options: Options) -> tuple[list[str], dict[str, str]]:
    """
    A worker's arguments and the environment variables to add to its own: the parent's
    command line, with the settings that may hold secrets moved into the environment.
    """
    settings = {**options.command_line(), "workers": "1", "embedded_redis": "false", "log_format": "text"}
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


def _is_loopback_endpoint(description: str) -> bool:
    """Whether a server endpoint string only accepts connections from this machine."""
    kind = description.split(":", 1)[0]
    if kind == "unix":
        return True
    # endpoint strings escape the colons of IPv6 addresses: split on the others only
    for part in re.split(r"(?<!\\):", description):
        if part.startswith("interface="):
            host = part[len("interface=") :].replace("\\", "")
            try:
                return ipaddress.ip_address(host).is_loopback
            except ValueError:
                return host == "localhost"
    return False


def check_secret(config: configuration.Config, quiet: bool = False) -> None:
    """The well-known default secret would let anyone forge tokens: loopback only."""
    if config.jwt_secret != configuration.DEFAULT_SECRET:
        return
    if not all(_is_loopback_endpoint(e) for e in config.endpoints):
        raise configuration.ConfigError(
            'refusing to listen beyond loopback with the default jwt_secret "secret": set [channel] jwt_secret '
            "in tangram.toml, TANGRAM_CHANNEL_JWT_SECRET, or --jwt-secret"
        )
    if not quiet:
        log.warn(
            'USING THE DEFAULT jwt_secret "secret": anyone can forge tokens. Fine on loopback for a trial; '
            "set jwt_secret in tangram.toml or TANGRAM_CHANNEL_JWT_SECRET before exposing this service."
        )


def checked_config(
    options: Options, environ: dict[str, str], quiet: bool = False
) -> tuple[configuration.Config, RedisURL]:
    """The settings and the Redis URL, or a UsageError naming what is wrong."""
    try:
        config = load_config(options, environ, quiet)
        url = RedisURL(config.redis_url)
        check_secret(config, quiet)
        if config.workers > 1 and not options["worker"]:
            if not all(e.startswith(("tcp:", "ssl:")) for e in config.endpoints):
                raise configuration.ConfigError("workers > 1 needs tcp: or ssl: endpoints, which the workers share")
    except (configuration.ConfigError, ValueError) as e:
        raise usage.UsageError(str(e)) from None
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

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except CannotListenError as e:
            sys.stderr.write(f"tangram-channel: cannot listen on {self.endpoint_description}: {e.socketError}\n")
            raise SystemExit(1) from None


def embedded_redis(reactor: Any, config: configuration.Config, url: RedisURL) -> EmbeddedRedis | None:
    """A private redis-server when allowed, the URL is local and nothing answers there."""
    if config.embedded_redis is False or not url.is_local:
        return None
    if url.scheme == "unix":
        if os.path.exists(url.path):
            return None
    elif is_listening(url.host, url.port):
        return None
    binary = find_redis_server()
    if binary is None:
        if config.embedded_redis is True:
            raise configuration.ConfigError("embedded_redis is true but no redis-server was found")
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
    keep_large_buffers_separate()
    top = LoggedService(reactor, twistd_observer(options.parent, config.log_format, config.log_level))
    ExitZeroOnSignal(reactor).setServiceParent(top)
    private_redis = embedded_redis(reactor, config, url)
    if private_redis is not None:
        private_redis.setServiceParent(top)
    if config.workers > 1 and not options["worker"]:
        # workers log text, which this process relays in its own format
        arguments, environment = worker_command(options)
        WorkerPool(reactor, config.workers, arguments, environment).setServiceParent(top)
        return top
    metrics = Metrics()
    bridge = RedisBridge(
        reactor,
        url,
        metrics,
        timeout=config.redis_timeout,
        max_pending_bytes=config.max_pending_redis_bytes,
        max_message_size=config.max_message_size,
    )
    bridge.setServiceParent(top)
    tokens = TokenAuthority(
        config.jwt_secret, config.jwt_expiration_secs, config.jwt_leeway_secs, config.id_length, reactor.seconds,
        limits=config.header_limits,
    )
    presence = Presence(bridge, reactor, secrets.token_hex(8), config.presence_window, config.node_timeout)
    hub = Hub(
        tokens,
        bridge,
        presence,
        reactor,
        config.max_channels_per_socket,
        config.datetime_interval,
        config.write_delay,
        metrics,
        inflight=InFlight(config.in_flight_limits),
    )
    factory = PhoenixFactory(
        hub,
        reactor,
        config.idle_timeout,
        config.max_message_size,
        config.max_send_buffer,
        metrics,
        message_rate=config.message_rate,
        message_burst=config.message_burst,
        header_limits=config.header_limits,
    )
    ChannelService(hub, presence, bridge, factory).setServiceParent(top)
    routes = {
        b"metrics": metrics_resource(metrics),
        b"healthz": HealthResource(bridge, factory, reactor, config.public_url),
        b"admin": AdminPage(),
    }
    site = make_site(
        factory, tokens, config.admin_key, config.cors_origins, config.allowed_origins, config.conformance_echo, routes,
        reactor=reactor,
        request_head_timeout=config.request_head_timeout,
        http_idle_timeout=config.http_idle_timeout,
        max_connections_per_ip=config.max_connections_per_ip,
        metrics=metrics,
    )
    listening_reactor = reactor
    if options["worker"]:
        listening_reactor = ReusePortReactor(reactor)
        ParentWatch(reactor).setServiceParent(top)
    for description in config.endpoints:
        listener = _Listener(serverFromString(listening_reactor, with_backlog(description)), site)
        listener.endpoint_description = description
        listener.setServiceParent(top)
    return top
