"""
The Twisted internals the service relies on, pinned on a real TCP connection so that a
Twisted release that changes them fails here, by name, in the newest and the lowest-versions
CI runs: ``protocol.py`` sends straight to ``transport.socket`` of a ``tcp.Connection``
when its write queue (``_tempDataLen``, ``dataBuffer``, ``offset``) is empty (and writes
the usual way to a transport without them: ``protocol.direct_connection``), and
``workers.py`` subclasses ``tcp.Port.createInternetSocket``.
"""

from __future__ import annotations

import socket

import pytest_twisted
from twisted.internet import defer, protocol, reactor, tcp
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

from tangram_channel.protocol import direct_connection

from .waiting import eventually


def queue_is_empty(transport: tcp.Connection) -> bool:
    """protocol.DirectWriter.direct_fd's test for "nothing queued before the next frame"."""
    return not transport._tempDataLen and transport.offset == len(transport.dataBuffer)


@pytest_twisted.ensureDeferred
async def test_tcp_connection_exposes_its_socket_and_write_queue():
    accepted: defer.Deferred[protocol.Protocol] = defer.Deferred()

    class Accept(protocol.Protocol):
        def connectionMade(self) -> None:
            accepted.callback(self)

    port = reactor.listenTCP(0, protocol.Factory.forProtocol(Accept), interface="127.0.0.1")
    client = await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port), protocol.Protocol())
    try:
        transport = (await accepted).transport
        assert isinstance(transport, tcp.Connection), type(transport).__mro__
        assert isinstance(transport.socket, socket.socket)
        assert direct_connection(transport) is transport
        assert transport.socket.fileno() == transport.fileno()
        assert isinstance(transport._tempDataLen, int)
        assert isinstance(transport.dataBuffer, bytes) and isinstance(transport.offset, int)
        assert queue_is_empty(transport)

        transport.write(b"queued until the reactor's next turn")
        assert not queue_is_empty(transport), "a write must show in _tempDataLen/dataBuffer/offset"
        await eventually(lambda: queue_is_empty(transport), timeout=10, what="the write queue drained")
    finally:
        client.transport.loseConnection()
        await port.stopListening()


def test_tcp_port_creates_its_socket_in_an_overridable_method():
    """workers._ReusePort sets SO_REUSEPORT there, before Twisted binds."""
    assert callable(getattr(tcp.Port, "createInternetSocket", None))
    port = tcp.Port(0, protocol.Factory(), interface="127.0.0.1", reactor=reactor)
    created = port.createInternetSocket()
    try:
        assert isinstance(created, socket.socket)
    finally:
        created.close()
