"""
Running the real JavaScript clients from pytest: Node drivers in tests/js and the
``twistd`` service they talk to.

A driver prints ``{"step": ...}`` JSON lines and reads ``{"command": ...}`` lines (see
tests/js/lib.mjs). Tests are plain synchronous functions: the service runs as a
``twistd`` subprocess, Redis is driven with redis-py, and nothing here may skip: a
missing ``node``, ``npm ci`` or ``chromium`` is a failure with the command that fixes it.
"""

from __future__ import annotations

import http.server
import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from .conftest import JWT_SECRET, RedisServer, Twistd, free_port

JS_DIR = Path(__file__).resolve().parent / "js"
PLUGINS_DIR = Path(__file__).resolve().parent / "plugins"
# npm aliases in tests/js/package.json: Tangram's pin (1.8.9) and the newest (1.8.16)
PHOENIX_VERSIONS = [pytest.param("189", id="phoenix-1.8.9"), pytest.param("1816", id="phoenix-1.8.16")]
STEP_TIMEOUT = 30.0  # a guard against hangs, never an assertion about speed


def node_binary() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.fail("no node on PATH: install Node.js 20 (apt-get install nodejs npm)")
    if not (JS_DIR / "node_modules" / "phoenix1816").is_dir():
        pytest.fail("tests/js has no node_modules: run `npm ci` in tests/js (tests/run.sh does)")
    return node


def chromium_binary() -> str:
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("no chromium on PATH: apt-get install chromium (tests/run.sh does)")
    return chromium


def _step(line: str) -> dict[str, Any] | None:
    """The step a driver's stdout line reports, or None for any other output."""
    if not line.startswith("{"):
        return None
    try:
        step = json.loads(line)
    except ValueError:
        return None
    return step if isinstance(step, dict) and "step" in step else None


class DriverFailed(AssertionError):
    pass


class Driver:
    """
    One driver process (``node tests/js/SCRIPT`` or a Python plugin) and its step/command
    lines; other stdout lines become ``{"step": "stdout", "line": ...}``.
    """

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            argv,
            cwd=JS_DIR,
            env={**os.environ, **env},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.steps: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.seen: list[dict[str, Any]] = []
        self.stderr: list[str] = []
        threading.Thread(target=self._read_steps, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()

    def _read_steps(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            line = line.strip()
            step = _step(line)
            if step is not None:
                self.steps.put(step)
            elif line:
                self.steps.put({"step": "stdout", "line": line})
        self.steps.put(None)

    def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.stderr.append(line)

    def _explain(self, why: str) -> DriverFailed:
        return DriverFailed(f"{why}\nsteps so far: {self.seen}\nstderr:\n{''.join(self.stderr[-40:])}")

    def expect(self, step: str, where: Callable[[dict[str, Any]], bool] | None = None) -> dict[str, Any]:
        """
        The next step called ``step`` (and, given ``where``, satisfying it); the steps
        passed over are kept in ``seen``.
        """
        deadline = time.monotonic() + STEP_TIMEOUT
        while True:
            try:
                got = self.steps.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise self._explain(f"no step {step!r} within {STEP_TIMEOUT}s") from None
            if got is None:
                self.steps.put(None)
                raise self._explain(f"driver ended before step {step!r}")
            self.seen.append(got)
            if got["step"] == "failed":
                raise self._explain(f"driver failed: {got['error']}")
            if got["step"] == step and (where is None or where(got)):
                return got

    def _next_unread(self) -> dict[str, Any] | None:
        try:
            return self.steps.get_nowait()
        except queue.Empty:
            return None

    def send(self, command: str, **data: Any) -> None:
        self.type(json.dumps({"command": command, **data}))

    def type(self, line: str) -> None:
        """Write ``line`` to its standard input, as someone typing in its terminal."""
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def finish(self) -> None:
        """The driver exits 0 on its own."""
        try:
            code = self.process.wait(timeout=STEP_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise self._explain("driver did not exit") from None
        if code != 0:
            # the steps it reported after the last one expected say why
            time.sleep(0.2)  # let the reader threads take the last lines
            while (step := self._next_unread()) is not None:
                self.seen.append(step)
            raise self._explain(f"driver exited {code}")

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


class ServiceProcess:
    """
    ``twistd -n tangram-channel`` on a fixed free port, restartable on that port, with the
    drivers and Redis listeners that talk to it.
    """

    def __init__(self, start_twistd: Any, redis: RedisServer, **settings: Any) -> None:
        self.port = free_port()
        self.redis = redis
        self.args = [
            "--listen", f"tcp:{self.port}:interface=127.0.0.1", "--redis-url", redis.url,
            "--embedded-redis", "false",
        ]
        self.env = {"TANGRAM_CHANNEL_JWT_SECRET": JWT_SECRET, "TANGRAM_CHANNEL_DATETIME_INTERVAL": "0"}
        self.env.update({f"TANGRAM_CHANNEL_{k.upper()}": str(v) for k, v in settings.items()})
        self.start_twistd = start_twistd
        self.drivers: list[Driver] = []  # killed after the test
        self.listeners: list[Listener] = []  # closed after the test
        self.process: Twistd = self.start_twistd(*self.args, port=self.port, env=self.env)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def restart(self) -> None:
        """SIGTERM the service, then start a new one on the same port."""
        self.process.stop()  # its exit status is the operations tests' business
        self.process = self.start_twistd(*self.args, port=self.port, env=self.env)

    def driver(self, script: str, *args: str, **env: str) -> Driver:
        """``node tests/js/SCRIPT ARGS`` with SERVICE_URL and REDIS_PORT set."""
        environment = {"SERVICE_URL": self.url, "REDIS_PORT": str(self.redis.port), **env}
        if script == "browser.mjs":
            environment["CHROMIUM"] = chromium_binary()
        if script.endswith(".py"):
            argv = [sys.executable, "-u", str(PLUGINS_DIR / script), *args]
        else:
            argv = [node_binary(), str(JS_DIR / script), *args]
        self.drivers.append(Driver(argv, environment))
        return self.drivers[-1]

    def listener(self, pattern: str) -> Listener:
        """A redis-py PSUBSCRIBE on ``pattern``, made before this returns."""
        self.listeners.append(Listener(self.redis, pattern))
        return self.listeners[-1]

    def command(self, *argv: str) -> Driver:
        """Any other program (redis-cli, curl), its output lines as "stdout" steps."""
        self.drivers.append(Driver(list(argv), {}))
        return self.drivers[-1]


@pytest.fixture
def channel_service(twistd, flushed_redis):
    """``channel_service(**settings)``: a twistd service on the session Redis."""
    services: list[ServiceProcess] = []

    def start(**settings: Any) -> ServiceProcess:
        services.append(ServiceProcess(twistd, flushed_redis, **settings))
        return services[-1]

    yield start
    for service in services:
        for driver in service.drivers:
            driver.kill()
        for listener in service.listeners:
            listener.close()


class Listener:
    """A redis-py PSUBSCRIBE on what the clients publish (``from:<topic>:*``)."""

    def __init__(self, redis: RedisServer, pattern: str) -> None:
        self.pubsub = redis.client().pubsub()
        self.pubsub.psubscribe(pattern)
        assert self.pubsub.get_message(timeout=5)["type"] == "psubscribe"

    def next(self, channel: str) -> bytes:
        """The data of the next message on ``channel`` (others are skipped)."""
        deadline = time.monotonic() + STEP_TIMEOUT
        while time.monotonic() < deadline:
            message = self.pubsub.get_message(timeout=1)
            if message and message["channel"].decode() == channel:
                return message["data"]
        raise AssertionError(f"nothing published on {channel}")

    def close(self) -> None:
        self.pubsub.close()


class PageServer:
    """
    A tiny HTTP server on its own port (so its pages are another origin than the service):
    ``/`` is one HTML page from tests/js/pages, ``/phoenix.js`` the chosen phoenix build.
    """

    def __init__(self, page: str, phoenix: str) -> None:
        files = {
            "/": (JS_DIR / "pages" / page, "text/html"),
            "/phoenix.js": (JS_DIR / "node_modules" / f"phoenix{phoenix}" / "priv" / "static" / "phoenix.js",
                            "text/javascript"),
        }

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path, content_type = files.get(self.path.split("?")[0], (None, None))
                if path is None:
                    self.send_error(404)
                    return
                body = path.read_bytes()
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def page_server():
    """``page_server(page, phoenix)``: a PageServer, shut down after the test."""
    servers: list[PageServer] = []

    def start(page: str, phoenix: str) -> PageServer:
        servers.append(PageServer(page, phoenix))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def rejoins_after_restart(service: Any, driver: Any) -> dict[str, Any]:
    """
    The "restart" scenario: joined, presence, a broadcast; the service restarted; joined
    again with presence and broadcasts. What the client said of the close.
    """
    assert driver.expect("join") == {"step": "join", "count": 1, "status": "ok"}
    assert driver.expect("presence_state")["count"] == 1
    redis = service.redis.client()
    assert redis.publish("to:radar:news", '{"n": 1}') == 1
    assert driver.expect("broadcast") == {"step": "broadcast", "count": 1, "payload": {"n": 1}}

    service.restart()
    close: dict[str, Any] = driver.expect("close")
    rejoined = driver.expect("join")
    if rejoined.get("response") == {"reason": "redis unavailable"}:
        # the new process took the socket before it reached Redis (a few ms after it
        # listens): refused as in any outage, and phoenix.js rejoins on its own
        rejoined = driver.expect("join")
    assert rejoined["status"] == "ok", (rejoined, driver.seen)
    state = driver.expect("presence_state")
    assert state["count"] == 2 and len(state["keys"]) == 1
    assert redis.publish("to:radar:news", '{"n": 2}') == 1
    assert driver.expect("broadcast") == {"step": "broadcast", "count": 2, "payload": {"n": 2}}
    driver.send("done")
    driver.finish()
    return close


def presence_converges(driver: Any) -> list[Any]:
    """
    The "presence" scenario: alice's and bob's views agree (bob's two tabs are one key with
    two metas), shrink as bob's tabs leave one at a time, and end with alice alone.
    alice's presence events, as ``[kind, key, metas outside the change, metas changing]``.
    """
    converged = driver.expect("converged")
    assert converged["alice"] == converged["bob"] == {"alice": 1, "bob": 2}
    one_left = driver.expect("one-tab-left")
    assert one_left["alice"] == one_left["bob"] == {"alice": 1, "bob": 1}
    assert driver.expect("bob-gone")["alice"] == {"alice": 1}
    events: list[Any] = driver.expect("events")["alice"]
    assert [e for e in events if e[0] == "leave"] == [["leave", "bob", 1, 1], ["leave", "bob", 0, 1]]
    driver.finish()
    return events
