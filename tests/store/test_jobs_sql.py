"""The synchronous SQL of ``foreman.store.jobs`` on an in-memory SQLite (no reactor)."""

from __future__ import annotations

import json
import random
import sqlite3
from collections.abc import Iterator
from typing import Any

import pytest

from foreman.core import jobstate
from foreman.core.ids import IdGenerator
from foreman.core.jobstate import ErrorKind, Event, JobState, Transition
from foreman.core.records import IdempotencyConflict, JobRow, NewJob, request_hash
from foreman.store.database import configure_connection
from foreman.store.jobs import (
    _SETTABLE,
    change_state,
    delete_job,
    delete_jobs,
    events_after,
    expired_jobs,
    get_job,
    get_jobs,
    insert_job,
    interrupted_jobs,
    list_jobs,
    queued_jobs,
    webhook_summary,
)
from foreman.store.migrations import migrate

T0 = 1_700_000_000.0
HOOK = "https://hooks.example/foreman"


class Render:
    """The ``render(row, seq)`` callback: records its calls, returns a small job object."""

    def __init__(self) -> None:
        self.calls: list[tuple[JobRow, int]] = []

    def __call__(self, row: JobRow, seq: int) -> dict[str, Any]:
        self.calls.append((row, seq))
        return {"id": row.id, "state": row.state, "seq": seq, "attempts": row.attempts}


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


_ids = IdGenerator()


def new_job(
    *,
    at: float = T0,
    model: str = "llama3.2",
    webhook_url: str | None = None,
    key: str | None = None,
    body: dict[str, Any] | None = None,
    priority: int = 0,
) -> NewJob:
    body = body if body is not None else {"model": model, "prompt": "hi"}
    request = json.dumps(body)
    return NewJob(
        id=_ids.job_id(at),
        endpoint="/api/generate",
        model=model,
        priority=priority,
        request=request,
        metadata='{"k":"v"}',
        webhook_url=webhook_url,
        created_at=at,
        idempotency_key=key,
        request_hash=request_hash(body),
        base_url="http://127.0.0.1:8080",
    )


def add(conn: sqlite3.Connection, render: Render, **kw: Any) -> JobRow:
    row, created, _ = insert_job(conn, new_job(**kw), render)
    assert created
    return row


def apply(conn: sqlite3.Connection, change: Transition, render: Render) -> JobRow:
    row, event = change_state(conn, change, render)
    assert row is not None and event is not None, f"{change.event} did not apply"
    return row


def outbox(conn: sqlite3.Connection, job_id: str) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT msg_id, seq, url, type, body, status, next_attempt_at, created_at, finished_at "
        "FROM outbox WHERE job_id = ? ORDER BY seq",
        (job_id,),
    ).fetchall()


def event_count(conn: sqlite3.Connection, job_id: str) -> int:
    return int(
        conn.execute("SELECT count(*) FROM job_events WHERE job_id = ?", (job_id,)).fetchone()[0]
    )


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
        change = jobstate.plan(job_id, Event.FAIL, at + 1, (("finished_at", at + 1),))
        return apply(conn, change, render)
    row = apply(conn, jobstate.start_loading(job_id, at + 1), render)
    if state is JobState.LOADING:
        return row
    row = apply(conn, jobstate.start_working(job_id, at + 2), render)
    if state is JobState.WORKING:
        return row
    assert state is JobState.DONE
    return apply(conn, jobstate.succeed(job_id, at + 3, 7, '{"r":1}', "[]"), render)


# -- insert_job ---------------------------------------------------------------


def test_insert_job_returns_row_created_and_queued_event(
    conn: sqlite3.Connection, render: Render
) -> None:
    job = new_job()
    row, created, event = insert_job(conn, job, render)

    assert created is True
    assert row.id == job.id
    assert row.state == "queued"
    assert (row.endpoint, row.model, row.priority) == ("/api/generate", "llama3.2", 0)
    assert (row.request, row.metadata, row.base_url) == (job.request, '{"k":"v"}', job.base_url)
    assert row.attempts == 0 and row.tokens == 0
    assert row.error_code is None and row.error_message is None
    assert row.finished_at is None and row.not_before is None
    assert row.created_at == T0
    assert row == get_job(conn, job.id)

    assert event is not None
    assert (event.job_id, event.seq, event.type, event.at) == (job.id, 1, "job.queued", T0)
    assert render.calls == [(row, 1)]
    assert json.loads(event.data) == {"id": job.id, "state": "queued", "seq": 1, "attempts": 0}
    assert events_after(conn, job.id, 0) == [event]
    assert outbox(conn, job.id) == []  # no webhook, no outbox row


def test_get_job_of_unknown_id_is_none(conn: sqlite3.Connection) -> None:
    assert get_job(conn, "job_nope") is None


def test_get_jobs_reads_many_rows_at_once_past_one_query_chunk(
    conn: sqlite3.Connection, render: Render
) -> None:
    """The worker's read-ahead: the existing rows by id, equal to one-by-one reads; ids that
    do not exist (or repeat) are simply absent (or once); more ids than one query takes."""
    rows = [add(conn, render, at=T0 + n) for n in range(1_203)]
    wanted = [r.id for r in reversed(rows)] + ["job_nope", rows[5].id]
    got = get_jobs(conn, wanted)
    assert set(got) == {r.id for r in rows}
    assert all(got[r.id] == get_job(conn, r.id) == r for r in rows)
    assert get_jobs(conn, []) == {}
    assert get_jobs(conn, ["job_nope"]) == {}


def test_same_idempotency_key_and_body_returns_the_existing_job(
    conn: sqlite3.Connection, render: Render
) -> None:
    first, created, _ = insert_job(conn, new_job(key="k1", body={"a": 1, "b": 2}), render)
    assert created
    # a later job id, same key, same body (key order does not matter to the hash)
    again = new_job(at=T0 + 5, key="k1", body={"b": 2, "a": 1})
    assert again.id != first.id
    row, created, event = insert_job(conn, again, render)

    assert (row, created, event) == (first, False, None)
    assert len(render.calls) == 1  # no second event was rendered
    assert event_count(conn, first.id) == 1
    assert get_job(conn, again.id) is None
    assert conn.execute("SELECT count(*) FROM jobs").fetchone()[0] == 1


def test_same_idempotency_key_with_another_body_conflicts(
    conn: sqlite3.Connection, render: Render
) -> None:
    first = add(conn, render, key="k1", body={"a": 1})
    with pytest.raises(IdempotencyConflict) as caught:
        insert_job(conn, new_job(at=T0 + 1, key="k1", body={"a": 2}), render)
    assert caught.value.job_id == first.id
    assert conn.execute("SELECT count(*) FROM jobs").fetchone()[0] == 1
    assert len(render.calls) == 1


def test_distinct_or_missing_keys_create_distinct_jobs(
    conn: sqlite3.Connection, render: Render
) -> None:
    ids = {
        add(conn, render, at=T0, key="k1").id,
        add(conn, render, at=T0 + 1, key="k2").id,
        add(conn, render, at=T0 + 2).id,  # no key, same body: still a new job
        add(conn, render, at=T0 + 3).id,
    }
    assert len(ids) == 4


# -- change_state -------------------------------------------------------------


def test_happy_path_sets_fields_and_records_increasing_events(
    conn: sqlite3.Connection, render: Render
) -> None:
    job_id = add(conn, render).id

    row, event = change_state(conn, jobstate.start_loading(job_id, T0 + 1), render)
    assert row is not None and event is not None
    assert (row.state, row.started_at, row.working_at) == ("loading", T0 + 1, None)
    assert (event.seq, event.type, event.at) == (2, "job.loading", T0 + 1)
    assert render.calls[-1] == (row, 2)
    assert json.loads(event.data)["state"] == "loading"

    row = apply(conn, jobstate.start_working(job_id, T0 + 2), render)
    assert (row.state, row.started_at, row.working_at) == ("working", T0 + 1, T0 + 2)

    row = apply(conn, jobstate.succeed(job_id, T0 + 3, 42, '{"text":"ok"}', '["a.txt"]'), render)
    assert row.state == "done"
    assert (row.finished_at, row.tokens, row.result, row.artifacts) == (
        T0 + 3,
        42,
        '{"text":"ok"}',
        '["a.txt"]',
    )
    assert row.terminal

    events = events_after(conn, job_id, 0)
    assert [e.seq for e in events] == [1, 2, 3, 4]
    assert [e.type for e in events] == ["job.queued", "job.loading", "job.working", "job.done"]
    assert [e.at for e in events] == [T0, T0 + 1, T0 + 2, T0 + 3]
    assert [json.loads(e.data)["seq"] for e in events] == [1, 2, 3, 4]
    assert [c[1] for c in render.calls] == [1, 2, 3, 4]


def test_events_after_is_exclusive_and_per_job(conn: sqlite3.Connection, render: Render) -> None:
    a = add(conn, render, at=T0).id
    b = add(conn, render, at=T0 + 1).id
    to_state(conn, render, a, JobState.DONE)
    assert [e.seq for e in events_after(conn, a, 2)] == [3, 4]
    assert events_after(conn, a, 4) == []
    assert [e.seq for e in events_after(conn, b, 0)] == [1]
    assert events_after(conn, "job_unknown", 0) == []


def test_change_state_is_compare_and_set(conn: sqlite3.Connection, render: Render) -> None:
    job_id = add(conn, render).id
    apply(conn, jobstate.start_loading(job_id, T0 + 1), render)
    calls = len(render.calls)

    # a second start_loading finds the job no longer queued
    assert change_state(conn, jobstate.start_loading(job_id, T0 + 2), render) == (None, None)
    row = get_job(conn, job_id)
    assert row is not None and row.started_at == T0 + 1  # fields untouched
    # and events/render are untouched too
    assert event_count(conn, job_id) == 2
    assert len(render.calls) == calls


def test_change_state_outside_the_sources_does_nothing(
    conn: sqlite3.Connection, render: Render
) -> None:
    job_id = add(conn, render).id
    # queued -> working skips loading: not in the table
    assert change_state(conn, jobstate.start_working(job_id, T0), render) == (None, None)
    assert change_state(conn, jobstate.succeed(job_id, T0, 1, None, "[]"), render) == (None, None)
    to_state(conn, render, job_id, JobState.WORKING)
    # a transition planned for ``loading`` only does not apply to a working job
    stale = jobstate.attempt_failed(
        job_id, JobState.LOADING, 0, 3, ErrorKind.TIMEOUT, "slow", T0 + 9, 0
    )
    assert change_state(conn, stale, render) == (None, None)
    row = get_job(conn, job_id)
    assert row is not None and row.state == "working" and row.attempts == 0


def test_change_state_on_unknown_job(conn: sqlite3.Connection, render: Render) -> None:
    assert change_state(conn, jobstate.cancel("job_gone", T0), render) == (None, None)
    assert render.calls == []


@pytest.mark.parametrize("terminal", [JobState.DONE, JobState.FAILED, JobState.CANCELLED])
def test_terminal_jobs_do_not_change(
    conn: sqlite3.Connection, render: Render, terminal: JobState
) -> None:
    job_id = add(conn, render).id
    before = to_state(conn, render, job_id, terminal)
    events = event_count(conn, job_id)
    for change in (
        jobstate.start_loading(job_id, T0 + 10),
        jobstate.start_working(job_id, T0 + 10),
        jobstate.succeed(job_id, T0 + 10, 1, None, "[]"),
        jobstate.cancel(job_id, T0 + 10),
        jobstate.plan(job_id, Event.FAIL, T0 + 10),
        jobstate.plan(job_id, Event.REQUEUE, T0 + 10),
    ):
        assert change_state(conn, change, render) == (None, None)
    assert get_job(conn, job_id) == before
    assert event_count(conn, job_id) == events


@pytest.mark.parametrize("state", [JobState.QUEUED, JobState.LOADING, JobState.WORKING])
def test_cancel_from_every_live_state(
    conn: sqlite3.Connection, render: Render, state: JobState
) -> None:
    job_id = add(conn, render).id
    to_state(conn, render, job_id, state)
    conn.execute(
        "UPDATE jobs SET error_code = 'timeout', error_message = 'old' WHERE id = ?", (job_id,)
    )
    row = apply(conn, jobstate.cancel(job_id, T0 + 50), render)
    assert row.state == "cancelled"
    assert row.finished_at == T0 + 50
    assert row.error_code is None and row.error_message is None
    assert events_after(conn, job_id, 0)[-1].type == "job.cancelled"


def test_retryable_failure_requeues_with_backoff_then_start_loading_clears_it(
    conn: sqlite3.Connection, render: Render
) -> None:
    job_id = add(conn, render).id
    to_state(conn, render, job_id, JobState.WORKING)
    change = jobstate.attempt_failed(
        job_id,
        JobState.WORKING,
        0,
        3,
        ErrorKind.TIMEOUT,
        "idle deadline",
        T0 + 10,
        5,
        rng=random.Random(1),
    )
    row = apply(conn, change, render)
    assert row.state == "queued"
    assert row.attempts == 1
    assert (row.error_code, row.error_message) == ("timeout", "idle deadline")
    assert row.not_before is not None and row.not_before > T0 + 10
    assert row.finished_at is None
    assert queued_jobs(conn) == [(job_id, "llama3.2", 0, T0, row.not_before)]

    row = apply(conn, jobstate.start_loading(job_id, T0 + 100), render)
    assert (row.state, row.started_at, row.attempts) == ("loading", T0 + 100, 1)
    assert row.error_code is None and row.error_message is None and row.not_before is None
    assert [e.type for e in events_after(conn, job_id, 3)] == ["job.queued", "job.loading"]


def test_target_error_fails_for_good(conn: sqlite3.Connection, render: Render) -> None:
    job_id = add(conn, render).id
    to_state(conn, render, job_id, JobState.LOADING)
    change = jobstate.attempt_failed(
        job_id, JobState.LOADING, 0, 3, ErrorKind.TARGET_4XX, "no such model", T0 + 5, 3
    )
    row = apply(conn, change, render)
    assert row.state == "failed"
    assert (row.attempts, row.finished_at, row.tokens) == (1, T0 + 5, 3)
    assert (row.error_code, row.error_message) == ("target_error", "no such model")


def test_recovery_requeues_then_fails_when_attempts_are_used_up(
    conn: sqlite3.Connection, render: Render
) -> None:
    job_id = add(conn, render).id
    to_state(conn, render, job_id, JobState.WORKING)
    assert [r.id for r in interrupted_jobs(conn)] == [job_id]

    change = jobstate.recovered(job_id, JobState.WORKING, 0, 2, T0 + 20)
    assert change is not None
    row = apply(conn, change, render)
    assert (row.state, row.attempts, row.error_code) == ("queued", 1, "interrupted")
    assert row.finished_at is None
    assert interrupted_jobs(conn) == []

    apply(conn, jobstate.start_loading(job_id, T0 + 21), render)
    change = jobstate.recovered(job_id, JobState.LOADING, 1, 2, T0 + 30)
    assert change is not None
    row = apply(conn, change, render)
    assert (row.state, row.attempts, row.error_code) == ("failed", 2, "too_many_attempts")
    assert row.finished_at == T0 + 30
    assert row.error_message == "interrupted 2 times (foreman stopped mid-attempt)"


def test_unknown_field_is_refused_before_any_write(
    conn: sqlite3.Connection, render: Render
) -> None:
    job_id = add(conn, render).id
    for bogus in ("state", "id", "webhook_url", "attempts = 99, state", "no_such_column"):
        assert bogus not in _SETTABLE
        change = jobstate.plan(job_id, Event.CANCEL, T0 + 1, (("finished_at", T0 + 1), (bogus, 1)))
        with pytest.raises(ValueError, match="not a settable job field"):
            change_state(conn, change, render)
    row = get_job(conn, job_id)
    assert row is not None and row.state == "queued" and row.finished_at is None
    assert event_count(conn, job_id) == 1


# -- the transactional outbox --------------------------------------------------


def test_no_outbox_rows_without_a_webhook(conn: sqlite3.Connection, render: Render) -> None:
    job_id = add(conn, render).id
    to_state(conn, render, job_id, JobState.DONE)
    assert conn.execute("SELECT count(*) FROM outbox").fetchone()[0] == 0
    assert webhook_summary(conn, job_id) is None


def test_every_event_of_a_webhook_job_is_queued_in_the_outbox(
    conn: sqlite3.Connection, render: Render
) -> None:
    job_id = add(conn, render, at=T0 + 0.5, webhook_url=HOOK).id
    to_state(conn, render, job_id, JobState.DONE, at=T0 + 0.5)
    rows = outbox(conn, job_id)
    events = events_after(conn, job_id, 0)
    stamps = [f"2023-11-14T22:13:{s}.500Z" for s in (20, 21, 22, 23)]  # RFC 3339, UTC, ms
    assert [r[1] for r in rows] == [1, 2, 3, 4]
    assert len({r[0] for r in rows}) == 4 and all(r[0].startswith("msg_") for r in rows)
    for (_msg, seq, url, type_, body, status, next_at, created, finished), event in zip(
        rows, events, strict=True
    ):
        assert (seq, url, type_, status, finished) == (event.seq, HOOK, event.type, "pending", None)
        assert next_at == created == event.at
        assert json.loads(body) == {
            "type": event.type,
            "timestamp": stamps[seq - 1],
            "data": json.loads(event.data),
        }


def test_a_gone_webhook_url_is_recorded_as_gone(conn: sqlite3.Connection, render: Render) -> None:
    conn.execute("INSERT INTO webhook_gone (url, at) VALUES (?, ?)", (HOOK, T0 - 1))
    gone = add(conn, render, webhook_url=HOOK).id
    other = add(conn, render, at=T0 + 1, webhook_url=HOOK + "/other").id
    apply(conn, jobstate.cancel(gone, T0 + 2), render)

    assert [(r[5], r[8]) for r in outbox(conn, gone)] == [("gone", T0), ("gone", T0 + 2)]
    assert [(r[5], r[8]) for r in outbox(conn, other)] == [("pending", None)]


def test_webhook_summary_counts_each_status(conn: sqlite3.Connection, render: Render) -> None:
    job_id = add(conn, render, webhook_url=HOOK).id
    to_state(conn, render, job_id, JobState.DONE)  # events 1..4, all pending
    summary = webhook_summary(conn, job_id)
    assert summary is not None
    assert (summary["delivered"], summary["pending"], summary["failed"]) == (0, 4, 0)
    assert summary["deliveries"][0]["next_attempt_at"] == "2023-11-14T22:13:20.000Z"

    for seq, status, finished in ((1, "delivered", T0 + 5), (2, "failed", T0 + 6)):
        conn.execute(
            "UPDATE outbox SET status = ?, attempts = 3, last_status = 500, "
            "last_error = 'HTTP 500', finished_at = ? WHERE job_id = ? AND seq = ?",
            (status, finished, job_id, seq),
        )
    conn.execute("UPDATE outbox SET status = 'gone' WHERE job_id = ? AND seq = 3", (job_id,))
    summary = webhook_summary(conn, job_id)
    assert summary is not None
    assert (summary["delivered"], summary["pending"], summary["failed"]) == (1, 1, 2)
    first, second, third, fourth = summary["deliveries"]
    assert [d["seq"] for d in summary["deliveries"]] == [1, 2, 3, 4]
    assert first["type"] == "job.queued" and first["webhook_id"].startswith("msg_")
    assert (first["status"], first["attempts"], first["last_status"]) == ("delivered", 3, 500)
    assert first["last_error"] == "HTTP 500"
    assert first["next_attempt_at"] is None  # only pending deliveries have one
    assert first["finished_at"] == "2023-11-14T22:13:25.000Z"
    assert second["status"] == "failed" and second["finished_at"] == "2023-11-14T22:13:26.000Z"
    assert third["status"] == "gone" and third["finished_at"] is None
    assert fourth["status"] == "pending" and fourth["next_attempt_at"] is not None


# -- listing and scheduling queries ----------------------------------------------


@pytest.fixture
def listed(conn: sqlite3.Connection, render: Render) -> list[JobRow]:
    """Six jobs, oldest first: models a/b alternate; states vary."""
    states = [
        JobState.DONE,
        JobState.QUEUED,
        JobState.WORKING,
        JobState.QUEUED,
        JobState.CANCELLED,
        JobState.LOADING,
    ]
    rows = []
    for i, state in enumerate(states):
        row = add(conn, render, at=T0 + i, model="ab"[i % 2], priority=i)
        rows.append(to_state(conn, render, row.id, state, at=T0 + i))
    return rows


def test_list_jobs_is_newest_first_and_filters(
    conn: sqlite3.Connection, listed: list[JobRow]
) -> None:
    ids = [r.id for r in listed]
    page, more = list_jobs(conn, None, None, None, 100)
    assert [r.id for r in page] == ids[::-1] and not more
    assert page[0] == listed[-1]

    page, _ = list_jobs(conn, "queued", None, None, 100)
    assert [r.id for r in page] == [ids[3], ids[1]]
    page, _ = list_jobs(conn, None, "a", None, 100)
    assert [r.id for r in page] == [ids[4], ids[2], ids[0]]
    page, _ = list_jobs(conn, "queued", "b", None, 100)
    assert [r.id for r in page] == [ids[3], ids[1]]
    page, _ = list_jobs(conn, "queued", "a", None, 100)
    assert page == []
    assert list_jobs(conn, "failed", None, None, 100) == ([], False)


def test_list_jobs_pages_with_the_after_cursor(
    conn: sqlite3.Connection, listed: list[JobRow]
) -> None:
    newest_first = [r.id for r in listed][::-1]
    seen: list[str] = []
    after: str | None = None
    flags: list[bool] = []
    while True:
        page, more = list_jobs(conn, None, None, after, 4)
        seen += [r.id for r in page]
        flags.append(more)
        if not more:
            break
        after = page[-1].id
    assert seen == newest_first
    assert flags == [True, False]

    # exactly ``limit`` rows left: no further page
    page, more = list_jobs(conn, None, None, newest_first[1], 4)
    assert [r.id for r in page] == newest_first[2:] and not more
    # the cursor is exclusive and combines with the filters
    page, more = list_jobs(conn, None, "a", newest_first[1], 1)
    assert [r.id for r in page] == [listed[2].id] and more


def test_queued_and_interrupted_jobs(conn: sqlite3.Connection, listed: list[JobRow]) -> None:
    assert sorted(queued_jobs(conn)) == [
        (listed[1].id, "b", 1, T0 + 1, None),
        (listed[3].id, "b", 3, T0 + 3, None),
    ]
    assert sorted(r.id for r in interrupted_jobs(conn)) == [listed[2].id, listed[5].id]
    assert {r.state for r in interrupted_jobs(conn)} == {"loading", "working"}


# -- deletion and retention ---------------------------------------------------------


@pytest.mark.parametrize("state", list(JobState))
def test_delete_job_only_deletes_finished_jobs(
    conn: sqlite3.Connection, render: Render, state: JobState
) -> None:
    job_id = add(conn, render, webhook_url=HOOK).id
    to_state(conn, render, job_id, state)
    deleted = delete_job(conn, job_id)
    assert deleted is jobstate.is_terminal(state)
    if deleted:
        assert get_job(conn, job_id) is None
        # events and outbox rows go with the job (ON DELETE CASCADE)
        assert event_count(conn, job_id) == 0
        assert outbox(conn, job_id) == []
        assert delete_job(conn, job_id) is False  # already gone
    else:
        row = get_job(conn, job_id)
        assert row is not None and row.state == state
        assert event_count(conn, job_id) > 0


def test_delete_unknown_job(conn: sqlite3.Connection) -> None:
    assert delete_job(conn, "job_unknown") is False


def test_expired_jobs_and_delete_jobs(conn: sqlite3.Connection, render: Render) -> None:
    old = [add(conn, render, at=T0 + i, webhook_url=HOOK).id for i in range(3)]
    for i, job_id in enumerate(old):
        apply(conn, jobstate.cancel(job_id, T0 + 10 + i), render)
    recent = add(conn, render, at=T0 + 20).id
    apply(conn, jobstate.cancel(recent, T0 + 100), render)
    live = add(conn, render, at=T0 + 30).id
    to_state(conn, render, live, JobState.WORKING)

    assert sorted(expired_jobs(conn, T0 + 50)) == sorted(old)
    assert expired_jobs(conn, T0 + 10) == []  # strictly before
    assert len(expired_jobs(conn, T0 + 50, limit=2)) == 2
    assert sorted(expired_jobs(conn, T0 + 1000)) == sorted([*old, recent])

    assert delete_jobs(conn, [*old, "job_unknown"]) == 3
    assert delete_jobs(conn, []) == 0
    assert expired_jobs(conn, T0 + 50) == []
    assert conn.execute("SELECT count(*) FROM outbox").fetchone()[0] == 0
    remaining = {r.id for r in list_jobs(conn, None, None, None, 10)[0]}
    assert remaining == {recent, live}
