"""The ``POST /jobs`` hot path does each thing once, and what it skips changes nothing.

- ``insert_job`` builds the new row instead of reading it back, and numbers its
  first event 1 without asking: both must equal what SQLite holds.
- ``JobService.create`` answers from the job object its event was rendered
  from: the answer must equal ``render`` of the committed row.
- ``rfc3339`` formats a whole second once: the text must equal datetime's.
- a transition's log line is rendered once: it must equal what the observers
  make of the event's format, and anything that needs escaping still is.
- the group committer hands the next transaction to the database thread
  before the previous one's callers run.
"""

from __future__ import annotations

import datetime
import io
import json
import math
import random
import sqlite3
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import pytest_twisted
from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, LogEvent, LogLevel, formatEvent, globalLogPublisher

from foreman.core.errors import BadRequest
from foreman.core.ids import IdGenerator
from foreman.core.jobstate import cancel, start_loading
from foreman.core.jobview import job_object, queued_json, rfc3339
from foreman.core.records import JobRow, NewJob, request_hash
from foreman.core.scheduler import Scheduler
from foreman.jobs.artifacts import ArtifactStore
from foreman.jobs.hub import JobHub
from foreman.jobs.service import JobService
from foreman.ops.logs import LINE_KEY, make_observer
from foreman.ops.metrics import Metrics
from foreman.store.database import Store, configure_connection
from foreman.store.jobs import change_state, events_after, get_job, insert_job
from foreman.store.migrations import migrate
from foreman.work.queue import WorkQueue

reactor: Any = _reactor

T0 = 1_767_225_600.25
_ids = IdGenerator()


def _reference_rfc3339(at: float) -> str:
    dt = datetime.datetime.fromtimestamp(at, tz=datetime.UTC)
    return dt.isoformat(timespec="milliseconds").replace("+00:00", "Z")


# -- insert_job: the built row and the event number are what SQLite holds


@pytest.fixture
def conn() -> Iterator[sqlite3.Connection]:
    c = sqlite3.connect(":memory:")
    configure_connection(c)
    migrate(c)
    try:
        yield c
    finally:
        c.close()


def _new(**fields: Any) -> NewJob:
    body = fields.pop("body", {"model": "llama3.2", "prompt": "hé"})
    values: dict[str, Any] = {
        "id": _ids.job_id(T0),
        "endpoint": "/api/generate",
        "model": body["model"],
        "priority": 0,
        "request": json.dumps(body, separators=(",", ":")),
        "metadata": None,
        "webhook_url": None,
        "created_at": T0,
        "idempotency_key": None,
        "request_hash": request_hash({"request": body}),
        "base_url": "http://foreman.test",
    }
    values.update(fields)
    return NewJob(**values)


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"priority": -7, "metadata": '{"a": [1, "\\u00e9"]}', "idempotency_key": "k-1"},
        {"webhook_url": "https://hooks.example/x", "created_at": 1_767_225_601.9999996},
        {"batch_id": "batch_abc", "custom_id": "line-7", "line": 7, "base_url": ""},
    ],
)
def test_the_inserted_row_and_its_first_event_equal_what_sqlite_holds(
    conn: sqlite3.Connection, fields: dict[str, Any]
) -> None:
    rendered: list[tuple[JobRow, int]] = []

    def render(row: JobRow, seq: int) -> dict[str, Any]:
        rendered.append((row, seq))
        return job_object(row, row.base_url or "", seq=seq)

    job = _new(**fields)
    conn.execute("BEGIN")
    row, created, event = insert_job(conn, job, render)
    conn.execute("COMMIT")

    stored = get_job(conn, job.id)
    assert created and row == stored
    assert [type(v) for v in attrs_values(row)] == [type(v) for v in attrs_values(stored)]
    assert rendered == [(stored, 1)]
    assert event is not None and events_after(conn, job.id, 0) == [event]
    assert event.seq == 1 and event.type == "job.queued"
    assert json.loads(event.data) == job_object(stored, stored.base_url or "", seq=1)
    outbox = conn.execute("SELECT seq, type FROM outbox WHERE job_id = ?", (job.id,)).fetchall()
    assert outbox == ([(1, "job.queued")] if job.webhook_url else [])


def attrs_values(row: JobRow | None) -> tuple[Any, ...]:
    import attrs

    assert row is not None
    return attrs.astuple(row, recurse=False)


def test_later_events_still_count_on_from_the_first(conn: sqlite3.Connection) -> None:
    def render(row: JobRow, seq: int) -> dict[str, Any]:
        return {"id": row.id, "seq": seq}

    job = _new()
    insert_job(conn, job, render)
    for change in (start_loading(job.id, T0 + 1), cancel(job.id, T0 + 2)):
        moved, event = change_state(conn, change, render)
        assert moved is not None and event is not None
    assert [(e.seq, e.type) for e in events_after(conn, job.id, 0)] == [
        (1, "job.queued"),
        (2, "job.loading"),
        (3, "job.cancelled"),
    ]


def test_an_existing_idempotency_key_returns_the_stored_row_and_no_event(
    conn: sqlite3.Connection,
) -> None:
    calls: list[int] = []

    def render(row: JobRow, seq: int) -> dict[str, Any]:
        calls.append(seq)
        return {"seq": seq}

    first = _new(idempotency_key="same")
    row, created, _ = insert_job(conn, first, render)
    again, created_again, event = insert_job(conn, _new(idempotency_key="same"), render)
    assert created and not created_again and event is None
    assert again == row == get_job(conn, first.id) and calls == [1]


# -- JobService.create: the answer is render() of the committed row


@pytest_twisted.async_yield_fixture
async def service(tmp_path: Path) -> AsyncIterator[JobService]:
    clock = Clock()
    clock.advance(T0)
    store = Store(tmp_path / "foreman.sqlite3")
    store.start()
    try:
        await store.on_writer(migrate)
        queue = WorkQueue(Scheduler(600.0), 16, clock, clock=clock.seconds)

        async def check_webhook(url: str) -> None:
            if not url.startswith("https://"):
                raise BadRequest("webhook_url: https only", "invalid_webhook_url")

        jobs = JobService(
            store=store,
            queue=queue,
            hub=JobHub(),
            artifacts=ArtifactStore(tmp_path / "artifacts"),
            reactor=clock,
            metrics=Metrics(),
            public_url=None,
            max_attempts=3,
            check_webhook=check_webhook,
        )
        jobs.resident = lambda: ("qwen3:latest",)

        def eta_of(key: str, position: int | None = None) -> dict[str, Any] | None:
            place = queue.position(key, jobs.resident()) if position is None else position
            return {"start_at": rfc3339(T0 + 10 * (place or 0)), "known": False, "key": key}

        jobs.eta_of = eta_of
        yield jobs
    finally:
        store.close()


TRAP = ',"position":null,"eta":null,"progress":null,"artifacts":[],"seq":1}'
BODIES: list[dict[str, Any]] = [
    {"request": {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]}},
    {"request": {"model": "qwen3", "prompt": "é\u2028"}, "endpoint": "/api/generate"},
    {"request": {"model": "gemma3", "stream": False}, "priority": 5, "metadata": {"k": [1]}},
    {"request": {"model": "qwen3"}, "webhook_url": "https://hooks.example/h", "priority": -1},
    {"request": {"model": "llama3.2", "x": 1.5}, "metadata": None, "priority": 417.0},
    # metadata that looks like the object's own tail, as keys and as text
    {
        "request": {"model": "gemma3"},
        "metadata": {"a": {"position": None, "eta": None, "progress": None, "seq": 1}, "t": TRAP},
    },
    {"request": {"model": "qwen3", "prompt": TRAP}, "webhook_url": "https://h.example/" + TRAP},
]


@pytest_twisted.ensureDeferred
async def test_the_create_answer_is_render_of_the_committed_row(service: JobService) -> None:
    for i, body in enumerate(BODIES):
        answer, created = await service.create(body, f"key-{i}" if i % 2 else None, "http://h")
        assert created
        row = await service.get_row(answer["id"])
        assert row is not None
        assert answer == service.render(row)
        assert list(answer) == list(service.render(row))  # the same keys in the same order
        assert "seq" not in answer and answer["position"] is not None and answer["eta"]
        # the event keeps its own object: no place, no estimate, seq 1
        [event] = await service.events_after(row.id, 0)
        assert json.loads(event.data) == service.render_for_event(row, 1)


@pytest_twisted.ensureDeferred
async def test_the_answer_json_is_the_encoded_answer(service: JobService) -> None:
    """``create_json``'s text, made from the event's JSON, is byte for byte what
    encoding the answer gives (``json_response``: compact separators)."""
    for i, body in enumerate(BODIES):
        answer, created, text = await service.create_json(body, f"j-{i}", "http://h")
        assert created
        assert text == json.dumps(answer, separators=(",", ":"))
        # asked again with its key: found, not created; encoded from the stored row
        again, created_again, text_again = await service.create_json(body, f"j-{i}", "http://h")
        assert not created_again and again["id"] == answer["id"]
        assert text_again == json.dumps(again, separators=(",", ":"))


def test_queued_json_refuses_what_is_not_a_first_event() -> None:
    body = job_object(_row(), "http://h", seq=1)
    event = json.dumps(body, separators=(",", ":"))
    answer = job_object(_row(), "http://h", position=3, eta={"known": True})
    assert queued_json(event, "3", '{"known":true}') == json.dumps(answer, separators=(",", ":"))
    assert queued_json(event.replace('"seq":1', '"seq":2'), "3", "null") is None
    assert (
        queued_json(json.dumps(job_object(_row(), "http://h"), separators=(",", ":")), "3", "null")
        is None
    )
    assert queued_json(event.replace('"eta":null', '"eta":{}'), "3", "null") is None


@pytest_twisted.ensureDeferred
async def test_the_metadata_limit_counts_utf8_bytes_exactly(service: JobService) -> None:
    limit = 16 * 1024
    # "é" is 2 bytes in UTF-8 but 6 characters escaped: the escaped text is far over
    # the limit while the UTF-8 size is exactly at it, then one byte over
    exact = {"t": "a" + "é" * ((limit - len('{"t": ""}')) // 2)}
    assert len(json.dumps(exact, ensure_ascii=False).encode()) == limit
    answer, created = await service.create({"request": {"model": "m"}, "metadata": exact}, None, "")
    assert created and answer["metadata"] == exact
    over = {"t": exact["t"] + "a"}
    with pytest.raises(BadRequest) as refused:
        await service.create({"request": {"model": "m"}, "metadata": over}, None, "")
    assert refused.value.code == "metadata_too_large"
    ascii_over = {"t": "a" * (limit - len('{"t": ""}') + 1)}
    with pytest.raises(BadRequest):
        await service.create({"request": {"model": "m"}, "metadata": ascii_over}, None, "")
    ascii_exact = {"t": "a" * (limit - len('{"t": ""}'))}
    _, created = await service.create(
        {"request": {"model": "m"}, "metadata": ascii_exact}, None, ""
    )
    assert created


@pytest_twisted.ensureDeferred
async def test_concurrent_creates_in_one_commit_answer_each_as_render_did(
    service: JobService,
) -> None:
    """Each answer's place and estimate are taken when that job is queued, as
    ``render`` took them: checked against the slow way at that same moment."""
    slow_places: list[tuple[Any, Any]] = []

    def check(result: tuple[dict[str, Any], bool]) -> tuple[dict[str, Any], bool]:
        answer, _ = result
        place = service.queue.position(answer["id"], service.resident())
        slow_places.append((place, service.eta_of(answer["id"])))
        return result

    ds: list[Deferred[Any]] = []
    for body in BODIES * 3:
        d = Deferred.fromCoroutine(service.create(body, None, "http://h"))
        ds.append(d.addCallback(check))
    results = await DeferredList(ds, consumeErrors=True)
    assert all(ok for ok, _ in results)
    answers = [r[1][0] for r in results]
    assert len({a["id"] for a in answers}) == len(ds)
    assert [(a["position"], a["eta"]) for a in answers] == slow_places
    # a later job of the resident model went ahead: the places were not just 0, 1, 2, ...
    assert [a["position"] for a in answers] != list(range(len(ds)))
    for answer in answers:
        row = await service.get_row(answer["id"])
        assert row is not None
        slow = service.render(row)
        # the place moves as later jobs arrive; everything else is the committed row
        assert list(answer) == list(slow)
        for key in set(slow) - {"position", "eta"}:
            assert answer[key] == slow[key], key


@pytest_twisted.ensureDeferred
async def test_an_idempotent_repeat_is_answered_from_the_stored_row(service: JobService) -> None:
    body = BODIES[2]
    first, created = await service.create(body, "again", "http://h")
    second, created_again = await service.create(body, "again", "http://other")
    assert created and not created_again
    assert second == first  # same row, same place, same estimate: nothing changed meanwhile


# -- rfc3339


def test_rfc3339_is_datetimes_text_to_the_millisecond() -> None:
    rng = random.Random(7)
    values: list[float] = [0, 0.0, 1.0005, 1.9999995, 1.9999994, 5e-7, 2.5e-6, 1.5e-6]
    values += [253_402_300_799.9999, T0, 1_700_000_000.9999996, 1_700_000_000.0005]
    for _ in range(20_000):
        second = rng.randrange(0, 2_000_000_000)
        values.append(second + rng.random())
        values.append(second + (rng.randrange(0, 2_000_000) + 0.5) / 2e6)  # half-µs ties
        edge = rng.choice([0.0, 0.0005, 0.9995, 0.9999995, 0.5])
        values.append(math.nextafter(second + 1 + edge, rng.choice([0.0, 3e9])))
    for at in values:
        assert rfc3339(at) == _reference_rfc3339(at), at
    assert rfc3339(None) is None
    assert rfc3339(-1.5) == _reference_rfc3339(-1.5)  # before 1970: datetime's own path
    with pytest.raises(ValueError):
        rfc3339(math.nan)


# -- the transition line


def _captured() -> tuple[list[LogEvent], ILogObserver]:
    events: list[LogEvent] = []
    observer = cast(ILogObserver, events.append)
    globalLogPublisher.addObserver(observer)
    return events, observer


def _row(**fields: Any) -> JobRow:
    values: dict[str, Any] = dict(
        id="job_01abc",
        state="queued",
        endpoint="/api/chat",
        model="llama3.2",
        priority=0,
        request="{}",
        metadata=None,
        webhook_url=None,
        attempts=0,
        error_code=None,
        error_message=None,
        created_at=T0,
        started_at=None,
        working_at=None,
        finished_at=None,
        not_before=None,
        tokens=0,
        result=None,
        artifacts=None,
        idempotency_key=None,
        base_url="http://h",
    )
    values.update(fields)
    return JobRow(**values)


@pytest.mark.parametrize(
    ("fields", "line", "level"),
    [
        ({}, "job job_01abc queued model=llama3.2 attempts=0", LogLevel.info),
        (
            {"state": "failed", "attempts": 3, "error_code": "target_error", "error_message": "no"},
            "job job_01abc failed model=llama3.2 attempts=3 target_error: no",
            LogLevel.warn,
        ),
        (
            {"model": "evil\nmodel", "error_code": "x", "error_message": "a\rb", "state": "queued"},
            "job job_01abc queued model=evil\\nmodel attempts=0 x: a\\rb",
            LogLevel.warn,
        ),
    ],
)
def test_a_transition_is_one_line_whatever_the_observer(
    fields: dict[str, Any], line: str, level: LogLevel
) -> None:
    from foreman.jobs.service import _log_transition

    events, observer = _captured()
    try:
        _log_transition(_row(**fields))
    finally:
        globalLogPublisher.removeObserver(observer)
    [event] = [e for e in events if e.get("log_namespace") == "foreman.jobs"]
    assert event["log_level"] is level
    row = _row(**fields)
    assert (event["job_id"], event["state"], event["model"]) == (row.id, row.state, row.model)
    assert (event["attempts"], event["endpoint"], event["error_code"]) == (
        row.attempts,
        row.endpoint,
        row.error_code,
    )
    if LINE_KEY in event:  # rendered once: exactly what its format gives
        assert event[LINE_KEY] == formatEvent(event) == line
    else:  # something to escape: the observers format it, escaped, as always
        assert "\n" in formatEvent(event) or "\r" in formatEvent(event)
    out = io.StringIO()
    make_observer("text", (), out)(event)
    [written] = out.getvalue().splitlines()
    assert written.endswith(f"[foreman.jobs#{level.name}] {line}")
    out = io.StringIO()
    make_observer("json", (), out)(event)
    record = json.loads(out.getvalue())
    assert record["job_id"] == row.id and record["model"] == row.model
    # the JSON message: the line when rendered once, else the format as before
    assert record["message"] == (line if LINE_KEY in event else formatEvent(event))


# -- the group committer's pipeline


@pytest_twisted.ensureDeferred
async def test_the_next_batch_commits_while_the_previous_ones_callers_run(
    tmp_path: Path,
) -> None:
    path = tmp_path / "db.sqlite3"
    store = Store(path)
    store.start()
    try:
        await store.on_writer(migrate)
        gate = threading.Event()
        second_started = threading.Event()
        seen: list[bool] = []

        def first(c: sqlite3.Connection) -> str:
            if not gate.wait(5):
                raise TimeoutError("gate")
            c.execute("INSERT INTO settings (key, value) VALUES ('a', '1')")
            return "a"

        def second(c: sqlite3.Connection) -> str:
            second_started.set()
            c.execute("INSERT INTO settings (key, value) VALUES ('b', '2')")
            return "b"

        d1 = store.write(first)
        d2 = store.write(second)  # queued while the first transaction runs

        def on_first(value: str) -> str:
            # the second transaction is already on the database thread
            seen.append(second_started.wait(5))
            return value

        d1.addCallback(on_first)
        gate.set()
        results = await DeferredList([d1, d2], consumeErrors=True)
        assert results == [(True, "a"), (True, "b")]
        assert seen == [True]
        rows = await store.read(lambda c: c.execute("SELECT key FROM settings").fetchall())
        assert sorted(r[0] for r in rows if r[0] in ("a", "b")) == ["a", "b"]
    finally:
        store.close()


@pytest_twisted.ensureDeferred
async def test_a_batch_without_failures_runs_no_savepoints_and_one_that_fails_runs_again(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path / "db.sqlite3")
    store.start()
    try:
        await store.on_writer(migrate)
        statements: list[str] = []
        await store.on_writer(lambda c: c.set_trace_callback(statements.append))
        runs: list[str] = []

        def put(key: str) -> Any:
            def op(c: sqlite3.Connection) -> str:
                runs.append(key)
                c.execute("INSERT INTO settings (key, value) VALUES (?, 'v')", (key,))
                return key

            return op

        def half_then_fail(c: sqlite3.Connection) -> None:
            runs.append("bad")
            c.execute("INSERT INTO settings (key, value) VALUES ('partial', 'v')")
            raise ValueError("gave up")

        gate = threading.Event()

        def held(c: sqlite3.Connection) -> str:
            if not gate.wait(5):
                raise TimeoutError("gate")
            return "held"

        # one batch of three plain writes, queued behind a held one
        first = store.write(held)
        plain = [store.write(put(k)) for k in ("a", "b", "c")]
        gate.set()
        assert await DeferredList([first, *plain]) == [
            (True, "held"),
            (True, "a"),
            (True, "b"),
            (True, "c"),
        ]
        assert not [s for s in statements if "SAVEPOINT" in s or "RELEASE" in s]
        assert runs == ["a", "b", "c"]

        # a batch in which one write fails: it rolls back alone, the others commit once
        gate.clear()
        runs.clear()
        statements.clear()
        first = store.write(held)
        mixed = [store.write(put("d")), store.write(half_then_fail), store.write(put("e"))]
        gate.set()
        results = await DeferredList([first, *mixed], consumeErrors=True)
        assert [ok for ok, _ in results] == [True, True, False, True]
        assert results[2][1].check(ValueError)
        assert runs == ["d", "bad", "d", "bad", "e"]  # the first pass stopped at the failure
        assert sum("SAVEPOINT" in s for s in statements) == 3
        rows = await store.read(lambda c: c.execute("SELECT key FROM settings").fetchall())
        assert sorted(r[0] for r in rows) == ["a", "b", "c", "d", "e"]
    finally:
        store.close()


# -- request_base_url remembers what it decided per peer


class _FakeRequest:
    def __init__(self, peer: str, headers: dict[bytes, bytes]) -> None:
        self._peer = peer
        self._headers = headers

    def getClientAddress(self) -> Any:
        class Address:
            host = self._peer

        return Address()

    def getHeader(self, name: bytes) -> bytes | None:
        return self._headers.get(name)

    def isSecure(self) -> bool:
        return False


def test_forwarded_headers_count_only_from_the_proxies_trusted_now() -> None:
    from foreman.core.forwarding import TrustedProxies
    from foreman.web.job_routes import request_base_url

    headers = {b"x-forwarded-proto": b"https", b"x-forwarded-host": b"jobs.example", b"host": b"h"}
    loopback = TrustedProxies.parse("127.0.0.0/8")
    nobody = TrustedProxies.parse("")
    for _ in range(2):  # the second time from what was remembered
        assert request_base_url(_FakeRequest("127.0.0.1", headers), loopback) == (
            "https://jobs.example"
        )
        assert request_base_url(_FakeRequest("10.1.2.3", headers), loopback) == "http://h"
        assert request_base_url(_FakeRequest("127.0.0.1", headers), nobody) == "http://h"
    # an equal set of proxies, another object: the same answers
    again = TrustedProxies.parse("127.0.0.0/8")
    assert request_base_url(_FakeRequest("127.0.0.1", headers), again) == "https://jobs.example"


# -- Estimator.plan looks each model up once: the same plan as item by item


def _plan_item_by_item(
    estimator: Any, now: float, order: list[Any], running: Any, resident: tuple[str, ...], cap: int
) -> list[Any]:
    """The plan as it was computed before (every lookup per item), for comparison."""
    from foreman.core.eta import Eta
    from foreman.core.residency import canonical_model
    from foreman.core.scheduler import INTERACTIVE, after_pick

    fallback = estimator.guess()
    clock = now
    unknown: list[str] = []
    current = tuple(dict.fromkeys(canonical_model(m) for m in resident))
    cap = max(cap, len(current), 1)
    if running is not None:
        model = canonical_model(running.model)
        expected = estimator.service(model)
        if expected is None:
            unknown.append(model)
            expected = fallback
        left = running.load + expected - (now - running.since)
        clock += max(left, expected * 0.1)
        current = after_pick(current, model, cap)
    stretch = 1.0 / (1.0 - estimator.interactive_share(now))
    plans = []
    for item in order:
        model = canonical_model(item.model)
        cost = 0.0 if model in current else LOAD_COSTS.get(model, 0.0)
        current = after_pick(current, model, cap)
        expected = estimator.service(model)
        if expected is None:
            if model not in unknown:
                unknown.append(model)
            expected = fallback
        start = clock
        clock = start + cost + expected
        if item.kind == INTERACTIVE:
            plans.append(Eta(start, clock, not unknown, tuple(unknown)))
        else:
            late = now + (start - now) * stretch
            plans.append(Eta(late, late + cost + expected, not unknown, tuple(unknown)))
    return plans


LOAD_COSTS = {"llama3.2:latest": 3.0, "qwen3:latest": 4.5, "gemma3:1b": 0.5}


def test_the_plan_is_what_looking_every_item_up_gives() -> None:
    from foreman.core.eta import Estimator, Running
    from foreman.core.scheduler import INTERACTIVE, JOB, Waiting

    rng = random.Random(11)
    names = ["llama3.2", "llama3.2:latest", " qwen3", "qwen3:latest", "gemma3:1b", "mistral"]
    for case in range(300):
        estimator = Estimator()
        for name in rng.sample(names, rng.randrange(0, 4)):
            estimator.observe(name, rng.uniform(0.5, 9.0), rng.choice([None, 0.3]))
        if case % 3 == 0:
            estimator.interactive(2.0, 50.0)
        order = [
            Waiting(f"k{i}", rng.choice(names), 0, float(i), i, rng.choice([JOB, JOB, INTERACTIVE]))
            for i in range(rng.randrange(0, 40))
        ]
        running = rng.choice([None, Running(rng.choice(names), 95.0, rng.choice([0.0, 2.0]))])
        resident = tuple(rng.sample(names, rng.randrange(0, 3)))
        cap = rng.randrange(1, 4)
        got = estimator.plan(
            100.0, order, running=running, resident=resident, capacity=cap, load_costs=LOAD_COSTS
        )
        assert got == _plan_item_by_item(estimator, 100.0, order, running, resident, cap), case
