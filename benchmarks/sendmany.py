"""
CPU per ``SendMany`` call: one small buffer to each of N sockets in one ``io_submit``.

The writes go to local socket pairs that are drained between rounds (drain time is
not counted), so what is measured is the call itself and the kernel's writes: the
cost a fan-out pays per batch on top of its per-socket sends. Best of ``--rounds``.

    python benchmarks/sendmany.py [--sockets 1 11 100] [--calls 200000]
"""

from __future__ import annotations

import argparse
import socket
import sys
import time

import harness as h

sys.path.insert(0, str(h.ROOT))  # this tree's code, as the benchmarks' servers run it
from tangram_channel.sendmany import SendMany  # noqa: E402


def drain(readers: list[socket.socket]) -> None:
    for reader in readers:
        try:
            while reader.recv(1 << 20):
                pass
        except BlockingIOError:
            pass


def per_call_us(count: int, total_writes: int, rounds: int) -> float:
    """Best CPU microseconds per ``send_each`` to ``count`` sockets."""
    writers, readers = [], []
    for _ in range(count):
        ours, theirs = socket.socketpair()
        ours.setblocking(False)
        theirs.setblocking(False)
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        writers.append(ours)
        readers.append(theirs)
    sender = SendMany()
    fds = [w.fileno() for w in writers]
    datas = [b"x" * 64 for _ in fds]
    calls = max(total_writes // count, 1)
    best = float("inf")
    try:
        for _ in range(rounds):
            spent = 0.0
            for start in range(0, calls, 500):
                before = time.process_time()
                for _ in range(min(500, calls - start)):
                    sender.send_each(fds, datas)
                spent += time.process_time() - before
                drain(readers)
            best = min(best, 1e6 * spent / calls)
    finally:
        sender.close()
        for s in writers + readers:
            s.close()
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sockets", type=int, nargs="+", default=[1, 11, 100])
    parser.add_argument("--calls", type=int, default=200_000, help="writes per round, spread over the calls")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    for count in args.sockets:
        print(f"{count:4d} sockets: {per_call_us(count, args.calls, args.rounds):7.2f} us of CPU per call")


if __name__ == "__main__":
    main()
