"""The allocator tuning that lets a settled service give back what a join storm used."""

import subprocess
import sys

from tangram_channel.memory import keep_large_buffers_separate


def test_glibc_mmap_threshold_is_fixed():
    assert keep_large_buffers_separate() is True  # this machine has glibc


def test_freed_large_buffers_return_to_the_system():
    """
    After the tuning, a burst of large buffers that are then freed leaves the process's
    RSS near where it started; without it, glibc keeps them in a fragmented heap.
    """
    script = """
import sys
from tangram_channel.memory import keep_large_buffers_separate
if sys.argv[1] == "tuned":
    keep_large_buffers_separate()
def rss():
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmRSS")).split()[1])
before = rss()
for _ in range(20):
    # like presence_state frames: large, freed, with small survivors between them
    blocks = [bytearray(300_000) for _ in range(100)]
    keep = [bytes(64) for _ in range(2000)]
    del blocks
print(rss() - before)
"""
    grown = {
        mode: int(subprocess.check_output([sys.executable, "-c", script, mode], text=True))
        for mode in ("tuned", "default")
    }
    assert grown["tuned"] < 10_000, grown  # kB
    assert grown["default"] > grown["tuned"], grown
