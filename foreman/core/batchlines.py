"""Checking a batch input file line by line (pure).

The file is read by the caller a line at a time (never whole); each line goes
through ``LineChecker.check``, which keeps only what must be remembered
across lines: the ``custom_id`` values seen, the counts, and the first
``MAX_ERRORS`` errors. A batch with any error fails as a whole and nothing of
it is enqueued (SPEC "Batches"), so the errors name their line for the user.
"""

from __future__ import annotations

import json
from typing import Any

from attrs import define, field, frozen

from foreman.core.logtext import model_name_too_long

__all__ = [
    "BATCH_ENDPOINTS",
    "MAX_ERRORS",
    "BatchLine",
    "LineChecker",
    "LineError",
    "endpoint_problem",
]

#: what a batch may target: OpenAI's endpoints Ollama serves, and Ollama's native ones
BATCH_ENDPOINTS = (
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/responses",
    "/api/chat",
    "/api/generate",
    "/api/embed",
)
_ENDPOINTS = frozenset(BATCH_ENDPOINTS)
MAX_ERRORS = 100
CUSTOM_ID_LIMIT = 1024
EMBEDDING_INPUTS_LIMIT = 50_000


def endpoint_problem(endpoint: object) -> str | None:
    """Why ``endpoint`` cannot be a batch's, or None."""
    if not isinstance(endpoint, str) or not endpoint:
        return "endpoint is required and must be a string"
    if endpoint in _ENDPOINTS:
        return None
    if endpoint.startswith("/v1/"):
        return (
            f"endpoint {endpoint} is not served by Ollama; use one of: {', '.join(BATCH_ENDPOINTS)}"
        )
    return f"endpoint must be one of: {', '.join(BATCH_ENDPOINTS)}"


@frozen
class LineError:
    """One entry of the batch's ``errors.data`` (OpenAI's shape)."""

    code: str
    message: str
    line: int | None = None
    param: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "param": self.param, "line": self.line}


@frozen
class BatchLine:
    """A valid line: what becomes one job."""

    line: int
    custom_id: str
    model: str
    body: dict[str, Any]


@define
class LineChecker:
    """Checks the lines of one input file in order; see the module docstring."""

    endpoint: str
    max_lines: int
    line_limit: int
    lines: int = field(default=0, init=False)
    error_count: int = field(default=0, init=False)
    errors: list[LineError] = field(factory=list, init=False)
    _seen: set[str] = field(factory=set, init=False)
    _inputs: int = field(default=0, init=False)
    _number: int = field(default=0, init=False)

    def _error(self, code: str, message: str, param: str | None = None) -> None:
        self.error_count += 1
        if len(self.errors) < MAX_ERRORS:
            self.errors.append(LineError(code, message, self._number, param))

    def check(self, raw: bytes) -> BatchLine | None:
        """The next physical line of the file (with or without its newline)."""
        self._number += 1
        if not raw.strip():
            return None  # blank lines (a trailing newline) are not requests
        self.lines += 1
        if self.lines == self.max_lines + 1:
            self._error(
                "too_many_requests",
                f"the file has more than {self.max_lines} requests (FOREMAN_BATCH_MAX_LINES)",
            )
        if len(raw.rstrip(b"\r\n")) > self.line_limit:
            self._error("line_too_long", f"the line is over {self.line_limit} bytes")
            return None
        try:
            doc = json.loads(raw)
        except (ValueError, RecursionError):
            self._error("invalid_json_line", "this line is not parseable as valid JSON")
            return None
        if not isinstance(doc, dict):
            self._error("invalid_json_line", "this line is not a JSON object")
            return None
        return self._fields(doc)

    def _fields(self, doc: dict[str, Any]) -> BatchLine | None:
        custom_id = doc.get("custom_id")
        if not isinstance(custom_id, str) or not custom_id:
            self._error(
                "missing_required_parameter", "custom_id is required (a string)", "custom_id"
            )
            return None
        if len(custom_id) > CUSTOM_ID_LIMIT:
            self._error(
                "invalid_custom_id", f"custom_id is over {CUSTOM_ID_LIMIT} characters", "custom_id"
            )
            return None
        if custom_id in self._seen:
            self._error(
                "duplicate_custom_id",
                f"the custom_id {custom_id!r} is used by an earlier line",
                "custom_id",
            )
            return None
        self._seen.add(custom_id)
        method = doc.get("method")
        if method != "POST":
            self._error("invalid_method", "method must be POST", "method")
            return None
        url = doc.get("url")
        if url != self.endpoint:
            self._error(
                "mismatched_endpoint",
                f"url {url!r} does not match the batch's endpoint {self.endpoint}",
                "url",
            )
            return None
        body = doc.get("body")
        if not isinstance(body, dict):
            self._error("missing_required_parameter", "body is required (an object)", "body")
            return None
        model = body.get("model")
        if not isinstance(model, str) or not model:
            self._error("missing_required_parameter", "body.model is required", "body.model")
            return None
        too_long = model_name_too_long(model)
        if too_long is not None:
            self._error("invalid_model", too_long, "body.model")
            return None
        if self.endpoint in ("/v1/embeddings", "/api/embed"):
            given = body.get("input")
            self._inputs += len(given) if isinstance(given, list) else 1
            if self._inputs > EMBEDDING_INPUTS_LIMIT:
                self._error(
                    "too_many_inputs",
                    f"an embedding batch may hold at most {EMBEDDING_INPUTS_LIMIT} inputs",
                    "body.input",
                )
                return None
        return BatchLine(self._number, custom_id, model, body)

    def finish(self) -> list[LineError]:
        """Every error of the file (the first ``MAX_ERRORS``), after its last line."""
        if self.lines == 0 and not self.errors:
            self.error_count += 1
            self.errors.append(LineError("empty_file", "the input file has no requests"))
        return list(self.errors)
