"""
No cache grows with what an attacker chooses (issue 13, point 5): a topic's PSUBSCRIBE
pattern lives as long as the topic is watched, and channel names published to Redis
leave nothing behind once delivered or dropped.
"""

from __future__ import annotations

import os

from tangram_channel import frames, naming

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


def test_split_channel_remembers_a_bounded_number_of_short_names_and_no_long_one() -> None:
    """Every message from Redis is split; the splits kept for speed are capped in count and in name length."""
    naming._split_remembered.cache_clear()
    for i in range(10_000):
        assert naming.split_channel(b"to:t%d:e" % i) == (f"t{i}", "e")
    assert naming._split_remembered.cache_info().currsize == 4096
    assert naming.split_channel(b"to:t9999:e") == ("t9999", "e")  # remembered, and the same answer
    before = naming._split_remembered.cache_info()
    long_topic = "x" * naming.SPLIT_NAME_LIMIT
    assert naming.split_channel(f"to:{long_topic}:e".encode()) == (long_topic, "e")
    assert naming.split_channel(b"from:t1:e") is None and naming.split_channel(b"to:\xff:e") is None
    after = naming._split_remembered.cache_info()
    assert after.misses == before.misses + 2 and after.currsize == 4096  # only the two short ones were looked up


def test_broadcast_heads_are_remembered_within_a_cap_and_only_for_short_names() -> None:
    """A broadcast's ``[null,null,"topic","event",`` is made once per pair, for at most 4,096 short pairs."""
    frames._broadcast_head.cache_clear()
    for i in range(5000):
        assert frames.splice(None, f"t{i}", "e", b"{}", frames.V2) == b'[null,null,"t%d","e",{}]' % i
    assert frames._broadcast_head.cache_info().currsize == 4096
    # names JSON must escape take the encoder's path, and give the same frame each time
    for _ in range(2):
        assert frames.splice(None, 'a"b', "é", b"[1]", frames.V2) == '[null,null,"a\\"b","é",[1]]'.encode()
    before = frames._broadcast_head.cache_info()
    long_event = "e" * 600
    assert frames.splice(None, "t", long_event, b"{}", frames.V2) == b'[null,null,"t","%s",{}]' % long_event.encode()
    assert frames._broadcast_head.cache_info() == before  # not looked up, so not kept
