"""Async iterators over foreman: job pages, a job's events (SSE, resumed), pull progress.

Each iterator has ``next()`` returning a Deferred (None at the end), so it
works from Twisted coroutines (``async for``), from callback-style code, from
the blocking client (one ``blockingCallFromThread`` per item) and, through
``aio()``, from asyncio coroutines. Iterators that hold a connection close it
on ``close()`` / ``async with``; they also end it when the server ends.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import deferLater

from foreman.client._errors import (
    ForemanConnectionError,
    ForemanError,
    PullFailed,
    error_from_reply,
)
from foreman.client._models import Job, JobEvent, JobPage
from foreman.client._retry import RetryPolicy, is_transient
from foreman.client._transport import (
    BodyPump,
    Transport,
    describe_failure,
    headers_of,
    is_unreachable,
    job_path,
    read_body,
)
from foreman.core.framing import FramingError, NDJSONDecoder, SSEDecoder

__all__ = ["DeferredIterator", "EventStream", "JobIterator", "PullStream"]

T = TypeVar("T")


class DeferredIterator(Generic[T]):
    """``async for`` in Twisted coroutines; ``next()`` → Deferred (None at the end)."""

    def next(self) -> Deferred[T | None]:
        raise NotImplementedError

    def close(self) -> Deferred[None]:
        return succeed(None)

    def __aiter__(self) -> DeferredIterator[T]:
        return self

    async def __anext__(self) -> T:
        item = await self.next()
        if item is None:
            raise StopAsyncIteration
        return item

    async def __aenter__(self) -> DeferredIterator[T]:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def aio(self, loop: asyncio.AbstractEventLoop | None = None) -> AsyncioIterator[T]:
        """The same items for asyncio code (Twisted's asyncio reactor must be installed)."""
        return AsyncioIterator(self, loop)


class AsyncioIterator(Generic[T]):
    """Adapts a DeferredIterator to asyncio: each Deferred becomes a Future."""

    def __init__(self, source: DeferredIterator[T], loop: asyncio.AbstractEventLoop | None) -> None:
        self._source = source
        self._loop = loop

    def __aiter__(self) -> AsyncioIterator[T]:
        return self

    async def __anext__(self) -> T:
        loop = self._loop or asyncio.get_running_loop()
        item = await self._source.next().asFuture(loop)
        if item is None:
            raise StopAsyncIteration
        return item

    async def aclose(self) -> None:
        loop = self._loop or asyncio.get_running_loop()
        await self._source.close().asFuture(loop)

    async def __aenter__(self) -> AsyncioIterator[T]:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class JobIterator(DeferredIterator[Job]):
    """Every job matching a filter, newest first, page after page (``next_after``)."""

    def __init__(self, fetch: Callable[[str | None], Deferred[JobPage]], limit: int | None) -> None:
        self._fetch = fetch
        self._left = limit
        self._buffer: deque[Job] = deque()
        self._after: str | None = None
        self._more = True

    def next(self) -> Deferred[Job | None]:
        return Deferred.fromCoroutine(self._next())

    async def _next(self) -> Job | None:
        if self._left is not None and self._left <= 0:
            return None
        while not self._buffer:
            if not self._more:
                return None
            page = await self._fetch(self._after)
            self._buffer.extend(page.jobs)
            self._more = page.has_more and page.next_after is not None
            self._after = page.next_after
        if self._left is not None:
            self._left -= 1
        return self._buffer.popleft()


class _BodyIterator(DeferredIterator[T]):
    """Items decoded from a streamed response body; subclasses open and decode."""

    def __init__(self, transport: Transport) -> None:
        self._transport = transport
        self._buffer: deque[T] = deque()
        self._pump: BodyPump | None = None
        self._wake: Deferred[None] | None = None
        self._ended = False  # nothing more will come
        self._closed = False
        self._fatal: BaseException | None = None
        self.on_close: Callable[[], None] = lambda: None

    def next(self) -> Deferred[T | None]:
        return Deferred.fromCoroutine(self._next())

    async def _next(self) -> T | None:
        while True:
            if self._closed and not self._ended:
                return None  # closed by the caller: what is still buffered is dropped
            if self._buffer:
                return self._buffer.popleft()
            if self._fatal is not None:
                fatal, self._fatal = self._fatal, None
                await self._settle()
                self._finish()
                raise fatal
            if self._ended or self._closed:
                if not self._closed:
                    await self._settle()
                self._finish()
                return None
            if self._pump is None:
                await self._open()
                continue
            self._wake = Deferred()
            await self._wake

    async def _open(self) -> None:
        raise NotImplementedError

    async def _settle(self) -> None:
        """Wait for the response to end, so its connection is back in the pool (or closed)
        when the caller learns the stream is over: ``client.close()`` then closes it."""
        pump = self._pump
        if pump is not None:
            await pump.when_lost()

    def _attach(self, response: Any, decode: Callable[[bytes], None], idle: float | None) -> None:
        pump = BodyPump(decode, self._transport.reactor, idle)
        self._pump = pump
        pump.finished.addCallback(self._lost, pump)
        response.deliverBody(pump)

    def _lost(self, complete: bool, pump: BodyPump) -> None:
        if self._pump is pump:
            self._pump = None
        self._connection_ended(complete, pump)
        self._poke()

    def _connection_ended(self, complete: bool, pump: BodyPump) -> None:
        raise NotImplementedError

    def _poke(self) -> None:
        wake, self._wake = self._wake, None
        if wake is not None and not wake.called:
            wake.callback(None)

    def _finish(self) -> None:
        if not self._closed:
            self._closed = True
            self.on_close()

    def close(self) -> Deferred[None]:
        """Stop reading: drops the connection; fires once it is gone."""
        self._finish()
        self._buffer.clear()
        pump = self._pump
        self._poke()
        if pump is None:
            return succeed(None)
        pump.stop()
        return pump.when_lost()

    async def _error_reply(self, response: Any) -> ForemanError:
        body = await read_body(response, self._transport.reactor)
        return error_from_reply(response.code, body, headers_of(response))


class EventStream(_BodyIterator[JobEvent]):
    """A job's events over SSE; a dropped connection is resumed with ``Last-Event-ID``.

    State events are never delivered twice or skipped across resumes (foreman
    replays the missed ones from its database); progress events are live only.
    The iteration ends after the terminal state event. ``connections`` counts
    the connections opened (more than one means it resumed).
    """

    def __init__(
        self,
        transport: Transport,
        job_id: str,
        last_event_id: int | None,
        retry: RetryPolicy,
        idle_timeout: float | None,
    ) -> None:
        super().__init__(transport)
        self.job_id = job_id
        self.last_event_id = last_event_id
        self.connections = 0
        self._retry = retry
        self._idle_timeout = idle_timeout
        self._failures = 0
        self._last_error: BaseException | None = None
        self._decoder = SSEDecoder()

    async def _open(self) -> None:
        path = job_path(self.job_id, "events")
        while not self._closed:
            if self._failures >= self._retry.attempts:
                raise self._transport.unreachable(
                    "GET", path, self._last_error, attempts=self._failures
                )
            if self._failures:
                delay = self._retry.delay(self._failures)
                await deferLater(self._transport.reactor, delay, lambda: None)
            headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
            if self.last_event_id is not None:
                headers["Last-Event-ID"] = str(self.last_event_id)
            try:
                response = await self._transport.open("GET", path, headers=headers)
                if response.code >= 400:
                    raise await self._error_reply(response)
            except Exception as e:
                if is_unreachable(e):
                    raise self._transport.unreachable("GET", path, e) from e
                if not is_transient(e):
                    raise
                self._failures += 1
                self._last_error = e
                continue
            if self._closed:  # closed while connecting: drop this connection
                pump = BodyPump(lambda _: None, self._transport.reactor)
                response.deliverBody(pump)
                pump.stop()
                return
            self.connections += 1
            self._decoder = SSEDecoder()
            self._attach(response, self._decode, self._idle_timeout)
            return

    def _decode(self, data: bytes) -> None:
        for sse in self._decoder.feed(data):
            try:
                event = JobEvent.parse(sse.event, sse.data, sse.id)
            except (ValueError, KeyError, TypeError) as e:
                self._fatal = ForemanError(f"malformed event from foreman: {e}", code="bad_event")
                if self._pump is not None:
                    self._pump.stop()
                return
            if event is None or self._ended:
                continue
            self._failures = 0
            if event.seq is not None:
                if self.last_event_id is not None and event.seq <= self.last_event_id:
                    continue
                self.last_event_id = event.seq
            self._buffer.append(event)
            if event.terminal:
                self._ended = True
        self._poke()

    def _connection_ended(self, complete: bool, pump: BodyPump) -> None:
        if complete:
            # foreman ends the stream only after the terminal state (or at once
            # when resumed past it): nothing more will come
            self._ended = True
        elif not self._ended:
            self._failures += 1
            self._last_error = (
                pump.reason.value if pump.reason is not None else ConnectionError("connection lost")
            )


class PullStream(_BodyIterator[dict[str, Any]]):
    """``POST /api/pull`` progress objects (Ollama's NDJSON) relayed by foreman.

    An ``{"error": …}`` line raises PullFailed; a cut connection raises
    ForemanConnectionError. Not resumed: run the pull again (Ollama resumes it).
    """

    def __init__(self, transport: Transport, model: str, insecure: bool) -> None:
        super().__init__(transport)
        self.model = model
        self._insecure = insecure
        self._decoder = NDJSONDecoder(max_line_bytes=1 << 20)
        self._opened = False

    async def _open(self) -> None:
        if self._opened:  # the one connection is over
            self._ended = True
            return
        self._opened = True
        body: dict[str, Any] = {"model": self.model, "stream": True}
        if self._insecure:
            body["insecure"] = True
        try:
            response = await self._transport.open(
                "POST", "/api/pull", body=body, headers={"Accept": "application/x-ndjson"}
            )
        except Exception as e:
            if is_transient(e) or is_unreachable(e):  # not retried: a pull is not resumed
                raise self._transport.unreachable("POST", "/api/pull", e) from e
            raise
        if response.code >= 400:
            raise await self._error_reply(response)
        self._attach(response, self._decode, None)

    def _decode(self, data: bytes) -> None:
        try:
            items = self._decoder.feed(data)
        except FramingError as e:
            items, self._fatal = e.decoded, ForemanError(str(e), code="bad_stream")
        self._take(items)

    def _take(self, items: list[dict[str, Any]]) -> None:
        for item in items:
            if self._ended:
                break
            if "error" in item:
                self._fatal = PullFailed(
                    f"pull of {self.model} failed: {item['error']}", code="pull_failed"
                )
                self._ended = True
                break
            self._buffer.append(item)
        if self._fatal is not None and self._pump is not None:
            self._pump.stop()
        self._poke()

    def _connection_ended(self, complete: bool, pump: BodyPump) -> None:
        if complete:
            try:
                self._take(self._decoder.flush())
            except FramingError as e:
                self._fatal = ForemanError(str(e), code="bad_stream")
        elif self._fatal is None and not self._ended:
            reason = describe_failure(pump.reason.value if pump.reason is not None else None, None)
            self._fatal = ForemanConnectionError(
                f"pull of {self.model} from {self._transport.base_url} cut short: {reason}"
            )
        self._ended = True
