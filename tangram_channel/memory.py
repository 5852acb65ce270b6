"""
Give memory back after join storms.

A storm sends every joiner a ``presence_state`` of the whole channel: large, short-lived
buffers. glibc raises its mmap threshold each time such a buffer is freed, so later ones
come from the heap, which fragments and is never returned: a settled service kept about
three times the memory it used. A fixed threshold keeps large buffers in their own
mappings, returned to the system when freed.
"""

from __future__ import annotations

import ctypes

_M_MMAP_THRESHOLD = -3
LARGE_BUFFER = 128 * 1024


def keep_large_buffers_separate() -> bool:
    """Fix glibc's mmap threshold; returns False where there is no glibc to tune."""
    # the process's own symbols: libc is loaded already, no library search needed
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is None:
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, LARGE_BUFFER))
