"""Job records as plain values (pure): what the store reads and writes.

They live in the core, not next to the SQL, so the pure layers (``jobview``
renders a ``JobRow``) can use them without depending on the store.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from attrs import frozen

from foreman.core.jobstate import TERMINAL

__all__ = ["Event", "IdempotencyConflict", "JobRow", "NewJob", "request_hash"]


class IdempotencyConflict(Exception):
    """The Idempotency-Key was used before with a different request body."""

    def __init__(self, job_id: str) -> None:
        super().__init__(job_id)
        self.job_id = job_id


#: the encoder ``request_hash`` canonicalises with (one, not one per call)
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def request_hash(body: Any) -> str:
    """Hash of the create body, key order ignored, for Idempotency-Key checks."""
    canonical = _CANONICAL.encode(body)
    return hashlib.sha256(canonical.encode()).hexdigest()


@frozen
class NewJob:
    """A job about to be inserted (``state`` is always ``queued``)."""

    id: str
    endpoint: str
    model: str
    priority: int
    request: str  # JSON text, exactly what the target will get
    metadata: str | None  # JSON text
    webhook_url: str | None
    created_at: float
    idempotency_key: str | None
    request_hash: str
    base_url: str
    batch_id: str | None = None
    custom_id: str | None = None
    line: int | None = None


@frozen
class JobRow:
    """One ``jobs`` row; field order is the store's column order."""

    id: str
    state: str
    endpoint: str
    model: str
    priority: int
    request: str
    metadata: str | None
    webhook_url: str | None
    attempts: int
    error_code: str | None
    error_message: str | None
    created_at: float
    started_at: float | None
    working_at: float | None
    finished_at: float | None
    not_before: float | None
    tokens: int
    result: str | None
    artifacts: str | None
    idempotency_key: str | None
    base_url: str | None
    batch_id: str | None = None
    custom_id: str | None = None
    line: int | None = None
    error_status: int | None = None  # the target's HTTP status when it refused the job

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL

    def request_body(self) -> dict[str, Any]:
        body: dict[str, Any] = json.loads(self.request)
        return body


@frozen
class Event:
    """One durable state event of a job (``job_events`` row)."""

    job_id: str
    seq: int
    type: str
    at: float
    data: str  # JSON of the job object at that moment
