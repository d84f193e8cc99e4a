"""Configuration: precedence, parsing and validation."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from foreman.app.config import SETTINGS, Config, ConfigError, load_config, parse_duration

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
    ],
)
def test_invalid_values_name_the_setting(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config({}, env)
    message = str(info.value)
    assert named in message
    assert "\n" not in message


def test_unknown_toml_key_is_refused(tmp_path: Path) -> None:
    path = _write_toml(tmp_path, "listn = 'tcp:1'\n")
    with pytest.raises(ConfigError, match="unknown key 'listn'"):
        load_config({"config": path}, {})


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
    import pytest

    from foreman.app.config import parse_size

    assert parse_size("65536") == 65536
    assert parse_size("64KiB") == 65536
    assert parse_size("64 MiB") == 64 * 1024 * 1024
    assert parse_size("1GB") == 1_000_000_000
    assert parse_size("1.5kib") == 1536
    for bad in ("", "MiB", "12 parsecs", "x1"):
        with pytest.raises(ValueError, match="not a size"):
            parse_size(bad)
