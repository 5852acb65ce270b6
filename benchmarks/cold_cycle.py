"""
What a machine charges a process for Python run after a short sleep, against the same
Python run back to back: the probe behind W5's read-cycle figures in ``README.md``.

W5 makes about 700 read cycles a second, each after a rest of ``redis_read_delay``
(1 ms), and each costs ours about 100 us more than its messages do. This measures the
two parts of that on the bare machine, with no service, client or Redis running:

- ``sleep``: the CPU of the sleep itself (``epoll_wait`` with a 1 ms timeout, then
  back), charged to the process that sleeps;
- ``touch``: a fixed piece of Python that reaches ``--objects`` small objects spread
  over a large heap (as a read cycle reaches the members its messages are for), run
  after each sleep and back to back.

A machine whose caches and TLB keep a sleeping process's memory shows ``touch`` after a
sleep near its back-to-back cost; on a busy VM host it is several times that, and a
service that sleeps between reads pays it on every read.

    python benchmarks/cold_cycle.py [--objects 400] [--seconds 3] [--sleep-ms 1]
"""

from __future__ import annotations

import argparse
import random
import select
import time
from collections.abc import Callable
from typing import Any


def cpu_per_cycle(work: Callable[[], object], seconds: float, sleep: float) -> float:
    """CPU microseconds per cycle of ``sleep`` seconds in ``epoll_wait`` (0: none), then ``work``."""
    poller = select.epoll()
    try:
        cycles = 0
        cpu_start, end = time.process_time(), time.monotonic() + seconds
        while time.monotonic() < end:
            poller.poll(sleep)
            work()
            cycles += 1
        return (time.process_time() - cpu_start) / cycles * 1e6
    finally:
        poller.close()


def spread_objects(count: int, heap: int) -> list[dict[str, Any]]:
    """``count`` of ``heap`` small dicts made in order and picked at random: spread over the heap's pages."""
    made: list[dict[str, Any]] = [{"n": i, "name": str(i), "pair": [i, i + 1]} for i in range(heap)]
    return random.sample(made, count)


def touching(objects: list[dict[str, Any]]) -> Callable[[], object]:
    """Python that reads two fields of each of ``objects``, as a message's path reads its member's."""

    def touch() -> int:
        total = 0
        for item in objects:
            total += item["n"] + item["pair"][1]
        return total

    return touch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--objects", type=int, default=400, help="objects the Python reaches a cycle")
    parser.add_argument("--heap", type=int, default=200_000, help="objects they are picked from")
    parser.add_argument("--seconds", type=float, default=3.0, help="of each measurement")
    parser.add_argument("--sleep-ms", type=float, default=1.0, help="the sleep before each cycle")
    args = parser.parse_args()
    sleep = args.sleep_ms / 1000
    touch = touching(spread_objects(args.objects, args.heap))
    sleep_alone = cpu_per_cycle(lambda: None, args.seconds, sleep)
    after_sleep = cpu_per_cycle(touch, args.seconds, sleep)
    warm = cpu_per_cycle(touch, args.seconds, 0)
    cold = after_sleep - sleep_alone
    print(f"sleep of {args.sleep_ms:g} ms alone: {sleep_alone:.1f} us CPU")
    print(f"touching {args.objects} objects: {warm:.1f} us back to back, {cold:.1f} us after the sleep "
          f"(its own CPU left out): {cold / warm:.2f}x")


if __name__ == "__main__":
    main()
