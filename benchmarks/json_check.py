"""
The JSON check every message from Redis gets (``frames.is_json_document``), timed on
W5's payload and on Tangram-shaped aircraft state of growing size, beside the strict
``json`` parser it falls back on and, when it is installed, orjson (the check before
simdjson). In-process ``timeit``, best of ``--repeat``: no server, no sockets.

    python benchmarks/json_check.py
"""

from __future__ import annotations

import argparse
import sys
import timeit
from collections.abc import Callable

from compression import state
from publisher import payload

import harness as h

sys.path.insert(0, str(h.ROOT))  # this tree's code, as the benchmarks' servers run it
from tangram_channel import frames  # noqa: E402


def payloads() -> list[tuple[str, bytes]]:
    head, tail = payload(0, 2048)
    cases = [("W5's 2 KB (one long string)", head + b"1765000000000000" + tail)]
    for aircraft in (10, 100, 1000, 5000):
        data = state(aircraft, 0)
        cases.append((f"{aircraft:,} aircraft, {len(data) / 1024:,.0f} KB", data))
    return cases


def checkers() -> list[tuple[str, Callable[[bytes], object]]]:
    found: list[tuple[str, Callable[[bytes], object]]] = [
        ("is_json_document", frames.is_json_document),
        ("json (strict)", frames.loads),
    ]
    try:
        import orjson
    except ImportError:
        return found
    return [*found, ("orjson", orjson.loads)]


def best_us(check: Callable[[bytes], object], data: bytes, repeat: int) -> float:
    """Microseconds per call, the best of ``repeat`` runs of at least 0.2 s each."""
    timer = timeit.Timer(lambda: check(data))
    number, _ = timer.autorange()
    return min(timer.repeat(number=number, repeat=repeat)) / number * 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args()
    found = checkers()
    print(f"| payload | {' | '.join(name for name, _ in found)} |")
    print(f"|---|{'---|' * len(found)}")
    for label, data in payloads():
        assert frames.is_json_document(data)
        cells = [f"{best_us(check, data, args.repeat):,.2f} us" for _, check in found]
        print(f"| {label} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
