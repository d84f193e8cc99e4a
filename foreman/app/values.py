"""Parsers of setting values: text in, a typed value out, ``ValueError("expected …")``.

Pure and small, one per kind of value; ``foreman.app.config`` names the
setting and the source when one raises, so the messages here say only what
was expected (``expected a whole number``).
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

from foreman.core.forwarding import TrustedProxies

__all__ = [
    "BARE_PORT_INTERFACE",
    "boolean",
    "endpoint",
    "host_port",
    "http_url",
    "log_format",
    "mac",
    "nonneg_duration",
    "parse_duration",
    "parse_size",
    "path",
    "positive_duration",
    "positive_int",
    "positive_size",
    "secret",
    "strerror",
    "tokens",
    "trusted_proxies",
]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def parse_duration(text: str) -> float:
    """Seconds from ``"90"``, ``"90s"``, ``"10m"``, ``"7d"`` …; ValueError otherwise."""
    m = _DURATION.match(text)
    if not m:
        raise ValueError("expected a duration such as 90, 30s, 10m, 12h or 7d")
    return float(m.group(1)) * _UNITS[m.group(2) or "s"]


# A bare port is what people type first; it listens where the default does
# (loopback), so exposing foreman on the network stays an explicit choice.
BARE_PORT_INTERFACE = "127.0.0.1"


def endpoint(text: str) -> str:
    """A Twisted server endpoint string, or a bare port (``9000``) made into one.

    Only the syntax is checked here; a port already taken is found by the
    start-up probe (``foreman.app.services.check_listen``).
    """
    from twisted.internet.endpoints import serverFromString

    text = text.strip()
    if text.isdigit():
        port = int(text)
        if port > 65535:
            raise ValueError("expected a port number up to 65535")
        return f"tcp:{port}:interface={BARE_PORT_INTERFACE}"
    try:
        serverFromString(None, text)
    except Exception as e:  # the endpoint parsers raise whatever they meet
        raise ValueError(_endpoint_problem(text, e)) from None
    return text


def _endpoint_problem(text: str, error: Exception) -> str:
    """What to write instead, for the mistakes people make with endpoint strings."""
    message = str(error)
    host, _, port = text.rpartition(":")
    unknown_type = message.startswith("Unknown endpoint type")
    if unknown_type and port.isdigit() and (host in ("", "localhost") or "." in host):
        if not host:  # ":9000", as Go and others spell "all interfaces"
            return (
                f"expected a Twisted server endpoint: write tcp:{port}"
                f" (all interfaces) or {port} (loopback only)"
            )
        return f"expected a Twisted server endpoint: write tcp:{port}:interface={host}"
    if isinstance(error, OSError):
        reason = f"{error.filename}: {strerror(error)}"
    elif unknown_type:
        reason = "unknown endpoint type " + message.partition(": ")[2]
    elif message.startswith("invalid literal for int()"):
        reason = "the port must be a number"
    elif m := re.search(r"unexpected keyword argument (\S+)", message):
        reason = f"unknown parameter {m.group(1)}"
    else:
        reason = message or type(error).__name__
    return (
        "expected a port number or a Twisted server endpoint such as"
        f" tcp:8080:interface=0.0.0.0 ({reason})"
    )


def http_url(text: str) -> str:
    parts = urlsplit(text.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("expected an http(s) URL such as http://127.0.0.1:11434")
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise ValueError("expected an http(s) URL with a port number up to 65535") from None
    return text.strip().rstrip("/")


def tokens(text: str) -> tuple[str, ...]:
    tokens = tuple(t.strip() for t in text.split(",") if t.strip())
    if not tokens:
        raise ValueError("expected at least one token (comma-separated)")
    return tokens


def boolean(text: str) -> bool:
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("expected true or false (or 1/0, yes/no, on/off)")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError("expected a whole number") from None
    if value < 1:
        raise ValueError("expected a whole number of at least 1")
    return value


_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}


def parse_size(text: str) -> int:
    """Bytes from ``65536``, ``64KiB``, ``64 MiB`` or ``10GB`` (KiB/MiB/GiB are 1024-based)."""
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
    except (ValueError, OverflowError):
        raise ValueError("expected a size such as 65536, 64KiB, 16MiB or 10GB") from None


def positive_size(text: str) -> int:
    value = parse_size(text)
    if value < 1:
        raise ValueError("expected a size of at least 1 byte")
    return value


def positive_duration(text: str) -> float:
    value = parse_duration(text)
    if value <= 0:
        raise ValueError("expected a duration longer than zero")
    return value


def nonneg_duration(text: str) -> float:
    return parse_duration(text)


def mac(text: str) -> str:
    hexdigits = re.sub(r"[:\-.]", "", text.strip())
    if not re.fullmatch(r"[0-9A-Fa-f]{12}", hexdigits):
        raise ValueError("expected a MAC address such as aa:bb:cc:dd:ee:ff")
    return ":".join(hexdigits[i : i + 2] for i in range(0, 12, 2)).lower()


def host_port(text: str) -> str:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("expected address:port such as 255.255.255.255:9")
    return text


def log_format(text: str) -> str:
    if text not in ("text", "json"):
        raise ValueError("expected text or json")
    return text


def secret(text: str) -> str:
    if not text.startswith("whsec_") or len(text) < 16:
        raise ValueError("expected whsec_ followed by base64 (at least 16 characters)")
    return text


def trusted_proxies(text: str) -> TrustedProxies:
    try:
        return TrustedProxies.parse(text)
    except ValueError:
        raise ValueError("expected IP addresses or networks such as 127.0.0.0/8,::1") from None


def path(text: str) -> Path:
    try:
        return Path(text).expanduser()
    except RuntimeError:  # "~someone" with no such user
        raise ValueError("expected a directory path (no such home directory)") from None


def strerror(error: OSError) -> str:
    reason = error.strerror or str(error)
    return reason[:1].lower() + reason[1:]
