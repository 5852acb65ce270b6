"""
The operator's documents stay true to the code (issue 7, point 6): the README's table
names every config key, the systemd unit runs the service as the docs say, and the
deployment guide's nginx block passes the WebSocket upgrade. Issue 16: every guide under
docs/ is linked from the README, and the Tangram guide's unit starts Tangram only after
ours, with the same config.
"""

from __future__ import annotations

import dataclasses
import re

from tangram_channel.config import Config

from .conftest import ROOT
from .rst import literal_blocks, unit_settings


def test_readme_table_names_every_config_key():
    """Each key of Config appears in the first column of the README's configuration table, and no other."""
    readme = (ROOT / "README.rst").read_text()
    table = readme.split("Configuration\n-------------", 1)[1].split("\nWire protocol", 1)[0]
    width = next(line for line in table.splitlines() if line.startswith("=")).index(" ")
    documented = set()
    for line in table.splitlines():
        first_column = line[:width]
        documented.update(re.findall(r"``([a-z_]+)``", first_column))
    assert documented == {field.name for field in dataclasses.fields(Config)}


def test_every_foreground_twistd_example_writes_no_pidfile():
    """
    ``twistd -n`` leaves ./twistd.pid, which stops a second node from the same folder:
    every example in README.rst and docs/ says ``--pidfile=`` before ``tangram-channel``.
    """
    examples = [
        (path.name, match.group(0))
        for path in [ROOT / "README.rst", *sorted((ROOT / "docs").glob("*.rst"))]
        for match in re.finditer(r"twistd -n\b.*?tangram-channel", path.read_text())
    ]
    assert examples
    assert [example for example in examples if "--pidfile" not in example[1]] == []


def test_systemd_unit_runs_twistd_in_the_foreground_with_the_secret_from_a_file():
    """contrib/tangram-channel.service: Type=simple, twistd -n with --config, EnvironmentFile, Restart=on-failure."""
    settings = unit_settings((ROOT / "contrib" / "tangram-channel.service").read_text())
    assert settings["Type"] == "simple"
    assert settings["Restart"] == "on-failure"
    assert settings["EnvironmentFile"].startswith("/etc/tangram/")
    command = settings["ExecStart"].split()
    assert command[0].endswith("/twistd") and "-n" in command
    assert command[command.index("tangram-channel") + 1 :] == ["--config", "/etc/tangram/tangram.toml"]


def test_deploy_guide_proxies_token_and_websocket_with_upgrade_headers():
    """docs/deploy.rst's nginx block proxies /token and /websocket, the latter with Upgrade and Connection."""
    guide = (ROOT / "docs" / "deploy.rst").read_text()
    assert "location = /token" in guide
    websocket = guide.split("location /websocket {", 1)[1].split("}", 1)[0]
    assert "proxy_http_version 1.1;" in websocket
    assert "proxy_set_header Upgrade $http_upgrade;" in websocket
    assert "proxy_set_header Connection $connection_upgrade;" in websocket
    assert "docs/deploy.rst" in (ROOT / "README.rst").read_text()


def test_every_guide_under_docs_is_linked_from_the_readme():
    """Each docs/*.rst is the target of a link in README.rst, so a reader finds it."""
    linked = set(re.findall(r"`[^`<]+<(docs/[^>]+)>`_", (ROOT / "README.rst").read_text()))
    assert linked == {f"docs/{guide.name}" for guide in (ROOT / "docs").glob("*.rst")}


def test_tangram_unit_starts_after_ours_waits_for_its_port_and_reads_the_same_config():
    """docs/tangram.rst's unit: ordered after and wanting ours, probing ours' port, the same tangram.toml."""
    ours = unit_settings((ROOT / "contrib" / "tangram-channel.service").read_text())
    guide = (ROOT / "docs" / "tangram.rst").read_text()
    tangram = unit_settings(next(block for block in literal_blocks(guide) if "[Unit]" in block))
    assert "tangram-channel.service" in tangram["After"].split()
    assert "tangram-channel.service" in tangram["Wants"].split()
    assert "Requires" not in tangram  # restarting ours must not restart Tangram
    assert "http://127.0.0.1:2347/" in tangram["ExecStartPre"]  # ours' default [channel] port
    config = ours["ExecStart"].split("--config", 1)[1].split()[0]
    assert tangram["ExecStart"].split()[1:] == ["serve", "--config", config]
