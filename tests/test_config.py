"""Configuration: precedence, parsing and validation."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from foreman.app.config import (
    SETTINGS,
    Config,
    ConfigError,
    load_config,
    parse_duration,
    parse_size,
    unknown_env_warnings,
)

LAYERS = ("option", "env", "toml", "default")


def _write_toml(tmp: Path, body: str) -> str:
    path = tmp / "foreman.toml"
    path.write_text(body)
    return str(path)


@given(present=st.sets(st.sampled_from(LAYERS[:3])))
def test_precedence_option_over_env_over_toml_over_default(
    tmp_path_factory: pytest.TempPathFactory, present: set[str]
) -> None:
    tmp = tmp_path_factory.mktemp("cfg")
    values = {"option": "41", "env": "42", "toml": "43"}
    options: dict[str, object] = {}
    env: dict[str, str] = {}
    if "option" in present:
        options["max_attempts"] = values["option"]
    if "env" in present:
        env["FOREMAN_MAX_ATTEMPTS"] = values["env"]
    if "toml" in present:
        options["config"] = _write_toml(tmp, f"max_attempts = {values['toml']}\n")
    config = load_config(options, env)
    expected = next((int(values[layer]) for layer in LAYERS[:3] if layer in present), 3)
    assert config.max_attempts == expected


def test_defaults_match_spec() -> None:
    config = load_config({}, {})
    assert config.listen == "tcp:8080:interface=127.0.0.1"
    assert config.target_url == "http://127.0.0.1:11434"
    assert config.data_dir == Path("./foreman-data")
    assert config.api_tokens is None
    assert config.max_queue == 10000
    assert config.max_wait == 600
    assert config.max_attempts == 3
    assert config.job_retention == 7 * 86400
    assert config.log_format == "text"
    assert config.webhook_allow_private is False
    assert config == Config()


def test_environment_values_are_parsed() -> None:
    env = {
        "FOREMAN_API_TOKENS": "a, b,,c",
        "FOREMAN_WEBHOOK_ALLOW_PRIVATE": "true",
        "FOREMAN_MAX_WAIT": "10m",
        "FOREMAN_JOB_RETENTION": "12h",
        "FOREMAN_WOL_MAC": "AA-BB-CC-DD-EE-FF",
        "FOREMAN_TARGET_URL": "http://gpu.lan:11434/",
        "FOREMAN_LOG_FORMAT": "json",
    }
    config = load_config({}, env)
    assert config.api_tokens == ("a", "b", "c")
    assert config.webhook_allow_private is True
    assert config.max_wait == 600
    assert config.job_retention == 43200
    assert config.wol_mac == "aa:bb:cc:dd:ee:ff"
    assert config.target_url == "http://gpu.lan:11434"
    assert config.log_format == "json"


def test_toml_file_accepts_lists_and_booleans(tmp_path: Path) -> None:
    path = _write_toml(
        tmp_path,
        'api_tokens = ["t1", "t2"]\nwebhook_allow_private = true\ndata-dir = "/tmp/x"\n',
    )
    config = load_config({"config": path}, {})
    assert config.api_tokens == ("t1", "t2")
    assert config.webhook_allow_private is True
    assert config.data_dir == Path("/tmp/x")


def test_config_file_from_environment(tmp_path: Path) -> None:
    path = _write_toml(tmp_path, "max_queue = 7\n")
    assert load_config({}, {"FOREMAN_CONFIG": path}).max_queue == 7


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"FOREMAN_LISTEN": "bogus:1"}, "FOREMAN_LISTEN"),
        ({"FOREMAN_LISTEN": "tcp:notaport"}, "FOREMAN_LISTEN"),
        ({"FOREMAN_TARGET_URL": "ftp://x"}, "FOREMAN_TARGET_URL"),
        ({"FOREMAN_TARGET_URL": "http://"}, "FOREMAN_TARGET_URL"),
        ({"FOREMAN_TARGET_URL": "http://host:99999"}, "FOREMAN_TARGET_URL"),
        ({"FOREMAN_MAX_QUEUE": "0"}, "FOREMAN_MAX_QUEUE"),
        ({"FOREMAN_MAX_QUEUE": "many"}, "FOREMAN_MAX_QUEUE"),
        ({"FOREMAN_MAX_WAIT": "soon"}, "FOREMAN_MAX_WAIT"),
        ({"FOREMAN_WOL_MAC": "12:34"}, "FOREMAN_WOL_MAC"),
        ({"FOREMAN_LOG_FORMAT": "xml"}, "FOREMAN_LOG_FORMAT"),
        ({"FOREMAN_WEBHOOK_ALLOW_PRIVATE": "maybe"}, "FOREMAN_WEBHOOK_ALLOW_PRIVATE"),
        ({"FOREMAN_WEBHOOK_SECRET": "nope"}, "FOREMAN_WEBHOOK_SECRET"),
        ({"FOREMAN_API_TOKENS": " , "}, "FOREMAN_API_TOKENS"),
        ({"FOREMAN_MAX_ATTEMPTS": "three"}, "FOREMAN_MAX_ATTEMPTS"),
        ({"FOREMAN_MAX_BODY": "lots"}, "FOREMAN_MAX_BODY"),
        ({"FOREMAN_MAX_RESPONSE": "0"}, "FOREMAN_MAX_RESPONSE"),
        ({"FOREMAN_TRUSTED_PROXIES": "10.0.0.0/8,nope"}, "FOREMAN_TRUSTED_PROXIES"),
        ({"FOREMAN_WOL_BROADCAST": "everyone"}, "FOREMAN_WOL_BROADCAST"),
        ({"FOREMAN_LISTEN": "ssl:443:privateKey=/no/such.pem"}, "FOREMAN_LISTEN"),
    ],
)
def test_invalid_values_name_the_setting(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config({}, env)
    message = str(info.value)
    assert message.startswith(f"{named}: expected ")
    assert "\n" not in message
    # Python's own wording (int(), float(), endpoint parsers) never reaches the user
    assert "invalid literal" not in message
    assert "Traceback" not in message


def test_a_bad_value_says_what_was_expected_and_what_was_given() -> None:
    with pytest.raises(ConfigError) as info:
        load_config({}, {"FOREMAN_MAX_ATTEMPTS": "three"})
    assert str(info.value) == "FOREMAN_MAX_ATTEMPTS: expected a whole number, got 'three'"
    with pytest.raises(ConfigError) as info:
        load_config({"max_attempts": "0"}, {})
    assert str(info.value) == "--max-attempts: expected a whole number of at least 1, got '0'"


def test_a_bad_value_in_the_file_names_the_file_and_the_key(tmp_path: Path) -> None:
    path = _write_toml(tmp_path, 'max_attempts = "three"\n')
    with pytest.raises(ConfigError) as info:
        load_config({"config": path}, {})
    assert str(info.value) == f'{path}: max_attempts: expected a whole number, got "three"'
    # the environment wins over the file, so the file's bad value is never read
    assert load_config({"config": path}, {"FOREMAN_MAX_ATTEMPTS": "4"}).max_attempts == 4
    path = _write_toml(tmp_path, "max-wait = 0\n")
    with pytest.raises(ConfigError) as info:
        load_config({"config": path}, {})
    assert str(info.value) == f"{path}: max-wait: expected a duration longer than zero, got 0"


def test_a_bad_secret_is_not_echoed() -> None:
    with pytest.raises(ConfigError) as info:
        load_config({}, {"FOREMAN_WEBHOOK_SECRET": "hunter2-but-longer"})
    assert "hunter2" not in str(info.value)
    assert str(info.value).startswith("FOREMAN_WEBHOOK_SECRET: expected whsec_")


def test_a_bare_port_listens_on_loopback() -> None:
    assert load_config({"listen": "9000"}, {}).listen == "tcp:9000:interface=127.0.0.1"
    assert load_config({}, {"FOREMAN_LISTEN": " 9000 "}).listen == "tcp:9000:interface=127.0.0.1"
    with pytest.raises(ConfigError, match="up to 65535"):
        load_config({}, {"FOREMAN_LISTEN": "99999"})


@pytest.mark.parametrize(
    ("listen", "hint"),
    [
        ("0.0.0.0:9000", "write tcp:9000:interface=0.0.0.0"),
        ("localhost:9000", "write tcp:9000:interface=localhost"),
        (":9000", "write tcp:9000 (all interfaces) or 9000 (loopback only)"),
        ("nonsense:1", "unknown endpoint type 'nonsense'"),
        ("tcp:notaport", "the port must be a number"),
    ],
)
def test_a_listen_value_that_is_not_an_endpoint_gets_a_hint(listen: str, hint: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config({}, {"FOREMAN_LISTEN": listen})
    assert hint in str(info.value)


@pytest.mark.parametrize("name", ["max_body", "max_response"])
@pytest.mark.parametrize(
    ("text", "size"),
    [("10GB", 10 * 1000**3), ("16MiB", 16 * 1024**2), ("64 KiB", 65536), ("1024", 1024)],
)
def test_every_size_setting_takes_units(name: str, text: str, size: int) -> None:
    setting = next(s for s in SETTINGS if s.name == name)
    assert setting.env is not None
    assert getattr(load_config({}, {setting.env: text}), name) == size


def test_sizes_in_the_file_take_units_or_numbers(tmp_path: Path) -> None:
    path = _write_toml(tmp_path, 'max_body = "16MiB"\nmax_response = 1048576\n')
    config = load_config({"config": path}, {})
    assert (config.max_body, config.max_response) == (16 * 1024**2, 1024**2)


def test_misspelt_variables_are_warned_about_with_the_closest_name() -> None:
    env = {
        "FOREMAN_MAX_ATEMPTS": "5",
        "FOREMAN_LISTEN_PORT": "9000",
        "foreman_listen": "9000",
        "FOREMAN_FROBNICATE": "1",
        "FOREMAN_MAX_ATTEMPTS": "5",
        "PATH": "/bin",
    }
    assert unknown_env_warnings(env) == [
        "unknown environment variable FOREMAN_FROBNICATE is ignored",
        "unknown environment variable FOREMAN_LISTEN_PORT is ignored"
        " (did you mean FOREMAN_LISTEN?)",
        "unknown environment variable FOREMAN_MAX_ATEMPTS is ignored"
        " (did you mean FOREMAN_MAX_ATTEMPTS?)",
        "unknown environment variable foreman_listen is ignored (did you mean FOREMAN_LISTEN?)",
    ]


def test_names_others_read_are_not_warned_about() -> None:
    # every setting, the config file, the client's, compose's, the test suite's
    env = {s.env: "" for s in SETTINGS if s.env}
    env |= {
        "FOREMAN_CONFIG": "",
        "FOREMAN_URL": "",
        "FOREMAN_TOKEN": "",
        "FOREMAN_HOSTNAME": "",
        "FOREMAN_IMAGE": "",
        "FOREMAN_TEST_EXAMPLES": "",
        "FOREMAN_TEST_WORKERS": "",
    }
    assert unknown_env_warnings(env) == []


def test_unknown_toml_key_is_refused(tmp_path: Path) -> None:
    path = _write_toml(tmp_path, "listn = 'tcp:1'\n")
    with pytest.raises(ConfigError) as info:
        load_config({"config": path}, {})
    assert str(info.value) == f"{path}: unknown key 'listn' (did you mean 'listen'?)"


def test_unreadable_config_file_names_where_it_was_given(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match=f"^FOREMAN_CONFIG: cannot read {missing}: no such"):
        load_config({}, {"FOREMAN_CONFIG": missing})


def test_broken_toml_is_refused(tmp_path: Path) -> None:
    path = _write_toml(tmp_path, "listen = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config({"config": path}, {})


def test_secrets_are_hidden_from_repr() -> None:
    config = load_config(
        {}, {"FOREMAN_API_TOKENS": "tok-123", "FOREMAN_TARGET_TOKEN": "target-456"}
    )
    assert "tok-123" not in repr(config)
    assert "target-456" not in repr(config)
    assert set(config.secrets()) == {"tok-123", "target-456"}


@given(
    number=st.integers(min_value=0, max_value=10**6),
    unit=st.sampled_from(["", "s", "m", "h", "d", "w"]),
)
def test_parse_duration(number: int, unit: str) -> None:
    factor = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[unit]
    assert parse_duration(f"{number}{unit}") == number * factor


def test_every_setting_has_help_and_a_source() -> None:
    for s in SETTINGS:
        assert s.help
        assert s.env or s.option


def test_sizes_take_units_and_refuse_nonsense() -> None:
    assert parse_size("65536") == 65536
    assert parse_size("64KiB") == 65536
    assert parse_size("64 MiB") == 64 * 1024 * 1024
    assert parse_size("1GB") == 1_000_000_000
    assert parse_size("1.5kib") == 1536
    assert parse_size("10GB") == 10 * 1000**3
    for bad in ("", "MiB", "12 parsecs", "x1", "1e999"):
        with pytest.raises(ValueError, match="expected a size"):
            parse_size(bad)
