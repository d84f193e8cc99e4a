"""Job rows in SQLite: the synchronous operations run on the store's thread.

Every state change goes through ``change_state``, which in ONE transaction
updates the row (compare-and-set on the expected current states), appends the
event to ``job_events`` and, when the job has a webhook, queues the delivery in
``outbox`` (transactional outbox). Callers run these functions through
``Store.write`` / ``Store.read``; nothing here touches the reactor.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any

from foreman.core.batchstate import TERMINAL as BATCH_TERMINAL
from foreman.core.batchstate import BatchStatus
from foreman.core.ids import new_message_id
from foreman.core.jobstate import RUNNING, TERMINAL, JobState, Transition
from foreman.core.records import Event, IdempotencyConflict, JobRow, NewJob, request_hash

# The value types live in foreman.core.records; they stay importable from here.
__all__ = [
    "Event",
    "IdempotencyConflict",
    "JobRow",
    "NewJob",
    "change_state",
    "get_job",
    "insert_job",
    "list_jobs",
    "request_hash",
]

_COLUMNS = (
    "id, state, endpoint, model, priority, request, metadata, webhook_url, attempts, "
    "error_code, error_message, created_at, started_at, working_at, finished_at, "
    "not_before, tokens, result, artifacts, idempotency_key, base_url, "
    "batch_id, custom_id, line, error_status"
)

# State values for SQL parameters, taken from the state machine so they cannot drift.
_QUEUED = JobState.QUEUED.value
_RUNNING_STATES = tuple(sorted(s.value for s in RUNNING))
_TERMINAL_STATES = tuple(sorted(s.value for s in TERMINAL))
# batches whose lines must stay until their output is written
_UNFINISHED_BATCH = tuple(sorted(s.value for s in BatchStatus if s not in BATCH_TERMINAL))


#: ``json.dumps(value, separators=(",", ":"))`` without building an encoder per call
_COMPACT = json.JSONEncoder(separators=(",", ":"))


#: ids per ``IN (…)`` query: well under SQLite's limit on bound variables
_IN_CHUNK = 500


def _marks(values: Sequence[object]) -> str:
    """``?,?,…`` placeholders for an ``IN (…)`` list of ``values``."""
    return ",".join("?" * len(values))


def _row(values: Sequence[Any] | None) -> JobRow | None:
    return None if values is None else JobRow(*values)


def get_job(conn: sqlite3.Connection, job_id: str) -> JobRow | None:
    cur = conn.execute(f"SELECT {_COLUMNS} FROM jobs WHERE id = ?", (job_id,))
    return _row(cur.fetchone())


def get_jobs(conn: sqlite3.Connection, job_ids: Sequence[str]) -> dict[str, JobRow]:
    """The rows of ``job_ids`` that exist, by id: one query (the worker's read-ahead)."""
    rows: dict[str, JobRow] = {}
    ids = list(dict.fromkeys(job_ids))
    for start in range(0, len(ids), _IN_CHUNK):
        chunk = ids[start : start + _IN_CHUNK]
        cur = conn.execute(f"SELECT {_COLUMNS} FROM jobs WHERE id IN ({_marks(chunk)})", chunk)
        for values in cur:
            rows[values[0]] = JobRow(*values)
    return rows


def insert_job(
    conn: sqlite3.Connection, job: NewJob, render: Any
) -> tuple[JobRow, bool, Event | None]:
    """Insert (or find by Idempotency-Key) a job; return (row, created, queued event).

    ``render(row, seq) -> dict`` builds the job object for the event payload.
    """
    if job.idempotency_key is not None:
        found = conn.execute(
            f"SELECT {_COLUMNS}, request_hash FROM jobs WHERE idempotency_key = ?",
            (job.idempotency_key,),
        ).fetchone()
        if found is not None:
            if found[-1] != job.request_hash:
                raise IdempotencyConflict(found[0])
            row = _row(found[:-1])
            assert row is not None
            return row, False, None
    conn.execute(
        "INSERT INTO jobs (id, state, endpoint, model, priority, request, metadata, "
        "webhook_url, created_at, idempotency_key, request_hash, base_url, "
        "batch_id, custom_id, line) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            job.id,
            _QUEUED,
            job.endpoint,
            job.model,
            job.priority,
            job.request,
            job.metadata,
            job.webhook_url,
            job.created_at,
            job.idempotency_key,
            job.request_hash,
            job.base_url,
            job.batch_id,
            job.custom_id,
            job.line,
        ),
    )
    # The row is what was just written (the columns not named take their
    # defaults: no attempts, no tokens, the rest NULL); read back it would be
    # the same values, so it is built here instead of re-read.
    row = JobRow(
        job.id,
        _QUEUED,
        job.endpoint,
        job.model,
        job.priority,
        job.request,
        job.metadata,
        job.webhook_url,
        0,
        None,
        None,
        job.created_at,
        None,
        None,
        None,
        None,
        0,
        None,
        None,
        job.idempotency_key,
        job.base_url,
        job.batch_id,
        job.custom_id,
        job.line,
        None,
    )
    # A job's first event is seq 1: the id was just inserted, so no event
    # names it (``job_events`` rows go with their job, ON DELETE CASCADE).
    event = _record_event(conn, row, "job.queued", job.created_at, render, seq=1)
    return row, True, event


_SETTABLE = frozenset(
    {
        "attempts",
        "error_code",
        "error_message",
        "started_at",
        "working_at",
        "finished_at",
        "not_before",
        "tokens",
        "result",
        "artifacts",
        "error_status",
    }
)


def change_state(
    conn: sqlite3.Connection, change: Transition, render: Any
) -> tuple[JobRow, Event] | tuple[None, None]:
    """Apply ``change`` and record its event (and webhook) in the same transaction.

    (None, None) when the job is gone or no longer in one of ``change.sources``.
    """
    sets = ["state = ?"]
    args: list[Any] = [change.target.value]
    for name, value in change.fields:
        if name not in _SETTABLE:
            raise ValueError(f"not a settable job field: {name}")
        sets.append(f"{name} = ?")
        args.append(value)
    states = sorted(s.value for s in change.sources)
    cur = conn.execute(
        f"UPDATE jobs SET {', '.join(sets)} WHERE id = ? AND state IN ({_marks(states)})",
        (*args, change.job_id, *states),
    )
    if cur.rowcount == 0:
        return None, None
    row = get_job(conn, change.job_id)
    assert row is not None
    return row, _record_event(conn, row, f"job.{change.target.value}", change.at, render)


def _record_event(
    conn: sqlite3.Connection,
    row: JobRow,
    event_type: str,
    at: float,
    render: Any,
    seq: int | None = None,
) -> Event:
    """Append the job's next event (``seq``: its number when the caller knows it)."""
    if seq is None:
        seq_row = conn.execute(
            "SELECT coalesce(max(seq), 0) + 1 FROM job_events WHERE job_id = ?", (row.id,)
        ).fetchone()
        seq = int(seq_row[0])
    data = _COMPACT.encode(render(row, seq))
    conn.execute(
        "INSERT INTO job_events (job_id, seq, type, at, data) VALUES (?, ?, ?, ?, ?)",
        (row.id, seq, event_type, at, data),
    )
    if row.webhook_url:
        queue_webhook(conn, row.id, seq, row.webhook_url, event_type, at, data)
    return Event(row.id, seq, event_type, at, data)


def queue_webhook(
    conn: sqlite3.Connection, key: str, seq: int, url: str, event_type: str, at: float, data: str
) -> None:
    """Put one delivery in the outbox; ``key`` (a job's or a batch's id) orders them by ``seq``."""
    gone = conn.execute("SELECT 1 FROM webhook_gone WHERE url = ?", (url,)).fetchone()
    body = f'{{"type":{json.dumps(event_type)},"timestamp":"{_rfc3339(at)}","data":{data}}}'
    conn.execute(
        "INSERT INTO outbox (msg_id, job_id, seq, url, type, body, status, "
        "next_attempt_at, created_at, finished_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            new_message_id(at),
            key,
            seq,
            url,
            event_type,
            body,
            "gone" if gone else "pending",
            at,
            at,
            at if gone else None,
        ),
    )


def _rfc3339(at: float) -> str:
    import datetime

    dt = datetime.datetime.fromtimestamp(at, tz=datetime.UTC)
    return dt.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def events_after(conn: sqlite3.Connection, job_id: str, after_seq: int) -> list[Event]:
    rows = conn.execute(
        "SELECT job_id, seq, type, at, data FROM job_events "
        "WHERE job_id = ? AND seq > ? ORDER BY seq",
        (job_id, after_seq),
    ).fetchall()
    return [Event(*r) for r in rows]


def list_jobs(
    conn: sqlite3.Connection,
    state: str | None,
    model: str | None,
    after: str | None,
    limit: int,
) -> tuple[list[JobRow], bool]:
    """Newest first, ``after`` an id cursor (exclusive); returns (page, has_more)."""
    where: list[str] = []
    args: list[Any] = []
    if state is not None:
        where.append("state = ?")
        args.append(state)
    if model is not None:
        where.append("model = ?")
        args.append(model)
    if after is not None:
        where.append("id < ?")
        args.append(after)
    sql = f"SELECT {_COLUMNS} FROM jobs"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY id DESC LIMIT ?"
    rows = conn.execute(sql, (*args, limit + 1)).fetchall()
    page = [JobRow(*r) for r in rows[:limit]]
    return page, len(rows) > limit


def queued_jobs(conn: sqlite3.Connection) -> list[tuple[str, str, int, float, float | None]]:
    """(id, model, priority, created_at, not_before) of every queued job, for the scheduler."""
    rows = conn.execute(
        "SELECT id, model, priority, created_at, not_before FROM jobs WHERE state = ?",
        (_QUEUED,),
    ).fetchall()
    return [(r[0], r[1], r[2], r[3], r[4]) for r in rows]


def interrupted_jobs(conn: sqlite3.Connection) -> list[JobRow]:
    """Jobs a crash left in ``loading``/``working``."""
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM jobs WHERE state IN ({_marks(_RUNNING_STATES)})",
        _RUNNING_STATES,
    ).fetchall()
    return [JobRow(*r) for r in rows]


def delete_job(conn: sqlite3.Connection, job_id: str) -> bool:
    cur = conn.execute(
        f"DELETE FROM jobs WHERE id = ? AND state IN ({_marks(_TERMINAL_STATES)})",
        (job_id, *_TERMINAL_STATES),
    )
    if cur.rowcount == 0:
        return False
    conn.execute("DELETE FROM outbox WHERE job_id = ?", (job_id,))
    return True


def expired_jobs(conn: sqlite3.Connection, before: float, limit: int = 1000) -> list[str]:
    """Finished jobs older than ``before``; a batch's lines only once the batch has ended."""
    rows = conn.execute(
        "SELECT id FROM jobs WHERE finished_at IS NOT NULL AND finished_at < ? "
        "AND (batch_id IS NULL OR batch_id NOT IN "
        f"(SELECT id FROM batches WHERE status IN ({_marks(_UNFINISHED_BATCH)}))) LIMIT ?",
        (before, *_UNFINISHED_BATCH, limit),
    ).fetchall()
    return [r[0] for r in rows]


def delete_jobs(conn: sqlite3.Connection, ids: Iterable[str]) -> int:
    count = 0
    for job_id in ids:
        count += conn.execute("DELETE FROM jobs WHERE id = ?", (job_id,)).rowcount
        conn.execute("DELETE FROM outbox WHERE job_id = ?", (job_id,))
    return count


def webhook_summary(conn: sqlite3.Connection, job_id: str) -> dict[str, Any] | None:
    """Delivery state of a job's webhook events, for the job object's ``webhook`` field."""
    rows = conn.execute(
        "SELECT seq, type, msg_id, status, attempts, last_status, last_error, "
        "next_attempt_at, finished_at FROM outbox WHERE job_id = ? ORDER BY seq",
        (job_id,),
    ).fetchall()
    if not rows:
        return None
    deliveries = [
        {
            "seq": r[0],
            "type": r[1],
            "webhook_id": r[2],
            "status": r[3],
            "attempts": r[4],
            "last_status": r[5],
            "last_error": r[6],
            "next_attempt_at": _rfc3339(r[7]) if r[3] == "pending" else None,
            "finished_at": _rfc3339(r[8]) if r[8] is not None else None,
        }
        for r in rows
    ]
    return {
        "delivered": sum(1 for d in deliveries if d["status"] == "delivered"),
        "pending": sum(1 for d in deliveries if d["status"] == "pending"),
        "failed": sum(1 for d in deliveries if d["status"] in ("failed", "gone")),
        "deliveries": deliveries,
    }
