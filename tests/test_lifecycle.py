"""
A channel's life over real sockets and a real Redis (PROTOCOL.md section 5 and 7):
its subscription exists before the join reply, goes when the channel empties, and a
thousand join/leave cycles leave no subscription, timer, entry or Redis key behind.
"""

from __future__ import annotations

import json
import threading

import pytest_twisted
from twisted.internet import defer, reactor

from tangram_channel import bus

from .presence_view import Tab
from .waiting import eventually

BASE_PATTERNS = 2  # system and admin are always watched


class EchoPlugin(threading.Thread):
    """A backend plugin: answers every ``from:<topic>:phx_join`` at once on ``to:<topic>:welcome``."""

    def __init__(self, redis) -> None:
        super().__init__(daemon=True)
        self.pubsub = redis.client().pubsub()
        self.pubsub.psubscribe("from:*:phx_join")
        self.publisher = redis.client()
        self.answered = 0
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            message = self.pubsub.get_message(timeout=0.05)
            if message is None or message["type"] != "pmessage":
                continue
            topic = message["channel"].decode()[len("from:"):-len(":phx_join")]
            self.publisher.publish(f"to:{topic}:welcome", message["data"])
            self.answered += 1

    def stop(self) -> None:
        self.stopping.set()
        self.join()
        self.pubsub.close()


async def cycles(service, topic: str, client_id: str, count: int, on_joined=None) -> None:
    """Join and leave ``topic`` ``count`` times on one socket."""
    tab = await Tab.open(service.ws_url, topic)
    token = service.hub.tokens.mint(topic, client_id)[1]
    for n in range(count):
        ref = tab.client.join(topic, token, n=f"{client_id}/{n}")
        tab.view.channel_join_ref = ref
        reply = await tab.until(lambda f: f[3] == "phx_reply" and f[1] == ref)
        assert reply[4]["status"] == "ok"
        if on_joined is not None:
            await on_joined(tab, f"{client_id}/{n}")
        await tab.leave()
        tab.frames.clear()
    await tab.close()


@pytest_twisted.ensureDeferred
async def test_plugin_answer_to_phx_join_always_reaches_the_joiner(start_service, flushed_redis):
    """
    A plugin publishing to:<topic>:welcome the moment it sees from:<topic>:phx_join
    reaches the joiner every time: first joins, rejoins after the channel emptied,
    and joins while others are subscribing the same topic.
    """
    service = await start_service(datetime_interval=0, presence_window=0)
    plugin = EchoPlugin(flushed_redis)
    plugin.start()

    async def welcomed(tab: Tab, n: str) -> None:
        frame = await tab.until(lambda f: f[3] == "welcome" and f[4].get("n") == n)
        assert frame[:3] == [None, None, tab.topic]

    try:
        await defer.gatherResults(
            [defer.ensureDeferred(cycles(service, "lobby", f"user{i}", 50, welcomed)) for i in range(4)]
        )
    finally:
        plugin.stop()
    assert plugin.answered == 200


@pytest_twisted.ensureDeferred
async def test_channel_is_unsubscribed_when_its_last_member_leaves(start_service, flushed_redis):
    """PSUBSCRIBE to:<topic>:* while someone is joined, PUNSUBSCRIBE when the last one leaves or disconnects."""
    redis = flushed_redis.client()
    service = await start_service(datetime_interval=0)

    def patterns() -> int:
        return redis.execute_command("PUBSUB", "NUMPAT")

    await eventually(lambda: patterns() == BASE_PATTERNS)
    first = await Tab.open(service.ws_url, "room")
    await first.join(service.hub.tokens.mint("room", "a")[1])
    second = await Tab.open(service.ws_url, "room")
    await second.join(service.hub.tokens.mint("room", "b")[1])
    assert patterns() == BASE_PATTERNS + 1
    assert "room" in service.bridge.watched_topics
    await first.leave()
    assert "room" in service.bridge.watched_topics
    await second.close()
    await eventually(lambda: "room" not in service.bridge.watched_topics and patterns() == BASE_PATTERNS)
    await first.close()


@pytest_twisted.ensureDeferred
async def test_past_many_topics_one_pattern_serves_them_all_once(start_service, flushed_redis, monkeypatch):
    """
    Past WATCH_ALL_ABOVE watched topics the subscriber holds to:* instead of a pattern per
    topic (Redis matches every PUBLISH against every pattern): each member still gets each
    of its messages once, a topic inside another's name included, and nothing else.
    """
    monkeypatch.setattr(bus, "WATCH_ALL_ABOVE", 3)
    redis = flushed_redis.client()
    service = await start_service(datetime_interval=0)

    def patterns() -> int:
        return redis.execute_command("PUBSUB", "NUMPAT")

    await eventually(lambda: patterns() == BASE_PATTERNS)
    tabs = {}
    for topic in ("a", "a:b"):  # the fourth watched topic: the join waits for to:*
        tabs[topic] = await Tab.open(service.ws_url, topic)
        await tabs[topic].join(service.hub.tokens.mint(topic, "u")[1])
    await eventually(lambda: patterns() == 1, what="to:* alone")
    for n in range(3):
        for channel in ("to:a:m", "to:a:b:m", "to:elsewhere:m"):
            redis.publish(channel, json.dumps({"n": n}))
    for topic, tab in tabs.items():
        redis.publish(f"to:{topic}:end", "{}")
        await tab.until(lambda f: f[3] == "end")
        assert [(f[2], f[4]) for f in tab.frames if f[3] == "m"] == [(topic, {"n": n}) for n in range(3)]
    for tab in tabs.values():
        await tab.close()


@pytest_twisted.ensureDeferred
async def test_a_subscriber_that_held_to_all_topics_holds_it_again_after_reconnecting(
    start_service, flushed_redis, monkeypatch
):
    """Redis drops the subscriber: it comes back on to:* alone, and messages still reach each member once."""
    monkeypatch.setattr(bus, "WATCH_ALL_ABOVE", 3)
    redis = flushed_redis.client()
    service = await start_service(datetime_interval=0)
    tabs = []
    for topic in ("a", "b"):
        tabs.append(await Tab.open(service.ws_url, topic))
        await tabs[-1].join(service.hub.tokens.mint(topic, "u")[1])
    await eventually(lambda: redis.execute_command("PUBSUB", "NUMPAT") == 1, what="to:* alone")
    first = service.bridge._subscriber
    redis.client_kill_filter(_type="pubsub")
    await eventually(lambda: service.bridge._subscriber not in (None, first), what="a new subscriber")
    await eventually(lambda: redis.execute_command("PUBSUB", "NUMPAT") == 1, what="to:* again")
    for tab in tabs:
        redis.publish(f"to:{tab.topic}:m", "{}")
        redis.publish(f"to:{tab.topic}:end", "{}")
        await tab.until(lambda f: f[3] == "end")
        assert [f[2] for f in tab.frames if f[3] == "m"] == [tab.topic]
    for tab in tabs:
        await tab.close()


def leftovers(service) -> dict:
    """
    What the service shows of channels other than system/admin: members, presence
    replicas, subscriptions, and /metrics' gauges. What presence still has to write
    would also show as a timer (its flushes and retries), which the test counts.
    """
    gauge = service.hub.metrics.registry.get_sample_value
    return {
        "members": {t: len(m) for t, m in service.hub.members.items()},
        "sockets": len(service.channel.factory.sockets),
        "replicas": sorted(service.channel.presence.replicas),
        "watched": sorted(service.bridge.watched_topics),
        "gauges": [gauge(f"tangram_channel_{name}") for name in ("sockets", "channels", "members")],
    }


@pytest_twisted.ensureDeferred
async def test_thousand_join_leave_cycles_leak_nothing(start_service, flushed_redis):
    """After 1,000 join/leave cycles: no members, replicas, subscriptions, timers or Redis keys left."""
    redis = flushed_redis.client()
    service = await start_service(datetime_interval=0)
    await eventually(lambda: redis.execute_command("PUBSUB", "NUMPAT") == BASE_PATTERNS)
    empty = leftovers(service)
    timers = len(reactor.getDelayedCalls())

    await defer.gatherResults(
        [defer.ensureDeferred(cycles(service, f"room{i % 3}", f"user{i}", 100)) for i in range(10)]
    )

    await eventually(lambda: leftovers(service) == empty)
    await eventually(lambda: len(reactor.getDelayedCalls()) <= timers)
    assert redis.execute_command("PUBSUB", "NUMPAT") == BASE_PATTERNS
    assert set(redis.keys("*")) - {b"{tangram-channel}:health"} == {b"{tangram-channel}:nodes"}  # health: the probe's
    assert empty["watched"] == ["admin", "system"]
