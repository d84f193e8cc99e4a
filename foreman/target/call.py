"""One request from the worker to the target, its body read chunk by chunk.

Failures are sorted into the kinds the job state machine decides on
(unreachable, HTTP 4xx/5xx, reset, timeout). The call can be aborted at any
moment (job cancelled, shutdown): before the response headers the request
is cancelled, afterwards the connection is closed, so the target stops
generating at once. An idle timeout (no byte for ``idle_timeout`` seconds)
catches a hung target without limiting a long generation. The request goes
through ``Upstream.relay``, the proxy's lean keep-alive client (ADR 0019).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from twisted.internet import error as neterror
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.interfaces import IConsumer
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone, ResponseFailed
from twisted.web.iweb import IBodyProducer, IResponse
from zope.interface import implementer

from foreman.target.upstream import Upstream
from foreman.target.wirepool import Prepared

__all__ = ["TargetCall", "TargetError", "prepare_call"]

# error kinds, shared with foreman.core.jobstate
UNREACHABLE = "target_unreachable"
HTTP_4XX = "target_4xx"
HTTP_5XX = "target_5xx"
RESET = "reset"
TIMEOUT = "timeout"
ABORTED = "cancelled"
SHUTDOWN = "shutdown"
INTERNAL = "internal_error"  # foreman itself failed during the attempt (disk, database, bug)
TOO_LARGE = "response_too_large"

_ERROR_BODY_LIMIT = 64 * 1024
_CONTENT_TYPE = b"Content-Type: application/json\r\n"
_USER_AGENT = b"User-Agent: foreman-worker\r\n"


class TargetError(Exception):
    def __init__(self, kind: str, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.status = status
        self.message = message


@implementer(IBodyProducer)
class BytesProducer:
    """A whole body in one write (no cooperator, no timers)."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.length = len(body)

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        consumer.write(self.body)
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


class _Reader(Protocol):
    def __init__(self, call: TargetCall) -> None:
        self.call = call

    def dataReceived(self, data: bytes) -> None:
        self.call._data(data)

    def connectionLost(self, reason: Failure = neterror.ConnectionDone) -> None:  # type: ignore[assignment]
        self.call._body_ended(reason)


def _ignore(data: bytes) -> None:
    """``on_data`` of a call that has ended."""


def prepare_call(upstream: Upstream, token: str | None, path: str, body: bytes) -> Prepared:
    """The worker's POST of ``body`` to ``path``, formatted to be sent later."""
    head = [_CONTENT_TYPE, _USER_AGENT]
    if token:
        head.append(b"Authorization: Bearer %s\r\n" % token.encode())
    return upstream.prepare(b"POST", path.encode(), head, body)


def _message_of(body: bytes, status: int) -> str:
    try:
        parsed = json.loads(body)
    except ValueError:
        text = body.decode("utf-8", "replace").strip()
        return text[:500] or f"target answered HTTP {status}"
    err = parsed.get("error") if isinstance(parsed, dict) else None
    if isinstance(err, dict):
        return str(err.get("message", err))
    if err is not None:
        return str(err)
    return f"target answered HTTP {status}"


class TargetCall:
    def __init__(
        self,
        reactor: Any,
        upstream: Upstream,
        token: str | None,
        path: str,
        body: bytes,
        on_data: Callable[[bytes], None],
        idle_timeout: float = 900.0,
        on_complete: Callable[[], None] | None = None,
        sent: Deferred[IResponse] | None = None,
    ) -> None:
        """``sent``: the request already went out (a staged dispatch); the call owns it."""
        self._reactor = reactor
        self._upstream = upstream
        self._token = token
        self._path = path
        self._body = body
        self._on_data = on_data
        self._on_complete = on_complete  # told at the last byte of a whole 2xx answer
        self._idle_timeout = idle_timeout
        self._request: Deferred[IResponse] | None = sent
        self._reader: _Reader | None = None
        self._done: Deferred[None] | None = None
        self._timer: Any = None
        self._seconds = reactor.seconds
        self._heard_at = 0.0
        self._abort_reason: TargetError | None = None
        self._error_body: bytearray | None = None
        self.status: int | None = None

    async def run(self) -> int:
        """Send the request and deliver the body; returns the status (2xx) or raises."""
        if self._request is None:
            prepared = prepare_call(self._upstream, self._token, self._path, self._body)
            self._request = self._upstream.send(prepared)
        self._arm()
        try:
            response = await self._request
        except Exception as e:
            self._disarm()
            if self._abort_reason is not None:
                raise self._abort_reason from None
            if isinstance(e, CancelledError):
                raise TargetError(ABORTED, "cancelled") from None
            if isinstance(e, neterror.ConnectError):
                raise TargetError(UNREACHABLE, f"target unreachable: {e}") from None
            raise TargetError(RESET, f"target connection failed: {_describe(e)}") from None
        finally:
            self._request = None
        self.status = response.code
        if response.code >= 400:
            self._error_body = bytearray()
        self._done = Deferred()
        self._reader = _Reader(self)
        self._arm()
        response.deliverBody(self._reader)
        try:
            await self._done
        finally:
            self._disarm()
            # both point back at this call (the reader, and ``on_data``: the
            # runner's closure over it); dropped, the call is freed by reference
            # counting when it ends, not by the cyclic garbage collector
            self._reader = None
            self._on_data = _ignore
        if self._error_body is not None:
            message = _message_of(bytes(self._error_body), response.code)
            kind = HTTP_4XX if response.code < 500 else HTTP_5XX
            raise TargetError(kind, message, response.code)
        code: int = response.code
        return code

    @property
    def aborted(self) -> bool:
        return self._abort_reason is not None

    def abort(self, reason: TargetError | None = None) -> None:
        """Stop the call now: cancel the request or close the connection."""
        if self._abort_reason is None:
            self._abort_reason = reason or TargetError(ABORTED, "cancelled")
        self._disarm()
        if self._request is not None:
            self._request.cancel()
        elif self._reader is not None and self._reader.transport is not None:
            self._reader.transport.stopProducing()  # type: ignore[attr-defined]

    def _data(self, data: bytes) -> None:
        self._heard_at = self._seconds()  # the idle timer reads it when it fires
        if self._error_body is not None:
            if len(self._error_body) < _ERROR_BODY_LIMIT:
                self._error_body += data
            return
        self._on_data(data)

    def _body_ended(self, reason: Failure) -> None:
        self._disarm()
        done, self._done = self._done, None
        if done is None:
            return
        if self._abort_reason is not None:
            done.errback(self._abort_reason)
        elif reason.check(ResponseDone):
            if self._on_complete is not None and self._error_body is None:
                self._on_complete()  # before this call's caller resumes
            done.callback(None)
        elif reason.check(ResponseFailed, neterror.ConnectionLost, neterror.ConnectionDone):
            done.errback(TargetError(RESET, "target closed the connection mid-response"))
        else:
            done.errback(TargetError(RESET, f"target response failed: {reason.getErrorMessage()}"))

    def _arm(self) -> None:
        self._heard_at = self._seconds()
        if self._timer is None or not self._timer.active():
            self._timer = self._reactor.callLater(self._idle_timeout, self._idle)

    def _disarm(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _idle(self) -> None:
        """Nothing came for the limit: abort. A byte only stamps ``_heard_at``; the
        timer, when it fires, sleeps again for what is left (no timer work per chunk)."""
        left = self._heard_at + self._idle_timeout - self._seconds()
        if left > 0:
            self._timer = self._reactor.callLater(left, self._idle)
            return
        self._timer = None
        self.abort(TargetError(TIMEOUT, f"target sent nothing for {self._idle_timeout:g} s"))


def _describe(e: Exception) -> str:
    reasons = getattr(e, "reasons", None)
    if reasons:
        return "; ".join(r.getErrorMessage() for r in reasons)
    return str(e) or type(e).__name__
