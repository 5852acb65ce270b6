"""
Fakes for the unit tests of pure logic: a Redis that answers in memory (as the hub's
``Bus`` and presence's ``Store``), a socket ``Outbox`` that records frames, and a hub
wired to them with a ``Clock``. No sockets, no redis-server.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import fakeredis
import jwt
import redis
import txredisapi
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from tangram_channel import frames
from tangram_channel.hub import Hub
from tangram_channel.session import Session
from tangram_channel.frames import Burst, Message
from tangram_channel.inflight import InFlight
from tangram_channel.metrics import Metrics
from tangram_channel.naming import presence_key
from tangram_channel.presence import Presence
from tangram_channel.errors import RedisUnavailable
from tangram_channel.tokens import TokenAuthority

SECRET = "unit-test-secret-" * 4  # long enough for HS512 too, so PyJWT stays quiet
WINDOW = 0.05
START = 1_700_000_000.0  # 2023-11-14T22:13:20Z: "now" for every fake world


# the error prefixes redis-py turns into exception classes, put back as Redis sends them
_STRIPPED_PREFIXES = {
    redis.exceptions.NoScriptError: "NOSCRIPT ",
    redis.exceptions.ReadOnlyError: "READONLY ",
    redis.exceptions.BusyLoadingError: "LOADING ",
}


class FakeRedis:
    """
    Redis as the hub and presence use it, in memory: commands (the presence Lua
    scripts included) run on fakeredis, so this fake follows the scripts as they change.

    ``mode`` decides what commands and publishes answer: ``"ok"`` at once, ``"hold"``
    only at ``release()`` (the command still runs when called, as Redis would take its
    snapshot then), ``"fail"`` fails with RedisUnavailable without running it (Redis is
    down: not ``connected``).
    """

    def __init__(self) -> None:
        self.server = fakeredis.FakeRedis(server=fakeredis.FakeServer())  # a Redis of its own
        self.mode = "ok"
        self.published: list[tuple[bytes, bytes]] = []
        self.commands: list[tuple[Any, ...]] = []
        self.watches: dict[str, int] = {}
        self.unwatches: dict[str, int] = {}
        self._held: list[tuple[defer.Deferred[Any], Any]] = []

    @property
    def connected(self) -> bool:
        return self.mode != "fail"

    # Bus

    def watch(self, topic: str) -> defer.Deferred[None]:
        self.watches[topic] = self.watches.get(topic, 0) + 1
        return defer.succeed(None)

    def unwatch(self, topic: str) -> None:
        self.unwatches[topic] = self.unwatches.get(topic, 0) + 1

    def publish(
        self, channel: bytes, payload: bytes, answered: Callable[[], None] | None = None
    ) -> defer.Deferred[Any]:
        if self.mode != "fail":
            self.published.append((channel, payload))
        answer = self._answer(1)
        if answered is None:
            return answer
        result: defer.Deferred[Any] = defer.Deferred()
        answer.addBoth(_answered, result, answered)
        return result

    # Store

    def execute(self, *command: Any) -> defer.Deferred[Any]:
        self.commands.append(command)
        if self.mode == "fail":
            return self._answer(None)
        try:
            reply = self.server.execute_command(*command)
        except redis.exceptions.ResponseError as e:  # an error reply, as txredisapi hands it over
            prefix = next((p for kind, p in _STRIPPED_PREFIXES.items() if isinstance(e, kind)), "")
            return defer.fail(txredisapi.ResponseError(f"{prefix}{e}"))
        return self._answer(reply)

    def _answer(self, value: Any) -> defer.Deferred[Any]:
        d: defer.Deferred[Any] = defer.Deferred()
        if self.mode == "hold":
            self._held.append((d, value))
        elif self.mode == "fail":
            d.errback(RedisUnavailable("redis is down (fake)"))
        else:
            d.callback(value)
        return d

    def release(self) -> None:
        """
        Answer every held command and publish, in order, and stop holding. What the
        answers make the service send meanwhile is answered after them, as Redis would.
        """
        while self._held:
            d, value = self._held.pop(0)
            d.callback(value)
        self.mode = "ok"

    def fail_held(self) -> None:
        """Fail every held command and publish with RedisUnavailable."""
        self.mode = "ok"
        held, self._held = self._held, []
        for d, _ in held:
            d.errback(RedisUnavailable("redis is down (fake)"))

    # what the tests look at

    def published_to(self, channel: str) -> list[Any]:
        """Payloads published to ``channel``, decoded from JSON."""
        return [frames.loads(payload) for name, payload in self.published if name == channel.encode()]

    def presence(self, topic: str) -> dict[str, bytes]:
        """The topic's presence hash in Redis: phx_ref -> stored entry."""
        return {ref.decode(): value for ref, value in self.server.hgetall(presence_key(topic)).items()}


def rejected_frames(metrics: Metrics) -> float:
    """How many client frames ``metrics`` counted as rejected, whatever the reason."""
    return sum(
        sample.value
        for family in metrics.frames_rejected.collect()
        for sample in family.samples
        if sample.name.endswith("_total")
    )


def _answered(outcome: Any, result: defer.Deferred[Any], answered: Callable[[], None]) -> None:
    """As the bridge does: the caller hears first, then ``answered`` runs."""
    if isinstance(outcome, Failure):
        result.errback(outcome)
    else:
        result.callback(outcome)
    answered()


class FakeOutbox:
    """One socket's outgoing frames, decoded: JSON values for text, bytes for binary."""

    def __init__(self, vsn: str = frames.V2) -> None:
        self.vsn = self.framing = vsn
        self.frames: list[Any] = []
        self.bursts: list[Burst] = []
        self.held: list[Burst] = []
        self.reading = True

    def send(self, message: Message) -> None:
        self.frames.append(frames.loads(frames.encode(message, self.vsn)))

    def send_frame(self, frame: bytes, is_binary: bool) -> None:
        self.frames.append(frame if is_binary else frames.loads(frame))

    def send_burst(self, burst: Burst) -> None:
        self.bursts.append(burst)
        for broadcast in burst.broadcasts:
            self.send_frame(broadcast.frame(self.vsn), not broadcast.is_text)

    @property
    def direct(self) -> FakeOutbox:
        return self

    def lone_text_frame(self, head: bytes, payload: bytes, tail: bytes) -> bytes | None:
        """The Phoenix frame alone: this socket's "WebSocket" is ``frames``."""
        return head + payload + tail

    def framed(self, burst: Burst) -> bytes | None:
        """A text burst's Phoenix frames one after the other, as the hub puts a tick before a lone write."""
        return b"".join(broadcast.frame(self.vsn) for broadcast in burst.broadcasts)

    def write_now(self, frame: bytes) -> None:
        """What the hub framed with ``lone_text_frame``, maybe behind a tick's frame: each JSON value in turn."""
        text, decoder, at = frame.decode(), json.JSONDecoder(), 0
        while at < len(text):
            value, at = decoder.raw_decode(text, at)
            self.frames.append(value)

    def hold(self, burst: Burst) -> bool:
        self.held.append(burst)
        return True

    def release(self, bursts: list[Burst]) -> None:
        for burst in bursts:
            self.held.remove(burst)

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def take(self) -> list[Any]:
        """The frames sent since the last take."""
        taken, self.frames = self.frames, []
        return taken


class World:
    """A hub over fakes: one clock, one fake Redis, real tokens and real presence."""

    def __init__(
        self,
        max_channels_per_socket: int = 100,
        datetime_interval: float = 0,
        write_delay: float = 0,
        inflight: InFlight | None = None,
    ) -> None:
        self.clock = Clock()
        self.clock.advance(START)
        self.redis = FakeRedis()
        self.tokens = TokenAuthority(SECRET, 3600, 60, 8, self.clock.seconds)
        self.presence = Presence(store=self.redis, clock=self.clock, node="node-a", window=WINDOW, node_timeout=15.0)
        self.hub = Hub(
            tokens=self.tokens,
            bus=self.redis,
            presence=self.presence,
            clock=self.clock,
            max_channels_per_socket=max_channels_per_socket,
            datetime_interval=datetime_interval,
            write_delay=write_delay,
            inflight=inflight,
        )
        self.presence.report_to(self.hub)
        self._echoed = 0

    def token(self, topic: str, client_id: str = "alice") -> str:
        return self.tokens.mint(topic, client_id)[1]

    def connect(self, socket_token: str | None = None) -> tuple[Session, FakeOutbox]:
        outbox = FakeOutbox()
        return Session(self.hub, outbox, socket_token), outbox

    def settle(self) -> None:
        """Let presence flush its window."""
        self.clock.advance(WINDOW)

    def echo(self) -> None:
        """Deliver what was published to ``to:<topic>:<event>`` back to the hub, as Redis would."""
        published, self._echoed = self.redis.published[self._echoed :], len(self.redis.published)
        for channel, payload in published:
            if channel.startswith(b"to:"):
                topic, _, event = channel.decode()[3:].rpartition(":")
                self.hub.deliver([(topic, event, payload)])

    def join(self, session: Session, topic: str, join_ref: str = "1", client_id: str = "alice", **payload: Any) -> None:
        """Send a phx_join with a valid token (unless the payload says otherwise) and settle."""
        payload.setdefault("token", self.token(topic, client_id))
        session.received(Message(join_ref, join_ref, topic, "phx_join", payload))
        self.settle()


def claims_of(token: str) -> dict[str, Any]:
    """The claims of a token signed with SECRET, whatever its expiry."""
    return jwt.decode(token, SECRET, algorithms=["HS256"], options={"verify_exp": False})


def offered(token: str) -> str:
    """What phoenix.js 1.8 puts in Sec-WebSocket-Protocol for its ``authToken``."""
    return "base64url.bearer.phx." + base64.urlsafe_b64encode(token.encode()).decode().rstrip("=")


def reply(join_ref: str | None, ref: str | None, topic: str, status: str, response: Any) -> list[Any]:
    """A phx_reply frame as the client decodes it."""
    return [join_ref, ref, topic, "phx_reply", {"status": status, "response": response}]
