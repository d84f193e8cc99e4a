"""Error bodies in the shape each route family's clients expect.

Ollama clients read ``{"error": "…"}``; OpenAI clients read
``{"error": {"message", "type", "code"}}``; foreman's own routes use
``{"error": {"code", "message"}}``. The family is decided by the path alone.
"""

from __future__ import annotations

import json
from enum import Enum

__all__ = ["Family", "error_body", "family_of"]


class Family(Enum):
    OLLAMA = "ollama"
    OPENAI = "openai"
    FOREMAN = "foreman"


_OWN_ROOTS = frozenset(
    {b"jobs", b"queue", b"status", b"healthz", b"readyz", b"metrics", b"openapi.json"}
)

_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    409: "conflict_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    503: "server_error",
}


# OpenAI's batch routes are foreman's own (the queue serves them), in OpenAI's dialect
_OWN_OPENAI = frozenset({b"files", b"batches"})


def _segments(path: bytes) -> list[bytes]:
    return path.split(b"?", 1)[0].lstrip(b"/").split(b"/", 2)


def own_openai_route(path: bytes) -> bool:
    """True for ``/v1/files…`` and ``/v1/batches…``: answered by foreman, not the target."""
    parts = _segments(path)
    return len(parts) > 1 and parts[0] == b"v1" and parts[1] in _OWN_OPENAI


def own_route(path: bytes) -> bool:
    """True for paths foreman answers itself (``/jobs``, ``/status``, ``/v1/batches`` …)."""
    return _segments(path)[0] in _OWN_ROOTS or own_openai_route(path)


def family_of(path: bytes) -> Family:
    if path.startswith(b"/v1/") or path == b"/v1":
        return Family.OPENAI
    if own_route(path):
        return Family.FOREMAN
    return Family.OLLAMA


def error_body(family: Family, status: int, code: str, message: str) -> bytes:
    body: object
    if family is Family.OLLAMA:
        body = {"error": message}
    elif family is Family.OPENAI:
        body = {
            "error": {
                "message": message,
                "type": _OPENAI_TYPES.get(status, "server_error"),
                "code": code,
            }
        }
    else:
        body = {"error": {"code": code, "message": message}}
    return json.dumps(body).encode()
