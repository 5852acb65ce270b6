"""
``workers = N``: a supervising parent and N full nodes sharing one port, run as real
``twistd`` processes against a real Redis.
"""

from __future__ import annotations

import json
import os
import re
import signal
import urllib.request

from tangram_channel.tap import Options, worker_command

from .e2e import forge_token
from .live import RawSocket, process_gone, start_twistd, token
from .waiting import wait_until


def worker_pids(parent_pid: int) -> set[int]:
    """The children of the pool's parent, read from /proc."""
    children = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == parent_pid and fields[0] != "Z":
                children.add(int(entry))
    return children


def listeners(port: int) -> int:
    """How many sockets listen on ``port`` (each worker has its own, with SO_REUSEPORT), from /proc/net."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):  # a kernel without IPv6
            continue
        with open(table) as f:
            for line in f.read().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    count += 1
    return count


def node_of(entry: bytes) -> str:
    return entry.split(b"\n", 1)[0].decode()


def test_workers_share_the_port_restart_and_stop_together(twistd, flushed_redis):
    """
    Two workers answer /token and sockets on one port; presence is one view; a killed
    worker is started again and its presences are withdrawn by the survivor; SIGTERM to
    the parent stops every worker and exits 0.
    """
    redis = flushed_redis.client()
    proc = start_twistd(
        twistd, "--redis-url", flushed_redis.url, workers=2, node_timeout=2, datetime_interval=0
    )
    workers = wait_until(lambda: len(worker_pids(proc.process.pid)) == 2 and worker_pids(proc.process.pid), what="2 workers")
    # both workers reach Redis (the parent only supervises)
    wait_until(lambda: proc.log().count("connected to Redis") >= 2, what="workers connected")

    for _ in range(10):
        request = urllib.request.Request(
            f"http://127.0.0.1:{proc.port}/token",
            data=json.dumps({"channel": "room"}).encode(),
            headers={"content-type": "application/json"},
        )
        assert json.load(urllib.request.urlopen(request, timeout=5))["channel"] == "room"

    # the kernel spreads connections over the listeners by a hash of their addresses: if
    # that hash were even, a dozen joins would miss a worker one time in 2,048 (CI saw it
    # once), so a few more are made while one worker has them all
    wait_until(lambda: listeners(proc.port) == 2, what="both workers listening")
    clients: list[RawSocket] = []
    nodes: set[str] = set()
    while len(clients) < 12 or (len(nodes) < 2 and len(clients) < 64):
        client = RawSocket(proc.port)
        client.join_ok("room", token("room", f"user{len(clients)}"))
        clients.append(client)
        nodes = {node_of(value) for value in redis.hgetall("{tangram-channel}:presence:room").values()}
    joined = len(clients)
    assert len(redis.hgetall("{tangram-channel}:presence:room")) == joined
    assert len(nodes) == 2, "the kernel spread the sockets over both workers"

    # one presence across workers: a new joiner's state lists everyone, wherever they are
    newcomer = RawSocket(proc.port)
    _, state = newcomer.join_ok("room", token("room", "newcomer"))
    assert set(state) == {f"user{n}" for n in range(joined)} | {"newcomer"}
    newcomer.close()
    wait_until(lambda: len(redis.hgetall("{tangram-channel}:presence:room")) == joined, what="newcomer withdrawn")

    victim = sorted(workers)[0]
    os.kill(victim, signal.SIGKILL)
    # restarted: two workers again, the victim not among them
    wait_until(lambda: victim not in worker_pids(proc.process.pid) and len(worker_pids(proc.process.pid)) == 2,
               what="the killed worker replaced")
    # the survivor withdraws the dead node's presences
    survivors = wait_until(
        lambda: (lambda e: e if len({node_of(v) for v in e.values()}) == 1 else None)(
            redis.hgetall("{tangram-channel}:presence:room")
        ),
        what="dead node's presences withdrawn",
    )
    assert 0 < len(survivors) < joined

    all_workers = worker_pids(proc.process.pid)
    assert proc.stop() == 0
    assert len(all_workers) == 2 and all(process_gone(pid) for pid in all_workers)  # the parent waited for them
    assert redis.hgetall("{tangram-channel}:presence:room") == {}
    for client in clients:
        client.close()


def test_workers_stop_when_the_parent_is_killed(twistd, flushed_redis):
    """SIGKILL to the parent leaves no orphan: each worker sees its stdin close and shuts down."""
    proc = start_twistd(twistd, "--redis-url", flushed_redis.url, workers=2, datetime_interval=0)
    workers = wait_until(
        lambda: len(worker_pids(proc.process.pid)) == 2 and worker_pids(proc.process.pid), what="2 workers"
    )
    client = RawSocket(proc.port)
    client.join_ok("room", token("room", "orphan-check"))
    proc.process.kill()
    proc.process.wait()
    wait_until(lambda: all(process_gone(pid) for pid in workers), what="the workers gone")
    # they shut down cleanly (their log went to the dead parent): presence withdrawn,
    # the socket closed with 1012
    assert flushed_redis.client().hgetall("{tangram-channel}:presence:room") == {}
    assert client.close_code() == 1012
    client.close()


def test_secrets_reach_workers_through_their_environment_not_their_command_line(twistd, flushed_redis):
    """
    ``ps`` shows every user the command lines of the parent and the workers: secrets
    given there go to the workers as TANGRAM_CHANNEL_* variables, and the parent warns.
    """
    secret, admin_key = "cli-secret-long-enough-for-hs256-0123456789", "cli-admin-key-0123456789"
    proc = start_twistd(
        twistd, "--redis-url", flushed_redis.url, "--jwt-secret", secret, "--admin-key", admin_key,
        workers=2, datetime_interval=0,
    )
    workers = wait_until(
        lambda: len(worker_pids(proc.process.pid)) == 2 and worker_pids(proc.process.pid), what="2 workers"
    )
    wait_until(lambda: proc.log().count("connected to Redis") >= 2, what="workers connected")
    for pid in workers:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            command_line = f.read()
        assert b"--worker" in command_line
        assert secret.encode() not in command_line and admin_key.encode() not in command_line
    warning = "--jwt-secret is visible to every user of this machine (ps, /proc): set TANGRAM_CHANNEL_JWT_SECRET"
    assert warning in proc.log()
    assert "--admin-key is visible" in proc.log()
    assert secret not in proc.log() and admin_key not in proc.log()

    # each token is minted and used on connections of their own, which the kernel spreads
    # over both workers: every one verifies, so both hold the secret given to the parent
    for _ in range(8):
        request = urllib.request.Request(
            f"http://127.0.0.1:{proc.port}/token",
            data=json.dumps({"channel": "admin"}).encode(),
            headers={"content-type": "application/json", "authorization": f"Bearer {admin_key}"},
        )
        minted = json.load(urllib.request.urlopen(request, timeout=5))
        client = RawSocket(proc.port)
        client.join_ok("admin", minted["token"])
        client.join_ok("room", forge_token(secret, "room", "forged-by-the-test"))
        client.close()


def test_worker_log_lines_are_relayed_at_their_level_with_one_timestamp(twistd, flushed_redis, tmp_path):
    """
    A worker's warning (an unknown config key) shows in the parent's log once per worker,
    as a warning, with the parent's timestamp only; its info lines stay info.
    """
    (tmp_path / "tangram.toml").write_text("[channel]\nnot_a_key = 1\n")
    proc = start_twistd(twistd, "--redis-url", flushed_redis.url, workers=2)
    wait_until(lambda: proc.log().count("] connected to Redis") >= 2, what="both workers to reach Redis")
    lines = proc.log().splitlines()
    timestamp = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d")
    relayed = [line for line in lines if "[worker " in line]
    assert relayed and all(len(timestamp.findall(line)) == 1 for line in relayed), relayed
    for index in (0, 1):
        warned = [line for line in relayed if f"[worker {index}] tangram.toml: unknown key [channel] not_a_key" in line]
        assert len(warned) == 1 and "[tangram_channel.tap#warn]" in warned[0], relayed
        connected = [line for line in relayed if f"[worker {index}] connected to Redis" in line]
        assert connected and all("#info]" in line for line in connected), relayed
    assert proc.stop() == 0


def test_a_worker_command_carries_no_secret(monkeypatch):
    """The worker's arguments, read with its environment, give the parent's settings."""
    options = Options()
    options.parseOptions([
        "--jwt-s", "s3cret", "--admin-key=k3y", "--redis-url", "redis://:pa55@127.0.0.1:6390/2",
        "--listen", "tcp:2347", "--listen", "tcp:2348", "--workers", "3", "--idle-timeout", "30",
    ])
    arguments, environment = worker_command(options)
    assert not any(secret in argument for argument in arguments for secret in ("s3cret", "k3y", "pa55"))
    assert environment == {
        "TANGRAM_CHANNEL_JWT_SECRET": "s3cret",
        "TANGRAM_CHANNEL_ADMIN_KEY": "k3y",
        "TANGRAM_CHANNEL_REDIS_URL": "redis://:pa55@127.0.0.1:6390/2",
    }
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    worker = Options()
    worker.parseOptions(arguments)
    assert worker["worker"] and worker["workers"] == "1" and worker["listen"] == ["tcp:2347", "tcp:2348"]
    assert worker["idle-timeout"] == "30" and worker["embedded-redis"] == "false"
