"""HTTP to foreman on treq: one exchange, bounded in time; retries of safe calls; bodies.

Bodies are read with a small protocol of our own rather than ``treq.content``
so that reading can be cancelled (a timeout or ``close()`` drops the
connection instead of leaving it half-read) and so that streams (SSE, NDJSON)
are delivered chunk by chunk.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any, TypeVar, cast
from urllib.parse import quote

from attrs import frozen
from treq.client import HTTPClient
from twisted.internet import error as neterror
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.defer import TimeoutError as DeferTimeout
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.web._newclient import RequestNotSent, RequestTransmissionFailed
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone
from twisted.web.http import PotentialDataLoss

from foreman.client._errors import (
    ForemanConnectionError,
    ForemanError,
    NotFound,
    error_from_reply,
)
from foreman.client._retry import RetryPolicy, is_transient
from foreman.client._upload import MultipartUpload
from foreman.client._url import base_url as normalized_base_url

__all__ = [
    "BodyPump",
    "Reply",
    "Transport",
    "describe_failure",
    "headers_of",
    "is_unreachable",
    "job_path",
    "read_body",
    "v1_path",
]

USER_AGENT = "foreman-client/0.1"
T = TypeVar("T")
_Headers = dict[bytes | str, list[bytes | str]]


def job_path(job_id: str, *rest: str) -> str:
    """``/jobs/{id}/…`` with every segment percent-encoded (ids come from users)."""
    parts = [quote(job_id, safe=""), *(quote(r, safe="") for r in rest)]
    return "/jobs/" + "/".join(parts)


def v1_path(kind: str, object_id: str | None = None, *rest: str) -> str:
    """``/v1/{kind}[/{id}/…]`` with the id and the rest percent-encoded."""
    parts = [kind] + [quote(p, safe="") for p in (object_id, *rest) if p is not None]
    return "/v1/" + "/".join(parts)


# failures of a request that was certainly not acted upon: no connection, or the
# body was not sent whole (an upload is created only from a complete body)
_NOT_DELIVERED = (neterror.ConnectError, RequestNotSent, RequestTransmissionFailed)


@frozen
class Reply:
    status: int
    headers: dict[str, str]  # lower-case names, last value
    body: bytes
    request: str = ""  # "GET http://host/jobs": names the server when its reply is unusable

    def json(self) -> Any:
        return self.parse(lambda value: value)

    def parse(self, build: Callable[[Any], T]) -> T:
        """``build(body as JSON)``; a body that is not foreman's raises ForemanError.

        That is what a base URL pointing at some other web server gets: one
        line saying so rather than a JSON or KeyError traceback.
        """
        try:
            return build(json.loads(self.body))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            snippet = " ".join(self.body[:80].decode("utf-8", "replace").split())
            raise ForemanError(
                f"{self.request} answered {snippet!r}, not a foreman reply; is the URL foreman's?",
                code="bad_reply",
                status=self.status,
            ) from e


def headers_of(response: Any) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, values in response.headers.getAllRawHeaders():
        out[name.decode("latin-1").lower()] = values[-1].decode("latin-1")
    return out


class BodyPump(Protocol):
    """Hands a response body to ``on_data`` as it arrives; ``finished`` fires at its end.

    ``finished`` fires with True for a complete body and False for one cut
    short (connection lost), and never errbacks; ``stop()`` drops the
    connection. With ``idle_timeout``, a body silent that long is dropped
    (cut short), so a dead connection is noticed.
    """

    def __init__(
        self,
        on_data: Callable[[bytes], None],
        reactor: Any,
        idle_timeout: float | None = None,
    ) -> None:
        self._on_data = on_data
        self._reactor = reactor
        self._idle_timeout = idle_timeout
        self._idle: Any = None
        self.finished: Deferred[bool] = Deferred()
        self.reason: Failure | None = None
        self._lost: list[Deferred[None]] = []

    def when_lost(self) -> Deferred[None]:
        """Fires once the connection is gone (at once if it already is)."""
        d: Deferred[None] = Deferred()
        if self.finished.called:
            d.callback(None)
        else:
            self._lost.append(d)
        return d

    def connectionMade(self) -> None:
        self._arm()

    def _arm(self) -> None:
        if self._idle_timeout is None:
            return
        if self._idle is not None and self._idle.active():
            self._idle.reset(self._idle_timeout)
        else:
            self._idle = self._reactor.callLater(self._idle_timeout, self.stop)

    def dataReceived(self, data: bytes) -> None:
        self._arm()
        try:
            self._on_data(data)
        except Exception:
            self.reason = Failure()
            self.stop()

    def stop(self) -> None:
        if self.transport is not None and not self.finished.called:
            cast(Any, self.transport).stopProducing()  # a TransportProxyProducer

    def connectionLost(self, reason: Failure = Failure(ResponseDone())) -> None:  # noqa: B008
        if self._idle is not None and self._idle.active():
            self._idle.cancel()
        complete = reason.check(ResponseDone, PotentialDataLoss) is not None
        if not complete and self.reason is None:
            self.reason = reason
        if not self.finished.called:
            self.finished.callback(complete)
        waiters, self._lost = self._lost, []
        for d in waiters:
            d.callback(None)


async def read_body(response: Any, reactor: Any) -> bytes:
    """The whole body; raises ForemanConnectionError if the connection is cut."""
    chunks: list[bytes] = []
    pump = BodyPump(chunks.append, reactor)
    response.deliverBody(pump)
    d: Deferred[bool] = Deferred(lambda _: pump.stop())
    pump.finished.chainDeferred(d)
    if not await d:
        reason = describe_failure(pump.reason.value if pump.reason is not None else None, None)
        raise ForemanConnectionError(f"connection lost while reading the reply: {reason}")
    return b"".join(chunks)


class _Sink:
    """Counts what ``write`` took and keeps the exception it raised (a full disk …)."""

    def __init__(self, write: Callable[[bytes], object]) -> None:
        self._write = write
        self.written = 0
        self.error: BaseException | None = None

    def write(self, data: bytes) -> None:
        try:
            self._write(data)
        except BaseException as e:
            self.error = e
            raise
        self.written += len(data)


async def _deliver(response: Any, pump: BodyPump) -> bool:
    """Read the body into ``pump``; True when it came whole (cancelling stops it)."""
    response.deliverBody(pump)
    reading: Deferred[bool] = Deferred(lambda _: pump.stop())
    pump.finished.chainDeferred(reading)
    return await reading


class Transport:
    """Requests to one foreman base URL with a token, a timeout and a retry policy."""

    def __init__(
        self,
        base_url: str,
        token: str | None,
        reactor: Any,
        pool: HTTPConnectionPool,
        timeout: float,
        retry: RetryPolicy,
    ) -> None:
        self.base_url = normalized_base_url(base_url)
        self.token = token
        self.reactor = reactor
        self.timeout = timeout
        self.retry = retry
        self._http = HTTPClient(Agent(reactor, connectTimeout=timeout, pool=pool))

    def headers(self, extra: Mapping[str, str] | None = None) -> _Headers:
        out: _Headers = {
            "User-Agent": [USER_AGENT],
            "Accept": ["application/json"],
        }
        if self.token:
            out["Authorization"] = [f"Bearer {self.token}"]
        for name, value in (extra or {}).items():
            out[name] = [value]
        return out

    async def open(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
        data: Any = None,
        bounded: bool = True,
    ) -> Any:
        """Send one request and return the response once its headers are in (body unread).

        ``body`` is sent as JSON; ``data`` as is (bytes or an IBodyProducer).
        Unless ``bounded`` is false, the reply's head must come within
        ``timeout`` (the client's own one by default).
        """
        extra = dict(headers or {})
        if body is not None:
            data = json.dumps(body, separators=(",", ":")).encode()
            extra.setdefault("Content-Type", "application/json")
        d = self._http.request(
            method,
            self.base_url + path,
            params=dict(params) if params else None,
            headers=self.headers(extra),
            data=data,
            allow_redirects=False,
            unbuffered=True,
            reactor=self.reactor,
            timeout=(timeout or self.timeout) if bounded else None,
        )
        return await d

    async def _exchange(
        self,
        method: str,
        path: str,
        params: Mapping[str, str] | None,
        body: Any,
        headers: Mapping[str, str] | None,
        timeout: float,
    ) -> Reply:
        response = await self.open(
            method, path, params=params, body=body, headers=headers, timeout=timeout
        )
        content = await read_body(response, self.reactor)
        return Reply(
            response.code, headers_of(response), content, f"{method} {self.base_url}{path}"
        )

    async def call(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
        retry: bool = True,
        not_found: type[NotFound] | None = None,
    ) -> Reply:
        """One request with its reply read whole; an HTTP error is raised as a ForemanError.

        With ``retry`` (calls that are safe to repeat), transient failures are
        tried again with backoff; otherwise they are raised at once.
        ``not_found`` is the error a 404 means on this route (see error_from_reply).
        """
        limit = timeout or self.timeout
        attempts = self.retry.attempts if retry else 1
        failure: BaseException | None = None
        for attempt in range(attempts):
            if attempt:
                await deferLater(self.reactor, self.retry.delay(attempt), lambda: None)
            exchange = Deferred.fromCoroutine(
                self._exchange(method, path, params, body, headers, limit)
            )
            exchange.addTimeout(limit, self.reactor)
            try:
                reply = await exchange
            except Exception as e:
                if is_unreachable(e):  # no host of that name: another try will not find one
                    raise self.unreachable(method, path, e, limit) from e
                if not is_transient(e):
                    raise
                failure = e
                continue
            if reply.status < 400:
                return reply
            error = error_from_reply(reply.status, reply.body, reply.headers, not_found)
            error.attempt = attempt + 1
            if not is_transient(error) or attempt + 1 == attempts:
                raise error
            failure = error
        if isinstance(failure, ForemanError) and not isinstance(failure, ForemanConnectionError):
            raise failure  # a 502/503/504 reply: foreman (or a proxy) did answer
        raise self.unreachable(method, path, failure, limit, attempts)

    async def upload(
        self, path: str, producer: MultipartUpload, not_found: type[NotFound] | None = None
    ) -> Reply:
        """POST a streamed multipart body; the reply read whole, errors raised as in ``call``.

        Not bounded as a whole (200 MB take a while on a slow link) but by
        progress: the exchange is given up when no chunk has gone out for
        ``timeout`` seconds, or no reply came that long after the last one.
        Retried only when the request was certainly not acted upon (no
        connection, or the body not sent whole).
        """
        failure: BaseException | None = None
        attempts = self.retry.attempts
        for attempt in range(attempts):
            if attempt:
                await deferLater(self.reactor, self.retry.delay(attempt), lambda: None)
                producer.rewind()
            try:
                reply = await self._upload_once(path, producer)
            except Exception as e:
                if producer.error is not None:  # reading the file failed: not the network
                    raise producer.error from e
                if is_unreachable(e):
                    raise self.unreachable("POST", path, e) from e
                if not isinstance(e, _NOT_DELIVERED) and not _wraps(e, _NOT_DELIVERED):
                    if isinstance(e, ForemanError):
                        raise
                    raise self.unreachable("POST", path, e) from e
                failure = e
                continue
            if reply.status < 400:
                return reply
            error = error_from_reply(reply.status, reply.body, reply.headers, not_found)
            error.attempt = attempt + 1
            raise error
        raise self.unreachable("POST", path, failure, None, attempts)

    async def _upload_once(self, path: str, producer: MultipartUpload) -> Reply:
        clock = self.reactor
        started = clock.seconds()
        producer.clock = clock.seconds
        producer.last_activity = None
        exchange = Deferred.fromCoroutine(
            self._exchange_data("POST", path, producer, {"Content-Type": producer.content_type})
        )
        stalled = False
        timer: Any = None

        def check() -> None:
            nonlocal timer, stalled
            last = producer.last_activity if producer.last_activity is not None else started
            idle = clock.seconds() - last
            if idle >= self.timeout:
                stalled = True
                exchange.cancel()
            else:
                timer = clock.callLater(self.timeout - idle, check)

        timer = clock.callLater(self.timeout, check)
        try:
            return await exchange
        except Exception as e:
            if stalled:
                sent = f"{producer.sent} of {producer.length} bytes sent"
                raise ForemanConnectionError(
                    f"POST {self.base_url}{path} failed: no progress within "
                    f"{self.timeout:g} s ({sent})"
                ) from e
            raise
        finally:
            if timer is not None and timer.active():
                timer.cancel()

    async def _exchange_data(
        self, method: str, path: str, data: Any, headers: Mapping[str, str]
    ) -> Reply:
        response = await self.open(method, path, data=data, headers=headers, bounded=False)
        content = await read_body(response, self.reactor)
        return Reply(
            response.code, headers_of(response), content, f"{method} {self.base_url}{path}"
        )

    async def download(
        self,
        path: str,
        write: Callable[[bytes], object],
        restart: Callable[[], None] | None,
        not_found: type[NotFound] | None = None,
    ) -> int:
        """GET a body of any size into ``write``, chunk by chunk; the number of bytes.

        The reply's head must come within ``timeout``; then only silence that
        long gives up. Transient failures are retried; one that cuts the body
        short after bytes were written is retried only with ``restart`` (which
        undoes what was written). An exception from ``write`` is raised as is.
        """
        failure: BaseException | None = None
        attempts = self.retry.attempts
        for attempt in range(attempts):
            if attempt:
                await deferLater(self.reactor, self.retry.delay(attempt), lambda: None)
            try:
                response = await self.open("GET", path, headers={"Accept": "*/*"})
                if response.code >= 400:
                    body = await read_body(response, self.reactor)
                    error = error_from_reply(response.code, body, headers_of(response), not_found)
                    error.attempt = attempt + 1
                    raise error
            except Exception as e:
                if is_unreachable(e):
                    raise self.unreachable("GET", path, e) from e
                if not is_transient(e) or attempt + 1 == attempts:
                    if isinstance(e, ForemanError):
                        raise
                    raise self.unreachable("GET", path, e, None, attempt + 1) from e
                failure = e
                continue
            sink = _Sink(write)
            pump = BodyPump(sink.write, self.reactor, self.timeout)
            complete = await _deliver(response, pump)
            if sink.error is not None:
                raise sink.error
            if complete:
                return sink.written
            reason = describe_failure(
                pump.reason.value if pump.reason is not None else None, self.timeout
            )
            failure = ForemanConnectionError(
                f"GET {self.base_url}{path}: connection lost after {sink.written} bytes: {reason}"
            )
            if sink.written and restart is None:
                raise failure
            if restart is not None:
                restart()
        raise self.unreachable("GET", path, failure, None, attempts)

    def unreachable(
        self,
        method: str,
        path: str,
        exc: BaseException | None,
        timeout: float | None = None,
        attempts: int = 1,
    ) -> ForemanConnectionError:
        """The error for a request that got no reply: one line naming the URL and why."""
        tries = f" after {attempts} attempt(s)" if attempts > 1 else ""
        reason = describe_failure(exc, timeout or self.timeout)
        return ForemanConnectionError(f"{method} {self.base_url}{path} failed{tries}: {reason}")


def _wraps(exc: BaseException, kinds: tuple[type[BaseException], ...]) -> bool:
    """Twisted's wrapper exceptions (ResponseFailed & co) around one of ``kinds``."""
    reasons = getattr(exc, "reasons", None) or ()
    return any(isinstance(r.value, kinds) for r in reasons)


def is_unreachable(exc: BaseException) -> bool:
    """A failure to reach foreman that is not worth retrying (the host name does not resolve)."""
    return isinstance(exc, neterror.DNSLookupError)


_TIMED_OUT = (CancelledError, DeferTimeout, neterror.ConnectingCancelledError)


def describe_failure(exc: BaseException | None, timeout: float | None) -> str:
    """Why a request got no reply, in words (Twisted's wrappers and cancellations unwrapped)."""
    if exc is None:
        return "connection lost"
    if isinstance(exc, ForemanError):
        return exc.message
    within = f" within {timeout:g} s" if timeout is not None else ""
    if isinstance(exc, _TIMED_OUT):  # our per-exchange timeout cancelled it
        return f"no reply{within}"
    if isinstance(exc, neterror.TimeoutError):
        return f"could not connect{within}"
    reasons = getattr(exc, "reasons", None)  # ResponseFailed & co wrap Failures
    if reasons:
        return "; ".join(describe_failure(r.value, timeout) for r in reasons)
    return str(exc).strip() or type(exc).__name__
