"""
No cache grows with what an attacker chooses (issue 13, point 5): a topic's PSUBSCRIBE
pattern lives as long as the topic is watched, and channel names published to Redis
leave nothing behind once delivered or dropped.
"""

from __future__ import annotations

import os

from .live import RawSocket, event_of, payload_of, rss_kib, start_twistd, token, topic_of


def test_channel_names_published_under_a_watched_topic_are_not_kept(twistd, flushed_redis):
    """
    ``to:room:<60 KB>:e`` matches the pattern of the watched topic ``room``; each one
    used to leave its topic's pattern in a cache of 65,536 entries (about 8 GB at this size).
    """
    service = start_twistd(twistd, "--redis-url", flushed_redis.url, datetime_interval=0)
    client = RawSocket(service.port)
    client.join_ok("room", token("room"))
    redis = flushed_redis.client()
    redis.publish("to:room:warmup", b"{}")
    client.until(lambda m: event_of(m) == "warmup")
    before = rss_kib(service.process.pid)

    for _ in range(3000):
        redis.publish(b"to:room:" + os.urandom(30_000).hex().encode() + b":e", b"{}")
    redis.publish("to:room:after", b'{"n": 1}')
    after = client.until(lambda m: event_of(m) == "after")

    assert (topic_of(after), payload_of(after)) == ("room", {"n": 1})
    grown = rss_kib(service.process.pid) - before
    assert grown < 40_000, f"RSS grew by {grown} KiB"  # with the old cache: about 120 MB
