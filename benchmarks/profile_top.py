"""
Top functions of a py-spy collapsed-stack profile (``fanout.py --py-spy FILE``).

Self time says where the interpreter actually is; inclusive time says which call paths
cost the most.

    python benchmarks/profile_top.py FILE [--top 10]
"""

from __future__ import annotations

import argparse
from collections import Counter


def load(path: str) -> tuple[Counter[str], Counter[str], int]:
    """Self and inclusive sample counts per frame, and the total samples."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    with open(path) as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack:
                continue
            n = int(count)
            frames = [frame.split(" (", 1)[0] + " (" + frame.split(" (", 1)[1].split(":")[0] + ")"
                      if " (" in frame else frame for frame in stack.split(";")]
            total += n
            own[frames[-1]] += n
            for frame in set(frames):
                inclusive[frame] += n
    return own, inclusive, total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("profile")
    parser.add_argument("--top", type=int, default=10)
    args = parser.parse_args()
    own, inclusive, total = load(args.profile)
    print(f"{total} samples")
    # Frames on (nearly) every stack, the reactor loop and twistd start-up, say nothing.
    paths = Counter({f: n for f, n in inclusive.items() if n < 0.9 * total})
    ours = Counter({f: n for f, n in inclusive.items() if "tangram_channel/" in f})
    for title, counter in (("self", own), ("inclusive (below the reactor loop)", paths), ("inclusive, tangram_channel", ours)):
        print(f"\ntop {args.top} by {title} time:")
        for frame, n in counter.most_common(args.top):
            print(f"  {100 * n / total:5.1f}%  {frame}")


if __name__ == "__main__":
    main()
