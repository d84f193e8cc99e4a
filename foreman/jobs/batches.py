"""OpenAI batches over the job queue: files, validation, progress, cancel, expiry, output.

Every line of a batch is a job (ADR 0018): the worker, the scheduler and the
job state machine run it like any other. This service adds what a batch is
beyond its lines: the input file is checked whole before anything is
enqueued, progress is counted in memory from the job service's terminal
transitions (nothing is written between two dispatches for it), and once no
line is left unfinished the output and error files are written and the batch
ends in one transaction with its webhook.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

from attrs import define, field
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.threads import deferToThread
from twisted.logger import Logger
from twisted.python.failure import Failure

from foreman.core.batchlines import BatchLine, LineChecker, LineError, endpoint_problem
from foreman.core.batchstate import (
    BatchEvent,
    BatchStatus,
    step,
)
from foreman.core.batchview import (
    BatchRow,
    Counts,
    FileRow,
    batch_object,
    file_object,
)
from foreman.core.errors import BadRequest
from foreman.core.ids import BATCH_ID, FILE_ID, new_batch_id, new_file_id
from foreman.core.jobstate import JobState
from foreman.core.records import JobRow, NewJob
from foreman.core.scheduler import DEFAULT_JOB_PRIORITY
from foreman.jobs.artifacts import ArtifactStore, StreamWriter
from foreman.jobs.batch_output import write_output
from foreman.jobs.files import FileStore
from foreman.jobs.service import JobService
from foreman.store import batches as sql
from foreman.store import jobs as jobs_sql
from foreman.store.database import Store

__all__ = ["BatchService", "NotFound", "Refused"]

_log = Logger(namespace="foreman.batches")

WINDOW = 24 * 3600.0  # the only completion window OpenAI offers: "24h"
INSERT_CHUNK = 2000  # lines inserted per transaction while a batch is enqueued
INSERT_BYTES = 4 * 1024 * 1024  # or fewer, so long lines never make a chunk large
_METADATA_PAIRS = 16
_METADATA_KEY = 64
_METADATA_VALUE = 512
_CREATE_FIELDS = frozenset(
    {"input_file_id", "endpoint", "completion_window", "metadata", "output_expires_after"}
)


class NotFound(Exception):
    """No such batch or file (404): ``code`` says which."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class Refused(Exception):
    """The request is understood but not possible now (409): ``code`` says what."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def _no_file(file_id: str) -> NotFound:
    return NotFound("file_not_found", f"no file {file_id!r}")


def _no_batch(batch_id: str) -> NotFound:
    return NotFound("batch_not_found", f"no batch {batch_id!r}")


@define
class _Live:
    """What is kept in memory for a batch whose lines may still run."""

    total: int = 0
    completed: int = 0
    failed: int = 0  # failed + cancelled lines so far
    unfinished: int = 0
    queued: set[str] = field(factory=set)  # ids of lines still waiting (for the estimate)
    expiry: Any = None  # IDelayedCall
    waiters: list[Deferred[None]] = field(factory=list)

    @property
    def counts(self) -> Counts:
        return Counts(self.total, self.completed, self.failed)


def _check_metadata(metadata: Any) -> dict[str, str] | None:
    if metadata is None:
        return None
    if not isinstance(metadata, dict):
        raise BadRequest("metadata must be an object of strings", "invalid_metadata")
    if len(metadata) > _METADATA_PAIRS:
        raise BadRequest(f"metadata may hold at most {_METADATA_PAIRS} pairs", "invalid_metadata")
    for key, value in metadata.items():
        if len(key) > _METADATA_KEY:
            raise BadRequest(
                f"metadata keys are at most {_METADATA_KEY} characters", "invalid_metadata"
            )
        if not isinstance(value, str) or len(value) > _METADATA_VALUE:
            raise BadRequest(
                f"metadata values are strings of at most {_METADATA_VALUE} characters",
                "invalid_metadata",
            )
    return metadata


class BatchService:
    def __init__(
        self,
        *,
        store: Store,
        jobs: JobService,
        files: FileStore,
        artifacts: ArtifactStore,
        reactor: Any,
        max_lines: int,
        line_limit: int,
        default_webhook: str | None,
        check_webhook: Callable[[str], Any],
    ) -> None:
        self.store = store
        self.jobs = jobs
        self.files = files
        self.artifacts = artifacts
        self.reactor = reactor
        self.max_lines = max_lines
        self.line_limit = line_limit
        self.default_webhook = default_webhook
        self._check_webhook = check_webhook
        self.abort_running: Callable[[str], None] = lambda job_id: None
        self.window = WINDOW  # seconds a batch has to finish: "24h" (tests shorten it)
        #: the estimated start and finish of the last of some waiting lines (foreman's extension)
        self.eta_of: Callable[[set[str]], dict[str, Any] | None] = lambda keys: None
        self._live: dict[str, _Live] = {}
        self._finishing: set[str] = set()
        self._tasks: set[Deferred[Any]] = set()
        self._stopped = False
        jobs.line_listeners.append(self._line_ended)

    def counts(self, batch_id: str) -> Counts | None:
        """The live request counts of a batch whose lines may still run, else None."""
        live = self._live.get(batch_id)
        return None if live is None else live.counts

    def active(self, batch_id: str) -> bool:
        """True while the batch may still run lines or write its output."""
        return batch_id in self._live or batch_id in self._finishing

    # -- files

    async def add_file(self, writer: StreamWriter, filename: str, purpose: str) -> dict[str, Any]:
        """A finished upload (already fsynced under its temporary name) becomes a file."""
        await self.files.publish(writer)
        row = FileRow(writer.name, purpose, filename, writer.size, self.reactor.seconds())
        await self.store.write(sql.insert_file, row)
        _log.info(
            "file {file_id} stored: {filename} ({size} bytes, purpose {purpose})",
            file_id=row.id,
            filename=filename,
            size=row.bytes,
            purpose=purpose,
        )
        return file_object(row)

    def new_upload(self) -> StreamWriter:
        return self.files.writer(new_file_id(self.reactor.seconds()))

    async def file_row(self, file_id: str) -> FileRow:
        if not FILE_ID.match(file_id):
            raise _no_file(file_id)
        row: FileRow | None = await self.store.read(sql.get_file, file_id)
        if row is None:
            raise _no_file(file_id)
        return row

    async def list_files(
        self, purpose: str | None, after: str | None, limit: int, newest: bool
    ) -> dict[str, Any]:
        rows, more = await self.store.read(sql.list_files, purpose, after, limit, newest)
        return _page([file_object(r) for r in rows], more)

    async def delete_file(self, file_id: str) -> dict[str, Any]:
        if not FILE_ID.match(file_id):
            raise _no_file(file_id)
        outcome = await self.store.write(sql.delete_file, file_id)
        if outcome == "missing":
            raise _no_file(file_id)
        if outcome == "in_use":
            raise Refused("file_in_use", f"file {file_id} is the input of a running batch")
        await self.files.delete(file_id)
        return {"id": file_id, "object": "file", "deleted": True}

    # -- batches: reads

    async def row(self, batch_id: str) -> BatchRow:
        if not BATCH_ID.match(batch_id):
            raise _no_batch(batch_id)
        row: BatchRow | None = await self.store.read(sql.get_batch, batch_id)
        if row is None:
            raise _no_batch(batch_id)
        return row

    def render(self, row: BatchRow) -> dict[str, Any]:
        live = self._live.get(row.id)
        body = batch_object(row, live.counts if live is not None else None)
        if live is not None and live.queued:
            body["eta"] = self.eta_of(live.queued)  # foreman's extension: when it will end
        return body

    async def get(self, batch_id: str) -> dict[str, Any]:
        return self.render(await self.row(batch_id))

    async def wait(
        self, batch_id: str, status: str | None, done: int | None, timeout: float
    ) -> dict[str, Any]:
        """The batch once it differs from (``status``, ``done``), or after ``timeout``."""
        row = await self.row(batch_id)
        body = self.render(row)
        live = self._live.get(batch_id)
        if status is None or live is None or _changed(body, status, done):
            return body

        def forget(d: Deferred[None]) -> None:
            if d in live.waiters:
                live.waiters.remove(d)

        deadline = self.reactor.seconds() + timeout
        while True:
            d: Deferred[None] = Deferred(forget)
            live.waiters.append(d)

            def time_up(d: Deferred[None] = d) -> None:
                if not d.called:
                    d.callback(None)

            timer = self.reactor.callLater(max(0.0, deadline - self.reactor.seconds()), time_up)
            try:
                await d
            finally:
                if timer.active():
                    timer.cancel()
            body = self.render(await self.row(batch_id))
            if _changed(body, status, done) or self.reactor.seconds() >= deadline:
                return body
            if batch_id not in self._live:
                return body

    async def list_page(self, after: str | None, limit: int) -> dict[str, Any]:
        rows, more = await self.store.read(sql.list_batches, after, limit)
        return _page([self.render(r) for r in rows], more)

    # -- batches: writes

    async def create(self, body: Any, base_url: str) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise BadRequest("the body must be a JSON object", "invalid_request")
        unknown = sorted(set(body) - _CREATE_FIELDS)
        if unknown:
            raise BadRequest(f"unknown field(s): {', '.join(unknown)}", "unknown_parameter")
        input_file_id = body.get("input_file_id")
        if not isinstance(input_file_id, str) or not input_file_id:
            raise BadRequest("input_file_id is required", "missing_required_parameter")
        endpoint = body.get("endpoint")
        problem = endpoint_problem(endpoint)
        if problem is not None:
            raise BadRequest(problem, "invalid_endpoint")
        assert isinstance(endpoint, str)
        window = body.get("completion_window")
        if window != "24h":
            raise BadRequest('completion_window must be "24h"', "invalid_completion_window")
        metadata = _check_metadata(body.get("metadata"))
        webhook_url = (metadata or {}).get("webhook_url") or self.default_webhook
        if webhook_url is not None:
            await self._check_webhook(webhook_url)
        file = await self.file_row(input_file_id)
        if file.purpose != "batch":
            raise BadRequest(
                f"file {input_file_id} has purpose {file.purpose!r}; a batch needs purpose 'batch'",
                "invalid_purpose",
            )
        now = self.reactor.seconds()
        row = BatchRow(
            id=new_batch_id(now),
            status=BatchStatus.VALIDATING.value,
            ending=None,
            endpoint=endpoint,
            input_file_id=input_file_id,
            completion_window="24h",
            metadata=json.dumps(metadata) if metadata is not None else None,
            webhook_url=webhook_url,
            output_file_id=None,
            error_file_id=None,
            errors=None,
            total=0,
            completed=0,
            failed=0,
            usage=None,
            created_at=now,
            in_progress_at=None,
            finalizing_at=None,
            completed_at=None,
            failed_at=None,
            expired_at=None,
            expires_at=now + self.window,
            cancelling_at=None,
            cancelled_at=None,
            base_url=base_url,
        )
        await self.store.write(sql.insert_batch, row)
        self._live[row.id] = _Live()
        _log.info(
            "batch {batch_id} created: {endpoint} from {file_id}",
            batch_id=row.id,
            endpoint=endpoint,
            file_id=input_file_id,
        )
        self._spawn(self._validate(row))
        return self.render(row)

    async def cancel(self, batch_id: str) -> dict[str, Any]:
        row = await self.row(batch_id)
        status = BatchStatus(row.status)
        if status is BatchStatus.CANCELLING or status is BatchStatus.CANCELLED:
            return self.render(row)
        if status not in (BatchStatus.VALIDATING, BatchStatus.IN_PROGRESS):
            raise Refused(
                "batch_not_cancellable",
                f"batch {batch_id} is {status.value}; it cannot be cancelled",
            )
        moved = await self._move(row, BatchEvent.CANCEL)
        if moved is None:  # it moved on meanwhile (finished, or another cancel)
            return self.render(await self.row(batch_id))
        _log.info("batch {batch_id} cancelling", batch_id=batch_id)
        if status is BatchStatus.IN_PROGRESS:
            self._spawn(self._stop_lines(moved))
        # a validating batch sees the cancel when it next writes
        return self.render(moved)

    # -- start and stop

    async def recover(self) -> int:
        """Pick every unfinished batch up where a stop left it; how many there were."""
        await self.files.sweep(await self.store.read(sql.file_ids))
        rows: list[BatchRow] = await self.store.read(
            sql.batches_in,
            [
                s.value
                for s in (
                    BatchStatus.VALIDATING,
                    BatchStatus.IN_PROGRESS,
                    BatchStatus.CANCELLING,
                    BatchStatus.FINALIZING,
                )
            ],
        )
        for row in rows:
            status = BatchStatus(row.status)
            live = self._live.setdefault(row.id, _Live())
            if status is BatchStatus.VALIDATING:
                await self.store.write(sql.clear_lines, row.id)
                self._spawn(self._validate(row))
                continue
            if status is BatchStatus.CANCELLING and row.in_progress_at is None:
                # cancelled while its lines were being enqueued: none of them counts
                await self.store.write(sql.clear_lines, row.id)
                self._spawn(self._finalize(row.id))
                continue
            await self._recount(row.id, live)
            if status is BatchStatus.IN_PROGRESS:
                live.queued = set(await self.store.read(sql.queued_lines, row.id))
                self._arm_expiry(row)
                self._finish_if_done(row.id)
            else:  # cancelling or finalizing: whatever is still queued must not run
                await self._unqueue(row.id)  # before the worker starts
                self._spawn(self._stop_lines(row))
        if rows:
            _log.info("{count} unfinished batches picked up", count=len(rows))
        return len(rows)

    async def stop(self) -> None:
        self._stopped = True
        for live in self._live.values():
            if live.expiry is not None and live.expiry.active():
                live.expiry.cancel()
            for waiter in list(live.waiters):
                if not waiter.called:
                    waiter.callback(None)
        for task in list(self._tasks):
            task.cancel()

    # -- internals

    def _spawn(self, work: Any) -> None:
        """Run ``work`` in the background; its failure is logged, never lost."""
        d: Deferred[Any] = Deferred.fromCoroutine(work)
        self._tasks.add(d)

        def done(result: Any) -> None:
            self._tasks.discard(d)
            if isinstance(result, Failure) and not result.check(CancelledError):
                _log.failure("batch work failed", result)

        d.addBoth(done)

    async def _recount(self, batch_id: str, live: _Live) -> None:
        counts: dict[str, int] = await self.store.read(sql.line_counts, batch_id)
        live.total = sum(counts.values())
        live.completed = counts.get(JobState.DONE.value, 0)
        live.failed = counts.get(JobState.FAILED.value, 0) + counts.get(JobState.CANCELLED.value, 0)
        live.unfinished = live.total - live.completed - live.failed

    async def _move(
        self,
        row: BatchRow,
        event: BatchEvent,
        fields: tuple[tuple[str, Any], ...] = (),
        webhook: bool = False,
    ) -> BatchRow | None:
        source = BatchStatus(row.status)
        change = step(source, BatchStatus(row.ending) if row.ending else None, event)
        render = (lambda r: json.dumps(batch_object(r), separators=(",", ":"))) if webhook else None
        moved: BatchRow | None = await self.store.write(
            sql.move_batch,
            row.id,
            source,
            change,
            self.reactor.seconds(),
            fields,
            (f"batch.{change.status.value}", render) if render is not None else None,
        )
        if moved is not None:
            self._notify(row.id)
            if webhook and moved.webhook_url:
                for poke in self.jobs.outbox_listeners:
                    poke()
        return moved

    def _notify(self, batch_id: str) -> None:
        live = self._live.get(batch_id)
        if live is None:
            return
        waiters, live.waiters = live.waiters, []
        for waiter in waiters:
            if not waiter.called:
                waiter.callback(None)

    async def _validate(self, row: BatchRow) -> None:
        """Check the input file whole, then enqueue its lines (ADR 0018)."""
        started = self.reactor.seconds()
        checker = LineChecker(row.endpoint, self.max_lines, self.line_limit)
        try:
            errors = await deferToThread(self._check_file, row.input_file_id, checker)
        except OSError as e:
            errors = [LineError("file_unreadable", f"the input file cannot be read: {e}")]
        if errors:
            await self._fail(row, errors, checker.error_count)
            return
        total = await self._enqueue(row)
        if total is None:
            return
        _log.info(
            "batch {batch_id} in progress: {total} lines checked and queued in {seconds:.2f} s",
            batch_id=row.id,
            total=total,
            seconds=self.reactor.seconds() - started,
        )

    def _check_file(self, file_id: str, checker: LineChecker) -> list[LineError]:
        for raw in self.files.lines(file_id, self.line_limit):
            checker.check(raw.rstrip(b"\r\n"))
        return checker.finish()

    async def _fail(self, row: BatchRow, errors: list[LineError], count: int) -> None:
        data = json.dumps([e.as_dict() for e in errors])
        moved = await self._move(row, BatchEvent.INVALID, (("errors", data),), webhook=True)
        self._live.pop(row.id, None)
        if moved is None:  # cancelled while it was checked
            await self._finalize(row.id)
            return
        _log.warn(
            "batch {batch_id} failed validation: {count} errors, first: line {line}: {message}",
            batch_id=row.id,
            count=count,
            line=errors[0].line,
            message=errors[0].message,
        )

    async def _enqueue(self, row: BatchRow) -> int | None:
        """Insert the lines as jobs; the last chunk's transaction starts the batch."""
        lines = _Reader(self.files.lines(row.input_file_id, self.line_limit))
        checker = LineChecker(row.endpoint, self.max_lines, self.line_limit)
        total = 0
        added: list[tuple[str, str, int, float, None]] = []  # what the queue needs, no more
        while True:
            chunk = await deferToThread(lines.take, checker, INSERT_CHUNK, INSERT_BYTES)
            last = lines.ended
            jobs = [self._new_job(row, line) for line in chunk]
            total += len(jobs)
            now = self.reactor.seconds()
            change = step(BatchStatus.VALIDATING, None, BatchEvent.VALID) if last else None
            try:
                inserted, moved = await self.store.write(
                    _insert_chunk, row.id, jobs, self.jobs.render_for_event, change, now, total
                )
            except _Cancelled:
                moved = None
                break
            added += [(j.id, j.model, j.priority, j.created_at, None) for j in inserted]
            del inserted
            if last:
                break
            current: BatchRow | None = await self.store.read(sql.get_batch, row.id)
            if current is None or current.status != BatchStatus.VALIDATING:
                moved = None
                break
        if moved is None:  # cancelled while it was enqueued: nothing of it runs
            await self.store.write(sql.clear_lines, row.id)
            await self._finalize(row.id)
            return None
        live = self._live.setdefault(row.id, _Live())
        live.total = live.unfinished = total
        live.queued = {key for key, *_ in added}
        self.jobs.queue.add_jobs(list(added))
        self._notify(row.id)
        self._arm_expiry(moved)
        self._finish_if_done(row.id)
        return total

    def _new_job(self, batch: BatchRow, line: BatchLine) -> NewJob:
        return NewJob(
            id=self.jobs.new_id(),
            endpoint=batch.endpoint,
            model=line.model,
            priority=DEFAULT_JOB_PRIORITY,
            request=json.dumps(line.body, separators=(",", ":")),
            metadata=None,
            webhook_url=None,
            created_at=batch.created_at,
            idempotency_key=None,
            request_hash="",
            base_url=batch.base_url or "",
            batch_id=batch.id,
            custom_id=line.custom_id,
            line=line.line,
        )

    def _arm_expiry(self, row: BatchRow) -> None:
        live = self._live.get(row.id)
        if live is None or live.expiry is not None or self._stopped:
            return
        delay = max(0.0, row.expires_at - self.reactor.seconds())
        live.expiry = self.reactor.callLater(delay, lambda: self._spawn(self._expire(row.id)))

    async def _expire(self, batch_id: str) -> None:
        row = await self.row(batch_id)
        if row.status != BatchStatus.IN_PROGRESS:
            return
        moved = await self._move(row, BatchEvent.EXPIRE)
        if moved is not None:
            _log.warn("batch {batch_id} expired: its 24 h window passed", batch_id=batch_id)
            await self._stop_lines(moved)

    async def _unqueue(self, batch_id: str) -> None:
        """Take the batch's queued lines off the in-memory queue: the worker never picks them."""
        for job_id in await self.store.read(sql.queued_lines, batch_id):
            self.jobs.queue.remove_job(job_id)

    async def _stop_lines(self, row: BatchRow) -> None:
        """Cancel what is queued, abort what runs; finalize once nothing runs."""
        await self._unqueue(row.id)
        changed = await self.store.write(
            sql.cancel_queued_lines, row.id, self.reactor.seconds(), self.jobs.render_for_event
        )
        live = self._live.setdefault(row.id, _Live())
        for job, event in changed:
            self.jobs.queue.remove_job(job.id)
            self.jobs.published_quietly(job, event)
            live.queued.discard(job.id)
        live.failed += len(changed)
        live.unfinished -= len(changed)
        running: list[tuple[str, str]] = await self.store.read(sql.unfinished_lines, row.id)
        for job_id, _state in running:
            await self.jobs.cancel(job_id, self.abort_running)  # reported via _line_ended
        if not running:
            await self._recount(row.id, live)
            self._finish_if_done(row.id)

    def _line_ended(self, row: JobRow) -> None:
        """A line reached done, failed or cancelled (from the job service)."""
        assert row.batch_id is not None
        live = self._live.get(row.batch_id)
        if live is None:
            return
        if row.state == JobState.DONE:
            live.completed += 1
        else:
            live.failed += 1
        live.unfinished -= 1
        live.queued.discard(row.id)
        self._notify(row.batch_id)
        self._finish_if_done(row.batch_id)

    def _finish_if_done(self, batch_id: str) -> None:
        live = self._live.get(batch_id)
        if live is not None and live.unfinished <= 0 and batch_id not in self._finishing:
            self._spawn(self._finalize(batch_id))

    async def _finalize(self, batch_id: str) -> None:
        """Write the output and error files and end the batch (ADR 0018)."""
        if batch_id in self._finishing or self._stopped:
            return
        self._finishing.add(batch_id)
        try:
            await self._finalize_once(batch_id)
        finally:
            self._finishing.discard(batch_id)

    async def _finalize_once(self, batch_id: str) -> None:
        row = await self.row(batch_id)
        status = BatchStatus(row.status)
        if status is BatchStatus.IN_PROGRESS:
            moved = await self._move(row, BatchEvent.LINES_DONE)
            if moved is None:
                return  # cancelled or expired meanwhile: that path finalizes
            row = moved
        elif status not in (BatchStatus.FINALIZING, BatchStatus.CANCELLING):
            return
        ending = BatchStatus(row.ending) if row.ending else BatchStatus.CANCELLED
        now = self.reactor.seconds()
        out = await write_output(self.store, self.files, self.artifacts, row, ending, now)
        files, fields = list(out.files), out.fields()
        completed, failed = out.completed, out.failed
        ended = await self.store.write(_end_batch, row, files, fields, now)
        live = self._live.pop(batch_id, None)
        if live is not None:
            if live.expiry is not None and live.expiry.active():
                live.expiry.cancel()
            for waiter in live.waiters:
                if not waiter.called:
                    waiter.callback(None)
        if ended is None:
            for file in files:
                await self.files.delete(file.id)
            return
        if ended.webhook_url:
            for poke in self.jobs.outbox_listeners:
                poke()
        _log.info(
            "batch {batch_id} {status}: {completed} of {total} lines done, {failed} failed",
            batch_id=batch_id,
            status=ended.status,
            completed=completed,
            total=completed + failed,
            failed=failed,
        )


def _changed(body: dict[str, Any], status: str, done: int | None) -> bool:
    counts = body["request_counts"]
    return bool(
        body["status"] != status
        or (done is not None and counts["completed"] + counts["failed"] != done)
    )


def _page(data: list[dict[str, Any]], more: bool) -> dict[str, Any]:
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": more,
    }


class _Reader:
    """Lines of the input file across thread hops, one chunk at a time."""

    def __init__(self, lines: Iterator[bytes]) -> None:
        self._lines = lines
        self.ended = False

    def take(self, checker: LineChecker, count: int, size: int) -> list[BatchLine]:
        """The next ``count`` lines, or fewer once they hold ``size`` bytes (long lines)."""
        chunk: list[BatchLine] = []
        held = 0
        for raw in self._lines:
            line = checker.check(raw.rstrip(b"\r\n"))
            if line is not None:
                chunk.append(line)
                held += len(raw)
                if len(chunk) == count or held >= size:
                    return chunk
        self.ended = True
        return chunk


def _insert_chunk(
    conn: Any,
    batch_id: str,
    jobs: list[NewJob],
    render: Any,
    change: Any,
    now: float,
    total: int,
) -> tuple[list[JobRow], BatchRow | None]:
    rows = [jobs_sql.insert_job(conn, job, render)[0] for job in jobs]
    moved = None
    if change is not None:
        moved = sql.move_batch(
            conn, batch_id, BatchStatus.VALIDATING, change, now, (("total", total),)
        )
        if moved is None:  # cancelled meanwhile: this chunk must not stay either
            raise _Cancelled()
    return rows, moved


class _Cancelled(Exception):
    pass


def _end_batch(
    conn: Any, row: BatchRow, files: list[FileRow], fields: Any, now: float
) -> BatchRow | None:
    for file in files:
        sql.insert_file(conn, file)
    source = BatchStatus(row.status)
    change = step(source, BatchStatus(row.ending) if row.ending else None, BatchEvent.FINALIZED)

    def render(r: BatchRow) -> str:
        return json.dumps(batch_object(r), separators=(",", ":"))

    return sql.move_batch(
        conn, row.id, source, change, now, fields, (f"batch.{change.status.value}", render)
    )
