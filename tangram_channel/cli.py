"""
``python -m tangram_channel`` / ``tangram-channel``: the operator's command line.

- ``token --channel C [--id I] [--expires S]`` mints a join token from the config (the
  way to get an ``admin`` token without exposing an admin key over HTTP);
- ``publish CHANNEL EVENT PAYLOAD`` sends to the channel's clients through Redis;
- ``listen [PATTERN]`` prints what clients push (``from:<PATTERN>``);
- ``check-config [FILE]`` validates a config and prints the effective values, secrets masked.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

import txredisapi
from twisted.internet import defer
from twisted.internet.error import ConnectError

from . import __version__
from . import config as configuration
from .errors import RedisUnavailable
from .bus import RedisURL, connect_once
from .sentinel import NoPrimary
from .naming import from_pattern, is_admin_topic, to_channel
from .tokens import TokenAuthority


def _read(path: str | None) -> tuple[configuration.Config, list[str]]:
    if path is None and os.path.exists("tangram.toml"):
        path = "tangram.toml"
    return configuration.load(path, os.environ, {})


def _load(path: str | None) -> configuration.Config:
    config, warnings = _read(path)
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return config


_DEFAULT_SECRET_IS = (
    'the default jwt_secret "secret", which anyone can forge tokens with: set [channel] jwt_secret '
    "in tangram.toml (or --config FILE) or TANGRAM_CHANNEL_JWT_SECRET, the service's secret"
)


def _redis_url(args: argparse.Namespace) -> RedisURL:
    return RedisURL(args.redis_url or _load(args.config).redis_url)


def token(args: argparse.Namespace, out: TextIO) -> int:
    """
    Mint a token. With the well-known default secret, which lets anyone forge tokens,
    refuse an admin token and warn loudly about any other.
    """
    config = _load(args.config)
    if config.jwt_secret == configuration.DEFAULT_SECRET:
        if is_admin_topic(args.channel):
            print(f"tangram-channel: refusing to sign an admin token with {_DEFAULT_SECRET_IS}", file=sys.stderr)
            return 1
        print(f"WARNING: signing with {_DEFAULT_SECRET_IS}", file=sys.stderr)
    tokens = TokenAuthority(
        config.jwt_secret, config.jwt_expiration_secs, config.jwt_leeway_secs, config.id_length, time.time,
        limits=config.header_limits,
    )
    client_id, minted = tokens.mint(args.channel, args.id, args.expires)
    json.dump({"channel": args.channel, "id": client_id, "token": minted}, out)
    out.write("\n")
    return 0


async def publish(reactor: Any, args: argparse.Namespace, out: TextIO) -> int:
    conn = await connect_once(reactor, _redis_url(args))
    channel = to_channel(args.channel, args.event)
    receivers = await conn.publish(channel, args.payload.encode("utf-8"))
    out.write(f"published to {channel.decode()} ({receivers} service connections received it)\n")
    conn.transport.loseConnection()
    return 0


async def listen(reactor: Any, args: argparse.Namespace, out: TextIO) -> int:
    conn = await connect_once(reactor, _redis_url(args), subscriber=True)
    done: defer.Deferred[None] = defer.Deferred()
    received = 0

    def show(pattern: bytes, channel: bytes, message: bytes) -> None:
        nonlocal received
        out.write(f"{channel.decode('utf-8', 'replace')} {message.decode('utf-8', 'backslashreplace')}\n")
        out.flush()
        received += 1
        if args.count and received >= args.count and not done.called:
            done.callback(None)

    conn.on_message = show
    await conn.psubscribe([from_pattern(args.pattern)])
    # on stderr, so stdout stays only messages; scripts may wait for this line
    print(f"listening to from:{args.pattern}", file=sys.stderr, flush=True)

    def end(why: Exception | None) -> None:
        """The first of Redis closing the connection, or the reactor stopping: Ctrl-C (or
        SIGTERM) stops it and then drops the connection, the normal end of listening."""
        if not done.called:
            done.callback(None) if why is None else done.errback(why)

    conn.whenDisconnected().addCallback(lambda _: end(RedisUnavailable("Redis closed the connection")))
    reactor.addSystemEventTrigger("before", "shutdown", end, None)
    await done
    conn.transport.loseConnection()
    return 0


def check_config(args: argparse.Namespace, out: TextIO) -> int:
    """
    Print the effective settings; exit 1 naming each problem a service would only warn
    about (an unknown key is most often a typo) or refuse at start-up.
    """
    config, problems = _read(args.file)
    RedisURL(config.redis_url)
    warnings = []
    try:
        warnings = configuration.check(config)
    except configuration.ConfigError as e:
        problems.append(str(e))
    json.dump(config.masked(), out, indent=2, sort_keys=True)
    out.write("\n")
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    for problem in problems:
        print(f"tangram-channel: {problem}", file=sys.stderr)
    return 1 if problems else 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="tangram-channel", description="Operate a tangram-channel service.")
    top.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = top.add_subparsers(dest="command", required=True)

    def command(name: str, handler: Any, help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help)
        sub.set_defaults(handler=handler)
        if name != "check-config":
            sub.add_argument("--config", help="tangram.toml to read (default ./tangram.toml if present)")
        return sub

    sub = command("token", token, "Mint a join token with the configured secret.")
    sub.add_argument("--channel", required=True, help="channel the token admits to (e.g. admin)")
    sub.add_argument("--id", help="client id (default: random)")
    sub.add_argument("--expires", type=int, help="lifetime in seconds (default: jwt_expiration_secs)")

    sub = command("publish", publish, "Send an event to every client of a channel through Redis.")
    sub.add_argument("channel")
    sub.add_argument("event")
    sub.add_argument("payload", help='JSON object or array for a text frame, e.g. \'{"msg": "hi"}\'; else binary')
    sub.add_argument("--redis-url", help="override the configured Redis")

    sub = command("listen", listen, "Print what clients push (from:<PATTERN>).")
    sub.add_argument("pattern", nargs="?", default="*", help="glob after from:, e.g. 'system:*' (default *)")
    sub.add_argument("--redis-url", help="override the configured Redis")
    sub.add_argument("--count", type=int, default=0, help="stop after this many messages (default: never)")

    sub = command("check-config", check_config, "Validate a config; print the effective values with secrets masked.")
    sub.add_argument("file", nargs="?", help="tangram.toml to check (default ./tangram.toml if present)")
    return top


def main(argv: Sequence[str] | None = None, out: TextIO = sys.stdout) -> int:
    args = parser().parse_args(argv)
    try:
        if args.handler in (publish, listen):
            return _react(args.handler, args, out)
        return args.handler(args, out)
    except (configuration.ConfigError, ValueError) as e:
        print(f"tangram-channel: {e}", file=sys.stderr)
        return 2


def _react(handler: Any, args: argparse.Namespace, out: TextIO) -> int:
    """Run an async command in the reactor; a Redis that cannot be reached is one line."""
    from twisted.internet import reactor

    outcome: list[int] = []
    stopping: list[bool] = []  # a signal stopped the reactor: it must not be stopped again
    reactor.addSystemEventTrigger("before", "shutdown", stopping.append, True)

    async def run() -> None:
        try:
            outcome.append(await handler(reactor, args, out))
        except (ConnectError, RedisUnavailable, NoPrimary, txredisapi.RedisError, OSError) as e:
            print(f"tangram-channel: Redis at {_redis_url(args)}: {e}", file=sys.stderr)
            outcome.append(1)
        finally:
            if not stopping:
                reactor.stop()

    reactor.callWhenRunning(lambda: defer.ensureDeferred(run()))
    reactor.run()
    return outcome[0] if outcome else 130
