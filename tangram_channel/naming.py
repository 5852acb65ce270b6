"""
Every name this service uses in Redis, in one place.

Pub/sub channels are Tangram's: plugins publish ``to:<topic>:<event>`` for the members
of a topic and read what browsers push on ``from:<topic>:<event>``; a channel is split
at its last colon, so topics may hold colons and events may not. Keys this service
stores start with ``{tangram-channel}:``: each topic's presence hash, each node's set of
topics, the set of channels with members, the node zset, and the health probe's key.
The braces are a Redis Cluster hash tag: every key hashes to one slot, so each
presence script (which touches several keys, some named inside the script) runs on
the one primary that holds them all; plain Redis ignores them.
"""

from __future__ import annotations

import functools
import re

SYSTEM_TOPIC = "system"  # the datetime broadcasts
ADMIN_TOPIC = "admin"  # channel and agent events, for operators
HEARTBEAT_TOPIC = "phoenix"  # phoenix.js's heartbeats: never joined

KEY_PREFIX = "{tangram-channel}:"
CHANNELS_KEY = KEY_PREFIX + "channels"
NODES_KEY = KEY_PREFIX + "nodes"
HEALTH_KEY = KEY_PREFIX + "health"

_GLOB = re.compile(rb"([*?\[\]\\])")


def is_admin_topic(topic: str) -> bool:
    """``admin`` and the topics under ``admin:``: only operators get tokens for them."""
    return topic == ADMIN_TOPIC or topic.startswith(ADMIN_TOPIC + ":")


def presence_key(topic: str) -> str:
    return f"{KEY_PREFIX}presence:{topic}"


def node_key(node: str) -> str:
    return f"{KEY_PREFIX}node:{node}"


def to_channel(topic: str, event: str) -> bytes:
    """Where a plugin publishes for the members of ``topic``."""
    return f"to:{topic}:{event}".encode()


def from_channel(topic: str, event: str) -> bytes:
    """Where what a member of ``topic`` pushes is published."""
    return f"from:{topic}:{event}".encode()


def from_pattern(glob: str) -> bytes:
    """The ``PSUBSCRIBE`` pattern of what members push, for ``glob`` (``<topic>:<event>``, e.g. ``*``)."""
    return f"from:{glob}".encode()


def topic_pattern(topic: str) -> bytes:
    """``to:<topic>:*`` with glob characters in the topic escaped: what a topic's members hear."""
    return b"to:" + _GLOB.sub(rb"\\\1", topic.encode("utf-8")) + b":*"


ALL_TOPICS_PATTERN = b"to:*"  # what a process watching many topics subscribes instead (see bus)


# channels whose split is remembered (``split_channel``): a busy service sees the same
# few thousand again and again; longer names are split each time, not kept
SPLIT_NAME_LIMIT = 512


def split_channel(channel: bytes) -> tuple[str, str] | None:
    """``to:<topic>:<event>`` split at the last colon, or None if it is not one."""
    if len(channel) <= SPLIT_NAME_LIMIT:
        return _split_remembered(channel)
    return _split(channel)


def _split(channel: bytes) -> tuple[str, str] | None:
    if not channel.startswith(b"to:"):
        return None
    topic, sep, event = channel[3:].rpartition(b":")
    if not sep or not topic or not event:
        return None
    try:
        return topic.decode("utf-8"), event.decode("utf-8")
    except UnicodeDecodeError:
        return None


# each message from Redis is split: a remembered split costs one C call, not six
_split_remembered = functools.lru_cache(maxsize=4096)(_split)
