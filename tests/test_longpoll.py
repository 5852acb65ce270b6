"""
The long-poll transport in memory: a ``LongPollResource`` over a hub on fakes, driven
with twisted.web's ``DummyRequest`` and a ``Clock``. The envelope phoenix.js reads,
polls that wait and time out, sessions that expire, and the bounds a WebSocket has.
"""

from __future__ import annotations

import base64
import io
import json
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.web.server import NOT_DONE_YET
from twisted.web.test.requesthelper import DummyRequest

from tangram_channel import frames
from tangram_channel.frames import FrameError
from tangram_channel.longpoll import MAX_BATCH, LongPollResource, LongPolls, envelope, split_batch
from tangram_channel.pollroute import SessionRoutes
from tangram_channel.protocol import OWN_BYTES_BEFORE_READ_PAUSE, RATE_GRACE, STALLED_BY, PhoenixFactory

from .fakes import World, rejected_frames

POLL = 10.0
EXPIRY = 20.0


class Service:
    """A long-poll resource over a fake world, and a client's view of it."""

    def __init__(
        self, allowed_origins: tuple[str, ...] = ("*",), max_per_ip: int = 0, max_sessions: int = 0, **factory: Any
    ) -> None:
        self.world = World()
        self.factory = PhoenixFactory(hub=self.world.hub, clock=self.world.clock, **factory)
        self.polls = LongPolls(
            poll_timeout=POLL, session_timeout=EXPIRY, max_per_ip=max_per_ip, max_sessions=max_sessions,
            metrics=self.factory.metrics,
            routes=SessionRoutes(b"secret"),
        )
        self.resource = LongPollResource(factory=self.factory, polls=self.polls, allowed_origins=allowed_origins)

    def request(
        self, method: bytes, token: str | None = None, body: bytes | None = None, host: str = "10.0.0.1",
        headers: dict[bytes, bytes] | None = None, **args: str,
    ) -> DummyRequest:
        request = DummyRequest([])
        request.method = method
        request.client = IPv4Address("TCP", host, 40000)
        request.args = {k.encode(): [v.encode()] for k, v in {"vsn": "2.0.0", **args}.items()}
        if token is not None:
            request.args[b"token"] = [token.encode()]
        for name, value in (headers or {}).items():
            request.requestHeaders.setRawHeaders(name, [value])
        if body is not None:
            request.content = io.BytesIO(body)
            request.requestHeaders.setRawHeaders(b"content-type", [b"application/x-ndjson"])
        result = self.resource.render(request)
        if result is not NOT_DONE_YET:
            request.write(result)
            request.finish()
        return request

    def open(self, host: str = "10.0.0.1", **args: str) -> str:
        answer = body(self.request(b"GET", host=host, **args))
        assert answer["status"] == 410 and answer["messages"] == []
        return answer["token"]

    def post(self, token: str, *messages: list[Any]) -> DummyRequest:
        return self.request(b"POST", token, b"\n".join(json.dumps(m).encode() for m in messages))

    def join(self, token: str, topic: str = "radar") -> None:
        self.post(token, ["1", "1", topic, "phx_join", {"token": self.world.token(topic)}])
        self.world.settle()


def body(request: DummyRequest) -> Any:
    """The JSON of a finished answer."""
    assert request.finished, "the request is still waiting"
    return json.loads(b"".join(request.written))


def test_envelope_is_what_phoenix_js_reads():
    assert json.loads(envelope(410)) == {"status": 410}
    frame = frames.encode(frames.reply("1", "2", "t", "ok", {"é": 1}), frames.V2)
    assert json.loads(envelope(200, "tok", [frame])) == {"status": 200, "token": "tok", "messages": [frame.decode()]}


def test_batches_split_into_text_and_base64_binary_frames():
    text = b'["1","2","t","e",{}]'
    assert split_batch(text + b"\r\n" + base64.b64encode(b"\x00\xff"), True) == [(text, False), (b"\x00\xff", True)]
    assert split_batch(b'{"topic": "t"}', True) == [(b'{"topic": "t"}', False)]
    assert split_batch(b"whole body", False) == [(b"whole body", False)]
    with pytest.raises(FrameError):
        split_batch(b"not base64!", True)
    with pytest.raises(FrameError):
        split_batch(b"\n".join([text] * (MAX_BATCH + 1)), True)


def test_join_reply_and_presence_state_come_in_one_poll_then_broadcasts():
    service = Service()
    token = service.open()
    poll = service.request(b"GET", token)
    assert not poll.finished
    service.join(token)
    service.world.clock.advance(0)
    messages = [json.loads(m) for m in body(poll)["messages"]]
    assert body(poll)["status"] == 200 and body(poll)["token"] == token
    assert [m[3] for m in messages] == ["phx_reply", "presence_state"]
    assert messages[0][4]["status"] == "ok"
    service.world.hub.deliver([("radar", "news", b'{"n": 1}')])
    later = service.request(b"GET", token)  # waiting frames are answered at once
    assert [json.loads(m) for m in body(later)["messages"]] == [[None, None, "radar", "news", {"n": 1}]]


def test_a_poll_with_nothing_to_send_is_answered_204_after_the_poll_timeout():
    service = Service()
    token = service.open()
    poll = service.request(b"GET", token)
    service.world.clock.advance(POLL - 0.1)
    assert not poll.finished
    service.world.clock.advance(0.1)
    assert body(poll) == {"status": 204, "token": token, "messages": []}


def test_a_newer_poll_takes_over_and_the_older_is_answered_204():
    service = Service()
    token = service.open()
    older = service.request(b"GET", token)
    newer = service.request(b"GET", token)
    assert body(older)["status"] == 204
    assert not newer.finished


def test_unknown_tokens_get_410_and_open_nothing():
    service = Service()
    assert body(service.request(b"GET", "forged")) == {"status": 410}
    assert body(service.request(b"POST", "forged", b"[]")) == {"status": 410}
    assert body(service.request(b"POST", body=b"[]")) == {"status": 410}
    assert service.polls.sessions == {}


def test_a_session_no_poll_came_for_expires_and_leaves_its_channels():
    service = Service()
    token = service.open()
    service.join(token)
    assert service.world.hub.members["radar"]
    service.world.clock.advance(EXPIRY - 1)
    assert body(service.request(b"GET", token))["status"] == 200  # polled: alive for EXPIRY more
    service.world.clock.advance(EXPIRY - 1)
    assert token in service.polls.sessions
    service.world.clock.advance(1)
    assert token not in service.polls.sessions
    assert not service.world.hub.members.get("radar")
    assert service.factory.metrics.longpoll_expired._value.get() == 1
    assert body(service.request(b"GET", token)) == {"status": 410}


def test_a_poll_waiting_through_a_stall_of_the_process_keeps_its_session():
    """
    As for a socket's idle timeout: after the process itself stalled past the expiry,
    the timer fires before the poll waiting in the socket is read; the session stays.
    """
    service = Service()
    token = service.open()
    service.join(token)
    service.world.clock.advance(EXPIRY + 5)  # the timer fires 5 s late
    assert token in service.polls.sessions
    assert body(service.request(b"GET", token))["status"] == 200  # the poll read after it
    service.world.clock.advance(EXPIRY - 1)
    assert token in service.polls.sessions
    assert service.factory.metrics.longpoll_expired._value.get() == 0


def test_a_session_no_poll_came_for_still_expires_after_a_stall_of_the_process():
    service = Service()
    token = service.open()
    service.join(token)
    service.world.clock.advance(EXPIRY + 5)
    assert token in service.polls.sessions
    service.world.clock.advance(STALLED_BY)
    assert token not in service.polls.sessions
    assert not service.world.hub.members.get("radar")
    assert service.factory.metrics.longpoll_expired._value.get() == 1


def test_a_waiting_poll_keeps_the_session_alive():
    service = Service()
    token = service.open()
    for _ in range(5):
        poll = service.request(b"GET", token)
        service.world.clock.pump([POLL / 2, POLL / 2])
        assert body(poll)["status"] == 204
    assert token in service.polls.sessions


def test_frames_past_max_send_buffer_end_the_session_and_its_poll_gets_410():
    service = Service(max_send_buffer=200)
    token = service.open()
    service.join(token)
    body(service.request(b"GET", token))
    for n in range(10):
        service.world.hub.deliver([("radar", "news", b'{"n": %d, "padding": "..........."}' % n)])
    assert token not in service.polls.sessions
    assert service.factory.metrics.slow_clients_closed._value.get() == 1
    assert body(service.request(b"GET", token)) == {"status": 410}


def test_frames_over_the_message_budget_get_errors_then_end_the_session():
    service = Service(message_rate=1, message_burst=2)
    token = service.open()
    heartbeat = ["1", "phoenix", "heartbeat", {}]
    answer = service.post(token, *([[None, str(n), *heartbeat[1:]] for n in range(5)]))
    assert body(answer) == {"status": 200}
    replies = [json.loads(m) for m in body(service.request(b"GET", token))["messages"]]
    assert [r[4]["status"] for r in replies] == ["ok", "ok", "error", "error", "error"]
    assert replies[-1][4]["response"] == {"reason": "rate limit exceeded"}
    flood = service.post(token, *([[None, "x", *heartbeat[1:]]] * (RATE_GRACE + 1)))
    assert body(flood) == {"status": 410}
    assert token not in service.polls.sessions
    assert service.factory.metrics.rate_clients_closed._value.get() == 1


def test_a_flood_of_bad_frames_also_ends_the_session():
    """Frames that do not decode are spent from the budget too: past it, garbage ends the session as well."""
    service = Service(message_rate=1, message_burst=2)
    token = service.open()
    flood = service.request(b"POST", token, b"\n".join([b'["not a frame"]'] * (2 + RATE_GRACE + 1)))
    assert body(flood) == {"status": 410}
    assert token not in service.polls.sessions


def test_a_body_over_max_receive_rate_is_handled_after_a_pause():
    service = Service(max_receive_rate=100)
    token = service.open()
    answer = service.post(token, [None, "1", "phoenix", "heartbeat", {"pad": "x" * 150}])
    assert not answer.finished  # as a socket is not read for a moment
    assert service.factory.metrics.receive_throttled._value.get() == 1
    service.world.clock.advance(1.0)
    assert body(answer) == {"status": 200}


def test_a_second_post_while_one_waits_is_refused():
    service = Service(max_receive_rate=10)
    token = service.open()
    first = service.post(token, [None, "1", "phoenix", "heartbeat", {"pad": "x" * 50}])
    assert not first.finished
    second = service.post(token, [None, "2", "phoenix", "heartbeat", {}])
    assert second.responseCode == 429 and body(second) == {"status": 429}


def test_a_post_whose_answers_are_not_polled_is_answered_only_once_a_poll_takes_them():
    """
    As a socket whose replies wait unread is read no further: past 64 KiB of a session's
    own answers unpolled, its POST waits (the next one gets 429) until a poll takes them.
    """
    service = Service()
    token = service.open()
    unmatched = [None, "r" * 60, "t" * 200, "e", {}]  # answered "unmatched topic", echoing both
    posts = 0
    while True:
        assert posts < 1000, "1,000 POSTs of answers nobody polled, and all answered"
        post = service.post(token, *[unmatched] * 100)
        posts += 1
        if not post.finished:
            break
        assert body(post) == {"status": 200}
    assert posts == OWN_BYTES_BEFORE_READ_PAUSE // (100 * len(envelope_frame(unmatched))) + 1
    assert service.factory.metrics.reads_paused_unread._value.get() == 1
    refused = service.post(token, unmatched)
    assert body(refused) == {"status": 429}
    polled = body(service.request(b"GET", token))["messages"]
    assert len(polled) == posts * 100
    assert body(post) == {"status": 200}
    assert body(service.post(token, unmatched)) == {"status": 200}


def envelope_frame(unmatched: list[Any]) -> bytes:
    """The reply an unmatched push gets, as a long poll carries it."""
    return frames.encode(frames.reply(None, unmatched[1], unmatched[2], "error", {"reason": "unmatched topic"}), frames.V2)


def test_bad_lines_are_answered_like_bad_frames_and_a_bad_batch_is_refused():
    service = Service()
    token = service.open()
    answer = service.request(b"POST", token, b'["1","7","radar","phx_join"]')  # four elements
    assert body(answer) == {"status": 200}
    assert rejected_frames(service.factory.metrics) == 1
    refused = service.request(b"POST", token, b"%%%")
    assert refused.responseCode == 400 and body(refused)["status"] == 400
    assert token in service.polls.sessions


def test_binary_broadcasts_are_not_sent_over_long_polls():
    service = Service()
    token = service.open()
    service.join(token)
    body(service.request(b"GET", token))
    service.world.hub.deliver([("radar", "blob", b"\x00\x01"), ("radar", "news", b"{}")])
    messages = [json.loads(m) for m in body(service.request(b"GET", token))["messages"]]
    assert [m[3] for m in messages] == ["news"]


def test_sessions_per_address_are_capped():
    service = Service(max_per_ip=2)
    first = service.open()
    service.open()
    refused = service.request(b"GET")
    assert refused.responseCode == 429 and body(refused)["status"] == 500  # phoenix.js retries later
    assert "max_connections_per_ip" in body(refused)["error"]
    service.open(host="10.0.0.2")
    service.polls.sessions[first].close(1000, "test")
    service.open()


def test_sessions_of_a_process_are_capped():
    """Sessions hold no connection between polls: max_longpoll_sessions bounds them, whatever their addresses."""
    service = Service(max_sessions=2)
    first = service.open(host="10.0.0.1")
    service.open(host="10.0.0.2")
    refused = service.request(b"GET", host="10.0.0.3")
    assert refused.responseCode == 429 and "max_longpoll_sessions" in body(refused)["error"]
    service.world.clock.advance(EXPIRY)  # neither polled: both expire, and room is made
    assert first not in service.polls.sessions
    service.open(host="10.0.0.3")


def test_the_socket_token_comes_from_userToken_or_the_auth_token_header():
    service = Service()
    for token_args in ({"userToken": service.world.token("radar")}, {}):
        headers = {} if token_args else {b"x-phoenix-authtoken": service.world.token("radar").encode()}
        token = body(service.request(b"GET", headers=headers, **token_args))["token"]
        service.post(token, ["1", "1", "radar", "phx_join", {}])  # no token in the join: the socket's
        service.world.settle()
        reply = json.loads(body(service.request(b"GET", token))["messages"][0])
        assert reply[4]["status"] == "ok"


def test_bad_vsn_and_refused_origins_are_clear_errors():
    service = Service(allowed_origins=("https://app.example",))
    bad_vsn = service.request(b"GET", vsn="3.0.0")
    assert bad_vsn.responseCode == 400
    refused = service.request(b"GET", headers={b"origin": b"https://evil.example"})
    assert refused.responseCode == 403 and body(refused)["status"] == 403
    assert service.polls.sessions == {}
    assert body(service.request(b"GET", headers={b"origin": b"https://app.example"}))["status"] == 410


def test_sessions_count_as_sockets_and_close_all_ends_them():
    service = Service()
    token = service.open()
    poll = service.request(b"GET", token)
    assert len(service.factory.sockets) == 1
    assert service.factory.metrics.longpoll_sessions.collect()[0].samples[0].value == 1
    service.factory.close_all(1012, "service restart")
    assert body(poll) == {"status": 410}
    assert service.factory.sockets == set() and service.polls.sessions == {}


def test_session_tokens_name_their_process_signed():
    """With a route a token names its process's route address; a forged or foreign one names none."""
    single = SessionRoutes(b"secret")
    assert single.token("abc") == "abc" and single.elsewhere("abc") is None
    owner, other = SessionRoutes(b"secret"), SessionRoutes(b"secret")
    owner.address, other.address = ("10.0.0.5", 5000), ("10.0.0.6", 5000)
    token = owner.token("abc")
    assert other.elsewhere(token) == ("10.0.0.5", 5000)
    assert owner.elsewhere(token) is None  # its own: looked up here
    name, session, mac = token.split(".")
    forged = base64.urlsafe_b64encode(b"127.0.0.1:6379").decode().rstrip("=")
    assert other.elsewhere(f"{forged}.{session}.{mac}") is None  # the address is signed
    stranger = SessionRoutes(b"another secret")
    stranger.address = ("10.0.0.7", 5000)
    assert stranger.elsewhere(token) is None
    assert other.elsewhere("x.y.z") is None and other.elsewhere("") is None and other.elsewhere("...") is None


def test_vsn_1_sessions_read_and_write_object_frames():
    """
    ``vsn=1.0.0``: object frames both ways (phoenix.js's LongPoll always uses its V2
    serializer, whatever ``vsn`` and ``encode`` say; other clients may speak V1).
    """
    service = Service()
    token = body(service.request(b"GET", vsn="1.0.0"))["token"]
    join = {"topic": "radar", "event": "phx_join", "payload": {"token": service.world.token("radar")},
            "ref": "1", "join_ref": "1"}
    assert body(service.request(b"POST", token, json.dumps(join).encode(), vsn="1.0.0")) == {"status": 200}
    service.world.settle()
    messages = [json.loads(m) for m in body(service.request(b"GET", token))["messages"]]
    assert [(m["event"], m["ref"]) for m in messages] == [("phx_reply", "1"), ("presence_state", None)]
