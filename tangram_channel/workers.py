"""
``workers = N``: N processes serving one port, each a full node sharing presence
through Redis.

The parent only supervises: it starts N ``twistd -n tangram-channel --worker ...``
children with its own plugin options, relays their log (JSON lines, re-emitted at
their level, so each shows once, with one timestamp, in the parent's format), restarts
one that dies (the survivors withdraw its presences after ``node_timeout``), and on
SIGTERM stops them all and waits, so every socket is closed with 1012 before the
parent exits.

The children all listen on the same address with ``SO_REUSEPORT``, and the kernel
spreads new connections over them. ``listen_reusing_port`` gives Twisted's ``tcp:``
and ``ssl:`` endpoints that behaviour without re-implementing their parsers.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Mapping
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer, protocol, tcp
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IListeningPort, IReadDescriptor
from twisted.logger import Logger, LogLevel
from twisted.protocols.tls import TLSMemoryBIOFactory
from zope.interface import implementer

from .logs import read_json_line

log = Logger()

RESTART_DELAY = 1.0


class _ReusePort(tcp.Port):
    def createInternetSocket(self) -> socket.socket:
        s = super().createInternetSocket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        return s


class ReusePortReactor:
    """
    A stand-in reactor for ``serverFromString``: its ``listenTCP``/``listenSSL`` bind
    with ``SO_REUSEPORT``; everything else is the real reactor's.
    """

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reactor, name)

    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> IListeningPort:
        listening = _ReusePort(port, factory, backlog, interface, self._reactor)
        listening.startListening()
        return listening

    def listenSSL(
        self, port: int, factory: Any, contextFactory: Any, backlog: int = 50, interface: str = ""
    ) -> IListeningPort:
        return self.listenTCP(port, TLSMemoryBIOFactory(contextFactory, False, factory), backlog, interface)


@implementer(IReadDescriptor)
class ParentWatch(Service):
    """
    In a worker: stop when the pool's parent dies, even by SIGKILL. The parent holds the
    other end of the worker's standard input, which the kernel closes when it dies; the
    worker watches for that end of file (and nothing else: stdout carries its log).
    """

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor

    def startService(self) -> None:
        super().startService()
        self._reactor.addReader(self)

    def stopService(self) -> None:
        super().stopService()
        self._reactor.removeReader(self)

    def fileno(self) -> int:
        return 0

    def logPrefix(self) -> str:
        return "parent-watch"

    # IReadDescriptor says Failure, but the reactor maps the exception's class to a ready
    # Failure, and Twisted's own descriptors return one (tcp's main.CONNECTION_DONE)
    def doRead(self) -> Exception | None:  # type: ignore[override]
        return ConnectionDone() if not os.read(0, 4096) else None

    def connectionLost(self, reason: Any) -> None:
        if self._reactor.running:
            log.warn("the worker pool's parent is gone; shutting down")
            self._reactor.stop()


class _WorkerProcess(protocol.ProcessProtocol):
    def __init__(self, pool: WorkerPool, index: int) -> None:
        self.pool = pool
        self.index = index
        self.ended: defer.Deferred[None] = defer.Deferred()
        self._partial: dict[int, bytes] = {}  # by file descriptor: stdout and stderr interleave

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        lines = (self._partial.get(childFD, b"") + data).split(b"\n")
        self._partial[childFD] = lines.pop()
        for line in lines:
            self._relay(childFD, line.decode("utf-8", "replace"))

    def _relay(self, childFD: int, line: str) -> None:
        event = read_json_line(line)
        if event is None:  # not the worker's log: Python's last words on stderr, say
            event = (LogLevel.info if childFD == 1 else LogLevel.error), __name__, line
        level, namespace, text = event
        Logger(namespace=namespace).emit(level, "[worker {index}] {line}", index=self.index, line=text)

    def processEnded(self, reason: Any) -> None:
        self.ended.callback(None)
        self.pool.ended(self)


class WorkerPool(Service):
    """
    Keeps ``count`` worker processes running ``args`` (after the twistd executable), with
    ``environment`` added to this process's: the way to pass secrets, which the command
    line would show every user of the machine.
    """

    def __init__(self, reactor: Any, count: int, args: list[str], environment: Mapping[str, str]) -> None:
        self._reactor = reactor
        self._count = count
        self._args = args
        self._environment = environment
        self._processes: dict[int, tuple[Any, _WorkerProcess]] = {}

    def startService(self) -> None:
        super().startService()
        log.info("starting {count} workers", count=self._count)
        for index in range(self._count):
            self._spawn(index)

    def _spawn(self, index: int) -> None:
        worker = _WorkerProcess(self, index)
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        argv = [twistd, "-n", "--pidfile=", "--logfile", "-", "tangram-channel", *self._args]
        transport = self._reactor.spawnProcess(
            worker, twistd, argv, env={**os.environ, **self._environment}, childFDs={0: "w", 1: "r", 2: "r"}
        )
        self._processes[index] = (transport, worker)

    def ended(self, worker: _WorkerProcess) -> None:
        if self._processes.get(worker.index, (None, None))[1] is not worker:
            return
        del self._processes[worker.index]
        if self.running:
            log.warn("worker {index} exited; starting it again in {delay}s", index=worker.index, delay=RESTART_DELAY)
            self._reactor.callLater(RESTART_DELAY, self._respawn, worker.index)

    def _respawn(self, index: int) -> None:
        if self.running and index not in self._processes:
            self._spawn(index)

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        waits = []
        for transport, worker in list(self._processes.values()):
            try:
                transport.signalProcess("TERM")
            except OSError:
                pass
            waits.append(worker.ended)
        return defer.DeferredList(waits).addCallback(lambda _: None)
