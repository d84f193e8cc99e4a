"""Webhook delivery: drains the durable outbox to the receivers.

State changes write their events into ``outbox`` in the same transaction
(``foreman.store.jobs``); this loop only sends what is there, so a crash between a
state change and its delivery loses nothing — after a restart the row is
still ``pending`` and goes out. Per job, events go strictly in ``seq`` order:
a later event waits until the earlier one is delivered or given up. Different
jobs' events go out concurrently (bounded). The decisions (retry timing,
what a status means, which failures get a log line) are pure, in
``foreman.core.webhook_policy``.

Logging: the first failure of a receiver is a warning at once, then at most
one per receiver every ``webhook_policy.WARN_INTERVAL`` (with the count left
out), and one info line when it takes a delivery again. URLs are logged
without user info and query (``loggable_url``).
"""

from __future__ import annotations

import os
import random
import shlex
import sqlite3
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from attrs import frozen
from twisted.internet.defer import Deferred, DeferredList, ensureDeferred
from twisted.logger import Logger
from twisted.web.client import HTTPConnectionPool
from twisted.web.http_headers import Headers

from foreman.core import webhook_policy
from foreman.core.signing import generate_secret, headers_for
from foreman.outbox.quietpool import QuietPool
from foreman.outbox.ssrf import guarded_agent
from foreman.store.database import Store
from foreman.target.call import BytesProducer
from foreman.target.readbody import (
    BodyTimeout,
    BodyTooLarge,
    HeadersTimeout,
    read_body,
    request_with_deadline,
)

__all__ = ["Delivery", "load_or_create_secret"]

_log = Logger()

SECRET_FILE = "webhook-secret"
TIMEOUT = 15.0  # connect, headers and body of one delivery, together
RESPONSE_LIMIT = 64 * 1024  # of a receiver's answer, read then dropped
CONCURRENCY = 8
_BATCH = 64


def load_or_create_secret(data_dir: Path, configured: str | None) -> str:
    """The configured secret, or the one kept in the data dir (made on first start)."""
    if configured:
        return configured
    path = data_dir / SECRET_FILE
    if path.exists():
        kept = path.read_text().strip()
        if kept:
            return kept
        _log.warn("{path} is empty: generating a new webhook signing secret", path=str(path))
    secret = generate_secret()
    # temp file, fsync, rename: a crash leaves the old state or the whole secret
    tmp = data_dir / f".{SECRET_FILE}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    directory = os.open(data_dir, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    # never the secret itself: logs are shipped, kept and read far more widely
    # than the data dir (and only configured secrets are scrubbed from them)
    _log.info(
        "generated a webhook signing secret for receivers to verify deliveries with; "
        "it is kept in {path} (read it with: {command})",
        path=str(path),
        command=f"cat {shlex.quote(str(path))}",
    )
    return secret


@frozen
class _Row:
    id: int
    msg_id: str
    job_id: str
    seq: int
    url: str
    type: str
    body: str
    attempts: int


def _due(conn: sqlite3.Connection, now: float, busy: tuple[str, ...]) -> list[_Row]:
    """The first pending event of each job, when due, skipping jobs in flight."""
    rows = conn.execute(
        "SELECT o.id, o.msg_id, o.job_id, o.seq, o.url, o.type, o.body, o.attempts FROM outbox o "
        "WHERE o.status = 'pending' AND o.next_attempt_at <= ? AND NOT EXISTS ("
        "  SELECT 1 FROM outbox p WHERE p.job_id = o.job_id AND p.status = 'pending' "
        "  AND p.seq < o.seq) "
        "ORDER BY o.next_attempt_at LIMIT ?",
        (now, _BATCH + len(busy)),
    ).fetchall()
    return [_Row(*r) for r in rows if r[2] not in busy]


def _next_due(conn: sqlite3.Connection) -> float | None:
    row = conn.execute(
        "SELECT min(next_attempt_at) FROM outbox WHERE status = 'pending'"
    ).fetchone()
    return None if row[0] is None else float(row[0])


class Delivery:
    def __init__(
        self,
        *,
        reactor: Any,
        store: Store,
        secret: str,
        allow_private: bool,
        next_delay: Callable[[int, random.Random, float | None], float | None] | None = None,
        timeout: float = TIMEOUT,
        rng: random.Random | None = None,
    ) -> None:
        self._reactor = reactor
        self._store = store
        self._secret = secret
        self._pool: HTTPConnectionPool = QuietPool(reactor, persistent=False)
        self._agent = guarded_agent(reactor, allow_private, pool=self._pool)
        self.next_delay = next_delay or webhook_policy.next_delay
        self.alerts = webhook_policy.FailureAlerts()
        self._timeout = timeout
        self._rng = rng or random.Random()
        self._timer: Any = None
        self._running = False
        self._draining: Deferred[None] | None = None
        self._again = False
        self._in_flight: dict[str, Deferred[Any]] = {}
        self.delivered = 0
        self.failed = 0
        self.attempts = 0
        self.outcomes: dict[str, int] = {}

    def start(self) -> None:
        self._running = True
        self.poke()

    def poke(self) -> None:
        """Something new may be in the outbox: look now."""
        if not self._running:
            return
        if self._draining is not None:
            self._again = True
            return
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._draining = ensureDeferred(self._drain())
        self._draining.addErrback(lambda f: _log.failure("webhook delivery loop failed", f))
        self._draining.addBoth(self._drained)

    def _drained(self, _: Any) -> None:
        self._draining = None
        if self._again and self._running:
            self._again = False
            self.poke()

    async def _drain(self) -> None:
        while self._running:
            busy = tuple(self._in_flight)
            rows: list[_Row] = await self._store.read(_due, time.time(), busy)
            room = CONCURRENCY - len(self._in_flight)
            for row in rows[:room]:
                d = ensureDeferred(self._deliver(row))
                self._in_flight[row.job_id] = d
                d.addBoth(self._finished, row.job_id)
            if not rows[:room]:
                break
            if len(self._in_flight) >= CONCURRENCY:
                break  # a finishing delivery pokes again
        if self._running:
            await self._schedule()

    def _finished(self, result: Any, job_id: str) -> None:
        self._in_flight.pop(job_id, None)
        if self._running:
            self.poke()

    async def _schedule(self) -> None:
        when: float | None = await self._store.read(_next_due)
        if when is None or not self._running:
            return
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        delay = max(0.05, when - time.time())
        self._timer = self._reactor.callLater(delay, self.poke)

    async def _deliver(self, row: _Row) -> None:
        now = time.time()
        body = row.body.encode()
        headers = Headers({b"user-agent": [b"foreman-webhooks"]})
        for name, value in headers_for(self._secret, row.msg_id, int(now), body).items():
            headers.setRawHeaders(name.encode(), [value.encode()])
        status: int | None = None
        error: str | None = None
        retry_after: float | None = None
        # one deadline for connecting, the answer's headers and its body
        deadline = self._reactor.seconds() + self._timeout
        self.attempts += 1
        try:
            response = await request_with_deadline(
                self._agent,
                b"POST",
                row.url.encode(),
                headers,
                timeout=self._timeout,
                clock=self._reactor,
                body=BytesProducer(body),
            )
            status = response.code
            raw = response.headers.getRawHeaders(b"retry-after")
            if raw:
                retry_after = webhook_policy.parse_retry_after(raw[-1].decode("latin-1"), now)
            # read (at most RESPONSE_LIMIT bytes) and drop: a receiver that floods or
            # trickles its answer has the connection closed, the delivery counts
            await read_body(
                response,
                limit=RESPONSE_LIMIT,
                timeout=max(0.0, deadline - self._reactor.seconds()),
                clock=self._reactor,
                keep=False,
            )
        except (BodyTooLarge, BodyTimeout):
            pass  # the status is the answer; the connection is closed on the rest
        except HeadersTimeout:
            error = "timeout"
        except Exception as e:
            error = str(e) or type(e).__name__
        outcome = webhook_policy.classify(status, error)
        self.outcomes[outcome.value] = self.outcomes.get(outcome.value, 0) + 1
        attempts = row.attempts + 1
        receiver = webhook_policy.loggable_url(row.url)
        if outcome is webhook_policy.Outcome.DELIVERED:
            self.delivered += 1
            self._log_recovery(row, receiver)
            await self._store.write(lambda c: _mark(c, row.id, "delivered", attempts, status, None))
            return
        if outcome is webhook_policy.Outcome.GONE:
            _log.warn("webhook receiver {url} answered 410: no more deliveries to it", url=receiver)
            await self._store.write(lambda c: _gone(c, row.url, attempts, time.time()))
            return
        delay = self.next_delay(attempts, self._rng, retry_after)
        reason = f"HTTP {status}" if status is not None else (error or "no answer").rstrip(".")
        if delay is None:
            self.failed += 1
            _log.warn(
                "webhook {msg_id} ({event}) for job {job_id} to {url} failed after {n} attempts "
                "({reason}); given up",
                msg_id=row.msg_id,
                event=row.type,
                job_id=row.job_id,
                url=receiver,
                n=attempts,
                reason=reason,
            )
            await self._store.write(lambda c: _mark(c, row.id, "failed", attempts, status, error))
            return
        when = time.time() + delay
        self._log_failure(row, receiver, reason, attempts, when, delay)
        await self._store.write(lambda c: _retry(c, row.id, attempts, status, error, when))

    def _log_failure(
        self, row: _Row, receiver: str, reason: str, attempts: int, when: float, delay: float
    ) -> None:
        """Warn about a failed attempt, if the receiver's rate limit lets it through."""
        alert = self.alerts.failed(receiver, time.time())
        if alert is None:
            return
        fields: dict[str, Any] = {
            "event": row.type,
            "job_id": row.job_id,
            "msg_id": row.msg_id,
            "url": receiver,
            "reason": reason,
            "attempt": attempts,
            "retry_at": _iso(when),
            "retry_in": webhook_policy.describe_delay(delay),
            "suppressed": alert.suppressed,
            "failing_since": _iso(alert.since),
        }
        text = (
            "webhook {event} for job {job_id} to {url} failed ({reason}, attempt {attempt}); "
            "next attempt in {retry_in}, at {retry_at}"
        )
        if alert.suppressed:
            text += "; {suppressed} more failures to it suppressed since the last warning"
        if alert.failures > 1:
            text += " (failing since {failing_since})"
        _log.warn(text, **fields)

    def _log_recovery(self, row: _Row, receiver: str) -> None:
        recovery = self.alerts.delivered(receiver)
        if recovery is None:
            return
        _log.info(
            "webhook receiver {url} is reachable again: {event} for job {job_id} delivered "
            "after {failures} failed attempts since {failing_since}",
            url=receiver,
            event=row.type,
            job_id=row.job_id,
            failures=recovery.failures,
            failing_since=_iso(recovery.since),
        )

    async def stop(self) -> None:
        self._running = False
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        waiting = [d for d in (self._draining,) if d is not None]
        for d in list(self._in_flight.values()):
            d.cancel()
        waiting += list(self._in_flight.values())
        if waiting:
            await DeferredList(waiting, consumeErrors=True)
        await self._pool.closeCachedConnections()


def _iso(when: float) -> str:
    return datetime.fromtimestamp(when, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _mark(
    conn: sqlite3.Connection,
    row_id: int,
    status: str,
    attempts: int,
    last_status: int | None,
    error: str | None,
) -> None:
    conn.execute(
        "UPDATE outbox SET status = ?, attempts = ?, last_status = ?, last_error = ?, "
        "finished_at = ? WHERE id = ?",
        (status, attempts, last_status, error, time.time(), row_id),
    )


def _retry(
    conn: sqlite3.Connection,
    row_id: int,
    attempts: int,
    last_status: int | None,
    error: str | None,
    when: float,
) -> None:
    conn.execute(
        "UPDATE outbox SET attempts = ?, last_status = ?, last_error = ?, next_attempt_at = ? "
        "WHERE id = ?",
        (attempts, last_status, error, when, row_id),
    )


def _gone(conn: sqlite3.Connection, url: str, attempts: int, now: float) -> None:
    conn.execute("INSERT OR REPLACE INTO webhook_gone (url, at) VALUES (?, ?)", (url, now))
    conn.execute(
        "UPDATE outbox SET status = 'gone', last_status = 410, finished_at = ? "
        "WHERE url = ? AND status = 'pending'",
        (now, url),
    )
