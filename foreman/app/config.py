"""foreman's configuration: one frozen value built from four layers.

Precedence is command line > environment > TOML file (``--config``) > default
(ADR 0004). Every setting is declared once in ``SETTINGS``; the command-line
options, ``--help``, the TOML keys and the validation all derive from that
table so they cannot drift apart. Parsing is pure: the caller passes the
option values and the environment in.

A bad value is reported as one line naming where it came from, what was
expected and what was given: ``FOREMAN_MAX_ATTEMPTS: expected a whole number,
got 'three'``, or ``/etc/foreman.toml: max_attempts: …`` for the file. The
parsers (``foreman.app.values``) raise ``ValueError("expected …")`` and leave naming
the source and the value to ``load_config``.
"""

from __future__ import annotations

import difflib
import json
import os
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from attrs import field, frozen

from foreman.app import values
from foreman.app.values import parse_duration, parse_size
from foreman.core.forwarding import TrustedProxies

__all__ = [
    "SETTINGS",
    "Config",
    "ConfigError",
    "Setting",
    "load_config",
    "parse_duration",
    "parse_size",
    "unknown_env_warnings",
]


class ConfigError(Exception):
    """A setting has an invalid value; ``str()`` is the one line shown to the user.

    ``source`` is what the user wrote the value in: an option (``--listen``),
    an environment variable, or ``FILE: key`` for the TOML file.
    """

    def __init__(self, source: str, message: str) -> None:
        self.source = source
        self.message = message
        super().__init__(f"{source}: {message}")


@frozen
class Setting:
    """One configuration setting: where it comes from and how it is parsed."""

    name: str
    env: str | None
    option: str | None
    default: str | None
    parse: Callable[[str], Any]
    help: str
    secret: bool = False
    flag: bool = False

    @property
    def label(self) -> str:
        names = [n for n in (self.env, f"--{self.option}" if self.option else None) if n]
        return " / ".join(names) or self.name


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "listen",
        "FOREMAN_LISTEN",
        "listen",
        "tcp:8080:interface=127.0.0.1",
        values.endpoint,
        "Twisted server endpoint string to listen on (a bare port number: loopback only)",
    ),
    Setting(
        "target_url",
        "FOREMAN_TARGET_URL",
        "target",
        "http://127.0.0.1:11434",
        values.http_url,
        "URL of the Ollama server",
    ),
    Setting(
        "target_token",
        "FOREMAN_TARGET_TOKEN",
        None,
        None,
        str,
        "Bearer token foreman sends to the target",
        secret=True,
    ),
    Setting(
        "data_dir",
        "FOREMAN_DATA_DIR",
        "data-dir",
        "./foreman-data",
        values.path,
        "directory for the SQLite database and artifacts",
    ),
    Setting(
        "api_tokens",
        "FOREMAN_API_TOKENS",
        None,
        None,
        values.tokens,
        "comma-separated Bearer tokens clients must present (unset: open)",
        secret=True,
    ),
    Setting(
        "public_url",
        "FOREMAN_PUBLIC_URL",
        "public-url",
        None,
        values.http_url,
        "base URL used in webhook payloads and artifact links (default: from request)",
    ),
    Setting(
        "trusted_proxies",
        "FOREMAN_TRUSTED_PROXIES",
        "trusted-proxies",
        "127.0.0.0/8,::1",
        values.trusted_proxies,
        "peers whose X-Forwarded-Host/-Proto are believed (IPs or networks, comma-separated)",
    ),
    Setting(
        "webhook_secret",
        "FOREMAN_WEBHOOK_SECRET",
        None,
        None,
        values.secret,
        "whsec_... webhook signing secret (default: generated once, kept in data dir)",
        secret=True,
    ),
    Setting(
        "webhook_allow_private",
        "FOREMAN_WEBHOOK_ALLOW_PRIVATE",
        "webhook-allow-private",
        "false",
        values.boolean,
        "allow webhook URLs resolving to loopback/private addresses",
    ),
    Setting(
        "max_queue",
        "FOREMAN_MAX_QUEUE",
        "max-queue",
        "10000",
        values.positive_int,
        "most interactive requests waiting; beyond it 503 + Retry-After",
    ),
    Setting(
        "max_wait",
        "FOREMAN_MAX_WAIT",
        "max-wait",
        "600",
        values.positive_duration,
        "starvation bound for drain-by-model (seconds or 10m)",
    ),
    Setting(
        "max_attempts",
        "FOREMAN_MAX_ATTEMPTS",
        "max-attempts",
        "3",
        values.positive_int,
        "attempts per job before it fails",
    ),
    Setting(
        "job_retention",
        "FOREMAN_JOB_RETENTION",
        "job-retention",
        "7d",
        values.positive_duration,
        "finished jobs and their artifacts are deleted after this",
    ),
    Setting(
        "wol_mac",
        "FOREMAN_WOL_MAC",
        "wol-mac",
        None,
        values.mac,
        "send Wake-on-LAN to this MAC when work waits and the target is down",
    ),
    Setting(
        "wol_broadcast",
        "FOREMAN_WOL_BROADCAST",
        "wol-broadcast",
        "255.255.255.255:9",
        values.host_port,
        "address:port the Wake-on-LAN packet is sent to",
    ),
    Setting(
        "log_format",
        "FOREMAN_LOG_FORMAT",
        "log-format",
        "text",
        values.log_format,
        "log format: text or json",
    ),
    Setting(
        "max_body",
        "FOREMAN_MAX_BODY",
        "max-body",
        "16777216",
        values.positive_size,
        "largest accepted request body (bytes, or with a unit: 16MiB; 413 beyond)",
    ),
    Setting(
        "max_response",
        "FOREMAN_MAX_RESPONSE",
        "max-response",
        "64MiB",
        values.positive_size,
        "largest target answer a job may get; beyond, the job fails response_too_large",
    ),
    Setting(
        "shutdown_grace",
        "FOREMAN_SHUTDOWN_GRACE",
        "shutdown-grace",
        "30",
        values.nonneg_duration,
        "on SIGTERM, how long the running request may finish",
    ),
    Setting(
        "job_idle_timeout",
        "FOREMAN_JOB_IDLE_TIMEOUT",
        "job-idle-timeout",
        "15m",
        values.positive_duration,
        "a target that sends nothing this long (cold loads count): a job attempt is"
        " retried, an interactive request gets 504 or is cut",
    ),
    Setting(
        "probe_timeout",
        "FOREMAN_PROBE_TIMEOUT",
        "probe-timeout",
        "3",
        values.positive_duration,
        "timeout of one target probe; when probes fail while a request runs, the"
        " request is declared lost (a job goes back to the queue)",
    ),
    Setting(
        "batch_max_lines",
        "FOREMAN_BATCH_MAX_LINES",
        "batch-max-lines",
        "50000",
        values.positive_int,
        "most requests (lines) in one batch input file",
    ),
    Setting(
        "batch_max_bytes",
        "FOREMAN_BATCH_MAX_BYTES",
        "batch-max-bytes",
        "200MB",
        values.positive_size,
        "largest upload to /v1/files (413 beyond)",
    ),
    Setting(
        "batch_webhook_url",
        "FOREMAN_BATCH_WEBHOOK_URL",
        "batch-webhook-url",
        None,
        values.http_url,
        "where batch.* webhooks go when a batch's metadata names no webhook_url",
    ),
    Setting(
        "simulate",
        None,
        "simulate",
        "false",
        values.boolean,
        "run the built-in Ollama simulator in-process and use it as the target",
        flag=True,
    ),
)

_BY_NAME = {s.name: s for s in SETTINGS}


def _default(name: str) -> Any:
    """A setting's default, parsed: the one declaration is ``SETTINGS``."""
    raw = _BY_NAME[name].default
    return None if raw is None else _BY_NAME[name].parse(raw)


def _secret_field() -> Any:
    return field(default=None, repr=False)


@frozen
class Config:
    """The validated configuration of one foreman process (defaults from ``SETTINGS``)."""

    listen: str = _default("listen")
    target_url: str = _default("target_url")
    target_token: str | None = _secret_field()
    data_dir: Path = _default("data_dir")  # noqa: RUF009 - a Path is immutable
    api_tokens: tuple[str, ...] | None = _secret_field()
    public_url: str | None = _default("public_url")
    trusted_proxies: TrustedProxies = _default("trusted_proxies")  # noqa: RUF009 - frozen
    webhook_secret: str | None = _secret_field()
    webhook_allow_private: bool = _default("webhook_allow_private")
    max_queue: int = _default("max_queue")
    max_wait: float = _default("max_wait")
    max_attempts: int = _default("max_attempts")
    job_retention: float = _default("job_retention")
    wol_mac: str | None = _default("wol_mac")
    wol_broadcast: str = _default("wol_broadcast")
    log_format: str = _default("log_format")
    max_body: int = _default("max_body")
    max_response: int = _default("max_response")
    shutdown_grace: float = _default("shutdown_grace")
    job_idle_timeout: float = _default("job_idle_timeout")
    probe_timeout: float = _default("probe_timeout")
    batch_max_lines: int = _default("batch_max_lines")
    batch_max_bytes: int = _default("batch_max_bytes")
    batch_webhook_url: str | None = _default("batch_webhook_url")
    simulate: bool = _default("simulate")

    @property
    def db_path(self) -> Path:
        return self.data_dir / "foreman.sqlite3"

    @property
    def artifacts_dir(self) -> Path:
        return self.data_dir / "artifacts"

    @property
    def files_dir(self) -> Path:
        return self.data_dir / "files"

    def secrets(self) -> tuple[str, ...]:
        """Every secret value, so log output can be scrubbed of them."""
        found = [self.target_token, self.webhook_secret, *(self.api_tokens or ())]
        return tuple(s for s in found if s)


@frozen
class _Given:
    """One setting's value as the user gave it, and where, for the error line."""

    text: str
    source: str
    shown: str


def _toml_text(value: Any) -> str:
    """A TOML value as the text the setting's parser takes (lists comma-joined)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)


def _toml_repr(value: Any) -> str:
    """A TOML value spelt as in the file, so an error quotes what the user wrote."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_repr(v) for v in value) + "]"
    return str(value)


def _toml_layer(path: str, named_by: str) -> dict[str, _Given]:
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigError(named_by, f"cannot read {path}: {values.strerror(e)}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(path, f"not valid TOML: {e}") from None
    layer: dict[str, _Given] = {}
    for key, value in data.items():
        name = key.replace("-", "_")
        if name not in _BY_NAME:
            close = difflib.get_close_matches(name, list(_BY_NAME), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(path, f"unknown key {key!r}{hint}")
        layer[name] = _Given(_toml_text(value), f"{path}: {key}", _toml_repr(value))
    return layer


def _given(
    s: Setting, options: Mapping[str, Any], env: Mapping[str, str], toml: Mapping[str, _Given]
) -> _Given | bool | None:
    """The winning layer's value for ``s``: a bool as given, None for unset."""
    option = options.get(s.name)
    if s.flag and not option:
        option = None  # a flag left off the command line is "not given"
    if isinstance(option, bool):
        return option
    if option is not None:
        return _Given(str(option), f"--{s.option}" if s.option else s.name, repr(str(option)))
    if s.env is not None and s.env in env:
        return _Given(env[s.env], s.env, repr(env[s.env]))
    if s.name in toml:
        return toml[s.name]
    if s.default is not None:
        return _Given(s.default, s.label, repr(s.default))
    return None


def load_config(options: Mapping[str, Any], env: Mapping[str, str] | None = None) -> Config:
    """Merge the layers and validate; raise ConfigError naming the first bad setting.

    ``options`` maps setting names (``listen``, ``target_url``, ``config`` …) to
    command-line values; ``None`` means "not given".
    """
    env = os.environ if env is None else env
    if options.get("config"):
        toml = _toml_layer(str(options["config"]), "--config")
    elif env.get("FOREMAN_CONFIG"):
        toml = _toml_layer(env["FOREMAN_CONFIG"], "FOREMAN_CONFIG")
    else:
        toml = {}
    values: dict[str, Any] = {}
    for s in SETTINGS:
        given = _given(s, options, env, toml)
        if not isinstance(given, _Given):
            values[s.name] = given
            continue
        try:
            values[s.name] = s.parse(given.text)
        except ValueError as e:
            # a secret's value is never echoed: this line ends up in logs
            got = "" if s.secret else f", got {given.shown}"
            raise ConfigError(given.source, f"{e}{got}") from None
    return Config(**values)


_ENV_PREFIX = "FOREMAN_"
# What foreman itself reads from the environment.
_SERVER_ENV = frozenset({"FOREMAN_CONFIG", *(s.env for s in SETTINGS if s.env)})
# Names that share foreman's environment for others: the client's
# (foreman.client.cli) and compose's (compose/.env.example). Compose's are
# spelt without the prefix because tests/test_deploy.py takes every literal
# such name in this package for a setting the container must be given.
_OTHER_ENV = frozenset(
    {"FOREMAN_URL", "FOREMAN_TOKEN", *(_ENV_PREFIX + n for n in ("HOSTNAME", "IMAGE"))}
)
# The test suite's knobs (docs/testing.md) all start with this.
_TEST_PREFIX = "FOREMAN_TEST_"


def unknown_env_warnings(env: Mapping[str, str]) -> list[str]:
    """One line per ``FOREMAN_*`` variable nobody reads, naming the closest setting.

    A misspelt variable is otherwise ignored without a word and its setting
    keeps the default, which is hard to notice; start-up prints these.
    """
    by_suffix = {name.removeprefix(_ENV_PREFIX): name for name in _SERVER_ENV}
    warnings = []
    for name in sorted(env):
        upper = name.upper()
        if not upper.startswith(_ENV_PREFIX) or upper.startswith(_TEST_PREFIX):
            continue
        if name in _SERVER_ENV or name in _OTHER_ENV:
            continue
        if upper in _SERVER_ENV:
            guess: str | None = upper
        else:
            close = difflib.get_close_matches(upper.removeprefix(_ENV_PREFIX), by_suffix, n=1)
            guess = by_suffix[close[0]] if close else None
        hint = f" (did you mean {guess}?)" if guess else ""
        warnings.append(f"unknown environment variable {name} is ignored{hint}")
    return warnings


def check_data_dir(config: Config) -> None:
    """Create the data directory and prove it is writable, or raise ConfigError."""
    try:
        config.data_dir.mkdir(parents=True, exist_ok=True)
        config.artifacts_dir.mkdir(exist_ok=True)
        probe = config.data_dir / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ConfigError(
            _BY_NAME["data_dir"].label, f"{config.data_dir} is not writable ({values.strerror(e)})"
        ) from None
