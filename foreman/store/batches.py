"""Batch and file rows in SQLite (ADR 0018); run through ``Store.write`` / ``Store.read``.

A batch's status changes are compare-and-set on the status it is expected
in, like a job's; the lines themselves are ``jobs`` rows and change state
through ``foreman.store.jobs``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from typing import Any

from foreman.core import jobstate
from foreman.core.batchstate import BatchStatus, Step
from foreman.core.batchview import BatchRow, FileRow
from foreman.core.jobstate import JobState
from foreman.core.records import Event, JobRow
from foreman.store.jobs import change_state, queue_webhook

__all__ = [
    "batch_lines",
    "batches_in",
    "cancel_queued_lines",
    "clear_lines",
    "delete_file",
    "file_ids",
    "get_batch",
    "get_file",
    "insert_batch",
    "insert_file",
    "line_counts",
    "list_batches",
    "list_files",
    "move_batch",
    "queued_lines",
    "unfinished_lines",
]

_FILE_COLUMNS = "id, purpose, filename, bytes, created_at, batch_id"
_BATCH_COLUMNS = (
    "id, status, ending, endpoint, input_file_id, completion_window, metadata, webhook_url, "
    "output_file_id, error_file_id, errors, total, completed, failed, usage, created_at, "
    "in_progress_at, finalizing_at, completed_at, failed_at, expired_at, expires_at, "
    "cancelling_at, cancelled_at, base_url"
)
_STAMPS = frozenset(
    {
        "in_progress_at",
        "finalizing_at",
        "completed_at",
        "failed_at",
        "expired_at",
        "cancelling_at",
        "cancelled_at",
    }
)
_SETTABLE = frozenset(
    {"output_file_id", "error_file_id", "errors", "total", "completed", "failed", "usage"}
)
_ACTIVE_INPUT = (
    BatchStatus.VALIDATING.value,
    BatchStatus.IN_PROGRESS.value,
    BatchStatus.CANCELLING.value,
    BatchStatus.FINALIZING.value,
)


def _marks(values: Sequence[object]) -> str:
    return ",".join("?" * len(values))


# -- files


def insert_file(conn: sqlite3.Connection, row: FileRow) -> None:
    conn.execute(
        f"INSERT INTO files ({_FILE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
        (row.id, row.purpose, row.filename, row.bytes, row.created_at, row.batch_id),
    )


def get_file(conn: sqlite3.Connection, file_id: str) -> FileRow | None:
    found = conn.execute(f"SELECT {_FILE_COLUMNS} FROM files WHERE id = ?", (file_id,)).fetchone()
    return None if found is None else FileRow(*found)


def list_files(
    conn: sqlite3.Connection, purpose: str | None, after: str | None, limit: int, newest: bool
) -> tuple[list[FileRow], bool]:
    where: list[str] = []
    args: list[Any] = []
    if purpose is not None:
        where.append("purpose = ?")
        args.append(purpose)
    if after is not None:
        where.append("id < ?" if newest else "id > ?")
        args.append(after)
    sql = f"SELECT {_FILE_COLUMNS} FROM files"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += f" ORDER BY id {'DESC' if newest else 'ASC'} LIMIT ?"
    rows = conn.execute(sql, (*args, limit + 1)).fetchall()
    return [FileRow(*r) for r in rows[:limit]], len(rows) > limit


def delete_file(conn: sqlite3.Connection, file_id: str) -> str:
    """'deleted', 'missing', or 'in_use' (the input of a batch still running)."""
    if get_file(conn, file_id) is None:
        return "missing"
    busy = conn.execute(
        f"SELECT 1 FROM batches WHERE input_file_id = ? AND status IN ({_marks(_ACTIVE_INPUT)})",
        (file_id, *_ACTIVE_INPUT),
    ).fetchone()
    if busy is not None:
        return "in_use"
    conn.execute("DELETE FROM files WHERE id = ?", (file_id,))
    return "deleted"


# -- batches


def insert_batch(conn: sqlite3.Connection, row: BatchRow) -> None:
    values = [getattr(row, name.strip()) for name in _BATCH_COLUMNS.split(",")]
    conn.execute(
        f"INSERT INTO batches ({_BATCH_COLUMNS}) VALUES ({_marks(values)})",
        values,
    )


def get_batch(conn: sqlite3.Connection, batch_id: str) -> BatchRow | None:
    found = conn.execute(
        f"SELECT {_BATCH_COLUMNS} FROM batches WHERE id = ?", (batch_id,)
    ).fetchone()
    return None if found is None else BatchRow(*found)


def list_batches(
    conn: sqlite3.Connection, after: str | None, limit: int
) -> tuple[list[BatchRow], bool]:
    """Newest first; ``after`` is an id cursor (exclusive)."""
    if after is None:
        rows = conn.execute(
            f"SELECT {_BATCH_COLUMNS} FROM batches ORDER BY id DESC LIMIT ?", (limit + 1,)
        ).fetchall()
    else:
        rows = conn.execute(
            f"SELECT {_BATCH_COLUMNS} FROM batches WHERE id < ? ORDER BY id DESC LIMIT ?",
            (after, limit + 1),
        ).fetchall()
    return [BatchRow(*r) for r in rows[:limit]], len(rows) > limit


def batches_in(conn: sqlite3.Connection, statuses: Sequence[str]) -> list[BatchRow]:
    rows = conn.execute(
        f"SELECT {_BATCH_COLUMNS} FROM batches WHERE status IN ({_marks(statuses)}) ORDER BY id",
        tuple(statuses),
    ).fetchall()
    return [BatchRow(*r) for r in rows]


def move_batch(
    conn: sqlite3.Connection,
    batch_id: str,
    source: BatchStatus,
    step: Step,
    at: float,
    fields: Sequence[tuple[str, Any]] = (),
    webhook: tuple[str, Callable[[BatchRow], str]] | None = None,
) -> BatchRow | None:
    """Apply ``step`` if the batch is still in ``source``; None if not.

    ``webhook``: (event type, render) to queue in the outbox in the same
    transaction when the batch has a webhook URL; ``render`` turns the
    changed row into the event's JSON data.
    """
    sets = ["status = ?", "ending = ?"]
    args: list[Any] = [step.status.value, step.ending.value if step.ending else None]
    if step.stamp is not None:
        if step.stamp not in _STAMPS:
            raise ValueError(f"not a batch time: {step.stamp}")
        sets.append(f"{step.stamp} = ?")
        args.append(at)
    for name, value in fields:
        if name not in _SETTABLE:
            raise ValueError(f"not a settable batch field: {name}")
        sets.append(f"{name} = ?")
        args.append(value)
    cur = conn.execute(
        f"UPDATE batches SET {', '.join(sets)} WHERE id = ? AND status = ?",
        (*args, batch_id, source.value),
    )
    if cur.rowcount == 0:
        return None
    row = get_batch(conn, batch_id)
    assert row is not None
    if webhook is not None and row.webhook_url:
        event_type, render = webhook
        queue_webhook(conn, row.id, 1, row.webhook_url, event_type, at, render(row))
    return row


# -- a batch's lines (jobs rows)


def clear_lines(conn: sqlite3.Connection, batch_id: str) -> int:
    """Remove the lines an interrupted validation left (nothing of them ran)."""
    ids = [
        r[0] for r in conn.execute("SELECT id FROM jobs WHERE batch_id = ?", (batch_id,)).fetchall()
    ]
    for job_id in ids:
        conn.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
    return len(ids)


def line_counts(conn: sqlite3.Connection, batch_id: str) -> dict[str, int]:
    """Lines of the batch per job state."""
    rows = conn.execute(
        "SELECT state, count(*) FROM jobs WHERE batch_id = ? GROUP BY state", (batch_id,)
    ).fetchall()
    return {r[0]: int(r[1]) for r in rows}


def unfinished_lines(conn: sqlite3.Connection, batch_id: str) -> list[tuple[str, str]]:
    """(job id, state) of every line not yet done, failed or cancelled."""
    rows = conn.execute(
        "SELECT id, state FROM jobs WHERE batch_id = ? AND state IN (?, ?, ?)",
        (batch_id, JobState.QUEUED.value, JobState.LOADING.value, JobState.WORKING.value),
    ).fetchall()
    return [(r[0], r[1]) for r in rows]


def queued_lines(conn: sqlite3.Connection, batch_id: str) -> list[str]:
    """Ids of the batch's lines still queued."""
    rows = conn.execute(
        "SELECT id FROM jobs WHERE batch_id = ? AND state = ?", (batch_id, JobState.QUEUED.value)
    ).fetchall()
    return [r[0] for r in rows]


def file_ids(conn: sqlite3.Connection) -> set[str]:
    return {r[0] for r in conn.execute("SELECT id FROM files").fetchall()}


def cancel_queued_lines(
    conn: sqlite3.Connection, batch_id: str, at: float, render: Any
) -> list[tuple[JobRow, Event]]:
    """Cancel every queued line, each through the job state machine; the changes."""
    ids = [
        r[0]
        for r in conn.execute(
            "SELECT id FROM jobs WHERE batch_id = ? AND state = ?",
            (batch_id, JobState.QUEUED.value),
        ).fetchall()
    ]
    changed: list[tuple[JobRow, Event]] = []
    for job_id in ids:
        row, event = change_state(conn, jobstate.cancel(job_id, at), render)
        if row is not None and event is not None:
            changed.append((row, event))
    return changed


_LINE_COLUMNS = (
    "id, custom_id, line, state, error_code, error_message, error_status, result, artifacts"
)


def batch_lines(
    conn: sqlite3.Connection, batch_id: str, after_line: int, limit: int
) -> list[tuple[Any, ...]]:
    """The next ``limit`` lines after line number ``after_line``, in file order."""
    rows: list[tuple[Any, ...]] = conn.execute(
        f"SELECT {_LINE_COLUMNS} FROM jobs WHERE batch_id = ? AND line > ? ORDER BY line LIMIT ?",
        (batch_id, after_line, limit),
    ).fetchall()
    return rows
