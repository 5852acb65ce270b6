"""
A sentinel the test steers: it names whichever server the test says is the primary
(``SENTINEL GET-MASTER-ADDR-BY-NAME``) and announces ``+switch-master`` when told, so a
test can name a replica, or move the primary while the old one still answers, which
real sentinels do only in a race.
"""

from __future__ import annotations

from twisted.internet import protocol
from twisted.internet.interfaces import IListeningPort


def bulk(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)


def array(*values: bytes) -> bytes:
    return b"*%d\r\n" % len(values) + b"".join(bulk(value) for value in values)


class _Connection(protocol.Protocol):
    factory: FakeSentinel

    def connectionMade(self) -> None:
        self._buffer = b""

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        while (command := self._parse()) is not None:
            self._answer(command)

    def _parse(self) -> list[bytes] | None:
        """One RESP array of bulk strings off the buffer, or None until it has all arrived."""
        lines = self._buffer.split(b"\r\n")
        if len(lines) < 2 or not lines[0].startswith(b"*"):
            return None
        count, items, index = int(lines[0][1:]), [], 1
        while len(items) < count:
            if index + 1 >= len(lines):
                return None
            items.append(lines[index + 1])
            index += 2
        self._buffer = b"\r\n".join(lines[index:])
        return items

    def _answer(self, command: list[bytes]) -> None:
        name = command[0].upper()
        if name == b"SENTINEL" and command[1].upper() == b"GET-MASTER-ADDR-BY-NAME":
            self.factory.asked += 1
            host, port = self.factory.primary
            self.transport.write(array(host.encode(), str(port).encode()))
        elif name == b"SUBSCRIBE":
            self.factory.subscribers.append(self)
            self.transport.write(b"*3\r\n" + bulk(b"subscribe") + bulk(command[1]) + b":1\r\n")
        else:
            self.transport.write(b"-ERR unknown command\r\n")


class FakeSentinel(protocol.Factory):
    protocol = _Connection

    def __init__(self, primary: tuple[str, int]) -> None:
        self.primary = primary
        self.asked = 0
        self.subscribers: list[_Connection] = []
        self.port: IListeningPort | None = None

    def switch(self, name: str, new: tuple[str, int]) -> None:
        """Name ``new`` from now on and announce it, as sentinels do at the end of a failover."""
        old, self.primary = self.primary, new
        message = f"{name} {old[0]} {old[1]} {new[0]} {new[1]}".encode()
        for subscriber in self.subscribers:
            subscriber.transport.write(array(b"message", b"+switch-master", message))
