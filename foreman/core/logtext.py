"""Text from outside, made safe for a one-line-per-event text log.

Model names, paths, target messages and URLs come from clients and the
target. Written as they are, a CR or LF forges a log line, ESC drives the
reader's terminal, NUL cuts a line short in some tools, and one huge value
grows the log by its size. Every such value goes through ``escape_for_log``.
"""

from __future__ import annotations

__all__ = ["LOG_VALUE_LIMIT", "MODEL_NAME_LIMIT", "escape_for_log", "model_name_too_long"]

LOG_VALUE_LIMIT = 256  # characters of one outside value in a log line
MODEL_NAME_LIMIT = 256  # bytes (UTF-8) of a model name foreman accepts

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\"}


def _escape_char(ch: str) -> str:
    named = _NAMED.get(ch)
    if named is not None:
        return named
    code = ord(ch)
    if code < 0x20 or code == 0x7F or 0x80 <= code < 0xA0 or ch in "\u2028\u2029":
        return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
    return ch


def escape_for_log(value: object, limit: int = LOG_VALUE_LIMIT) -> str:
    """``value`` as one printable line of at most about ``limit`` characters."""
    text = value if isinstance(value, str) else str(value)
    cut = len(text) - limit
    if cut > 0:
        text = text[:limit]
    if text.isprintable() and "\\" not in text:
        escaped = text
    else:
        escaped = "".join(_escape_char(ch) for ch in text)
    return f"{escaped}…(+{cut} chars)" if cut > 0 else escaped


def model_name_too_long(model: str) -> str | None:
    """The 400 message for a model name no registry would hold, else None."""
    size = len(model.encode("utf-8", "surrogatepass"))
    if size > MODEL_NAME_LIMIT:
        return f"model name is {size} bytes; at most {MODEL_NAME_LIMIT} are accepted"
    return None
