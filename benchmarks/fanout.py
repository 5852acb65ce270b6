"""
Fan-out: N clients join one channel; R messages/s of about 200 bytes of JSON carrying their
publish time are published to ``to:<channel>:tick`` for D seconds.

Prints JSON, then a human summary: delivery ratio, deliveries/s, latency p50/p99/max, the
server's CPU microseconds per delivery (utime+stime of the server and its children, from
/proc) and RSS per client, plus the load client's own CPU so one can see it is not the
bottleneck.

    python benchmarks/fanout.py --target both --clients 100 --rate 500 --duration 10
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import redis

import harness as h


def payload(seq: int, size: int) -> bytes:
    """About ``size`` bytes of JSON whose "t" is the publish time in microseconds."""
    head = {"t": time.time_ns() // 1000, "seq": seq, "kind": "tick", "pad": ""}
    pad = max(0, size - len(json.dumps(head, separators=(",", ":"))))
    head["pad"] = "x" * pad
    return json.dumps(head, separators=(",", ":")).encode()


def publish(client: redis.Redis, channel: str, rate: float, duration: float, size: int) -> tuple[int, float]:
    """Publish at ``rate``/s for ``duration`` s on schedule; returns (messages, seconds taken)."""
    topic = f"to:{channel}:tick"
    total = int(rate * duration)
    start = time.monotonic()
    for seq in range(total):
        due = start + seq / rate
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        client.publish(topic, payload(seq, size))
    return total, time.monotonic() - start


def drain(client: h.LoadClient, expected: int, quiet: float = 2.0, limit: float = 20.0) -> tuple[dict, float]:
    """Poll until every delivery arrived or none arrived for ``quiet`` s; returns last stats, when."""
    deadline = time.monotonic() + limit
    stats = client.stats()
    last_change = time.monotonic()
    while stats["ticks"] < expected and time.monotonic() < deadline and time.monotonic() - last_change < quiet:
        time.sleep(0.1)
        new = client.stats()
        if new["ticks"] != stats["ticks"]:
            last_change = time.monotonic()
        stats = new
    return stats, last_change


def run(target: str, args: argparse.Namespace) -> dict:
    with h.served(target, args.workers) as stage:
        server = stage.server
        base = server.usage()
        sockets = []
        for i in range(args.clients):
            cid = f"c{i}"
            tok = h.token(cid, args.channel)
            sockets.append((f"/websocket?vsn=2.0.0&userToken={tok}", [(args.channel, tok)]))
        client = h.LoadClient(stage.port, sockets, ["-c", str(args.concurrency), "-m", str(args.max_seconds)],
                              f"fanout-{target}")
        stage.stop_later(client.kill)
        joined = client.wait_event("JOINED", args.join_timeout)
        if joined is None:
            stats = client.stats()
            raise RuntimeError(f"{target}: not all joined within {args.join_timeout} s: {stats}")
        time.sleep(args.settle)
        settled = server.usage()
        publisher = redis.Redis.from_url(stage.redis_url)
        before_server, before_client, before_redis = server.usage(), h.usage(client.pid), stage.redis.usage()
        sampler = h.Sampler(server.pid, rss_limit_mb=args.rss_limit_mb)
        stage.stop_later(sampler.stop)
        machine_before = h.machine_busy()
        profiler = h.start_profiler(server.pid, args.duration, args.py_spy) if args.py_spy and target == "ours" else None
        published, publish_s = publish(publisher, args.channel, args.rate, args.duration, args.payload_bytes)
        publish_end = time.monotonic()
        expected = published * args.clients
        stats, last_delivery = drain(client, expected)
        after_server, after_client, after_redis = server.usage(), h.usage(client.pid), stage.redis.usage()
        samples = sampler.stop()
        machine = h.busy_cores(machine_before, h.machine_busy())
        result = client.finish()
        if profiler is not None:
            profiler.wait(timeout=60)
    cpu = after_server - before_server
    redis_cpu = after_redis - before_redis
    delivered = result["ticks"]
    window = publish_s + max(0.0, last_delivery - publish_end)
    return {
        "target": target,
        "clients": args.clients,
        "rate": args.rate,
        "duration_s": args.duration,
        "payload_bytes": len(payload(0, args.payload_bytes)),
        "published": published,
        "expected_deliveries": expected,
        "delivered": delivered,
        "delivery_ratio": delivered / expected if expected else None,
        "deliveries_per_s": delivered / window if window else None,
        "clients_dropped": result["closed_by_server"],
        "min_per_client": result["ticks_min_per_conn"],
        "latency_ms": {k: result.get("latency_us", {}).get(k, 0) / 1000 for k in ("p50", "p90", "p99", "max")},
        "join_storm_s": joined,
        "server_cpu_s": cpu.cpu_s,
        "server_cpu_us_per_delivery": 1e6 * cpu.cpu_s / delivered if delivered else None,
        "server_sys_us_per_delivery": 1e6 * cpu.sys_s / delivered if delivered else None,
        # not part of W1's figure: what its private Redis spent meanwhile, so that no
        # work moved into Redis goes unseen
        "redis_cpu_us_per_delivery": 1e6 * redis_cpu.cpu_s / delivered if delivered else None,
        "server_cpu_share": cpu.cpu_s / window if window else None,
        "server_peak_cpu_share": samples["peak_cpu_share"],
        "server_cpu_share_timeline": samples["cpu_share_timeline"],
        "server_peak_rss_kb": samples["peak_rss_kb"],
        "server_rss_idle_kb": base.rss_kb,
        "server_rss_joined_kb": settled.rss_kb,
        "server_rss_end_kb": after_server.rss_kb,
        "rss_per_client_kb": (settled.rss_kb - base.rss_kb) / args.clients,
        "client_cpu_s": (after_client - before_client).cpu_s,
        "client_cpu_share": (after_client - before_client).cpu_s / window if window else None,
        "machine_cores": os.cpu_count(),
        "machine_busy_cores": machine,
        "client": result,
    }


def summary(r: dict) -> str:
    lat = r["latency_ms"]
    return (
        f"{r['target']:>9}: {r['clients']} clients x {r['rate']} msg/s x {r['duration_s']} s, {r['payload_bytes']} B: "
        f"delivered {h.pct(r['delivered'], r['expected_deliveries'])} ({r['delivered']}/{r['expected_deliveries']}), "
        f"{r['deliveries_per_s']:.0f} deliveries/s, dropped clients {r['clients_dropped']}\n"
        f"           latency p50 {lat['p50']:.2f} ms, p99 {lat['p99']:.2f} ms, max {lat['max']:.2f} ms; "
        f"server CPU {r['server_cpu_us_per_delivery'] or 0:.2f} us/delivery "
        f"({r['server_sys_us_per_delivery'] or 0:.2f} in the kernel; {100 * (r['server_cpu_share'] or 0):.0f}% of a core, "
        f"peak {100 * (r['server_peak_cpu_share'] or 0):.0f}%), peak RSS {(r['server_peak_rss_kb'] or 0) / 1024:.0f} MB, "
        f"RSS {r['server_rss_joined_kb'] / 1024:.1f} MB joined ({r['rss_per_client_kb']:.1f} KB/client); "
        f"its redis-server {r['redis_cpu_us_per_delivery'] or 0:.2f} us/delivery; "
        f"load client CPU {100 * (r['client_cpu_share'] or 0):.0f}% of a core; "
        f"machine busy {r['machine_busy_cores']:.2f} of {r['machine_cores']} cores"
    )


def compare(ours: dict, ref: dict) -> dict:
    keys = ["delivery_ratio", "deliveries_per_s", "server_cpu_us_per_delivery", "rss_per_client_kb",
            "redis_cpu_us_per_delivery"]
    out = {k: h.ratio(ours[k], ref[k]) for k in keys}
    out["latency_p99"] = h.ratio(ours["latency_ms"]["p99"], ref["latency_ms"]["p99"])
    return out


def describe(c: dict) -> str:
    """The ratios of ``compare`` in the summary's words."""
    return (
        f"delivery {h.times(c['delivery_ratio'])}, deliveries/s {h.times(c['deliveries_per_s'])}, "
        f"p99 {h.times(c['latency_p99'])}, CPU/delivery {h.times(c['server_cpu_us_per_delivery'])}, "
        f"RSS/client {h.times(c['rss_per_client_kb'])}; their redis-servers' CPU/delivery "
        f"{h.times(c['redis_cpu_us_per_delivery'])}"
    )


def passes(r: dict, p99_ms: float) -> bool:
    """W4's bar: everything delivered, nobody dropped, p99 within ``p99_ms``."""
    return "error" not in r and r["delivery_ratio"] == 1.0 and r["clients_dropped"] == 0 and r["latency_ms"]["p99"] <= p99_ms


def find_max(target: str, args: argparse.Namespace) -> dict:
    """
    The highest publish rate (for --clients) that still passes: rates grow x1.5 from --rate
    until one fails (or shrink /1.5 until one passes, when --rate already fails), then a
    few bisection steps. Every step is a fresh server and Redis.
    """
    tried: list[dict] = []

    def attempt(rate: float) -> bool:
        step = argparse.Namespace(**{**vars(args), "rate": round(rate)})
        try:
            r = run(target, step)
        except Exception as e:
            r = {"target": target, "rate": step.rate, "error": str(e)}
        ok = passes(r, args.p99_ms)
        tried.append({"rate": step.rate, "passed": ok, "delivery_ratio": r.get("delivery_ratio"),
                      "deliveries_per_s": r.get("deliveries_per_s"), "p99_ms": r.get("latency_ms", {}).get("p99"),
                      "server_cpu_us_per_delivery": r.get("server_cpu_us_per_delivery"), "error": r.get("error")})
        if not args.json_only:
            t = tried[-1]
            print(f"  {target}: {step.rate} msg/s x {args.clients}: {'pass' if ok else 'FAIL'} "
                  f"(delivered {t['delivery_ratio']}, p99 {t['p99_ms']} ms)", file=sys.stderr)
        return ok

    low, high, rate = None, None, args.rate
    for _ in range(args.max_steps):
        if attempt(rate):
            low = rate
            if high is not None:
                break
            rate *= 1.5
        else:
            high = rate
            if low is not None:
                break
            rate /= 1.5  # the starting rate already fails: look below it
    if low is not None and high is not None:
        for _ in range(args.bisect_steps):
            mid = (low + high) / 2
            if attempt(mid):
                low = mid
            else:
                high = mid
    best = max((t for t in tried if t["passed"]), key=lambda t: t["deliveries_per_s"], default=None)
    return {"target": target, "clients": args.clients, "p99_ms_bar": args.p99_ms,
            "best_rate": best and best["rate"], "best_deliveries_per_s": best and best["deliveries_per_s"],
            "first_failing_rate": high and round(high), "tried": tried}


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = h.argument_parser(__doc__, "while publishing")
    p.add_argument("--clients", "-n", type=int, default=100)
    p.add_argument("--rate", "-r", type=float, default=500, help="messages per second published")
    p.add_argument("--duration", "-d", type=float, default=10, help="seconds of publishing")
    p.add_argument("--payload-bytes", type=int, default=200)
    p.add_argument("--channel", default="bench")
    p.add_argument("--concurrency", type=int, default=100, help="client handshakes in flight")
    p.add_argument("--settle", type=float, default=1.0, help="seconds between all joined and publishing")
    p.add_argument("--join-timeout", type=float, default=120)
    p.add_argument("--find-max", action="store_true",
                   help="search the highest rate with 100%% delivered, none dropped and p99 <= --p99-ms (W4)")
    p.add_argument("--p99-ms", type=float, default=100)
    p.add_argument("--max-steps", type=int, default=8, help="growth steps of --find-max")
    p.add_argument("--bisect-steps", type=int, default=3, help="bisection steps of --find-max")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    h.prepare()
    if args.find_max:
        found = {t: find_max(t, args) for t in h.targets(args.target)}
        report = {"benchmark": "fanout-max", "results": found}
        if len(found) == 2:
            report["ours_over_reference"] = h.ratio(found["ours"]["best_deliveries_per_s"],
                                                    found["reference"]["best_deliveries_per_s"])
        print(json.dumps(report, indent=2))
        if not args.json_only:
            print()
            for r in found.values():
                best = "none passed" if r["best_rate"] is None else (
                    f"{r['best_rate']} msg/s = {r['best_deliveries_per_s']:.0f} deliveries/s")
                print(f"{r['target']:>9}: {r['clients']} clients, highest passing (100%, none dropped, "
                      f"p99 <= {r['p99_ms_bar']:g} ms): {best}; first failing {r['first_failing_rate']} msg/s")
            if report.get("ours_over_reference") is not None:
                print(f"ours/reference highest deliveries/s: {report['ours_over_reference']:.2f}x")
        return
    h.run_and_report("fanout", args, run, compare, summary, describe)


if __name__ == "__main__":
    main()
