"""
nginx as docs/deploy.rst configures it, in front of a service under test.

The server block is read out of the guide itself, so the tests see what an operator who
copies it gets; only what must differ on a test machine is changed: the ports, and plain
HTTP instead of TLS (the certificate lines go). nginx runs in the foreground as a
subprocess, with its pid, logs and temporary files in the test's directory.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import ROOT, free_port, wait_for_port

GUIDE = ROOT / "docs" / "deploy.rst"


def documented_block() -> str:
    """The literal block after "A complete server block::" in docs/deploy.rst, dedented."""
    after = GUIDE.read_text().split("A complete server block::\n\n", 1)[1]
    lines = []
    for line in after.splitlines():
        if line and not line.startswith("    "):
            break
        lines.append(line[4:])
    return "\n".join(lines).strip() + "\n"


def _replace_once(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, f"the guide's nginx block no longer has exactly one {old!r}"
    return text.replace(old, new)


def adapted_block(upstream_port: int, listen_port: int) -> str:
    """The guide's block with the service on ``upstream_port`` and nginx on ``listen_port``, without TLS."""
    block = _replace_once(documented_block(), "server 127.0.0.1:2347;", f"server 127.0.0.1:{upstream_port};")
    block = _replace_once(block, "listen 443 ssl;", f"listen 127.0.0.1:{listen_port};")
    return "\n".join(line for line in block.splitlines() if "ssl_certificate" not in line) + "\n"


def nginx_conf(block: str, directory: Path) -> str:
    """A whole nginx.conf around ``block``: foreground, everything nginx writes inside ``directory``."""
    temp = "\n".join(f"    {kind}_temp_path {directory / kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return (
        f"daemon off;\nworker_processes 1;\npid {directory / 'nginx.pid'};\nerror_log {directory / 'error.log'};\n"
        f"events {{ worker_connections 256; }}\nhttp {{\n    access_log off;\n{temp}\n{block}}}\n"
    )


class Nginx:
    """One nginx process and the base URL it serves."""

    def __init__(self, process: subprocess.Popen[bytes], url: str) -> None:
        self.process = process
        self.url = url

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


@pytest.fixture
def documented_nginx(tmp_path: Path) -> Iterator:
    """``documented_nginx(service_port)``: the guide's nginx in front of it, an ``Nginx``. Stopped afterwards."""
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(binary).exists():
        pytest.fail("no nginx: apt-get install nginx (tests/run.sh does)")
    started: list[Nginx] = []

    def start(service_port: int) -> Nginx:
        directory = tmp_path / f"nginx-{len(started)}"
        directory.mkdir()
        port = free_port()
        conf = directory / "nginx.conf"
        conf.write_text(nginx_conf(adapted_block(service_port, port), directory))
        process = subprocess.Popen(
            [binary, "-p", str(directory), "-c", str(conf), "-e", str(directory / "error.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        started.append(Nginx(process, f"http://127.0.0.1:{port}"))
        wait_for_port(port)
        return started[-1]

    yield start
    for nginx in started:
        nginx.stop()
