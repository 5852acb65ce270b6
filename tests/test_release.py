"""
What a release promises (issue 19): one version, shown by both commands, ``/healthz``
and the package metadata, and first in ``CHANGELOG.rst``; the installed package carries
the twistd plugin and the admin page. CI also runs this module from the built wheel, in a
venv that never saw the checkout.
"""

from __future__ import annotations

import importlib.metadata
import re
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
