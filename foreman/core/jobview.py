"""The public job object (SPEC "Jobs"), rendered from a row. Pure."""

from __future__ import annotations

import datetime
import json
from typing import Any

from foreman.core.jobstate import JobState
from foreman.core.records import JobRow

__all__ = ["ARTIFACT_TYPES", "RESULT_INLINE_LIMIT", "job_object", "rfc3339"]

RESULT_INLINE_LIMIT = 64 * 1024

ARTIFACT_TYPES = {
    "request.json": "application/json",
    "response.json": "application/json",
    "stream.ndjson": "application/x-ndjson",
}


def rfc3339(at: float | None) -> str | None:
    if at is None:
        return None
    dt = datetime.datetime.fromtimestamp(at, tz=datetime.UTC)
    return dt.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def artifact_list(row: JobRow, base_url: str) -> list[dict[str, Any]]:
    prefix = f"{base_url}/jobs/{row.id}/artifacts/"
    found: list[dict[str, Any]] = [{"name": "request.json", "size": len(row.request.encode())}]
    found += json.loads(row.artifacts) if row.artifacts else []
    return [
        {
            "name": a["name"],
            "url": prefix + a["name"],
            "size": a["size"],
            "content_type": ARTIFACT_TYPES[a["name"]],
        }
        for a in found
    ]


def job_object(
    row: JobRow,
    base_url: str,
    *,
    position: int | None = None,
    tokens: int | None = None,
    seq: int | None = None,
    eta: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The job as clients see it; ``tokens`` overrides the stored count while working."""
    error = None
    if row.error_code is not None:
        error = {"code": row.error_code, "message": row.error_message or ""}
    count = row.tokens if tokens is None else tokens
    body: dict[str, Any] = {
        "id": row.id,
        "object": "job",
        "state": row.state,
        "endpoint": row.endpoint,
        "model": row.model,
        "priority": row.priority,
        "metadata": json.loads(row.metadata) if row.metadata else None,
        "attempts": row.attempts,
        "error": error,
        "created_at": rfc3339(row.created_at),
        "started_at": rfc3339(row.started_at),
        "finished_at": rfc3339(row.finished_at),
        "position": position if row.state == JobState.QUEUED else None,
        "eta": eta if row.state == JobState.QUEUED else None,
        "progress": {"tokens": count} if row.state == JobState.WORKING or count else None,
        "artifacts": artifact_list(row, base_url),
        "result": json.loads(row.result) if row.result else None,
    }
    if row.webhook_url is not None:
        body["webhook_url"] = row.webhook_url
    if row.batch_id is not None:
        body["batch"] = {"id": row.batch_id, "custom_id": row.custom_id, "line": row.line}
    if seq is not None:
        body["seq"] = seq
    return body
