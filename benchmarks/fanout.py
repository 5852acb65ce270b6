"""
Fan-out: N clients join one channel; R messages/s of about 200 bytes of JSON carrying their
publish time are published to ``to:<channel>:tick`` for D seconds, by ``publisher.py``
(its own process, pipelined, so that it keeps pace past what one ``PUBLISH`` per round
trip allows and W4 finds the service's limit, not the publisher's).

Prints JSON, then a human summary: delivery ratio, deliveries/s, latency p50/p99/max, the
server's CPU microseconds per delivery (utime+stime of the server and its children, from
/proc) and RSS per client, plus the load client's own CPU so one can see it is not the
bottleneck.

    python benchmarks/fanout.py --target both --clients 100 --rate 500 --duration 10
"""

from __future__ import annotations

import argparse

import harness as h


def run(target: str, args: argparse.Namespace) -> dict:
    sockets = []
    for i in range(args.clients):
        tok = h.token(f"c{i}", args.channel)
        sockets.append((f"/websocket?vsn=2.0.0&userToken={tok}", [(args.channel, tok)]))

    def publish_all(stage: h.Stage) -> tuple[int, float, dict]:
        return h.run_publisher(stage, f"publisher-{target}", ["--topic", args.channel], args)

    result = h.measure_deliveries(target, args, sockets, publish_all, args.clients, f"fanout-{target}")
    return {"target": target, "clients": args.clients, "rate": args.rate, "duration_s": args.duration,
            "payload_bytes": args.payload_bytes, **result}


def summary(r: dict) -> str:
    lat, pub = r["latency_ms"], r["publisher"]
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
        f"machine busy {r['machine_busy_cores']:.2f} of {r['machine_cores']} cores\n"
        f"           publisher: {pub['published']} messages, {pub['rate']:.0f} msg/s of {pub['target_rate']:.0f} asked "
        f"({h.pct(pub['rate'], pub['target_rate'])}), latest {1000 * pub['max_late_s']:.1f} ms late, "
        f"{100 * (pub['cpu_share'] or 0):.0f}% of a core"
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
    h.find_max_options(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    h.prepare()
    if args.find_max:
        h.report_max("fanout-max", args, run, passes)
        return
    h.run_and_report("fanout", args, run, compare, summary, describe)


if __name__ == "__main__":
    main()
