"""The synchronous SQL of ``foreman.store.batches`` (and what batches changed in
``foreman.store.jobs`` and the schema) on an in-memory SQLite, no reactor."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator
from typing import Any

import attrs
import pytest

from foreman.core import jobstate
from foreman.core.batchstate import TERMINAL, BatchEvent, BatchStatus, Step, step
from foreman.core.batchview import BatchRow, FileRow, batch_object
from foreman.core.ids import IdGenerator
from foreman.core.jobstate import Event, JobState, Transition
from foreman.core.records import JobRow, NewJob, request_hash
from foreman.store.batches import (
    batch_lines,
    batches_in,
    cancel_queued_lines,
    clear_lines,
    delete_file,
    get_batch,
    get_file,
    insert_batch,
    insert_file,
    line_counts,
    list_batches,
    list_files,
    move_batch,
    unfinished_lines,
)
from foreman.store.database import configure_connection
from foreman.store.jobs import (
    change_state,
    delete_job,
    delete_jobs,
    events_after,
    expired_jobs,
    get_job,
    insert_job,
)
from foreman.store.migrations import MIGRATIONS, current_version, migrate

T0 = 1_700_000_000.0
HOOK = "https://hooks.example/batches"
S, E = BatchStatus, BatchEvent

_ids = IdGenerator()


class Render:
    """The jobs' ``render(row, seq)`` callback: records its calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[JobRow, int]] = []

    def __call__(self, row: JobRow, seq: int) -> dict[str, Any]:
        self.calls.append((row, seq))
        return {"id": row.id, "state": row.state, "seq": seq}


class BatchRender:
    """The batch webhook's ``render(row) -> JSON``: records the rows it saw."""

    def __init__(self) -> None:
        self.rows: list[BatchRow] = []

    def __call__(self, row: BatchRow) -> str:
        self.rows.append(row)
        return json.dumps(batch_object(row), separators=(",", ":"))


@pytest.fixture
def conn() -> Iterator[sqlite3.Connection]:
    c = sqlite3.connect(":memory:")
    configure_connection(c)
    migrate(c)
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def render() -> Render:
    return Render()


def file_id(at: float = T0) -> str:
    return "file-" + _ids.ulid(at)


def batch_id(at: float = T0) -> str:
    return "batch_" + _ids.ulid(at)


def new_file(conn: sqlite3.Connection, *, at: float = T0, purpose: str = "batch") -> FileRow:
    row = FileRow(file_id(at), purpose, f"{purpose}.jsonl", 100, at, None)
    insert_file(conn, row)
    return row


def new_batch(
    conn: sqlite3.Connection,
    *,
    at: float = T0,
    status: BatchStatus = S.VALIDATING,
    webhook_url: str | None = None,
    input_file_id: str | None = None,
    **changes: Any,
) -> BatchRow:
    row = BatchRow(
        id=batch_id(at),
        status=status.value,
        ending=None,
        endpoint="/v1/chat/completions",
        input_file_id=input_file_id or new_file(conn, at=at).id,
        completion_window="24h",
        metadata=json.dumps({"team": "ml"}),
        webhook_url=webhook_url,
        output_file_id=None,
        error_file_id=None,
        errors=None,
        total=0,
        completed=0,
        failed=0,
        usage=None,
        created_at=at,
        in_progress_at=None,
        finalizing_at=None,
        completed_at=None,
        failed_at=None,
        expired_at=None,
        expires_at=at + 86400,
        cancelling_at=None,
        cancelled_at=None,
        base_url="http://127.0.0.1:8080",
    )
    row = attrs.evolve(row, **changes)
    insert_batch(conn, row)
    return row


def add_line(
    conn: sqlite3.Connection,
    render: Render,
    batch: str | None,
    line: int,
    *,
    at: float = T0,
    webhook_url: str | None = None,
) -> JobRow:
    body = {"model": "llama3.2", "messages": [{"role": "user", "content": f"line {line}"}]}
    job = NewJob(
        id=_ids.job_id(at),
        endpoint="/v1/chat/completions",
        model="llama3.2",
        priority=0,
        request=json.dumps(body),
        metadata=None,
        webhook_url=webhook_url,
        created_at=at,
        idempotency_key=None,
        request_hash=request_hash(body),
        base_url="http://127.0.0.1:8080",
        batch_id=batch,
        custom_id=None if batch is None else f"req-{line}",
        line=None if batch is None else line,
    )
    row, created, _ = insert_job(conn, job, render)
    assert created
    return row


def apply(conn: sqlite3.Connection, change: Transition, render: Render) -> JobRow:
    row, event = change_state(conn, change, render)
    assert row is not None and event is not None, f"{change.event} did not apply"
    return row


def to_state(
    conn: sqlite3.Connection, render: Render, job_id: str, state: JobState, at: float = T0
) -> JobRow:
    """Drive a queued job to ``state`` through the real constructors."""
    row = get_job(conn, job_id)
    assert row is not None and row.state == JobState.QUEUED
    if state is JobState.QUEUED:
        return row
    if state is JobState.CANCELLED:
        return apply(conn, jobstate.cancel(job_id, at + 1), render)
    if state is JobState.FAILED:
        change = jobstate.plan(
            job_id,
            Event.FAIL,
            at + 1,
            (
                ("finished_at", at + 1),
                ("error_code", "target_error"),
                ("error_message", "model 'x' not found"),
                ("error_status", 404),
            ),
        )
        return apply(conn, change, render)
    row = apply(conn, jobstate.start_loading(job_id, at + 1), render)
    if state is JobState.LOADING:
        return row
    row = apply(conn, jobstate.start_working(job_id, at + 2), render)
    if state is JobState.WORKING:
        return row
    assert state is JobState.DONE
    return apply(conn, jobstate.succeed(job_id, at + 3, 7, '{"r":1}', "[]"), render)


def outbox(conn: sqlite3.Connection, key: str) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT msg_id, seq, url, type, body, status, next_attempt_at, created_at, finished_at "
        "FROM outbox WHERE job_id = ? ORDER BY seq",
        (key,),
    ).fetchall()


def event_types(conn: sqlite3.Connection, job_id: str) -> list[str]:
    return [e.type for e in events_after(conn, job_id, 0)]


def drive(conn: sqlite3.Connection, batch: BatchRow, events: list[BatchEvent]) -> BatchRow:
    """Move a stored batch through ``events`` with the real state machine."""
    row = batch
    for i, event in enumerate(events, start=1):
        source = BatchStatus(row.status)
        change = step(source, BatchStatus(row.ending) if row.ending else None, event)
        moved = move_batch(conn, row.id, source, change, T0 + i)
        assert moved is not None, (row.status, event)
        row = moved
    return row


#: a way to each status from ``validating``
PATHS: dict[BatchStatus, list[BatchEvent]] = {
    S.VALIDATING: [],
    S.IN_PROGRESS: [E.VALID],
    S.FINALIZING: [E.VALID, E.LINES_DONE],
    S.COMPLETED: [E.VALID, E.LINES_DONE, E.FINALIZED],
    S.FAILED: [E.INVALID],
    S.EXPIRED: [E.VALID, E.EXPIRE, E.FINALIZED],
    S.CANCELLING: [E.VALID, E.CANCEL],
    S.CANCELLED: [E.CANCEL, E.FINALIZED],
}


# -- the migration from schema 1 --------------------------------------------------------


def v1_database() -> sqlite3.Connection:
    """A database as foreman wrote it before batches: schema 1, with jobs and webhooks."""
    c = sqlite3.connect(":memory:")
    configure_connection(c)
    c.execute("BEGIN IMMEDIATE")
    for statement in MIGRATIONS[0].split(";"):
        if statement.strip():
            c.execute(statement)
    c.execute("PRAGMA user_version = 1")
    c.execute("COMMIT")
    for n, state in enumerate(("done", "queued")):
        c.execute(
            "INSERT INTO jobs (id, state, endpoint, model, priority, request, webhook_url, "
            "attempts, created_at, finished_at, tokens, base_url) "
            "VALUES (?, ?, '/api/generate', 'llama3.2', 0, '{}', ?, 1, ?, ?, 5, 'http://x')",
            (f"job_{n}", state, HOOK, T0 + n, T0 + 10 if state == "done" else None),
        )
        c.execute(
            "INSERT INTO job_events (job_id, seq, type, at, data) "
            "VALUES (?, 1, 'job.queued', ?, ?)",
            (f"job_{n}", T0 + n, "{}"),
        )
    rows = [
        (7, "msg_a", "job_0", 1, HOOK, "job.queued", '{"a":1}', "delivered", 1, T0, 200, None, T0),
        (
            8,
            "msg_b",
            "job_0",
            2,
            HOOK,
            "job.done",
            '{"b":2}',
            "pending",
            3,
            T0 + 60,
            503,
            "HTTP 503",
            T0 + 1,
        ),
        (9, "msg_c", "job_1", 1, HOOK, "job.queued", '{"c":3}', "gone", 0, T0, None, None, T0 + 2),
    ]
    c.executemany(
        "INSERT INTO outbox (id, msg_id, job_id, seq, url, type, body, status, attempts, "
        "next_attempt_at, last_status, last_error, created_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        rows,
    )
    c.execute("INSERT INTO webhook_gone (url, at) VALUES (?, ?)", ("https://gone.example", T0))
    c.execute("INSERT INTO settings (key, value) VALUES ('secret', 's3')")
    return c


def columns(conn: sqlite3.Connection, table: str) -> list[str]:
    return [r[1] for r in conn.execute(f"PRAGMA table_info({table})").fetchall()]


def test_schema_1_with_outbox_rows_migrates_to_2_keeping_them() -> None:
    c = v1_database()
    try:
        assert current_version(c) == 1
        outbox_before = c.execute("SELECT * FROM outbox ORDER BY id").fetchall()
        jobs_before = c.execute("SELECT * FROM jobs ORDER BY id").fetchall()
        events_before = c.execute("SELECT * FROM job_events ORDER BY job_id").fetchall()
        assert len(outbox_before) == 3
        assert c.execute("PRAGMA foreign_key_list(outbox)").fetchall() != []

        assert migrate(c) == 2 == len(MIGRATIONS)
        assert current_version(c) == 2

        # the outbox rows, every column, and the same ids
        assert c.execute("SELECT * FROM outbox ORDER BY id").fetchall() == outbox_before
        assert columns(c, "outbox")[:3] == ["id", "msg_id", "job_id"]
        # the jobs keep every value and gain the batch columns, empty
        jobs_after = c.execute("SELECT * FROM jobs ORDER BY id").fetchall()
        assert [r[: len(jobs_before[0])] for r in jobs_after] == jobs_before
        assert columns(c, "jobs")[-4:] == ["batch_id", "custom_id", "line", "error_status"]
        assert all(r[-4:] == (None, None, None, None) for r in jobs_after)
        assert c.execute("SELECT * FROM job_events ORDER BY job_id").fetchall() == events_before
        assert c.execute("SELECT url FROM webhook_gone").fetchall() == [("https://gone.example",)]
        assert c.execute("SELECT value FROM settings WHERE key = 'secret'").fetchone() == ("s3",)

        # the outbox no longer points at jobs: a batch's id can be its key
        assert c.execute("PRAGMA foreign_key_list(outbox)").fetchall() == []
        c.execute(
            "INSERT INTO outbox (msg_id, job_id, seq, url, type, body, next_attempt_at, "
            "created_at) VALUES ('msg_d', 'batch_x', 1, ?, 'batch.completed', '{}', ?, ?)",
            (HOOK, T0, T0),
        )
        assert c.execute("SELECT id FROM outbox WHERE msg_id = 'msg_d'").fetchone() == (10,)
        # job events still go with their job
        assert c.execute("PRAGMA foreign_key_list(job_events)").fetchall() != []

        indexes = {r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type='index'")}
        assert {
            "outbox_pending",
            "outbox_by_job",
            "jobs_by_batch",
            "jobs_by_state",
            "batches_by_status",
            "batches_by_input",
        } <= indexes
        assert {"files", "batches"} <= {
            r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type='table'")
        }
        assert "outbox_v2" not in {r[0] for r in c.execute("SELECT name FROM sqlite_master")}
        assert c.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert c.execute("PRAGMA foreign_key_check").fetchall() == []

        # the migrated database works with the v2 code
        assert delete_job(c, "job_0") is True
        assert c.execute("SELECT count(*) FROM outbox WHERE job_id = 'job_0'").fetchone() == (0,)
        assert c.execute("SELECT count(*) FROM outbox").fetchone() == (2,)
        assert migrate(c) == 2  # again: nothing to do
    finally:
        c.close()


def test_a_fresh_database_has_the_same_schema_as_a_migrated_one(
    conn: sqlite3.Connection,
) -> None:
    old = v1_database()
    try:
        migrate(old)

        def schema(c: sqlite3.Connection) -> dict[str, list[tuple[Any, ...]]]:
            names = [
                r[0]
                for r in c.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY 1")
            ]
            return {n: c.execute(f"PRAGMA table_info({n})").fetchall() for n in names}

        assert schema(old) == schema(conn)
    finally:
        old.close()


# -- files ------------------------------------------------------------------------------------


def test_insert_and_get_file(conn: sqlite3.Connection) -> None:
    row = FileRow(file_id(), "batch_output", "b_output.jsonl", 2048, T0 + 0.5, "batch_x")
    insert_file(conn, row)
    assert get_file(conn, row.id) == row
    assert get_file(conn, "file-nope") is None
    with pytest.raises(sqlite3.IntegrityError):
        insert_file(conn, row)  # the id is the key


@pytest.fixture
def files(conn: sqlite3.Connection) -> list[FileRow]:
    """Seven files, oldest first; purposes alternate batch / batch_output."""
    return [new_file(conn, at=T0 + i, purpose=("batch", "batch_output")[i % 2]) for i in range(7)]


def page_through(
    fetch: Callable[[str | None], tuple[list[Any], bool]],
) -> tuple[list[str], list[bool]]:
    seen: list[str] = []
    flags: list[bool] = []
    after: str | None = None
    while True:
        page, more = fetch(after)
        seen += [r.id for r in page]
        flags.append(more)
        if not more:
            return seen, flags
        after = page[-1].id


@pytest.mark.parametrize("newest", [False, True])
def test_list_files_pages_in_both_orders(
    conn: sqlite3.Connection, files: list[FileRow], newest: bool
) -> None:
    ids = [f.id for f in files]
    expected = ids[::-1] if newest else ids
    page, more = list_files(conn, None, None, 100, newest)
    assert [f.id for f in page] == expected and not more
    assert page[0] == (files[-1] if newest else files[0])

    seen, flags = page_through(lambda after: list_files(conn, None, after, 3, newest))
    assert seen == expected
    assert flags == [True, True, False]
    # exactly ``limit`` left: no further page
    page, more = list_files(conn, None, expected[3], 3, newest)
    assert [f.id for f in page] == expected[4:] and not more
    page, more = list_files(conn, None, expected[2], 3, newest)
    assert [f.id for f in page] == expected[3:6] and more
    # past the last one
    assert list_files(conn, None, expected[-1], 3, newest) == ([], False)


@pytest.mark.parametrize("newest", [False, True])
def test_list_files_by_purpose(
    conn: sqlite3.Connection, files: list[FileRow], newest: bool
) -> None:
    inputs = [f.id for f in files if f.purpose == "batch"]
    outputs = [f.id for f in files if f.purpose == "batch_output"]
    if newest:
        inputs, outputs = inputs[::-1], outputs[::-1]
    assert [f.id for f in list_files(conn, "batch", None, 100, newest)[0]] == inputs
    assert [f.id for f in list_files(conn, "batch_output", None, 100, newest)[0]] == outputs
    assert list_files(conn, "fine-tune", None, 100, newest) == ([], False)
    seen, flags = page_through(lambda after: list_files(conn, "batch", after, 2, newest))
    assert seen == inputs and flags == [True, False]
    # the cursor may be a file of another purpose
    page, _ = list_files(conn, "batch", outputs[0], 100, newest)
    assert [f.id for f in page] == inputs[1:]


def test_delete_file(conn: sqlite3.Connection) -> None:
    row = new_file(conn)
    assert delete_file(conn, row.id) == "deleted"
    assert get_file(conn, row.id) is None
    assert delete_file(conn, row.id) == "missing"
    assert delete_file(conn, "file-never") == "missing"


@pytest.mark.parametrize("status", list(BatchStatus))
def test_the_input_of_an_active_batch_cannot_be_deleted(
    conn: sqlite3.Connection, status: BatchStatus
) -> None:
    used = new_file(conn)
    batch = new_batch(conn, input_file_id=used.id)
    drive(conn, batch, PATHS[status])
    expected = "deleted" if status in TERMINAL else "in_use"
    assert delete_file(conn, used.id) == expected
    assert (get_file(conn, used.id) is None) == (status in TERMINAL)


def test_only_the_batches_own_input_is_held(conn: sqlite3.Connection) -> None:
    used = new_file(conn)
    other = new_file(conn, at=T0 + 1)
    output = new_file(conn, at=T0 + 2, purpose="batch_output")
    new_batch(conn, input_file_id=used.id, status=S.IN_PROGRESS, output_file_id=output.id)
    done = new_batch(conn, at=T0 + 3, input_file_id=used.id)
    drive(conn, done, PATHS[S.COMPLETED])
    assert delete_file(conn, other.id) == "deleted"
    assert delete_file(conn, output.id) == "deleted"  # only inputs are held
    assert delete_file(conn, used.id) == "in_use"  # one active batch is enough


# -- batches ----------------------------------------------------------------------------------


def test_insert_and_get_batch(conn: sqlite3.Connection) -> None:
    row = new_batch(
        conn,
        webhook_url=HOOK,
        ending="completed",
        errors="[]",
        usage='{"input_tokens":1}',
        total=3,
        completed=2,
        failed=1,
        in_progress_at=T0 + 1,
        cancelled_at=T0 + 9,
    )
    assert get_batch(conn, row.id) == row
    assert get_batch(conn, "batch_nope") is None
    with pytest.raises(sqlite3.IntegrityError):
        insert_batch(conn, row)


@pytest.fixture
def batches(conn: sqlite3.Connection) -> list[BatchRow]:
    """Five batches, oldest first, in various statuses."""
    statuses = [S.COMPLETED, S.IN_PROGRESS, S.VALIDATING, S.FAILED, S.IN_PROGRESS]
    return [new_batch(conn, at=T0 + i, status=s) for i, s in enumerate(statuses)]


def test_list_batches_is_newest_first_and_pages_after_a_cursor(
    conn: sqlite3.Connection, batches: list[BatchRow]
) -> None:
    newest_first = [b.id for b in batches][::-1]
    page, more = list_batches(conn, None, 100)
    assert page == batches[::-1] and not more
    seen, flags = page_through(lambda after: list_batches(conn, after, 2))
    assert seen == newest_first and flags == [True, True, False]
    page, more = list_batches(conn, newest_first[0], 4)
    assert [b.id for b in page] == newest_first[1:] and not more  # exactly the rest
    page, more = list_batches(conn, newest_first[0], 3)
    assert [b.id for b in page] == newest_first[1:4] and more
    assert list_batches(conn, newest_first[-1], 10) == ([], False)
    assert list_batches(conn, "batch_0", 10) == ([], False)  # before every id


def test_batches_in(conn: sqlite3.Connection, batches: list[BatchRow]) -> None:
    assert batches_in(conn, ["in_progress"]) == [batches[1], batches[4]]
    assert [b.id for b in batches_in(conn, ["validating", "failed", "completed"])] == [
        batches[0].id,
        batches[2].id,
        batches[3].id,
    ]
    assert batches_in(conn, ["cancelling"]) == []


def test_a_batch_lives_through_move_batch(conn: sqlite3.Connection) -> None:
    batch = new_batch(conn)
    row = move_batch(
        conn, batch.id, S.VALIDATING, step(S.VALIDATING, None, E.VALID), T0 + 1, (("total", 4),)
    )
    assert row is not None
    assert (row.status, row.ending, row.in_progress_at, row.total) == (
        "in_progress",
        None,
        T0 + 1,
        4,
    )
    row = move_batch(conn, batch.id, S.IN_PROGRESS, step(S.IN_PROGRESS, None, E.LINES_DONE), T0 + 2)
    assert row is not None
    assert (row.status, row.ending, row.finalizing_at) == ("finalizing", "completed", T0 + 2)
    fields = (
        ("output_file_id", "file-out"),
        ("error_file_id", "file-err"),
        ("total", 4),
        ("completed", 3),
        ("failed", 1),
        ("usage", '{"input_tokens":5}'),
    )
    change = step(S.FINALIZING, S.COMPLETED, E.FINALIZED)
    row = move_batch(conn, batch.id, S.FINALIZING, change, T0 + 3, fields)
    assert row is not None
    assert row == attrs.evolve(
        batch,
        status="completed",
        ending=None,  # only kept while finishing
        output_file_id="file-out",
        error_file_id="file-err",
        total=4,
        completed=3,
        failed=1,
        usage='{"input_tokens":5}',
        in_progress_at=T0 + 1,
        finalizing_at=T0 + 2,
        completed_at=T0 + 3,
    )
    assert get_batch(conn, batch.id) == row


def test_cancel_keeps_its_ending_through_cancelling(conn: sqlite3.Connection) -> None:
    batch = new_batch(conn)
    row = drive(conn, batch, [E.VALID, E.CANCEL])
    assert (row.status, row.ending, row.cancelling_at) == ("cancelling", "cancelled", T0 + 2)
    row = drive(conn, row, [E.LINES_DONE])  # still cancelling, no stamp
    assert (row.status, row.ending, row.cancelling_at) == ("cancelling", "cancelled", T0 + 2)
    row = drive(conn, row, [E.FINALIZED])
    assert (row.status, row.ending, row.cancelled_at) == ("cancelled", None, T0 + 1)


def test_move_batch_is_compare_and_set(conn: sqlite3.Connection) -> None:
    batch = new_batch(conn, webhook_url=HOOK)
    hook = BatchRender()
    cancel = step(S.VALIDATING, None, E.CANCEL)
    # the caller thinks it is in progress: nothing happens
    assert move_batch(conn, batch.id, S.IN_PROGRESS, cancel, T0 + 1, (), ("x", hook)) is None
    assert move_batch(conn, "batch_gone", S.VALIDATING, cancel, T0 + 1) is None
    assert get_batch(conn, batch.id) == batch
    assert hook.rows == [] and outbox(conn, batch.id) == []
    # the right source applies once, then the source is stale
    assert move_batch(conn, batch.id, S.VALIDATING, cancel, T0 + 2) is not None
    valid = step(S.VALIDATING, None, E.VALID)
    assert move_batch(conn, batch.id, S.VALIDATING, valid, T0 + 3, (("total", 9),)) is None
    row = get_batch(conn, batch.id)
    assert row is not None
    assert (row.status, row.cancelling_at, row.in_progress_at, row.total) == (
        "cancelling",
        T0 + 2,
        None,
        0,
    )


@pytest.mark.parametrize("name", ["status", "id", "webhook_url", "ending", "total = 1, status"])
def test_move_batch_refuses_other_fields_before_writing(
    conn: sqlite3.Connection, name: str
) -> None:
    batch = new_batch(conn)
    change = step(S.VALIDATING, None, E.VALID)
    with pytest.raises(ValueError, match="not a settable batch field"):
        move_batch(conn, batch.id, S.VALIDATING, change, T0 + 1, (("total", 2), (name, "x")))
    assert get_batch(conn, batch.id) == batch


def test_move_batch_refuses_a_stamp_that_is_not_a_batch_time(conn: sqlite3.Connection) -> None:
    batch = new_batch(conn)
    for stamp in ("created_at", "expires_at", "status", "x_at"):
        with pytest.raises(ValueError, match="not a batch time"):
            move_batch(conn, batch.id, S.VALIDATING, Step(S.IN_PROGRESS, None, stamp), T0)
    assert get_batch(conn, batch.id) == batch


def test_move_batch_queues_the_webhook_when_the_batch_has_one(conn: sqlite3.Connection) -> None:
    batch = new_batch(conn, at=T0, webhook_url=HOOK)
    hook = BatchRender()
    row = drive(conn, batch, [E.VALID, E.LINES_DONE])
    assert outbox(conn, batch.id) == []  # moves without ``webhook`` queue nothing
    change = step(S.FINALIZING, S.COMPLETED, E.FINALIZED)
    row2 = move_batch(
        conn,
        row.id,
        S.FINALIZING,
        change,
        T0 + 10.5,
        (("completed", 2),),
        ("batch.completed", hook),
    )
    assert row2 is not None
    assert hook.rows == [row2]  # rendered from the row as changed
    [(msg_id, seq, url, type_, body, status, next_at, created, finished)] = outbox(conn, batch.id)
    assert msg_id.startswith("msg_") and seq == 1
    assert (url, type_, status, finished) == (HOOK, "batch.completed", "pending", None)
    assert next_at == created == T0 + 10.5
    doc = json.loads(body)
    assert doc["type"] == "batch.completed"
    assert doc["timestamp"] == "2023-11-14T22:13:30.500Z"
    assert doc["data"] == batch_object(row2)
    assert doc["data"]["status"] == "completed"
    assert doc["data"]["request_counts"]["completed"] == 2


def test_move_batch_without_a_webhook_url_queues_nothing(conn: sqlite3.Connection) -> None:
    batch = new_batch(conn)
    hook = BatchRender()
    change = step(S.VALIDATING, None, E.INVALID)
    row = move_batch(conn, batch.id, S.VALIDATING, change, T0 + 1, (), ("batch.failed", hook))
    assert row is not None and row.status == "failed" and row.failed_at == T0 + 1
    assert hook.rows == []  # not even rendered
    assert conn.execute("SELECT count(*) FROM outbox").fetchone() == (0,)


def test_a_gone_webhook_url_is_queued_as_gone(conn: sqlite3.Connection) -> None:
    conn.execute("INSERT INTO webhook_gone (url, at) VALUES (?, ?)", (HOOK, T0 - 5))
    gone = new_batch(conn, webhook_url=HOOK)
    other = new_batch(conn, at=T0 + 1, webhook_url=HOOK + "/other")
    for batch in (gone, other):
        change = step(S.VALIDATING, None, E.INVALID)
        moved = move_batch(
            conn, batch.id, S.VALIDATING, change, T0 + 7, (), ("batch.failed", BatchRender())
        )
        assert moved is not None
    assert [(r[5], r[8]) for r in outbox(conn, gone.id)] == [("gone", T0 + 7)]
    assert [(r[5], r[8]) for r in outbox(conn, other.id)] == [("pending", None)]


# -- a batch's lines -------------------------------------------------------------------------------


@pytest.fixture
def lines(conn: sqlite3.Connection, render: Render) -> dict[str, Any]:
    """Batch A with lines in every state (inserted out of line order), batch B, a lone job."""
    a = new_batch(conn, status=S.IN_PROGRESS)
    b = new_batch(conn, at=T0 + 1, status=S.IN_PROGRESS)
    states = {
        4: JobState.QUEUED,
        1: JobState.DONE,
        6: JobState.WORKING,
        2: JobState.QUEUED,
        5: JobState.LOADING,
        3: JobState.FAILED,
        7: JobState.CANCELLED,
    }
    rows: dict[int, JobRow] = {}
    for number, state in states.items():
        job = add_line(conn, render, a.id, number)
        rows[number] = to_state(conn, render, job.id, state)
    b_queued = add_line(conn, render, b.id, 1)
    lone = add_line(conn, render, None, 0)
    return {"a": a, "b": b, "rows": rows, "b_queued": b_queued, "lone": lone}


def test_line_counts(conn: sqlite3.Connection, lines: dict[str, Any]) -> None:
    assert line_counts(conn, lines["a"].id) == {
        "queued": 2,
        "loading": 1,
        "working": 1,
        "done": 1,
        "failed": 1,
        "cancelled": 1,
    }
    assert line_counts(conn, lines["b"].id) == {"queued": 1}
    assert line_counts(conn, "batch_none") == {}


def test_unfinished_lines(conn: sqlite3.Connection, lines: dict[str, Any]) -> None:
    rows: dict[int, JobRow] = lines["rows"]
    assert sorted(unfinished_lines(conn, lines["a"].id)) == sorted(
        [
            (rows[2].id, "queued"),
            (rows[4].id, "queued"),
            (rows[5].id, "loading"),
            (rows[6].id, "working"),
        ]
    )
    assert unfinished_lines(conn, lines["b"].id) == [(lines["b_queued"].id, "queued")]
    assert unfinished_lines(conn, "batch_none") == []


def test_batch_lines_are_in_file_order_after_a_line_number(
    conn: sqlite3.Connection, lines: dict[str, Any]
) -> None:
    rows: dict[int, JobRow] = lines["rows"]
    everything = batch_lines(conn, lines["a"].id, 0, 100)
    assert [r[2] for r in everything] == [1, 2, 3, 4, 5, 6, 7]
    assert [r[0] for r in everything] == [rows[n].id for n in range(1, 8)]
    assert [r[1] for r in everything] == [f"req-{n}" for n in range(1, 8)]
    assert [r[3] for r in everything] == [
        "done",
        "queued",
        "failed",
        "queued",
        "loading",
        "working",
        "cancelled",
    ]
    done, failed = everything[0], everything[2]
    # id, custom_id, line, state, error_code, error_message, error_status, result, artifacts
    assert done == (rows[1].id, "req-1", 1, "done", None, None, None, '{"r":1}', "[]")
    assert failed == (
        rows[3].id,
        "req-3",
        3,
        "failed",
        "target_error",
        "model 'x' not found",
        404,
        None,
        None,
    )
    assert [r[2] for r in batch_lines(conn, lines["a"].id, 2, 3)] == [3, 4, 5]
    assert [r[2] for r in batch_lines(conn, lines["a"].id, 6, 3)] == [7]
    assert batch_lines(conn, lines["a"].id, 7, 3) == []
    assert [r[0] for r in batch_lines(conn, lines["b"].id, 0, 10)] == [lines["b_queued"].id]


def test_cancel_queued_lines_cancels_only_the_queued_lines_of_that_batch(
    conn: sqlite3.Connection, render: Render, lines: dict[str, Any]
) -> None:
    rows: dict[int, JobRow] = lines["rows"]
    before = {n: event_types(conn, r.id) for n, r in rows.items()}
    calls = len(render.calls)

    changed = cancel_queued_lines(conn, lines["a"].id, T0 + 50, render)

    assert sorted(job.id for job, _ in changed) == sorted([rows[2].id, rows[4].id])
    for job, event in changed:
        assert job.state == "cancelled" and job.finished_at == T0 + 50
        assert job.batch_id == lines["a"].id
        assert (event.job_id, event.type, event.at) == (job.id, "job.cancelled", T0 + 50)
        assert event.seq == 2  # after job.queued
        assert events_after(conn, job.id, 1) == [event]
        assert json.loads(event.data) == {"id": job.id, "state": "cancelled", "seq": 2}
    assert len(render.calls) == calls + 2
    # the running and finished lines, the other batch and the lone job are untouched
    for n in (1, 3, 5, 6, 7):
        row = get_job(conn, rows[n].id)
        assert row is not None and row.state == rows[n].state
        assert event_types(conn, rows[n].id) == before[n]
    b_row = get_job(conn, lines["b_queued"].id)
    lone = get_job(conn, lines["lone"].id)
    assert b_row is not None and b_row.state == "queued"
    assert lone is not None and lone.state == "queued"
    assert line_counts(conn, lines["a"].id)["cancelled"] == 3
    assert "queued" not in line_counts(conn, lines["a"].id)
    # nothing queued is left: a second call changes nothing
    assert cancel_queued_lines(conn, lines["a"].id, T0 + 60, render) == []
    assert cancel_queued_lines(conn, "batch_none", T0 + 60, render) == []


def test_clear_lines_removes_that_batch_s_lines_and_their_events(
    conn: sqlite3.Connection, lines: dict[str, Any]
) -> None:
    rows: dict[int, JobRow] = lines["rows"]
    assert clear_lines(conn, lines["a"].id) == 7
    assert line_counts(conn, lines["a"].id) == {}
    assert all(get_job(conn, r.id) is None for r in rows.values())
    assert all(events_after(conn, r.id, 0) == [] for r in rows.values())
    assert get_job(conn, lines["b_queued"].id) is not None
    assert get_job(conn, lines["lone"].id) is not None
    assert clear_lines(conn, lines["a"].id) == 0


# -- retention of lines, and deleting jobs ---------------------------------------------------------


@pytest.mark.parametrize("status", list(BatchStatus))
def test_expired_jobs_keeps_the_lines_of_an_unfinished_batch(
    conn: sqlite3.Connection, render: Render, status: BatchStatus
) -> None:
    batch = new_batch(conn)
    line = add_line(conn, render, batch.id, 1)
    to_state(conn, render, line.id, JobState.DONE)  # finished at T0 + 3
    lone = add_line(conn, render, None, 0)
    to_state(conn, render, lone.id, JobState.CANCELLED)
    drive(conn, batch, PATHS[status])

    expired = expired_jobs(conn, T0 + 1000)
    assert lone.id in expired  # a job outside any batch follows retention
    assert (line.id in expired) == (status in TERMINAL)


def test_expired_jobs_purges_the_lines_once_the_batch_ends(
    conn: sqlite3.Connection, render: Render
) -> None:
    batch = new_batch(conn)
    line = add_line(conn, render, batch.id, 1)
    running = drive(conn, batch, [E.VALID])
    to_state(conn, render, line.id, JobState.DONE)
    assert expired_jobs(conn, T0 + 1000) == []
    ending = drive(conn, running, [E.LINES_DONE])
    assert expired_jobs(conn, T0 + 1000) == []  # finalizing still reads its lines
    drive(conn, ending, [E.FINALIZED])
    assert expired_jobs(conn, T0 + 1000) == [line.id]
    assert expired_jobs(conn, T0 + 3) == []  # and only once old enough
    assert delete_jobs(conn, [line.id]) == 1
    assert line_counts(conn, batch.id) == {}


def test_delete_job_removes_its_outbox_rows_only(conn: sqlite3.Connection, render: Render) -> None:
    job = add_line(conn, render, None, 0, webhook_url=HOOK)
    other = add_line(conn, render, None, 0, at=T0 + 1, webhook_url=HOOK)
    to_state(conn, render, job.id, JobState.DONE)
    batch = new_batch(conn, webhook_url=HOOK)
    drive(conn, batch, [E.VALID, E.LINES_DONE])
    change = step(S.FINALIZING, S.COMPLETED, E.FINALIZED)
    assert (
        move_batch(conn, batch.id, S.FINALIZING, change, T0, (), ("batch.completed", BatchRender()))
        is not None
    )
    assert len(outbox(conn, job.id)) == 4
    assert len(outbox(conn, other.id)) == 1
    assert len(outbox(conn, batch.id)) == 1

    assert delete_job(conn, job.id) is True
    assert outbox(conn, job.id) == []
    assert events_after(conn, job.id, 0) == []
    assert len(outbox(conn, other.id)) == 1
    assert len(outbox(conn, batch.id)) == 1  # a batch's webhook is not a job's


def test_delete_jobs_removes_their_outbox_rows(conn: sqlite3.Connection, render: Render) -> None:
    ids = [add_line(conn, render, None, 0, at=T0 + i, webhook_url=HOOK).id for i in range(3)]
    for job_id in ids:
        to_state(conn, render, job_id, JobState.CANCELLED)
    assert delete_jobs(conn, ids[:2]) == 2
    assert outbox(conn, ids[0]) == outbox(conn, ids[1]) == []
    assert len(outbox(conn, ids[2])) == 2
