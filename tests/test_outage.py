"""
A Redis outage under a live ``twistd`` service with joined, streaming clients: Redis
is killed and restarted on the same port while the test watches the sockets, the log,
Redis itself and the datetime ticker.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

from tangram_channel.presence import presence_key

from .live import RawSocket, event_of, payload_of, reply_reason, reply_status, start_twistd, token


class Listener:
    """Everything published on ``from:*`` while one Redis connection lasts, collected in a thread."""

    def __init__(self, redis: Any) -> None:
        self.redis = redis  # redis-py closes the pubsub's connection with its client
        self.pubsub = redis.pubsub()
        self.pubsub.psubscribe("from:*")
        while self.pubsub.get_message(timeout=1) is None:  # the psubscribe confirmation
            pass
        self.messages: list[tuple[bytes, bytes]] = []
        self.stopped = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            while not self.stopped:
                message = self.pubsub.get_message(timeout=0.1)
                if message is not None and message["type"] == "pmessage":
                    self.messages.append((message["channel"], message["data"]))
        except Exception:  # the connection died with its Redis: what was collected stays
            pass

    def stop(self) -> list[tuple[bytes, bytes]]:
        self.stopped = True
        self.thread.join(5)
        return self.messages


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


def push_batch(client: RawSocket, ticks: Ticks, first: int, count: int) -> dict[int, tuple[str, str | None]]:
    """Push ``count`` numbered messages on ``feed``; each number's (status, reason)."""
    refs = {client.push("feed", "msg", {"id": n}, join_ref=client.feed_join_ref): n for n in range(first, first + count)}
    answers = {}
    for ref, n in refs.items():
        reply = ticks.reply(client, ref)
        answers[n] = (reply_status(reply), reply_reason(reply))
    return answers


def test_redis_outage_keeps_sockets_answers_errors_and_restores_everything(twistd, own_redis):
    service = start_twistd(twistd, "--redis-url", own_redis.url, datetime_interval=0.2)
    before = Listener(own_redis.client())
    ticks = Ticks()
    a, b = RawSocket(service.port), RawSocket(service.port)
    a.join_ok("system", token("system", "a"))
    a.feed_join_ref, _ = a.join_ok("feed", token("feed", "a"))
    b.join_ok("feed", token("feed", "b"))

    acked = push_batch(a, ticks, 0, 20)
    assert set(acked.values()) == {("ok", None)}

    own_redis.kill()
    during = push_batch(a, ticks, 20, 20)
    ticks_at_kill = len(ticks.counters)
    ticks.wait(a, 1.5)  # long enough for several reconnection attempts
    assert set(during.values()) == {("error", "redis unavailable")}
    assert len(ticks.counters) > ticks_at_kill + 3, "the datetime ticker stopped with Redis"
    log = service.log()
    assert log.count("lost the connection to Redis") == 1, log
    assert "redis unavailable" not in log, "one log line per refused push"
    assert "Traceback" not in log, log

    own_redis.start()
    after = Listener(own_redis.client())
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
    acked.update(push_batch(a, ticks, 40, 20))
    assert all(acked[n] == ("ok", None) for n in range(40, 60))
    ticks.wait(a, 0.5)
    assert ticks.counters == list(range(ticks.counters[0], ticks.counters[0] + len(ticks.counters)))

    time.sleep(0.2)  # the listeners' last messages
    published = {
        json.loads(data)["id"] for channel, data in before.stop() + after.stop() if channel == b"from:feed:msg"
    }
    ok = {n for n, answer in acked.items() if answer[0] == "ok"}
    assert ok <= published, f"acknowledged but never published: {sorted(ok - published)}"
