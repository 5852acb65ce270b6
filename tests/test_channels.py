"""
What each Phoenix event does, with no I/O: a real Hub, Session, TokenAuthority and
Presence over a fake Redis and a fake socket, driven by a Clock.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import pytest

from tangram_channel import hub
from tangram_channel.session import Session
from tangram_channel.frames import FrameError, Message

from .fakes import START, FakeOutbox, World, reply


@pytest.fixture
def world() -> World:
    return World()


def agent(session: Session, topic: str, join_ref: str) -> str:
    return f"{session.conn_id}:{topic}:{join_ref}"


def push(session: Session, topic: str, event: str, payload: Any, join_ref: str | None = "1", ref: str = "2") -> None:
    session.received(Message(join_ref, ref, topic, event, payload))


def joined(world: World, topic: str = "room", join_ref: str = "1", client_id: str = "alice") -> tuple[Session, FakeOutbox]:
    """A session that joined ``topic``, its join frames already taken."""
    session, outbox = world.connect()
    world.join(session, topic, join_ref, client_id)
    assert outbox.take()[0] == reply(join_ref, join_ref, topic, "ok", {"id": agent(session, topic, join_ref)})
    return session, outbox


def assert_usable(world: World, session: Session, outbox: FakeOutbox) -> None:
    """After a refusal the socket still answers heartbeats and can join."""
    outbox.take()
    push(session, "phoenix", "heartbeat", {}, join_ref=None, ref="hb")
    world.join(session, "usable", "u1")
    sent = outbox.take()
    assert sent[0] == reply(None, "hb", "phoenix", "ok", {})
    assert sent[1] == reply("u1", "u1", "usable", "ok", {"id": agent(session, "usable", "u1")})


# heartbeats


def test_heartbeat_is_answered_and_published_with_nothing_joined(world: World) -> None:
    session, outbox = world.connect()
    push(session, "phoenix", "heartbeat", {"n": 1}, join_ref=None, ref="7")
    assert outbox.take() == [reply(None, "7", "phoenix", "ok", {})]
    assert world.redis.published_to("from:phoenix:heartbeat") == [{"n": 1}]


# joins


def test_join_replies_with_the_agent_id_then_presence_state_with_the_join_ref(world: World) -> None:
    session, outbox = world.connect()
    world.join(session, "room", "4", "alice")
    me = agent(session, "room", "4")
    assert outbox.take() == [
        reply("4", "4", "room", "ok", {"id": me}),
        ["4", None, "room", "presence_state", {"alice": {"metas": [{"phx_ref": me, "online_at": int(START * 1000)}]}}],
    ]


def test_join_subscribes_before_replying(world: World) -> None:
    session, outbox = world.connect()
    session.received(Message("1", "1", "room", "phx_join", {"token": world.token("room")}))
    assert world.redis.watches == {"room": 1}
    assert outbox.frames == []


def test_join_takes_the_token_from_the_payload_first(world: World) -> None:
    session, outbox = world.connect(socket_token=world.token("elsewhere"))
    world.join(session, "room")
    assert outbox.take()[0] == reply("1", "1", "room", "ok", {"id": agent(session, "room", "1")})


@pytest.mark.parametrize("payload", [{}, {"token": None}, {"token": 5}, "not an object"])
def test_join_falls_back_to_the_socket_token(world: World, payload: Any) -> None:
    session, outbox = world.connect(socket_token=world.token("room", "bob"))
    session.received(Message("1", "1", "room", "phx_join", payload))
    world.settle()
    sent = outbox.take()
    assert sent[0] == reply("1", "1", "room", "ok", {"id": agent(session, "room", "1")})
    assert list(sent[1][4]) == ["bob"]


def test_join_publishes_the_payload_without_the_token(world: World) -> None:
    session, _ = world.connect()
    token = world.token("room")
    world.join(session, "room", token=token, z=1, a={"request_id": "r1"})
    assert world.redis.published_to("from:room:phx_join") == [{"z": 1, "a": {"request_id": "r1"}}]
    assert all(token.encode() not in payload for _, payload in world.redis.published)


REFUSALS = [
    pytest.param("1", lambda world: {"token": "not-a-jwt"}, "unauthorized", id="malformed-token"),
    pytest.param("1", lambda world: {"token": world.token("other")}, "unauthorized", id="token-for-another-topic"),
    pytest.param("1", lambda world: {}, "unauthorized", id="no-token"),
    pytest.param(
        "1",
        lambda world: {"token": world.tokens.mint("room", "alice", expires_in=-61)[1]},
        "token expired",
        id="expired-past-leeway",
    ),
    pytest.param(None, lambda world: {"token": world.token("room")}, "join_ref required", id="no-join-ref"),
]


@pytest.mark.parametrize("join_ref, make_payload, reason", REFUSALS)
def test_a_refused_join_is_answered_and_leaves_the_socket_usable(
    world: World, join_ref: str | None, make_payload: Callable[[World], dict[str, Any]], reason: str
) -> None:
    payload = make_payload(world)
    session, outbox = world.connect()
    session.received(Message(join_ref, "9", "room", "phx_join", payload))
    world.settle()
    assert outbox.take() == [reply(join_ref, "9", "room", "error", {"reason": reason})]
    assert "room" not in world.hub.members
    assert world.redis.published_to("from:room:phx_join") == []
    assert world.redis.presence("room") == {}
    assert_usable(world, session, outbox)


def test_joins_past_the_limit_are_refused() -> None:
    world = World(max_channels_per_socket=2)
    session, outbox = world.connect()
    world.join(session, "a", "1")
    world.join(session, "b", "2")
    outbox.take()
    world.join(session, "c", "3")
    assert outbox.take() == [reply("3", "3", "c", "error", {"reason": "too many channels joined"})]
    assert world.redis.watches.get("c") is None
    world.join(session, "a", "4")  # rejoining a topic already joined is not one more
    assert outbox.take()[1] == reply("4", "4", "a", "ok", {"id": agent(session, "a", "4")})


def test_a_join_redis_cannot_record_is_refused_and_the_socket_stays_usable(world: World) -> None:
    session, outbox = world.connect()
    world.redis.mode = "fail"
    world.join(session, "room", "1")
    world.redis.mode = "ok"
    assert outbox.take() == [reply("1", "1", "room", "error", {"reason": "redis unavailable"})]
    assert session.joins == {}
    assert "room" not in world.hub.members
    assert_usable(world, session, outbox)


def test_a_leave_while_the_join_is_in_flight_ends_it_without_a_join_reply(world: World) -> None:
    session, outbox = world.connect()
    session.received(Message("1", "1", "room", "phx_join", {"token": world.token("room")}))
    push(session, "room", "phx_leave", {}, join_ref="1", ref="2")
    world.settle()
    assert outbox.take() == [
        reply("1", "2", "room", "ok", {"id": agent(session, "room", "1")}),
        ["1", "1", "room", "phx_close", {}],
    ]
    assert world.redis.presence("room") == {}
    assert world.redis.published_to("to:room:presence_diff") == []


def test_a_second_join_closes_the_first_then_joins_again(world: World) -> None:
    session, outbox = joined(world, "room", "1")
    outbox.take()
    session.received(Message("3", "3", "room", "phx_join", {"token": world.token("room")}))
    assert outbox.take() == [["1", "1", "room", "phx_close", {}]]
    world.settle()
    old, new = agent(session, "room", "1"), agent(session, "room", "3")
    sent = outbox.take()
    assert sent[0] == reply("3", "3", "room", "ok", {"id": new})
    assert sent[1][:4] == ["3", None, "room", "presence_state"]
    assert [meta["phx_ref"] for meta in sent[1][4]["alice"]["metas"]] == [new]
    diff = world.redis.published_to("to:room:presence_diff")[-1]
    assert [m["phx_ref"] for m in diff["leaves"]["alice"]["metas"]] == [old]
    assert [m["phx_ref"] for m in diff["joins"]["alice"]["metas"]] == [new]


def test_a_join_is_announced_to_every_member_after_the_joiners_state(world: World) -> None:
    """Once Redis echoes the diff: the joiner sees reply, state, then its own join; others the join."""
    first, first_out = joined(world, "room", "1", "alice")
    world.echo()
    first_out.take()
    second, second_out = world.connect()
    world.join(second, "room", "7", "bob")
    world.echo()
    bob = agent(second, "room", "7")
    sent = second_out.take()
    assert [frame[3] for frame in sent] == ["phx_reply", "presence_state", "presence_diff"]
    assert set(sent[1][4]) == {"alice", "bob"}
    bob_meta = sent[1][4]["bob"]["metas"][0]
    assert bob_meta["phx_ref"] == bob
    diff = [None, None, "room", "presence_diff", {"joins": {"bob": {"metas": [bob_meta]}}, "leaves": {}}]
    assert sent[2] == diff
    assert first_out.take() == [diff]


def test_diffs_from_other_processes_reach_members_and_later_joiners_state(world: World) -> None:
    _, outbox = joined(world, "room", "1", "alice")
    other = {"joins": {"carol": {"metas": [{"phx_ref": "elsewhere:room:1", "online_at": 5}]}}, "leaves": {}}
    world.hub.deliver([("room", "presence_diff", json.dumps(other).encode())])
    assert outbox.take()[-1] == [None, None, "room", "presence_diff", other]
    late, late_out = world.connect()
    world.join(late, "room", "2", "dave")
    assert set(late_out.take()[1][4]) == {"alice", "carol", "dave"}


# leaves


def test_leave_replies_with_the_agent_id_then_closes_and_withdraws(world: World) -> None:
    session, outbox = joined(world, "room", "1")
    outbox.take()
    push(session, "room", "phx_leave", {}, join_ref="1", ref="8")
    assert outbox.take() == [
        reply("1", "8", "room", "ok", {"id": agent(session, "room", "1")}),
        ["1", "1", "room", "phx_close", {}],
    ]
    assert world.redis.unwatches == {"room": 1}
    assert world.redis.published_to("from:room:phx_leave") == [{}]
    world.settle()
    assert world.redis.presence("room") == {}
    assert "alice" in world.redis.published_to("to:room:presence_diff")[-1]["leaves"]


def test_leaving_a_topic_not_joined_is_ok_and_nothing_else(world: World) -> None:
    session, outbox = world.connect()
    push(session, "room", "phx_leave", {}, join_ref="1", ref="8")
    world.settle()
    assert outbox.take() == [reply("1", "8", "room", "ok", {})]
    assert world.redis.published == []
    assert world.redis.unwatches == {}


# pushes


def test_a_push_is_published_and_answered_once_redis_acknowledges(world: World) -> None:
    session, outbox = joined(world)
    outbox.take()
    world.redis.mode = "hold"
    push(session, "room", "new_msg", {"z": 1, "a": [2**70, "é"]}, ref="5")
    assert world.redis.published[-1] == (b"from:room:new_msg", '{"z":1,"a":[1180591620717411303424,"é"]}'.encode())
    assert outbox.take() == []
    world.redis.release()
    assert outbox.take() == [reply("1", "5", "room", "ok", {})]


def test_a_push_redis_cannot_take_is_answered_with_an_error(world: World) -> None:
    session, outbox = joined(world)
    outbox.take()
    world.redis.mode = "fail"
    push(session, "room", "new_msg", {}, ref="5")
    assert outbox.take() == [reply("1", "5", "room", "error", {"reason": "redis unavailable"})]


def test_a_push_that_fails_later_is_answered_with_an_error(world: World) -> None:
    session, outbox = joined(world)
    outbox.take()
    world.redis.mode = "hold"
    push(session, "room", "new_msg", {}, ref="5")
    world.redis.fail_held()
    assert outbox.take() == [reply("1", "5", "room", "error", {"reason": "redis unavailable"})]


def test_a_binary_push_publishes_its_raw_bytes(world: World) -> None:
    session, _ = joined(world)
    push(session, "room", "upload", b"\x00\xff raw")
    assert world.redis.published[-1] == (b"from:room:upload", b"\x00\xff raw")


def test_a_push_on_a_topic_not_joined_is_unmatched_and_not_published(world: World) -> None:
    session, outbox = joined(world, "room")
    outbox.take()
    published = list(world.redis.published)
    push(session, "elsewhere", "new_msg", {"x": 1}, join_ref="1", ref="6")
    assert outbox.take() == [reply(None, "6", "elsewhere", "error", {"reason": "unmatched topic"})]
    assert world.redis.published == published


def test_a_frame_error_with_a_ref_is_answered(world: World) -> None:
    session, outbox = world.connect()
    session.frame_error(FrameError("event must be a non-empty string", "1", "2", "room"))
    session.frame_error(FrameError("invalid JSON"))
    assert outbox.take() == [reply("1", "2", "room", "error", {"reason": "event must be a non-empty string"})]


def test_a_refused_header_is_answered_with_null_for_each_field_it_could_not_echo(world: World) -> None:
    """A frame refused field by field is answered even when its ref or topic was the bad field."""
    session, outbox = world.connect()
    session.frame_error(FrameError("ref is longer than 64 bytes", "1", None, "room", header_read=True))
    session.frame_error(FrameError("topic is not valid Unicode", None, "7", None, header_read=True))
    assert outbox.take() == [
        reply("1", None, "room", "error", {"reason": "ref is longer than 64 bytes"}),
        reply(None, "7", None, "error", {"reason": "topic is not valid Unicode"}),
    ]


def test_a_pushed_event_with_a_colon_is_refused_and_reaches_no_namespace(world: World) -> None:
    """``from:a:b:c`` would be read as topic ``a:b``, event ``c``: such an event is refused."""
    session, outbox = joined(world, "a")
    push(session, "a", "b:c", {"x": 1}, ref="5")
    assert outbox.take() == [reply("1", "5", "a", "error", {"reason": "event must not contain ':'"})]
    assert not [channel for channel, _ in world.redis.published if channel.startswith(b"from:a:b")]
    push(session, "a", "b", {"x": 1}, ref="6")
    assert outbox.take() == [reply("1", "6", "a", "ok", {})]


def logged(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """The events the hub and its sessions log from now on."""
    events: list[dict[str, Any]] = []
    monkeypatch.setattr(hub.log, "observer", events.append)
    return events


def test_an_unexpected_error_is_answered_internal_error_logged_once_a_minute_and_the_socket_lives(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    session, outbox = joined(world, "room")
    events = logged(monkeypatch)

    def broken_publish(channel: bytes, payload: bytes, answered: Any = None) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(world.redis, "publish", broken_publish)
    for n in range(1000):
        push(session, "room", "talk", {}, ref=str(n))
    assert outbox.take() == [reply("1", str(n), "room", "error", {"reason": "internal error"}) for n in range(1000)]
    assert len(events) == 1 and events[0]["log_failure"].check(RuntimeError)
    world.clock.advance(60)
    push(session, "room", "talk", {}, ref="late")
    assert len(events) == 2 and events[1]["dropped"] == 999
    monkeypatch.undo()
    assert_usable(world, session, outbox)


def test_failed_joins_are_logged_once_a_minute(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    session, outbox = world.connect()
    events = logged(monkeypatch)

    def broken_track(topic: str, key: str, meta: dict[str, Any]) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(world.presence, "track", broken_track)
    for n in range(100):
        world.join(session, "room", str(n))
    assert [frame[4]["response"] for frame in outbox.take()] == [{"reason": "internal error"}] * 100
    assert len(events) == 1
    monkeypatch.undo()
    assert_usable(world, session, outbox)


def test_redis_messages_that_cannot_be_sent_are_logged_once_a_minute(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    topic = "t" * 256  # too long for a binary frame's one-byte length
    session, outbox = joined(world, topic)
    events = logged(monkeypatch)
    for _ in range(100):
        world.hub.deliver([(topic, "raw", b"not json")])
    world.hub.deliver([(topic, "json", b"{}")])
    assert [frame[3] for frame in outbox.take()] == ["json"]
    assert len(events) == 1


# broadcasts


def test_broadcasts_before_the_join_reply_wait_until_after_presence_state(world: World) -> None:
    session, outbox = world.connect()
    session.received(Message("1", "1", "room", "phx_join", {"token": world.token("room")}))
    world.hub.deliver([("room", "first", b'{"n":1}')])
    world.hub.deliver([("room", "second", b"raw")])
    assert outbox.frames == []
    world.settle()
    sent = outbox.take()
    assert [frame[3] if isinstance(frame, list) else frame for frame in sent] == [
        "phx_reply",
        "presence_state",
        "first",
        bytes((2, 4, 6)) + b"roomsecondraw",
    ]


def test_deliver_sends_the_same_broadcast_to_every_member_of_the_topic(world: World) -> None:
    members = [joined(world, "room", "1", name) for name in ("alice", "bob", "carol")]
    _, outsider = joined(world, "lobby")
    assert world.hub.deliver([("room", "message", b'{"hello":"world"}'), ("nobody", "message", b"{}")]) == 3
    sent = [outbox.bursts[-1] for _, outbox in members]
    assert all(burst is sent[0] for burst in sent)
    assert [outbox.take() for _, outbox in members] == [[[None, None, "room", "message", {"hello": "world"}]]] * 3
    assert outsider.take() == []


def test_a_closed_session_gets_nothing_more(world: World) -> None:
    session, outbox = joined(world)
    session.disconnected()
    world.hub.deliver([("room", "message", b"{}")])
    push(session, "phoenix", "heartbeat", {}, join_ref=None)
    assert outbox.take() == []


def test_disconnect_untracks_every_join(world: World) -> None:
    session, outbox = joined(world, "room")
    world.join(session, "lobby", "2")
    outbox.take()
    session.disconnected()
    assert outbox.take() == []  # no phx_close to a socket that is gone
    assert world.hub.members == {}
    assert world.redis.unwatches == {"room": 1, "lobby": 1}
    world.settle()
    assert world.redis.presence("room") == {} and world.redis.presence("lobby") == {}
    for topic in ("room", "lobby"):
        assert "alice" in world.redis.published_to(f"to:{topic}:presence_diff")[-1]["leaves"]


# the system channel's clock

ISO_MS_OFFSET = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d$")


def test_datetime_ticks_reach_system_members() -> None:
    world = World(datetime_interval=1)
    _, outbox = joined(world, "system")
    outbox.take()
    world.hub.start()
    world.clock.pump([1, 1, 1])
    ticks = outbox.take()
    assert len(ticks) == 3
    counters = []
    for tick in ticks:
        join_ref, ref, topic, event, payload = tick
        assert (join_ref, ref, topic, event) == (None, None, "system", "datetime")
        assert payload["status"] == "ok"
        assert set(payload["response"]) == {"datetime", "counter"}
        assert ISO_MS_OFFSET.match(payload["response"]["datetime"])
        counters.append(payload["response"]["counter"])
    assert counters == [counters[0], counters[0] + 1, counters[0] + 2]
    when = datetime.fromisoformat(ticks[-1][4]["response"]["datetime"])
    assert when == datetime.fromtimestamp(world.clock.seconds(), timezone.utc)
    world.hub.stop()


def system_members(world: World, count: int) -> list[tuple[Session, FakeOutbox]]:
    members = [joined(world, "system", "1", f"c{n}") for n in range(count)]
    for _, outbox in members:
        outbox.take()
    return members


def one_turn(world: World) -> None:
    """
    What a reactor turn runs: the calls due now, but not those they schedule, which wait
    for the next turn (``Clock.advance`` would run those too).
    """
    for call in [call for call in world.clock.getDelayedCalls() if call.getTime() <= world.clock.seconds()]:
        world.clock.calls.remove(call)
        call.called = 1
        call.func(*call.args, **call.kw)


def ticks_of(outbox: FakeOutbox) -> list[int]:
    return [frame[4]["response"]["counter"] for frame in outbox.take() if frame[3] == "datetime"]


def test_a_tick_to_a_big_system_channel_goes_out_a_slice_a_reactor_turn(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hub, "TICK_SLICE", 2)
    world = World()
    members = system_members(world, 5)
    world.hub._tick()
    assert not any(ticks_of(outbox) for _, outbox in members)  # it rides first (for no time: ticks are off)
    one_turn(world)
    ticked = [bool(ticks_of(outbox)) for _, outbox in members]
    assert ticked.count(True) == 2
    waiting = [member for member, done in zip(members, ticked) if not done]
    world.hub.deliver([("system", "news", b"{}")])  # Redis is read between slices, and written at once
    assert all([frame[3] for frame in outbox.take()] == ["news"] for _, outbox in members)
    one_turn(world)
    ticked = [bool(ticks_of(outbox)) for _, outbox in waiting]
    assert ticked.count(True) == 2
    leaver, outbox = waiting[ticked.index(False)]
    push(leaver, "system", "phx_leave", {}, ref="9")  # leaves before its slice
    one_turn(world)
    assert [frame[3] for frame in outbox.take()] == ["phx_reply", "phx_close"]
    assert not ticking(world)


def ticking(world: World) -> bool:
    return any(call.func in (world.hub._tick_slices, world.hub._ride_over) for call in world.clock.getDelayedCalls())


def test_a_tick_to_a_big_system_channel_rides_on_each_sockets_next_lone_write(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tangram's browsers: each on system and its own streaming channel, whose next message carries the tick."""
    monkeypatch.setattr(hub, "TICK_SLICE", 2)
    world = World(datetime_interval=2.0)  # rides a quarter of that: TICK_RIDE
    members = system_members(world, 4)
    ridden, _ = members[0]
    push(ridden, "streaming-r", "phx_join", {"token": world.token("streaming-r", "c0")}, join_ref="3", ref="3")
    left, left_outbox = members[1]
    push(left, "system", "phx_leave", {}, ref="9")
    world.settle()
    for _, outbox in members:
        outbox.take()
    world.hub._tick()
    world.clock.advance(hub.TICK_RIDE - 0.01)
    frames_before, bytes_before = sent_frames(world), sent_bytes(world)
    world.hub.deliver([("streaming-r", "state", b'{"n":1}')])
    ridden_outbox = members[0][1]
    [tick, state] = ridden_outbox.take()
    assert (tick[3], state[3]) == ("datetime", "state")  # one write: the tick first
    assert sent_frames(world) == frames_before + 2  # each frame counted once, by its own size
    assert sent_bytes(world) == bytes_before + len(json.dumps(tick, separators=(",", ":"))) + len(
        b'[null,null,"streaming-r","state",{"n":1}]'
    )
    assert [ticks_of(outbox) for _, outbox in members[1:]] == [[], [], []]
    world.clock.advance(0.01)  # the ride is over: the others get it alone, but the one that left
    assert [bool(ticks_of(outbox)) for _, outbox in members] == [False, False, True, True]
    world.hub.deliver([("streaming-r", "state", b'{"n":2}')])
    assert [frame[3] for frame in ridden_outbox.take()] == ["state"]  # once
    assert not ticking(world)


def test_a_tick_while_the_last_is_still_going_out_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hub, "TICK_SLICE", 2)
    world = World()
    members = system_members(world, 3)
    world.hub._tick()
    world.hub._tick()  # riding: skipped
    one_turn(world)  # the first slice
    world.hub._tick()  # one member has not had the first: skipped
    one_turn(world)
    world.hub._tick()
    for _ in range(2):
        one_turn(world)
    counters = sorted(ticks_of(outbox) for _, outbox in members)
    first = counters[0][0]
    assert counters == [[first, first + 3]] * 3


def test_stopping_the_hub_drops_the_rest_of_a_tick(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hub, "TICK_SLICE", 2)
    world = World()
    system_members(world, 3)
    world.hub._tick()
    assert ticking(world)
    world.hub.stop()
    assert not ticking(world)


def test_datetime_ticks_are_off_with_zero() -> None:
    world = World(datetime_interval=0)
    _, outbox = joined(world, "system")
    outbox.take()
    world.hub.start()
    world.clock.pump([1] * 5)
    assert outbox.take() == []


def test_an_unsendable_broadcast_held_during_the_join_does_not_break_the_join(world: World) -> None:
    """A binary broadcast cannot name a topic over 255 bytes; it is dropped, the join completes."""
    topic = "t" * 256  # the longest a join admits by default, one more than binary allows
    session, outbox = world.connect()
    session.received(Message("1", "1", topic, "phx_join", {"token": world.token(topic)}))
    world.hub.deliver([(topic, "raw", b"not json")])
    world.hub.deliver([(topic, "json", b"{}")])
    world.settle()
    assert [frame[3] for frame in outbox.take()] == ["phx_reply", "presence_state", "json"]
    assert world.redis.published_to(f"from:{topic}:phx_join") == [{}]


# a busy channel's messages share writes (coalesce.py has the policy itself)


def test_a_busy_channel_sends_a_held_message_with_the_next_in_one_burst() -> None:
    world = World(write_delay=0.003)
    members = [joined(world, "room", "1", name) for name in ("alice", "bob")]
    for n in range(3):
        world.hub.deliver([("room", "tick", b'{"n":%d}' % n)])
        world.clock.advance(0.001)
    for _, outbox in members:
        assert [[b.payload for b in burst.broadcasts] for burst in outbox.bursts] == [[b'{"n":0}'], [b'{"n":1}', b'{"n":2}']]
        assert [frame[4]["n"] for frame in outbox.take()] == [0, 1, 2]
    assert members[0][1].bursts[1] is members[1][1].bursts[1]  # framed once for both


def sent_frames(world: World) -> float:
    return world.hub.metrics.registry.get_sample_value("tangram_channel_messages_sent_total") or 0.0


def sent_bytes(world: World) -> float:
    return world.hub.metrics.registry.get_sample_value("tangram_channel_bytes_sent_total") or 0.0


def test_a_lone_members_json_message_is_framed_for_its_socket_alone_and_counted(world: World) -> None:
    _, outbox = joined(world)
    before, bytes_before = sent_frames(world), sent_bytes(world)
    world.hub.deliver([("room", "tick", b'{"n":1}'), ("other", "tick", b"{}")])
    assert outbox.bursts == []  # no Burst: ``lone_text_frame``
    assert outbox.take() == [[None, None, "room", "tick", {"n": 1}]]
    assert sent_frames(world) == before + 1
    assert sent_bytes(world) == bytes_before + len(b'[null,null,"room","tick",{"n":1}]')
    assert world.hub.traffic.of("room")[1] == 1
    world.clock.advance(1)
    world.hub.deliver([("room", "tick", b'{"n":2}')])
    assert world.hub.traffic.of("room")[1] == 2 and sent_frames(world) == before + 2


def test_a_lone_members_other_messages_take_the_usual_path(world: World) -> None:
    _, outbox = joined(world)
    world.hub.deliver([("room", "raw", b"not json")])  # binary: framed by its Burst
    world.hub.deliver([("room", "a", b"{}"), ("room", "b", b"{}")])  # a run: one burst, one write
    assert [[b.event for b in burst.broadcasts] for burst in outbox.bursts] == [["raw"], ["a", "b"]]
    assert [frame if isinstance(frame, bytes) else frame[3] for frame in outbox.take()] == [
        b"\x02\x04\x03roomrawnot json",
        "a",
        "b",
    ]


def test_the_member_left_alone_in_a_channel_gets_its_messages_framed_alone(world: World) -> None:
    alice, alice_outbox = joined(world)
    bob, bob_outbox = joined(world, client_id="bob")
    world.hub.deliver([("room", "tick", b'{"n":1}')])  # two members: by a Burst
    alice.disconnected()
    world.hub.deliver([("room", "tick", b'{"n":2}')])  # bob alone: framed for him
    assert [[b.payload for b in burst.broadcasts] for burst in bob_outbox.bursts] == [[b'{"n":1}']]
    assert [frame[4]["n"] for frame in bob_outbox.take() if frame[3] == "tick"] == [1, 2]
    assert [frame[4]["n"] for frame in alice_outbox.take() if frame[3] == "tick"] == [1]
    bob.disconnected()
    world.hub.deliver([("room", "tick", b'{"n":3}')])
    assert bob_outbox.take() == [] and world.hub.members == {}


def test_a_lone_members_push_is_framed_for_each_event_and_a_long_name_is_not_kept(world: World) -> None:
    _, outbox = joined(world)
    long_event = "e" * hub.PUSH_PARTS_NAME_LIMIT
    for event in ("a", "b", "a", long_event, long_event):
        world.hub.deliver([("room", event, b"{}")])
    assert [frame[3] for frame in outbox.take()] == ["a", "b", "a", long_event, long_event]
    (member,) = world.hub.members["room"]
    assert member.lone_push is not None and member.lone_push[0] == "a"  # the last one short enough


def test_a_busy_lone_channel_still_shares_writes() -> None:
    world = World(write_delay=0.003)
    _, outbox = joined(world)
    for n in range(3):
        world.hub.deliver([("room", "tick", b'{"n":%d}' % n)])
        world.clock.advance(0.001)
    assert [[b.payload for b in burst.broadcasts] for burst in outbox.bursts] == [[b'{"n":1}', b'{"n":2}']]
    assert [frame[4]["n"] for frame in outbox.take()] == [0, 1, 2]


def test_a_message_held_for_a_channel_its_last_member_leaves_goes_nowhere() -> None:
    world = World(write_delay=0.003)
    session, outbox = joined(world)
    world.hub.deliver([("room", "tick", b"{}")])
    world.hub.deliver([("room", "tick", b"{}")])
    push(session, "room", "phx_leave", {}, ref="9")
    newcomer, frames_of_newcomer = world.connect()
    world.join(newcomer, "room", "1", "bob")  # the held tick's due time passes in the join
    world.clock.advance(1)
    assert [frame[3] for frame in outbox.take()] == ["tick", "phx_reply", "phx_close"]
    assert [frame[3] for frame in frames_of_newcomer.take()] == ["phx_reply", "presence_state"]


def test_stopping_the_hub_sends_what_is_held() -> None:
    world = World(write_delay=0.003)
    _, outbox = joined(world)
    world.hub.deliver([("room", "tick", b'{"n":1}')])
    world.hub.deliver([("room", "tick", b'{"n":2}')])
    assert [frame[4]["n"] for frame in outbox.take()] == [1]
    world.hub.stop()
    assert [frame[4]["n"] for frame in outbox.take()] == [2]


def test_a_socket_in_two_busy_channels_gets_their_messages_in_redis_order() -> None:
    world = World(write_delay=0.003)
    session, outbox = joined(world, "one")
    world.join(session, "two", "2")
    outbox.take()
    world.hub.deliver([("one", "a", b"{}"), ("two", "b", b"{}")])
    world.clock.advance(0.001)
    world.hub.deliver([("one", "c", b"{}")])  # held: "one" is busy
    world.hub.deliver([("two", "d", b"{}"), ("one", "e", b"{}"), ("two", "f", b"{}")])
    world.clock.advance(0.003)
    assert [frame[3] for frame in outbox.take()] == ["a", "b", "c", "d", "e", "f"]


def test_a_failure_completing_a_join_drops_the_member_and_releases_its_backlog(world: World) -> None:
    """
    An error raised after the join reply (here: writing presence_state) must not leave a
    half-joined member whose backlog would keep every later broadcast for the socket's life.
    """
    alice, alice_outbox = joined(world)
    bob, bob_outbox = world.connect()
    world.redis.mode = "hold"
    world.join(bob, "room", "b1", "bob")
    world.hub.deliver([("room", "news", b'{"n":1}')])  # arrives before bob's join completes
    assert len(bob_outbox.held) == 1

    def write_fails(frame: bytes, is_binary: bool) -> None:
        raise RuntimeError("socket write failed")

    bob_outbox.send_frame = write_fails  # type: ignore[method-assign]
    world.redis.release()
    world.settle()

    assert "room" not in bob.joins
    assert all(member.outbox is alice_outbox for member in world.hub.members["room"])
    assert bob_outbox.held == []
    assert [frame[3] for frame in bob_outbox.take()] == ["phx_reply", "phx_close"]
    assert list(world.redis.presence("room")) == [agent(alice, "room", "1")]
    world.hub.deliver([("room", "news", b'{"n":2}')])
    assert bob_outbox.held == [] and bob_outbox.take() == []
    assert [frame[4] for frame in alice_outbox.take() if frame[3] == "news"] == [{"n": 1}, {"n": 2}]
