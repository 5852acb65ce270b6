"""
What a release promises (issue 19): one version, shown by both commands, ``/healthz``
and the package metadata, and first in ``CHANGELOG.rst``; the installed package carries
the twistd plugin and the admin page; the deployment guide's install commands work as
written, though the package is not on PyPI (issue 16). CI also runs this module from the
built wheel, in a venv that never saw the checkout.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
from importlib.resources import files
from pathlib import Path

import pytest_twisted
import treq
from twisted.application.service import IServiceMaker
from twisted.plugin import getPlugins

from tangram_channel import __version__

from .conftest import ROOT
from .rst import commands, literal_blocks, section

BIN = Path(sys.executable).parent


def output_of(*argv: str) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_the_version_is_defined_once_and_shown_everywhere():
    assert importlib.metadata.version("tangram-channel") == __version__
    assert output_of(str(BIN / "tangram-channel"), "--version") == f"tangram-channel {__version__}"
    assert output_of(str(BIN / "twistd"), "tangram-channel", "--version") == f"tangram-channel {__version__}"
    first = re.search(r"^(\d+\.\d+\.\S+)", (ROOT / "CHANGELOG.rst").read_text(), re.MULTILINE)
    assert first is not None and first.group(1) == __version__, "CHANGELOG.rst must start with this version"


@pytest_twisted.ensureDeferred
async def test_healthz_reports_the_version(start_service):
    service = await start_service(datetime_interval=0)
    response = await treq.get(f"{service.base_url}/healthz")
    assert (await response.json())["version"] == __version__


def test_the_installed_package_carries_the_twistd_plugin_and_the_admin_page():
    """``twistd tangram-channel`` finds its plugin and ``/admin`` its page wherever the package is installed."""
    import twisted.plugins

    assert "tangram-channel" in [maker.tapname for maker in getPlugins(IServiceMaker, twisted.plugins)]
    assert "<html" in (files("tangram_channel") / "admin.html").read_text().lower()


def test_the_deploy_guides_install_commands_build_and_install_the_wheel(tmp_path):
    """
    docs/deploy.rst's first commands, as written, in a copy of the checkout: ``pip wheel``
    builds the wheel, a fresh venv installs it with its dependencies, and its
    ``tangram-channel --version`` runs from that venv (``pip install tangram-channel``
    from PyPI finds nothing, so the guide must not say it).
    """
    block = literal_blocks(section((ROOT / "docs" / "deploy.rst").read_text(), "One node under systemd"))[0]
    install = [command for command in commands(block) if not command.startswith("useradd")]
    assert "pip install tangram-channel" not in block
    checkout = tmp_path / "checkout"
    shutil.copytree(
        ROOT, checkout,
        ignore=shutil.ignore_patterns(".git", ".venv*", "node_modules", "dist", "build", "*.egg-info", "benchmarks"),
    )
    venv = tmp_path / "opt"
    # the guide's bare pip and python3 are this venv's; its /opt/tangram-channel is a fresh one
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env["PATH"] = f"{BIN}{os.pathsep}{env['PATH']}"
    for command in install:
        done = subprocess.run(
            command.replace("/opt/tangram-channel", str(venv)), shell=True, cwd=checkout, env=env,
            capture_output=True, text=True, timeout=600,
        )
        assert done.returncode == 0, f"{command}\n{done.stderr}"
    assert install[-1].endswith("tangram-channel --version")
    assert done.stdout.strip() == f"tangram-channel {__version__}"
