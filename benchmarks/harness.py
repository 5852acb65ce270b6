"""
What the benchmarks share: a private redis-server, the two services under test, the C load
client, tokens, and CPU/RSS read from /proc.

Everything is started on loopback on free ports, bounded in time, and stopped on exit.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import queue
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import jwt

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CACHE = HERE / ".cache"
LOGS = CACHE / "logs"
SECRET = "bench-secret-0123456789abcdef0123456789"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


def _die_with_parent() -> None:
    """In the child: own process group, and SIGTERM when the benchmark dies, even by SIGKILL."""
    os.setsid()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def prepare() -> None:
    """Raise the descriptor limit and make SIGTERM unwind so every ``finally`` stops its process."""
    raise_fd_limit()

    def terminate(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminate)


def machine_busy() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine, to tell when something else was running."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


def busy_cores(start: tuple[int, int], end: tuple[int, int]) -> float:
    """Cores the whole machine kept busy between two ``machine_busy()`` readings."""
    total = end[1] - start[1]
    return os.cpu_count() * (end[0] - start[0]) / total if total else 0.0


def raise_fd_limit() -> None:
    """10,000 sockets need more descriptors than the usual soft limit; children inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 30, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before listening on {port}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {port} after {timeout} s")


# ---- /proc ----


def process_tree(pid: int) -> list[int]:
    """``pid`` and its live descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(children.get(p, []))
    return tree


@dataclass
class Usage:
    """CPU seconds (user and system) and resident memory of a process tree at one instant."""

    user_s: float
    sys_s: float
    rss_kb: int

    @property
    def cpu_s(self) -> float:
        return self.user_s + self.sys_s

    def __sub__(self, other: Usage) -> Usage:
        return Usage(self.user_s - other.user_s, self.sys_s - other.sys_s, self.rss_kb - other.rss_kb)


def usage(pid: int) -> Usage:
    user, system, rss = 0, 0, 0
    for p in process_tree(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        user += int(fields[11])  # utime, stime of the live process
        system += int(fields[12])
        rss += int(fields[21]) * PAGE_KB
    return Usage(user / CLK_TCK, system / CLK_TCK, rss)


# ---- processes ----


class Proc:
    """A child process that logs to a file and is killed, with its group, on stop."""

    def __init__(self, name: str, args: list[str], env: dict[str, str] | None = None) -> None:
        LOGS.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.log_path = LOGS / f"{name}.log"
        self.log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            args, stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=LOGS, preexec_fn=_die_with_parent
        )
        self.pid = self.process.pid

    def usage(self) -> Usage:
        return usage(self.pid)

    def stop(self, timeout: float = 10) -> None:
        if self.process.poll() is None:
            os.killpg(self.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.pid, signal.SIGKILL)
                self.process.wait()
        self.log.close()


@contextmanager
def redis_server() -> Iterator[tuple[str, Proc]]:
    """A private redis-server on a free port (never 6379); yields its URL and process."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server not found")
    port = free_port()
    proc = Proc(
        f"redis-{port}",
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--maxclients", "30000"],
    )
    try:
        wait_for_port(port, process=proc.process)
        yield f"redis://127.0.0.1:{port}", proc
    finally:
        proc.stop()


def start_ours(port: int, redis_url: str, extra: list[str] | None = None, env: dict[str, str] | None = None) -> Proc:
    """``twistd -n tangram-channel`` from the venv running this script, on this tree's code; ``env`` adds settings."""
    twistd = str(Path(sys.executable).parent / "twistd")
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    args = [twistd, "-n", "--pidfile", "", "--logfile", "-", "tangram-channel",
            "--listen", f"tcp:{port}:interface=127.0.0.1", "--redis-url", redis_url,
            "--jwt-secret", SECRET, "--embedded-redis", "false", *(extra or [])]
    proc = Proc(f"ours-{port}", args, env)
    wait_for_port(port, process=proc.process)
    return proc


def start_reference(port: int, redis_url: str) -> Proc:
    """Tangram 0.6.0's compiled channel service, alone in its process."""
    args = [sys.executable, str(HERE / "reference.py"), "--port", str(port), "--redis-url", redis_url,
            "--jwt-secret", SECRET]
    proc = Proc(f"reference-{port}", args)
    wait_for_port(port, timeout=60, process=proc.process)
    return proc


def start_target(target: str, port: int, redis_url: str, workers: int | None = None) -> Proc:
    """Ours (with ``--workers`` when given; the reference has no such setting) or the reference."""
    if target == "ours":
        return start_ours(port, redis_url, ["--workers", str(workers)] if workers else None)
    return start_reference(port, redis_url)


@dataclass
class Stage:
    """What ``served`` started: Redis, the service's port and process, and what stops with them."""

    redis_url: str
    redis: Proc
    port: int
    server: Proc
    cleanup: ExitStack

    def stop_later(self, stop: Callable[[], object]) -> None:
        """Call ``stop`` when the stage ends (last registered, first called; before the server stops)."""
        self.cleanup.callback(stop)


@contextmanager
def served(target: str, workers: int | None = None) -> Iterator[Stage]:
    """A private Redis and ``target`` on a free port, idle for a second; on exit, whatever was
    registered with ``stop_later``, then the server, then Redis are stopped."""
    with redis_server() as (redis_url, redis), ExitStack() as cleanup:
        port = free_port()
        server = start_target(target, port, redis_url, workers)
        cleanup.callback(server.stop)
        time.sleep(1)
        yield Stage(redis_url, redis, port, server, cleanup)


# ---- tokens and the load client ----


def joins_accepted(port: int) -> int | None:
    """Ours only: the joins the service says it accepted (``/metrics``), None if it cannot say.

    Beside the load client's own count, it tells a join the service never answered from
    a reply the client lost."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("tangram_channel_joins_total "):
            return int(float(line.split()[1]))
    return None


def token(client_id: str, channel: str) -> str:
    now = int(time.time())
    claims = {"id": client_id, "channel": channel, "iat": now, "exp": now + 3600}
    return jwt.encode(claims, SECRET, algorithm="HS256")


def build_client() -> Path:
    """Compile loadclient.c with the machine's gcc when the binary is missing or stale."""
    source, binary = HERE / "loadclient.c", CACHE / "loadclient"
    if not binary.exists() or binary.stat().st_mtime < source.stat().st_mtime:
        CACHE.mkdir(parents=True, exist_ok=True)
        subprocess.run(["gcc", "-O2", "-Wall", "-o", str(binary), str(source), "-lz"], check=True)
    return binary


class LoadClient:
    """The C client as a subprocess; reads its event lines on a thread."""

    def __init__(self, port: int, sockets: list[tuple[str, list[tuple[str, str]]]], options: list[str],
                 name: str) -> None:
        binary = build_client()
        LOGS.mkdir(parents=True, exist_ok=True)
        spec = LOGS / f"{name}.spec"
        with open(spec, "w") as f:
            for path, joins in sockets:
                f.write("\t".join([path, *(x for pair in joins for x in pair)]) + "\n")
        self.stderr = open(LOGS / f"{name}.stderr", "wb")
        self.process = subprocess.Popen(
            [str(binary), "127.0.0.1", str(port), str(spec), *options],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr, text=True, bufsize=1,
            preexec_fn=_die_with_parent,
        )
        self.pid = self.process.pid
        self.lines: queue.Queue[str] = queue.Queue()
        self.events: dict[str, float] = {}
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put("EOF")

    def _next(self, timeout: float) -> str | None:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            return None
        word, _, rest = line.partition(" ")
        if word in ("CONNECTED", "JOINED", "PRESENCE"):
            self.events[word] = float(rest)
        return line

    def wait_event(self, word: str, timeout: float) -> float | None:
        """Seconds since client start at which ``word`` happened, or None after ``timeout``."""
        deadline = time.monotonic() + timeout
        while word not in self.events:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            line = self._next(min(left, 0.5))
            if line == "EOF":
                return None
        return self.events[word]

    def _command(self, command: str, answer: str, timeout: float = 30) -> dict:
        assert self.process.stdin is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self._next(deadline - time.monotonic())
            if line is None or line == "EOF":
                break
            if line.startswith(answer + " "):
                return json.loads(line[len(answer) + 1 :])
        raise RuntimeError(f"load client gave no {answer}")

    def stats(self) -> dict:
        return self._command("stats", "STATS")

    def finish(self) -> dict:
        result = self._command("quit", "RESULT", timeout=120)
        self.process.wait(timeout=30)
        self.stderr.close()
        return result

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


class LoadClients:
    """
    As many C clients as the sockets need, read as one: a process may not hold more
    descriptors than RLIMIT_NOFILE's hard limit (20,000 on the development machine), and
    a 20,000-client storm needs one more. Events come when every client has had them;
    counts are summed.
    """

    def __init__(self, port: int, sockets: list[tuple[str, list[tuple[str, str]]]], options: list[str],
                 name: str) -> None:
        per_client = max(1, resource.getrlimit(resource.RLIMIT_NOFILE)[1] - 64)
        chunks = [sockets[i:i + per_client] for i in range(0, len(sockets), per_client)]
        self.clients = [LoadClient(port, chunk, options, name if len(chunks) == 1 else f"{name}-{k}")
                        for k, chunk in enumerate(chunks)]

    def wait_event(self, word: str, timeout: float) -> float | None:
        deadline = time.monotonic() + timeout
        times = [client.wait_event(word, max(0.0, deadline - time.monotonic())) for client in self.clients]
        return None if None in times else max(t for t in times if t is not None)

    def stats(self) -> dict:
        return _summed([client.stats() for client in self.clients])

    def finish(self) -> dict:
        return _summed([client.finish() for client in self.clients])

    def kill(self) -> None:
        for client in self.clients:
            client.kill()


def _summed(results: list[dict]) -> dict:
    """The clients' numbers added up (what is not a number: the first client's)."""
    total = dict(results[0])
    for result in results[1:]:
        for key, value in result.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                total[key] += value
    return total


def drain(client: LoadClient, expected: int, quiet: float = 2.0, limit: float = 20.0) -> tuple[dict, float]:
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



def run_publisher(stage: Stage, name: str, options: list[str], args: argparse.Namespace) -> tuple[int, float, dict]:
    """
    ``publisher.py`` against the stage's Redis with ``options`` (what to publish to) at
    ``args.rate`` for ``args.duration`` s of ``args.payload_bytes``, in its own process;
    returns the messages published, the seconds it took, and its report with its CPU.
    """
    proc = Proc(name, [sys.executable, str(HERE / "publisher.py"), "--redis-port", str(urlsplit(stage.redis_url).port),
                       *options, "--rate", str(args.rate), "--duration", str(args.duration),
                       "--payload-bytes", str(args.payload_bytes), "--write-interval", str(args.write_interval)])
    stage.stop_later(proc.stop)
    start = time.monotonic()
    cpu = Usage(0, 0, 0)
    while proc.process.poll() is None and time.monotonic() - start < args.duration + 60:
        cpu = proc.usage()  # read while it lives: a finished process has no /proc entry
        time.sleep(0.2)
    proc.stop()
    lines = proc.log_path.read_text().splitlines()
    if proc.process.returncode != 0 or not lines:
        raise RuntimeError(f"the publisher failed: {' '.join(lines[-3:])}")
    report = json.loads(lines[-1])
    report["cpu_s"] = cpu.cpu_s
    report["cpu_share"] = cpu.cpu_s / report["seconds"] if report["seconds"] else None
    return report["published"], report["seconds"], report


def measure_deliveries(
    target: str,
    args: argparse.Namespace,
    sockets: list[tuple[str, list[tuple[str, str]]]],
    publish: Callable[[Stage], tuple[int, float, dict]],
    recipients: int,
    name: str,
    client_options: list[str] | None = None,
) -> dict:
    """
    Start ``target``, connect and join ``sockets``, run ``publish(stage)`` (it returns the
    messages published, the seconds it took and what else it has to say) and measure what
    was delivered, how late, and at what cost in the server's CPU and memory. Each message
    is expected by ``recipients`` sockets.
    """
    with served(target, args.workers) as stage:
        server = stage.server
        base = server.usage()
        options = ["-c", str(args.concurrency), "-m", str(args.max_seconds), *(client_options or [])]
        client = LoadClient(stage.port, sockets, options, name)
        stage.stop_later(client.kill)
        joined = client.wait_event("JOINED", args.join_timeout)
        if joined is None:
            stats = client.stats()
            raise RuntimeError(f"{target}: not all joined within {args.join_timeout} s: {stats}")
        time.sleep(args.settle)
        settled = server.usage()
        before_server, before_client, before_redis = server.usage(), usage(client.pid), stage.redis.usage()
        sampler = Sampler(server.pid, rss_limit_mb=args.rss_limit_mb)
        stage.stop_later(sampler.stop)
        machine_before = machine_busy()
        profiler = start_profiler(server.pid, args.duration, args.py_spy) if args.py_spy and target == "ours" else None
        published, publish_s, publisher = publish(stage)
        publish_end = time.monotonic()
        expected = published * recipients
        stats, last_delivery = drain(client, expected)
        after_server, after_client, after_redis = server.usage(), usage(client.pid), stage.redis.usage()
        samples = sampler.stop()
        machine = busy_cores(machine_before, machine_busy())
        result = client.finish()
        if profiler is not None:
            profiler.wait(timeout=60)
    cpu = after_server - before_server
    redis_cpu = after_redis - before_redis
    delivered = result["ticks"]
    window = publish_s + max(0.0, last_delivery - publish_end)
    return {
        "published": published,
        "publisher": publisher,
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
        # not part of the server's figure: what its private Redis spent meanwhile, so that
        # no work moved into Redis goes unseen
        "redis_cpu_us_per_delivery": 1e6 * redis_cpu.cpu_s / delivered if delivered else None,
        "server_cpu_share": cpu.cpu_s / window if window else None,
        "server_peak_cpu_share": samples["peak_cpu_share"],
        "server_cpu_share_timeline": samples["cpu_share_timeline"],
        "server_peak_rss_kb": samples["peak_rss_kb"],
        "server_rss_idle_kb": base.rss_kb,
        "server_rss_joined_kb": settled.rss_kb,
        "server_rss_end_kb": after_server.rss_kb,
        "rss_per_client_kb": (settled.rss_kb - base.rss_kb) / len(sockets),
        "client_cpu_s": (after_client - before_client).cpu_s,
        "client_cpu_share": (after_client - before_client).cpu_s / window if window else None,
        "machine_cores": os.cpu_count(),
        "machine_busy_cores": machine,
        "client": result,
    }


def pct(a: float, b: float) -> str:
    return f"{100 * a / b:.1f}%" if b else "n/a"


def ratio(ours: float | None, reference: float | None) -> float | None:
    """ours / reference, or None when either is missing or the reference is zero."""
    if ours is None or reference is None or reference == 0:
        return None
    return ours / reference


def times(x: float | None) -> str:
    """A ratio as ``1.23x``, or ``n/a`` when there is none."""
    return "n/a" if x is None else f"{x:.2f}x"


def targets(choice: str) -> list[str]:
    """The services a ``--target`` choice names, ours first."""
    return ["ours", "reference"] if choice == "both" else [choice]


def argument_parser(doc: str, profiled: str) -> argparse.ArgumentParser:
    """A parser with the options both benchmarks of ours against the reference take;
    ``profiled`` says when ``--py-spy`` samples."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", choices=["ours", "reference", "both"], default="both")
    p.add_argument("--max-seconds", type=int, default=600, help="hard lifetime of the load client")
    p.add_argument("--rss-limit-mb", type=float, default=8000,
                   help="kill the server past this RSS (the reference balloons)")
    p.add_argument("--py-spy", metavar="FILE", help=f"profile ours with py-spy {profiled} (collapsed stacks)")
    p.add_argument("--workers", type=int, help="ours only: run with --workers N (CPU/RSS count the whole tree)")
    p.add_argument("--repeat", type=int, default=1,
                   help="rounds of every target, alternating; the ratios' medians are reported too")
    p.add_argument("--json-only", action="store_true")
    p.add_argument("--write-interval", type=float, default=0.001,
                   help="the publisher's seconds between writes at least (0: a write per message due)")
    return p


def find_max(target: str, args: argparse.Namespace, run: Callable[[str, argparse.Namespace], dict],
             passes: Callable[[dict, float], bool]) -> dict:
    """
    The highest --rate (for --clients) at which ``run`` ``passes``: rates grow x1.5 from --rate
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


def report_max(benchmark: str, args: argparse.Namespace, run: Callable[[str, argparse.Namespace], dict],
               passes: Callable[[dict, float], bool]) -> dict:
    """``find_max`` for each ``--target``; prints the JSON report and a summary with the ratio."""
    found = {t: find_max(t, args, run, passes) for t in targets(args.target)}
    report: dict = {"benchmark": benchmark, "results": found}
    if len(found) == 2:
        report["ours_over_reference"] = ratio(found["ours"]["best_deliveries_per_s"],
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
    sys.stdout.flush()
    return report


def find_max_options(p: argparse.ArgumentParser) -> None:
    """The options of ``--find-max``."""
    p.add_argument("--find-max", action="store_true",
                   help="search the highest rate with 100%% delivered, none dropped and p99 <= --p99-ms")
    p.add_argument("--p99-ms", type=float, default=100)
    p.add_argument("--max-steps", type=int, default=8, help="growth steps of --find-max")
    p.add_argument("--bisect-steps", type=int, default=3, help="bisection steps of --find-max")


def run_and_report(
    benchmark: str,
    args: argparse.Namespace,
    run: Callable[[str, argparse.Namespace], dict],
    compare: Callable[[dict, dict], dict],
    summary: Callable[[dict], str],
    describe: Callable[[dict], str] | None = None,
) -> dict:
    """
    Run each ``--target`` in turn (``--repeat`` rounds of them), compare ours with the
    reference when both ran, print the JSON report and (unless ``--json-only``) a summary
    a target and the ratios, by ``describe`` or as ``key ratio`` pairs; with several
    rounds, each round's ratios and their medians. A target that fails still lets the
    other report.
    """
    rounds = [_round(args, run, compare) for _ in range(args.repeat)]
    report: dict = {"benchmark": benchmark, **rounds[0]} if len(rounds) == 1 else {"benchmark": benchmark, "rounds": rounds}
    compared = [r["ours_over_reference"] for r in rounds if "ours_over_reference" in r]
    if len(rounds) > 1 and compared:
        report["ours_over_reference"] = _medians(compared)
    print(json.dumps(report, indent=2))
    if not args.json_only:
        show = describe or (lambda c: ", ".join(f"{k} {times(v)}" for k, v in c.items()))
        for n, r in enumerate(rounds, 1):
            print(f"\nround {n} of {len(rounds)}" if len(rounds) > 1 else "")
            for result in r["results"].values():
                print(summary(result) if "error" not in result else f"{result['target']:>9}: FAILED: {result['error']}")
            if "ours_over_reference" in r:
                print("ours/reference: " + show(r["ours_over_reference"]))
        if len(rounds) > 1 and compared:
            print(f"\nmedians over {len(compared)} rounds, ours/reference: " + show(report["ours_over_reference"]))
    sys.stdout.flush()
    return report


def _medians(ratios: list[dict]) -> dict:
    """Per key, the median of the rounds' ratios (None where no round had one)."""
    medians = {}
    for key in ratios[0]:
        values = [r[key] for r in ratios if r[key] is not None]
        medians[key] = statistics.median(values) if values else None
    return medians


def _round(args: argparse.Namespace, run: Callable[[str, argparse.Namespace], dict],
           compare: Callable[[dict, dict], dict]) -> dict:
    """One run of each ``--target``, ours first, and their ratios when both ran."""
    results = {}
    for target in targets(args.target):
        try:
            results[target] = run(target, args)
        except Exception as e:  # one failed target still lets the other report
            results[target] = {"target": target, "error": str(e)}
    report: dict = {"results": results}
    if "error" not in results.get("ours", {"error": 1}) and "error" not in results.get("reference", {"error": 1}):
        report["ours_over_reference"] = compare(results["ours"], results["reference"])
    return report


def start_profiler(pid: int, seconds: float, output: str) -> subprocess.Popen:
    """py-spy sampling ``pid`` (and its subprocesses) for ``seconds`` into collapsed stacks."""
    py_spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if py_spy is None:
        raise SystemExit("py-spy not found: pip install py-spy")
    return subprocess.Popen(
        [py_spy, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--format", "raw",
         "--nonblocking", "--subprocesses", "--rate", "200", "--output", output],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


class Sampler:
    """Samples a process tree's usage every ``interval`` s on a thread: peak CPU share, peak RSS."""

    def __init__(self, pid: int, interval: float = 0.5, rss_limit_mb: float | None = None) -> None:
        self.pid = pid
        self.interval = interval
        self.rss_limit_kb = None if rss_limit_mb is None else rss_limit_mb * 1024
        self.limit_hit = False
        self.samples: list[tuple[float, Usage]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            now = usage(self.pid)
            self.samples.append((time.monotonic(), now))
            if self.rss_limit_kb is not None and now.rss_kb > self.rss_limit_kb and not self.limit_hit:
                # The reference grows by gigabytes in a join storm: stop it before the machine swaps.
                self.limit_hit = True
                try:
                    os.killpg(self.pid, signal.SIGKILL)
                except OSError:
                    pass
            self._stop.wait(self.interval)

    def stop(self) -> dict:
        """Peak CPU share over any sampling interval, mean share, peak RSS, and the CPU-share timeline."""
        self._stop.set()
        self._thread.join()
        shares = [
            (b[1].cpu_s - a[1].cpu_s) / (b[0] - a[0]) for a, b in zip(self.samples, self.samples[1:]) if b[0] > a[0]
        ]
        return {
            "peak_cpu_share": max(shares, default=None),
            "peak_rss_kb": max((u.rss_kb for _, u in self.samples), default=None),
            "killed_at_rss_limit": self.limit_hit,
            "cpu_share_timeline": [round(s, 2) for s in shares],
        }
