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
    413: "invalid_request_error",
    429: "rate_limit_error",
    503: "server_error",
}


def own_route(path: bytes) -> bool:
    """True for paths foreman answers itself (``/jobs``, ``/status`` …)."""
    first = path.lstrip(b"/").split(b"/", 1)[0].split(b"?", 1)[0]
    return first in _OWN_ROOTS


def family_of(path: bytes) -> Family:
    if own_route(path):
        return Family.FOREMAN
    if path.startswith(b"/v1/") or path == b"/v1":
        return Family.OPENAI
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
