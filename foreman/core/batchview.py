"""Batches and files as OpenAI's clients see them, and a batch's output lines (pure).

Rows come from the store as plain values; everything here renders them in
OpenAI's shapes (Unix seconds, ``object`` names) so the ``openai`` client
parses them unchanged.
"""

from __future__ import annotations

import json
from typing import Any

from attrs import frozen

from foreman.core.batchstate import BatchStatus
from foreman.core.ids import batch_request_id

__all__ = [
    "BatchRow",
    "Counts",
    "FileRow",
    "LineResult",
    "Usage",
    "batch_object",
    "file_object",
    "line_result",
]


@frozen
class FileRow:
    """One ``files`` row; field order is the store's column order."""

    id: str
    purpose: str
    filename: str
    bytes: int
    created_at: float
    batch_id: str | None = None


def file_object(row: FileRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "object": "file",
        "bytes": row.bytes,
        "created_at": int(row.created_at),
        "filename": row.filename,
        "purpose": row.purpose,
        "expires_at": None,
        "status": "processed",
        "status_details": None,
    }


@frozen
class Counts:
    total: int = 0
    completed: int = 0
    failed: int = 0

    @property
    def finished(self) -> int:
        return self.completed + self.failed

    def as_dict(self) -> dict[str, int]:
        return {"total": self.total, "completed": self.completed, "failed": self.failed}


@frozen
class BatchRow:
    """One ``batches`` row; field order is the store's column order."""

    id: str
    status: str
    ending: str | None
    endpoint: str
    input_file_id: str
    completion_window: str
    metadata: str | None
    webhook_url: str | None
    output_file_id: str | None
    error_file_id: str | None
    errors: str | None
    total: int
    completed: int
    failed: int
    usage: str | None
    created_at: float
    in_progress_at: float | None
    finalizing_at: float | None
    completed_at: float | None
    failed_at: float | None
    expired_at: float | None
    expires_at: float
    cancelling_at: float | None
    cancelled_at: float | None
    base_url: str | None = None  # where the batch was created from: its lines' artifact links

    @property
    def counts(self) -> Counts:
        return Counts(self.total, self.completed, self.failed)


def _seconds(at: float | None) -> int | None:
    return None if at is None else int(at)


def batch_object(row: BatchRow, counts: Counts | None = None) -> dict[str, Any]:
    """The batch; ``counts`` overrides the stored ones while lines run (kept in memory)."""
    errors = json.loads(row.errors) if row.errors else None
    return {
        "id": row.id,
        "object": "batch",
        "endpoint": row.endpoint,
        "input_file_id": row.input_file_id,
        "completion_window": row.completion_window,
        "status": row.status,
        "output_file_id": row.output_file_id,
        "error_file_id": row.error_file_id,
        "errors": {"object": "list", "data": errors} if errors is not None else None,
        "request_counts": (counts or row.counts).as_dict(),
        "usage": json.loads(row.usage) if row.usage else None,
        "metadata": json.loads(row.metadata) if row.metadata else None,
        "created_at": int(row.created_at),
        "in_progress_at": _seconds(row.in_progress_at),
        "finalizing_at": _seconds(row.finalizing_at),
        "completed_at": _seconds(row.completed_at),
        "failed_at": _seconds(row.failed_at),
        "expired_at": _seconds(row.expired_at),
        "expires_at": _seconds(row.expires_at),
        "cancelling_at": _seconds(row.cancelling_at),
        "cancelled_at": _seconds(row.cancelled_at),
    }


@frozen
class Usage:
    """Token sums over a batch's answers (OpenAI's ``usage`` on the batch)."""

    input_tokens: int = 0
    output_tokens: int = 0

    def add(self, body: Any) -> Usage:
        """This plus the tokens an answer reports, whatever its dialect."""
        if not isinstance(body, dict):
            return self
        usage = body.get("usage")
        if isinstance(usage, dict):  # OpenAI: chat, completions, embeddings, responses
            given = _int(usage.get("prompt_tokens", usage.get("input_tokens")))
            made = _int(usage.get("completion_tokens", usage.get("output_tokens")))
        else:  # Ollama's native counts
            given = _int(body.get("prompt_eval_count"))
            made = _int(body.get("eval_count"))
        return Usage(self.input_tokens + given, self.output_tokens + made)

    def as_dict(self) -> dict[str, Any]:
        return {
            "input_tokens": self.input_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": self.output_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": self.input_tokens + self.output_tokens,
        }


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


@frozen
class LineResult:
    """One output or error file line, and which file it belongs in."""

    error: bool
    line: dict[str, Any]


def _refusal_body(endpoint: str, status: int, message: str) -> dict[str, Any]:
    """The target's refusal in the dialect of the batch's endpoint."""
    if endpoint.startswith("/v1/"):
        kind = "invalid_request_error" if status < 500 else "server_error"
        return {"error": {"message": message, "type": kind, "code": None}}
    return {"error": message}


def line_result(
    *,
    job_id: str,
    custom_id: str,
    endpoint: str,
    state: str,
    error_code: str | None,
    error_message: str | None,
    error_status: int | None,
    body: Any,
    ending: BatchStatus,
) -> LineResult:
    """The output line of one batch line, from its job as it ended.

    A done job is a 200 ``response``; a target refusal is a ``response`` with
    the target's status (error file); anything without an HTTP answer is an
    ``error`` (error file): the job's error code, or ``batch_cancelled`` /
    ``batch_expired`` for a line that never ran.
    """
    request_id = batch_request_id(job_id)
    response: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    if state == "done":
        response = {"status_code": 200, "request_id": job_id, "body": body}
    elif state == "failed" and error_status is not None:
        message = error_message or f"the target answered HTTP {error_status}"
        response = {
            "status_code": error_status,
            "request_id": job_id,
            "body": _refusal_body(endpoint, error_status, message),
        }
    elif state == "failed":
        error = {"code": error_code or "failed", "message": error_message or ""}
    elif ending is BatchStatus.EXPIRED:
        error = {
            "code": "batch_expired",
            "message": "the batch's completion window passed before this request ran",
        }
    else:
        error = {
            "code": "batch_cancelled",
            "message": "the batch was cancelled before this request finished",
        }
    line = {"id": request_id, "custom_id": custom_id, "response": response, "error": error}
    return LineResult(error=state != "done", line=line)
