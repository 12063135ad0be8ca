"""gamed.config (defaults < TOML file < command line) and the twistd Options around it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from twisted.internet.endpoints import serverFromString
from twisted.internet.protocol import Factory
from twisted.internet.testing import MemoryReactor
from twisted.python import usage

from gamed.config import COERCERS, ConfigError, Settings, build_settings
from gamed.middleware import registry
from gamed.tap import Options


def write(tmp_path: Path, text: str, name: str = "gamed.toml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def listens_on(description: str | None) -> tuple[str, object, str] | None:
    """What an endpoint description binds: ("tcp", port, interface) or ("unix", path, "").

    Compares endpoints by meaning, so extra parameters (e.g. a backlog) don't matter.
    """
    if description is None:
        return None
    reactor = MemoryReactor()
    serverFromString(reactor, description).listen(Factory())
    if reactor.tcpServers:
        port, _factory, _backlog, interface = reactor.tcpServers[0]
        return ("tcp", port, interface)
    path = reactor.unixServers[0][0]
    return ("unix", path, "")


def config_error(option: str, *fragments: str, cli=None, path=None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        build_settings(cli or {}, path)
    text = str(info.value)
    assert text.startswith(f"--{option}:"), text
    assert info.value.option == option
    for fragment in fragments:
        assert fragment in text, f"{fragment!r} not in {text!r}"
    return info.value


# -- defaults ----------------------------------------------------------------------------


def test_defaults() -> None:
    s = build_settings({})
    assert s == Settings()
    assert s.port == "tcp:7000"
    assert s.metrics_port == "tcp:9700:interface=127.0.0.1"
    assert s.data_dir == "./gamed-data"
    assert s.max_frame_bytes == 65536
    assert s.max_connections == 10000
    assert s.max_room_users == 100
    assert s.idle_timeout == 30.0
    assert s.middleware is None
    assert s.max_outgoing_bytes == 1024 * 1024
    assert s.shutdown_grace == 3.0
    assert s.config_file is None
    assert dict(s.plugin_config) == {}
    assert dict(s.for_plugin("anything")) == {}


def test_options_given_as_none_are_ignored() -> None:
    assert build_settings({option: None for option in COERCERS}) == Settings()


def test_settings_are_frozen() -> None:
    s = build_settings({})
    with pytest.raises(AttributeError):
        s.port = "tcp:1"  # type: ignore[misc]


def test_every_option_maps_to_a_settings_field() -> None:
    fields = set(Settings.__dataclass_fields__)
    assert {name for name, _ in COERCERS.values()} <= fields
    assert set(Options().keys()) >= set(COERCERS) | {"config"}


# -- file and command line ---------------------------------------------------------------


def test_toml_server_table_applies(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
[server]
port = "tcp:7100"
metrics_port = 9800
data_dir = "/var/lib/gamed"
max_frame_bytes = 1024
max_connections = 50
max_room_users = 4
idle_timeout = 12.5
middleware = ["alpha", "beta"]
max_outgoing_bytes = 8192
shutdown_grace = 0
""",
    )
    s = build_settings({}, path)
    assert listens_on(s.port) == ("tcp", 7100, "")
    assert listens_on(s.metrics_port) == ("tcp", 9800, "127.0.0.1")
    assert s.data_dir == "/var/lib/gamed"
    assert s.max_frame_bytes == 1024
    assert s.max_connections == 50
    assert s.max_room_users == 4
    assert s.idle_timeout == 12.5
    assert s.middleware == ("alpha", "beta")
    assert s.max_outgoing_bytes == 8192
    assert s.shutdown_grace == 0.0
    assert s.config_file == path


def test_cli_beats_file_beats_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, '[server]\nport = 7100\nmax_room_users = 4\nidle_timeout = "5"\n')
    s = build_settings({"port": "7200", "idle-timeout": "9"}, path)
    assert listens_on(s.port) == ("tcp", 7200, "")  # command line
    assert s.idle_timeout == 9.0  # command line over file
    assert s.max_room_users == 4  # file
    assert s.max_connections == 10000  # default


def test_file_middleware_tables_are_exposed_per_plugin(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
[middleware.ratelimit]
rate = 5
burst = 10

[middleware.auth]
secret = "s3cret"
""",
    )
    s = build_settings({}, path)
    assert dict(s.for_plugin("ratelimit")) == {"rate": 5, "burst": 10}
    assert dict(s.for_plugin("auth")) == {"secret": "s3cret"}
    assert dict(s.for_plugin("other")) == {}
    with pytest.raises(TypeError):
        s.for_plugin("auth")["secret"] = "changed"  # type: ignore[index]


def test_empty_config_file_gives_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, "")
    s = build_settings({}, path)
    assert s.port == Settings().port
    assert s.config_file == path


# -- endpoints ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("7001", "tcp:7001"),
        (7001, "tcp:7001"),
        (" 7001 ", "tcp:7001"),
        ("0", "tcp:0"),
        ("tcp:7001:interface=0.0.0.0", "tcp:7001:interface=0.0.0.0"),
        ("tcp6:7001", "tcp6:7001"),
        ("unix:/tmp/gamed.sock", "unix:/tmp/gamed.sock"),
    ],
)
def test_port_forms(raw: object, expected: str) -> None:
    port = build_settings({"port": raw}).port
    assert port.split(":")[0] == expected.split(":")[0]
    assert listens_on(port) == listens_on(expected)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("9701", "tcp:9701:interface=127.0.0.1"),
        (9701, "tcp:9701:interface=127.0.0.1"),
        ("tcp:9701", "tcp:9701"),
        ("tcp:9701:interface=0.0.0.0", "tcp:9701:interface=0.0.0.0"),
        ("none", None),
        ("None", None),
        ("off", None),
    ],
)
def test_metrics_port_forms(raw: object, expected: str | None) -> None:
    assert listens_on(build_settings({"metrics-port": raw}).metrics_port) == listens_on(expected)


def test_none_is_not_allowed_for_the_game_port() -> None:
    config_error("port", "not a valid endpoint description", cli={"port": "none"})


@pytest.mark.parametrize("raw", ["70000", "65536", "99999999"])
def test_bare_port_out_of_range(raw: str) -> None:
    config_error("port", "out of range", cli={"port": raw})
    config_error("metrics-port", "out of range", cli={"metrics-port": raw})


@pytest.mark.parametrize("raw", ["bogus:1", "tcp:abc", "-1", "", "tcp:1:nosuch=2"])
def test_bad_endpoint_descriptions(raw: str) -> None:
    config_error("port", "not a valid endpoint description", cli={"port": raw})


@pytest.mark.parametrize("raw", ["tcp:70000", "tcp:-5"])
def test_explicit_tcp_port_out_of_range(raw: str) -> None:
    config_error("port", cli={"port": raw})


# -- every option's bad values -------------------------------------------------------------


BAD_VALUES = [
    ("max-frame-bytes", "abc", "expected an integer"),
    ("max-frame-bytes", "1.5", "expected an integer"),
    ("max-frame-bytes", 1.5, "expected an integer"),
    ("max-frame-bytes", True, "expected an integer"),
    ("max-frame-bytes", "63", "between 64 and 16777216"),
    ("max-frame-bytes", str(16 * 1024 * 1024 + 1), "between 64 and 16777216"),
    ("max-partial-bytes", "65535", "between 65536 and 68719476736"),
    ("max-partial-bytes", "lots", "expected an integer"),
    ("max-connections", "0", "between 1 and 1000000"),
    ("max-connections", "1000001", "between 1 and 1000000"),
    ("max-connections", "", "expected an integer"),
    ("max-room-users", "0", "between 1 and 100000"),
    ("max-room-users", "-3", "between 1 and 100000"),
    ("max-room-users", "ten", "expected an integer"),
    ("max-outgoing-bytes", "4095", "between 4096"),
    ("max-outgoing-bytes", str(1024**3 + 1), "between 4096"),
    ("idle-timeout", "soon", "expected a number of seconds"),
    ("idle-timeout", "-1", "between 0 and 86400"),
    ("idle-timeout", "86401", "between 0 and 86400"),
    ("idle-timeout", "nan", "between 0 and 86400"),
    ("idle-timeout", "inf", "between 0 and 86400"),
    ("idle-timeout", False, "expected seconds"),
    ("shutdown-grace", "301", "between 0 and 300"),
    ("shutdown-grace", "x", "expected a number of seconds"),
    ("shutdown-grace", [1], "expected a number of seconds"),
    ("data-dir", "", "must not be empty"),
    ("data-dir", "   ", "must not be empty"),
    ("middleware", "a,,b", "empty plugin name"),
    ("middleware", ",", "empty plugin name"),
    ("middleware", "a,b,a", "listed twice"),
    ("middleware", ["a", "a"], "listed twice"),
    ("middleware", ["a", " "], "empty plugin name"),
    ("port", "nope:1", "not a valid endpoint description"),
    ("metrics-port", "nope:1", "not a valid endpoint description"),
    ("rate-limit", "-1", "between 0 and 1000000"),
    ("rate-limit", "fast", "expected an integer"),
    ("flood-detection", "maybe", "expected on, off or shadow"),
    ("auth-secret-file", "", "must not be empty"),
    ("admin-token-file", " ", "must not be empty"),
    ("round-limit", "0", "between 1 and 10000"),
    ("turn-timeout", "0", "between 0.1 and 86400"),
    ("reconnect-grace", "-1", "between 0 and 86400"),
    ("redis", "http://127.0.0.1:6379", "expected redis://"),
    ("node-id", "a b", "letters, digits"),
    ("workers", "0", "between 1 and 256"),
    ("ws-port", "nope:1", "not a valid endpoint description"),
    ("ws-port", "70000", "out of range"),
    ("ws-origins", "game.example.com", "expected origins like"),
    ("ws-origins", "ftp://x", "expected origins like"),
    ("ws-origins", "https://x/page", "expected origins like"),
    ("ws-trusted-proxies", "10.0.0.0/33", "expected an address or CIDR"),
    ("ws-trusted-proxies", "proxy.local", "expected an address or CIDR"),
]


@pytest.mark.parametrize(("option", "raw", "fragment"), BAD_VALUES)
def test_bad_value_on_the_command_line(option: str, raw: object, fragment: str) -> None:
    config_error(option, fragment, cli={option: raw})


def test_every_option_has_a_bad_value_case() -> None:
    missing = set(COERCERS) - {option for option, _, _ in BAD_VALUES}
    assert not missing, f"add a bad-value case to BAD_VALUES for {sorted(missing)}"


@pytest.mark.parametrize(
    ("key", "toml_value", "option", "fragment"),
    [
        ("max_frame_bytes", "1.5", "max-frame-bytes", "expected an integer"),
        ("max_frame_bytes", "true", "max-frame-bytes", "expected an integer"),
        ("max_room_users", "0", "max-room-users", "between 1"),
        ("idle_timeout", "true", "idle-timeout", "expected seconds"),
        ("port", "[1]", "port", "not a valid endpoint description"),
        ("metrics_port", "70000", "metrics-port", "out of range"),
        ("middleware", '["x", "x"]', "middleware", "listed twice"),
        ("data_dir", '""', "data-dir", "must not be empty"),
    ],
)
def test_bad_value_in_the_file_names_the_option(
    tmp_path: Path, key: str, toml_value: str, option: str, fragment: str
) -> None:
    path = write(tmp_path, f"[server]\n{key} = {toml_value}\n")
    config_error(option, fragment, path=path)


@pytest.mark.parametrize(
    ("raw", "expected"), [("1_000", 1000), (" 100 ", 100), (100, 100), ("64", 64)]
)
def test_integer_forms(raw: object, expected: int) -> None:
    assert build_settings({"max-frame-bytes": raw}).max_frame_bytes == expected


def test_seconds_accept_fractions_and_zero() -> None:
    s = build_settings({"idle-timeout": "0", "shutdown-grace": "0.25"})
    assert s.idle_timeout == 0.0
    assert s.shutdown_grace == 0.25


def test_data_dir_expands_user() -> None:
    s = build_settings({"data-dir": "~/gamed"})
    assert s.data_dir == os.path.expanduser("~/gamed")
    assert not s.data_dir.startswith("~")


# -- middleware lists ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("all", None),
        ("ALL", None),
        ("default", None),
        ("none", ()),
        ("NONE", ()),
        ("", ()),
        ("auth", ("auth",)),
        (" auth , ratelimit ", ("auth", "ratelimit")),
        ("b,a", ("b", "a")),
        (["x", "y"], ("x", "y")),
        ([], ()),
    ],
)
def test_middleware_forms(raw: object, expected: tuple[str, ...] | None) -> None:
    assert build_settings({"middleware": raw}).middleware == expected


# -- the config file itself ----------------------------------------------------------------


def test_unknown_server_key_names_config(tmp_path: Path) -> None:
    path = write(tmp_path, "[server]\nport = 7001\ncolour = 'red'\n")
    config_error("config", "unknown key [server].colour", path, path=path)


def test_unknown_top_level_table_names_config(tmp_path: Path) -> None:
    path = write(tmp_path, "[server]\nport = 7001\n\n[database]\nurl = 'x'\n")
    config_error("config", "unknown table", "database", path=path)


def test_middleware_entry_that_is_not_a_table(tmp_path: Path) -> None:
    path = write(tmp_path, "[middleware]\nauth = 1\n")
    config_error("config", "[middleware.auth] must be a table", path=path)


def test_missing_file(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.toml")
    config_error("config", "cannot read", missing, path=missing)


def test_directory_instead_of_file(tmp_path: Path) -> None:
    config_error("config", "cannot read", path=str(tmp_path))


def test_invalid_toml(tmp_path: Path) -> None:
    path = write(tmp_path, "[server\nport = \n")
    config_error("config", "is not valid TOML", path, path=path)


def test_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_bytes(b"[server]\nport = '\xff'\n")
    config_error("config", "is not valid TOML", path=str(path))


@pytest.mark.parametrize("text", ["server = 5\n", 'middleware = "auth"\n'])
def test_top_level_key_that_should_be_a_table(tmp_path: Path, text: str) -> None:
    config_error("config", "table", path=write(tmp_path, text))


# -- twistd Options --------------------------------------------------------------------------


def parse(*argv: str) -> Options:
    opts = Options()
    opts.parseOptions(list(argv))
    return opts


def test_options_defaults_produce_settings() -> None:
    opts = parse()
    assert opts.settings == Settings()


def test_options_good_values(tmp_path: Path) -> None:
    path = write(tmp_path, "[server]\nmax_room_users = 4\nport = 7100\n")
    opts = parse(
        "--port",
        "7001",
        "--metrics-port",
        "none",
        "--ws-port",
        "none",
        "--data-dir",
        str(tmp_path / "d"),
        "--max-frame-bytes",
        "1024",
        "--idle-timeout",
        "2.5",
        "--middleware",
        "none",
        "-c",
        path,
    )
    s = opts.settings
    assert listens_on(s.port) == ("tcp", 7001, "")
    assert s.metrics_port is None
    assert s.data_dir == str(tmp_path / "d")
    assert s.max_frame_bytes == 1024
    assert s.idle_timeout == 2.5
    assert s.middleware == ()
    assert s.max_room_users == 4  # from the file
    assert s.config_file == path


def test_options_short_flags() -> None:
    s = parse("-p", "7002", "-d", "/tmp/x", "-m", "none").settings
    assert listens_on(s.port) == ("tcp", 7002, "")
    assert (s.data_dir, s.middleware) == ("/tmp/x", ())


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("port", "bogus:1"),
        ("port", "70000"),
        ("metrics-port", "tcp:x"),
        ("data-dir", ""),
        ("max-frame-bytes", "big"),
        ("max-connections", "0"),
        ("max-room-users", "-1"),
        ("idle-timeout", "-5"),
        ("max-outgoing-bytes", "1"),
        ("shutdown-grace", "forever"),
        ("middleware", "a,a"),
    ],
)
def test_options_bad_value_is_a_usage_error(option: str, value: str) -> None:
    with pytest.raises(usage.UsageError) as info:
        parse(f"--{option}", value)
    assert str(info.value).startswith(f"--{option}:")


def test_options_bad_config_file_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(usage.UsageError, match=r"^--config: cannot read"):
        parse("--config", str(tmp_path / "missing.toml"))
    bad = write(tmp_path, "[server]\nnope = 1\n")
    with pytest.raises(usage.UsageError, match=r"^--config: unknown key"):
        parse("--config", bad)


def test_options_unknown_middleware_is_refused() -> None:
    assert "bogus" not in registry.available()
    with pytest.raises(usage.UsageError) as info:
        parse("--middleware", "bogus")
    text = str(info.value)
    assert text.startswith("--middleware:")
    assert "unknown plugin 'bogus'" in text
    assert "available:" in text


def test_options_unknown_middleware_from_the_file_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, '[server]\nmiddleware = ["bogus"]\n')
    with pytest.raises(usage.UsageError, match=r"^--middleware: unknown plugin 'bogus'"):
        parse("--config", path)


def test_options_unknown_flag() -> None:
    with pytest.raises(usage.UsageError):
        parse("--no-such-flag", "1")


@pytest.mark.parametrize("option", ["--auth-secret-file", "--admin-token-file"])
def test_auth_and_admin_need_the_security_plugin(tmp_path: Path, option: str) -> None:
    from twisted.python import usage

    from gamed.tap import Options

    secret = tmp_path / "s"
    secret.write_text("x" * 32)
    with pytest.raises(usage.UsageError, match=f"{option}: needs the security|{option} needs"):
        Options().parseOptions([option, str(secret), "--middleware", "none"])


# -- plugin tables at start: one contract, one error naming [middleware.NAME] key --------------


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        (
            '[middleware.security]\nrate_limit_per_minute = "x"\n',
            "[middleware.security] rate_limit_per_minute: expected an integer, got 'x'",
        ),
        (
            "[middleware.security]\nrate_limit = 5\n",
            "[middleware.security] rate_limit: unknown key (see docs/security.md)",
        ),
        (
            '[middleware.metrics]\ncollection_interval = "x"\n',
            "[middleware.metrics] collection_interval: expected a number, got 'x'",
        ),
        (
            "[middleware.metrics]\ninterval = 5\n",
            "[middleware.metrics] interval: unknown key; known: collection_interval, top_rooms, "
            "latency_samples, room_window, log",
        ),
        (
            "[middleware.analytics]\nflush_interval = 0\n",
            "[middleware.analytics] flush_interval: must be 0.1..3600, got 0",
        ),
        (
            "[middleware.analytics]\nflush_every = 1\n",
            "[middleware.analytics] flush_every: unknown key; known: queue_size, tick_interval, "
            "flush_interval, max_users, max_rooms, recent_size, sse_max_backlog, sse_heartbeat, "
            "max_stream_clients, retention_days, favourite_rooms",
        ),
        (
            '[middleware.cache]\nl1_size = "big"\n',
            "[middleware.cache] l1_size: expected a number, got 'big'",
        ),
    ],
)
def test_a_bad_plugin_table_is_a_usage_error_naming_table_and_key(
    tmp_path: Path, table: str, expected: str
) -> None:
    path = write(tmp_path, table)
    with pytest.raises(usage.UsageError) as info:
        parse("--config", path)
    assert str(info.value) == expected


def test_an_unknown_plugin_table_is_a_usage_error(tmp_path: Path) -> None:
    path = write(tmp_path, "[middleware.securty]\nallowlist = []\n")
    with pytest.raises(usage.UsageError) as info:
        parse("--config", path)
    text = str(info.value)
    assert text.startswith("[middleware.securty]: unknown table: no plugin 'securty' is installed")
    assert "security" in text  # the list of what is installed, to spot the typo


def test_the_table_of_a_disabled_plugin_is_checked_too(tmp_path: Path) -> None:
    path = write(tmp_path, "[middleware.metrics]\ntop_rooms = -1\n")
    with pytest.raises(usage.UsageError, match=r"^\[middleware\.metrics\] top_rooms: must be"):
        parse("--config", path, "--middleware", "security")


def test_plugins_get_their_validated_config(tmp_path: Path) -> None:
    from gamed.middleware.metrics.middleware import MetricsConfig
    from gamed.middleware.security.middleware import SecurityConfig

    path = write(
        tmp_path,
        "[middleware.security]\nrate_limit_per_minute = 7\n"
        "[middleware.metrics]\ntop_rooms = 3\n"
        "[middleware.analytics]\nqueue_size = 500\n",
    )
    configs = parse("--config", path).validated.configs
    assert isinstance(configs["security"], SecurityConfig)
    assert configs["security"].policy.rate_limit_per_minute == 7
    assert configs["metrics"] == MetricsConfig(top_rooms=3)
    assert configs["analytics"]["queue_size"] == 500


@pytest.mark.parametrize("option", ["auth-secret-file", "admin-token-file"])
def test_an_unreadable_secret_file_is_a_usage_error_naming_the_option(
    tmp_path: Path, option: str
) -> None:
    with pytest.raises(usage.UsageError, match=rf"^--{option}: cannot read .*missing"):
        parse(f"--{option}", str(tmp_path / "missing"))


def test_a_factory_without_a_validate_step_gets_its_table_as_is(monkeypatch) -> None:
    """Third-party plugins written before the contract (a bare factory callable)."""
    from prometheus_client import CollectorRegistry
    from twisted.internet.task import Clock

    from gamed.config import PluginConfigError
    from gamed.events import EventBus
    from gamed.middleware.registry import PluginEnvironment, PluginParts

    seen: dict[str, object] = {}

    def old_style(env: PluginEnvironment) -> PluginParts:
        seen["config"] = env.config
        return PluginParts(middleware=object(), reload=lambda s: seen.setdefault("reload", s))

    class EntryPoint:
        name = "oldstyle"

        def load(self) -> object:
            return old_style

    monkeypatch.setattr(registry, "_third_party", lambda: {"oldstyle": EntryPoint()})
    factory = registry.load("oldstyle")
    assert factory.validate is None
    table = {"anything": [1, 2]}
    assert factory.check("oldstyle", table, Settings()) is table
    env = PluginEnvironment(Settings(), table, Clock(), EventBus(), CollectorRegistry(), None)
    parts = factory.make(env)
    assert seen["config"] is table
    assert parts.reload is not None
    parts.reload(Settings(round_limit=3), table)  # called the old way: with Settings only
    assert seen["reload"] == Settings(round_limit=3)

    def strict(table: object, settings: Settings) -> object:
        raise ValueError("bad thing")

    failing = registry.PluginFactory(make=old_style, validate=strict)
    with pytest.raises(PluginConfigError, match=r"^\[middleware\.oldstyle\]: bad thing$"):
        failing.check("oldstyle", {}, Settings())


def test_ws_defaults_and_forms() -> None:
    d = build_settings({})
    assert (d.ws_port, d.ws_origins, d.ws_trusted_proxies) == ("tcp:7080", None, ())
    s = build_settings(
        {
            "ws-port": "8080",
            "ws-origins": "https://Game.example.com/, http://localhost:*",
            "ws-trusted-proxies": "10.0.0.1, 192.168.0.0/16,::1",
        }
    )
    assert listens_on(s.ws_port) == ("tcp", 8080, "")  # a player port: every interface
    assert s.ws_origins == ("https://game.example.com", "http://localhost:*")
    assert s.ws_trusted_proxies == ("10.0.0.1/32", "192.168.0.0/16", "::1/128")
    assert build_settings({"ws-port": "none"}).ws_port is None
    assert build_settings({"ws-origins": "*"}).ws_origins == ("*",)
    assert build_settings({"ws-origins": "default"}).ws_origins is None


def test_ws_keys_in_the_config_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[server]\nws_port = "tcp:0"\nws_origins = ["https://a.example"]\n'
        'ws_trusted_proxies = ["10.0.0.0/8"]\n',
    )
    s = build_settings({}, str(path))
    assert (s.ws_port, s.ws_origins, s.ws_trusted_proxies) == (
        "tcp:0",
        ("https://a.example",),
        ("10.0.0.0/8",),
    )


def test_a_tls_endpoint_problem_is_one_line() -> None:
    """ssl: endpoints load pyOpenSSL and read their files while parsing: either failure names
    the option instead of a traceback."""
    with pytest.raises(ConfigError) as e:
        build_settings({"ws-port": "ssl:8443:privateKey=/nonexistent/key.pem"})
    assert e.value.option == "ws-port"
    assert "twisted[tls]" in str(e.value) or "cannot read" in str(e.value)


def test_more_than_one_worker_needs_redis() -> None:
    with pytest.raises(ConfigError, match="--workers: more than 1 worker needs --redis"):
        build_settings({"workers": "2"})
    assert build_settings({"workers": "2", "redis": "redis://127.0.0.1:6379/0"}).workers == 2


def test_a_rediss_url_may_name_its_ca_file(tmp_path: Path) -> None:
    from gamed.cluster.url import parse_redis_url

    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    url = f"rediss://:pw@127.0.0.1:6380/0?ca={ca}"
    assert build_settings({"redis": url}).redis == url
    assert parse_redis_url(url).ca_file == str(ca)
    assert parse_redis_url(url).display() == "rediss://***@127.0.0.1:6380/0"
    with pytest.raises(ConfigError, match=r"ca=.*cannot read the CA file"):
        build_settings({"redis": f"rediss://127.0.0.1:6380/0?ca={tmp_path / 'missing.pem'}"})
    with pytest.raises(ConfigError, match=r"ca= is for rediss://"):
        build_settings({"redis": f"redis://127.0.0.1:6379/0?ca={ca}"})
    with pytest.raises(ConfigError, match="unknown URL parameter"):
        build_settings({"redis": "rediss://127.0.0.1:6380/0?timeout=3"})
