"""Records how a job attempt ended, after the target is free: result, artifacts, state.

The runner (``foreman.jobs.runner``) hands each attempt here once its target
call is over; it is recorded a moment later (``later``), so a job's
bookkeeping never sits between two dispatches (ADR 0021) nor competes with
the target while it takes the next request (ADR 0022). What it writes:
the assembled answer and its artifacts, then ``done``; or the state the pure
state machine (``foreman.core.jobstate``) decides for an error, retried until
the database takes it. Artifacts are written before ``done`` is committed, so
a ``done`` job always has them.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

import attrs
from attrs import define, field
from twisted.internet.defer import CancelledError, Deferred, DeferredList, succeed
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from foreman.core import jobstate
from foreman.core.backoff import RECORD_RETRY
from foreman.core.jobview import RESULT_INLINE_LIMIT
from foreman.core.records import JobRow
from foreman.jobs.artifacts import ArtifactStore
from foreman.jobs.collect import Answer, Collector
from foreman.target.call import INTERNAL, TargetError

if TYPE_CHECKING:
    from foreman.jobs.service import JobService

__all__ = ["AFTER_DISPATCH", "MAX_RECORDING", "Attempt", "Recorder"]

_log = Logger()

#: seconds a job's bookkeeping waits after a dispatch (its state writes, the
#: previous attempt's recording): the target takes its request first. On a
#: host it shares with foreman, that burst of work (SQLite and artifact
#: threads on the other core) delayed the target reading the next request by
#: about 0.3 ms on 2 cores; this late, it delays nothing (ADR 0022).
AFTER_DISPATCH = 0.002

#: attempts being recorded at once at most: past it the worker starts no job
#: until one is recorded, so a target faster than the disk cannot pile up
#: answers in memory (ADR 0026)
MAX_RECORDING = 64


@define
class Attempt:
    """One attempt's state writes, sent without waiting (``JobRunner._write``)."""

    job_id: str
    writes: list[Deferred[Any]] = field(factory=list)
    _outcome: tuple[bool, Exception | None] | None = None

    async def written(self) -> bool:
        """Once every write is in: False if one found the job gone; raises a write's error."""
        if self._outcome is None:
            fine, error = True, None
            for d in self.writes:
                try:
                    row = await d
                except Exception as e:
                    error = error or e
                    continue
                fine = fine and row is not None
            self._outcome = (fine, error)
        fine, error = self._outcome
        if error is not None:
            raise error
        return fine


class Recorder:
    """The attempts still being recorded, and how each is."""

    def __init__(
        self, *, reactor: Any, jobs: JobService, artifacts: ArtifactStore, max_attempts: int
    ) -> None:
        self._reactor = reactor
        self._clock = reactor
        self._jobs = jobs
        self._artifacts = artifacts
        self._max_attempts = max_attempts
        #: what earlier attempts still record (artifacts, state writes)
        self._recording: set[Deferred[None]] = set()
        self._pauses: set[Deferred[None]] = set()
        self._recorded_tokens: dict[str, int] = {}
        #: shutting down: a state write that fails is not tried again
        self.closing = False
        #: told when an attempt's recording ends (a drain waits for the last one)
        self.on_recorded: Callable[[], None] | None = None
        #: seconds a job's bookkeeping waits after a dispatch (``AFTER_DISPATCH``)
        self.after_dispatch = AFTER_DISPATCH
        #: attempts recorded at once before ``backlogged`` (``MAX_RECORDING``)
        self.limit = MAX_RECORDING
        self._room: list[Deferred[None]] = []

    def close(self) -> None:
        """Stop retrying writes (foreman stops; start-up recovery settles the jobs)."""
        self.closing = True
        for pause in list(self._pauses):
            pause.cancel()

    def tokens_of(self, job_id: str) -> int | None:
        """Tokens of a job whose attempt is being recorded, else None."""
        return self._recorded_tokens.get(job_id)

    def hold_tokens(self, job_id: str, tokens: int) -> None:
        """``tokens_of`` answers ``tokens`` for ``job_id`` until its recording ends."""
        self._recorded_tokens[job_id] = tokens

    def later(self, job_id: str, work: Coroutine[Any, Any, None], tokens: int) -> None:
        """Record the attempt ``after_dispatch`` seconds from now.

        Started at once, its first steps (artifact writes handed to threads,
        the final state's transaction) would run before the worker picks the
        next job; started on the next turn, right after that job was sent,
        they would compete with the target for the CPU while it reads it.
        """
        self.hold_tokens(job_id, tokens)
        d: Deferred[None] = Deferred()
        self._reactor.callLater(
            self.after_dispatch, lambda: Deferred.fromCoroutine(work).chainDeferred(d)
        )
        self._recording.add(d)

        def done(result: Any) -> None:
            self._recording.discard(d)
            self._recorded_tokens.pop(job_id, None)
            if not self.backlogged:
                waiting, self._room = self._room, []
                for room in waiting:
                    room.callback(None)
            if isinstance(result, Failure):
                _log.failure("job {job_id}: recording the attempt failed", result, job_id=job_id)
            if self.on_recorded is not None:
                self.on_recorded()

        d.addBoth(done)

    @property
    def recording(self) -> int:
        """Attempts whose answer or error is still being written."""
        return len(self._recording)

    @property
    def backlogged(self) -> bool:
        """``limit`` attempts are being recorded: no job should start now."""
        return len(self._recording) >= self.limit

    def when_room(self) -> Deferred[None]:
        """Fires once fewer than ``limit`` attempts are being recorded (now, if so)."""
        if not self.backlogged:
            return succeed(None)

        def cancel(d: Deferred[None]) -> None:
            if d in self._room:
                self._room.remove(d)

        room: Deferred[None] = Deferred(cancel)
        self._room.append(room)
        return room

    async def drain(self) -> None:
        """Wait for what earlier attempts still record (at shutdown, before the store closes)."""
        while self._recording:
            await DeferredList(list(self._recording), consumeErrors=True)

    async def settle(self, attempt: Attempt, error: TargetError, tokens: int) -> None:
        """Record how the attempt ended; retried until written (or foreman stops).

        A job is never left off the queue in ``loading``/``working``: if the
        database cannot take the transition now, the worker waits and tries
        again. On shutdown it gives up; start-up recovery settles the job.
        """
        job_id = attempt.job_id
        with contextlib.suppress(Exception):  # a failed write is seen in the row below
            await attempt.written()  # the row must show the states this attempt reached
        failures = 0
        while True:
            try:
                await self._after_error(job_id, error, tokens)
                return
            except Exception:
                failures += 1
                _log.failure(
                    "job {job_id}: could not record {kind} (try {n}); retrying",
                    job_id=job_id,
                    kind=error.kind,
                    n=failures,
                )
            if self.closing:
                return
            pause = deferLater(self._clock, RECORD_RETRY.delay(failures), lambda: None)
            self._pauses.add(pause)
            try:
                await pause
            except CancelledError:
                return
            finally:
                self._pauses.discard(pause)

    async def record(self, attempt: Attempt, row: JobRow, collector: Collector) -> None:
        """After the call, off the target's path: the result, its artifacts, then ``done``.

        A malformed or cut answer ends like a fault in the call (the state
        machine decides); anything else that goes wrong here ends in
        ``internal_error``, retried: the answer is not trusted to disk.
        """
        try:
            answer = collector.finish()
        except TargetError as e:
            self._recorded_tokens[row.id] = collector.tokens
            if collector.raw is not None:
                await collector.raw.abort()
            await self.settle(attempt, e, collector.tokens)
            return
        self._recorded_tokens[row.id] = answer.tokens
        try:
            await self._record_answer(attempt, row, answer)
        except Exception as e:
            _log.failure("job {job_id}: recording the answer raised", job_id=row.id)
            if answer.raw is not None:
                await answer.raw.abort()
            error = TargetError(INTERNAL, f"foreman failed to record the answer: {e!r}"[:500])
            await self.settle(attempt, error, answer.tokens)

    async def _record_answer(self, attempt: Attempt, row: JobRow, answer: Answer) -> None:
        raw = answer.raw
        try:
            fine = await attempt.written()
        except Exception as e:  # the database refused a state write of the attempt
            if raw is not None:
                await raw.abort()
            error = TargetError(INTERNAL, f"could not record the job's state: {e!r}"[:500])
            await self.settle(attempt, error, answer.tokens)
            return
        try:
            if not fine:  # cancelled while it ran
                if raw is not None:
                    await raw.abort()
                return
            if raw is not None:
                await raw.finish()
            listing = await self._artifacts.write(
                row.id, {"response.json": answer.response}, () if raw is None else (raw,)
            )
        except OSError as e:
            if raw is not None:
                await raw.abort()
            error = TargetError("artifact_write_error", f"could not write artifacts: {e}")
            await self.settle(attempt, error, answer.tokens)
            return
        except BaseException:
            if raw is not None:
                await raw.abort()
            raise
        response_bytes = answer.response
        inline = response_bytes.decode() if len(response_bytes) < RESULT_INLINE_LIMIT else None
        listed = json.dumps([{"name": i["name"], "size": i["size"]} for i in listing])
        done = await self._jobs.apply(
            jobstate.succeed(row.id, self._clock.seconds(), answer.tokens, inline, listed)
        )
        if done is None:  # cancelled while the artifacts were written
            await self._artifacts.discard([row.id])

    async def _after_error(self, job_id: str, error: TargetError, tokens: int) -> None:
        row = await self._jobs.get_row(job_id)
        if row is None or row.terminal:
            return  # cancelled (or deleted): the canceller recorded it
        if row.state == jobstate.JobState.QUEUED:
            # failed before the attempt began (reading the job): back to the queue, later
            not_before = self._clock.seconds() + RECORD_RETRY.delay(1)
            self._jobs.requeue(attrs.evolve(row, not_before=not_before))
            return
        transition = jobstate.attempt_failed(
            job_id,
            jobstate.JobState(row.state),
            row.attempts,
            self._max_attempts,
            jobstate.ErrorKind(error.kind),
            error.message,
            self._clock.seconds(),
            tokens,
            status=error.status,
        )
        # JobService.apply logs the transition (a warning: it carries the error)
        if transition.target is jobstate.JobState.QUEUED:
            changed = await self._jobs.apply(transition)
            if changed is not None:
                self._jobs.requeue(changed)
            return
        await self._jobs.apply(transition)
        await self._artifacts.discard([job_id])
