"""
W5, Tangram's own data path: N clients each join ``system`` and their own
``streaming-c<i>``, and a publisher (its own process, ``publisher.py``, pipelined) sends R
messages/s of S bytes of JSON to every ``to:streaming-c<i>:tick``, so each message has
exactly one recipient and the per-message path is what costs.

Prints JSON, then a human summary: delivery ratio, latency p50/p99 (stamped at publish),
the server's CPU microseconds per delivery (user and kernel), RSS, and the publisher's
achieved rate beside the one asked for, so that a publisher that fell behind is seen.

    python benchmarks/streaming.py --target both --clients 1000 --rate 10 --duration 10
"""

from __future__ import annotations

import argparse
import sys

import fanout
import harness as h


def run(target: str, args: argparse.Namespace) -> dict:
    sockets = []
    for i in range(args.clients):
        cid = f"c{i}"
        system = h.token(cid, "system")
        sockets.append((f"/websocket?vsn=2.0.0&userToken={system}",
                        [("system", system), (f"streaming-{cid}", h.token(cid, f"streaming-{cid}"))]))

    def publish(stage: h.Stage) -> tuple[int, float, dict]:
        return h.run_publisher(stage, f"publisher-{target}", ["--channels", str(args.clients)], args)

    result = h.measure_deliveries(target, args, sockets, publish, 1, f"streaming-{target}",
                                  ["-s", "streaming-", "-J"])
    return {"target": target, "clients": args.clients, "rate": args.rate, "duration_s": args.duration,
            "payload_bytes": args.payload_bytes, **result}


def summary(r: dict) -> str:
    return fanout.summary(r) + f"; misrouted deliveries {r['client'].get('misrouted', 0)}"


def passes(r: dict, p99_ms: float) -> bool:
    """W5's bar: the publisher kept pace (else the rate was not tried), nothing misrouted, then W4's."""
    if "error" in r:
        return False
    kept_pace = r["publisher"]["rate"] >= 0.98 * r["publisher"]["target_rate"]
    return kept_pace and r["client"].get("misrouted") == 0 and fanout.passes(r, p99_ms)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = h.argument_parser(__doc__, "while publishing")
    p.add_argument("--clients", "-n", type=int, default=1000, help="clients, each with its own streaming channel")
    p.add_argument("--rate", "-r", type=float, default=10, help="messages per second per channel")
    p.add_argument("--duration", "-d", type=float, default=10, help="seconds of publishing")
    p.add_argument("--payload-bytes", type=int, default=2048)
    # the reference's join storm on system (every join a presence diff to every member)
    # loses replies and drops sockets with 200 joins in flight
    p.add_argument("--concurrency", type=int, default=20, help="sockets handshaking or joining at once")
    p.add_argument("--settle", type=float, default=2.0, help="seconds between all joined and publishing")
    p.add_argument("--join-timeout", type=float, default=180)
    h.find_max_options(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    h.prepare()
    if args.find_max:
        h.report_max("streaming-max", args, run, passes)
        return
    h.run_and_report("streaming", args, run, fanout.compare, summary, fanout.describe)


if __name__ == "__main__":
    main()
