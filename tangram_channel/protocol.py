"""
Phoenix channels over Autobahn WebSockets.

The protocol turns frames into ``Message`` objects for its ``Session`` and back. It
owns the per-socket concerns the session and hub must not know about: the serializer
version chosen at the upgrade, the token offered at the upgrade (``userToken`` or the
Phoenix 1.8 ``base64url.bearer.phx.<token>`` subprotocol), the idle timer, the bound
on bytes held for a client that does not read (every write counts: frames, pongs,
replies, close frames, join backlogs), the budget of frames a client may send, and the
budget of bytes it may send a second (past it the socket is not read for a moment, so a
client streaming megabytes costs the reactor its share and no more). A client whose own
answers wait unread is read no further until it reads them, and closed once it has not
read them for ``idle_timeout``.
The sockets offer a fast write path for the hub's ``Fanout``, which writes a broadcast
to all of a channel's sockets together. A socket that negotiated permessage-deflate
(``deflate.py``) gets what is sent to it compressed, each message on its own, so a
broadcast is compressed once for all of them (``framing`` names the bytes it shares).

Close codes: 4000 idle, 1008 send buffer over ``max_send_buffer`` or a flood past the
message budget, 1009 message over ``max_message_size`` (Autobahn), 1012 service
shutting down. Never 1000, after which phoenix.js up to 1.8.15 would not reconnect.
"""

from __future__ import annotations

import base64
import binascii
import os
from functools import partial
from collections.abc import Iterable
from typing import Any, Protocol, cast

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.compress import PerMessageDeflate
from autobahn.websocket.types import ConnectionRequest
from twisted.internet import tcp
from twisted.internet.protocol import connectionDone
from twisted.internet.interfaces import IAddress, IDelayedCall, IPushProducer, IReactorTime, ITransport
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from twisted.protocols.tls import TLSMemoryBIOProtocol
from zope.interface import implementer

from . import frames
from .deflate import (
    Compression,
    LeanDeflate,
    accept_offer,
    compressed_frame,
    frame_header,
    server_frame,
    text_frame_around,
)
from .hub import Hub
from .session import Session
from .frames import DEFAULT_LIMITS, Burst, FrameError, HeaderLimits, Message
from .logs import ThrottledLog
from .metrics import Metrics
from .partials import PartialMessage, PartialMessages
from .ratelimit import TokenBucket

log = Logger()

SUBPROTOCOL = "phoenix"
_TOKEN_PREFIX = "base64url.bearer.phx."

# Only routed when conformance_echo is on: an echo of every message on the same
# WebSocket stack and settings, for the Autobahn testsuite, whose cases expect an echo.
CONFORMANCE_PATH = "/conformance"

# a class attribute read on every member of every broadcast: a module global is cheaper
_OPEN = WebSocketServerProtocol.STATE_OPEN

CLOSE_IDLE = 4000
# An idle timer (or a long-poll session's expiry) this many seconds late says the process
# itself did not run (a loaded machine, a pause): the reactor runs due timers before it
# reads, so the client's heartbeat or poll may be waiting unread. Such a timeout looks
# again this long after.
STALLED_BY = 1.0
CLOSE_POLICY = 1008
CLOSE_RESTART = 1012
CLOSE_TRY_AGAIN = 1013  # the process's pool for messages still arriving is full (see ``partials``)

# Frames a socket may send in a row past its message budget, each answered with an
# error, before it is closed: room for a client that briefly overshoots, none for a flood.
RATE_GRACE = 20
RATE_LIMITED = "rate limit exceeded"

# Bytes of a client's own answers (replies, pongs, presence states) that may wait behind
# a full transport before the client is read no further: an attacker that pushes and
# never reads could otherwise make the service queue replies until max_send_buffer, on
# every socket it opens. Phoenix's socket process does the same by blocking in its send.
OWN_BYTES_BEFORE_READ_PAUSE = 64 * 1024


def fired_after_a_stall(call: IDelayedCall, clock: IReactorTime) -> bool:
    """Whether ``call``, running now, is over ``STALLED_BY`` late: a timeout to look at again, not act on."""
    return clock.seconds() - call.getTime() > STALLED_BY


def subprotocol_token(offered: list[str]) -> str | None:
    """The token phoenix.js 1.8 puts in ``Sec-WebSocket-Protocol``, if any."""
    for entry in offered:
        if entry.startswith(_TOKEN_PREFIX):
            encoded = entry[len(_TOKEN_PREFIX) :]
            try:
                return base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError, ValueError):
                return None
    return None


# What direct_fd reads of tcp.Connection (pinned by tests/test_twisted_internals.py)
_WRITE_QUEUE = ("socket", "_tempDataLen", "dataBuffer", "offset", "connected", "disconnecting")


def direct_connection(transport: ITransport | None) -> tcp.Connection | None:
    """
    Twisted's plain TCP transport (not TLS), whose socket may be sent to directly while
    its write queue is empty; None for any other transport, or a Twisted whose transport
    no longer has the attributes that tell: its sockets are then written the usual way.
    """
    if isinstance(transport, tcp.Connection) and all(hasattr(transport, name) for name in _WRITE_QUEUE):
        return transport
    return None


# What Autobahn keeps of the upgrade (for its own testsuite's reports) and never reads once
# open: about 2.6 KB a socket, the token in the URL or a subprotocol among it
_UPGRADE_COPIES = (
    "http_request_data",
    "http_status_line",
    "http_request_uri",
    "http_request_path",
    "http_request_params",
    "http_request_host",
    "http_headers",
    "http_headers_cnt",
    "http_response_data",
    "websocket_protocols",
    "websocket_extensions",
    "_wskey",
)


class SendQueue(list[tuple[bytes, bool]]):
    """
    Autobahn's queue of writes for an open socket, as a list: Autobahn queues only a
    chopped or synchronous write (or one behind those), so it is empty nearly always,
    and an empty ``deque`` is 760 bytes per socket against a list's 56. Autobahn takes
    from it with ``popleft``, a few entries at most.
    """

    __slots__ = ()

    def popleft(self) -> tuple[bytes, bool]:
        return self.pop(0)


class _Connection(Protocol):
    """What the protocol uses of its transport once open: a TCP or TLS connection."""

    def write(self, data: bytes) -> None: ...

    def writeSequence(self, data: Iterable[bytes]) -> None: ...

    def loseConnection(self) -> None: ...

    def abortConnection(self) -> None: ...

    def registerProducer(self, producer: IPushProducer, streaming: bool) -> None: ...

    def unregisterProducer(self) -> None: ...


class Connection(Protocol):
    """
    A client's connection as the factory keeps it, whatever its transport: a
    ``PhoenixProtocol`` or a long-poll session (``longpoll.LongPollConnection``).
    """

    session: Session | None

    def close(self, code: int, reason: str) -> None:
        """Leave every channel now and end the connection, telling the client ``code`` if it can."""


class DirectWriter:
    """
    A socket's fast write path (``fanout.DirectWriter``) and what it reads, in one small
    object that a member keeps (``hub.Member.direct``). Autobahn gives its protocol over
    60 attributes, past the 30 CPython lays out in the object itself, so each is looked
    up in a dictionary of the socket's own; a stream of one member per channel (W5) reaches
    a different socket for each message, and each of those lookups was a cache miss:
    in W5's profile ``Hub._send_alone`` and the two calls it made on the protocol took
    10.2 % of the samples, and 6.0 % with the calls here.
    """

    __slots__ = ("protocol", "state", "paused", "deflate", "tcp", "fd", "maybe_queued")

    def __init__(self, protocol: PhoenixProtocol) -> None:
        self.protocol = protocol
        self.state: int | None = None  # Autobahn's ``state`` (``PhoenixProtocol.state`` is this)
        self.paused = False  # the transport paused us: what is written waits, and counts
        self.deflate: LeanDeflate | None = None
        self.tcp: tcp.Connection | None = None  # plain TCP, until the connection is lost
        self.fd = -1  # its descriptor, while ``tcp`` is set
        # False once ``direct_fd`` saw the transport's queue empty, until anything is handed
        # to the transport: then its queue is empty still, and ``direct_fd`` need not look
        self.maybe_queued = True

    def lone_text_frame(self, head: bytes, payload: bytes, tail: bytes) -> bytes | None:
        if self.state != _OPEN or self.paused or self.deflate is not None:
            return None
        return text_frame_around(head, payload, tail)

    def direct_fd(self) -> int | None:
        """
        The descriptor the next frame may be written to straight, or None: only plain
        TCP (TLS transports encrypt before they write) with nothing queued before it.
        """
        transport = self.tcp
        if transport is None:
            return None
        # The transport's own object is one of the furthest a message's path has to
        # reach in memory (W5's profile: 5 % of the service's time here); once it was
        # seen empty, only a write through it can fill it, and those all set the flag.
        if self.maybe_queued:
            if (
                transport._tempDataLen
                or transport.offset != len(transport.dataBuffer)
                or not transport.connected
                or transport.disconnecting
            ):
                return None
            self.maybe_queued = False
        return self.fd

    def write_now(self, frame: bytes, tail: bytes = b"") -> None:
        """
        Send ``frame`` (then ``tail``, in the same system call) at once when nothing is
        queued before it, else queue it.

        ``transport.write`` would register the socket for writing, wait a reactor turn,
        send, and unregister: three system calls per frame per member, most of the cost
        of a broadcast. A socket with an empty queue can simply be sent to; whatever
        does not fit (or any error, which Twisted then reports as usual) takes the
        normal path.
        """
        fd = self.direct_fd()
        if fd is None:
            self.maybe_queued = True
            if tail:
                self.protocol._connection.writeSequence((frame, tail))
            else:
                self.protocol._connection.write(frame)
            return
        try:
            sent = os.writev(fd, (frame, tail)) if tail else os.write(fd, frame)
        except OSError:
            sent = 0
        if sent < len(frame):
            self.wrote_directly(frame, sent)
            if tail:
                self.maybe_queued = True
                self.protocol._connection.write(tail)
        elif tail:
            self.wrote_directly(tail, sent - len(frame))

    def wrote_directly(self, frame: bytes, sent: int | None) -> None:
        """
        After a direct write of ``frame`` took ``sent`` bytes (negative: an error, none
        taken), queue the rest; Twisted reports an error itself on its own write. None:
        unknown (the batch's system call failed), so the stream cannot go on: dropped,
        and the client reconnects.
        """
        if sent is None:
            self.protocol.factory.log_limited("lost", "dropping a socket whose write was lost by a failed batch")
            self.protocol._connection.abortConnection()
        elif sent != len(frame):
            self.maybe_queued = True
            self.protocol._connection.write(frame[sent:] if sent > 0 else frame)


@implementer(IPushProducer)
class PhoenixProtocol(WebSocketServerProtocol):
    factory: PhoenixFactory
    vsn = frames.V2
    framing = frames.V2  # which of a burst's framings this socket is sent (``Burst.prepared``)
    session: Session | None = None
    _idle: IDelayedCall | None = None
    _queued = 0
    _own_queued = 0  # of _queued, what the client's own messages were answered with
    _unread_since = 0.0  # when the client was last read no further for its unread answers
    _held = 0  # bytes of broadcasts held in this socket's join backlogs
    _closing_full = False  # while the 1008 close frame is written past the full budget
    _rate: TokenBucket | None = None
    _over_rate = 0  # frames in a row past the message budget
    _input_dropped = False  # closed for a flood: what it sent is read no further
    _frame_over_rate = False
    _message_over_rate = False
    _echo = False
    _intake: TokenBucket | None = None  # bytes read a second
    _intake_wait: IDelayedCall | None = None
    _read_holds: frozenset[str] = frozenset()  # why the socket is not read: "redis", "intake", "unread"
    _partial: PartialMessage | None = None  # the message it is sending, while it arrives

    def __init__(self) -> None:
        self.direct = DirectWriter(self)
        super().__init__()

    # Autobahn's own, kept where the fast write path reads it
    @property  # type: ignore[override]  # Autobahn declares a plain attribute
    def state(self) -> int | None:
        return self.direct.state

    @state.setter
    def state(self, state: int | None) -> None:
        self.direct.state = state

    def onConnect(self, request: ConnectionRequest) -> str | None:
        # web.SocketResource already refused bad versions and origins with HTTP errors
        self._echo = request.path.rstrip("/") == CONFORMANCE_PATH
        self.vsn = self.framing = request.params.get("vsn", [frames.V2])[0]
        token = request.params.get("userToken", [None])[0]
        chosen = None
        if SUBPROTOCOL in request.protocols:
            chosen = SUBPROTOCOL
            token = subprotocol_token(request.protocols) or token
        self._socket_token = token
        return chosen

    # Autobahn builds its own permessage-deflate object while it answers the upgrade;
    # the socket keeps ours, which frees its zlib state between messages
    @property  # type: ignore[override]  # Autobahn declares it None
    def _perMessageCompress(self) -> LeanDeflate | None:
        return self.direct.deflate

    @_perMessageCompress.setter
    def _perMessageCompress(self, negotiated: PerMessageDeflate | None) -> None:
        deflate = self.direct.deflate = None if negotiated is None else LeanDeflate.adopt(negotiated)
        if deflate is not None:
            deflate.too_large = self._inflated_too_large
            deflate.corrupt = self._invalid_payload

    def _inflated_too_large(self, inflated: int) -> None:
        """A compressed message inflated past ``max_message_size``: closed with 1009, as a plain one is."""
        if not self.failedByMe:
            self.wasMaxMessagePayloadSizeExceeded = True
            limit = self.factory.max_message_size
            self._max_message_size_exceeded(
                inflated, limit, f"received WebSocket message exceeds payload limit of {limit} octets after decompression"
            )

    def onOpen(self) -> None:
        for name in _UPGRADE_COPIES:
            self.__dict__.pop(name, None)
        # Autobahn types it a deque; it uses append, popleft and len
        self.send_queue = SendQueue(self.send_queue)  # type: ignore[assignment]
        direct = self.direct
        direct.tcp = direct_connection(self.transport)
        if direct.tcp is not None:
            direct.fd = direct.tcp.socket.fileno()
        if direct.deflate is not None:
            self.framing = f"{self.vsn} deflate {direct.deflate.server_max_window_bits}"
        # The HTTP channel that served the upgrade is still registered as producer.
        self._connection.unregisterProducer()
        self._connection.registerProducer(self, True)
        self.factory.sockets.add(self)
        self._partial = self.factory.partial_messages.message()
        if self.factory.idle_timeout > 0:
            self._idle = self.factory.clock.callLater(self.factory.idle_timeout, self._idle_out)
        if not self._echo:  # the Autobahn testsuite's cases send floods of fragments on purpose
            self._rate = TokenBucket(self.factory.clock, self.factory.message_rate, self.factory.message_burst)
            rate = self.factory.max_receive_rate
            if rate > 0:
                self._intake = TokenBucket(self.factory.clock, rate, rate)
            self.session = Session(self.factory.hub, self, self._socket_token)
        self._socket_token = None

    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(data)
        if self._intake is None or "intake" in self._read_holds:
            return
        wait = self._intake.charge(len(data))
        if wait > 0:
            self.factory.metrics.receive_throttled.inc()
            self._hold_reading("intake")
            self._intake_wait = self.factory.clock.callLater(wait, self._release_reading, "intake")

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._intake_wait is not None and self._intake_wait.active():
            self._intake_wait.cancel()
        self.direct.tcp = None  # its descriptor is closed, and may be another socket's soon
        if self._partial is not None:
            self._partial.end()
        super().connectionLost(reason)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self._touch()
        self.factory.metrics.received(len(payload))
        if self._echo:
            self.sendMessage(payload, isBinary)
            return
        over_rate, self._message_over_rate = self._message_over_rate, False
        if self.session is None:
            return
        self.factory.hand_over(self.session, payload, isBinary, self.vsn, over_rate)

    def processData(self) -> bool:
        """
        Autobahn's parse of the next frame of what was read, unless the socket was closed
        for a flood. A read holds up to 64 KiB, thousands of tiny frames, and Autobahn
        goes on parsing them after a close (it waits for the client's close frame):
        14 us each, so one read of one-byte fragments held the reactor for 130 ms.
        """
        if self._input_dropped:
            self.data = b""
            return False
        return super().processData()

    def onFrameBegin(self) -> None:
        """
        Every frame (fragments and control frames too) is spent from the message budget,
        also once a close was sent: a client that floods instead of answering it is dropped.
        """
        self._frame_over_rate = self._rate is not None and not self._rate.take()
        if self._frame_over_rate:
            self._over_rate += 1
            self._message_over_rate = True
            if self._over_rate > RATE_GRACE and not self._input_dropped:
                self._close_for_rate()
        else:
            self._over_rate = 0
        super().onFrameBegin()

    def _close_for_rate(self) -> None:
        self.factory.metrics.rate_clients_closed.inc()
        self.factory.log_limited("rate", "closing a client that sent over its message budget")
        self._close_reading_no_more(CLOSE_POLICY, RATE_LIMITED)

    def _close_reading_no_more(self, code: int, reason: str) -> None:
        """Close with ``code``, and read nothing more: what was parsed so far is all the client may cost."""
        self.close(code, reason)  # the close frame, unless one was sent already
        self._input_dropped = True
        self._connection.loseConnection()

    def onMessageFrameData(self, payload: bytes) -> None:
        """A piece of the message arriving, kept only if the process's pool can hold it (see ``partials``)."""
        if self._input_dropped or self.failedByMe:
            return
        if self._partial is not None and not self._partial.take(len(payload)):
            self._close_for_partials()
            return
        super().onMessageFrameData(payload)

    def onMessageEnd(self) -> None:
        """The message is handed on, unless the socket was closed for what it sent; what it drew goes back to the pool."""
        try:
            if not self._input_dropped:
                super().onMessageEnd()
        finally:
            if self._partial is not None:
                self._partial.end()

    def _close_for_partials(self) -> None:
        """Close with 1013 a socket whose message the pool cannot hold, and free what the message held."""
        self.factory.metrics.partial_message_closes.inc()
        self.factory.log_limited(
            "partial", "closing a client: its message does not fit in what is left of max_partial_message_bytes"
        )
        self._close_reading_no_more(CLOSE_TRY_AGAIN, "receive buffers full")
        self.message_data = []
        self.frame_data = []
        if self._partial is not None:
            self._partial.end()

    def onPing(self, payload: bytes) -> None:
        self._touch()
        if self._frame_over_rate:
            self.factory.metrics.pongs_skipped.inc()
            return
        super().onPing(payload)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self._end_session()

    # Outbox, for the session

    def send(self, message: Message[str | None]) -> None:
        self.send_frame(frames.encode(message, self.vsn), False)

    def send_frame(self, frame: bytes, is_binary: bool) -> None:
        # not sendMessage, which would hold what the service sends to max_message_size
        if self.state != _OPEN:
            return
        self.factory.metrics.sent(1, len(frame))
        if self.direct.deflate is not None or self.send_queue:
            self.sendData(self._wire(frame, is_binary))
            return
        # as sendData would, but with the frame written behind its header rather than
        # copied behind it: a joiner's presence_state may be megabytes, and every joiner
        # of a storm gets one
        header = frame_header(len(frame), is_binary)
        if self._count(len(header) + len(frame), own=True):
            self.direct.write_now(header, frame)

    def sendData(self, data: bytes, sync: bool = False, chopsize: int | None = None) -> None:
        """
        Everything Autobahn writes (replies, pongs, close frames) counts toward the send
        budget. Once open, a plain write takes the direct path (``write_now``) rather
        than Autobahn's, which queues it for a later reactor turn.
        """
        if not (self._closing_full or self._count(len(data), own=True)):
            return
        if self.state == self.STATE_OPEN and not sync and chopsize is None and not self.send_queue:
            self.direct.write_now(data)
        else:
            self.direct.maybe_queued = True  # Autobahn writes it to the transport
            super().sendData(data, sync, chopsize)

    def send_burst(self, burst: Burst) -> None:
        data = self.framed(burst)
        if data is not None:
            self.direct.write_now(data)

    def hold(self, burst: Burst) -> bool:
        """Count ``burst``, kept in a join backlog, as held; False if that spent the budget (closing)."""
        if self.state != self.STATE_OPEN:
            return False
        self._held += len(self._frame(burst))
        return self._within_budget()

    def release(self, bursts: list[Burst]) -> None:
        """Stop counting bursts that left a join backlog (sent, or dropped with their member)."""
        self._held -= sum(len(self._frame(burst)) for burst in bursts)

    # The fast write path (fanout.DirectOutbox): ``framed`` a burst, then either
    # send it straight to ``direct.direct_fd()`` (many sockets in one system call) and
    # hand what was taken to ``direct.wrote_directly``, or ``direct.write_now``.

    def framed(self, burst: Burst) -> bytes | None:
        """``burst`` framed for this socket and counted toward its budget, or None if nothing may be sent now."""
        direct = self.direct
        if direct.state != _OPEN:
            return None
        data = burst.prepared.get(self.framing)  # ``_frame``'s cache, read here: a call less per member
        if data is None:
            data = self._frame(burst)
        # Run once per member of a broadcast, so ``_count`` only when it counts: while the
        # transport has not paused us nothing is queued (``_count``), and the bytes held in
        # join backlogs were checked against the budget as they came (``hold``).
        if direct.paused and not self._count(len(data)):
            return None
        return data

    def _frame(self, burst: Burst) -> bytes:
        data = burst.prepared.get(self.framing)
        if data is None:
            # WebSocket framing (and compression), done once per burst and framing: server
            # frames are unmasked and compressed without context, so every member gets the same bytes
            broadcasts = burst.broadcasts
            if len(broadcasts) == 1:  # most bursts (each of Tangram's streaming messages): no list, no join
                data = self._wire_broadcast(broadcasts[0])
            else:
                data = b"".join([self._wire_broadcast(broadcast) for broadcast in broadcasts])
            burst.prepared[self.framing] = data
        return data

    def _wire_broadcast(self, broadcast: frames.Broadcast) -> bytes:
        """One broadcast of a burst as this socket is sent it."""
        if self.direct.deflate is None and broadcast.is_text:  # most: framed with its payload copied once
            return text_frame_around(*broadcast.text_parts(self.vsn))
        return self._wire(broadcast.frame(self.vsn), not broadcast.is_text)

    def _wire(self, payload: bytes, is_binary: bool) -> bytes:
        """One message as this socket is sent it: a frame, compressed when negotiated and worth it."""
        deflate = self.direct.deflate
        if deflate is None:
            return server_frame(payload, is_binary)
        return compressed_frame(
            payload, is_binary, deflate.server_max_window_bits, self.factory.compression.min_size
        )

    @property
    def _connection(self) -> _Connection:
        # Twisted types a transport as ITransport | None; ours, from the HTTP channel that
        # served the upgrade, is a tcp.Server or a TLSMemoryBIOProtocol, which also take a
        # producer and can abort (TLS does not declare IConsumer, so no adaptation)
        return cast(_Connection, self.transport)

    # limits

    def _touch(self) -> None:
        if self._idle is not None and self._idle.active():
            self._idle.reset(self.factory.idle_timeout)

    def _idle_out(self) -> None:
        clock = self.factory.clock
        if self._read_holds:
            # silent because we stopped reading it, not because the client went away;
            # unless it is not read because it has not read its own answers, for as long
            unread = self._read_holds == {"unread"}
            wait = self.factory.idle_timeout - (clock.seconds() - self._unread_since if unread else 0)
            if wait > 0:
                self._idle = clock.callLater(wait, self._idle_out)
            elif unread:
                self._close_slow("closing a client that has not read its replies for idle_timeout", "not reading")
            return
        if self._idle is not None and fired_after_a_stall(self._idle, clock):
            self._idle = clock.callLater(STALLED_BY, self._idle_out)
            return
        self.close(CLOSE_IDLE, "idle timeout")

    def pause_reading(self) -> None:
        """Stop reading the client (its publishes wait on Redis); TCP then slows it down."""
        self._hold_reading("redis")

    def resume_reading(self) -> None:
        self._release_reading("redis")

    def _hold_reading(self, why: str) -> None:
        if not self._read_holds:
            self._reading_side().pauseProducing()
        self._read_holds |= {why}

    def _release_reading(self, why: str) -> None:
        """Read again once nothing else holds the socket: Redis and the byte budget pause it independently."""
        if why not in self._read_holds:
            return
        self._read_holds -= {why}
        if not self._read_holds:
            self._reading_side().resumeProducing()

    def _reading_side(self) -> Any:
        """The connection that reads from the network: under TLS, the one below it."""
        transport = self.transport
        return transport.transport if isinstance(transport, TLSMemoryBIOProtocol) else transport

    def _count(self, size: int, own: bool = False) -> bool:
        """
        Account for ``size`` more bytes, ``own`` if they answer the client's own messages
        (not a broadcast); False if that closed the socket (nothing may follow).

        Bytes written while the transport has not paused us are below its high-water
        mark; past it, each one is held until the client reads, and counted.
        """
        if self.direct.paused:
            self._queued += size
            if own:
                self._own_queued += size
                if self._own_queued > OWN_BYTES_BEFORE_READ_PAUSE and "unread" not in self._read_holds:
                    self._unread_since = self.factory.clock.seconds()
                    self.factory.metrics.reads_paused_unread.inc()
                    self._hold_reading("unread")
        return self._within_budget()

    def _within_budget(self) -> bool:
        """Whether the bytes held for the client are within ``max_send_buffer``; if not, close with 1008."""
        held = self._queued + self._held
        if held <= self.factory.max_send_buffer:
            return True
        if self.state == self.STATE_OPEN:
            self._close_slow(f"closing a client that stopped reading ({held} bytes held)", "send buffer full")
        return False

    def _close_slow(self, logged: str, reason: str) -> None:
        """Close with 1008 a client that does not read, counted and logged (throttled)."""
        self.factory.metrics.slow_clients_closed.inc()
        self.factory.log_limited("slow", logged)
        self._closing_full = True  # the close frame is the one write let past the budget
        try:
            self.close(CLOSE_POLICY, reason)
        finally:
            self._closing_full = False

    def pauseProducing(self) -> None:
        self.direct.paused = True

    def resumeProducing(self) -> None:
        self.direct.paused = False
        self._queued = self._own_queued = 0
        self._release_reading("unread")

    def stopProducing(self) -> None:
        pass

    def close(self, code: int, reason: str) -> None:
        """Leave every channel now, then close with ``code``; drop if the client never answers."""
        self._end_session()
        if self.state == self.STATE_OPEN:
            self.sendCloseFrame(code=code, reasonUtf8=reason.encode("utf-8"), isReply=False)

    def _end_session(self) -> None:
        if self._idle is not None and self._idle.active():
            self._idle.cancel()
        self.factory.sockets.discard(self)
        session, self.session = self.session, None
        if session is not None:
            session.disconnected()


class AutobahnLog:
    """
    Autobahn's logger for the sockets of one factory. Autobahn warns once or twice for
    every connection a client breaks the protocol on (bad UTF-8, a reserved opcode, a
    message too big); a client that reconnects in a loop would fill the log, so its
    warnings and errors share one throttled kind. The other levels pass through.
    """

    def __init__(self, autobahn_log: Any, errors: ThrottledLog) -> None:
        self._log = autobahn_log
        self._errors = errors

    def warn(self, text: str, **fields: Any) -> None:
        self._errors.emit("websocket", text, **fields)

    def error(self, text: str, **fields: Any) -> None:
        self._errors.emit("websocket", text, level=LogLevel.error, **fields)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._log, name)


# Autobahn's factory subclasses Twisted's generic Factory without a type argument, so
# mypy holds it to the default protocol type, whose factory is a Factory of itself: a
# protocol typed with its own factory class cannot match (hence the two ignores)
class PhoenixFactory(WebSocketServerFactory):
    protocol = PhoenixProtocol  # type: ignore[assignment]

    def __init__(
        self,
        *,
        hub: Hub,
        clock: IReactorTime,
        idle_timeout: float = 60.0,
        max_message_size: int = 1024 * 1024,
        max_send_buffer: int = 16 * 1024 * 1024,
        metrics: Metrics | None = None,
        header_limits: HeaderLimits = DEFAULT_LIMITS,
        message_rate: float = 0.0,
        message_burst: int = 1,
        max_receive_rate: int = 0,
        max_partial_message_bytes: int = 0,
        compression: Compression = Compression(),
    ) -> None:
        super().__init__()
        self.hub = hub
        self.header_limits = header_limits
        self.metrics = metrics if metrics is not None else Metrics()
        self.clock = clock
        self.idle_timeout = idle_timeout
        self.max_send_buffer = max_send_buffer
        self.message_rate = message_rate
        self.message_burst = message_burst
        self.max_receive_rate = max_receive_rate
        self.max_message_size = max_message_size
        self.partial_messages = PartialMessages(max_partial_message_bytes)
        self.metrics.count_partial_messages(self.partial_messages)
        self.compression = compression
        self.sockets: set[Connection] = set()  # WebSockets and long-poll sessions
        self.metrics.count_sockets(lambda: len(self.sockets))
        self._errors = ThrottledLog(log, clock)
        self._autobahn_log = AutobahnLog(self.protocol.log, self._errors)
        self._protocol_settings: dict[str, Any] | None = None
        self._protocol: type[PhoenixProtocol] = PhoenixProtocol
        accept = partial(accept_offer, max_message_size=max_message_size) if compression.enabled else None
        # Origins are checked by web.SocketResource, which answers with a clear 403;
        # Autobahn's own check would refuse browsers' "null" origin.
        self.setProtocolOptions(
            webStatus=False,
            maxMessagePayloadSize=max_message_size,
            maxFramePayloadSize=max_message_size,
            allowNullOrigin=True,
            # Autobahn drops the TCP connection on a protocol failure by default, so a
            # too-big message reached the client as 1006: send the close code instead.
            failByDrop=False,
            closeHandshakeTimeout=2,
            openHandshakeTimeout=10,
            # None leaves Autobahn's default, which accepts no offer
            perMessageCompressionAccept=accept,
        )

    def buildProtocol(self, addr: IAddress | None) -> PhoenixProtocol:  # type: ignore[override]
        self.protocol = self._protocol_class()
        return cast(PhoenixProtocol, super().buildProtocol(addr))

    def _protocol_class(self) -> type[PhoenixProtocol]:
        """
        ``PhoenixProtocol`` with this factory's Autobahn settings as class attributes, made
        again when one changed. Autobahn copies each of its 29 settings onto every protocol
        unless the class has it, and logs them with a pformat even when debug is off: a
        socket's attributes then need a dict twice the size (1.6 KB more), and each
        connection a pformat (2 % of a join storm's CPU).
        """
        settings = {name: getattr(self, name) for name in PhoenixProtocol.CONFIG_ATTRS}
        if settings != self._protocol_settings:
            self._protocol_settings = settings
            # a function in a class would be bound to the socket (perMessageCompressionAccept)
            values = {name: staticmethod(value) if callable(value) else value for name, value in settings.items()}
            attributes = {**values, "CONFIG_ATTRS": (), "log": self._autobahn_log}
            self._protocol = type(PhoenixProtocol.__name__, (PhoenixProtocol,), attributes)
        return self._protocol

    def hand_over(self, session: Session, data: bytes, is_binary: bool, vsn: str, over_rate: bool) -> None:
        """
        A client's frame, whatever its transport, decoded and given to its session: a bad
        one, or one past the message budget, is answered with an error and counted.
        """
        try:
            if is_binary:
                message = frames.decode_binary(data, self.header_limits)
            else:
                message = frames.decode_text(data, vsn, self.header_limits)
        except FrameError as e:
            self.frame_rejected(e)
            session.frame_error(e)
            return
        if over_rate:
            self.metrics.rate_limited.inc()
            session.frame_error(FrameError(RATE_LIMITED, message.join_ref, message.ref, message.topic))
            return
        session.received(message)

    def frame_rejected(self, error: FrameError) -> None:
        """Count a bad frame (in /metrics); log at most one a minute, so bad clients cannot flood the log."""
        self.metrics.rejected(error.reason)
        self._errors.emit("frame", "rejected a frame: {reason}", level=LogLevel.info, reason=error.reason)

    def log_limited(self, kind: str, line: str) -> None:
        """Log ``line`` unless a line of ``kind`` went out in the last minute, so floods cost one line."""
        self._errors.emit(kind, "{line}", level=LogLevel.info, line=line)

    def session_of(self, conn_id: str) -> Session | None:
        """The session of connection ``conn_id`` on this process (a scan: for an admin's rare action)."""
        return next((p.session for p in self.sockets if p.session is not None and p.session.conn_id == conn_id), None)

    def close_all(self, code: int, reason: str) -> None:
        for each in list(self.sockets):
            each.close(code, reason)
