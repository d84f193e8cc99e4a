"""Typed values for what foreman's job and batch APIs return (SPEC "Jobs", "Batches"). Pure.

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

__all__ = [
    "Artifact",
    "Batch",
    "BatchCounts",
    "BatchError",
    "BatchPage",
    "BatchResult",
    "BatchStatus",
    "FileObject",
    "FilePage",
    "Job",
    "JobError",
    "JobEvent",
    "JobPage",
    "JobState",
    "QueueActivity",
    "QueueItem",
    "QueueState",
    "parse_results",
]


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
    the token count so far and have no ``seq`` (they are not replayed);
    ``job.eta`` events, while the job waits, its ``position`` and ``eta``.
    """

    type: str
    job_id: str
    seq: int | None = None
    job: Job | None = None
    tokens: int | None = None
    position: int | None = None
    eta: dict[str, Any] | None = None

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
        if event_type == "job.eta":
            body = json.loads(data)
            eta = body.get("eta")
            position = body.get("position")
            return cls(
                type=event_type,
                job_id=str(body["id"]),
                position=position if isinstance(position, int) else None,
                eta=eta if isinstance(eta, dict) else None,
            )
        if not event_type.startswith("job.") or event_type[4:] not in _STATE_NAMES:
            return None
        job = Job.from_dict(json.loads(data))
        seq = job.seq
        if seq is None and event_id is not None and event_id.isdigit():
            seq = int(event_id)
        return cls(type=event_type, job_id=job.id, seq=seq, job=job, tokens=job.tokens)


# -- OpenAI batches (SPEC "Batches"): OpenAI's shapes; times are Unix seconds on the wire


class BatchStatus(enum.StrEnum):
    VALIDATING = "validating"
    FAILED = "failed"
    IN_PROGRESS = "in_progress"
    FINALIZING = "finalizing"
    COMPLETED = "completed"
    EXPIRED = "expired"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in _BATCH_TERMINAL


_BATCH_TERMINAL = frozenset(
    {BatchStatus.FAILED, BatchStatus.COMPLETED, BatchStatus.EXPIRED, BatchStatus.CANCELLED}
)


def _unix(value: Any) -> datetime.datetime | None:
    """Unix seconds (OpenAI's timestamps) as an aware UTC datetime."""
    if value is None:
        return None
    return datetime.datetime.fromtimestamp(float(value), datetime.UTC)


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _count(data: Any, name: str) -> int:
    value = data.get(name) if isinstance(data, dict) else None
    return int(value) if value is not None else 0


@frozen
class FileObject:
    """An uploaded file (``file-…``): a batch's input, output or error file."""

    id: str
    bytes: int
    created_at: datetime.datetime | None
    filename: str
    purpose: str
    status: str | None = None
    expires_at: datetime.datetime | None = None
    raw: dict[str, Any] = field(factory=dict, eq=False, repr=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FileObject:
        return cls(
            id=str(data["id"]),
            bytes=int(data.get("bytes") or 0),
            created_at=_unix(data.get("created_at")),
            filename=str(data.get("filename") or ""),
            purpose=str(data.get("purpose") or ""),
            status=_opt_str(data.get("status")),
            expires_at=_unix(data.get("expires_at")),
            raw=data,
        )


def _cursor(data: dict[str, Any]) -> dict[str, Any]:
    """The paging fields of an OpenAI list (``has_more``, ``first_id``, ``last_id``)."""
    return {
        "has_more": bool(data.get("has_more")),
        "first_id": _opt_str(data.get("first_id")),
        "last_id": _opt_str(data.get("last_id")),
    }


@frozen
class FilePage:
    """One page of ``GET /v1/files``; pass ``next_after`` as ``after`` for the next page."""

    files: tuple[FileObject, ...]
    has_more: bool
    first_id: str | None = None
    last_id: str | None = None

    @property
    def next_after(self) -> str | None:
        return self.last_id if self.has_more else None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FilePage:
        return cls(
            files=tuple(FileObject.from_dict(f) for f in data.get("data") or ()),
            **_cursor(data),
        )


@frozen
class BatchCounts:
    """``request_counts``: lines in all, and how many ended each way so far."""

    total: int = 0
    completed: int = 0
    failed: int = 0

    @property
    def done(self) -> int:
        """Lines finished either way (``completed + failed``)."""
        return self.completed + self.failed

    @classmethod
    def from_dict(cls, data: Any) -> BatchCounts:
        return cls(_count(data, "total"), _count(data, "completed"), _count(data, "failed"))


@frozen
class BatchError:
    """An entry of a batch's ``errors`` (``line`` names the input line), or a line's ``error``."""

    code: str
    message: str
    param: str | None = None
    line: int | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BatchError:
        line = data.get("line")
        return cls(
            code=str(data.get("code") or ""),
            message=str(data.get("message") or ""),
            param=_opt_str(data.get("param")),
            line=int(line) if line is not None else None,
        )

    def __str__(self) -> str:
        where = f"line {self.line}: " if self.line is not None else ""
        return f"{where}{self.code}: {self.message}"


@frozen
class Batch:
    """A batch as ``GET /v1/batches/{id}`` shows it; times are aware UTC datetimes."""

    id: str
    status: BatchStatus
    endpoint: str
    input_file_id: str
    completion_window: str
    output_file_id: str | None
    error_file_id: str | None
    errors: tuple[BatchError, ...]
    request_counts: BatchCounts
    usage: dict[str, Any] | None
    metadata: dict[str, Any] | None
    created_at: datetime.datetime | None
    in_progress_at: datetime.datetime | None = None
    finalizing_at: datetime.datetime | None = None
    completed_at: datetime.datetime | None = None
    failed_at: datetime.datetime | None = None
    expired_at: datetime.datetime | None = None
    expires_at: datetime.datetime | None = None
    cancelling_at: datetime.datetime | None = None
    cancelled_at: datetime.datetime | None = None
    raw: dict[str, Any] = field(factory=dict, eq=False, repr=False)

    @property
    def terminal(self) -> bool:
        return self.status.terminal

    @property
    def finished_at(self) -> datetime.datetime | None:
        """When it reached its terminal status (None while it has not)."""
        return {
            BatchStatus.COMPLETED: self.completed_at,
            BatchStatus.FAILED: self.failed_at,
            BatchStatus.EXPIRED: self.expired_at,
            BatchStatus.CANCELLED: self.cancelled_at,
        }.get(self.status)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Batch:
        errors = data.get("errors")
        entries = errors.get("data") if isinstance(errors, dict) else errors
        metadata = data.get("metadata")
        usage = data.get("usage")
        return cls(
            id=str(data["id"]),
            status=BatchStatus(data["status"]),
            endpoint=str(data.get("endpoint") or ""),
            input_file_id=str(data.get("input_file_id") or ""),
            completion_window=str(data.get("completion_window") or "24h"),
            output_file_id=_opt_str(data.get("output_file_id")),
            error_file_id=_opt_str(data.get("error_file_id")),
            errors=tuple(BatchError.from_dict(e) for e in entries or () if isinstance(e, dict)),
            request_counts=BatchCounts.from_dict(data.get("request_counts")),
            usage=usage if isinstance(usage, dict) else None,
            metadata=metadata if isinstance(metadata, dict) else None,
            created_at=_unix(data.get("created_at")),
            in_progress_at=_unix(data.get("in_progress_at")),
            finalizing_at=_unix(data.get("finalizing_at")),
            completed_at=_unix(data.get("completed_at")),
            failed_at=_unix(data.get("failed_at")),
            expired_at=_unix(data.get("expired_at")),
            expires_at=_unix(data.get("expires_at")),
            cancelling_at=_unix(data.get("cancelling_at")),
            cancelled_at=_unix(data.get("cancelled_at")),
            raw=data,
        )


@frozen
class BatchPage:
    """One page of ``GET /v1/batches``, newest first; ``next_after`` continues it."""

    batches: tuple[Batch, ...]
    has_more: bool
    first_id: str | None = None
    last_id: str | None = None

    @property
    def next_after(self) -> str | None:
        return self.last_id if self.has_more else None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BatchPage:
        return cls(
            batches=tuple(Batch.from_dict(b) for b in data.get("data") or ()),
            **_cursor(data),
        )


@frozen
class BatchResult:
    """One line of a batch's output or error file.

    ``status_code``, ``request_id`` (the line's job) and ``body`` come from
    ``response`` (None for a line that never ran); ``error`` is set for a
    line that never ran (``batch_cancelled``, ``batch_expired`` …).
    """

    id: str
    custom_id: str
    status_code: int | None
    request_id: str | None
    body: Any
    error: BatchError | None
    raw: dict[str, Any] = field(factory=dict, eq=False, repr=False)

    @property
    def ok(self) -> bool:
        """The request ran and was answered with a 2xx."""
        return self.error is None and self.status_code is not None and self.status_code < 400

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BatchResult:
        response = data.get("response")
        error = data.get("error")
        status = response.get("status_code") if isinstance(response, dict) else None
        return cls(
            id=str(data.get("id") or ""),
            custom_id=str(data["custom_id"]),
            status_code=int(status) if status is not None else None,
            request_id=_opt_str(response.get("request_id")) if isinstance(response, dict) else None,
            body=response.get("body") if isinstance(response, dict) else None,
            error=BatchError.from_dict(error) if isinstance(error, dict) else None,
            raw=data,
        )


def parse_results(data: bytes) -> list[BatchResult]:
    """The lines of an output or error file (JSONL; blank lines skipped)."""
    results = []
    for number, line in enumerate(data.splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            results.append(BatchResult.from_dict(item))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"line {number}: {e}") from None
    return results


# -- the queue as a whole (SPEC "Jobs": GET /queue, POST /queue/pause|resume|drain)


def _flag(data: dict[str, Any], name: str) -> bool:
    value = data[name]
    if not isinstance(value, bool):
        raise TypeError(f"{name} is {value!r}, not a boolean")
    return value


@frozen
class QueueItem:
    """One entry of ``GET /queue``, in dispatch order: a job, a batch line or a waiting request.

    ``id`` is the job's id (None for an interactive request, which has ``path``).
    """

    position: int
    kind: str
    model: str
    priority: int
    waited: float  # seconds
    id: str | None = None
    path: str | None = None
    eta: dict[str, Any] | None = None  # {start_at, finish_at, known[, note]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QueueItem:
        return cls(
            position=int(data["position"]),
            kind=str(data["kind"]),
            model=str(data.get("model") or ""),
            priority=int(data.get("priority") or 0),
            waited=float(data.get("waited_ms") or 0.0) / 1000.0,
            id=_opt_str(data.get("id")),
            path=_opt_str(data.get("path")),
            eta=data["eta"] if isinstance(data.get("eta"), dict) else None,
        )


@frozen
class QueueState:
    """Whether foreman dispatches: ``GET /queue``'s ``state`` and the pause/resume/drain replies.

    ``paused``: nothing new is dispatched (kept across a restart); ``since``
    is when (aware UTC). ``draining``: paused by a drain, which waits for the
    running work to end; ``drained``: paused and nothing running. ``queued``
    counts everything waiting (jobs, batch lines, interactive requests).
    ``items`` and ``loaded_model`` come only with ``queue_state()``
    (``GET /queue``): the first waiting items in dispatch order.
    """

    paused: bool
    draining: bool
    drained: bool
    since: datetime.datetime | None
    running: bool
    queued: int
    items: tuple[QueueItem, ...] = ()
    loaded_model: str | None = None
    raw: dict[str, Any] = field(factory=dict, eq=False, repr=False)

    @property
    def status(self) -> str:
        """One word: ``running``, ``paused``, ``draining`` or ``drained``."""
        if not self.paused:
            return "running"
        if self.draining:
            return "drained" if self.drained else "draining"
        return "paused"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QueueState:
        """From a ``queue.state`` object, or from ``GET /queue`` (its ``state`` plus the items)."""
        state = data["state"] if data.get("object") == "queue" else data
        return cls(
            paused=_flag(state, "paused"),
            draining=_flag(state, "draining"),
            drained=_flag(state, "drained"),
            since=_time(state.get("since")),
            running=_flag(state, "running"),
            queued=int(state["queued"]),
            items=tuple(QueueItem.from_dict(i) for i in data.get("data") or ())
            if state is not data
            else (),
            loaded_model=_opt_str(data.get("loaded_model")) if state is not data else None,
            raw=data,
        )


@frozen
class QueueActivity:
    """``GET /queue/activity``: is there work (queued or running)? What keep-awake follows.

    ``busy`` is ``queued > 0 or running``; ``queued`` counts jobs, batch
    lines and waiting requests alike.
    """

    busy: bool
    queued: int
    running: bool
    paused: bool
    draining: bool
    raw: dict[str, Any] = field(factory=dict, eq=False, repr=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QueueActivity:
        return cls(
            busy=_flag(data, "busy"),
            queued=int(data["queued"]),
            running=_flag(data, "running"),
            paused=_flag(data, "paused"),
            draining=_flag(data, "draining"),
            raw=data,
        )
