"""
The lifetime of one node: start the hub and the presence heartbeat once Redis is
wired, and on shutdown close every socket with 1012 (so clients reconnect elsewhere)
and withdraw this node's presence before Redis goes away. Also what a node's process
sets up for itself: signals and the allocator.
"""

from __future__ import annotations

import signal
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.logger import Logger

from .descriptors import raise_open_files_limit
from .hub import Hub
from .memory import LARGE_BUFFER, keep_large_buffers_separate
from .presence import Presence
from .protocol import CLOSE_RESTART, PhoenixFactory
from .bus import RedisBridge

log = Logger()


class ChannelService(Service):
    def __init__(self, *, hub: Hub, presence: Presence, bridge: RedisBridge, factory: PhoenixFactory) -> None:
        self.hub = hub
        self.presence = presence
        self.bridge = bridge
        self.factory = factory

    def startService(self) -> None:
        super().startService()
        self.hub.start()
        self.presence.start()

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        count = len(self.factory.sockets)
        self.hub.stop()
        self.factory.close_all(CLOSE_RESTART, "service restart")
        log.info("shutting down: closed {count} sockets with 1012", count=count)
        return self.presence.stop()


class ProcessSetup(Service):
    """
    What acts on the whole process, done once it runs as a service of its own (never in
    a test's process): the allocator tuning of ``memory.py`` and the descriptor limit of
    ``descriptors.py``, both logged, and these signals.

    SIGTERM and SIGINT stop the reactor, so shutdown runs as usual, and the process then
    exits 0. Twisted's own handlers re-raise the signal after a clean shutdown, which
    process managers and scripts read as "killed"; a stop that was asked for is a success.

    From the first signal on, both are ignored: a second one (a manager that signals the
    process group as well as the parent) would stop the reactor twice, or, once Python
    has begun to exit and restored the default handlers, kill the process. Shutdown is
    bounded by the close handshake and Redis timeouts; SIGKILL is still there.
    """

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor

    def startService(self) -> None:
        super().startService()
        if keep_large_buffers_separate():
            log.info("large buffers get mappings of their own (glibc M_MMAP_THRESHOLD {size} bytes)", size=LARGE_BUFFER)
        log.info("up to {limit} open descriptors (RLIMIT_NOFILE)", limit=raise_open_files_limit())
        # after the reactor has installed its handlers, so these replace them
        self._reactor.callWhenRunning(self._install)

    def _install(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._stop)

    def _stop(self, signum: int, frame: Any) -> None:
        for each in (signal.SIGTERM, signal.SIGINT):
            signal.signal(each, signal.SIG_IGN)
        log.info("received {name}, shutting down", name=signal.Signals(signum).name)
        self._reactor.callFromThread(self._reactor.stop)
