"""The SQLite store: one writer connection in one adbapi thread, one reader beside it.

Writes go through a group committer: every write submitted while a
transaction is running joins the next one, so N concurrent job creations
cost one ``fsync`` (``synchronous=FULL``) instead of N, while each caller's
Deferred still fires only after *its* write is committed. One failing write
rolls back alone: a batch in which a write raised is rolled back and runs
again with each write in its own SAVEPOINT (``_run_batch``), so a write may
run twice, the first time in a transaction that never commits; whatever it
does besides its SQL must be harmless to repeat. The next transaction is
handed to the database thread as soon as one commits, before that one's
callers run, so their work in the reactor overlaps the next commit.

Reads run on a second connection in its own thread (WAL lets a reader work
while a writer commits), so ``GET /jobs`` and ``/healthz`` never wait behind
a slow or locked write. The reader is ``query_only``: it cannot write.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

from attrs import define, field
from twisted.internet.defer import Deferred, fail
from twisted.logger import Logger
from twisted.python.failure import Failure

from foreman.store.migrations import migrate

__all__ = ["Store", "StoreClosed", "check_writable", "configure_connection", "open_sync"]

T = TypeVar("T")
P = ParamSpec("P")
Op = Callable[[sqlite3.Connection], Any]

_log = Logger()


def configure_connection(conn: sqlite3.Connection) -> None:
    """Pragmas every foreman connection runs with (ADR 0002)."""
    conn.isolation_level = None  # explicit transactions only
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA busy_timeout = 5000")
    conn.execute("PRAGMA foreign_keys = ON")


def configure_reader(conn: sqlite3.Connection) -> None:
    configure_connection(conn)
    conn.execute("PRAGMA query_only = ON")


def check_writable(conn: sqlite3.Connection) -> None:
    """One real write: a read-only file or a full disk shows at start, not at the first job."""
    in_transaction = conn.in_transaction
    if not in_transaction:
        conn.execute("BEGIN IMMEDIATE")
    try:
        # written and taken back in one transaction: a real write, no trace
        conn.execute("INSERT OR REPLACE INTO settings (key, value) VALUES ('_probe', '1')")
        conn.execute("DELETE FROM settings WHERE key = '_probe'")
    except BaseException:
        if not in_transaction:
            conn.execute("ROLLBACK")
        raise
    if not in_transaction:
        conn.execute("COMMIT")


def _is_trouble(failure: Failure) -> bool:
    """A failure of the database itself (locked, read-only, full), not of one write's data."""
    return bool(
        failure.check(sqlite3.OperationalError, sqlite3.DatabaseError)
        and not failure.check(sqlite3.IntegrityError)
    )


def open_sync(path: Path) -> sqlite3.Connection:
    """A configured, migrated connection for use before the reactor runs."""
    conn = sqlite3.connect(str(path), check_same_thread=False)
    configure_connection(conn)
    migrate(conn)
    check_writable(conn)
    return conn


class StoreClosed(Exception):
    """A write reached a closed store (shutdown): it was not run."""


@define
class _Pending:
    op: Op
    deferred: Deferred[Any]


@define
class Store:
    """Typed face of the adbapi pool; see the module docstring for the write path."""

    path: Path
    _pool: Any = field(default=None, init=False)
    _reader: Any = field(default=None, init=False)
    _pending: list[_Pending] = field(factory=list, init=False)
    _flushing: bool = field(default=False, init=False)
    #: commit latency samples (seconds) for metrics; the owner drains it
    commit_observer: Callable[[float, int], None] | None = None
    #: why the last write failed for the database's own sake; None once one succeeds
    write_problem: str | None = field(default=None, init=False)

    def start(self) -> None:
        self._pool = self._connect(configure_connection)
        self._reader = self._connect(configure_reader)

    def _connect(self, configure: Callable[[sqlite3.Connection], None]) -> Any:
        """One connection in one thread of its own (adbapi, started)."""
        from twisted.enterprise import adbapi

        pool = adbapi.ConnectionPool(
            "sqlite3",
            str(self.path),
            check_same_thread=False,
            cp_min=1,
            cp_max=1,
            cp_openfun=configure,
            cp_noisy=False,
        )
        pool.start()
        return pool

    def close(self) -> None:
        for pool in (self._reader, self._pool):
            if pool is not None:
                pool.close()
        self._pool = self._reader = None

    def read(
        self, fn: Callable[Concatenate[sqlite3.Connection, P], T], *args: P.args, **kw: P.kwargs
    ) -> Deferred[T]:
        """Run ``fn(conn, *args)`` on the reader: the last committed state, no waiting."""
        pool = self._reader
        if pool is None:
            return fail(StoreClosed("the database is closed"))
        d: Deferred[T] = pool.runWithConnection(lambda c: fn(c._connection, *args, **kw))
        return d

    def on_writer(
        self, fn: Callable[Concatenate[sqlite3.Connection, P], T], *args: P.args, **kw: P.kwargs
    ) -> Deferred[T]:
        """Run ``fn(conn, *args)`` on the writer, outside the group commit (migrations)."""
        d: Deferred[T] = self._pool.runWithConnection(lambda c: fn(c._connection, *args, **kw))
        return d

    def write(
        self, fn: Callable[Concatenate[sqlite3.Connection, P], T], *args: P.args, **kw: P.kwargs
    ) -> Deferred[T]:
        """Run ``fn(conn, *args)`` inside the next group-commit transaction."""
        d: Deferred[T] = Deferred()
        self._pending.append(_Pending(lambda c: fn(c, *args, **kw), d))
        if not self._flushing:
            self._flush()
        return d

    def probe(self) -> None:
        """Try one write, so ``write_problem`` clears once the database takes writes again."""
        self.write(check_writable).addErrback(lambda _: None)

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        if self._pool is None:  # closed: fail the writes, never leave them hanging
            for pending in batch:
                pending.deferred.errback(StoreClosed("the database is closed"))
            return
        self._flushing = True
        started = time.monotonic()

        def done(results: list[tuple[bool, Any]]) -> None:
            self._flushing = False
            # The writes that queued up meanwhile go to the database thread
            # before this batch's callers run: their commit (and its fsync)
            # overlaps with the reactor's work on the answers.
            if self._pending:
                self._flush()
            if self.commit_observer is not None:
                self.commit_observer(time.monotonic() - started, len(batch))
            trouble = [v for ok, v in results if not ok and _is_trouble(v)]
            self._set_problem(trouble[0] if trouble else None)
            for pending, (ok, value) in zip(batch, results, strict=True):
                if ok:
                    pending.deferred.callback(value)
                else:
                    pending.deferred.errback(value)
            if self._pending and not self._flushing:
                self._flush()

        def failed(reason: Failure) -> None:
            # The COMMIT itself failed (disk full, I/O error): nobody's write stuck.
            self._flushing = False
            if self._pending:
                self._flush()
            self._set_problem(reason)
            _log.failure("group commit failed", reason)
            for pending in batch:
                pending.deferred.errback(reason)
            if self._pending and not self._flushing:
                self._flush()

        d = self._pool.runWithConnection(lambda c: _run_batch(c._connection, batch))
        d.addCallbacks(done, failed)

    def _set_problem(self, failure: Failure | None) -> None:
        problem = None if failure is None else _describe(failure)
        if problem != self.write_problem:
            if problem is None:
                _log.info("the database takes writes again")
            else:
                _log.warn("the database refuses writes: {problem}", problem=problem)
        self.write_problem = problem


def _describe(failure: Failure) -> str:
    return f"{type(failure.value).__name__}: {failure.value}"


class _Failed(Exception):
    """A write of the batch raised: the batch runs again, each write in a savepoint."""


def _run_batch(conn: sqlite3.Connection, batch: list[_Pending]) -> list[tuple[bool, Any]]:
    """Run ``batch`` in one transaction; (ok, value or Failure) per write.

    Writes rarely fail, so the batch first runs without a savepoint per write
    (two statements fewer each, and two fewer waits for the GIL on the
    database thread). If one raises, that transaction is rolled back and the
    batch runs again with each write in its own SAVEPOINT, so the failing
    one rolls back alone and the others commit once.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        try:
            results = _run_plain(conn, batch)
        except _Failed:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            conn.execute("BEGIN IMMEDIATE")
            results = _run_isolated(conn, batch)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return results


def _run_plain(conn: sqlite3.Connection, batch: list[_Pending]) -> list[tuple[bool, Any]]:
    results: list[tuple[bool, Any]] = []
    for pending in batch:
        try:
            value = pending.op(conn)
        except Exception as e:
            raise _Failed() from e
        if not conn.in_transaction:  # SQLite gave the transaction up (a caught error)
            raise sqlite3.OperationalError("the group-commit transaction was rolled back")
        results.append((True, value))
    return results


def _run_isolated(conn: sqlite3.Connection, batch: list[_Pending]) -> list[tuple[bool, Any]]:
    results: list[tuple[bool, Any]] = []
    for pending in batch:
        conn.execute("SAVEPOINT op")
        try:
            value = pending.op(conn)
        except Exception:
            conn.execute("ROLLBACK TO op")
            conn.execute("RELEASE op")
            results.append((False, Failure()))
        else:
            conn.execute("RELEASE op")
            results.append((True, value))
    return results
