"""
A burst of broadcasts to every member of a channel, as few system calls as it takes.

Sockets that can take the bytes at once (plain TCP, nothing queued) are written
together, one ``io_submit`` per framing (the serializer, compressed or not:
``sendmany``); the rest the usual way.
Without Linux AIO, or with ``batched_writes`` off, or once a context broke in use,
each socket is written in turn.

Between ``hold_lone_writes`` and ``flush``, a burst to a channel of one member (or a
frame the hub made for it alone, ``send_frame``) waits, and all that waited go out in
one ``io_submit``, a buffer each: Tangram's streaming channels have one member each,
and a read from Redis holds many of their messages.
Anything else written meanwhile flushes them first, so every socket gets its frames in
order.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from twisted.application.service import Service

from .frames import Burst
from .sendmany import SendMany


class Outbox(Protocol):
    """A socket as a fan-out writes to it (``PhoenixProtocol`` is one)."""

    vsn: str
    # the key of the bytes it is sent in ``Burst.prepared``: sockets with the same framing share them
    framing: str

    def send_burst(self, burst: Burst) -> None:
        """Frame, count and write ``burst`` the usual way."""


class DirectWriter(Protocol):
    """
    A socket's fast write path, in an object of its own: the path reads little of the
    socket, and that little is kept together (``protocol.DirectWriter`` says why).
    """

    def lone_text_frame(self, head: bytes, payload: bytes, tail: bytes) -> bytes | None:
        """
        A text broadcast (``payload`` is JSON, ``head`` and ``tail`` its push around it for
        this socket's ``vsn``: ``frames.splice_parts``) framed for this socket alone, when it
        may go out as it is now: open, reading, uncompressed. None: the usual path, by a Burst.
        """

    def direct_fd(self) -> int | None:
        """The descriptor the next frame may be written to straight, or None."""

    def write_now(self, frame: bytes) -> None:
        """Write ``frame`` straight if nothing is queued, else queue it."""

    def wrote_directly(self, frame: bytes, sent: int | None) -> None:
        """After a direct write took ``sent`` bytes (None: unknown), queue or drop what must be."""


class DirectOutbox(Outbox, Protocol):
    """A socket that may also be written to straight, for the fast path."""

    @property
    def direct(self) -> DirectWriter:
        """Its fast write path."""

    def framed(self, burst: Burst) -> bytes | None:
        """``burst`` framed for this socket and counted, or None if nothing may be sent now."""


def send_to_each(outboxes: Iterable[Outbox], burst: Burst) -> None:
    for outbox in outboxes:
        outbox.send_burst(burst)


class Fanout(Service):
    """Holds the Linux AIO context while the service runs (when ``batched``)."""

    def __init__(self, batched: bool = False) -> None:
        self.batched = batched
        self.sender: SendMany | None = None
        # lone writes waiting for ``flush``: their sockets, descriptors (as keys, each once) and bytes
        self._held: list[DirectWriter] | None = None
        self._held_fds: dict[int, None] = {}
        self._held_data: list[bytes] = []

    def startService(self) -> None:
        super().startService()
        if self.batched:
            self.sender = SendMany.open()

    def stopService(self) -> None:
        super().stopService()
        self.flush()
        sender, self.sender = self.sender, None
        if sender is not None:
            sender.close()

    def hold_lone_writes(self) -> None:
        """From now until ``flush``, bursts to a single socket wait to go out together."""
        if self.sender is not None:
            self._held = []

    def flush(self) -> None:
        """Write the bursts held since ``hold_lone_writes``, one ``io_submit`` for all, and stop holding."""
        self._write_held()
        self._held = None

    def _write_held(self) -> None:
        held, sender = self._held, self.sender
        if not held or sender is None:
            return
        fds, datas = self._held_fds, self._held_data
        self._held, self._held_fds, self._held_data = [], {}, []
        if len(held) == 1:
            held[0].write_now(datas[0])
            return
        taken = sender.send_each(list(fds), datas)
        if taken is not None:  # None: all of each (``SendMany.send``)
            for writer, data, sent in zip(held, datas, taken):
                if sent != len(data):
                    writer.wrote_directly(data, sent)
        self._check_sender(sender)

    def _hold(self, writer: DirectWriter, data: bytes) -> None:
        fd = writer.direct_fd()
        if fd is None:  # something queued: behind it, the usual way
            writer.write_now(data)
            return
        if fd in self._held_fds:  # its earlier frame must go first
            self._write_held()
        if self._held is None:  # that broke the AIO context
            writer.write_now(data)
            return
        self._held_fds[fd] = None
        self._held.append(writer)
        self._held_data.append(data)

    def _check_sender(self, sender: SendMany) -> None:
        if sender.broken:
            self.sender = None
            sender.close()
            self._held = None

    def send_one(self, outbox: DirectOutbox, burst: Burst) -> None:
        """Write ``burst`` to one socket: held until ``flush`` if lone writes are held, else now."""
        if self._held is not None:
            data = outbox.framed(burst)
            if data is not None:
                self._hold(outbox.direct, data)
        else:  # one socket: one plain send is the cheaper call
            outbox.send_burst(burst)

    def send_frame(self, writer: DirectWriter, data: bytes) -> None:
        """Write ``data``, framed and counted for ``writer``'s socket already, as ``send_one`` would."""
        if self._held is not None:
            self._hold(writer, data)
        else:
            writer.write_now(data)

    def send(self, outboxes: list[DirectOutbox], burst: Burst) -> None:
        """Write ``burst`` to every socket in ``outboxes``."""
        if len(outboxes) == 1:
            self.send_one(outboxes[0], burst)
            return
        if self._held is not None:
            self._write_held()
        sender = self.sender
        if sender is None:
            send_to_each(outboxes, burst)
            return
        direct: dict[str, tuple[list[DirectWriter], list[int]]] = {}
        for outbox in outboxes:
            data = outbox.framed(burst)
            if data is None:
                continue
            writer = outbox.direct
            fd = writer.direct_fd()
            if fd is None:
                writer.write_now(data)
                continue
            same_bytes = direct.get(outbox.framing)
            if same_bytes is None:
                same_bytes = direct[outbox.framing] = ([], [])
            same_bytes[0].append(writer)
            same_bytes[1].append(fd)
        for framing, (group, fds) in direct.items():
            data = burst.prepared[framing]
            if len(group) == 1:
                group[0].write_now(data)  # one socket: one plain send is the cheaper call
                continue
            taken = sender.send(fds, data)
            if taken is None:  # all of it, to each
                continue
            size = len(data)
            for writer, sent in zip(group, taken):
                if sent != size:
                    writer.wrote_directly(data, sent)
        self._check_sender(sender)
