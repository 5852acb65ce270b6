"""
Pushes against a Redis that does not answer (frozen with SIGSTOP): a socket whose
publishes Redis has not answered is no longer read past its bound, every wait on Redis
ends with "redis timeout", and all is well again once Redis thaws.
"""

from __future__ import annotations

import json
import socket
import time

from .live import TEXT, RawSocket, frame, reply_reason, reply_status, rss_kib, start_twistd, token


def heartbeat(ws: RawSocket) -> str:
    return ws.push("phoenix", "heartbeat", {})


def answered(ws: RawSocket, ref: str, timeout: float) -> bool:
    try:
        ws.reply(ref, timeout)
        return True
    except (TimeoutError, socket.timeout):
        return False


def test_a_socket_pushing_into_a_frozen_redis_is_not_read_past_its_bound(twistd, own_redis) -> None:
    """
    The issue's attack: a joined client pushing 878 KB messages into a frozen Redis grew
    the service by 1 GB. Now the service stops reading it once 4 MiB wait on Redis; the
    kernel's buffers fill and the client can send little more.
    """
    service = start_twistd(twistd, "--redis-url", own_redis.url, datetime_interval=0, redis_timeout=30)
    ws = RawSocket(service.port)
    ws.join_ok("room", token("room"))
    push = frame(TEXT, json.dumps(["1", "2", "room", "flood", {"blob": "b" * 878_000}]).encode())
    before = rss_kib(service.process.pid)
    sent = 0
    with own_redis.frozen():
        ws.sock.settimeout(0.5)
        deadline = time.monotonic() + 4
        try:
            while time.monotonic() < deadline:
                ws.sock.sendall(push)
                sent += len(push)
        except socket.timeout:
            pass  # nothing more is read: the point
        grown_mib = (rss_kib(service.process.pid) - before) / 1024
    # without the bound the service read hundreds of MB in those seconds
    assert sent < 40 * 1024 * 1024, f"the client sent {sent / 2**20:.0f} MiB into a frozen Redis"
    assert grown_mib < 60, f"the service grew by {grown_mib:.0f} MiB"
    # thawed: every push read is answered, and the socket is read again
    ws.sock.settimeout(10)
    ref = ws.push("room", "after", {"n": 1}, join_ref="1")
    reply = ws.reply(ref, timeout=20)
    assert reply_status(reply) == "ok"


def test_heartbeats_stop_being_read_at_the_bound_until_redis_answers(twistd, own_redis) -> None:
    """Heartbeats need no token and are published: they fall under the same bound."""
    service = start_twistd(
        twistd, "--redis-url", own_redis.url, datetime_interval=0, redis_timeout=30, max_pushes_in_flight=5
    )
    ws = RawSocket(service.port)  # nothing published yet: nothing in flight
    with own_redis.frozen():
        replies = 0
        while answered(ws, heartbeat(ws), 1.0):
            replies += 1
            assert replies <= 5, "heartbeats are still read past the bound"
        assert replies == 5
        waiting = ws.next_ref()  # the unanswered heartbeat above took the ref before this
    assert answered(ws, str(int(waiting) - 1), 10), "the waiting heartbeat was not read after Redis thawed"
    assert answered(ws, heartbeat(ws), 5)


def test_every_wait_on_a_frozen_redis_ends_with_redis_timeout(twistd, own_redis) -> None:
    """A push and a join answer "redis timeout" after redis_timeout; both work once Redis thaws."""
    service = start_twistd(twistd, "--redis-url", own_redis.url, datetime_interval=0, redis_timeout=0.5)
    ws = RawSocket(service.port)
    ws.join_ok("room", token("room"))
    with own_redis.frozen():
        pushed = ws.push("room", "talk", {"n": 1}, join_ref="1")
        assert reply_reason(ws.reply(pushed, timeout=5)) == "redis timeout"
        joining = ws.join("other", token("other"))
        reply = ws.reply(joining, timeout=5)
        assert reply_status(reply) == "error" and reply_reason(reply) == "redis timeout"
    ws.join_ok("other", token("other"))
    pushed = ws.push("room", "talk", {"n": 2}, join_ref="1")
    assert reply_status(ws.reply(pushed, timeout=5)) == "ok"
    assert "redis_timeouts_total" in metrics(service.port)


def metrics(port: int) -> str:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return response.read().decode()
