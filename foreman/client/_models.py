"""Typed values for what foreman's job API returns (SPEC "Jobs"). Pure: parsing only.

Each value keeps the server's JSON as ``raw`` (excluded from equality and repr)
so callers that want the exact wire form — the CLI's ``--json`` — have it,
while code gets attributes with types.
"""

from __future__ import annotations

import datetime
import enum
import json
from typing import Any

from attrs import field, frozen

__all__ = ["Artifact", "Job", "JobError", "JobEvent", "JobPage", "JobState"]


class JobState(enum.StrEnum):
    QUEUED = "queued"
    LOADING = "loading"
    WORKING = "working"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in _TERMINAL


_TERMINAL = frozenset({JobState.DONE, JobState.FAILED, JobState.CANCELLED})
_STATE_NAMES = frozenset(s.value for s in JobState)


def _time(value: Any) -> datetime.datetime | None:
    if value is None:
        return None
    return datetime.datetime.fromisoformat(str(value))


@frozen
class Artifact:
    name: str
    url: str
    size: int
    content_type: str

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Artifact:
        return cls(
            name=str(data["name"]),
            url=str(data.get("url", "")),
            size=int(data.get("size", 0)),
            content_type=str(data.get("content_type", "application/octet-stream")),
        )


@frozen
class JobError:
    """Why a job failed (or was interrupted): foreman's error code and the message."""

    code: str
    message: str


@frozen
class Job:
    """A job as ``GET /jobs/{id}`` shows it; times are timezone-aware UTC datetimes."""

    id: str
    state: JobState
    endpoint: str
    model: str
    priority: int
    metadata: Any
    attempts: int
    error: JobError | None
    created_at: datetime.datetime | None
    started_at: datetime.datetime | None
    finished_at: datetime.datetime | None
    position: int | None
    tokens: int | None
    artifacts: tuple[Artifact, ...]
    result: dict[str, Any] | None
    webhook_url: str | None = None
    webhook: dict[str, Any] | None = None
    seq: int | None = None
    raw: dict[str, Any] = field(factory=dict, eq=False, repr=False)

    @property
    def terminal(self) -> bool:
        return self.state.terminal

    def artifact(self, name: str) -> Artifact | None:
        return next((a for a in self.artifacts if a.name == name), None)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Job:
        error = data.get("error")
        progress = data.get("progress")
        return cls(
            id=str(data["id"]),
            state=JobState(data["state"]),
            endpoint=str(data.get("endpoint", "/api/chat")),
            model=str(data.get("model", "")),
            priority=int(data.get("priority", 0)),
            metadata=data.get("metadata"),
            attempts=int(data.get("attempts", 0)),
            error=JobError(str(error.get("code", "")), str(error.get("message", "")))
            if isinstance(error, dict)
            else None,
            created_at=_time(data.get("created_at")),
            started_at=_time(data.get("started_at")),
            finished_at=_time(data.get("finished_at")),
            position=data.get("position"),
            tokens=progress.get("tokens") if isinstance(progress, dict) else None,
            artifacts=tuple(Artifact.from_dict(a) for a in data.get("artifacts") or ()),
            result=data.get("result"),
            webhook_url=data.get("webhook_url"),
            webhook=data.get("webhook"),
            seq=data.get("seq"),
            raw=data,
        )


@frozen
class JobPage:
    """One page of ``GET /jobs``; pass ``next_after`` as ``after`` for the next page."""

    jobs: tuple[Job, ...]
    has_more: bool
    next_after: str | None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobPage:
        return cls(
            jobs=tuple(Job.from_dict(j) for j in data.get("data") or ()),
            has_more=bool(data.get("has_more")),
            next_after=data.get("next_after"),
        )


@frozen
class JobEvent:
    """One Server-Sent Event of ``GET /jobs/{id}/events``.

    State events (``job.queued`` … ``job.cancelled``) carry the durable ``seq``
    and the job as it was at that change; ``job.progress`` events carry only
    the token count so far and have no ``seq`` (they are not replayed).
    """

    type: str
    job_id: str
    seq: int | None = None
    job: Job | None = None
    tokens: int | None = None

    @property
    def state(self) -> JobState | None:
        return self.job.state if self.job is not None else None

    @property
    def terminal(self) -> bool:
        return self.job is not None and self.job.terminal

    @classmethod
    def parse(cls, event_type: str, data: str, event_id: str | None) -> JobEvent | None:
        """The typed event, or None for event types this client does not know."""
        if event_type == "job.progress":
            body = json.loads(data)
            return cls(type=event_type, job_id=str(body["id"]), tokens=int(body["tokens"]))
        if not event_type.startswith("job.") or event_type[4:] not in _STATE_NAMES:
            return None
        job = Job.from_dict(json.loads(data))
        seq = job.seq
        if seq is None and event_id is not None and event_id.isdigit():
            seq = int(event_id)
        return cls(type=event_type, job_id=job.id, seq=seq, job=job, tokens=job.tokens)
