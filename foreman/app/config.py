"""foreman's configuration: one frozen value built from four layers.

Precedence is command line > environment > TOML file (``--config``) > default
(ADR 0004). Every setting is declared once in ``SETTINGS``; the command-line
options, ``--help``, the TOML keys and the validation all derive from that
table so they cannot drift apart. Parsing is pure: the caller passes the
option values and the environment in.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from attrs import field, frozen

from foreman.core.forwarding import TrustedProxies

__all__ = ["SETTINGS", "Config", "ConfigError", "Setting", "load_config", "parse_duration"]


class ConfigError(Exception):
    """A setting has an invalid value; ``str()`` is the one line shown to the user."""

    def __init__(self, setting: Setting, message: str) -> None:
        self.setting = setting
        super().__init__(f"invalid setting {setting.label}: {message}")


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def parse_duration(text: str) -> float:
    """Seconds from ``"90"``, ``"90s"``, ``"10m"``, ``"7d"`` …; ValueError otherwise."""
    m = _DURATION.match(text)
    if not m:
        raise ValueError(f"{text!r} is not a duration (examples: 30s, 10m, 7d)")
    return float(m.group(1)) * _UNITS[m.group(2) or "s"]


def _endpoint(text: str) -> str:
    # Only the syntax is checked here; a port already taken fails at listen time.
    from twisted.internet.endpoints import serverFromString

    try:
        serverFromString(None, text)
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{text!r} is not a Twisted server endpoint ({e})") from None
    return text


def _url(text: str) -> str:
    parts = urlsplit(text.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{text!r} is not an http(s) URL")
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise ValueError(f"{text!r} has an invalid port") from None
    return text.strip().rstrip("/")


def _tokens(text: str) -> tuple[str, ...]:
    tokens = tuple(t.strip() for t in text.split(",") if t.strip())
    if not tokens:
        raise ValueError("no token given")
    return tokens


def _bool(text: str) -> bool:
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"{text!r} is not a boolean (true/false)")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(f"{text!r} must be at least 1")
    return value


_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
}


def parse_size(text: str) -> int:
    """Bytes from ``65536``, ``64KiB``, ``64 MiB`` or ``1GB`` (KiB/MiB/GiB are 1024-based)."""
    number = text.strip()
    unit = ""
    while number and number[-1].isalpha():
        unit = number[-1] + unit
        number = number[:-1]
    factor = _SIZE_UNITS.get(unit.lower())
    try:
        if factor is None:
            raise ValueError(unit)
        return int(float(number.strip()) * factor)
    except ValueError:
        raise ValueError(f"{text!r} is not a size (e.g. 65536, 64KiB, 64MiB, 1GB)") from None


def _positive_size(text: str) -> int:
    value = parse_size(text)
    if value < 1:
        raise ValueError(f"{text!r} must be at least 1 byte")
    return value


def _positive_duration(text: str) -> float:
    value = parse_duration(text)
    if value <= 0:
        raise ValueError(f"{text!r} must be longer than zero")
    return value


def _nonneg_duration(text: str) -> float:
    return parse_duration(text)


def _mac(text: str) -> str:
    hexdigits = re.sub(r"[:\-.]", "", text.strip())
    if not re.fullmatch(r"[0-9A-Fa-f]{12}", hexdigits):
        raise ValueError(f"{text!r} is not a MAC address (aa:bb:cc:dd:ee:ff)")
    return ":".join(hexdigits[i : i + 2] for i in range(0, 12, 2)).lower()


def _host_port(text: str) -> str:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r} is not address:port")
    return text


def _log_format(text: str) -> str:
    if text not in ("text", "json"):
        raise ValueError(f"{text!r} must be 'text' or 'json'")
    return text


def _secret(text: str) -> str:
    if not text.startswith("whsec_") or len(text) < 16:
        raise ValueError("must look like whsec_<base64>")
    return text


def _path(text: str) -> Path:
    return Path(text).expanduser()


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
        _endpoint,
        "Twisted server endpoint string to listen on",
    ),
    Setting(
        "target_url",
        "FOREMAN_TARGET_URL",
        "target",
        "http://127.0.0.1:11434",
        _url,
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
        _path,
        "directory for the SQLite database and artifacts",
    ),
    Setting(
        "api_tokens",
        "FOREMAN_API_TOKENS",
        None,
        None,
        _tokens,
        "comma-separated Bearer tokens clients must present (unset: open)",
        secret=True,
    ),
    Setting(
        "public_url",
        "FOREMAN_PUBLIC_URL",
        "public-url",
        None,
        _url,
        "base URL used in webhook payloads and artifact links (default: from request)",
    ),
    Setting(
        "trusted_proxies",
        "FOREMAN_TRUSTED_PROXIES",
        "trusted-proxies",
        "127.0.0.0/8,::1",
        TrustedProxies.parse,
        "peers whose X-Forwarded-Host/-Proto are believed (IPs or networks, comma-separated)",
    ),
    Setting(
        "webhook_secret",
        "FOREMAN_WEBHOOK_SECRET",
        None,
        None,
        _secret,
        "whsec_... webhook signing secret (default: generated once, kept in data dir)",
        secret=True,
    ),
    Setting(
        "webhook_allow_private",
        "FOREMAN_WEBHOOK_ALLOW_PRIVATE",
        "webhook-allow-private",
        "false",
        _bool,
        "allow webhook URLs resolving to loopback/private addresses",
    ),
    Setting(
        "max_queue",
        "FOREMAN_MAX_QUEUE",
        "max-queue",
        "10000",
        _positive_int,
        "most interactive requests waiting; beyond it 503 + Retry-After",
    ),
    Setting(
        "max_wait",
        "FOREMAN_MAX_WAIT",
        "max-wait",
        "600",
        _positive_duration,
        "starvation bound for drain-by-model (seconds or 10m)",
    ),
    Setting(
        "max_attempts",
        "FOREMAN_MAX_ATTEMPTS",
        "max-attempts",
        "3",
        _positive_int,
        "attempts per job before it fails",
    ),
    Setting(
        "job_retention",
        "FOREMAN_JOB_RETENTION",
        "job-retention",
        "7d",
        _positive_duration,
        "finished jobs and their artifacts are deleted after this",
    ),
    Setting(
        "wol_mac",
        "FOREMAN_WOL_MAC",
        "wol-mac",
        None,
        _mac,
        "send Wake-on-LAN to this MAC when work waits and the target is down",
    ),
    Setting(
        "wol_broadcast",
        "FOREMAN_WOL_BROADCAST",
        "wol-broadcast",
        "255.255.255.255:9",
        _host_port,
        "address:port the Wake-on-LAN packet is sent to",
    ),
    Setting(
        "log_format",
        "FOREMAN_LOG_FORMAT",
        "log-format",
        "text",
        _log_format,
        "log format: text or json",
    ),
    Setting(
        "max_body",
        "FOREMAN_MAX_BODY",
        "max-body",
        "16777216",
        _positive_size,
        "largest accepted request body (bytes, or with a unit: 16MiB; 413 beyond)",
    ),
    Setting(
        "max_response",
        "FOREMAN_MAX_RESPONSE",
        "max-response",
        "64MiB",
        _positive_size,
        "largest target answer a job may get; beyond, the job fails response_too_large",
    ),
    Setting(
        "shutdown_grace",
        "FOREMAN_SHUTDOWN_GRACE",
        "shutdown-grace",
        "30",
        _nonneg_duration,
        "on SIGTERM, how long the running request may finish",
    ),
    Setting(
        "job_idle_timeout",
        "FOREMAN_JOB_IDLE_TIMEOUT",
        "job-idle-timeout",
        "15m",
        _positive_duration,
        "a target that sends nothing this long (cold loads count): a job attempt is"
        " retried, an interactive request gets 504 or is cut",
    ),
    Setting(
        "probe_timeout",
        "FOREMAN_PROBE_TIMEOUT",
        "probe-timeout",
        "3",
        _positive_duration,
        "timeout of one target probe; when probes fail while a request runs, the"
        " request is declared lost (a job goes back to the queue)",
    ),
    Setting(
        "simulate",
        None,
        "simulate",
        "false",
        _bool,
        "run the built-in Ollama simulator in-process and use it as the target",
        flag=True,
    ),
)

_BY_NAME = {s.name: s for s in SETTINGS}
_TOML_KEYS = {s.name for s in SETTINGS}


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
    simulate: bool = _default("simulate")

    @property
    def db_path(self) -> Path:
        return self.data_dir / "foreman.sqlite3"

    @property
    def artifacts_dir(self) -> Path:
        return self.data_dir / "artifacts"

    def secrets(self) -> tuple[str, ...]:
        """Every secret value, so log output can be scrubbed of them."""
        found = [self.target_token, self.webhook_secret, *(self.api_tokens or ())]
        return tuple(s for s in found if s)


def _toml_layer(path: str) -> dict[str, str]:
    config_setting = Setting("config", "FOREMAN_CONFIG", "config", None, str, "TOML file")
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigError(config_setting, f"cannot read {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(config_setting, f"{path} is not valid TOML: {e}") from None
    layer: dict[str, str] = {}
    for key, value in data.items():
        name = key.replace("-", "_")
        if name not in _TOML_KEYS:
            raise ConfigError(config_setting, f"unknown key {key!r} in {path}")
        if isinstance(value, bool):
            layer[name] = "true" if value else "false"
        elif isinstance(value, list):
            layer[name] = ",".join(str(v) for v in value)
        else:
            layer[name] = str(value)
    return layer


def load_config(options: Mapping[str, Any], env: Mapping[str, str] | None = None) -> Config:
    """Merge the layers and validate; raise ConfigError naming the first bad setting.

    ``options`` maps setting names (``listen``, ``target_url``, ``config`` …) to
    command-line values; ``None`` means "not given".
    """
    env = os.environ if env is None else env
    config_path = options.get("config") or env.get("FOREMAN_CONFIG")
    toml = _toml_layer(config_path) if config_path else {}
    values: dict[str, Any] = {}
    for s in SETTINGS:
        raw: Any = options.get(s.name)
        if s.flag and raw in (False, 0):
            raw = None
        if raw is None and s.env is not None:
            raw = env.get(s.env)
        if raw is None:
            raw = toml.get(s.name)
        if raw is None:
            raw = s.default
        if raw is None:
            values[s.name] = None
            continue
        try:
            values[s.name] = s.parse(str(raw)) if not isinstance(raw, bool) else raw
        except ValueError as e:
            raise ConfigError(s, str(e)) from None
    return Config(**values)


def check_data_dir(config: Config) -> None:
    """Create the data directory and prove it is writable, or raise ConfigError."""
    setting = _BY_NAME["data_dir"]
    try:
        config.data_dir.mkdir(parents=True, exist_ok=True)
        config.artifacts_dir.mkdir(exist_ok=True)
        probe = config.data_dir / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ConfigError(setting, f"{config.data_dir} is not writable ({e.strerror})") from None
