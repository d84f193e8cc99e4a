"""Small helpers for JSON request/response handling on foreman's own routes."""

from __future__ import annotations

import json
from typing import Any

from foreman.core.errors import BadRequest  # re-exported: routes catch it from here

__all__ = ["BadRequest", "json_error", "json_response", "read_json"]


def json_response(request: Any, body: Any, status: int = 200) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    return json.dumps(body, separators=(",", ":")).encode()


def json_error(request: Any, status: int, code: str, message: str) -> bytes:
    return json_response(request, {"error": {"code": code, "message": message}}, status)


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
    if b"\\ud" in raw.lower():  # an escaped surrogate: is each one half of a pair?
        try:
            json.dumps(doc, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise BadRequest(
                "request body has an unpaired UTF-16 surrogate (\\ud800-\\udfff escape)",
                "malformed_json",
            ) from None
    return doc
