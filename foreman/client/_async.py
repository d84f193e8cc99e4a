"""``AsyncForemanClient``: foreman's job API for Twisted code (and asyncio via the asyncio reactor).

Every call returns a Deferred (awaitable in Twisted coroutines; for asyncio,
``d.asFuture(loop)``). Calls that are safe to repeat (GET, DELETE, cancel)
are retried on connection failures with backoff; ``submit`` always sends an
``Idempotency-Key`` (a fresh uuid4 unless given), which makes it safe to
repeat too: a retried submit finds the job the first try created.

OpenAI batches (``/v1/files``, ``/v1/batches``) have calls of their own:
``upload_file`` streams the file from disk, ``wait_batch`` long-polls with
foreman's ``?wait=`` extension, ``batch_output`` parses the result lines.
"""

from __future__ import annotations

import builtins
import contextlib
import functools
import io
import os
import uuid
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, BinaryIO, ParamSpec, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.task import Cooperator, deferLater
from twisted.web.client import HTTPConnectionPool

from foreman.client._errors import (
    BatchNotFound,
    Conflict,
    FileNotFound,
    ForemanError,
    JobCancelled,
    JobFailed,
    JobNotFound,
    WaitTimeout,
)
from foreman.client._models import (
    Batch,
    BatchPage,
    BatchResult,
    BatchStatus,
    FileObject,
    FilePage,
    Job,
    JobPage,
    JobState,
    QueueActivity,
    QueueState,
    parse_results,
)
from foreman.client._retry import RetryPolicy
from foreman.client._streams import EventStream, JobIterator, PullStream
from foreman.client._transport import Transport, job_path, v1_path
from foreman.client._upload import FileArg, MultipartUpload, UploadSource, open_source

__all__ = [
    "DEFAULT_BATCH_ENDPOINT",
    "DEFAULT_TIMEOUT",
    "AsyncForemanClient",
    "batch_timeout",
    "next_poll",
]

P = ParamSpec("P")
R = TypeVar("R")

DEFAULT_TIMEOUT = 30.0
# Longest single long-poll; the server allows 300 s, proxies in front often cut idle
# requests at 60-100 s, so stay under that and ask again.
LONG_POLL_SECONDS = 55.0
# foreman pings an idle event stream every 15 s; silence this long means a dead link.
EVENT_IDLE_TIMEOUT = 60.0
DEFAULT_BATCH_ENDPOINT = "/v1/chat/completions"
# the longest ?wait= foreman accepts
MAX_WAIT_SECONDS = 300.0
# wait_batch asks at most this often: a busy batch changes its counts many times a
# second, and each change answers a long-poll at once
MIN_POLL_INTERVAL = 0.5


def next_poll(
    now: float, deadline: float | None, asked: float | None
) -> tuple[float | None, float]:
    """For ``wait_batch``: (seconds left or None, pause before asking again).

    ``asked`` is when the previous request went out (None before the first):
    requests are at least MIN_POLL_INTERVAL apart, and never pause past the deadline.
    """
    left = None if deadline is None else max(0.0, deadline - now)
    pause = 0.0 if asked is None else max(0.0, asked + MIN_POLL_INTERVAL - now)
    if left is not None:
        pause = min(pause, left)
    return left, pause


def _deferred(f: Callable[P, Coroutine[Any, Any, R]]) -> Callable[P, Deferred[R]]:
    """Expose a coroutine method as one returning a Deferred (usable from any framework)."""

    @functools.wraps(f)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> Deferred[R]:
        return Deferred.fromCoroutine(f(*args, **kwargs))

    return wrapper


class AsyncForemanClient:
    """A client of one foreman daemon.

    ``base_url`` without a scheme means ``http://`` (``localhost:8080``); one
    that is still unusable raises InvalidURL here rather than at the first call.
    ``reactor`` defaults to the global one; ``pool`` to a private persistent
    connection pool (closed by :meth:`close`; a pool you pass stays yours).
    ``timeout`` bounds each HTTP exchange (not a job: see ``wait``/``run``).
    ``retry`` says how often and how patiently safe calls are retried.
    """

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        reactor: Any = None,
        pool: HTTPConnectionPool | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self._reactor = reactor
        self._own_pool = pool is None
        if pool is None:
            pool = HTTPConnectionPool(reactor, persistent=True)
            pool.maxPersistentPerHost = 8
        self._pool = pool
        self._retry = retry or RetryPolicy()
        self._transport = Transport(base_url, token, reactor, pool, timeout, self._retry)
        self._streams: set[EventStream | PullStream] = set()

    @property
    def base_url(self) -> str:
        return self._transport.base_url

    # -- jobs

    @_deferred
    async def submit(
        self,
        request: dict[str, Any],
        endpoint: str = "/api/chat",
        webhook_url: str | None = None,
        priority: int = 0,
        metadata: Any = None,
        idempotency_key: str | None = None,
    ) -> Job:
        """Create a job; ``request`` is the body Ollama would get (``model`` required)."""
        body: dict[str, Any] = {"endpoint": endpoint, "request": request, "priority": priority}
        if webhook_url is not None:
            body["webhook_url"] = webhook_url
        if metadata is not None:
            body["metadata"] = metadata
        key = idempotency_key or str(uuid.uuid4())
        reply = await self._transport.call(
            "POST", "/jobs", body=body, headers={"Idempotency-Key": key}
        )
        return reply.parse(Job.from_dict)

    @_deferred
    async def get(self, job_id: str) -> Job:
        return await self._get(job_id)

    async def _get(self, job_id: str, wait: float | None = None) -> Job:
        params = None
        timeout = None
        if wait is not None:
            params = {"wait": f"{max(0.0, wait):.3f}"}
            timeout = wait + self._transport.timeout
        reply = await self._transport.call("GET", job_path(job_id), params=params, timeout=timeout)
        return reply.parse(Job.from_dict)

    @_deferred
    async def list_page(
        self,
        state: JobState | str | None = None,
        model: str | None = None,
        limit: int | None = None,
        after: str | None = None,
    ) -> JobPage:
        """One page of jobs, newest first; ``page.next_after`` continues it."""
        params: dict[str, str] = {}
        if state is not None:
            params["state"] = str(state)
        if model is not None:
            params["model"] = model
        if limit is not None:
            params["limit"] = str(limit)
        if after is not None:
            params["after"] = after
        reply = await self._transport.call("GET", "/jobs", params=params)
        return reply.parse(JobPage.from_dict)

    @_deferred
    async def wait(self, job_id: str, timeout: float | None = None) -> Job:
        """The job once it is done, failed or cancelled (long-polls; no busy polling).

        Raises WaitTimeout (with the last seen job) after ``timeout`` seconds;
        the job itself goes on.
        """
        return await self._wait(job_id, timeout)

    async def _wait(self, job_id: str, timeout: float | None) -> Job:
        clock = self._reactor
        deadline = None if timeout is None else clock.seconds() + timeout
        job: Job | None = None
        while True:
            chunk = LONG_POLL_SECONDS
            if deadline is not None:
                left = deadline - clock.seconds()
                if left <= 0 and job is not None:
                    raise WaitTimeout(
                        f"job {job_id} still {job.state.value} after {timeout:g} s", job
                    )
                chunk = max(0.0, min(chunk, left))
            job = await self._get(job_id, wait=chunk)
            if job.terminal:
                return job

    @_deferred
    async def cancel(self, job_id: str) -> Job:
        """Cancel a queued or running job; Conflict if it has already finished."""
        try:
            reply = await self._transport.call("POST", job_path(job_id, "cancel"))
        except Conflict as e:
            if e.attempt > 1 and e.code == "not_cancellable":
                job = await self._get(job_id)  # an earlier try cancelled it; its reply was lost
                if job.state is JobState.CANCELLED:
                    return job
            raise
        return reply.parse(Job.from_dict)

    @_deferred
    async def delete(self, job_id: str) -> None:
        """Delete a finished job and its artifacts; Conflict while it is not finished."""
        try:
            await self._transport.call("DELETE", job_path(job_id))
        except JobNotFound as e:
            if e.attempt == 1:  # else an earlier try deleted it and its reply was lost
                raise

    @_deferred
    async def artifact(self, job_id: str, name: str) -> bytes:
        """An artifact's bytes: ``request.json``, ``response.json`` or ``stream.ndjson``."""
        reply = await self._transport.call(
            "GET", job_path(job_id, "artifacts", name), headers={"Accept": "*/*"}
        )
        return reply.body

    def events(
        self,
        job_id: str,
        last_event_id: int | None = None,
        *,
        idle_timeout: float | None = EVENT_IDLE_TIMEOUT,
    ) -> EventStream:
        """The job's events from ``last_event_id`` on (all when None), to its terminal state.

        Use ``async for event in client.events(id)``; ``async with`` (or
        ``close()``) when you may stop early, so the connection is closed.
        """
        stream = EventStream(self._transport, job_id, last_event_id, self._retry, idle_timeout)
        self._track(stream)
        return stream

    @_deferred
    async def run(
        self,
        request: dict[str, Any],
        endpoint: str = "/api/chat",
        webhook_url: str | None = None,
        priority: int = 0,
        metadata: Any = None,
        idempotency_key: str | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """Submit, wait, and return the response Ollama would give with ``stream: false``.

        Raises JobFailed / JobCancelled (``e.job`` is the final job) when it did
        not end ``done``, WaitTimeout after ``timeout`` seconds.
        """
        job = await self.submit(request, endpoint, webhook_url, priority, metadata, idempotency_key)
        final = await self._wait(job.id, timeout)
        return await self._result_of(final)

    async def _result_of(self, job: Job) -> dict[str, Any]:
        if job.state is JobState.FAILED:
            raise JobFailed(job)
        if job.state is JobState.CANCELLED:
            raise JobCancelled(job)
        if job.result is not None:
            return job.result
        # over the inline limit (64 KiB): the artifact has it
        reply = await self._transport.call("GET", job_path(job.id, "artifacts", "response.json"))
        result: dict[str, Any] = reply.json()
        return result

    @_deferred
    async def result(self, job: Job) -> dict[str, Any]:
        """The response of a finished job (fetches ``response.json`` when not inline)."""
        return await self._result_of(job)

    # -- models on the target (through foreman)

    def pull(self, model: str, *, insecure: bool = False) -> PullStream:
        """Pull a model onto the target through foreman: Ollama's progress objects."""
        stream = PullStream(self._transport, model, insecure)
        self._track(stream)
        return stream

    def list(
        self,
        state: JobState | str | None = None,
        model: str | None = None,
        limit: int | None = None,
        *,
        page_size: int = 100,
    ) -> JobIterator:
        """Every matching job, newest first, across pages; at most ``limit`` when given."""
        size = page_size if limit is None else max(1, min(page_size, limit))

        def fetch(after: str | None) -> Deferred[JobPage]:
            return self.list_page(state, model, size, after)

        return JobIterator(fetch, limit)

    # -- files (OpenAI's /v1/files)

    @_deferred
    async def upload_file(
        self, file: FileArg, purpose: str = "batch", filename: str | None = None
    ) -> FileObject:
        """Upload a file (a path or a binary file object, read from its current position).

        Streamed from disk in chunks (never read whole); ``filename`` defaults
        to the path's last part. Not retried once the body went out whole (it
        would upload twice); PayloadTooLarge (413) when over foreman's limit.
        """
        source = open_source(file, filename)
        try:
            return await self._upload(source, purpose)
        finally:
            source.close()

    @_deferred
    async def _upload_source(self, source: UploadSource, purpose: str) -> FileObject:
        return await self._upload(source, purpose)  # the blocking client opens the file

    async def _upload(self, source: UploadSource, purpose: str) -> FileObject:
        reactor = self._reactor
        cooperator = Cooperator(scheduler=lambda work: reactor.callLater(0, work))
        producer = MultipartUpload(source, {"purpose": purpose}, cooperator=cooperator)
        try:
            reply = await self._transport.upload("/v1/files", producer)
        finally:
            cooperator.stop()
        return reply.parse(FileObject.from_dict)

    @_deferred
    async def get_file(self, file_id: str) -> FileObject:
        reply = await self._transport.call("GET", v1_path("files", file_id), not_found=FileNotFound)
        return reply.parse(FileObject.from_dict)

    @_deferred
    async def list_files(
        self, purpose: str | None = None, after: str | None = None, limit: int | None = None
    ) -> FilePage:
        """One page of files; ``page.next_after`` continues it."""
        params = _params(purpose=purpose, after=after, limit=limit)
        reply = await self._transport.call("GET", "/v1/files", params=params)
        return reply.parse(FilePage.from_dict)

    @_deferred
    async def file_content(self, file_id: str) -> bytes:
        """A file's bytes (for a large file, ``download_file`` writes it out as it comes)."""
        buffer = io.BytesIO()

        def restart() -> None:
            buffer.seek(0)
            buffer.truncate()

        await self._transport.download(
            v1_path("files", file_id, "content"), buffer.write, restart, FileNotFound
        )
        return buffer.getvalue()

    @_deferred
    async def download_file(self, file_id: str, dest: str | os.PathLike[str] | BinaryIO) -> int:
        """Write a file's bytes to ``dest`` as they arrive; the number of bytes.

        A path is written to ``<dest>.part`` first and renamed when complete
        (nothing is left behind on failure); a binary file object is written
        from its current position and left open.
        """
        path = v1_path("files", file_id, "content")
        if not isinstance(dest, str | os.PathLike):
            start = dest.tell() if _seekable(dest) else None

            def rewind() -> None:
                assert start is not None
                dest.seek(start)
                dest.truncate()

            return await self._transport.download(
                path, dest.write, rewind if start is not None else None, FileNotFound
            )
        partial = _PartialFile(os.fspath(dest))
        try:
            size = await self._transport.download(
                path, partial.write, partial.restart, FileNotFound
            )
        except BaseException:
            partial.discard()
            raise
        partial.commit()
        return size

    @_deferred
    async def delete_file(self, file_id: str) -> None:
        """Delete a file; Conflict while it is the input of a running batch."""
        try:
            await self._transport.call("DELETE", v1_path("files", file_id), not_found=FileNotFound)
        except FileNotFound as e:
            if e.attempt == 1:  # else an earlier try deleted it and its reply was lost
                raise

    # -- batches (OpenAI's /v1/batches)

    @_deferred
    async def create_batch(
        self,
        input_file_id: str,
        endpoint: str = DEFAULT_BATCH_ENDPOINT,
        *,
        metadata: Mapping[str, str] | None = None,
        webhook_url: str | None = None,
        completion_window: str = "24h",
    ) -> Batch:
        """Start a batch over an uploaded JSONL file (``purpose="batch"``).

        ``webhook_url`` goes into ``metadata`` (foreman then sends ``batch.*``
        webhooks there). Not retried after the request went out.
        """
        return await self._create_batch(
            input_file_id, endpoint, metadata, webhook_url, completion_window
        )

    async def _create_batch(
        self,
        input_file_id: str,
        endpoint: str,
        metadata: Mapping[str, str] | None,
        webhook_url: str | None,
        completion_window: str,
    ) -> Batch:
        body: dict[str, Any] = {
            "input_file_id": input_file_id,
            "endpoint": endpoint,
            "completion_window": completion_window,
        }
        meta = dict(metadata or {})
        if webhook_url is not None:
            meta["webhook_url"] = webhook_url
        if meta:
            body["metadata"] = meta
        reply = await self._transport.call(
            "POST", "/v1/batches", body=body, retry=False, not_found=FileNotFound
        )
        return reply.parse(Batch.from_dict)

    @_deferred
    async def submit_batch(
        self,
        file: FileArg,
        endpoint: str = DEFAULT_BATCH_ENDPOINT,
        *,
        metadata: Mapping[str, str] | None = None,
        webhook_url: str | None = None,
    ) -> Batch:
        """Upload a JSONL file and start a batch over it (``upload_file`` + ``create_batch``)."""
        source = open_source(file)
        try:
            uploaded = await self._upload(source, "batch")
        finally:
            source.close()
        return await self._create_batch(uploaded.id, endpoint, metadata, webhook_url, "24h")

    @_deferred
    async def _submit_source(
        self,
        source: UploadSource,
        endpoint: str,
        metadata: Mapping[str, str] | None,
        webhook_url: str | None,
    ) -> Batch:
        uploaded = await self._upload(source, "batch")
        return await self._create_batch(uploaded.id, endpoint, metadata, webhook_url, "24h")

    @_deferred
    async def get_batch(self, batch_id: str) -> Batch:
        return await self._get_batch(batch_id)

    async def _get_batch(
        self, batch_id: str, wait: float | None = None, last: Batch | None = None
    ) -> Batch:
        params = None
        timeout = None
        if wait is not None and last is not None:
            params = {
                "wait": f"{max(0.0, wait):.3f}",
                "status": last.status.value,
                "done": str(last.request_counts.done),
            }
            timeout = wait + self._transport.timeout
        reply = await self._transport.call(
            "GET",
            v1_path("batches", batch_id),
            params=params,
            timeout=timeout,
            not_found=BatchNotFound,
        )
        return reply.parse(Batch.from_dict)

    @_deferred
    async def list_batches(self, after: str | None = None, limit: int | None = 20) -> BatchPage:
        """One page of batches, newest first; ``page.next_after`` continues it."""
        params = _params(after=after, limit=limit)
        reply = await self._transport.call("GET", "/v1/batches", params=params)
        return reply.parse(BatchPage.from_dict)

    @_deferred
    async def cancel_batch(self, batch_id: str) -> Batch:
        """Cancel a batch: ``cancelling`` until its running line stops, then ``cancelled``."""
        path = v1_path("batches", batch_id, "cancel")
        try:
            reply = await self._transport.call("POST", path, not_found=BatchNotFound)
        except Conflict as e:
            if e.attempt > 1:  # an earlier try cancelled it; its reply was lost
                batch = await self._get_batch(batch_id)
                if batch.status in (BatchStatus.CANCELLING, BatchStatus.CANCELLED):
                    return batch
            raise
        return reply.parse(Batch.from_dict)

    @_deferred
    async def wait_batch(
        self,
        batch_id: str,
        timeout: float | None = None,
        on_progress: Callable[[Batch], None] | None = None,
    ) -> Batch:
        """The batch once it is completed, failed, expired or cancelled.

        Long-polls (``?wait=`` with the last seen status and count: foreman
        answers when either changes), so no busy polling; ``on_progress`` is
        called with every batch seen, the first and the final one included.
        Raises WaitTimeout (``e.batch`` is the last seen) after ``timeout`` s;
        the batch itself goes on.
        """
        clock = self._reactor
        deadline = None if timeout is None else clock.seconds() + timeout
        batch: Batch | None = None
        asked: float | None = None
        while True:
            if batch is not None and deadline is not None and clock.seconds() >= deadline:
                raise batch_timeout(batch, timeout or 0.0)
            now = clock.seconds()
            left, pause = next_poll(now, deadline, asked)
            asked = now + pause
            batch = await self._batch_step(batch_id, batch, left, pause)
            if on_progress is not None:
                on_progress(batch)
            if batch.terminal:
                return batch

    @_deferred
    async def _batch_step(
        self, batch_id: str, last: Batch | None, left: float | None, pause: float
    ) -> Batch:
        """One look for wait_batch: at once the first time, then a long-poll for a change."""
        if last is None:
            return await self._get_batch(batch_id)
        if pause > 0:
            await deferLater(self._reactor, pause, lambda: None)
        chunk = (
            LONG_POLL_SECONDS if left is None else max(0.0, min(LONG_POLL_SECONDS, left - pause))
        )
        return await self._get_batch(batch_id, wait=chunk, last=last)

    @_deferred
    async def batch_output(self, batch_id: str, errors: bool = False) -> builtins.list[BatchResult]:
        """The result lines of the batch's output file (``errors``: of its error file).

        An empty list while the batch has no such file (not finished, or no
        line ended that way).
        """
        batch = await self._get_batch(batch_id)
        file_id = batch.error_file_id if errors else batch.output_file_id
        if file_id is None:
            return []
        data = await self.file_content(file_id)
        try:
            return parse_results(data)
        except (ValueError, KeyError, TypeError) as e:
            raise ForemanError(
                f"file {file_id} is not a batch result file: {e}", code="bad_reply"
            ) from e

    # -- the queue as a whole: pause, resume, drain; activity (what keep-awake follows)

    @_deferred
    async def queue_state(self, limit: int | None = None) -> QueueState:
        """Whether foreman dispatches (paused, draining …) and the first waiting items.

        ``limit`` caps ``items`` (foreman's default is 100).
        """
        reply = await self._transport.call("GET", "/queue", params=_params(limit=limit))
        data = reply.json()
        if isinstance(data, dict) and data.get("object") == "queue" and "state" not in data:
            raise ForemanError(
                f"{reply.request} has no queue state: this foreman predates pause and resume",
                code="unsupported",
                status=reply.status,
            )
        return reply.parse(QueueState.from_dict)

    @_deferred
    async def pause(self) -> QueueState:
        """Stop dispatching (running work goes on; new work queues); kept across restarts.

        Idempotent: pausing a paused queue changes nothing (``since`` stays).
        """
        reply = await self._transport.call("POST", "/queue/pause")
        return reply.parse(QueueState.from_dict)

    @_deferred
    async def resume(self) -> QueueState:
        """Dispatch again after ``pause`` or ``drain`` (nothing happens if not paused)."""
        reply = await self._transport.call("POST", "/queue/resume")
        return reply.parse(QueueState.from_dict)

    @_deferred
    async def drain(self, wait: float | None = None) -> QueueState:
        """Pause and let the running work end: the state says ``drained`` once nothing runs.

        Without ``wait`` the answer comes at once; with it, once drained or
        after ``wait`` seconds (``math.inf``: until drained), whichever is
        first: long-polls of at most 55 s (draining again is harmless).
        Check ``.drained`` on the result: a timeout is not an error.
        """
        if wait is None:
            return await self._drain(None)
        clock = self._reactor
        deadline = clock.seconds() + max(0.0, wait)
        while True:
            left = max(0.0, deadline - clock.seconds())
            state = await self._drain(min(LONG_POLL_SECONDS, left))
            if state.drained or clock.seconds() >= deadline:
                return state

    async def _drain(self, wait: float | None) -> QueueState:
        params = None
        timeout = None
        if wait is not None:
            params = {"wait": f"{wait:.3f}"}
            timeout = wait + self._transport.timeout
        reply = await self._transport.call("POST", "/queue/drain", params=params, timeout=timeout)
        return reply.parse(QueueState.from_dict)

    @_deferred
    async def activity(self, wait: float = 0.0, busy: bool | None = None) -> QueueActivity:
        """Whether work is queued or running (``busy``), and the counts.

        A long-poll: given ``busy`` as you last saw it, foreman answers as soon
        as it differs, or after ``wait`` seconds (at most 300) unchanged; with
        ``busy=None`` it answers at once. Following foreman this way costs one
        request per change (and one per ``wait`` while nothing changes).
        """
        wait = min(max(0.0, wait), MAX_WAIT_SECONDS)
        params = {"wait": f"{wait:.3f}"}
        if busy is not None:
            params["busy"] = "true" if busy else "false"
        reply = await self._transport.call(
            "GET", "/queue/activity", params=params, timeout=wait + self._transport.timeout
        )
        return reply.parse(QueueActivity.from_dict)

    # -- lifetime

    def _track(self, stream: EventStream | PullStream) -> None:
        self._streams.add(stream)
        stream.on_close = lambda: self._streams.discard(stream)

    @_deferred
    async def close(self) -> None:
        """Close open streams and (if it is ours) the connection pool."""
        for stream in builtins.list(self._streams):
            await stream.close()
        if self._own_pool:
            await self._pool.closeCachedConnections()

    async def __aenter__(self) -> AsyncForemanClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def _params(**given: str | int | None) -> dict[str, str]:
    return {name: str(value) for name, value in given.items() if value is not None}


def _seekable(file: BinaryIO) -> bool:
    try:
        return bool(file.seekable())
    except (AttributeError, ValueError, OSError):
        return False


def batch_timeout(batch: Batch, timeout: float) -> WaitTimeout:
    return WaitTimeout(
        f"batch {batch.id} still {batch.status.value} after {timeout:g} s", batch=batch
    )


class _PartialFile:
    """``<path>.part``, renamed to ``path`` once complete, removed on failure."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.partial = path + ".part"
        self._file = open(self.partial, "wb")  # noqa: SIM115 (closed by commit or discard)

    def write(self, data: bytes) -> None:
        self._file.write(data)

    def restart(self) -> None:
        self._file.seek(0)
        self._file.truncate()

    def commit(self) -> None:
        self._file.close()
        os.replace(self.partial, self.path)

    def discard(self) -> None:
        self._file.close()
        with contextlib.suppress(OSError):
            os.unlink(self.partial)
