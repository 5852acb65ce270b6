"""
A Redis outage under a live ``twistd`` service with joined, streaming clients: Redis
is killed and restarted on the same port while the test watches the sockets, the log,
Redis itself and the datetime ticker.
"""

from __future__ import annotations

import json
import time
from typing import Any

from tangram_channel.naming import presence_key

from .e2e import RedisListener
from .live import RawSocket, event_of, payload_of, reply_reason, reply_status, start_twistd, token
from .waiting import wait_until


class Ticks:
    """The ``system`` datetime counters a client saw, recorded while reading anything else."""

    def __init__(self) -> None:
        self.counters: list[int] = []

    def reply(self, client: RawSocket, ref: str) -> Any:
        def wanted(message: Any) -> bool:
            if event_of(message) == "datetime":
                self.counters.append(payload_of(message)["response"]["counter"])
            return event_of(message) == "phx_reply" and message[1] == ref

        return client.until(wanted)

    def wait(self, client: RawSocket, seconds: float) -> None:
        """Keep reading (and heartbeating, so the socket is not idle) for ``seconds``."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            assert reply_status(self.reply(client, client.push("phoenix", "heartbeat", {}))) == "ok"
            time.sleep(0.1)


def push_batch(
    client: RawSocket, join_ref: str, ticks: Ticks, first: int, count: int
) -> dict[int, tuple[str, str | None]]:
    """Push ``count`` numbered messages on ``feed``; each number's (status, reason)."""
    refs = {client.push("feed", "msg", {"id": n}, join_ref): n for n in range(first, first + count)}
    answers = {}
    for ref, n in refs.items():
        reply = ticks.reply(client, ref)
        answers[n] = (reply_status(reply), reply_reason(reply))
    return answers


def published_ids(listener: RedisListener, into: list[tuple[bytes, bytes]]) -> set[int]:
    """The ids of every ``from:feed:msg`` the listener got so far, kept in ``into``."""
    into += listener.pending()
    return {json.loads(data)["id"] for channel, data in into if channel == b"from:feed:msg"}


def test_redis_outage_keeps_sockets_answers_errors_and_restores_everything(twistd, own_redis):
    service = start_twistd(twistd, "--redis-url", own_redis.url, datetime_interval=0.2)
    before = RedisListener(own_redis.client())
    ticks = Ticks()
    a, b = RawSocket(service.port), RawSocket(service.port)
    a.join_ok("system", token("system", "a"))
    feed_join_ref, _ = a.join_ok("feed", token("feed", "a"))
    b.join_ok("feed", token("feed", "b"))

    acked = push_batch(a, feed_join_ref, ticks, 0, 20)
    assert set(acked.values()) == {("ok", None)}
    published: list[tuple[bytes, bytes]] = []
    # read before Redis takes them down with it
    wait_until(lambda: published_ids(before, published) == set(acked), 5, "the acknowledged pushes published")

    own_redis.kill()
    during = push_batch(a, feed_join_ref, ticks, 20, 20)
    ticks_at_kill = len(ticks.counters)
    ticks.wait(a, 1.5)  # long enough for several reconnection attempts
    assert set(during.values()) == {("error", "redis unavailable")}
    assert len(ticks.counters) > ticks_at_kill + 3, "the datetime ticker stopped with Redis"
    log = service.log()
    assert log.count("lost the connection to Redis") == 1, log
    assert "redis unavailable" not in log, "one log line per refused push"
    assert "Traceback" not in log, log

    own_redis.start()
    after = RedisListener(own_redis.client())
    restarted = time.monotonic()
    redis = own_redis.client()
    probe = None
    while probe is None and time.monotonic() - restarted < 5:
        redis.publish("to:feed:probe", '{"back":true}')
        try:
            probe = b.until(lambda m: event_of(m) == "probe", timeout=0.2)
        except TimeoutError:
            pass
    back_after = time.monotonic() - restarted
    print(f"\nbroadcasts reached the old sockets {back_after:.2f}s after Redis restarted")
    assert probe is not None, "no broadcast reached a socket joined before the outage within 5 s"

    presence = {}
    while len(presence) < 2 and time.monotonic() - restarted < 5:
        presence = redis.hgetall(presence_key("feed"))
        time.sleep(0.05)
    assert len(presence) == 2, presence
    c = RawSocket(service.port)
    _, state = c.join_ok("feed", token("feed", "c"))
    assert {"a", "b"} <= set(state)

    assert "Redis at" in service.log() and "is back" in service.log()
    assert "taken for dead" not in service.log(), "a lone node, just reconnected"
    acked.update(push_batch(a, feed_join_ref, ticks, 40, 20))
    assert all(acked[n] == ("ok", None) for n in range(40, 60))
    ticks.wait(a, 0.5)
    assert ticks.counters == list(range(ticks.counters[0], ticks.counters[0] + len(ticks.counters)))

    ok = {n for n, answer in acked.items() if answer[0] == "ok"}
    wait_until(lambda: ok <= published_ids(after, published), 5, "every acknowledged push published")
