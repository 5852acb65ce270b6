"""
A Redis Sentinel deployment of the tests' own on free loopback ports: a primary, two
replicas and three sentinels, with short timeouts so that a failover takes seconds.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from .conftest import RedisServer, free_port, wait_for_port
from .e2e import RedisStream
from .waiting import wait_until

MASTER = "mymaster"


class SentinelSet:
    def __init__(self, binary: str, directory: Path) -> None:
        self.binary = binary
        self.directory = directory
        self.primary = RedisServer(binary, free_port())
        self.replicas = [
            replica_of(binary, self.primary, directory) for _ in range(2)
        ]
        self.sentinel_ports = [free_port() for _ in range(3)]
        self._sentinels: list[subprocess.Popen[bytes]] = []

    @property
    def servers(self) -> list[RedisServer]:
        return [self.primary, *self.replicas]

    def url(self, scheme: str = "redis+sentinel", credentials: str = "") -> str:
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)
        return f"{scheme}://{credentials}{hosts}/{MASTER}"

    def start(self) -> None:
        for server in self.servers:
            server.start()
        for replica in self.replicas:
            wait_until(lambda: replica.client().info("replication").get("master_link_status") == "up",
                       20, "a replica in sync")
        for port in self.sentinel_ports:
            self._sentinels.append(start_sentinel(self.binary, self.directory, port, self.primary.port))
        # a failover needs a majority of sentinels that know each other (by hello
        # messages, every 2 s) and the replicas
        wait_until(self._acquainted, 30, "three sentinels that know each other and both replicas")

    def _acquainted(self) -> bool:
        for port in self.sentinel_ports:
            state = self.sentinel(port).sentinel_master(MASTER)
            if state["num-other-sentinels"] != 2 or state["num-slaves"] != 2:
                return False
        return True

    def sentinel(self, port: int):  # -> redis.Redis
        import redis

        return redis.Redis(host="127.0.0.1", port=port)

    def primary_port(self) -> int:
        """The port of the primary the first sentinel names."""
        host, port = self.sentinel(self.sentinel_ports[0]).sentinel_get_master_addr_by_name(MASTER)
        return int(port)

    def server_at(self, port: int) -> RedisServer:
        return next(server for server in self.servers if server.port == port)

    def stop(self) -> None:
        for process in self._sentinels:
            process.kill()
            process.wait()
        for server in self.servers:
            server.kill()


def replica_of(binary: str, primary: RedisServer, directory: Path) -> RedisServer:
    """A replica (not started) of ``primary``; it writes the copy it loads in ``directory``, not the cwd."""
    port = free_port()
    return RedisServer(binary, port, ("--replicaof", "127.0.0.1", str(primary.port), "--dir", str(directory),
                                      "--dbfilename", f"replica-{port}.rdb"))


def start_sentinel(
    binary: str, directory: Path, port: int, primary_port: int, extra: str = ""
) -> subprocess.Popen[bytes]:
    """One sentinel watching the primary on ``primary_port`` (quorum 2), listening on ``port``."""
    conf = directory / f"sentinel-{port}.conf"  # sentinel rewrites its file: one each
    conf.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {directory}\n"
        f"logfile {directory / f'sentinel-{port}.log'}\n"
        f"sentinel monitor {MASTER} 127.0.0.1 {primary_port} 2\n"
        # above the sentinels' PING period (1 s), or a sentinel that has just switched
        # may take the new primary for down before its first PING
        f"sentinel down-after-milliseconds {MASTER} 2000\n"
        f"sentinel failover-timeout {MASTER} 10000\n"
        f"sentinel parallel-syncs {MASTER} 2\n{extra}"
    )
    process = subprocess.Popen([binary, str(conf), "--sentinel"], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    wait_for_port(port)
    return process


class Recorder(RedisStream):
    """
    A plugin-side ``PSUBSCRIBE`` on one server, confirmed before anything is published:
    what was published there, kept even when a failover closes it.
    """

    def __init__(self, port: int, pattern: str = "from:*") -> None:
        super().__init__(port, f"PSUBSCRIBE {pattern}\r\n".encode(), confirmed=b"psubscribe")
