"""``Store`` group commit, beyond tests/test_store.py: batching, per-write savepoints,
a failed COMMIT, reads, and restarting a closed store.

These run on the real adbapi thread pool (pytest-twisted) over a temp-file database.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.task import deferLater

from foreman.store.database import Store, StoreClosed, check_writable, open_sync

reactor: Any = _reactor
GATE_SECONDS = 5.0


@pytest.fixture
def path(tmp_path: Path) -> Path:
    db = tmp_path / "db.sqlite3"
    open_sync(db).close()
    return db


class Batches:
    """The ``commit_observer``: batch sizes of the committed transactions."""

    def __init__(self) -> None:
        self.sizes: list[int] = []

    def __call__(self, seconds: float, n: int) -> None:
        assert seconds >= 0
        self.sizes.append(n)


@pytest_twisted.async_yield_fixture
async def store(path: Path) -> AsyncIterator[tuple[Store, Batches]]:
    batches = Batches()
    s = Store(path, commit_observer=batches)
    s.start()
    try:
        yield s, batches
    finally:
        s.close()


def put(key: str, value: str = "v") -> Callable[[sqlite3.Connection], str]:
    def op(c: sqlite3.Connection) -> str:
        c.execute("INSERT INTO settings (key, value) VALUES (?, ?)", (key, value))
        return key

    return op


def keys(c: sqlite3.Connection) -> list[str]:
    return [r[0] for r in c.execute("SELECT key FROM settings ORDER BY key")]


def blocked_until(gate: threading.Event, then: Callable[[sqlite3.Connection], Any]) -> Any:
    """An op that holds the database thread (so later writes queue up) until ``gate``."""

    def op(c: sqlite3.Connection) -> Any:
        if not gate.wait(GATE_SECONDS):
            raise TimeoutError("test gate never opened")
        return then(c)

    return op


async def until(predicate: Callable[[], bool]) -> None:
    deadline = time.monotonic() + GATE_SECONDS
    while not predicate():
        assert time.monotonic() < deadline, "condition never came true"
        await deferLater(reactor, 0.005, lambda: None)


async def outcomes(*ds: Deferred[Any]) -> list[tuple[bool, Any]]:
    results: list[tuple[bool, Any]] = await DeferredList(list(ds), consumeErrors=True)
    return results


@pytest_twisted.ensureDeferred
async def test_writes_made_during_a_commit_form_the_next_batch_in_order(
    store: tuple[Store, Batches],
) -> None:
    s, batches = store
    gate = threading.Event()
    first = s.write(blocked_until(gate, put("k00")))

    def counted(n: int) -> Callable[[sqlite3.Connection], int]:
        def op(c: sqlite3.Connection) -> int:
            # each write sees the ones submitted before it in the same transaction
            seen = int(c.execute("SELECT count(*) FROM settings").fetchone()[0])
            c.execute("INSERT INTO settings VALUES (?, ?)", (f"k{n:02}", str(seen)))
            return seen

        return op

    rest = [s.write(counted(n)) for n in range(1, 9)]
    gate.set()
    results = await outcomes(first, *rest)
    assert results == [(True, "k00"), *((True, n) for n in range(1, 9))]
    assert batches.sizes == [1, 8]
    rows = await s.read(lambda c: c.execute("SELECT key, value FROM settings").fetchall())
    assert sorted(rows) == [("k00", "v"), *((f"k{n:02}", str(n)) for n in range(1, 9))]


@pytest_twisted.ensureDeferred
async def test_each_failing_write_rolls_back_only_its_own_savepoint(
    store: tuple[Store, Batches],
) -> None:
    s, batches = store
    gate = threading.Event()
    first = s.write(blocked_until(gate, put("first")))

    def half_done(n: int) -> Callable[[sqlite3.Connection], None]:
        def op(c: sqlite3.Connection) -> None:
            c.execute("INSERT INTO settings VALUES (?, 'partial')", (f"bad{n}",))
            c.execute("UPDATE settings SET value = 'clobbered'")
            raise ValueError(f"write {n} gave up")

        return op

    def saw_no_partial_rows(c: sqlite3.Connection) -> list[str]:
        return keys(c)

    ds: list[Deferred[Any]] = [
        s.write(put("good1")),
        s.write(half_done(1)),
        s.write(put("good2")),
        s.write(half_done(2)),
        s.write(saw_no_partial_rows),
        s.write(put("good1")),  # IntegrityError: a duplicate of a write in the same batch
        s.write(put("good3")),
    ]
    gate.set()
    results = await outcomes(first, *ds)

    assert batches.sizes == [1, 7]  # one transaction held all of them
    oks = [ok for ok, _ in results]
    assert oks == [True, True, False, True, False, True, False, True]
    assert results[2][1].check(ValueError) and "write 1 gave up" in str(results[2][1].value)
    assert results[4][1].check(ValueError)
    assert results[6][1].check(sqlite3.IntegrityError)
    assert results[5][1] == ["first", "good1", "good2"]
    rows = await s.read(lambda c: c.execute("SELECT key, value FROM settings").fetchall())
    assert sorted(rows) == [("first", "v"), ("good1", "v"), ("good2", "v"), ("good3", "v")]


@pytest_twisted.ensureDeferred
async def test_a_failed_commit_fails_its_whole_batch_and_later_writes_still_commit(
    store: tuple[Store, Batches],
) -> None:
    """The COMMIT itself fails (here: a deferred foreign-key violation checked at COMMIT)."""
    s, batches = store
    gate1, gate2, in_batch2 = threading.Event(), threading.Event(), threading.Event()
    first = s.write(blocked_until(gate1, put("w0")))

    def holding(c: sqlite3.Connection) -> str:
        in_batch2.set()
        return str(blocked_until(gate2, put("a"))(c))

    def orphan_event(c: sqlite3.Connection) -> None:
        # allowed until COMMIT, which then fails with "FOREIGN KEY constraint failed"
        c.execute("PRAGMA defer_foreign_keys = ON")
        c.execute(
            "INSERT INTO job_events (job_id, seq, type, at, data) "
            "VALUES ('job_missing', 1, 'job.queued', 0, '{}')"
        )

    doomed: list[Deferred[Any]] = [s.write(holding), s.write(orphan_event), s.write(put("c"))]
    gate1.set()
    await until(in_batch2.is_set)  # batch 2 is running on the database thread
    later: list[Deferred[Any]] = [
        s.write(put("d")),
        s.write(put("e")),
    ]  # they wait for the next batch
    gate2.set()

    results = await outcomes(first, *doomed, *later)
    assert [ok for ok, _ in results] == [True, False, False, False, True, True]
    for _, failure in results[1:4]:
        assert failure.check(sqlite3.IntegrityError)
    assert batches.sizes == [1, 2]  # the failed transaction is not reported as a commit
    assert await s.read(keys) == ["d", "e", "w0"]
    assert await s.read(lambda c: c.in_transaction) is False


@pytest_twisted.ensureDeferred
async def test_read_and_write_pass_arguments_and_reads_see_committed_writes(
    store: tuple[Store, Batches],
) -> None:
    s, _ = store

    def upsert(c: sqlite3.Connection, key: str, *, value: str) -> int:
        cur = c.execute(
            "INSERT INTO settings VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = ?",
            (key, value, value),
        )
        return cur.rowcount

    def value_of(c: sqlite3.Connection, key: str) -> tuple[str | None, bool]:
        row = c.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
        return (None if row is None else row[0]), c.in_transaction

    assert await s.read(value_of, "mode") == (None, False)
    assert await s.write(upsert, "mode", value="fast") == 1
    assert await s.read(value_of, "mode") == ("fast", False)
    assert await s.write(upsert, "mode", value="slow") == 1
    assert await s.read(value_of, "mode") == ("slow", False)

    # a reader on another connection sees the same committed state (it reached the file)
    other = sqlite3.connect(str(s.path))
    try:
        assert other.execute("SELECT value FROM settings").fetchall() == [("slow",)]
    finally:
        other.close()


@pytest_twisted.ensureDeferred
async def test_a_failing_read_errbacks_and_does_not_disturb_writes(
    store: tuple[Store, Batches],
) -> None:
    s, _ = store
    with pytest.raises(sqlite3.OperationalError, match="no such table"):
        await s.read(lambda c: c.execute("SELECT * FROM nowhere").fetchall())
    assert await s.write(put("after")) == "after"
    assert await s.read(keys) == ["after"]


@pytest_twisted.ensureDeferred
async def test_close_then_start_again(path: Path) -> None:
    batches = Batches()
    s = Store(path, commit_observer=batches)
    s.close()  # closing a store that never started is a no-op
    s.start()
    try:
        assert await s.write(put("before")) == "before"
    finally:
        s.close()
    s.close()  # and so is closing twice

    s.start()
    try:
        assert await s.read(keys) == ["before"]
        assert await s.write(put("after")) == "after"
        assert await s.read(keys) == ["after", "before"]
    finally:
        s.close()
    assert batches.sizes == [1, 1]

    # a fresh Store on the same file sees everything
    again = Store(path)
    again.start()
    try:
        assert await again.read(keys) == ["after", "before"]
        assert await again.write(put("third")) == "third"  # no commit_observer: fine too
    finally:
        again.close()


@pytest_twisted.ensureDeferred
async def test_a_write_on_a_closed_store_does_not_wedge_a_restart(path: Path) -> None:
    s = Store(path)
    s.start()
    s.close()
    with pytest.raises(StoreClosed):
        await s.write(put("late"))
    s.start()
    try:
        d = s.write(put("after restart"))
        # the writer thread catches up with the write, if it was submitted
        await s.on_writer(keys)
        assert d.called, "write after restart never ran"
        assert await d == "after restart"
    finally:
        s.close()


@pytest_twisted.ensureDeferred
async def test_write_problem_is_set_by_database_trouble_and_cleared_by_a_write(
    store: tuple[Store, Batches],
) -> None:
    s, _ = store
    await s.write(put("a"))
    assert s.write_problem is None
    # a duplicate key is the write's own fault, not the database's
    with pytest.raises(sqlite3.IntegrityError):
        await s.write(put("a"))
    assert s.write_problem is None

    def locked(c: sqlite3.Connection) -> None:
        raise sqlite3.OperationalError("database is locked")

    with pytest.raises(sqlite3.OperationalError):
        await s.write(locked)
    assert s.write_problem == "OperationalError: database is locked"
    s.probe()  # one real write; it succeeds, so the problem clears
    await s.write(put("b"))
    assert s.write_problem is None


def test_check_writable_refuses_a_read_only_database(path: Path) -> None:
    open_sync(path).close()  # created, migrated and written once
    ro = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            check_writable(ro)
        assert not ro.in_transaction
    finally:
        ro.close()


@pytest_twisted.ensureDeferred
async def test_reads_do_not_wait_behind_a_held_write(store: tuple[Store, Batches]) -> None:
    """A write stuck in its transaction (a slow disk, a lock) does not hold up reads."""
    s, _ = store
    await s.write(put("a"))
    release = threading.Event()

    def slow(c: sqlite3.Connection) -> None:
        c.execute("INSERT INTO settings (key, value) VALUES ('b', 'v')")
        release.wait(10)

    held = s.write(slow)
    try:
        assert await s.read(keys) == ["a"]  # the committed state, while the write is open
        assert not held.called
    finally:
        release.set()
    await held
    assert await s.read(keys) == ["a", "b"]


@pytest_twisted.ensureDeferred
async def test_the_reader_cannot_write(store: tuple[Store, Batches]) -> None:
    s, _ = store
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        await s.read(put("sneaky"))
