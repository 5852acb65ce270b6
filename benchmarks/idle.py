"""
Join storm and idle connections: N clients connect, join ``system`` and their own
``streaming-<id>`` channel (as Tangram's frontend does) and heartbeat every 30 s.

Prints JSON, then a human summary: time until all joined, time until every client holds
the full ``system`` presence (N keys), the server's RSS per client once settled, the frames
and bytes the server sent, and the server's and load client's CPU.

    python benchmarks/idle.py --target both --clients 2000
"""

from __future__ import annotations

import argparse
import os
import signal
import time

import harness as h


def run(target: str, args: argparse.Namespace) -> dict:
    with h.served(target, args.workers) as stage:
        server = stage.server
        base = server.usage()
        sampler = h.Sampler(server.pid, rss_limit_mb=args.rss_limit_mb)
        stage.stop_later(sampler.stop)
        machine_before = h.machine_busy()
        sockets = []
        for i in range(args.clients):
            cid = f"c{i}"
            system = h.token(cid, "system")
            joins = [("system", system)]
            if not args.system_only:
                joins.append((f"streaming-{cid}", h.token(cid, f"streaming-{cid}")))
            sockets.append((f"/websocket?vsn=2.0.0&userToken={system}", joins))
        options = ["-c", str(args.concurrency), "-m", str(args.max_seconds),
                   "-p", "system", "-n", str(args.clients), *(["-z"] if args.deflate else [])]
        client = h.LoadClients(stage.port, sockets, options, f"idle-{target}")
        stage.stop_later(client.kill)
        profiler = h.start_profiler(server.pid, args.timeout, args.py_spy) if args.py_spy and target == "ours" else None
        joined = client.wait_event("JOINED", args.timeout)
        presence = client.wait_event("PRESENCE", max(0.0, args.timeout - (joined or args.timeout)))
        storm = client.stats()
        storm_server = server.usage()
        # with workers, /metrics is answered by whichever worker took the request: one worker's count
        one_process = target == "ours" and (args.workers or 1) == 1
        server_joins = h.joins_accepted(stage.port) if one_process else None
        machine = h.busy_cores(machine_before, h.machine_busy())
        time.sleep(args.settle)
        settled = server.usage()
        samples = sampler.stop()
        result = client.finish()
        if profiler is not None:
            profiler.send_signal(signal.SIGINT)  # py-spy writes its profile on Ctrl-C
            profiler.wait(timeout=60)
    return {
        "target": target,
        "clients": args.clients,
        "channels": "system" if args.system_only else "system+streaming",
        "all_joined_s": joined,
        "all_full_presence_s": presence,
        "joined_conns": result["joined_conns"],
        "full_presence_conns": result["full_presence_conns"],
        "open_at_end": result["open"],
        "clients_dropped": result["closed_by_server"],
        "connect_errors": result["connect_errors"] + result["handshake_errors"],
        "join_errors": result["join_errors"],
        "server_joins_accepted": server_joins,
        "server_frames_sent": result["frames_in"],
        "server_bytes_sent": result["bytes_in"],
        "server_frames_during_storm": storm["frames_in"],
        "server_cpu_storm_s": (storm_server - base).cpu_s,
        "server_rss_idle_kb": base.rss_kb,
        "server_rss_storm_kb": storm_server.rss_kb,
        "server_rss_settled_kb": settled.rss_kb,
        "server_peak_rss_kb": samples["peak_rss_kb"],
        "server_killed_at_rss_limit": samples["killed_at_rss_limit"],
        "server_peak_cpu_share": samples["peak_cpu_share"],
        "rss_per_client_kb": None if samples["killed_at_rss_limit"] else (settled.rss_kb - base.rss_kb) / args.clients,
        "client_cpu_s": result["cpu_user_s"] + result["cpu_sys_s"],
        "machine_cores": os.cpu_count(),
        "machine_busy_cores_storm": machine,
        "client": result,
    }


def summary(r: dict) -> str:
    fmt = lambda x: "not reached" if x is None else f"{x:.2f} s"  # noqa: E731
    accepted = "" if r["server_joins_accepted"] is None else f" (the service accepted {r['server_joins_accepted']})"
    return (
        f"{r['target']:>9}: {r['clients']} clients on {r['channels']}: all joined {fmt(r['all_joined_s'])} ({r['joined_conns']} of {r['clients']}), full system presence "
        f"{fmt(r['all_full_presence_s'])} ({r['full_presence_conns']} of {r['clients']}), dropped {r['clients_dropped']}, "
        f"connect errors {r['connect_errors']}, join errors {r['join_errors']}{accepted}\n"
        f"           server sent {r['server_frames_sent']} frames / {r['server_bytes_sent'] / 1e6:.1f} MB, "
        f"CPU {r['server_cpu_storm_s']:.2f} s for the storm, RSS {r['server_rss_settled_kb'] / 1024:.1f} MB settled "
        f"({r['rss_per_client_kb'] or 0:.1f} KB/client), peak {(r['server_peak_rss_kb'] or 0) / 1024:.0f} MB"
        f"{' (KILLED at the RSS limit)' if r['server_killed_at_rss_limit'] else ''}; load client CPU {r['client_cpu_s']:.2f} s; "
        f"machine busy {r['machine_busy_cores_storm']:.2f} of {r['machine_cores']} cores during the storm"
    )


def compare(ours: dict, ref: dict) -> dict:
    keys = ["all_joined_s", "all_full_presence_s", "rss_per_client_kb", "server_frames_sent", "server_cpu_storm_s"]
    return {k: h.ratio(ours[k], ref[k]) for k in keys}


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = h.argument_parser(__doc__, "during the storm")
    p.add_argument("--clients", "-n", type=int, default=2000)
    p.add_argument("--concurrency", type=int, default=200, help="client handshakes in flight")
    p.add_argument("--timeout", type=float, default=120, help="seconds allowed to join and get full presence")
    p.add_argument("--settle", type=float, default=5, help="seconds after the storm before RSS is read")
    p.add_argument("--system-only", action="store_true", help="join only system, no streaming-<id> channels")
    p.add_argument("--deflate", action="store_true",
                   help="clients offer permessage-deflate, as browsers do (server bytes sent are then wire bytes)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    h.prepare()
    h.run_and_report("idle", args, run, compare, summary)


if __name__ == "__main__":
    main()
