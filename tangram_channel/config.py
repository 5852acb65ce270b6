"""
The service's settings, read from a Tangram ``tangram.toml``.

The same file Tangram users already have works unchanged: ``[core] redis_url`` and
``[core] log_level`` plus the ``[channel]`` table, where our own keys live too. Values
come, strongest first, from the command line, ``TANGRAM_CHANNEL_<KEY>`` environment
variables, the file, and the defaults below.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import math
import re
import tomllib
from collections.abc import Mapping
from typing import Any

from .deflate import Compression
from .frames import HeaderLimits
from .inflight import InFlightLimits

ENV_PREFIX = "TANGRAM_CHANNEL_"
DEFAULT_SECRET = "secret"
# RFC 7518, 3.2: an HS256 key at least as long as the hash; a shorter one can be
# brute-forced offline from any single token a client holds
MIN_SECRET_BYTES = 32


class ConfigError(Exception):
    """A setting is missing, of the wrong type or out of range; the message names it."""


@dataclasses.dataclass(frozen=True)
class Config:
    host: str = "127.0.0.1"
    port: int = 2347
    listen: tuple[str, ...] = ()
    public_url: str | None = None
    redis_url: str = "redis://127.0.0.1:6379"
    embedded_redis: str | bool = "auto"
    jwt_secret: str = DEFAULT_SECRET
    jwt_expiration_secs: int = 315360000
    jwt_leeway_secs: int = 60
    id_length: int = 8
    admin_key: str | None = None
    cors_origins: tuple[str, ...] = ("*",)
    allowed_origins: tuple[str, ...] = ("*",)
    datetime_interval: float = 1.0
    presence_window: float = 0.05
    node_timeout: float = 15.0
    write_delay: float = 0.003
    idle_timeout: float = 60.0
    max_message_size: int = 1024 * 1024
    max_send_buffer: int = 16 * 1024 * 1024
    max_channels_per_socket: int = 100
    workers: int = 1
    log_level: str = "info"
    log_format: str = "text"
    conformance_echo: bool = False
    batched_writes: bool = True
    max_topic_length: int = 256
    max_event_length: int = 256
    max_ref_length: int = 64
    max_id_length: int = 128
    request_head_timeout: float = 10.0
    http_idle_timeout: float = 60.0
    max_connections_per_ip: int = 0
    longpoll_poll_timeout: float = 10.0
    longpoll_session_timeout: float = 20.0
    longpoll_route_host: str | None = None
    max_longpoll_sessions: int = 10_000
    message_rate: float = 200.0
    message_burst: int = 1000
    max_receive_rate: int = 1024 * 1024
    max_partial_message_bytes: int = 64 * 1024 * 1024
    redis_timeout: float = 5.0
    redis_wait_replicas: int = 0
    redis_read_delay: float = 0.001
    max_pushes_in_flight: int = 100
    max_push_bytes_in_flight: int = 4 * 1024 * 1024
    max_redis_commands_in_flight: int = 10_000
    max_redis_bytes_in_flight: int = 64 * 1024 * 1024
    max_pending_redis_bytes: int = 64 * 1024 * 1024
    compression: str = "auto"
    compression_min_size: int = 256

    @property
    def endpoints(self) -> tuple[str, ...]:
        """Twisted server endpoint strings to listen on."""
        if self.listen:
            return self.listen
        host = self.host.replace(":", "\\:")
        return (f"tcp:{self.port}:interface={host}",)

    @property
    def in_flight_limits(self) -> InFlightLimits:
        """The bounds on client publishes Redis has not answered, per socket and per process."""
        return InFlightLimits(
            self.max_pushes_in_flight,
            self.max_push_bytes_in_flight,
            self.max_redis_commands_in_flight,
            self.max_redis_bytes_in_flight,
        )

    @property
    def compression_settings(self) -> Compression:
        """Whether sockets negotiate permessage-deflate, and from what message size they compress."""
        return Compression(self.compression == "auto", self.compression_min_size)

    @property
    def header_limits(self) -> HeaderLimits:
        """The caps on what clients name, for the frame decoder and the token authority."""
        return HeaderLimits(self.max_topic_length, self.max_event_length, self.max_ref_length, self.max_id_length)

    def masked(self) -> dict[str, Any]:
        """The settings as a dict with secrets hidden, for display."""
        values = dataclasses.asdict(self)
        for key in ("jwt_secret", "admin_key"):
            if values[key] is not None:
                values[key] = "********"
        values["redis_url"] = mask_url(self.redis_url)
        return values


def mask_url(url: str) -> str:
    """``redis://user:password@host`` with the password hidden: it is a secret too."""
    return re.sub(r"^([a-z+]+://[^/@:]*:)[^/]*@", r"\1********@", url)


# How each key is checked and parsed: (kind, minimum). Kinds: str, optional str,
# int, float, list of str, and "auto" or a boolean.
_KINDS: dict[str, tuple[str, float | None]] = {
    "host": ("str", None),
    "port": ("int", 0),
    "listen": ("list", None),
    "public_url": ("optstr", None),
    "redis_url": ("str", None),
    "embedded_redis": ("autobool", None),
    "jwt_secret": ("str", None),
    "jwt_expiration_secs": ("int", 1),
    "jwt_leeway_secs": ("int", 0),
    "id_length": ("int", 1),
    "admin_key": ("optstr", None),
    "cors_origins": ("list", None),
    "allowed_origins": ("list", None),
    "datetime_interval": ("float", 0),
    "presence_window": ("float", 0),
    "node_timeout": ("float", 1),
    "write_delay": ("float", 0),
    "redis_read_delay": ("float", 0),
    "idle_timeout": ("float", 0),
    "max_message_size": ("int", 1),
    "max_send_buffer": ("int", 1),
    "max_channels_per_socket": ("int", 1),
    "workers": ("int", 1),
    "log_level": ("str", None),
    "log_format": ("str", None),
    "conformance_echo": ("bool", None),
    "batched_writes": ("bool", None),
    "max_topic_length": ("int", 1),
    "max_event_length": ("int", 1),
    "max_ref_length": ("int", 1),
    "max_id_length": ("int", 1),
    "request_head_timeout": ("float", 0.01),
    "http_idle_timeout": ("float", 1),
    "max_connections_per_ip": ("int", 0),
    "longpoll_poll_timeout": ("float", 0.01),
    "longpoll_session_timeout": ("float", 0.01),
    "longpoll_route_host": ("optstr", None),
    "max_longpoll_sessions": ("int", 0),
    "message_rate": ("float", 0),
    "message_burst": ("int", 1),
    "max_receive_rate": ("int", 0),
    "max_partial_message_bytes": ("int", 0),
    "redis_timeout": ("float", 0.01),
    "redis_wait_replicas": ("int", 0),
    "max_pushes_in_flight": ("int", 1),
    "max_push_bytes_in_flight": ("int", 1),
    "max_redis_commands_in_flight": ("int", 1),
    "max_redis_bytes_in_flight": ("int", 1),
    "max_pending_redis_bytes": ("int", 1),
    "compression": ("str", None),
    "compression_min_size": ("int", 0),
}
_EXPECTED = {
    "str": "a string",
    "optstr": "a string",
    "int": "an integer",
    "float": "a finite number",
    "list": "a list of strings",
    "autobool": '"auto", true or false (quoted or not)',
    "bool": "true or false",
}
_AUTOBOOL_WORDS: dict[str, str | bool] = {"auto": "auto", "true": True, "false": False}
_LOG_LEVELS = ("debug", "info", "warn", "warning", "error", "critical")
_LOG_FORMATS = ("text", "json")
COMPRESSION_MODES = ("auto", "off")


def _check(key: str, value: Any) -> Any:
    """Return ``value`` in the form ``Config`` holds, or raise ConfigError naming ``key``."""
    kind, minimum = _KINDS[key]
    if kind == "str" and isinstance(value, str):
        checked: Any = value
    elif kind == "optstr" and (value is None or isinstance(value, str)):
        checked = value
    elif kind == "int" and isinstance(value, int) and not isinstance(value, bool):
        checked = value
    elif kind == "float" and isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        checked = float(value)
    elif kind == "list" and isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        checked = tuple(value)
    elif kind == "autobool" and isinstance(value, bool):
        checked = value
    elif kind == "autobool" and isinstance(value, str) and value.lower() in _AUTOBOOL_WORDS:
        # the sample tangram.toml quotes "auto", so a quoted "false" is what people write next
        checked = _AUTOBOOL_WORDS[value.lower()]
    elif kind == "bool" and isinstance(value, bool):
        checked = value
    else:
        raise ConfigError(f"{key} must be {_EXPECTED[kind]}, not {value!r}")
    if minimum is not None and checked < minimum:
        raise ConfigError(f"{key} must be at least {minimum:g}, not {checked!r}")
    if key == "port" and checked > 65535:
        raise ConfigError(f"port must be at most 65535, not {checked}")
    if key in ("write_delay", "redis_read_delay") and checked > 1:
        # seconds: a "3" meant as milliseconds would hold a busy channel's messages 3 s
        raise ConfigError(f"{key} is in seconds and must be at most 1, not {checked!r}")
    if key == "log_level" and checked.lower() not in _LOG_LEVELS:
        raise ConfigError(f"log_level must be one of {', '.join(_LOG_LEVELS)}, not {checked!r}")
    if key == "compression" and checked not in COMPRESSION_MODES:
        raise ConfigError(f"compression must be one of {', '.join(COMPRESSION_MODES)}, not {checked!r}")
    if key == "log_format" and checked not in _LOG_FORMATS:
        raise ConfigError(f"log_format must be one of {', '.join(_LOG_FORMATS)}, not {checked!r}")
    return checked


def _from_text(key: str, text: str) -> Any:
    """Parse a setting given as text (environment, command line) by the key's kind."""
    kind, _ = _KINDS[key]
    try:
        if kind == "int":
            return int(text)
        if kind == "float":
            return float(text)
        if kind == "list":
            if text.lstrip().startswith("["):
                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        if kind in ("autobool", "bool"):
            lowered = text.strip().lower()
            if lowered in ("true", "1", "yes", "on"):
                return True
            if lowered in ("false", "0", "no", "off"):
                return False
            return lowered
    except ValueError:
        raise ConfigError(f"{key} must be {_EXPECTED[kind]}, not {text!r}") from None
    return text


def read_file(path: str) -> tuple[dict[str, Any], list[str]]:
    """
    Read the channel settings of a ``tangram.toml``.

    Returns the raw values and warnings for keys of ``[channel]`` that we do not know
    (a warning, not an error, so a newer Tangram file still starts us).
    """
    try:
        with open(path, "rb") as f:
            document = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path} is not valid TOML: {e}") from None
    core = document.get("core", {})
    channel = document.get("channel", {})
    if not isinstance(core, dict) or not isinstance(channel, dict):
        raise ConfigError(f"config file {path}: [core] and [channel] must be tables")
    values: dict[str, Any] = {}
    for key in ("redis_url", "log_level"):
        if key in core:
            values[key] = core[key]
    warnings = []
    for key, value in channel.items():
        if key in _KINDS:
            values[key] = value
        else:
            warnings.append(f"{path}: unknown key [channel] {key} is ignored")
    return values, warnings


def from_environment(environ: Mapping[str, str]) -> dict[str, Any]:
    """Settings given as ``TANGRAM_CHANNEL_<KEY>`` variables."""
    values = {}
    for key in _KINDS:
        name = ENV_PREFIX + key.upper()
        if name in environ:
            values[key] = _from_text(key, environ[name])
    return values


def build(
    file_values: Mapping[str, Any],
    environ: Mapping[str, str],
    command_line: Mapping[str, Any],
) -> Config:
    """
    Merge the sources, strongest last, and check every value.

    ``command_line`` holds values already parsed from text or given as text; ``None``
    means "not given".
    """
    merged: dict[str, Any] = dict(file_values)
    merged.update(from_environment(environ))
    for key, value in command_line.items():
        if value is not None:
            merged[key] = _from_text(key, value) if isinstance(value, str) else value
    config = Config(**{key: _check(key, value) for key, value in merged.items()})
    if config.id_length > config.max_id_length:
        # every random id would be refused at join
        raise ConfigError(f"id_length ({config.id_length}) must not exceed max_id_length ({config.max_id_length})")
    return config


def short_secret(config: Config) -> str | None:
    """
    Why ``jwt_secret`` is too short to trust, or None. Not refused: a short secret some
    deployment already shares with its plugins must keep working. The default secret
    has a warning of its own.
    """
    size = len(config.jwt_secret.encode("utf-8"))
    if config.jwt_secret == DEFAULT_SECRET or size >= MIN_SECRET_BYTES:
        return None
    return (
        f"jwt_secret is {size} bytes, shorter than the {MIN_SECRET_BYTES} HS256 wants (RFC 7518): "
        "tokens signed with it can be forged after guessing it offline from any one token"
    )


def load(
    path: str | None,
    environ: Mapping[str, str],
    command_line: Mapping[str, Any],
) -> tuple[Config, list[str]]:
    """Read ``path`` (if given), then apply environment and command line."""
    file_values, warnings = read_file(path) if path is not None else ({}, [])
    return build(file_values, environ, command_line), warnings


# Checks of a whole configuration: what would be unsafe or could not work is refused,
# what is merely risky is warned about, by the service at start-up and by check-config.

DEFAULT_SECRET_WARNING = (
    'USING THE DEFAULT jwt_secret "secret": anyone can forge tokens. Fine on loopback for a trial; '
    "set jwt_secret in tangram.toml or TANGRAM_CHANNEL_JWT_SECRET before exposing this service."
)


def is_loopback_endpoint(description: str) -> bool:
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


def check(config: Config, worker: bool = False) -> list[str]:
    """
    Raise ConfigError for a configuration that is unsafe (the well-known default secret
    beyond loopback: anyone could forge tokens) or cannot work; the warnings otherwise.
    ``worker``: checked for one process of a pool, which does not start workers itself.
    """
    warnings = []
    if config.jwt_secret == DEFAULT_SECRET:
        if not all(is_loopback_endpoint(e) for e in config.endpoints):
            raise ConfigError(
                'refusing to listen beyond loopback with the default jwt_secret "secret": set [channel] jwt_secret '
                "in tangram.toml, TANGRAM_CHANNEL_JWT_SECRET, or --jwt-secret"
            )
        warnings.append(DEFAULT_SECRET_WARNING)
    weakness = short_secret(config)
    if weakness is not None:
        warnings.append(weakness)
    if config.workers > 1 and not worker and not all(e.startswith(("tcp:", "ssl:")) for e in config.endpoints):
        raise ConfigError("workers > 1 needs tcp: or ssl: endpoints, which the workers share")
    return warnings
