"""Versioned schema migrations, applied in order at start.

The schema version lives in ``PRAGMA user_version``. Each migration runs in
its own transaction together with the version bump, so a crash mid-way leaves
the previous version intact. A database written by a newer foreman (a version
above the last one known here) is refused rather than guessed at.
"""

from __future__ import annotations

import sqlite3

__all__ = ["MIGRATIONS", "SchemaTooNew", "current_version", "migrate"]


class SchemaTooNew(Exception):
    """The database was written by a newer foreman than this one."""


_V1 = """
CREATE TABLE jobs (
    id              TEXT PRIMARY KEY,
    state           TEXT NOT NULL,
    endpoint        TEXT NOT NULL,
    model           TEXT NOT NULL,
    priority        INTEGER NOT NULL,
    request         TEXT NOT NULL,
    metadata        TEXT,
    webhook_url     TEXT,
    attempts        INTEGER NOT NULL DEFAULT 0,
    error_code      TEXT,
    error_message   TEXT,
    created_at      REAL NOT NULL,
    started_at      REAL,
    working_at      REAL,
    finished_at     REAL,
    not_before      REAL,
    tokens          INTEGER NOT NULL DEFAULT 0,
    result          TEXT,
    artifacts       TEXT,
    idempotency_key TEXT UNIQUE,
    request_hash    TEXT,
    base_url        TEXT
) WITHOUT ROWID;
CREATE INDEX jobs_by_state ON jobs (state, id);
CREATE INDEX jobs_by_model ON jobs (model, id);
CREATE INDEX jobs_by_finish ON jobs (finished_at) WHERE finished_at IS NOT NULL;

CREATE TABLE job_events (
    job_id  TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    seq     INTEGER NOT NULL,
    type    TEXT NOT NULL,
    at      REAL NOT NULL,
    data    TEXT NOT NULL,
    PRIMARY KEY (job_id, seq)
) WITHOUT ROWID;

CREATE TABLE outbox (
    id              INTEGER PRIMARY KEY,
    msg_id          TEXT NOT NULL UNIQUE,
    job_id          TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    seq             INTEGER NOT NULL,
    url             TEXT NOT NULL,
    type            TEXT NOT NULL,
    body            TEXT NOT NULL,
    status          TEXT NOT NULL DEFAULT 'pending',
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    last_status     INTEGER,
    last_error      TEXT,
    created_at      REAL NOT NULL,
    finished_at     REAL
);
CREATE INDEX outbox_pending ON outbox (status, next_attempt_at) WHERE status = 'pending';
CREATE INDEX outbox_by_job ON outbox (job_id, seq);

CREATE TABLE webhook_gone (
    url TEXT PRIMARY KEY,
    at  REAL NOT NULL
) WITHOUT ROWID;

CREATE TABLE settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
"""

# Batches (ADR 0018): files, batches, a job's place in its batch, the target's
# status on a refusal; and an outbox whose key is a job's or a batch's id (its
# foreign key to ``jobs`` goes: deleting a job deletes its outbox rows itself).
_V2 = """
CREATE TABLE files (
    id          TEXT PRIMARY KEY,
    purpose     TEXT NOT NULL,
    filename    TEXT NOT NULL,
    bytes       INTEGER NOT NULL,
    created_at  REAL NOT NULL,
    batch_id    TEXT
) WITHOUT ROWID;

CREATE TABLE batches (
    id                TEXT PRIMARY KEY,
    status            TEXT NOT NULL,
    ending            TEXT,
    endpoint          TEXT NOT NULL,
    input_file_id     TEXT NOT NULL,
    completion_window TEXT NOT NULL,
    metadata          TEXT,
    webhook_url       TEXT,
    output_file_id    TEXT,
    error_file_id     TEXT,
    errors            TEXT,
    total             INTEGER NOT NULL DEFAULT 0,
    completed         INTEGER NOT NULL DEFAULT 0,
    failed            INTEGER NOT NULL DEFAULT 0,
    usage             TEXT,
    created_at        REAL NOT NULL,
    in_progress_at    REAL,
    finalizing_at     REAL,
    completed_at      REAL,
    failed_at         REAL,
    expired_at        REAL,
    expires_at        REAL NOT NULL,
    cancelling_at     REAL,
    cancelled_at      REAL,
    base_url          TEXT
) WITHOUT ROWID;
CREATE INDEX batches_by_status ON batches (status, id);
CREATE INDEX batches_by_input ON batches (input_file_id);

ALTER TABLE jobs ADD COLUMN batch_id TEXT;
ALTER TABLE jobs ADD COLUMN custom_id TEXT;
ALTER TABLE jobs ADD COLUMN line INTEGER;
ALTER TABLE jobs ADD COLUMN error_status INTEGER;
CREATE INDEX jobs_by_batch ON jobs (batch_id, line) WHERE batch_id IS NOT NULL;

CREATE TABLE outbox_v2 (
    id              INTEGER PRIMARY KEY,
    msg_id          TEXT NOT NULL UNIQUE,
    job_id          TEXT NOT NULL,
    seq             INTEGER NOT NULL,
    url             TEXT NOT NULL,
    type            TEXT NOT NULL,
    body            TEXT NOT NULL,
    status          TEXT NOT NULL DEFAULT 'pending',
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    last_status     INTEGER,
    last_error      TEXT,
    created_at      REAL NOT NULL,
    finished_at     REAL
);
INSERT INTO outbox_v2 SELECT id, msg_id, job_id, seq, url, type, body, status, attempts,
    next_attempt_at, last_status, last_error, created_at, finished_at FROM outbox;
DROP TABLE outbox;
ALTER TABLE outbox_v2 RENAME TO outbox;
CREATE INDEX outbox_pending ON outbox (status, next_attempt_at) WHERE status = 'pending';
CREATE INDEX outbox_by_job ON outbox (job_id, seq)
"""

MIGRATIONS: tuple[str, ...] = (_V1, _V2)


def current_version(conn: sqlite3.Connection) -> int:
    row = conn.execute("PRAGMA user_version").fetchone()
    return int(row[0])


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the schema up to date; return the version now in force.

    ``conn`` must be in autocommit mode (``isolation_level=None``) so the
    explicit transactions here are the only ones.
    """
    version = current_version(conn)
    latest = len(MIGRATIONS)
    if version > latest:
        raise SchemaTooNew(
            f"database schema version {version} is newer than this foreman knows "
            f"({latest}); upgrade foreman or use another data dir"
        )
    for number in range(version + 1, latest + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in MIGRATIONS[number - 1].split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {number}")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
    return latest
