"""
The README's five-minute walk-through at a person's pace (issue 16, point 2): its
commands, read out of README.rst, run as written against a ``twistd`` service, with a
pause longer than ``idle_timeout`` before each step. ``wscat`` sends nothing on its
own, so the heartbeat loop the README puts beside it is what must keep the socket open.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.request
from typing import Any

from tangram_channel.config import Config

from .conftest import ROOT
from .jsdriver import JS_DIR, STEP_TIMEOUT, channel_service  # noqa: F401
from .rst import commands, literal_blocks, section

IDLE_TIMEOUT = 2.0  # the service's, in place of the default 60 s, to keep the test short
PAUSE = IDLE_TIMEOUT * 1.5  # a person reading the output before the next step


def message(line: str) -> Any:
    """The frame a wscat output line shows (after any ``> `` prompts), or None."""
    text = re.sub(r"^(> )+", "", line)
    try:
        return json.loads(text)
    except ValueError:
        return None


def sockets(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
        return json.loads(response.read())["sockets"]


def test_the_walkthrough_survives_a_person_taking_their_time(channel_service):
    """
    Token, wscat with the heartbeat loop, join, publish, psubscribe, push: each after a
    pause longer than the idle timeout, and every step's answer arrives on a socket that
    stays open; the heartbeat loop beats more often than the default idle timeout.
    """
    readme = section((ROOT / "README.rst").read_text(), "Five minutes with it")
    (token,), (*client, join), (publish,), (psubscribe,), (push,) = map(commands, literal_blocks(readme)[:5])
    expected = json.loads(re.search(r"and ``(\[.*?\])`` arrives in the client", readme).group(1))
    beat = int(re.search(r"while sleep (\d+);", client[0]).group(1))
    assert beat < Config().idle_timeout, "the README's heartbeat loop must beat within the default idle timeout"

    service = channel_service(idle_timeout=IDLE_TIMEOUT, datetime_interval=1.0)
    service.process.wait_for_log("connected to Redis")  # "with the service running as above"

    def local(command: str) -> str:
        """The README's command for this service, this Redis and the idle timeout scaled down."""
        command = command.replace("127.0.0.1:2347", f"127.0.0.1:{service.port}")
        command = command.replace("npx -y wscat", str(JS_DIR / "node_modules" / ".bin" / "wscat"))
        command = command.replace("redis-cli ", f"redis-cli -p {service.redis.port} ")
        return command.replace(f"sleep {beat};", f"sleep {beat * IDLE_TIMEOUT / Config().idle_timeout};")

    terminal = service.command("bash", "-c", "\n".join(local(c) for c in [token, *client]))
    deadline = time.monotonic() + STEP_TIMEOUT
    while sockets(service.port) < 1:
        assert time.monotonic() < deadline and terminal.process.poll() is None, terminal.stderr
        time.sleep(0.05)

    def frame(where) -> Any:
        return message(terminal.expect("stdout", lambda s: (m := message(s["line"])) is not None and where(m))["line"])

    time.sleep(PAUSE)
    terminal.type(join.removeprefix("> "))
    reply = frame(lambda m: m[1] == "1")
    assert reply[3:] == ["phx_reply", {"status": "ok", "response": {"id": reply[4]["response"]["id"]}}]
    assert frame(lambda m: m[3] == "presence_state")[4]
    assert "datetime" in frame(lambda m: m[3] == "datetime")[4]["response"]

    time.sleep(PAUSE)
    done = subprocess.run(local(publish), shell=True, capture_output=True, text=True, timeout=STEP_TIMEOUT)
    assert done.stdout.strip() == "1", done.stderr  # the service's subscription received it
    assert frame(lambda m: m[3] == "test") == expected

    time.sleep(PAUSE)
    watcher = service.command("bash", "-c", local(psubscribe))
    watcher.expect("stdout", lambda s: s["line"] == "1")  # psubscribe, from:*, 1 subscription

    time.sleep(PAUSE)
    sent = json.loads(push.removeprefix("> "))
    terminal.type(push.removeprefix("> "))
    assert frame(lambda m: m[1] == sent[1])[4] == {"status": "ok", "response": {}}
    watcher.expect("stdout", lambda s: s["line"] == f"from:system:{sent[3]}")
    assert json.loads(watcher.expect("stdout")["line"]) == sent[4]
    assert {"step": "stdout", "line": "from:phoenix:heartbeat"} in watcher.seen  # the loop's, as the README says

    time.sleep(PAUSE)
    assert terminal.process.poll() is None, "wscat ended: the service closed the socket"
    assert sockets(service.port) == 1
    heartbeats = [m for step in terminal.seen if (m := message(step.get("line", ""))) and m[2] == "phoenix"]
    assert heartbeats and all(m[4] == {"status": "ok", "response": {}} for m in heartbeats)
