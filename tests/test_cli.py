"""
The operator's command line (issue 7, point 4): ``python -m tangram_channel`` run as a
subprocess, as an operator types it, against a private ``redis-server`` and, where a
client is involved, a running service.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import jwt
import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.utils import getProcessOutputAndValue

from .conftest import ROOT
from .e2e import forge_token
from .waiting import eventually
from .wsclient import connect, fields

SECRET = "cli-test-secret-long-enough-for-hs256"


@pytest.fixture(autouse=True)
def spawned_not_forked(recwarn):
    """A fork() with the reactor's threads alive may deadlock the child; Python 3.12+ warns of it."""
    yield
    forks = [str(w.message) for w in recwarn if "use of fork()" in str(w.message)]
    assert not forks, forks


def environment() -> dict[str, str]:
    """This process's environment without TANGRAM_CHANNEL_* settings, running this tree's code."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TANGRAM_CHANNEL_")}
    env["PYTHONPATH"] = str(ROOT)
    return env


async def run_in(cwd: Path, executable: str, *args: str) -> tuple[int, str, str]:
    """
    ``executable ARGS`` in ``cwd``: exit code, stdout, stderr. ``env --chdir`` enters
    ``cwd`` because Twisted forks (with the reactor's threads alive: a deadlock risk that
    Python 3.12+ warns about) instead of calling posix_spawn when given a working directory.
    """
    out, err, code = await getProcessOutputAndValue(
        "env", [f"--chdir={cwd}", executable, *args], env=environment(), reactor=reactor
    )
    return code, out.decode(), err.decode()


async def run(cwd: Path, *args: str) -> tuple[int, str, str]:
    """``python -m tangram_channel ARGS`` in ``cwd``: exit code, stdout, stderr."""
    return await run_in(cwd, sys.executable, "-m", "tangram_channel", *args)


def write_config(directory: Path, redis_url: str, extra: str = "") -> Path:
    path = directory / "tangram.toml"
    path.write_text(f'[core]\nredis_url = "{redis_url}"\n\n[channel]\njwt_secret = "{SECRET}"\n{extra}')
    return path


@pytest.mark.parametrize("command", [[], ["token"], ["publish"], ["listen"], ["check-config"]])
@pytest_twisted.ensureDeferred
async def test_help_of_every_command(tmp_path, command):
    """--help of the program and of each command prints its usage and exits 0."""
    code, out, err = await run(tmp_path, *command, "--help")
    assert code == 0, err
    assert out.startswith(f"usage: tangram-channel {' '.join(command)}".rstrip())


@pytest_twisted.ensureDeferred
async def test_token_is_signed_with_the_configured_secret(tmp_path, redis_server):
    """token --channel admin --id ops --expires 60: a JWT the service would accept, for 60 s."""
    write_config(tmp_path, redis_server.url)
    code, out, err = await run(tmp_path, "token", "--channel", "admin", "--id", "ops", "--expires", "60")
    assert code == 0, err
    minted = json.loads(out)
    assert minted["channel"] == "admin" and minted["id"] == "ops"
    claims = jwt.decode(minted["token"], SECRET, algorithms=["HS256"])
    assert claims["channel"] == "admin" and claims["id"] == "ops" and claims["exp"] - claims["iat"] == 60


@pytest_twisted.ensureDeferred
async def test_token_refuses_an_admin_token_signed_with_the_default_secret(tmp_path):
    """No config: an admin token signed with "secret" would let anyone forge its twin."""
    code, out, err = await run(tmp_path, "token", "--channel", "admin")
    assert code != 0 and out == ""
    assert err.count("\n") == 1 and "TANGRAM_CHANNEL_JWT_SECRET" in err and "jwt_secret" in err


@pytest_twisted.ensureDeferred
async def test_token_warns_loudly_when_signing_with_the_default_secret(tmp_path):
    code, out, err = await run(tmp_path, "token", "--channel", "room")
    assert code == 0 and json.loads(out)["channel"] == "room"
    assert err.startswith("WARNING:") and 'default jwt_secret "secret"' in err


@pytest_twisted.ensureDeferred
async def test_publish_reaches_a_client_of_a_running_service(tmp_path, start_service, redis_server):
    """publish room news '{"n": 1}' arrives at the room's WebSocket client as a text broadcast."""
    service = await start_service(datetime_interval=0)
    client = await connect(service.ws_url)
    reply = await client.reply(client.join("room", forge_token(service.jwt_secret, "room")))
    assert fields(reply)[4]["status"] == "ok"
    code, out, err = await run(tmp_path, "publish", "--redis-url", redis_server.url, "room", "news", '{"n": 1}')
    assert code == 0, err
    assert "to:room:news" in out
    assert await client.until(lambda f: fields(f)[3] == "news") == [None, None, "room", "news", {"n": 1}]
    client.close()
    await client.closed


@pytest_twisted.ensureDeferred
async def test_listen_prints_what_a_client_pushes(tmp_path, start_service, redis_server):
    """listen --count 1 'room:*' prints the client's push as 'channel payload' and exits 0."""
    write_config(tmp_path, redis_server.url)
    service = await start_service(datetime_interval=0)
    client = await connect(service.ws_url)
    reply = await client.reply(client.join("room", forge_token(service.jwt_secret, "room")))
    assert fields(reply)[4]["status"] == "ok"
    redis = redis_server.client()
    patterns = redis.execute_command("PUBSUB", "NUMPAT")
    listening = defer.ensureDeferred(run(tmp_path, "listen", "--count", "1", "room:*"))
    await eventually(lambda: redis.execute_command("PUBSUB", "NUMPAT") > patterns, what="listen to subscribe")
    await client.reply(client.push("room", "hello", {"text": "hi"}))
    code, out, err = await listening
    assert code == 0, err
    assert out == 'from:room:hello {"text":"hi"}\n'
    assert "listening to from:room:*" in err
    client.close()
    await client.closed


def test_listen_stopped_with_ctrl_c_exits_0_quietly(tmp_path, redis_server):
    """Ctrl-C (SIGINT) is how an operator stops listen: exit 0, no "Redis closed" line, no traceback."""
    listening = subprocess.Popen(
        [sys.executable, "-m", "tangram_channel", "listen", "--redis-url", redis_server.url],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=environment(), cwd=tmp_path, text=True,
    )
    try:
        assert listening.stderr.readline() == "listening to from:*\n"
        listening.send_signal(signal.SIGINT)
        out, err = listening.communicate(timeout=10)
    finally:
        listening.kill()
    assert listening.returncode == 0, err
    assert out == "" and err == ""


@pytest_twisted.ensureDeferred
async def test_publish_to_an_unreachable_redis_fails_with_one_line(tmp_path):
    """Without Redis, publish exits 1 with one line naming the URL, no traceback."""
    code, out, err = await run(tmp_path, "publish", "--redis-url", "redis://127.0.0.1:1", "room", "news", "{}")
    assert code == 1
    assert "redis://127.0.0.1:1" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest_twisted.ensureDeferred
async def test_check_config_prints_effective_values_with_secrets_masked(tmp_path):
    """check-config FILE: the file's values and the defaults, jwt_secret, admin_key and the Redis password hidden."""
    config = write_config(tmp_path, "redis://ops:hunter2@127.0.0.1:6390/3", 'admin_key = "adm1n-key"\nport = 8080\n')
    code, out, err = await run(tmp_path, "check-config", str(config))
    assert code == 0, err
    shown = json.loads(out)
    assert shown["port"] == 8080 and shown["id_length"] == 8
    assert shown["redis_url"] == "redis://ops:********@127.0.0.1:6390/3"
    assert shown["jwt_secret"] == shown["admin_key"] == "********"
    assert "hunter2" not in out + err and SECRET not in out + err and "adm1n" not in out + err


@pytest.mark.parametrize("secret, warned", [("short-but-real", True), ("x" * 32, False), (SECRET, False)])
@pytest_twisted.ensureDeferred
async def test_check_config_warns_of_a_jwt_secret_shorter_than_32_bytes(tmp_path, secret, warned):
    """A secret HS256 finds too short passes (status 0) with a warning that never shows the secret."""
    config = tmp_path / "tangram.toml"
    config.write_text(f'[channel]\njwt_secret = "{secret}"\n')
    code, out, err = await run(tmp_path, "check-config", str(config))
    assert code == 0, err
    assert ("warning: jwt_secret is 14 bytes, shorter than the 32" in err) is warned
    assert secret not in out + err


@pytest.mark.parametrize(
    "extra, code, message",
    [
        ("prot = 8080\n", 1, "unknown key [channel] prot"),
        ('port = "eighty"\n', 2, "port must be an integer"),
        ('log_format = "xml"\n', 2, "log_format must be one of text, json"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_check_config_fails_naming_a_bad_key(tmp_path, extra, code, message):
    """An unknown key (a typo, which the service only warns about) or a bad value fails, naming it."""
    config = write_config(tmp_path, "redis://127.0.0.1:6390", extra)
    got, out, err = await run(tmp_path, "check-config", str(config))
    assert got == code
    assert message in err and "Traceback" not in err


@pytest_twisted.ensureDeferred
async def test_console_script_is_the_same_program(tmp_path):
    """The installed ``tangram-channel`` script runs the same command line."""
    script = Path(sys.executable).parent / "tangram-channel"
    code, out, err = await run_in(tmp_path, str(script), "token", "--help")
    assert code == 0, err
    assert out.startswith("usage: tangram-channel token")
