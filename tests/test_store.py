"""SQLite store: migrations and the group-commit write path."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import DeferredList

from foreman.store.database import Store, open_sync
from foreman.store.migrations import MIGRATIONS, SchemaTooNew, current_version, migrate


def test_fresh_database_is_migrated_to_latest(tmp_path: Path) -> None:
    conn = open_sync(tmp_path / "db.sqlite3")
    assert current_version(conn) == len(MIGRATIONS)
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"jobs", "job_events", "outbox", "webhook_gone", "settings"} <= tables
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    conn.close()


def test_migration_is_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    open_sync(path).close()
    conn = open_sync(path)
    assert migrate(conn) == len(MIGRATIONS)
    assert current_version(conn) == len(MIGRATIONS)
    conn.close()


def test_newer_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    conn = open_sync(path)
    conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    conn.close()
    with pytest.raises(SchemaTooNew, match="newer than this foreman knows"):
        open_sync(path)


def test_failed_migration_leaves_previous_version(tmp_path: Path) -> None:
    conn = sqlite3.connect(str(tmp_path / "db.sqlite3"), isolation_level=None)
    conn.execute("CREATE TABLE jobs (x)")  # collides with migration 1
    with pytest.raises(sqlite3.OperationalError):
        migrate(conn)
    assert current_version(conn) == 0
    conn.close()


@pytest_twisted.ensureDeferred
async def test_concurrent_writes_share_a_transaction(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    open_sync(path).close()
    batches: list[int] = []
    store = Store(path, commit_observer=lambda seconds, n: batches.append(n))
    store.start()
    try:

        def insert(n: int) -> Callable[[sqlite3.Connection], int]:
            def op(c: sqlite3.Connection) -> int:
                c.execute("INSERT INTO settings (key, value) VALUES (?, ?)", (f"k{n}", str(n)))
                return n

            return op

        results = await DeferredList(
            [store.write(insert(n)) for n in range(200)], consumeErrors=True
        )
        assert [value for ok, value in results] == list(range(200))
        assert sum(batches) == 200
        assert len(batches) < 200  # writes were grouped
        count = await store.read(lambda c: c.execute("SELECT count(*) FROM settings").fetchone())
        assert count[0] == 200
    finally:
        store.close()


@pytest_twisted.ensureDeferred
async def test_a_failing_write_rolls_back_alone(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    open_sync(path).close()
    store = Store(path)
    store.start()
    try:

        def good(c: sqlite3.Connection) -> None:
            c.execute("INSERT INTO settings VALUES ('a', '1')")

        def bad(c: sqlite3.Connection) -> None:
            c.execute("INSERT INTO settings VALUES ('b', '2')")
            c.execute("INSERT INTO settings VALUES ('a', 'duplicate')")

        results = await DeferredList([store.write(good), store.write(bad)], consumeErrors=True)
        assert results[0][0] is True
        assert results[1][0] is False
        failure: Any = results[1][1]
        assert failure.check(sqlite3.IntegrityError)
        rows = await store.read(lambda c: c.execute("SELECT key FROM settings").fetchall())
        assert rows == [("a",)]
    finally:
        store.close()
