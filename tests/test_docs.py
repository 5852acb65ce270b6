"""
The operator's documents stay true to the code (issue 7, point 6): the README's table
names every config key, the systemd unit runs the service as the docs say, and the
deployment guide's nginx block passes the WebSocket upgrade.
"""

from __future__ import annotations

import dataclasses
import re

from tangram_channel.config import Config

from .conftest import ROOT


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
    unit = (ROOT / "contrib" / "tangram-channel.service").read_text()
    settings = dict(
        line.split("=", 1) for line in unit.splitlines() if "=" in line and not line.startswith(("#", " "))
    )
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
