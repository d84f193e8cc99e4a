"""The one ``twisted.web`` site: routing by first path segment, auth, body limit.

foreman's own routes (``/jobs``, ``/status`` …) go to Klein apps; everything
else goes to the streaming proxy. The choice is made once per request in
``getResourceFor`` from the raw path, before any resource tree walk, which
keeps the proxy's hot path short.
"""

from __future__ import annotations

import contextlib
import errno
import sqlite3
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request, Site

from foreman.core.httphead import RequestHead
from foreman.core.logtext import escape_for_log
from foreman.core.routeclass import classify
from foreman.store.database import StoreClosed
from foreman.web import datecache
from foreman.web.auth import TokenCheck
from foreman.web.errorbody import error_body, family_of, own_route
from foreman.web.front import LEAN_BODY_LIMIT, FrontChannel, LeanRequest, too_slow_answer
from foreman.web.httpjson import BadRequest, json_error
from foreman.web.upload import Upload, UploadTooLarge

__all__ = ["ErrorResource", "ForemanRequest", "ForemanSite"]

IDLE_CONNECTION_TIMEOUT = 300
# A request's head (request line and headers) must arrive within this many
# seconds of its first byte, and its body within BODY_DEADLINE of the head: a
# client trickling a byte now and then is cut off instead of holding a
# connection for as long as it likes. 16 MiB in 120 s is about 1.1 Mbit/s.
HEAD_DEADLINE = 30.0
BODY_DEADLINE = 120.0
# An upload gets BODY_DEADLINE plus its length at this rate (bytes/s): 200 MB in 15 min.
UPLOAD_MIN_RATE = 256 * 1024
UPLOAD_PATH = b"/v1/files"

_log = Logger()

datecache.install()


class _NoDelayChannel(HTTPChannel):
    """HTTP channel with Nagle off, and deadlines for receiving a request.

    Nagle is off because small writes must not wait for a delayed ACK. Twisted's
    own timeout restarts with every byte; the deadlines here do not
    (``HEAD_DEADLINE``, ``BODY_DEADLINE``).
    """

    _deadline: Any = None  # IDelayedCall for the part of a request being received
    reading_head = True  # between requests, or inside a request's head

    def connectionMade(self) -> None:
        super().connectionMade()  # type: ignore[no-untyped-call]
        with contextlib.suppress(AttributeError, OSError):  # not TCP: a unix socket
            self.transport.setTcpNoDelay(True)  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        if self.reading_head and self._deadline is None and data.strip():
            self.expect("head", HEAD_DEADLINE)
        super().dataReceived(data)  # type: ignore[no-untyped-call]

    def expect(self, part: str, seconds: float) -> None:
        """The request's ``part`` must be in within ``seconds``, or the connection ends."""
        self.received()
        reactor: Any = self.site.reactor  # type: ignore[attr-defined]
        self._deadline = reactor.callLater(seconds, self._too_slow, part, seconds)

    def received(self) -> None:
        deadline, self._deadline = self._deadline, None
        if deadline is not None and deadline.active():
            deadline.cancel()

    def _too_slow(self, part: str, seconds: float) -> None:
        self._deadline = None
        transport: Any = self.transport
        transport.write(too_slow_answer(part, seconds))
        transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.received()
        super().connectionLost(reason)  # type: ignore[no-untyped-call]


class ForemanRequest(Request):
    """A request that stops buffering a body beyond the configured limit.

    It also reports itself once, when it ends (finished or abandoned by the
    client), for the access log and the request metrics.
    """

    too_large: bool = False
    authorized: bool | None = None  # decided when the headers are in, else by the site
    _received: int = 0
    route_class: str = "other"
    model: str | None = None
    _reported: bool = False
    started: float = 0.0
    upload: Upload | None = None  # a POST /v1/files body, streamed to disk

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        channel: Any = self.channel
        channel.received()
        channel.reading_head = True  # what comes next on the connection is a new request
        self.started = channel.site.reactor.seconds()
        super().requestReceived(command, path, version)  # type: ignore[no-untyped-call]

    def finish(self) -> None:
        super().finish()  # type: ignore[no-untyped-call]
        self._report(self.code)

    def connectionLost(self, reason: Any) -> None:
        super().connectionLost(reason)  # type: ignore[no-untyped-call]
        if self.upload is not None and not self.finished:
            Deferred.fromCoroutine(self.upload.discard())  # the client went away mid-upload
        if not self._reported:
            self._report(499)  # the client went away first (nginx's convention)

    def _report(self, status: int) -> None:
        if self._reported:
            return
        self._reported = True
        report = getattr(getattr(self, "site", None), "report", None)
        if report is not None:
            report(self, status)

    def processingFailed(self, reason: Failure) -> Failure:  # type: ignore[override]
        """Anything a route did not expect: JSON in the path's shape, never Twisted's HTML."""
        answer_failure(self, reason, self._disconnected)
        return reason

    def gotLength(self, length: int | None) -> None:
        """Headers are in: refuse a tokenless or oversized body before buffering any of it."""
        channel: Any = self.channel
        channel.reading_head = False
        if length == 0:
            channel.received()  # no body to wait for
        else:  # a length, or chunked (None)
            channel.expect("body", BODY_DEADLINE)
        site: Any = channel.site
        self.authorized = self._token_ok(site)
        if self.refused:  # the answer is 401 whatever the body; do not keep it
            length = 0
        elif site.uploads is not None and self._is_upload():
            self.upload = site.uploads(self, length)
            if length is not None and length > self.upload.limit:
                self.upload.error = UploadTooLarge(self.upload.limit)
            else:  # a large upload may take longer than a JSON body (chunked: up to the limit)
                size = self.upload.limit if length is None else length
                channel.expect("body", BODY_DEADLINE + size / UPLOAD_MIN_RATE)
            length = 0
        elif length is not None and length > site.max_body:
            self.too_large = True
            length = 0
        super().gotLength(length)  # type: ignore[no-untyped-call]

    def _is_upload(self) -> bool:
        command = getattr(self.channel, "_command", None)
        path = getattr(self.channel, "_path", None)
        return (
            command == b"POST"
            and isinstance(path, bytes)
            and path.split(b"?", 1)[0].rstrip(b"/") == UPLOAD_PATH
        )

    @property
    def refused(self) -> bool:
        return self.authorized is False

    def _token_ok(self, site: Any) -> bool | None:
        # method and path wait on the channel until the body is read (Twisted
        # sets them on the request only then); without them, decide later (None)
        command = getattr(self.channel, "_command", None)
        path = getattr(self.channel, "_path", None)
        if not isinstance(command, bytes) or not isinstance(path, bytes):
            return None
        authorization = self.requestHeaders.getRawHeaders(b"authorization")
        ok: bool = site.tokens.allows(
            command, path.split(b"?", 1)[0], authorization[-1] if authorization else None
        )
        return ok

    def handleContentChunk(self, data: bytes) -> None:
        if self.upload is not None:
            self.upload.feed(data)
            return
        if self.too_large or self.refused:
            return
        self._received += len(data)
        limit: int = self.channel.site.max_body  # type: ignore[attr-defined]
        if self._received > limit:
            self.too_large = True
            if self.content is not None:
                self.content.seek(0)
                self.content.truncate()
            return
        super().handleContentChunk(data)  # type: ignore[no-untyped-call]


def answer_failure(request: Any, reason: Failure, disconnected: bool) -> None:
    """Log a failure no route handled and answer it, if the client can still be told."""
    _log.failure(
        "{method} {path}: unexpected failure",
        failure=reason,
        method=request.method.decode("latin-1"),
        path=escape_for_log(request.path.decode("latin-1")),
    )
    if request.finished or disconnected:
        return
    if request.startedWriting:  # half an answer sent: the client must see it cut
        request.channel.transport.abortConnection()
        return
    status, code, message = failure_answer(reason)
    body = error_body(family_of(request.path), status, code, message)
    request.setResponseCode(status)
    request.responseHeaders.setRawHeaders(b"content-type", [b"application/json"])
    request.responseHeaders.setRawHeaders(b"content-length", [b"%d" % len(body)])
    if status == 503:
        request.responseHeaders.setRawHeaders(b"retry-after", [b"5"])
    request.write(body)
    request.finish()


def failure_answer(reason: Failure) -> tuple[int, str, str]:
    """(status, code, message) for a failure no route handled."""
    if reason.check(sqlite3.OperationalError, sqlite3.DatabaseError, StoreClosed):
        return 503, "database_unavailable", "foreman cannot use its database now; try again"
    error = reason.value
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        return 503, "disk_full", "foreman's disk is full; try again when space is free"
    if reason.check(RecursionError):
        return 400, "invalid_json", "the body is nested too deeply"
    return 500, "internal_error", "foreman failed to answer this request (see its log)"


class ErrorResource(Resource):
    """Answers every method with one error, in the shape the path's clients expect."""

    isLeaf = True

    def __init__(
        self, status: int, code: str, message: str, headers: dict[bytes, bytes] | None = None
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}

    def render(self, request: Any) -> bytes:
        request.setResponseCode(self.status)
        request.setHeader(b"content-type", b"application/json")
        for name, value in self.headers.items():
            request.setHeader(name, value)
        return error_body(family_of(request.path), self.status, self.code, self.message)


def _lean_answer(body: Any, request: LeanRequest) -> None:
    """What a lean handler returned (bytes; NOT_DONE_YET means it answers itself)."""
    if isinstance(body, bytes) and not request.finished and not request._disconnected:
        request.setHeader(b"content-length", b"%d" % len(body))
        request.write(body)
        request.finish()


def _lean_failed(failure: Failure, request: LeanRequest) -> None:
    """A lean handler's error: a 4xx it meant (``BadRequest``), else the 500 path."""
    if failure.check(BadRequest):
        error: BadRequest = failure.value  # type: ignore[assignment]
        _lean_answer(json_error(request, error.status, error.code, str(error)), request)
        return
    answer_failure(request, failure, request._disconnected)


_UNAUTHORIZED = ErrorResource(
    401,
    "unauthorized",
    "missing or wrong Bearer token",
    {b"www-authenticate": b'Bearer realm="foreman"'},
)


class ForemanSite(Site):
    protocol = _NoDelayChannel  # type: ignore[assignment]
    requestFactory = ForemanRequest
    displayTracebacks = False
    noisy = False

    def __init__(
        self,
        own: IResource,
        proxy: IResource,
        tokens: TokenCheck,
        max_body: int,
        **kwargs: Any,
    ) -> None:
        # An idle connection (no request in progress) is closed after 5 minutes;
        # a request in progress — queued or streaming — has no timeout.
        kwargs.setdefault("timeout", IDLE_CONNECTION_TIMEOUT)
        super().__init__(own, **kwargs)  # type: ignore[no-untyped-call]
        self.own = own
        self.proxy = proxy
        self.tokens = tokens
        self.max_body = max_body
        self.report: Callable[[Any, int], None] | None = None
        self._lean_body = min(max_body, LEAN_BODY_LIMIT)
        #: own routes the front protocol serves itself: (method, path) -> handler(request),
        #: which returns bytes or a Deferred of them, or raises BadRequest
        self.lean_routes: dict[tuple[bytes, bytes], Callable[[Any], Any]] = {}
        #: (request, declared length) -> Upload for ``POST /v1/files``; None: no uploads
        self.uploads: Callable[[Any, int | None], Upload] | None = None

    def log(self, request: Any) -> None:
        """Access lines come from foreman's own request logging instead."""

    def getResourceFor(self, request: Any) -> IResource:
        path: bytes = request.path
        request.site = self
        request.sitepath = []
        request.prepath = []
        request.postpath = path.split(b"/")[1:]
        own = own_route(path)
        request.route_class = "foreman" if own else classify(request.method, path).value
        authorized = request.authorized
        if authorized is None:
            authorized = self.tokens.allows(
                request.method, path, request.getHeader(b"authorization")
            )
        if not authorized:
            return _UNAUTHORIZED
        if request.too_large:
            return ErrorResource(
                413, "body_too_large", f"request body is over the limit of {self.max_body} bytes"
            )
        return self.own if own else self.proxy

    # -- connections: the lean front protocol first (foreman.web.front, ADR 0020) ----------

    def buildProtocol(self, addr: Any) -> FrontChannel:  # type: ignore[override]
        return FrontChannel(self, addr)

    def web_channel(self, addr: Any) -> HTTPChannel:
        """A ``twisted.web`` channel, for a connection the front protocol hands over."""
        channel: HTTPChannel = super().buildProtocol(addr)  # type: ignore[no-untyped-call]
        return channel

    def lean_route(self, head: RequestHead) -> bool:
        """Whether the front protocol serves this request itself: the proxy's plain ones,
        and the own routes in ``lean_routes``."""
        if head.content_length > self._lean_body:
            return False
        return not own_route(head.path) or (head.method, head.path) in self.lean_routes

    def deadline_for(self, part: str) -> float:
        return HEAD_DEADLINE if part == "head" else BODY_DEADLINE

    def serve_lean(self, request: LeanRequest) -> None:
        """``getResourceFor`` and ``Request.render`` for a request the front protocol read."""
        path = request.path
        handler = self.lean_routes.get((request.method, path))
        request.route_class = (
            "foreman" if handler is not None else classify(request.method, path).value
        )
        if not self.tokens.allows(request.method, path, request.getHeader(b"authorization")):
            handler = _UNAUTHORIZED.render
        elif handler is None:
            handler = self.proxy.render  # type: ignore[attr-defined]
        try:
            body = handler(request)
        except Exception:
            _lean_failed(Failure(), request)
            return
        kind = type(body)
        if kind is int:  # NOT_DONE_YET: the usual answer (an ABC's isinstance is slow)
            return
        if kind is bytes:
            _lean_answer(body, request)  # type: ignore[arg-type]
        elif isinstance(body, Deferred):
            body.addCallbacks(
                _lean_answer, _lean_failed, callbackArgs=(request,), errbackArgs=(request,)
            )

    def report_lean(self, request: LeanRequest, status: int) -> None:
        if self.report is not None:
            self.report(request, status)
