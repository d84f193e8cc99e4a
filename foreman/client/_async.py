"""``AsyncForemanClient``: foreman's job API for Twisted code (and asyncio via the asyncio reactor).

Every call returns a Deferred (awaitable in Twisted coroutines; for asyncio,
``d.asFuture(loop)``). Calls that are safe to repeat (GET, DELETE, cancel)
are retried on connection failures with backoff; ``submit`` always sends an
``Idempotency-Key`` (a fresh uuid4 unless given), which makes it safe to
repeat too: a retried submit finds the job the first try created.
"""

from __future__ import annotations

import builtins
import functools
import uuid
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

from twisted.internet.defer import Deferred
from twisted.web.client import HTTPConnectionPool

from foreman.client._errors import (
    Conflict,
    JobCancelled,
    JobFailed,
    JobNotFound,
    WaitTimeout,
)
from foreman.client._models import Job, JobPage, JobState
from foreman.client._retry import RetryPolicy
from foreman.client._streams import EventStream, JobIterator, PullStream
from foreman.client._transport import Transport, job_path

__all__ = ["DEFAULT_TIMEOUT", "AsyncForemanClient"]

P = ParamSpec("P")
R = TypeVar("R")

DEFAULT_TIMEOUT = 30.0
# Longest single long-poll; the server allows 300 s, proxies in front often cut idle
# requests at 60-100 s, so stay under that and ask again.
LONG_POLL_SECONDS = 55.0
# foreman pings an idle event stream every 15 s; silence this long means a dead link.
EVENT_IDLE_TIMEOUT = 60.0


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
