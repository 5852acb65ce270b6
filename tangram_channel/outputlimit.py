"""
Redis's ``client-output-buffer-limit pubsub``, read and explained for operators.

Redis closes a subscriber whose output buffer passes the hard limit, or stays over the
soft limit for its seconds (default ``32mb 8mb 60``), and messages on every channel are
lost until it resubscribes. A plugin burst of large messages is enough. These functions
read the limit (``CONFIG GET``) and Redis's count of such closings (``INFO stats``,
where Redis keeps one: not 7.0, which the tests run) and say what an operator should
set.
"""

from __future__ import annotations

# messages of max_message_size Redis should be able to hold for the subscriber
HEADROOM = 32

ADVICE = (
    "set `client-output-buffer-limit pubsub 0 0 0` in redis.conf (or CONFIG SET), or hard and soft limits "
    "of at least {needed} bytes ({headroom} x max_message_size)"
)


def pubsub_limits(reply: list[bytes]) -> tuple[int, int, int] | None:
    """``(hard, soft, seconds)`` from ``CONFIG GET client-output-buffer-limit``, or None if it has none."""
    words = b" ".join(reply[1:]).split()
    try:
        at = words.index(b"pubsub")
        hard, soft, seconds = (int(word) for word in words[at + 1 : at + 4])
    except ValueError:
        return None
    return hard, soft, seconds


def too_low(limits: tuple[int, int, int], max_message_size: int) -> bool:
    """Whether a burst of messages of ``max_message_size`` can pass a nonzero hard or soft limit."""
    needed = HEADROOM * max_message_size
    return any(0 < limit < needed for limit in limits[:2])


def advice(max_message_size: int) -> str:
    """What to set, for a log line."""
    return ADVICE.format(needed=HEADROOM * max_message_size, headroom=HEADROOM)


def disconnections(info: bytes) -> int | None:
    """
    ``client_output_buffer_limit_disconnections`` from ``INFO stats``; None where Redis
    does not count them (7.0 and older).
    """
    for line in info.splitlines():
        name, _, value = line.partition(b":")
        if name == b"client_output_buffer_limit_disconnections":
            return int(value)
    return None


def cut_cause(before: int | None, after: int | None, max_message_size: int) -> str:
    """
    Why Redis closed a subscriber while it still answers commands, from its count of
    output-buffer closings before and after (None where it keeps none), with what to set.
    """
    if before is None or after is None:
        return (
            "it still answers commands, so most likely its client-output-buffer-limit pubsub was exceeded (its "
            f"log then says 'for overcoming of output buffer limits'); {advice(max_message_size)}"
        )
    if after > before:
        return f"its client-output-buffer-limit pubsub was exceeded; {advice(max_message_size)}"
    return "not for its output buffer limit, while it still answers commands (a CLIENT KILL, a proxy?)"
