"""
Budgets of one socket on a live ``twistd`` service and a real Redis (issue 13, points 1,
2 and 16): every byte held for a client counts toward ``max_send_buffer`` (pongs and
join backlogs too), ``max_message_size`` never limits what the service sends, frames
past ``message_rate`` are answered with errors, then 1008, and bytes past
``max_receive_rate`` wait in TCP. Messages still arriving share one pool past 64 KiB
each (``max_partial_message_bytes``).
"""

from __future__ import annotations

import json
import threading
import time

from tangram_channel.partials import OWN_BYTES
from tangram_channel.protocol import CLOSE_TRY_AGAIN, RATE_GRACE

from .live import (
    CLOSE,
    CONTINUATION,
    PING,
    PONG,
    TEXT,
    Closed,
    RawSocket,
    event_of,
    frame,
    metric,
    payload_of,
    ref_of,
    reply_reason,
    reply_status,
    rss_kib,
    start_twistd,
    token,
)
from .waiting import wait_until


def service_with(twistd, redis, **settings):
    """A twistd service on ``redis`` with ``settings`` and no datetime ticks to read past."""
    return start_twistd(twistd, "--redis-url", redis.url, datetime_interval=0, **settings)


def assert_served(client: RawSocket) -> None:
    """The socket is still open and answered."""
    ref = client.push("phoenix", "heartbeat", {})
    assert reply_status(client.reply(ref)) == "ok"


def join_with_ref(client: RawSocket, topic: str, join_ref: str, client_id: str) -> None:
    client.send_json([join_ref, join_ref, topic, "phx_join", {"token": token(topic, client_id)}])
    reply = client.until(lambda m: event_of(m) == "phx_reply" and ref_of(m) == join_ref)
    assert reply_status(reply) == "ok", reply


def test_presence_state_over_max_message_size_reaches_a_new_joiner_and_so_do_broadcasts(twistd, flushed_redis):
    """Outgoing frames are not held to the incoming limit: a big channel still lets people in."""
    service = service_with(twistd, flushed_redis, max_message_size=2048)
    members = []
    for i in range(12):  # about 200 bytes of presence each
        member = RawSocket(service.port)
        join_with_ref(member, "room", f"{i:02d}" + "r" * 60, f"member-{i:02d}-" + "m" * 80)
        members.append(member)
    joiner = RawSocket(service.port)
    joiner_ref = joiner.join("room", token("room", "joiner"))
    assert reply_status(joiner.reply(joiner_ref)) == "ok"
    state = joiner.until(lambda m: event_of(m) == "presence_state")
    assert len(str(payload_of(state))) > 2048
    assert len(payload_of(state)) == 13
    flushed_redis.client().publish("to:room:news", '{"n":1}')
    assert payload_of(joiner.until(lambda m: event_of(m) == "news")) == {"n": 1}
    assert payload_of(members[0].until(lambda m: event_of(m) == "news")) == {"n": 1}


def test_pongs_for_a_client_that_never_reads_count_and_it_is_closed_with_1008(twistd, flushed_redis):
    """
    A ping flood from a socket that never reads: the pongs count toward max_send_buffer,
    so it is closed with 1008 (its presence leaves) after a bounded number of bytes,
    and its neighbour is untouched. The message budget is off, to isolate the pongs.
    """
    service = service_with(twistd, flushed_redis, max_send_buffer=64 * 1024, message_rate=0)
    neighbour = RawSocket(service.port)
    neighbour.join_ok("room", token("room", "neighbour"))
    pinger = RawSocket(service.port, rcvbuf=4096)
    pinger.join_ok("room", token("room", "pinger"))
    batch = b"".join(frame(PING, b"p" * 125) for _ in range(500))  # 65 KB of pings, as many pong bytes
    sent = 0
    while metric(service.port, "slow_clients_closed_total") == 0:
        assert sent < 64 * 1024 * 1024, "64 MB of pings and still no 1008"
        try:
            pinger.sock.sendall(batch)
        except OSError:
            break  # the service gave up on the close handshake and dropped it
        sent += len(batch)
    assert metric(service.port, "slow_clients_closed_total") == 1
    leave = neighbour.until(lambda m: event_of(m) == "presence_diff" and payload_of(m)["leaves"])
    assert [meta["phx_ref"].split(":")[1] for meta in payload_of(leave)["leaves"]["pinger"]["metas"]] == ["room"]
    assert_served(neighbour)


def test_a_heartbeat_flood_gets_rate_errors_then_1008_and_only_the_budget_is_handled(twistd, flushed_redis):
    """Past message_burst, frames are answered 'rate limit exceeded' for a short grace, then 1008."""
    service = service_with(twistd, flushed_redis, message_rate=1, message_burst=50)
    neighbour = RawSocket(service.port)
    flooder = RawSocket(service.port)
    flooder.sock.sendall(b"".join(frame(TEXT, b'[null,"%d","phoenix","heartbeat",{}]' % n) for n in range(120)))
    statuses = []
    try:
        while True:
            reply = flooder.until(lambda m: event_of(m) == "phx_reply")
            statuses.append((reply_status(reply), reply_reason(reply) if reply_status(reply) == "error" else None))
    except Closed as closed:
        assert closed.code == 1008
    oks = statuses.count(("ok", None))
    assert 50 <= oks <= 52  # the burst, and what the rate refilled meanwhile
    assert statuses[:oks] == [("ok", None)] * oks
    assert 1 <= len(statuses) - oks <= 21
    assert set(statuses[oks:]) == {("error", "rate limit exceeded")}
    assert 50 <= metric(service.port, "heartbeats_total") <= 52
    assert metric(service.port, "rate_clients_closed_total") == 1
    assert_served(neighbour)


def test_a_message_of_many_one_byte_fragments_is_cut_short_by_the_budget(twistd, flushed_redis):
    """200,000 one-byte fragments of one message: the socket is closed once past the budget."""
    service = service_with(twistd, flushed_redis, message_burst=1000)
    neighbour = RawSocket(service.port)
    flooder = RawSocket(service.port)
    fragments = b"".join(frame(CONTINUATION, b" ", fin=False) for _ in range(10_000))
    try:
        flooder.sock.sendall(frame(TEXT, b"[", fin=False))
        for _ in range(20):
            flooder.sock.sendall(fragments)
        flooder.sock.sendall(frame(CONTINUATION, b"]"))
    except OSError:
        pass  # closed and reset before the end, as it should be
    assert flooder.close_code() in (1008, None)  # None: reset with the flood still unread
    assert metric(service.port, "rate_clients_closed_total") == 1
    assert metric(service.port, "messages_received_total") == 0
    assert_served(neighbour)


def test_pings_over_the_budget_go_unanswered_then_close_with_1008(twistd, flushed_redis):
    """Pings count as frames: past the burst no pong is written for them, and a flood is closed."""
    service = service_with(twistd, flushed_redis, message_rate=1, message_burst=10)
    pinger = RawSocket(service.port)
    pinger.sock.sendall(b"".join(frame(PING, b"%d" % n) for n in range(40)))
    pongs = []
    while True:
        _, opcode, payload = pinger.recv_frame()
        if opcode == CLOSE:
            assert payload[:2] == (1008).to_bytes(2, "big")
            break
        assert opcode == PONG
        pongs.append(payload)
    assert 10 <= len(pongs) <= 11  # the burst, and what the rate refilled meanwhile
    assert pongs == [b"%d" % n for n in range(len(pongs))]
    assert metric(service.port, "pongs_skipped_total") >= 40 - 11 - 10
    assert metric(service.port, "rate_clients_closed_total") == 1


def test_a_flood_closed_for_its_budget_costs_no_more_frames_than_the_grace(twistd, flushed_redis):
    """
    5,000 pings in one write, past a burst of 10: the socket is closed once the grace is
    spent, and the rest of what it sent is not parsed (each frame parsed after the
    close once cost 14 us, and a read of them held every other socket for 130 ms).
    """
    service = service_with(twistd, flushed_redis, message_rate=0.01, message_burst=10)
    neighbour = RawSocket(service.port)
    pinger = RawSocket(service.port)
    try:
        pinger.sock.sendall(frame(PING, b"") * 5000)
        pinger.close_code()
    except OSError:
        pass  # reset: the service closed it with the flood still unread, as it should
    wait_until(lambda: metric(service.port, "rate_clients_closed_total") == 1, 10, "the pinger closed")
    assert metric(service.port, "pongs_skipped_total") == RATE_GRACE
    assert_served(neighbour)


def test_a_socket_sending_past_max_receive_rate_is_read_at_that_rate_and_kept(twistd, flushed_redis):
    """
    Bytes a second, not only frames: a client streaming big pushes is read at
    ``max_receive_rate`` (TCP holds the rest back), loses nothing, and stays connected,
    while its neighbour is served at once.
    """
    rate, size, count = 100_000, 10_000, 60
    service = service_with(twistd, flushed_redis, max_receive_rate=rate)
    plugin = flushed_redis.client().pubsub()
    plugin.psubscribe("from:room:blob")
    while plugin.get_message(timeout=1) is None:  # the subscription is confirmed
        pass
    streamer, neighbour = RawSocket(service.port, timeout=20), RawSocket(service.port)
    streamer.join_ok("room", token("room", "streamer"))
    pushes = b"".join(
        frame(TEXT, json.dumps(["1", str(n), "room", "blob", {"pad": "x" * size}]).encode()) for n in range(count)
    )
    start = time.monotonic()
    threading.Thread(target=streamer.sock.sendall, args=(pushes,), daemon=True).start()
    arrivals: list[float] = []
    while len(arrivals) < count:
        assert time.monotonic() - start < 20, f"{len(arrivals)} of {count} pushes reached Redis"
        message = plugin.get_message(timeout=0.5)
        if message is not None and message["type"] == "pmessage":
            arrivals.append(time.monotonic() - start)
        if len(arrivals) == 10:
            assert_served(neighbour)  # while the streamer is held back
    # one second's worth and a burst of as much, plus one read (64 KiB) past the budget
    first_second = sum(1 for at in arrivals if at <= 1.0)
    assert first_second <= (2 * rate + 65536) / size, arrivals
    assert arrivals[-1] >= (count * size - 2 * rate - 65536) / rate, arrivals
    assert metric(service.port, "receive_throttled_total") >= 1
    replies = [streamer.reply(str(n), timeout=10) for n in range(count)]
    assert [reply_status(reply) for reply in replies] == ["ok"] * count


def test_a_client_that_pushes_and_never_reads_is_read_no_further_then_closed(twistd, flushed_redis):
    """
    Pushes whose replies are never read: once 64 KiB of replies wait behind a full
    socket, the service stops reading the client (its sends then stall in TCP) instead
    of queuing replies up to max_send_buffer, and closes it with 1008 once it has not
    read for idle_timeout. Its neighbour keeps its broadcasts. The message and byte
    budgets are off, so that only this bound can stop the client.
    """
    service = service_with(twistd, flushed_redis, idle_timeout=5, message_rate=0, max_receive_rate=0)
    neighbour = RawSocket(service.port)
    neighbour.join_ok("room", token("room", "neighbour"))
    pusher = RawSocket(service.port, rcvbuf=4096)
    # each answered "unmatched topic", echoing the topic and the ref: about 330 bytes
    batch = b"".join(frame(TEXT, json.dumps([None, "r" * 60, "t" * 200, "e", {}]).encode()) for _ in range(200))
    pusher.sock.settimeout(1.0)
    sent = 0
    try:
        while True:
            assert sent < 64 * 1024 * 1024, "64 MB of pushes and the service still reads them"
            pusher.sock.sendall(batch)
            sent += len(batch)
    except TimeoutError:
        pass  # nothing taken for a second: the service no longer reads
    assert_served(neighbour)  # its idle timer starts again
    assert metric(service.port, "reads_paused_unread_total") == 1
    read = metric(service.port, "messages_received_total")
    time.sleep(0.5)
    assert metric(service.port, "messages_received_total") == read
    # the neighbour sends heartbeats meanwhile, as phoenix.js does
    wait_until(
        lambda: assert_served(neighbour) or metric(service.port, "slow_clients_closed_total") == 1,
        10.0,
        "the unread client closed",
    )
    flushed_redis.client().publish("to:room:news", '{"n":1}')
    assert payload_of(neighbour.until(lambda m: event_of(m) == "news")) == {"n": 1}
    assert_served(neighbour)


def test_a_message_the_pool_for_messages_arriving_cannot_hold_closes_its_socket_with_1013(twistd, flushed_redis):
    """
    A socket holds 64 KiB of a message still arriving on its own, the rest comes from
    ``max_partial_message_bytes``: the socket whose message would pass it is closed with
    1013, the one holding the pool finishes its push, and a neighbour is served meanwhile.
    """
    service = service_with(twistd, flushed_redis, max_partial_message_bytes=1024 * 1024)
    plugin = flushed_redis.client().pubsub()
    plugin.psubscribe("from:room:big")
    while plugin.get_message(timeout=1) is None:  # the subscription is confirmed
        pass
    holder, neighbour = RawSocket(service.port), RawSocket(service.port)
    join_ref, _ = holder.join_ok("room", token("room", "holder"))
    held = frame(TEXT, json.dumps([join_ref, "9", "room", "big", {"pad": "x" * 900_000}]).encode())
    holder.sock.sendall(held[:-1000])
    wait_until(lambda: metric(service.port, "partial_message_bytes") > 800_000, 10.0, "the holder's message drawn")
    refused = RawSocket(service.port)
    refused.sock.sendall(frame(TEXT, json.dumps([None, "1", "room", "big", {"pad": "y" * 400_000}]).encode()))
    assert refused.close_code() == CLOSE_TRY_AGAIN
    assert metric(service.port, "partial_message_closes_total") == 1
    assert_served(neighbour)
    holder.sock.sendall(held[-1000:])
    assert reply_status(holder.reply("9", timeout=10)) == "ok"
    published = None
    while published is None or published["type"] != "pmessage":
        published = plugin.get_message(timeout=5)
        assert published is not None, "the holder's push never reached Redis"
    assert len(published["data"]) > 900_000
    assert metric(service.port, "partial_message_bytes") == 0


def test_many_unfinished_messages_cost_the_pool_and_64_kib_a_socket_not_a_megabyte_each(twistd, flushed_redis):
    """
    An attacker sends all of a 1 MB message but its end on each of 120 sockets: the
    service keeps what the pool holds and 64 KiB a socket, not the 120 MB it was sent.
    """
    pool, sockets, size = 4 * 1024 * 1024, 120, 1_000_000
    service = service_with(twistd, flushed_redis, max_partial_message_bytes=pool)
    before = rss_kib(service.process.pid)
    attackers = [RawSocket(service.port) for _ in range(sockets)]
    unfinished = frame(TEXT, b"x" * size)[:-1]
    for attacker in attackers:
        attacker.sock.sendall(unfinished)
    held = pool // (size - OWN_BYTES)  # the messages the pool can hold: the others' sockets are closed
    wait_until(
        lambda: metric(service.port, "partial_message_closes_total") == sockets - held, 30.0, "the pool full"
    )
    grown_mb = (rss_kib(service.process.pid) - before) / 1024
    assert grown_mb < 40, f"RSS grew by {grown_mb:.0f} MB for {sockets} unfinished messages"
    assert [attacker.close_code() for attacker in attackers[-3:]] == [CLOSE_TRY_AGAIN] * 3
