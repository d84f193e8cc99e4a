"""Small helpers for JSON request/response handling on foreman's own routes."""

from __future__ import annotations

import json
from typing import Any

from foreman.core.errors import BadRequest  # re-exported: routes catch it from here
from foreman.web.errorbody import Family, error_body, family_of

__all__ = [
    "BadRequest",
    "int_arg",
    "json_error",
    "json_response",
    "json_text_response",
    "read_json",
    "seconds_arg",
    "text_arg",
]


#: ``json.dumps(body, separators=(",", ":"))`` without building an encoder per call
_COMPACT = json.JSONEncoder(separators=(",", ":"))


def json_response(request: Any, body: Any, status: int = 200) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    return _COMPACT.encode(body).encode()


def json_text_response(request: Any, text: str, status: int = 200) -> bytes:
    """``json_response`` for a body already encoded (compact JSON text)."""
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    return text.encode()


def json_error(request: Any, status: int, code: str, message: str) -> bytes:
    """foreman's error shape; OpenAI's on its ``/v1`` routes (files, batches)."""
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    family = Family.OPENAI if family_of(request.path) is Family.OPENAI else Family.FOREMAN
    return error_body(family, status, code, message)


def read_json(request: Any) -> Any:
    """The request body parsed as JSON, or BadRequest with a clear message."""
    request.content.seek(0)
    raw = request.content.read()
    if not raw:
        raise BadRequest("request body is empty; expected JSON", "malformed_json")
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise BadRequest(f"request body is not valid JSON: {e}", "malformed_json") from None
    except RecursionError:
        raise BadRequest("request body is nested too deeply", "malformed_json") from None
    # an escaped surrogate (JSON spells the escape \uD800 or \ud800, never \U):
    # is each one half of a pair?
    if b"\\ud" in raw or b"\\uD" in raw:
        try:
            json.dumps(doc, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise BadRequest(
                "request body has an unpaired UTF-16 surrogate (\\ud800-\\udfff escape)",
                "malformed_json",
            ) from None
    return doc


def text_arg(request: Any, name: str) -> str | None:
    """The last value of query parameter ``name``, or None."""
    values = request.args.get(name.encode())
    return values[-1].decode("utf-8", "replace") if values else None


def int_arg(request: Any, name: str, default: int, low: int, high: int) -> int:
    """An integer query parameter within [low, high]; BadRequest names it otherwise."""
    raw = text_arg(request, name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"{name} must be an integer", "invalid_parameter") from None
    if not low <= value <= high:
        raise BadRequest(f"{name} must be between {low} and {high}", "invalid_parameter")
    return value


def seconds_arg(request: Any, name: str, high: float) -> float:
    """A number of seconds in [0, high] (a long-poll's ``wait``); 0 when not given."""
    raw = text_arg(request, name)
    if not raw:
        return 0.0
    try:
        value = float(raw)
    except ValueError:
        raise BadRequest(f"{name} must be a number of seconds", "invalid_parameter") from None
    if not 0 <= value <= high:
        raise BadRequest(f"{name} must be between 0 and {high:g}", "invalid_parameter")
    return value
