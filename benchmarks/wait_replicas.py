"""
What ``redis_wait_replicas = 1`` costs a push: a private primary and one replica on
loopback, a service started with 0 and with 1 (twice each, alternating), and one client
that pushes 2,000 messages one at a time (each waits for its reply) and then 2,000 at once.

    PYTHONPATH=. .venv/bin/python benchmarks/wait_replicas.py
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tangram_channel.embedded import find_redis_server  # noqa: E402
from tests.conftest import RedisServer, Twistd, free_port  # noqa: E402
from tests.live import SECRET, RawSocket, reply_status, token  # noqa: E402
from tests.sentinels import replica_of  # noqa: E402
from tests.waiting import wait_until  # noqa: E402

PUSHES = 2000


def measure(primary: RedisServer, wait: int, logs: Path) -> str:
    port = free_port()
    env = {
        "TANGRAM_CHANNEL_JWT_SECRET": SECRET, "TANGRAM_CHANNEL_EMBEDDED_REDIS": "false",
        "TANGRAM_CHANNEL_REDIS_WAIT_REPLICAS": str(wait), "TANGRAM_CHANNEL_DATETIME_INTERVAL": "0",
        "TANGRAM_CHANNEL_MESSAGE_RATE": "0",
    }
    service = Twistd(["--port", str(port), "--redis-url", primary.url], logs / f"service-{port}.log", env)
    service.start(port)
    try:
        service.wait_for_log("connected to Redis")
        client = RawSocket(port)
        join_ref, _ = client.join_ok("room", token("room", "bench"))
        start = time.perf_counter()
        for i in range(PUSHES):
            assert reply_status(client.reply(client.push("room", "m", {"i": i}, join_ref))) == "ok"
        one_at_a_time = (time.perf_counter() - start) / PUSHES * 1e6
        start = time.perf_counter()
        refs = [client.push("room", "m", {"i": i}, join_ref) for i in range(PUSHES)]
        assert all(reply_status(client.reply(ref)) == "ok" for ref in refs)
        at_once = time.perf_counter() - start
    finally:
        service.stop()
    return (f"redis_wait_replicas={wait}: one at a time {one_at_a_time:.0f} us a push; "
            f"{PUSHES} at once {at_once * 1000:.0f} ms ({PUSHES / at_once:.0f}/s)")


def main() -> None:
    binary = find_redis_server()
    assert binary, "no redis-server"
    primary = RedisServer(binary, free_port())
    primary.start()
    logs = Path(tempfile.mkdtemp(prefix="wait-replicas-"))
    replica = replica_of(binary, primary, logs)
    replica.start()
    try:
        wait_until(lambda: primary.client().info("replication").get("connected_slaves") == 1, 20, "the replica")
        for wait in (0, 1, 0, 1):
            print(measure(primary, wait, logs), flush=True)
    finally:
        primary.kill()
        replica.kill()


if __name__ == "__main__":
    main()
