"""
The memory budget as a whole: one service, 500 joined clients, and hostile sockets
doing at once everything issue 13 found (huge joins, a ping flood, huge pushes, a
heartbeat flood, endless fragments) for 30 s. The service's memory stays under a
stated bound and every well-behaved client keeps getting every broadcast quickly.

The well-behaved clients are the benchmarks' C load client (one process, epoll): 500
clients in Python spent tens of milliseconds of their own on each broadcast, and their
latencies measured that. The attackers run in a process of their own (``tests/siege.py``),
so the figures are the service's, not the test's.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import pytest
import redis
from autobahn.websocket.utf8validator import Utf8Validator

from benchmarks.harness import LoadClient

from .conftest import ROOT
from .live import rss_kib, start_twistd, token
from .siege import TOPIC

CLIENTS = 500
RATE = 20
ATTACK_SECONDS = 30
# What the service may hold beyond its size with the clients joined: each of the five
# hostile sockets at most max_send_buffer (16 MiB) queued toward it and one incoming
# message of max_message_size (1 MiB) being read, plus the pushes in flight to Redis.
RSS_GROWTH_BOUND_MIB = 160
# Autobahn 25.9 and later validate UTF-8 and unmask in C (NVX); the older releases
# setup.cfg still allows do it in Python, where the attackers' megabytes a second cost
# the reactor tens of milliseconds at a time (p99 153 ms measured): there only a stall is
# bounded. README's limits say so.
ACCELERATED = Utf8Validator.__module__.startswith("autobahn.nvx")
P99_BOUND_MS = 100 if ACCELERATED else 1000


class _MachineStalls(threading.Thread):
    """The longest time this process went unscheduled while the attack ran.

    Here the siege's p99 is 3-6 ms; one CI run measured 120 ms (p50 6 ms, max 196 ms), and
    a test alone cannot tell a machine that stopped running its processes from a service
    that stalled. This thread shares no code and no socket with the service: a stall it
    saw too is the machine's and is added to the bound; a stall of the service alone is
    not, and fails the test.
    """

    TICK = 0.005

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.longest = 0.0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            before = time.monotonic()
            time.sleep(self.TICK)
            self.longest = max(self.longest, time.monotonic() - before - self.TICK)


def _publish(redis_port: int, published: list[int]) -> None:
    """A plugin: RATE broadcasts a second for ATTACK_SECONDS, each stamped with its publish time in microseconds."""
    plugin = redis.Redis(port=redis_port)
    start = time.monotonic()
    for seq in range(RATE * ATTACK_SECONDS):
        time.sleep(max(0.0, start + seq / RATE - time.monotonic()))
        stamp = {"t": time.time_ns() // 1000, "seq": seq, "pad": "x" * 150}
        plugin.publish(f"to:{TOPIC}:tick", json.dumps(stamp))
        published.append(seq)
    plugin.close()


def _all_delivered(clients: LoadClient, published: int, limit: float = 10.0) -> dict:
    deadline = time.monotonic() + limit
    stats = clients.stats()
    while stats["ticks_min_per_conn"] < published and time.monotonic() < deadline:
        time.sleep(0.1)
        stats = clients.stats()
    return stats


@pytest.mark.alone
def test_500_clients_keep_their_broadcasts_while_hostile_sockets_attack(twistd, flushed_redis) -> None:
    service = start_twistd(twistd, "--redis-url", flushed_redis.url)
    pid = service.process.pid
    sockets = [("/websocket?vsn=2.0.0", [(TOPIC, token(TOPIC, f"good{i}"))]) for i in range(CLIENTS)]
    # heartbeats every 30 s, as phoenix.js, each socket on its own timer from its handshake:
    # the 500 are spread over the time the clients took to join. Sent all at once (the
    # load client once looked for due beats once a second), the burst under attack held
    # broadcasts up to 210 ms, and p99 measured that burst in one run of three.
    clients = LoadClient(service.port, sockets, ["-c", "50", "-m", "240", "-b", "30", "-e", "tick"], name="siege")
    attack = None
    try:
        assert clients.wait_event("JOINED", 60) is not None, clients.stats()
        settled = rss_kib(pid)
        # Real attackers run on machines of their own: on the test's two cores they run
        # below the service's priority, so the latency bound measures the service and not
        # the scheduler's share for the attack. They still must send (asserted below).
        attack = subprocess.Popen(
            ["nice", "-n", "10", sys.executable, "-m", "tests.siege",
             "--port", str(service.port), "--duration", str(ATTACK_SECONDS)],
            cwd=ROOT, stdout=subprocess.PIPE, text=True,
        )
        published: list[int] = []
        plugin = threading.Thread(target=_publish, args=(flushed_redis.port, published), daemon=True)
        plugin.start()
        stalls = _MachineStalls()
        stalls.start()
        peak = settled
        while attack.poll() is None or plugin.is_alive():
            peak = max(peak, rss_kib(pid))
            time.sleep(0.1)
        stalls.done.set()
        attacks = json.loads(attack.stdout.read())
        _all_delivered(clients, len(published))
        summary = clients.finish()
    finally:
        clients.kill()
        if attack is not None and attack.poll() is None:
            attack.kill()
    growth_mib = (peak - settled) / 1024
    latency = summary["latency_us"]
    print(f"RSS {settled // 1024} MiB settled, {peak // 1024} MiB at peak; broadcasts {len(published)}, "
          f"latency p50 {latency['p50'] / 1000:.1f} ms, p99 {latency['p99'] / 1000:.1f} ms, "
          f"max {latency['max'] / 1000:.1f} ms; the machine's longest stall {stalls.longest * 1000:.1f} ms; "
          f"attacks: {attacks}")
    assert service.process.poll() is None, "the service died"
    for kind, did in attacks.items():
        assert did["connections"] >= 1 and did["bytes_sent"] > 1_000_000, (kind, did)
    assert summary["closed_by_server"] == 0, "well-behaved clients were dropped"
    assert len(published) == RATE * ATTACK_SECONDS
    assert summary["ticks_min_per_conn"] == len(published), "a well-behaved client lost broadcasts"
    assert latency["p99"] < (P99_BOUND_MS + stalls.longest * 1000) * 1000, (latency, stalls.longest)
    assert growth_mib < RSS_GROWTH_BOUND_MIB, f"grew by {growth_mib:.0f} MiB"
