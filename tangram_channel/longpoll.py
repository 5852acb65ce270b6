"""
Phoenix channels over HTTP long polling, for clients whose WebSockets a proxy blocks
(phoenix.js ``transport: LongPoll``, or ``longPollFallbackMs``).

The wire, as phoenix.js 1.8 speaks it (every answer is HTTP 200 with a JSON envelope
``{"status", "token", "messages"}``; phoenix.js reads only the envelope):

- ``GET <path>/longpoll?vsn=..&userToken=..`` without ``token`` opens a session:
  ``{"status": 410, "token": <session token>, "messages": []}``.
- ``GET`` with ``token`` waits up to ``longpoll_poll_timeout`` for frames:
  ``{"status": 200, "token", "messages": [<frame>, ...]}``, else ``{"status": 204, ...}``;
  ``{"status": 410}`` once the session is gone (phoenix.js then reconnects and rejoins).
- ``POST`` with ``token``, body ``application/x-ndjson``: one frame a line (a line not
  starting with ``[`` or ``{`` is a base64 binary frame), at most ``MAX_BATCH`` lines:
  ``{"status": 200}`` once they are handled, ``{"status": 410}`` if the session is gone.

A session is a ``Session`` like a WebSocket's, behind a ``LongPollConnection`` that is its
outbox: the same joins, presence, replies and publishes. What the connection adds is
the transport's share of the WebSocket's limits: frames wait for the next poll in a
queue bounded by ``max_send_buffer`` (past it the session ends, as a socket that does
not read is closed), a POST spends the same message and byte budgets as frames read
from a socket, a POST whose answers leave 64 KiB of them unpolled is answered only once
a poll has taken them (as a socket is not read), and a session no poll came for in
``longpoll_session_timeout`` ends (looked at again a second later when the process
itself stalled, as an idle socket is).
Binary broadcasts cannot ride in the JSON envelope and are not sent to these clients.

A session lives in the process that opened it; under ``workers = N`` (or with
``longpoll_route_host``) its token also names that process, and the others forward its
requests there (``pollroute.py``).
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
from typing import IO, Any, cast

from twisted.internet.interfaces import IDelayedCall
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from . import frames
from .frames import Burst, FrameError, Message
from .metrics import Metrics
from .peers import PeerConnections
from .pollroute import Forwarder, SessionRoutes, finish_json, json_body
from .protocol import (
    CLOSE_POLICY,
    OWN_BYTES_BEFORE_READ_PAUSE,
    RATE_GRACE,
    RATE_LIMITED,
    STALLED_BY,
    PhoenixFactory,
    fired_after_a_stall,
)
from .ratelimit import TokenBucket
from .session import Session

# phoenix.js sends at most 100 frames a POST (MAX_LONGPOLL_BATCH_SIZE); Phoenix reads no more
MAX_BATCH = 100
# a connection that stopped polling: closed as a WebSocket that stopped reading
CLOSE_EXPIRED = 4000


def envelope(status: int, token: str | None = None, messages: list[bytes] | None = None) -> bytes:
    """The JSON body phoenix.js reads; ``messages`` are frames already encoded (JSON text)."""
    if token is None:
        return b'{"status":%d}' % status
    listed = b",".join(json.dumps(m.decode("utf-8")).encode("ascii") for m in messages or [])
    return b'{"status":%d,"token":%s,"messages":[%s]}' % (status, json.dumps(token).encode("ascii"), listed)


def split_batch(body: bytes, ndjson: bool) -> list[tuple[bytes, bool]]:
    """
    The frames of a POST body, each with whether it is binary: one a line for
    ``application/x-ndjson`` (binary ones base64, as phoenix.js sends an ArrayBuffer),
    else the whole body as one text frame. FrameError for a batch past ``MAX_BATCH`` or
    bad base64.
    """
    if not ndjson:
        return [(body, False)]
    lines = [line.rstrip(b"\r") for line in body.split(b"\n")]
    if len(lines) > MAX_BATCH:
        raise FrameError(f"at most {MAX_BATCH} frames a POST")
    batch = []
    for line in lines:
        if line[:1] in (b"[", b"{"):
            batch.append((line, False))
            continue
        try:
            batch.append((base64.b64decode(line, validate=True), True))
        except (binascii.Error, ValueError):
            raise FrameError("a line that is neither a JSON frame nor base64") from None
    return batch


class LongPollConnection:
    """
    One long-poll session: the ``Outbox`` of its ``Session``, the frames waiting for a
    poll, the poll waiting for frames, and the budgets a WebSocket would have.
    """

    def __init__(
        self,
        *,
        factory: PhoenixFactory,
        polls: LongPolls,
        token: str,
        vsn: str,
        socket_token: str | None,
        host: str | None,
    ) -> None:
        self.factory = factory
        self.polls = polls
        self.token = token
        self.vsn = vsn
        self.framing = f"{vsn} longpoll"  # never a key of Burst.prepared: a session offers no descriptor
        self.host = host
        self.closed = False
        self._queue: list[bytes] = []
        self._queued = 0  # bytes in _queue
        self._own_queued = 0  # of those, what the client's own messages were answered with
        self._post_waits_for_poll = False  # its answers are not polled: the POST is answered after they are
        self._held = 0  # bytes of broadcasts held in join backlogs
        self._poll: Request | None = None
        self._poll_timer: IDelayedCall | None = None
        self._flush_call: IDelayedCall | None = None
        self._post: Request | None = None  # the POST whose frames wait for Redis (reading paused)
        self._paused = False
        self._over_rate = 0
        clock = factory.clock
        self._rate = TokenBucket(clock, factory.message_rate, factory.message_burst)
        self._intake = TokenBucket(clock, factory.max_receive_rate, factory.max_receive_rate)
        self._expiry = clock.callLater(polls.session_timeout, self._expire)
        self.session: Session | None = Session(factory.hub, self, socket_token)

    # the client's requests

    def poll(self, request: Request) -> Any:
        """A GET: answer with what waits, else hold the request until frames come or the poll times out."""
        self._expiry.reset(self.polls.session_timeout)
        if self._poll is not None:  # the client gave up on it: the newer one takes over
            self._answer_poll(204)
        if self._queue:
            self._poll = request
            self._answer_poll(200)
            return NOT_DONE_YET
        self._poll = request
        self._poll_timer = self.factory.clock.callLater(self.polls.poll_timeout, self._answer_poll, 204)
        request.notifyFinish().addBoth(self._poll_ended, request)
        return NOT_DONE_YET

    def post(self, request: Request) -> Any:
        """A POST: its frames go to the session; answered once they are handled (after Redis, if it lags)."""
        if self._post is not None:
            request.setResponseCode(429)
            return json_body(request, envelope(429))
        body = cast(IO[bytes], request.content).read()
        content_type = (request.getHeader("content-type") or "").split(";")[0].strip().lower()
        try:
            batch = split_batch(body, content_type == "application/x-ndjson")
        except FrameError as e:
            self.factory.frame_rejected(e)
            request.setResponseCode(400)
            return json_body(request, b'{"status":400,"error":%s}' % json.dumps(e.reason).encode("ascii"))
        self._post = request
        request.notifyFinish().addBoth(self._post_ended, request)
        wait = self._intake.charge(len(body))
        if wait > 0:  # as a socket over max_receive_rate is not read for a moment
            self.factory.metrics.receive_throttled.inc()
            self.factory.clock.callLater(wait, self._handle, batch)
        else:
            self._handle(batch)
        return NOT_DONE_YET

    def _handle(self, batch: list[tuple[bytes, bool]]) -> None:
        for data, is_binary in batch:
            if self.session is None:
                break
            self._received(data, is_binary)
        if self.session is not None and self._own_queued > OWN_BYTES_BEFORE_READ_PAUSE:
            # as a socket whose answers wait unread is read no further: phoenix.js sends
            # its next batch once this one is answered
            self._post_waits_for_poll = True
            self.factory.metrics.reads_paused_unread.inc()
        elif not self._paused:
            self._answer_post(200 if self.session is not None else 410)

    def _received(self, data: bytes, is_binary: bool) -> None:
        session = self.session
        assert session is not None
        self.factory.metrics.received(len(data))
        # every frame is spent from the message budget, good or bad, as a socket's are
        over_rate = not self._rate.take()
        self._over_rate = self._over_rate + 1 if over_rate else 0
        if self._over_rate > RATE_GRACE:
            self.factory.metrics.rate_clients_closed.inc()
            self.factory.log_limited("rate", "ending a long-poll session that sent over its message budget")
            self.close(CLOSE_POLICY, RATE_LIMITED)
            return
        self.factory.hand_over(session, data, is_binary, self.vsn, over_rate)

    # Outbox, for the session and the hub

    def send(self, message: Message[str | None]) -> None:
        self._enqueue(frames.encode(message, self.vsn), own=True)

    def send_frame(self, frame: bytes, is_binary: bool) -> None:
        if not is_binary:
            self._enqueue(frame, own=True)

    def send_burst(self, burst: Burst) -> None:
        for broadcast in burst.broadcasts:
            if broadcast.is_text:
                self._enqueue(broadcast.frame(self.vsn))

    def framed(self, burst: Burst) -> bytes | None:
        """Queued for the next poll at once: nothing is left for the fan-out's direct path."""
        self.send_burst(burst)
        return None

    @property
    def direct(self) -> LongPollConnection:
        """Its own fast write path, which writes nothing straight: see ``lone_text_frame``."""
        return self

    def lone_text_frame(self, head: bytes, payload: bytes, tail: bytes) -> bytes | None:
        return None  # polls are answered with batches of frames, not written straight

    def direct_fd(self) -> int | None:
        return None

    def write_now(self, frame: bytes) -> None:
        self._enqueue(frame)

    def wrote_directly(self, frame: bytes, sent: int | None) -> None:
        """Never called: ``direct_fd`` offers no descriptor."""

    def hold(self, burst: Burst) -> bool:
        if self.closed:
            return False
        self._held += _text_size(burst, self.vsn)
        return self._within_budget(0)

    def release(self, bursts: list[Burst]) -> None:
        self._held -= sum(_text_size(burst, self.vsn) for burst in bursts)

    def pause_reading(self) -> None:
        """Redis is behind with this session's publishes: the POST's answer (phoenix.js's next batch) waits."""
        self._paused = True

    def resume_reading(self) -> None:
        self._paused = False
        if self._post is not None and not self._post_waits_for_poll:
            self._answer_post(200)

    def close(self, code: int, reason: str) -> None:
        """Leave every channel; the waiting poll and every later request get 410, and the client reconnects."""
        if self.closed:
            return
        self.closed = True
        if self._expiry.active():
            self._expiry.cancel()
        self.polls.remove(self)
        session, self.session = self.session, None
        if session is not None:
            session.disconnected()
        self._queue, self._queued, self._held = [], 0, 0
        self._answer_poll(410)
        self._answer_post(410)

    # the queue and the answers

    def _enqueue(self, frame: bytes, own: bool = False) -> None:
        """Queue ``frame`` for the next poll; ``own`` if it answers the client's own messages."""
        if self.closed or not self._within_budget(len(frame)):
            return
        self._queue.append(frame)
        self._queued += len(frame)
        if own:
            self._own_queued += len(frame)
        if self._poll is not None and self._flush_call is None:
            # what the same reactor turn adds (a join's reply and presence_state) goes along
            self._flush_call = self.factory.clock.callLater(0, self._flush)

    def _flush(self) -> None:
        self._flush_call = None
        if self._poll is not None and self._queue:
            self._answer_poll(200)

    def _within_budget(self, more: int) -> bool:
        held = self._queued + self._held + more
        if held <= self.factory.max_send_buffer:
            return True
        self.factory.metrics.slow_clients_closed.inc()
        self.factory.log_limited("slow", f"ending a long-poll session that stopped polling ({held} bytes held)")
        self.close(CLOSE_POLICY, "send buffer full")
        return False

    def _answer_poll(self, status: int) -> None:
        request, self._poll = self._poll, None
        if self._poll_timer is not None and self._poll_timer.active():
            self._poll_timer.cancel()
        self._poll_timer = None
        if request is None:
            return
        if status == 200:
            messages, self._queue, self._queued, self._own_queued = self._queue, [], 0, 0
            self.factory.metrics.sent(len(messages), sum(len(m) for m in messages))
            body = envelope(200, self.token, messages)
        elif status == 204:
            body = envelope(204, self.token, [])
        else:
            body = envelope(status)
        finish_json(request, body)
        if status == 200 and self._post_waits_for_poll:
            self._post_waits_for_poll = False
            if not self._paused:
                self._answer_post(200)

    def _answer_post(self, status: int) -> None:
        request, self._post = self._post, None
        if request is not None:
            finish_json(request, envelope(status))

    def _poll_ended(self, _: object, request: Request) -> None:
        if self._poll is request:  # the client went away while it waited
            self._poll = None
            if self._poll_timer is not None and self._poll_timer.active():
                self._poll_timer.cancel()

    def _post_ended(self, _: object, request: Request) -> None:
        if self._post is request:
            self._post = None
            self._post_waits_for_poll = False

    def _expire(self) -> None:
        clock = self.factory.clock
        if self._poll is not None:  # polling right now: alive
            self._expiry = clock.callLater(self.polls.session_timeout, self._expire)
            return
        if fired_after_a_stall(self._expiry, clock):  # a poll may be waiting unread: look again
            self._expiry = clock.callLater(STALLED_BY, self._expire)
            return
        self.factory.metrics.longpoll_expired.inc()
        self.close(CLOSE_EXPIRED, "no poll")


def _text_size(burst: Burst, vsn: str) -> int:
    return sum(len(b.frame(vsn)) for b in burst.broadcasts if b.is_text)


class LongPolls:
    """
    This process's long-poll sessions by token, and the bounds on opening them: at
    most ``max_per_ip`` from one address, as sockets are by ``max_connections_per_ip``,
    and ``max_sessions`` in all (0: no cap). A session holds no connection while no poll
    waits, so nothing else bounds how many a client that never polls can open.
    """

    def __init__(
        self,
        *,
        poll_timeout: float,
        session_timeout: float,
        max_per_ip: int,
        max_sessions: int,
        metrics: Metrics,
        routes: SessionRoutes,
    ) -> None:
        self.routes = routes
        self.poll_timeout = poll_timeout
        self.session_timeout = session_timeout
        self.max_per_ip = max_per_ip
        self.max_sessions = max_sessions
        self.sessions: dict[str, LongPollConnection] = {}
        self._per_ip = PeerConnections(max_per_ip)
        metrics.longpoll_sessions.set_function(lambda: len(self.sessions))

    def open(
        self, factory: PhoenixFactory, vsn: str, socket_token: str | None, host: str | None
    ) -> LongPollConnection | str:
        """A new session, registered with ``factory`` as its sockets are; past a cap, a sentence saying which."""
        if self.max_sessions and len(self.sessions) >= self.max_sessions:
            return f"this process holds max_longpoll_sessions ({self.max_sessions}) long-poll sessions"
        counted = host if self.max_per_ip else None
        if counted is not None and not self._per_ip.admit(counted):
            return f"this address holds max_connections_per_ip ({self.max_per_ip}) long-poll sessions"
        token = self.routes.token(secrets.token_urlsafe(18))
        connection = LongPollConnection(
            factory=factory, polls=self, token=token, vsn=vsn, socket_token=socket_token, host=counted
        )
        self.sessions[token] = connection
        factory.sockets.add(connection)
        return connection

    def find(self, token: str) -> LongPollConnection | None:
        return self.sessions.get(token)

    def remove(self, connection: LongPollConnection) -> None:
        if self.sessions.pop(connection.token, None) is None:
            return
        connection.factory.sockets.discard(connection)
        if connection.host is not None:
            self._per_ip.release(connection.host)


class LongPollResource(Resource):
    """``GET``/``POST`` at ``<socket path>/longpoll``, after the same vsn and Origin checks as the socket."""

    isLeaf = True

    def __init__(
        self,
        *,
        factory: PhoenixFactory,
        polls: LongPolls,
        allowed_origins: tuple[str, ...],
        forwarder: Forwarder | None = None,
        opens_sessions: bool = True,
    ) -> None:
        super().__init__()
        self._factory = factory
        self._polls = polls
        self._allowed_origins = allowed_origins
        self._forwarder = forwarder  # to the worker holding a session (``pollroute``), if there are others
        # the route port serves the sessions it holds to the other processes, and opens
        # none: a session opened there would pass the Origin check and be counted
        # against the forwarding process's address, not the client's
        self._opens_sessions = opens_sessions

    def render(self, request: Request) -> Any:
        if request.postpath not in ([], [b""]):
            request.setResponseCode(404)
            return json_body(request, b'{"error":"no such resource"}')
        if request.method not in (b"GET", b"POST"):
            request.setResponseCode(405)
            request.setHeader(b"allow", b"GET, POST, OPTIONS")
            return json_body(request, b'{"error":"use GET to poll and POST to send"}')
        args = cast(dict[bytes, list[bytes]], request.args)
        vsn = args.get(b"vsn", [frames.V2.encode()])[0].decode("utf-8", "replace")
        if vsn not in frames.VERSIONS:
            request.setResponseCode(400)
            return json_body(request, b'{"status":400,"error":"unsupported vsn: use 2.0.0 or 1.0.0"}')
        origin = request.getHeader("origin")
        if "*" not in self._allowed_origins and origin not in self._allowed_origins:
            request.setResponseCode(403)  # phoenix.js gives up on a 403, as it should
            return json_body(request, b'{"status":403,"error":"this Origin may not open a socket here"}')
        token = args.get(b"token", [None])[0] or (request.getHeader("x-phoenix-longpoll-token") or "").encode()
        if not token:
            if request.method == b"POST":
                return json_body(request, envelope(410))
            if not self._opens_sessions:
                request.setResponseCode(403)
                return json_body(request, b'{"status":403,"error":"sessions are opened on the service port"}')
            return self._open(request, vsn, args)
        connection = self._polls.find(token.decode("utf-8", "replace"))
        if connection is None:
            owner = self._polls.routes.elsewhere(token.decode("utf-8", "replace"))
            if owner is not None and self._forwarder is not None:
                return self._forwarder.forward(request, owner, cast(IO[bytes], request.content).read())
            return json_body(request, envelope(410))
        if request.method == b"POST":
            return connection.post(request)
        return connection.poll(request)

    def _open(self, request: Request, vsn: str, args: dict[bytes, list[bytes]]) -> bytes:
        user_token = args.get(b"userToken", [None])[0]
        socket_token = request.getHeader("x-phoenix-authtoken") or (
            user_token.decode("utf-8", "replace") if user_token is not None else None
        )
        host = getattr(request.getClientAddress(), "host", None)
        connection = self._polls.open(self._factory, vsn, socket_token, host)
        if isinstance(connection, str):
            self._factory.log_limited("longpoll cap", f"refused a long-poll session: {connection}")
            # status 500: phoenix.js retries later, as after a refused connection
            request.setResponseCode(429)
            return json_body(request, b'{"status":500,"error":%s}' % json.dumps(connection).encode("ascii"))
        return json_body(request, envelope(410, connection.token, []))
