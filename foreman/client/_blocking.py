"""``ForemanClient``: the same calls as AsyncForemanClient, blocking, for code without a reactor.

Each call is handed to the reactor thread (``blockingCallFromThread``) and
waits for its result; the reactor thread is shared by every ForemanClient in
the process, so any number of threads may call at once.
"""

from __future__ import annotations

import builtins
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, BinaryIO, Generic, TypeVar

from twisted.internet import threads
from twisted.internet.defer import Deferred, succeed

from foreman.client._async import (
    DEFAULT_BATCH_ENDPOINT,
    DEFAULT_TIMEOUT,
    AsyncForemanClient,
    batch_timeout,
    next_poll,
)
from foreman.client._models import (
    Batch,
    BatchPage,
    BatchResult,
    FileObject,
    FilePage,
    Job,
    JobEvent,
    JobPage,
    JobState,
    QueueActivity,
    QueueState,
)
from foreman.client._retry import RetryPolicy
from foreman.client._streams import DeferredIterator, EventStream, PullStream
from foreman.client._thread import reactor_for_blocking
from foreman.client._upload import FileArg, open_source
from foreman.client._url import base_url as base_url_of

__all__ = ["BlockingIterator", "ForemanClient"]

T = TypeVar("T")
R = TypeVar("R")

# typed at the edge: Twisted's signature (a callable returning R or Deferred[R]) is
# more than mypy can solve for the lambdas below
_blocking_call: Any = threads.blockingCallFromThread


class BlockingIterator(Generic[T]):
    """A plain iterator over a DeferredIterator; ``source`` is the underlying stream."""

    def __init__(self, client: ForemanClient, source: DeferredIterator[T]) -> None:
        self._client = client
        self.source = source

    def __iter__(self) -> BlockingIterator[T]:
        return self

    def __next__(self) -> T:
        item: T | None = self._client._in_reactor(lambda _: self.source.next())
        if item is None:
            raise StopIteration
        return item

    def close(self) -> None:
        self._client._in_reactor(lambda _: self.source.close())

    def __enter__(self) -> BlockingIterator[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ForemanClient:
    """A blocking client of one foreman daemon (see AsyncForemanClient for the calls)."""

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
    ) -> None:
        self._base_url = base_url_of(base_url)  # an unusable URL fails here, not at first use
        self._token = token
        self._timeout = timeout
        self._retry = retry
        self._client: AsyncForemanClient | None = None
        self._lock = threading.Lock()

    @property
    def base_url(self) -> str:
        return self._base_url

    def _in_reactor(self, call: Callable[[AsyncForemanClient], Deferred[R]]) -> R:
        """Run ``call`` with the async client on the reactor thread; wait for its result."""
        reactor = reactor_for_blocking()
        with self._lock:
            if self._client is None:
                self._client = _blocking_call(reactor, self._make, reactor)
            client = self._client
        result: R = _blocking_call(reactor, call, client)
        return result

    def _make(self, reactor: Any) -> AsyncForemanClient:
        return AsyncForemanClient(
            self._base_url, self._token, reactor=reactor, timeout=self._timeout, retry=self._retry
        )

    def submit(
        self,
        request: dict[str, Any],
        endpoint: str = "/api/chat",
        webhook_url: str | None = None,
        priority: int = 0,
        metadata: Any = None,
        idempotency_key: str | None = None,
    ) -> Job:
        return self._in_reactor(
            lambda c: c.submit(request, endpoint, webhook_url, priority, metadata, idempotency_key)
        )

    def get(self, job_id: str) -> Job:
        return self._in_reactor(lambda c: c.get(job_id))

    def list_page(
        self,
        state: JobState | str | None = None,
        model: str | None = None,
        limit: int | None = None,
        after: str | None = None,
    ) -> JobPage:
        return self._in_reactor(lambda c: c.list_page(state, model, limit, after))

    def wait(self, job_id: str, timeout: float | None = None) -> Job:
        return self._in_reactor(lambda c: c.wait(job_id, timeout))

    def cancel(self, job_id: str) -> Job:
        return self._in_reactor(lambda c: c.cancel(job_id))

    def delete(self, job_id: str) -> None:
        self._in_reactor(lambda c: c.delete(job_id))

    def artifact(self, job_id: str, name: str) -> bytes:
        return self._in_reactor(lambda c: c.artifact(job_id, name))

    def events(
        self, job_id: str, last_event_id: int | None = None, *, idle_timeout: float | None = 60.0
    ) -> BlockingIterator[JobEvent]:
        """Iterate the job's events; use ``with`` (or ``close()``) if you may stop early."""
        stream: EventStream = self._in_reactor(
            lambda c: succeed(c.events(job_id, last_event_id, idle_timeout=idle_timeout))
        )
        return BlockingIterator(self, stream)

    def run(
        self,
        request: dict[str, Any],
        endpoint: str = "/api/chat",
        webhook_url: str | None = None,
        priority: int = 0,
        metadata: Any = None,
        idempotency_key: str | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        return self._in_reactor(
            lambda c: c.run(
                request, endpoint, webhook_url, priority, metadata, idempotency_key, timeout
            )
        )

    def result(self, job: Job) -> dict[str, Any]:
        return self._in_reactor(lambda c: c.result(job))

    def pull(self, model: str, *, insecure: bool = False) -> BlockingIterator[dict[str, Any]]:
        stream: PullStream = self._in_reactor(lambda c: succeed(c.pull(model, insecure=insecure)))
        return BlockingIterator(self, stream)

    def list(
        self,
        state: JobState | str | None = None,
        model: str | None = None,
        limit: int | None = None,
        *,
        page_size: int = 100,
    ) -> Iterator[Job]:
        """Every matching job, newest first; pages are fetched as the iteration goes."""
        source = self._in_reactor(
            lambda c: succeed(c.list(state, model, limit, page_size=page_size))
        )
        return BlockingIterator(self, source)

    # -- files and batches

    def upload_file(
        self, file: FileArg, purpose: str = "batch", filename: str | None = None
    ) -> FileObject:
        source = open_source(file, filename)  # opened (or spooled) on this thread
        try:
            return self._in_reactor(lambda c: c._upload_source(source, purpose))
        finally:
            source.close()

    def get_file(self, file_id: str) -> FileObject:
        return self._in_reactor(lambda c: c.get_file(file_id))

    def list_files(
        self, purpose: str | None = None, after: str | None = None, limit: int | None = None
    ) -> FilePage:
        return self._in_reactor(lambda c: c.list_files(purpose, after, limit))

    def file_content(self, file_id: str) -> bytes:
        return self._in_reactor(lambda c: c.file_content(file_id))

    def download_file(self, file_id: str, dest: str | os.PathLike[str] | BinaryIO) -> int:
        return self._in_reactor(lambda c: c.download_file(file_id, dest))

    def delete_file(self, file_id: str) -> None:
        self._in_reactor(lambda c: c.delete_file(file_id))

    def create_batch(
        self,
        input_file_id: str,
        endpoint: str = DEFAULT_BATCH_ENDPOINT,
        *,
        metadata: Mapping[str, str] | None = None,
        webhook_url: str | None = None,
        completion_window: str = "24h",
    ) -> Batch:
        return self._in_reactor(
            lambda c: c.create_batch(
                input_file_id,
                endpoint,
                metadata=metadata,
                webhook_url=webhook_url,
                completion_window=completion_window,
            )
        )

    def submit_batch(
        self,
        file: FileArg,
        endpoint: str = DEFAULT_BATCH_ENDPOINT,
        *,
        metadata: Mapping[str, str] | None = None,
        webhook_url: str | None = None,
    ) -> Batch:
        source = open_source(file)
        try:
            return self._in_reactor(
                lambda c: c._submit_source(source, endpoint, metadata, webhook_url)
            )
        finally:
            source.close()

    def get_batch(self, batch_id: str) -> Batch:
        return self._in_reactor(lambda c: c.get_batch(batch_id))

    def list_batches(self, after: str | None = None, limit: int | None = 20) -> BatchPage:
        return self._in_reactor(lambda c: c.list_batches(after, limit))

    def cancel_batch(self, batch_id: str) -> Batch:
        return self._in_reactor(lambda c: c.cancel_batch(batch_id))

    def wait_batch(
        self,
        batch_id: str,
        timeout: float | None = None,
        on_progress: Callable[[Batch], None] | None = None,
    ) -> Batch:
        """As AsyncForemanClient.wait_batch; ``on_progress`` is called on this thread."""
        deadline = None if timeout is None else time.monotonic() + timeout
        batch: Batch | None = None
        asked: float | None = None
        while True:
            now = time.monotonic()
            if batch is not None and deadline is not None and now >= deadline:
                raise batch_timeout(batch, timeout or 0.0)
            left, pause = next_poll(now, deadline, asked)
            asked = now + pause
            batch = self._batch_step(batch_id, batch, left, pause)
            if on_progress is not None:
                on_progress(batch)
            if batch.terminal:
                return batch

    def _batch_step(
        self, batch_id: str, last: Batch | None, left: float | None, pause: float
    ) -> Batch:
        return self._in_reactor(lambda c: c._batch_step(batch_id, last, left, pause))

    def batch_output(self, batch_id: str, errors: bool = False) -> builtins.list[BatchResult]:
        return self._in_reactor(lambda c: c.batch_output(batch_id, errors))

    # -- the queue as a whole

    def queue_state(self, limit: int | None = None) -> QueueState:
        return self._in_reactor(lambda c: c.queue_state(limit))

    def pause(self) -> QueueState:
        return self._in_reactor(lambda c: c.pause())

    def resume(self) -> QueueState:
        return self._in_reactor(lambda c: c.resume())

    def drain(self, wait: float | None = None) -> QueueState:
        """As AsyncForemanClient.drain: blocks until drained or ``wait`` s passed."""
        return self._in_reactor(lambda c: c.drain(wait))

    def activity(self, wait: float = 0.0, busy: bool | None = None) -> QueueActivity:
        """As AsyncForemanClient.activity: blocks up to ``wait`` s while ``busy`` holds."""
        return self._in_reactor(lambda c: c.activity(wait, busy))

    def close(self) -> None:
        """Close this client's connections (the shared reactor thread keeps running)."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            _blocking_call(reactor_for_blocking(), client.close)

    def __enter__(self) -> ForemanClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
