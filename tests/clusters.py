"""
A Redis Cluster of the tests' own on free loopback ports: three primaries and three
replicas made by ``redis-cli --cluster create``, with a node timeout of a second so
that a failover takes seconds. Each node keeps its files in its own directory.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from .conftest import RedisServer, free_port
from .waiting import wait_until

PRESENCE_TAG = "{tangram-channel}"  # naming.KEY_PREFIX's hash tag


class ClusterSet:
    def __init__(self, binary: str, directory: Path) -> None:
        self.nodes = []
        ports = distinct_ports(12)  # a client port and a bus port each
        for port, bus in zip(ports[:6], ports[6:]):
            home = directory / f"node-{port}"
            home.mkdir()
            self.nodes.append(RedisServer(binary, port, (
                "--cluster-enabled", "yes", "--cluster-config-file", str(home / "nodes.conf"),
                "--cluster-node-timeout", "1000", "--dir", str(home),
                # the bus port by default is port + 10000, past 65535 for a high free port
                "--cluster-port", str(bus),
            )))
        self.cli = shutil.which("redis-cli") or str(Path(binary).with_name("redis-cli"))

    def url(self, scheme: str = "redis+cluster", credentials: str = "") -> str:
        return f"{scheme}://{credentials}" + ",".join(f"127.0.0.1:{node.port}" for node in self.nodes)

    @property
    def alive(self) -> list[RedisServer]:
        return [node for node in self.nodes if node.process is not None]

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        subprocess.run(
            [self.cli, "--cluster", "create", *(f"127.0.0.1:{node.port}" for node in self.nodes),
             "--cluster-replicas", "1", "--cluster-yes"],
            check=True, capture_output=True, timeout=60,
        )
        wait_until(self.settled, 30, "every node to see the cluster ok with all replicas")

    def settled(self) -> bool:
        """Every live node says the cluster is ok and knows a primary with a replica for each slot range."""
        for node in self.alive:
            client = node.client()
            if client.cluster("info")["cluster_state"] != "ok":
                return False
            slots = client.execute_command("CLUSTER", "SLOTS")
            if len(slots) != 3 or any(len(entry) < 4 for entry in slots):
                return False
        return True

    def presence_primary(self) -> RedisServer:
        """The primary holding the presence slot, as a live node sees it."""
        return self.server_at(self._owner_port())

    def _owner_port(self, asking: RedisServer | None = None) -> int:
        client = (asking or self.alive[0]).client()
        slot = client.execute_command("CLUSTER", "KEYSLOT", PRESENCE_TAG)
        for start, end, primary, *_ in client.execute_command("CLUSTER", "SLOTS"):
            if start <= slot <= end:
                return int(primary[1])
        raise AssertionError("no primary for the presence slot")

    def replicas_of(self, primary: RedisServer) -> list[RedisServer]:
        info = primary.client().info("replication")
        ports = {int(value["port"]) for key, value in info.items() if key.startswith("slave") and key[5:].isdigit()}
        return [node for node in self.nodes if node.port in ports]

    def server_at(self, port: int) -> RedisServer:
        return next(node for node in self.nodes if node.port == port)

    def promoted(self, old: RedisServer, asking: RedisServer | None = None) -> RedisServer | None:
        """The node that now holds the presence slot (as ``asking`` sees it), once it is not ``old``."""
        try:
            port = self._owner_port(asking)
        except Exception:
            return None
        return None if port == old.port else self.server_at(port)

    def stop(self) -> None:
        for node in self.nodes:
            node.kill()


def distinct_ports(n: int) -> list[int]:
    """``n`` free loopback ports, all different."""
    ports: list[int] = []
    while len(ports) < n:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports
