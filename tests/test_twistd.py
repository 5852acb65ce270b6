"""
The real ``twistd tangram-channel`` as a subprocess (PROTOCOL.md sections 1, 2, 10 and
issue 2's running and embedded-Redis points): what an operator types, what a browser
and a plugin then see.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
import pytest
import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.ssl import Certificate
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS

from tangram_channel.embedded import is_listening
from tangram_channel.service import ChannelService, ProcessSetup
from tangram_channel.tap import Options, makeService, with_backlog

from .conftest import ROOT, free_port, wait_for_port
from .e2e import mint
from .live import process_gone, start_twistd
from .waiting import eventually, wait_until
from .wsclient import connect, fields

SECRET = "twistd-test-secret-long-enough-for-hs256"
TWISTD = str(Path(sys.executable).parent / "twistd")


def listen(port: int) -> list[str]:
    return ["--listen", f"tcp:{port}:interface=127.0.0.1"]


def claims(token: str, secret: str) -> dict:
    """The token's claims, which only decode with the secret the service signed them with."""
    return jwt.decode(token, secret, algorithms=["HS256"])


async def join_and_receive(ws_url: str, token: str, topic: str, redis, trust: Certificate | None = None):
    """Join ``topic`` with ``token``, then a message published on Redis must reach the socket; returns the client."""
    client = await connect(ws_url, trust=trust)
    ref = client.join(topic, token)
    reply = await client.reply(ref)
    assert fields(reply)[4]["status"] == "ok", reply
    assert redis.publish(f"to:{topic}:test", '{"msg":"hi"}') == 1
    assert await client.until(lambda f: fields(f)[3] == "test") == [None, None, topic, "test", {"msg": "hi"}]
    return client


CONNECTED = "connected to Redis"


def write_toml(path: Path, tables: dict[str, dict[str, object]]) -> Path:
    """A config file of these tables and keys (strings, numbers and lists written as TOML)."""
    path.write_text("".join(
        f"[{table}]\n" + "".join(f"{key} = {json.dumps(value)}\n" for key, value in keys.items()) + "\n"
        for table, keys in tables.items()
    ))
    return path


def wait_exit(process: subprocess.Popen, timeout: float = 15) -> int:
    return process.wait(timeout=timeout)


def stop_cleanly(proc) -> str:
    """SIGTERM the service; it must go through its shutdown, not die; returns its log."""
    assert proc.stop() == 0  # a stop that was asked for is a success
    log = proc.log()
    assert "Server Shut Down." in log and "Traceback" not in log
    return log


def run_to_exit(twistd, *args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    """Start a twistd that is expected to stop by itself; its exit code and output."""
    proc = twistd(*args, env=env)
    code = wait_exit(proc.process)
    proc.log_file.close()
    return code, proc.log()


# serving


@pytest_twisted.ensureDeferred
async def test_serves_token_websocket_and_redis_broadcast(twistd, flushed_redis):
    """twistd -n tangram-channel mints tokens, admits a join, relays a broadcast; SIGTERM closes sockets with 1012."""
    port = free_port()
    proc = twistd(*listen(port), "--redis-url", flushed_redis.url, "--jwt-secret", SECRET, port=port)
    proc.wait_for_log(CONNECTED)
    minted = await mint(f"http://127.0.0.1:{port}", "system", "browser-1")
    assert minted["id"] == "browser-1" and claims(minted["token"], SECRET)["channel"] == "system"
    ws_url = f"ws://127.0.0.1:{port}/websocket"
    client = await join_and_receive(ws_url, minted["token"], "system", flushed_redis.client())
    proc.process.send_signal(signal.SIGTERM)
    assert await client.wait_closed() == 1012  # "service restart": phoenix.js reconnects elsewhere
    await eventually(lambda: proc.process.poll() is not None, timeout=15, what="twistd to exit")
    log = stop_cleanly(proc)
    assert "closed 1 sockets with 1012" in log
    assert minted["token"].rsplit(".", 1)[1] not in log


@pytest_twisted.ensureDeferred
async def test_config_file_in_tangram_format(twistd, flushed_redis, tmp_path):
    """--config reads [core] redis_url, [channel] port and jwt_secret of a Tangram tangram.toml; unknown keys warn."""
    port = free_port()
    config = write_toml(tmp_path / "site.toml", {
        "core": {"redis_url": flushed_redis.url, "plugins": []},
        "server": {"host": "127.0.0.1", "port": 2346},
        "channel": {"host": "127.0.0.1", "port": port, "jwt_secret": SECRET, "from_a_newer_tangram": 1},
    })
    proc = twistd("--config", str(config), "--embedded-redis", "false", port=port)
    proc.wait_for_log(CONNECTED)
    minted = await mint(f"http://127.0.0.1:{port}", "room")
    assert claims(minted["token"], SECRET)["channel"] == "room"
    await join_and_receive(f"ws://127.0.0.1:{port}/websocket", minted["token"], "room", flushed_redis.client())
    warnings = [line for line in proc.log().splitlines() if "from_a_newer_tangram" in line]
    assert len(warnings) == 1 and "unknown key" in warnings[0]


BAD_STARTS = {
    "missing config file": (["--config", "nowhere.toml"], None, "config file not found: nowhere.toml"),
    "wrong-typed key": (
        ["--config", "tangram.toml"],
        '[channel]\njwt_expiration_secs = "a week"\n',
        "jwt_expiration_secs must be an integer, not 'a week'",
    ),
    "default secret beyond loopback": (["--listen", "tcp:0"], None, "refusing to listen beyond loopback"),
    "not a redis url": (["--redis-url", "http://127.0.0.1:1"], None, "redis_url must start with redis://"),
    "unknown endpoint type": (
        ["--listen", "tpc:0:interface=127.0.0.1"],
        None,
        "listen: cannot use tpc:0:interface=127.0.0.1: Unknown endpoint",
    ),
    "endpoint option Twisted lacks": (
        ["--listen", "tcp:0:interface=127.0.0.1:backlg=10"],
        None,
        "listen: cannot use tcp:0:interface=127.0.0.1:backlg=10",
    ),
    "missing TLS key file": (
        ["--listen", "ssl:0:privateKey=key.pem:certKey=cert.pem:interface=127.0.0.1"],
        None,
        "listen: cannot use ssl:0:privateKey=key.pem:certKey=cert.pem:interface=127.0.0.1: [Errno 2]",
    ),
}


@pytest.mark.parametrize("args,config,message", BAD_STARTS.values(), ids=BAD_STARTS.keys())
def test_bad_configuration_exits_1_with_one_line(twistd, tmp_path, args, config, message):
    """
    A bad configuration stops start-up with status 1 and one line naming the problem: no
    usage screen, no traceback, no label but ours.
    """
    if config is not None:
        (tmp_path / "tangram.toml").write_text(config)
    code, output = run_to_exit(twistd, *args, "--embedded-redis", "false")
    assert code == 1
    assert output.splitlines() == [output.strip()]
    assert output.startswith("tangram-channel: ") and message in output


@pytest_twisted.ensureDeferred
async def test_jwt_secret_from_environment(twistd, flushed_redis):
    """TANGRAM_CHANNEL_JWT_SECRET sets the signing key."""
    port = free_port()
    twistd(*listen(port), "--redis-url", flushed_redis.url, env={"TANGRAM_CHANNEL_JWT_SECRET": SECRET}, port=port)
    minted = await mint(f"http://127.0.0.1:{port}", "room")
    assert claims(minted["token"], SECRET)["id"] == minted["id"]


@pytest_twisted.ensureDeferred
async def test_command_line_beats_environment_beats_file(twistd, flushed_redis, tmp_path):
    """Each setting comes from the strongest source that gives it: command line, environment, file, default."""
    port = free_port()
    config = write_toml(tmp_path / "tangram.toml", {
        "core": {"redis_url": flushed_redis.url},
        "channel": {"port": port, "jwt_secret": "from-the-file-long-enough-for-hs256", "id_length": 3,
                    "jwt_expiration_secs": 1000},
    })
    env = {"TANGRAM_CHANNEL_JWT_SECRET": "from-the-environment-long-enough", "TANGRAM_CHANNEL_ID_LENGTH": "5"}
    twistd("--config", str(config), "--jwt-secret", SECRET, env=env, port=port)  # port: from the file
    minted = await mint(f"http://127.0.0.1:{port}", "room")
    token = claims(minted["token"], SECRET)  # command line over environment and file
    assert len(minted["id"]) == 5  # environment over file
    assert token["exp"] - token["iat"] == 1000  # file over default


# process life


def start_daemon(tmp_path: Path, redis_url: str, *extra: str) -> tuple[int, Path, Path]:
    """
    ``twistd --pidfile tc.pid --logfile tc.log tangram-channel``, daemonized from a shell
    whose umask is 022, serving; its pid, pidfile and log file. Stop it with ``stop_daemon``.
    """
    port, pidfile, logfile = free_port(), tmp_path / "tc.pid", tmp_path / "tc.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    started = subprocess.run(
        [TWISTD, "--pidfile", str(pidfile), "--logfile", str(logfile), "tangram-channel", *listen(port),
         "--redis-url", redis_url, "--jwt-secret", SECRET, *extra],
        env=env, cwd=tmp_path, timeout=15, umask=0o022,
    )
    assert started.returncode == 0
    wait_for_port(port)
    pid = int(pidfile.read_text())
    assert not process_gone(pid)
    return pid, pidfile, logfile


def stop_daemon(pid: int) -> None:
    """SIGTERM, then wait for the daemon to be gone (SIGKILL if it outlives 15 s, and fail)."""
    try:
        os.kill(pid, signal.SIGTERM)
        wait_until(lambda: process_gone(pid), 15, "twistd to exit")
    finally:
        if not process_gone(pid):
            os.kill(pid, signal.SIGKILL)


def test_daemon_stops_cleanly_on_sigterm(tmp_path, flushed_redis):
    """twistd --pidfile P --logfile L tangram-channel daemonizes; SIGTERM stops it and removes the pidfile."""
    pid, pidfile, logfile = start_daemon(tmp_path, flushed_redis.url)
    stop_daemon(pid)
    assert not pidfile.exists()
    log = logfile.read_text()
    assert "Server Shut Down." in log and "Traceback" not in log


def listen_queue(port: int) -> int:
    """The listening socket's accept queue size, as the kernel has it (``ss``'s Send-Q)."""
    out = subprocess.check_output(["ss", "-ltnH", f"sport = :{port}"], text=True)
    return int(out.split()[2])


@pytest.mark.parametrize("given, expected", [("", 1024), (":backlog=77", 77)])
def test_listen_queue_holds_a_reconnect_storm_unless_the_endpoint_sets_one(twistd, flushed_redis, given, expected):
    """Twisted's default of 50 overflowed thousands of times in a 10,000-client storm."""
    port = free_port()
    proc = twistd("--listen", f"tcp:{port}:interface=127.0.0.1{given}", "--redis-url", flushed_redis.url,
                  "--jwt-secret", SECRET, "--embedded-redis", "false", port=port)
    proc.wait_for_log(CONNECTED)
    assert listen_queue(port) == expected


def test_with_backlog_leaves_other_endpoint_kinds_and_given_backlogs_alone():
    assert with_backlog("tcp:2347") == "tcp:2347:backlog=1024"
    assert with_backlog("ssl:443:privateKey=k.pem") == "ssl:443:privateKey=k.pem:backlog=1024"
    assert with_backlog("unix:/run/tc.sock") == "unix:/run/tc.sock:backlog=1024"
    assert with_backlog("tcp:2347:backlog=10") == "tcp:2347:backlog=10"
    assert with_backlog("systemd:domain=INET:index=0") == "systemd:domain=INET:index=0"


def test_port_in_use_exits_with_one_line(twistd, flushed_redis):
    """A port already taken stops start-up with a non-zero exit and one line saying which and why."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, output = run_to_exit(twistd, *listen(port), "--redis-url", flushed_redis.url, "--jwt-secret", SECRET)
    assert code != 0
    reasons = [line for line in output.splitlines() if "cannot listen" in line]
    assert len(reasons) == 1
    assert f"tcp:{port}" in reasons[0] and "in use" in reasons[0]
    assert "Traceback" not in output


def make_certificate(directory: Path) -> tuple[Path, Path, Certificate]:
    """A self-signed certificate for localhost: key file, certificate file, and the trust root for clients."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    pem = certificate.public_bytes(serialization.Encoding.PEM)
    key_file, cert_file = directory / "key.pem", directory / "cert.pem"
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    cert_file.write_bytes(pem)
    return key_file, cert_file, Certificate.loadPEM(pem)


@pytest_twisted.ensureDeferred
async def test_tls_listener_serves_https_token_and_wss(twistd, flushed_redis, tmp_path):
    """--listen ssl:PORT:privateKey=K:certKey=C serves https://.../token and wss://.../websocket."""
    key_file, cert_file, trust = make_certificate(tmp_path)
    port = free_port()
    twistd(
        "--listen", f"ssl:{port}:privateKey={key_file}:certKey={cert_file}:interface=127.0.0.1",
        "--redis-url", flushed_redis.url, "--jwt-secret", SECRET, port=port,
    ).wait_for_log(CONNECTED)
    https = treq.client.HTTPClient(Agent(reactor, contextFactory=BrowserLikePolicyForHTTPS(trustRoot=trust)))
    minted = await mint(f"https://localhost:{port}", "room", agent=https)
    await join_and_receive(f"wss://localhost:{port}/websocket", minted["token"], "room", flushed_redis.client(), trust)


def readme_block_after(opening: str) -> str:
    """The literal block (``::``) of the README paragraph that starts with ``opening``, unindented."""
    text = (ROOT / "README.rst").read_text().split("\n" + opening, 1)[1].split("::\n\n", 1)[1]
    block = []
    for line in text.splitlines():
        if line and not line.startswith("    "):
            break
        block.append(line[4:])
    return "\n".join(block).strip()


@pytest_twisted.ensureDeferred
async def test_readme_tls_example_starts_as_written(tmp_path, flushed_redis):
    """The README's TLS commands, run by bash in a folder holding key.pem and cert.pem, serve https."""
    _, _, trust = make_certificate(tmp_path)
    port = free_port()
    commands = readme_block_after("TLS:").replace("8443", str(port))
    env = {k: v for k, v in os.environ.items() if not k.startswith("TANGRAM_CHANNEL_")}
    env.update(
        PATH=f"{Path(TWISTD).parent}:{env['PATH']}", PYTHONPATH=str(ROOT),
        TANGRAM_CHANNEL_REDIS_URL=flushed_redis.url, TANGRAM_CHANNEL_EMBEDDED_REDIS="false",
    )
    shell = subprocess.Popen(["bash", "-e", "-c", commands], cwd=tmp_path, env=env, start_new_session=True)
    try:
        wait_for_port(port)
        https = treq.client.HTTPClient(Agent(reactor, contextFactory=BrowserLikePolicyForHTTPS(trustRoot=trust)))
        minted = await mint(f"https://localhost:{port}", "room", agent=https)
        assert minted["channel"] == "room" and minted["token"]
    finally:
        os.killpg(shell.pid, signal.SIGTERM)
        assert wait_exit(shell) == 0


# embedded Redis

EMBEDDED_LINE = "STARTED A PRIVATE redis-server"


@pytest_twisted.ensureDeferred
async def test_embedded_redis_started_when_nothing_listens_and_stopped_on_exit(twistd, redis_binary):
    """With embedded_redis auto and nothing at a local redis_url, a private redis-server serves and dies with us."""
    import redis as redis_py

    port, redis_port = free_port(), free_port()
    proc = twistd(*listen(port), "--redis-url", f"redis://127.0.0.1:{redis_port}", "--jwt-secret", SECRET, port=port)
    proc.wait_for_log(CONNECTED)
    redis = redis_py.Redis(host="127.0.0.1", port=redis_port)
    redis_pid = int(redis.info("server")["process_id"])
    # a plugin's burst cannot make it cut the subscriber, so nothing warns of that either
    assert redis.config_get("client-output-buffer-limit")["client-output-buffer-limit"].endswith("pubsub 0 0 0")
    minted = await mint(f"http://127.0.0.1:{port}", "room")
    await join_and_receive(f"ws://127.0.0.1:{port}/websocket", minted["token"], "room", redis)
    redis.close()
    log = stop_cleanly(proc)
    assert process_gone(redis_pid)
    assert not is_listening("127.0.0.1", redis_port)
    lines = [line for line in log.splitlines() if EMBEDDED_LINE in line]
    assert len(lines) == 1 and f"127.0.0.1:{redis_port}" in lines[0]
    assert "client-output-buffer-limit" not in log


@pytest_twisted.ensureDeferred
async def test_embedded_redis_false_never_starts_one(twistd):
    """--embedded-redis false with nothing at redis_url starts no redis-server; joins get 'redis unavailable'."""
    port, redis_port = free_port(), free_port()
    proc = twistd(
        *listen(port), "--redis-url", f"redis://127.0.0.1:{redis_port}", "--embedded-redis", "false",
        "--jwt-secret", SECRET, port=port,
    )
    minted = await mint(f"http://127.0.0.1:{port}", "room")
    client = await connect(f"ws://127.0.0.1:{port}/websocket")
    reply = await client.reply(client.join("room", minted["token"]))
    assert reply[4] == {"status": "error", "response": {"reason": "redis unavailable"}}
    assert not is_listening("127.0.0.1", redis_port)
    assert EMBEDDED_LINE not in stop_cleanly(proc)


def test_the_process_wide_set_up_is_logged_under_twistd_and_left_out_of_a_test_process(twistd, flushed_redis):
    """The allocator tuning and signal handlers act on the whole process: only one of the service's own."""
    service = start_twistd(twistd, "--redis-url", flushed_redis.url)
    service.wait_for_log("large buffers get mappings of their own")
    options = Options()
    options.parseOptions(["--redis-url", flushed_redis.url, "--embedded-redis", "false"])
    in_process = makeService(options, environ={"TANGRAM_CHANNEL_JWT_SECRET": "x" * 32})
    assert [type(s) for s in in_process if isinstance(s, ProcessSetup)] == []
    assert any(isinstance(s, ChannelService) for s in in_process)
