"""
docs/tangram.rst with the real ``tangram serve`` (issue 16, point 7): Tangram 0.6.0 always
starts its own channel service, and both ways the guide gives put ours in its place,
with one ``tangram.toml`` for both. A client does what Tangram's frontend does: it reads
the channel URL from Tangram's ``/manifest.json``, mints tokens there (CORS preflight
first, as a browser on Tangram's origin must) and joins; its push reaches Redis with
the ``request_id`` that only ours keeps, so it was ours that served it.

tangram-core lives in a venv of its own, made once per session: its dependencies
(FastAPI, redis-py >= 5.2) are not ours to pin in the test extra.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tangram_channel import __version__

from .conftest import ROOT, RedisServer, free_port, wait_for_port
from .jsdriver import Listener
from .live import RawSocket, post_token
from .rst import literal_blocks, section, unit_settings

TANGRAM_CORE = "tangram-core==0.6.0"
GUIDE = (ROOT / "docs" / "tangram.rst").read_text()
TANGRAM_UNIT = unit_settings(next(block for block in literal_blocks(GUIDE) if "[Unit]" in block))
SECRET = "under-tangram-secret-long-enough-for-hs256"


@pytest.fixture(scope="session")
def tangram_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``tangram`` from tangram-core 0.6.0 (about 30 s to install)."""
    venv = tmp_path_factory.mktemp("tangram-core") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    install = [str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", TANGRAM_CORE]
    done = subprocess.run(install, capture_output=True, text=True, timeout=600)
    if "DO NOT MATCH THE HASHES" in done.stderr:  # a download cut or garbled on the way: once more, afresh
        done = subprocess.run([*install, "--no-cache-dir"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return venv / "bin" / "tangram"


@pytest.fixture
def tangram_serve(tangram_binary: Path, tmp_path: Path) -> Iterator[Callable[[Path, int], subprocess.Popen]]:
    """``tangram_serve(toml, server_port)``: ``tangram serve --config toml``, stopped after the test."""
    started: list[subprocess.Popen] = []

    def start(toml: Path, server_port: int) -> subprocess.Popen:
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TANGRAM_CONFIG")}
        env["XDG_CONFIG_HOME"] = str(tmp_path)  # tangram makes its default config folder even when given one
        log = open(tmp_path / "tangram.log", "ab")
        started.append(subprocess.Popen(
            [str(tangram_binary), "serve", "--config", str(toml)], cwd=tmp_path, env=env, stdout=log, stderr=log,
        ))
        log.close()
        wait_for_port(server_port, timeout=60)
        return started[-1]

    yield start
    for process in started:
        process.terminate()
        process.wait(timeout=30)


def tangram_toml(path: Path, redis: RedisServer, server_port: int, channel: str) -> Path:
    """A tangram.toml with Tangram's [core] and [server] and the given [channel] table."""
    path.write_text(
        f'[core]\nredis_url = "{redis.url}"\nplugins = []\n\n'
        f'[server]\nhost = "127.0.0.1"\nport = {server_port}\n\n'
        f'{channel}\njwt_secret = "{SECRET}"\n'
    )
    return path


def start_ours(twistd: Callable[..., Any], toml: Path, port: int) -> Any:
    """``twistd -n tangram-channel --config toml``, once it listens on ``port`` and has Redis."""
    ours = twistd("--config", str(toml), port=port)
    ours.wait_for_log("connected to Redis")
    return ours


def http_json(method: str, url: str, headers: dict[str, str]) -> tuple[int, dict[str, str], Any]:
    request = urllib.request.Request(url, method=method, headers=headers)
    with urllib.request.urlopen(request, timeout=10) as response:
        body = response.read()
        return response.status, {k.lower(): v for k, v in response.headers.items()}, json.loads(body) if body else None


def frontend_joins_and_searches(tangram_port: int, redis: RedisServer) -> str:
    """
    What Tangram's frontend does, from its own origin: the manifest's channel URL, a
    token for ``system`` (after a CORS preflight), the socket, the join, then a
    ``streaming-<id>`` token for the same id and its join, and a search push. Returns
    the channel URL it was given.
    """
    origin = f"http://127.0.0.1:{tangram_port}"
    _, _, manifest = http_json("GET", f"{origin}/manifest.json", {})
    url = manifest["core"]["config"]["channel"]["url"]
    port = urllib.parse.urlsplit(url).port
    status, headers, _ = http_json("OPTIONS", f"{url}/token", {
        "Origin": origin, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type",
    })
    assert status == 204 and headers["access-control-allow-origin"] in ("*", origin)

    status, system = post_token(port, {"channel": "system"}, {"Origin": origin})
    assert status == 200, system
    sock = RawSocket(port, f"/websocket?vsn=2.0.0&userToken={system['token']}", headers={"Origin": origin})
    assert sock.status == 101
    listener = Listener(redis, "from:*")
    try:
        _, present = sock.join_ok("system", system["token"])
        assert system["id"] in present
        streaming = f"streaming-{system['id']}"
        status, minted = post_token(port, {"channel": streaming, "id": system["id"]}, {"Origin": origin})
        assert status == 200 and minted["id"] == system["id"], minted
        sock.join_ok(streaming, minted["token"])
        search = {"query": "AFR", "request_id": "r-1"}
        sock.push(streaming, "search", search, join_ref="2")
        assert json.loads(listener.next(f"from:{streaming}:search")) == search  # Tangram's own drops request_id
    finally:
        listener.close()
        sock.close()
    _, _, health = http_json("GET", f"{url}/healthz", {})
    assert health["version"] == __version__
    return url


def test_a_ours_started_first_on_the_channel_port_keeps_it(twistd, tangram_serve, flushed_redis, tmp_path):
    """
    Way A: ours holds the [channel] port, Tangram started after the guide's systemd probe
    says ours answers keeps running without its own, and its frontend is sent to ours.
    """
    server_port, channel_port = free_port(), free_port()
    toml = tangram_toml(
        tmp_path / "tangram.toml", flushed_redis, server_port,
        f'[channel]\nhost = "127.0.0.1"\nport = {channel_port}',
    )
    start_ours(twistd, toml, channel_port)
    probe = TANGRAM_UNIT["ExecStartPre"].replace("127.0.0.1:2347", f"127.0.0.1:{channel_port}")
    subprocess.run(probe, shell=True, check=True, timeout=30)

    tangram = tangram_serve(toml, server_port)
    assert frontend_joins_and_searches(server_port, flushed_redis) == f"http://127.0.0.1:{channel_port}"
    assert tangram.poll() is None, "tangram serve stopped"


def test_b_ours_on_another_port_named_by_public_url(twistd, tangram_serve, flushed_redis, tmp_path):
    """
    Way B, with the guide's [channel] table: Tangram's own keeps the [channel] port, ours
    listens where ``listen`` says, and the frontend is sent there by ``public_url``.
    """
    server_port, channel_port, ours_port = free_port(), free_port(), free_port()
    table = next(block for block in literal_blocks(section(GUIDE, "B. Ours on another port, named by ``public_url``"))
                 if block.startswith("[channel]"))
    ports = {"2347": str(channel_port), "2348": str(ours_port)}
    table = re.sub(r"\b234[78]\b", lambda m: ports[m.group()], table)
    toml = tangram_toml(tmp_path / "tangram.toml", flushed_redis, server_port, table)
    tangram_serve(toml, server_port)
    wait_for_port(channel_port)  # Tangram's own, which no browser is sent to
    start_ours(twistd, toml, ours_port)
    assert frontend_joins_and_searches(server_port, flushed_redis) == f"http://127.0.0.1:{ours_port}"
