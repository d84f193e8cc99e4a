"""The streaming reverse proxy in front of the target (SPEC "HTTP surface").

One ``_Exchange`` object carries one client request through its life:
admission (inference only) → upstream request → upstream response headers →
body relayed chunk by chunk → done. It is also the body protocol given to
``response.deliverBody``, so the hot path allocates little and chains no
Deferreds beyond what the HTTP/1.1 client protocol itself uses
(``Upstream.relay`` explains the request side).

Backpressure: the upstream transport is registered as a streaming producer
on the client's request, so a slow client pauses the reads from the target
instead of growing memory. A client that leaves cancels whatever is pending:
the admission, the upstream request, or the upstream connection itself (so
Ollama stops generating).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import CancelledError, Deferred, TimeoutError
from twisted.internet.error import ConnectError, ConnectionClosed, DNSLookupError
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import (
    FileBodyProducer,
    RequestTransmissionFailed,
    ResponseDone,
    ResponseNeverReceived,
)
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer, IResponse
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from foreman.core.logtext import model_name_too_long
from foreman.core.routeclass import STALE_OK, RouteClass, classify, wants_stream
from foreman.target.upstream import Upstream
from foreman.web.errorbody import error_body, family_of
from foreman.work.admission import Admission, InferenceCall, QueueFull, Slot

if TYPE_CHECKING:
    from foreman.target.monitor import TargetMonitor

__all__ = ["ProxyResource"]

_log = Logger()

#: Hop-by-hop headers (RFC 9110 §7.6.1 and the common proxy ones): never relayed.
_HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"te",
        b"trailer",
        b"trailers",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
    }
)
#: Request headers never forwarded: hop-by-hop ones, and those foreman sets itself.
_DROP_REQUEST = _HOP_BY_HOP | {
    b"host",
    b"authorization",
    b"content-length",
    b"expect",
    b"x-foreman-priority",
}
#: Response headers never relayed (Agent already strips most of these).
_DROP_RESPONSE = _HOP_BY_HOP | {b"content-length"}
_STREAM_TYPES = (b"application/x-ndjson", b"text/event-stream")
_NO_BODY_CODES = frozenset({204, 304})
_SMALL_BODY = 64 * 1024  # responses this size or smaller need no backpressure
_IN_MEMORY_BODY = 1024 * 1024  # request bodies up to this are sent as one write
_DEFAULT_PRIORITY = 10

#: How a response body ends when the whole body came.
_COMPLETE = (ResponseDone, PotentialDataLoss)
#: Failures meaning "could not talk to the target at all".
_UNREACHABLE = (
    ConnectError,
    DNSLookupError,
    ResponseNeverReceived,
    RequestTransmissionFailed,
    ConnectionClosed,
)


def _json_error(request: Any, status: int, code: str, message: str) -> None:
    body = error_body(family_of(request.path), status, code, message)
    request.setResponseCode(status)
    headers = request.responseHeaders
    headers.setRawHeaders(b"Content-Type", [b"application/json; charset=utf-8"])
    headers.setRawHeaders(b"Content-Length", [b"%d" % len(body)])
    request.write(body)
    request.finish()


def _load_seconds(chunk: bytes) -> float | None:
    """``load_duration`` (ns) of the final NDJSON line or JSON body, in seconds.

    Read without parsing the line: it runs once per answer, and in JSON a key
    is the only place the quoted name appears unescaped. Ollama writes the
    timings after ``message``, so the last occurrence is the top-level one.
    """
    at = chunk.rfind(b'"load_duration"')
    if at < 0:
        return None
    if at < chunk.rstrip().rfind(b"\n"):
        return None  # not in the final line
    match = _LOAD_VALUE.match(chunk, at + len(b'"load_duration"'))
    return int(match.group(1)) / 1e9 if match is not None else None


_LOAD_VALUE = re.compile(rb"\s*:\s*(\d+)\s*[,}]")


def _describe(failure: Failure) -> str:
    value = failure.value
    reasons = getattr(value, "reasons", None)
    if reasons:
        return "; ".join(_describe(r) for r in reasons)
    return failure.getErrorMessage() or type(value).__name__


class ProxyResource(Resource):
    """Relays every request it gets to the target, by route class (``classify``)."""

    isLeaf = True

    def __init__(
        self,
        reactor: Any,
        upstream: Upstream,
        admission: Admission,
        *,
        monitor: TargetMonitor | None = None,
        target_token: str | None = None,
        metadata_timeout: float = 30.0,
        idle_timeout: float = 900.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.reactor = reactor
        self.upstream = upstream
        self.admission = admission
        self.monitor = monitor
        self.metadata_timeout = metadata_timeout
        # an inference relay whose target sends nothing (headers or a byte) this
        # long is ended: a cold load or a slow token is far shorter
        self.idle_timeout = idle_timeout
        self.clock = clock
        self._target_auth = (
            b"Authorization: Bearer %s\r\n" % target_token.encode() if target_token else None
        )

    # -- entry ------------------------------------------------------------

    def render(self, request: Any) -> bytes | int:
        path: bytes = request.path
        if path[:1] != b"/":
            _json_error(request, 400, "bad_request_target", "request target must be a path")
            return NOT_DONE_YET
        kind = classify(request.method, path)
        if kind is RouteClass.INFERENCE:
            return self._render_inference(request, path)
        if kind is RouteClass.ROOT:
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"Ollama is running"
        if kind is RouteClass.METADATA and path in STALE_OK and self._serve_stale_now(request):
            return NOT_DONE_YET
        content = request.content
        size = content.seek(0, 2)
        content.seek(0)
        body: bytes | IBodyProducer | None
        if size == 0:
            body = None
        elif size <= _IN_MEMORY_BODY:
            body = content.read()
        else:
            body = FileBodyProducer(content)  # a large upload: streamed from the spool file
        _Exchange(self, request, kind, body).send()
        return NOT_DONE_YET

    def _render_inference(self, request: Any, path: bytes) -> int:
        raw: bytes = request.content.read()
        try:
            doc = json.loads(raw)
        except ValueError as e:
            _json_error(request, 400, "malformed_json", f"request body is not valid JSON: {e}")
            return NOT_DONE_YET
        except RecursionError:
            _json_error(request, 400, "malformed_json", "request body is nested too deeply")
            return NOT_DONE_YET
        model = doc.get("model") if isinstance(doc, dict) else None
        if not isinstance(model, str) or not model:
            _json_error(request, 400, "missing_model", "model is required")
            return NOT_DONE_YET
        too_long = model_name_too_long(model)
        if too_long is not None:
            _json_error(request, 400, "invalid_model", too_long)
            return NOT_DONE_YET
        request.model = model  # for the access log line
        priority = _DEFAULT_PRIORITY
        header = request.requestHeaders.getRawHeaders(b"x-foreman-priority")
        if header:
            try:
                priority = int(header[-1])
            except ValueError:
                _json_error(request, 400, "bad_priority", "X-Foreman-Priority must be an integer")
                return NOT_DONE_YET
        call = InferenceCall(
            model=model,
            priority=priority,
            path=path.decode("ascii", "replace"),
            stream=wants_stream(path, doc),
            received_at=self.clock(),
        )
        exchange = _Exchange(self, request, RouteClass.INFERENCE, raw or None)
        exchange.call = call
        # built while the request waits, so the dispatch only has to send
        exchange.head = self.forward_headers(request)
        exchange.admit(self.admission.admit(call))
        return NOT_DONE_YET

    # -- stale metadata ---------------------------------------------------

    def _serve_stale_now(self, request: Any) -> bool:
        """While the monitor says down, answer from the last good copy without trying."""
        monitor = self.monitor
        if monitor is None or monitor.state != "down":
            return False
        monitor.poke()  # so a target that just woke is noticed soon
        return self.serve_stale(request)

    def serve_stale(self, request: Any) -> bool:
        monitor = self.monitor
        cached = monitor.cached.get(request.path) if monitor is not None else None
        if cached is None:
            return False
        request.setResponseCode(200)
        headers = request.responseHeaders
        headers.setRawHeaders(b"Content-Type", [cached.content_type])
        headers.setRawHeaders(b"Content-Length", [b"%d" % len(cached.body)])
        headers.setRawHeaders(b"X-Foreman-Stale", [b"1"])
        request.write(cached.body)
        request.finish()
        return True

    # -- headers ----------------------------------------------------------

    def forward_headers(self, request: Any) -> list[bytes]:
        """The client's header lines minus hop-by-hop ones, with the target's credentials."""
        out: list[bytes] = []
        incoming: Headers = request.requestHeaders
        connection = incoming.getRawHeaders(b"connection")
        listed: frozenset[bytes] = frozenset()
        if connection:
            listed = frozenset(
                token.strip().lower() for value in connection for token in value.split(b",")
            )
        for name, values in incoming.getAllRawHeaders():
            lowered = name.lower()
            if lowered in _DROP_REQUEST or lowered.startswith(b"proxy-") or lowered in listed:
                continue
            for value in values:
                out.append(b"%s: %s\r\n" % (name, value))
        if self._target_auth is not None:
            out.append(self._target_auth)
        return out


class _Exchange(Protocol):
    """One client request relayed to the target, and the protocol for its body."""

    slot: Slot | None = None  # held until released
    granted: Slot | None = None  # the slot it got, kept for its wait times
    call: InferenceCall | None = None
    head: list[bytes] | None = None  # the header lines to forward, when built early
    pending: Deferred[Any] | None = None
    client_gone = False
    producing = False  # upstream transport registered as producer on the request
    done = False
    timed_out = False  # the target went silent past the limit
    lost: str | None = None  # the worker declared the target gone: why
    code = 0  # the target's status code, once its headers came
    stream_kind: bytes | None = None  # b"ndjson" or b"sse" when the body streams
    _last = b""  # the newest body chunk: the final one carries load_duration
    _response: IResponse | None = None  # a small answer whose head waits for its body
    _held: list[bytes] | None = None  # a small answer's body so far
    _silence: Any = None  # IDelayedCall watching for a silent target
    _heard_at = 0.0

    def __init__(
        self,
        proxy: ProxyResource,
        request: Any,
        kind: RouteClass,
        body: bytes | IBodyProducer | None,
    ) -> None:
        self.proxy = proxy
        self.request = request
        self.kind = kind
        self.body = body
        self._seconds = proxy.reactor.seconds  # read once per body chunk
        request.notifyFinish().addErrback(self._client_lost)

    # -- client side ------------------------------------------------------

    def _client_lost(self, reason: Failure) -> None:
        self.client_gone = True
        pending = self.pending
        if pending is not None:
            self.pending = None
            pending.cancel()  # leave the queue, or abandon the upstream request
        elif self.transport is not None and not self.done:
            transport: Any = self.transport
            transport.stopProducing()  # close the upstream connection now

    # -- admission (inference) -------------------------------------------

    def admit(self, admitted: Deferred[Slot]) -> None:
        self.pending = admitted
        admitted.addCallbacks(self._admitted, self._not_admitted)

    def _admitted(self, slot: Slot) -> None:
        self.pending = None
        self.slot = self.granted = slot
        if self.client_gone:
            self._release()
            return
        slot.on_lost = self._target_lost
        self.send()

    def _target_lost(self, reason: str) -> None:
        """The worker says the target went away (probes fail) while this runs.

        Before any answer, the request goes back to the queue (or gets 502);
        mid-body, the client gets an error line where the stream allows one.
        """
        if self.done or self.client_gone or self.lost is not None:
            return
        self.lost = reason
        if self.pending is not None:
            self.pending.cancel()  # _upstream_failed requeues or answers
        elif self.transport is not None:
            transport: Any = self.transport
            transport.stopProducing()  # connectionLost ends the client's response

    def _not_admitted(self, failure: Failure) -> None:
        self.pending = None
        if self.client_gone:
            return
        if failure.check(QueueFull):
            retry_after = failure.value.retry_after  # type: ignore[union-attr]
            self.request.responseHeaders.setRawHeaders(b"Retry-After", [b"%d" % retry_after])
            _json_error(
                self.request,
                503,
                "queue_full",
                "server busy, please try again. maximum pending requests exceeded",
            )
            return
        _log.failure("admission failed", failure)
        message = f"request not admitted: {_describe(failure)}"
        _json_error(self.request, 503, "not_admitted", message)

    def _release(self) -> None:
        slot, self.slot = self.slot, None
        if slot is not None:
            # ``on_lost`` (this exchange's bound method) is the one reference back
            # from the slot: dropped, the exchange and its request are freed by
            # reference counting at their end instead of waiting for the cyclic
            # garbage collector (a collection every ~26 requests, 0.1-0.8 ms each)
            slot.on_lost = None
            slot.release()

    def _report(self) -> None:
        """Tell the worker what the target answered (it learns the resident set)."""
        slot = self.slot
        if slot is not None and self.code and self.lost is None:
            slot.outcome(self.code, _load_seconds(self._last) if self.code < 400 else None)

    # -- upstream request ---------------------------------------------------

    def send(self) -> None:
        proxy = self.proxy
        request = self.request
        head = self.head if self.head is not None else proxy.forward_headers(request)
        d = proxy.upstream.relay(request.method, request.uri, head, self.body)
        self.pending = d
        self._heard_at = proxy.reactor.seconds()
        self._silence = proxy.reactor.callLater(self._silence_limit(), self._silent)
        d.addCallbacks(self._got_response, self._upstream_failed)

    # -- a target that goes silent -------------------------------------------

    def _silence_limit(self) -> float:
        proxy = self.proxy
        return proxy.metadata_timeout if self.kind is RouteClass.METADATA else proxy.idle_timeout

    def _silent(self) -> None:
        """Nothing from the target for the limit: end the relay (504, or a cut body).

        Each byte only stamps ``_heard_at``; the timer, when it fires, sleeps
        again for what is left, so a stream costs no timer work per chunk.
        """
        reactor = self.proxy.reactor
        left = self._heard_at + self._silence_limit() - reactor.seconds()
        if left > 0:
            self._silence = reactor.callLater(left, self._silent)
            return
        self._silence = None
        self.timed_out = True
        if self.pending is not None:
            self.pending.cancel()  # no answer yet: _upstream_failed answers 504
        elif self.transport is not None and not self.done:
            transport: Any = self.transport
            transport.stopProducing()  # mid-body: connectionLost cuts the client

    def _stop_watching(self) -> None:
        silence, self._silence = self._silence, None
        if silence is not None and silence.active():
            silence.cancel()

    def _upstream_failed(self, failure: Failure) -> None:
        self.pending = None
        self._stop_watching()
        self._release()
        if self.client_gone:
            return
        proxy = self.proxy
        request = self.request
        target = proxy.upstream.base_url.decode()
        if self.lost is not None:
            if self._requeue_call():
                self.lost = None
                return
            status, code, message = 502, "target_lost", self.lost
        elif self.timed_out or failure.check(TimeoutError, CancelledError):
            status, code = 504, "target_timeout"
            message = f"target {target} did not answer within {self._silence_limit():g} s"
        elif failure.check(*_UNREACHABLE):
            if self._requeue(failure):
                return
            status, code = 502, "target_unreachable"
            message = f"target {target} is unreachable: {_describe(failure)}"
        else:
            _log.failure("relay to target failed", failure)
            status, code = 502, "bad_gateway"
            message = f"relay to target {target} failed: {_describe(failure)}"
        if proxy.monitor is not None:
            proxy.monitor.poke()
        stale_ok = self.kind is RouteClass.METADATA and request.path in STALE_OK
        if stale_ok and proxy.serve_stale(request):
            return
        _json_error(request, status, code, message)

    def _requeue(self, failure: Failure) -> bool:
        """Put an inference request that met a refusing target back in the queue.

        Only an admission that holds requests while the target is down
        (``waits_for_target``) can take it back; the monitor is told at once, so
        the worker waits for the target instead of dispatching into a refusal.
        Nothing was sent to the client yet, so it just keeps waiting (SPEC).
        """
        if not self._can_requeue():
            return False
        monitor = self.proxy.monitor
        if monitor is not None:
            monitor.mark_down(_describe(failure))
        return self._requeue_call()

    def _can_requeue(self) -> bool:
        return self.call is not None and getattr(self.proxy.admission, "waits_for_target", False)

    def _requeue_call(self) -> bool:
        call = self.call
        if call is None or not self._can_requeue():
            return False
        self.admit(self.proxy.admission.admit(call))
        return True

    def _got_response(self, response: IResponse) -> None:
        self.pending = None
        self.code = response.code
        self._heard_at = self.proxy.reactor.seconds()
        if self.client_gone:
            response.deliverBody(self)  # connectionMade stops the transport
            return
        length = response.length
        self.producing = length is UNKNOWN_LENGTH or length > _SMALL_BODY
        if self.producing:
            self._answer_head(response)
        else:
            # a small body is relayed whole once it is in, after the worker
            # has the target free again (``connectionLost``): the next request
            # leaves before this client's head and body are written
            self._response = response
            self._held = []
        response.deliverBody(self)

    def _answer_head(self, response: IResponse) -> None:
        """The client's status line and headers, from the target's."""
        request = self.request
        request.setResponseCode(response.code, response.phrase)
        out: Headers = request.responseHeaders
        out.removeHeader(b"server")  # the target's headers, not twisted.web's
        streaming = response.length is UNKNOWN_LENGTH
        for name, values in response.headers.getAllRawHeaders():
            lowered = name.lower()
            if lowered in _DROP_RESPONSE:
                if lowered == b"content-length" and request.method == b"HEAD":
                    out.setRawHeaders(name, values)  # the GET's length, as the target said
                continue
            if lowered == b"content-type" and values[0].startswith(_STREAM_TYPES):
                streaming = True
                self.stream_kind = b"sse" if values[0].startswith(b"text/") else b"ndjson"
            out.setRawHeaders(name, values)
        request.defaultContentType = None
        length = response.length
        if (
            length is not UNKNOWN_LENGTH
            and request.method != b"HEAD"
            and response.code not in _NO_BODY_CODES
        ):
            out.setRawHeaders(b"Content-Length", [b"%d" % length])
        if streaming:
            out.setRawHeaders(b"X-Accel-Buffering", [b"no"])
        slot = self.granted
        if slot is not None:
            out.setRawHeaders(b"X-Foreman-Queue-Wait-Ms", [b"%d" % round(slot.queue_wait_ms)])
            if slot.target_wait_ms:
                wait = b"%d" % round(slot.target_wait_ms)
                out.setRawHeaders(b"X-Foreman-Target-Wait-Ms", [wait])

    # -- upstream body (IProtocol) ----------------------------------------------

    def connectionMade(self) -> None:
        transport: Any = self.transport
        if self.client_gone:
            transport.stopProducing()
            return
        if self.producing:
            self.request.registerProducer(transport, True)

    def dataReceived(self, data: bytes) -> None:
        self._heard_at = self._seconds()
        self._last = data
        held = self._held
        if held is not None:
            held.append(data)
        elif not self.client_gone:
            self.request.write(data)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.done = True
        self._stop_watching()
        complete = isinstance(reason.value, _COMPLETE)  # Failure.check walks names: slow
        if complete:
            self._report()
        response, self._response = self._response, None
        slot = self.slot
        if response is None or self.client_gone or slot is None or slot.waiting:
            self._release()  # the next request leaves before this client's bytes (ADR 0021)
            if self.client_gone:
                return
        request = self.request
        if response is not None:  # a small body, held until now
            held, self._held = self._held or [], None
            try:
                self._answer_head(response)
                if held:
                    request.write(b"".join(held) if len(held) > 1 else held[0])
            finally:
                self._release()  # nothing waits: the client first, then the worker
        if self.producing:
            request.unregisterProducer()
        if complete:
            request.finish()
            return
        if self.lost is not None and self.stream_kind is not None:
            # the client is told inside the stream, the way the target reports
            # a failure after streaming began, and the response ends cleanly
            body = error_body(family_of(request.path), 502, "target_lost", self.lost)
            if self.stream_kind == b"sse":
                request.write(b"data: " + body + b"\n\n")
            else:
                request.write(body + b"\n")
            _log.info(
                "target lost during {method} {path}: {error}",
                method=request.method.decode(),
                path=request.path.decode(),
                error=self.lost,
            )
            request.finish()
            return
        # The target cut the body short: the client must not take it as complete.
        error = f"silent for {self._silence_limit():g} s" if self.timed_out else _describe(reason)
        _log.info(
            "target cut the response to {method} {path}: {error}",
            method=request.method.decode(),
            path=request.path.decode(),
            error=error,
        )
        request.loseConnection()
