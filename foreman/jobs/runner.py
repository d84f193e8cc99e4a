"""Runs one durable job attempt against the target: read, load, generate.

Called by the worker with the id of a job the scheduler picked. The attempt
moves the job ``queued → loading → working`` and holds the target until its
call ends; then ``foreman.jobs.recorder`` records how it ended (``done`` with
its artifacts, or what the pure state machine decides for an error) while
the worker goes on with the next request.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from attrs import frozen
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse

from foreman.core import jobstate
from foreman.core.records import JobRow
from foreman.core.residency import canonical_model, read_ps
from foreman.jobs.artifacts import ArtifactStore
from foreman.jobs.collect import ASSEMBLED, Collector
from foreman.jobs.hub import Progress
from foreman.jobs.recorder import Attempt, Recorder
from foreman.target.call import (
    ABORTED,
    INTERNAL,
    SHUTDOWN,
    TOO_LARGE,
    UNREACHABLE,
    TargetCall,
    TargetError,
    prepare_call,
)
from foreman.target.readbody import fetch
from foreman.target.upstream import Upstream
from foreman.target.wirepool import Prepared

if TYPE_CHECKING:
    from foreman.jobs.service import JobService

__all__ = ["JobRunner", "has_preload", "job_wants_stream", "preload_request", "wire_request"]

_log = Logger()

# the worker's own /api/ps read: seconds, not the generation's idle timeout
METADATA_TIMEOUT = 5.0
METADATA_LIMIT = 1024 * 1024
# one NDJSON line of a stream; a final chunk with a long ``context`` array can
# reach a megabyte, so the bound is generous yet stops a newline-less flood
LINE_LIMIT = 8 * 1024 * 1024

# endpoints whose stream foreman can assemble into the non-streaming response
_NATIVE_STREAMING = frozenset({"/api/chat", "/api/generate"})
_OPENAI_STREAMING = frozenset(
    {"/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/messages"}
)
_CHAT_LIKE = frozenset({"/api/chat", "/v1/chat/completions", "/v1/responses", "/v1/messages"})
_GENERATE_LIKE = frozenset({"/api/generate", "/v1/completions"})


def job_wants_stream(endpoint: str, request: dict[str, Any]) -> bool:
    """Would the job's own request stream, by Ollama's defaults for that route?"""
    if endpoint in _NATIVE_STREAMING:
        return request.get("stream", True) is not False
    if endpoint in _OPENAI_STREAMING:
        return request.get("stream", False) is True
    return False


def wire_request(endpoint: str, request: dict[str, Any]) -> dict[str, Any]:
    """The body foreman sends: streaming forced where it can assemble the result."""
    if endpoint not in ASSEMBLED:
        return request
    body = dict(request)
    body["stream"] = True
    if endpoint.startswith("/v1/"):
        options = dict(body.get("stream_options") or {})
        options.setdefault("include_usage", True)
        body["stream_options"] = options
    return body


def has_preload(endpoint: str) -> bool:
    """Whether ``preload_request`` has an explicit load for the endpoint (not embeddings)."""
    return endpoint in _CHAT_LIKE or endpoint in _GENERATE_LIKE


def preload_request(endpoint: str, request: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """Ollama's explicit load for the job's model (no prompt), or None when there is none.

    Native requests keep their ``keep_alive`` and ``options`` so the load uses the
    same allocation the generation will (a different ``num_ctx`` would reload).
    """
    if not has_preload(endpoint):
        return None  # embeddings: the request itself loads the model
    model = request["model"]
    extra: dict[str, Any] = {}
    if endpoint.startswith("/api/"):  # native
        for key in ("keep_alive", "options"):
            if key in request:
                extra[key] = request[key]
    if endpoint in _CHAT_LIKE:
        return "/api/chat", {"model": model, "messages": [], "stream": False, **extra}
    return "/api/generate", {"model": model, "stream": False, **extra}


#: request bytes one read-ahead keeps at most; the rows past it are read when they run
READ_AHEAD_BYTES = 8 * 1024 * 1024


@frozen
class _Ready:
    """A job's row with its request parsed and the body it sends encoded."""

    row: JobRow
    request: dict[str, Any]
    body: bytes


def _ready(row: JobRow) -> _Ready:
    request = row.request_body()
    return _Ready(row, request, _encode(wire_request(row.endpoint, request)))


@frozen
class _Staged:
    """The request of the job likely to run next, formatted while the target works."""

    ready: _Ready
    prepared: Prepared


@frozen
class _Sent:
    """A staged request that went out at the start of its attempt."""

    ready: _Ready
    request: Deferred[IResponse]


def _encode(body: dict[str, Any]) -> bytes:
    return json.dumps(body).encode()


class JobRunner:
    def __init__(
        self,
        *,
        reactor: Any,
        upstream: Upstream,
        token: str | None,
        jobs: JobService,
        artifacts: ArtifactStore,
        max_attempts: int,
        on_unreachable: Callable[[str], None],
        idle_timeout: float = 900.0,
        max_response: int = 64 * 1024 * 1024,
    ) -> None:
        self._reactor = reactor
        self._clock = reactor  # IReactorTime: every time the runner reads
        self._upstream = upstream
        self._token = token
        self._jobs = jobs
        self._artifacts = artifacts
        self._on_unreachable = on_unreachable
        self._idle_timeout = idle_timeout
        self._max_response = max_response
        self._call: TargetCall | None = None
        self._between: TargetError | None = None  # an abort that came between two calls
        self._asking: Deferred[Any] | None = None  # the /api/ps question in flight
        #: what earlier attempts still record (artifacts, state writes), off the target's path
        self.recorder = Recorder(
            reactor=reactor, jobs=jobs, artifacts=artifacts, max_attempts=max_attempts
        )
        self._ahead: dict[str, Deferred[JobRow | None]] = {}  # rows read ahead (prefetch)
        self._staging: str | None = None  # the job ``stage`` was last asked for
        self._staged: _Staged | None = None
        self.staged_sends = 0
        """Attempts whose request was formatted ahead and sent as one write (``stage``)."""
        self.knows_resident: Callable[[str], bool] | None = None
        """The worker's view: True when ``model`` is surely resident (no need to ask)."""
        self.on_load: Callable[[str, float], None] | None = None
        #: told (job id, model) when an attempt's call ended whole, before the
        #: attempt returns: the worker starts the next request at once
        self.on_free: Callable[[str, str], None] | None = None
        self.job_id: str | None = None
        self.phase: str | None = None
        self.tokens = 0

    def abort(self, reason: TargetError | None = None) -> None:
        """Abort the target call of the running attempt (cancel, shutdown)."""
        if reason is not None and reason.kind == SHUTDOWN:
            self.recorder.close()
        if self._call is not None:
            self._call.abort(reason)
        elif self.job_id is not None:
            # between two target calls (reading the row, asking /api/ps): the
            # next call fails at once, and a question in flight is dropped
            self._between = reason or TargetError(ABORTED, "cancelled")
            if self._asking is not None:
                self._asking.cancel()

    def tokens_of(self, job_id: str) -> int | None:
        """Tokens of a job whose attempt runs or is being recorded, else None."""
        if self.job_id == job_id:
            return self.tokens
        return self.recorder.tokens_of(job_id)

    def prefetch(self, job_ids: Sequence[str]) -> None:
        """Read ahead the rows of the jobs likely to run next, while the target is busy.

        A window of them, not only the next one: a fast target answers before a
        single read comes back, and then every dispatch would wait for its row.
        The rows not already read (or being read) are read in one query, one
        thread hop for the lot; the others are kept, and the rest dropped.
        """
        ahead: dict[str, Deferred[JobRow | None]] = {}
        missing: list[str] = []
        for job_id in job_ids:
            reading = self._ahead.get(job_id)
            if reading is None:
                missing.append(job_id)
            else:
                ahead[job_id] = reading
        if missing:
            batch = Deferred.fromCoroutine(self._jobs.get_rows(missing))
            waiting: dict[str, Deferred[JobRow | None]] = {j: Deferred() for j in missing}

            def spread(rows: dict[str, JobRow] | Failure) -> None:
                held = 0
                for job_id, d in waiting.items():
                    row = None if isinstance(rows, Failure) else rows.get(job_id)
                    if row is not None:
                        held += len(row.request)
                        if held > READ_AHEAD_BYTES:
                            row = None  # large requests: read when they run
                    d.callback(row)  # None: run() reads the row itself

            batch.addBoth(spread)
            ahead.update(waiting)
        self._ahead = ahead

    def stage(self, job_id: str) -> None:
        """Format the request of ``job_id`` (likely next) once its row is read ahead.

        If the next attempt is that job's, and its model is known resident
        then, the attempt's first act is one write of these bytes (ADR 0024):
        the target is handed on before the attempt's objects are built.
        """
        if self._staging == job_id:
            return
        self._staging, self._staged = job_id, None
        reading = self._ahead.get(job_id)
        if reading is None:
            return

        def format_it(row: JobRow | None) -> JobRow | None:
            if row is None or row.state != jobstate.JobState.QUEUED or self._staging != job_id:
                return row
            try:
                ready = _ready(row)
                prepared = prepare_call(self._upstream, self._token, row.endpoint, ready.body)
            except Exception:  # its attempt meets the same problem and records it
                _log.failure("job {job_id}: staging its request failed", job_id=job_id)
            else:
                self._staged = _Staged(ready, prepared)
            return row

        reading.addCallback(format_it)

    @property
    def staged_job(self) -> str | None:
        """The job whose request is formatted and ready to go out as one write."""
        return None if self._staged is None else self._staged.ready.row.id

    def _send_staged(self, job_id: str) -> _Sent | None:
        """Send ``job_id``'s staged request now, when there is one and no load comes first."""
        staged, self._staged, self._staging = self._staged, None, None
        if staged is None or staged.ready.row.id != job_id:
            return None
        ready = staged.ready
        if not self._known_loaded(ready.row, ready.request):
            return None
        self._ahead.pop(job_id, None)
        self.staged_sends += 1
        return _Sent(ready, self._upstream.send(staged.prepared))

    @property
    def backlogged(self) -> bool:
        """So many attempts are still being recorded that no job should start (ADR 0026)."""
        return self.recorder.backlogged

    def when_room(self) -> Deferred[None]:
        """Fires once a job may start again (``backlogged`` is over)."""
        return self.recorder.when_room()

    def has_ahead(self, job_id: str) -> bool:
        """Whether ``job_id``'s row is read (or being read) ahead."""
        return job_id in self._ahead

    @property
    def ahead_count(self) -> int:
        """Rows read (or being read) ahead and not used yet."""
        return len(self._ahead)

    async def _ready(self, job_id: str) -> _Ready | None:
        """The job's row, request and body: read ahead, or read now."""
        reading = self._ahead.pop(job_id, None)
        row = None if reading is None else await reading
        if row is None:
            row = await self._jobs.get_row(job_id)
        return None if row is None else _ready(row)

    async def run(self, job_id: str) -> str | None:
        """One attempt's use of the target; returns the model now resident when it got that far.

        It returns as soon as the target is free: the state writes before the
        call go out without being waited for, and what comes after it (the
        artifacts, the final state, a retry's requeue) is recorded in the
        background, so a job's bookkeeping never sits between two dispatches.
        Whatever goes wrong ends in a recorded state: a TargetError as the
        state machine decides, anything else (a bug, a disk, the database) as
        an ``internal_error`` that is retried with backoff like a target fault.
        """
        self.job_id, self.tokens, self.phase = job_id, 0, "loading"
        sent = self._send_staged(job_id)  # first: the target waits for nothing else
        self.recorder.closing = False
        self._between = None
        attempt = Attempt(job_id)
        try:
            try:
                return await self._attempt(attempt, sent)
            except TargetError as e:
                error = e
            except Exception as e:
                _log.failure("job {job_id}: the attempt raised", job_id=job_id)
                error = TargetError(INTERNAL, f"foreman failed during the attempt: {e!r}"[:500])
            if error.kind == UNREACHABLE:
                self._on_unreachable(error.message)  # before the worker picks again
            tokens = self.tokens
            recorder = self.recorder
            recorder.later(job_id, recorder.settle(attempt, error, tokens), tokens)
            return None
        finally:
            if self.job_id == job_id:  # not handed on already (``_free``)
                self.job_id, self._call, self.phase = None, None, None

    def _free(self, row: JobRow) -> None:
        """The call ended whole: the target is free for the next request (``on_free``).

        The attempt lets go of the runner's state first: the next attempt may
        start inside ``on_free``, while this one goes on to return its answer.
        """
        if self.job_id != row.id or self.on_free is None:
            return
        self.recorder.hold_tokens(row.id, self.tokens)
        self.job_id, self._call, self.phase = None, None, None
        self.on_free(row.id, row.model)

    def _write(
        self, attempt: Attempt, *transitions: jobstate.Transition, after: float = 0.0
    ) -> None:
        """Start state writes, in order, without waiting; a lost compare-and-set aborts the call.

        With ``after`` they start that many seconds later (the recorder's
        ``after_dispatch``): the attempt still waits for them before it records its end.
        """
        job_id = attempt.job_id

        def written(row: JobRow | None) -> JobRow | None:
            if row is None and self.job_id == job_id:
                self.abort(TargetError(ABORTED, "the job was cancelled"))
            return row

        pending: list[Deferred[Any]] = []
        for _ in transitions:
            d: Deferred[Any] = Deferred()
            d.addCallback(written)
            attempt.writes.append(d)
            pending.append(d)

        def start() -> None:
            for transition, d in zip(transitions, pending, strict=True):
                try:
                    Deferred.fromCoroutine(self._jobs.apply(transition)).chainDeferred(d)
                except Exception:
                    d.errback()

        if after > 0:
            self._reactor.callLater(after, start)
        else:
            start()

    async def _attempt(self, attempt: Attempt, sent: _Sent | None) -> str | None:
        job_id = attempt.job_id
        ready = sent.ready if sent is not None else await self._ready(job_id)
        if ready is None or ready.row.state != jobstate.JobState.QUEUED:
            if sent is not None:  # never: only a queued row is staged
                sent.request.cancel()
            return None
        row, request = ready.row, ready.request
        if sent is not None or self._known_loaded(row, request):
            # the request leaves first; the two state writes follow once the
            # target has taken it (ADR 0022); their compare-and-set still
            # aborts a cancelled job
            generating = Deferred.fromCoroutine(
                self._generate(row, request, ready.body, None if sent is None else sent.request)
            )
            try:
                now = self._clock.seconds()
                self._write(
                    attempt,
                    jobstate.start_loading(job_id, now),
                    jobstate.start_working(job_id, now),
                    after=self.recorder.after_dispatch,
                )
            except BaseException:  # the call is out: it must not outlive the attempt
                self.abort()
                with contextlib.suppress(Exception):
                    await generating
                raise
            self.phase = "working"
            answer = await generating
        else:
            self._write(attempt, jobstate.start_loading(job_id, self._clock.seconds()))
            await self._load(row, request)
            self._write(attempt, jobstate.start_working(job_id, self._clock.seconds()))
            self.phase = "working"
            answer = await self._generate(row, request, ready.body)
        recorder = self.recorder
        recorder.later(job_id, recorder.record(attempt, row, answer), answer.tokens)
        return row.model

    def _known_loaded(self, row: JobRow, request: dict[str, Any]) -> bool:
        """No load to do: the endpoint needs none, or the model is known to be resident."""
        if not has_preload(row.endpoint):
            return True  # embeddings: the request itself loads the model
        return self.knows_resident is not None and self.knows_resident(row.model)

    async def _load(self, row: JobRow, request: dict[str, Any]) -> None:
        preload = preload_request(row.endpoint, request)
        if preload is None:
            return
        if self.knows_resident is not None and self.knows_resident(row.model):
            return
        if await self._resident(row.model):
            return
        path, body = preload
        started = self._clock.seconds()
        await self._target(path, _encode(body), lambda data: None)
        if self.on_load is not None:
            self.on_load(row.model, self._clock.seconds() - started)

    async def _resident(self, model: str) -> bool:
        """Is ``model`` loaded? Any failure to tell means no: the explicit load then runs."""
        headers = Headers({b"User-Agent": [b"foreman-worker"]})
        if self._token:
            headers.setRawHeaders(b"Authorization", [b"Bearer " + self._token.encode()])
        asking = Deferred.fromCoroutine(
            fetch(
                self._upstream.agent,
                self._upstream.url(b"/api/ps"),
                headers,
                timeout=METADATA_TIMEOUT,
                limit=METADATA_LIMIT,
                clock=self._clock,
            )
        )
        self._asking = asking
        try:
            response, body = await asking
        except Exception:
            return False
        finally:
            self._asking = None
        listed = read_ps(body) if response.code == 200 else None
        return listed is not None and canonical_model(model) in {m.name for m in listed}

    async def _target(
        self,
        path: str,
        body: bytes,
        on_data: Callable[[bytes], None],
        on_complete: Callable[[], None] | None = None,
        sent: Deferred[IResponse] | None = None,
    ) -> int:
        received = 0

        def bounded(data: bytes) -> None:
            nonlocal received
            received += len(data)
            if received > self._max_response:
                self.abort(
                    TargetError(
                        TOO_LARGE,
                        f"the target's answer to {path} passed FOREMAN_MAX_RESPONSE "
                        f"({self._max_response} bytes)",
                    )
                )
            elif not call.aborted:
                on_data(data)

        if self._between is not None:
            if sent is not None:
                sent.cancel()
            raise self._between
        call = TargetCall(
            self._reactor,
            self._upstream,
            self._token,
            path,
            body,
            bounded,
            self._idle_timeout,
            on_complete,
            sent,
        )
        self._call = call
        try:
            return await call.run()
        finally:
            if self._call is call:  # not the next attempt's (``_free``)
                self._call = None

    async def _generate(
        self,
        row: JobRow,
        request: dict[str, Any],
        body: bytes,
        sent: Deferred[IResponse] | None = None,
    ) -> Collector:
        """The target call of the attempt; what it answered, assembled later by the recorder.

        ``sent``: the request already left (``stage``); the call takes it over.
        """
        endpoint = row.endpoint

        def on_tokens(tokens: int) -> None:
            if self.job_id == row.id:
                self.tokens = tokens
            self._jobs.hub.publish(row.id, Progress(row.id, tokens))

        try:
            # the stream.ndjson artifact, written while it arrives
            raw = (
                self._artifacts.stream(row.id, "stream.ndjson")
                if job_wants_stream(endpoint, request)
                else None
            )
            collector = Collector(
                endpoint, raw, min(self._max_response, LINE_LIMIT), self._clock.seconds, on_tokens
            )
        except BaseException:
            if sent is not None:
                sent.cancel()  # nothing would read its answer
            raise

        def on_data(data: bytes) -> None:
            try:
                collector.feed(data)
            except TargetError as e:
                self.abort(e)

        try:
            await self._target(endpoint, body, on_data, lambda: self._free(row), sent)
        except BaseException:
            if raw is not None:
                await raw.abort()  # the attempt left no result: no stream file either
            raise
        return collector
