"""
Log output (issue 7, point 3): ``--log-format json`` makes every line of twistd's
``--logfile`` one JSON object with level and event; ``log_level`` filters; tokens never
appear. The unit tests pin the line format itself.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import pytest_twisted
from twisted.logger import LogLevel, Logger
from twisted.python.failure import Failure

from tangram_channel.logs import json_line, read_json_line

from .conftest import ROOT, free_port, wait_for_port
from .e2e import mint
from .test_twistd import SECRET, join_and_receive, start_daemon, stop_daemon
from .waiting import eventually, wait_until

TWISTD = str(Path(sys.executable).parent / "twistd")


def event(**fields) -> dict:
    """A log event as twisted.logger makes it, caught in a list."""
    caught: list[dict] = []
    Logger(namespace="tangram_channel.test", observer=caught.append).emit(
        fields.pop("level", LogLevel.info), fields.pop("format"), **fields
    )
    return caught[0]


def test_json_line_has_time_level_namespace_event_and_fields():
    """One line of JSON: the formatted event text and the event's own fields."""
    line = json_line(event(format="closed {count} sockets", count=3, level=LogLevel.warn))
    assert line.endswith("\n") and line.count("\n") == 1
    record = json.loads(line)
    assert record["level"] == "warn"
    assert record["namespace"] == "tangram_channel.test"
    assert record["event"] == "closed 3 sockets"
    assert record["fields"] == {"count": 3}
    assert record["time"].endswith("+00:00")


def test_json_line_masks_fields_named_like_secrets_and_keeps_odd_values_as_repr():
    """A field called token (or secret, password, key) never reaches the line; objects become repr."""
    line = json_line(event(format="joined", token="eyJhbGciOi.secret-part", where=(1, 2)))
    assert "secret-part" not in line
    assert json.loads(line)["fields"] == {"token": "********", "where": "(1, 2)"}


def test_json_line_of_a_failure_carries_its_traceback_on_one_line():
    """A logged failure: still one line, with the traceback as a field."""
    try:
        1 / 0
    except ZeroDivisionError:
        failure = Failure()
    caught: list[dict] = []
    Logger(observer=caught.append).failure("it broke", failure)
    line = json_line(caught[0])
    assert line.count("\n") == 1
    record = json.loads(line)
    assert record["level"] == "critical" and "ZeroDivisionError" in record["traceback"]
    level, namespace, text = read_json_line(line)
    assert level == LogLevel.critical and text.startswith("it broke\n") and "ZeroDivisionError" in text


def test_read_json_line_gives_back_level_namespace_and_text():
    """What a worker pool's parent re-emits: the worker's level, namespace and text, no time."""
    line = json_line(event(format="closed {count} sockets", count=3, level=LogLevel.warn))
    assert read_json_line(line) == (LogLevel.warn, "tangram_channel.test", "closed 3 sockets")


@pytest.mark.parametrize(
    "line", ["Traceback (most recent call last):", "[1, 2]", '"text"', '{"level": "loud", "event": "x"}', ""]
)
def test_read_json_line_refuses_other_lines(line):
    assert read_json_line(line) is None


def start_twistd(tmp_path: Path, redis_url: str, port: int, *extra: str) -> tuple[subprocess.Popen, Path]:
    """twistd -n with a real --logfile (not stdout), as an operator runs it."""
    log_path = tmp_path / "tangram.log"
    process = subprocess.Popen(
        [TWISTD, "-n", "--pidfile=", "--logfile", str(log_path), "tangram-channel",
         "--listen", f"tcp:{port}:interface=127.0.0.1", "--redis-url", redis_url,
         "--embedded-redis", "false", *extra],
        # the secret in the environment: on the command line it is warned about
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "TANGRAM_CHANNEL_JWT_SECRET": SECRET},
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    wait_for_port(port)
    return process, log_path


@pytest_twisted.ensureDeferred
async def test_log_format_json_writes_one_object_per_line_to_the_logfile(tmp_path, flushed_redis):
    """Every line of --logfile parses as JSON with level and event, from start-up to shutdown; no token."""
    port = free_port()
    process, log_path = start_twistd(tmp_path, flushed_redis.url, port, "--log-format", "json")
    await eventually(lambda: log_path.exists() and "connected to Redis" in log_path.read_text(), what="Redis")
    minted = await mint(f"http://127.0.0.1:{port}", "room", "ops-1")
    client = await join_and_receive(f"ws://127.0.0.1:{port}/websocket", minted["token"], "room", flushed_redis.client())
    process.send_signal(signal.SIGTERM)
    await client.wait_closed()
    await eventually(lambda: process.poll() is not None, timeout=15, what="twistd to exit")
    assert process.returncode == 0
    assert process.stdout.read() == b""  # nothing went around the log file
    text = log_path.read_text()
    records = [json.loads(line) for line in text.splitlines()]
    assert all(set(r) >= {"time", "level", "namespace", "event", "fields"} for r in records)
    events = [r["event"] for r in records]
    assert any(e.startswith("connected to Redis") for e in events)
    assert "Server Shut Down." in events
    assert minted["token"] not in text and minted["token"].rsplit(".", 1)[1] not in text
    assert SECRET not in text


def redis_connected(port: int) -> bool:
    """Whether the service's /healthz says Redis is connected."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz") as response:
            return json.load(response)["redis"]["connected"]
    except urllib.error.HTTPError:
        return False


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_log_level_warning_keeps_warnings_and_drops_info_lines(tmp_path, flushed_redis, log_format):
    """log_level = "warning": the unknown-key warning is logged, "connected to Redis" (info) is not."""
    port = free_port()
    config = tmp_path / "tangram.toml"
    config.write_text(f'[core]\nlog_level = "warning"\n[channel]\nlog_format = "{log_format}"\nnot_a_key = 1\n')
    process, log_path = start_twistd(tmp_path, flushed_redis.url, port, "--config", str(config))
    wait_until(lambda: redis_connected(port), 10, "Redis connected")
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=15) == 0
    lines = log_path.read_text().splitlines()
    assert len(lines) == 1 and "unknown key [channel] not_a_key" in lines[0]
    if log_format == "json":
        assert json.loads(lines[0])["level"] == "warn"


@pytest_twisted.ensureDeferred
async def test_sigusr1_rotates_the_json_logfile_and_the_service_keeps_running(tmp_path, flushed_redis):
    """logrotate's ``kill -USR1``: the file moves to .1, logging goes on in a new one, nothing ends."""
    port = free_port()
    process, log_path = start_twistd(tmp_path, flushed_redis.url, port, "--log-format", "json")
    await eventually(lambda: log_path.exists() and "connected to Redis" in log_path.read_text(), what="Redis")
    process.send_signal(signal.SIGUSR1)
    rotated = log_path.with_name(log_path.name + ".1")
    await eventually(rotated.exists, what="the rotated log file")
    minted = await mint(f"http://127.0.0.1:{port}", "room", "ops-1")  # still serving
    assert process.poll() is None
    process.send_signal(signal.SIGTERM)
    await eventually(lambda: process.poll() is not None, timeout=15, what="twistd to exit")
    assert process.returncode == 0
    before = [json.loads(line)["event"] for line in rotated.read_text().splitlines()]
    after = [json.loads(line)["event"] for line in log_path.read_text().splitlines()]
    assert any(e.startswith("connected to Redis") for e in before)
    assert "Server Shut Down." in after and "Server Shut Down." not in before
    assert minted["token"] not in rotated.read_text() + log_path.read_text()


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_a_daemon_log_file_keeps_its_mode_across_rotations(tmp_path, flushed_redis, log_format):
    """
    A daemon runs with twistd's umask 077: the file SIGUSR1 starts must still have the
    first one's mode (0644 from a umask of 022), so the log shipper can read it.
    """
    pid, _, logfile = start_daemon(tmp_path, flushed_redis.url, "--log-format", log_format)
    try:
        first_mode = os.stat(logfile).st_mode & 0o777
        os.kill(pid, signal.SIGUSR1)
        rotated = logfile.with_name(logfile.name + ".1")
        wait_until(lambda: rotated.exists() and logfile.exists(), what="the log rotated")
        assert first_mode == 0o644
        assert os.stat(rotated).st_mode & 0o777 == 0o644
        # Twisted creates the new file with no permissions, then chmods it: a moment later
        wait_until(lambda: os.stat(logfile).st_mode & 0o777 == 0o644, 5, "the new log file's mode is 0644")
    finally:
        stop_daemon(pid)
