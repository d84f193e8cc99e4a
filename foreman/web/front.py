"""The protocol on every client connection: a lean HTTP/1.1 server for relayed routes.

ADR 0020. ``twisted.web``'s server side (``HTTPChannel`` parsing, ``Request``
and its ``process``/``finish``) was about a third of the daemon's busy time on
a relayed request, and the relay uses little of what it offers. So each
connection starts with ``FrontChannel``: it reads request heads itself and
serves the plain ones on routes the proxy relays with ``LeanRequest``, the
subset of ``twisted.web.server.Request`` that ``ProxyResource`` uses.

The first request that is not for it — foreman's own routes (``/jobs``,
``/v1/batches`` …), uploads, bodies over 1 MiB or the body limit, chunked or
``Expect`` bodies, HTTP/1.0, anything odd (``foreman.core.httphead``) — hands
the connection, bytes unread included, to a ``twisted.web`` channel built by
the site, which serves it from then on exactly as before. Nothing is lost:
the hand-over happens between requests, before any byte of that request is
consumed.

Kept from the ``twisted.web`` path: keep-alive and pipelining (one request
at a time, in order), the deadlines for a request's head and body and the
idle-connection timeout (``foreman.web.site``), the token check, the access
line and metrics (``site.report``), a 499 in the log when the client leaves
first, JSON errors for unexpected failures, backpressure (the upstream
transport registered as producer on the client's transport), chunked
responses when the length is unknown, and HEAD.
"""

from __future__ import annotations

import contextlib
import io
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import RESPONSES

from foreman.core.httphead import RequestHead, parse_head
from foreman.target.wire import send_now, write_now
from foreman.web import datecache
from foreman.web.errorbody import Family, error_body

__all__ = ["FrontChannel", "LeanRequest", "ResponseHeaders", "too_slow_answer"]

_log = Logger()

LEAN_BODY_LIMIT = 1024 * 1024  # larger bodies go to twisted.web (spooled to a file)
#: a head longer than this goes to twisted.web, which answers it as before (414, 431 or 400):
#: its own limit for a line and for all header lines together
HEAD_LIMIT = 16 * 1024
PIPELINE_LIMIT = 256 * 1024  # bytes read ahead of the request being served before reading pauses
_NO_BODY = frozenset({204, 304})


_SPELLING: dict[bytes, bytes] = {b"www-authenticate": b"WWW-Authenticate", b"etag": b"ETag"}


def _canonical(lowered: bytes) -> bytes:
    """``Content-Type`` for ``content-type``: the spelling twisted.web writes, kept per name."""
    spelled = _SPELLING.get(lowered)
    if spelled is None:
        spelled = b"-".join(part.capitalize() for part in lowered.split(b"-"))
        if len(_SPELLING) < 1024:  # names come from the target too: a bounded memo
            _SPELLING[lowered] = spelled
    return spelled


def too_slow_answer(part: str, seconds: float) -> bytes:
    """The whole 408 response for a request whose ``part`` (head, body) came too slowly."""
    body = error_body(
        Family.FOREMAN,
        408,
        "request_timeout",
        f"the request's {part} did not arrive within {seconds:g} s",
    )
    return (
        b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    )


class ResponseHeaders:
    """Response headers in the order set; the ``Headers`` methods the relay uses."""

    __slots__ = ("_names", "_values")

    def __init__(self) -> None:
        self._names: dict[bytes, bytes] = {}  # lower -> as given
        self._values: dict[bytes, list[bytes]] = {}  # lower -> values

    def setRawHeaders(self, name: bytes, values: list[bytes]) -> None:
        lowered = name.lower()
        self._names[lowered] = _canonical(lowered)
        # a line break in a value would split the response (twisted.web's Headers
        # turns them into spaces too)
        self._values[lowered] = [
            v.replace(b"\r\n", b" ").replace(b"\r", b" ").replace(b"\n", b" ")
            if b"\r" in v or b"\n" in v
            else v
            for v in values
        ]

    def addRawHeader(self, name: bytes, value: bytes) -> None:
        found = self._values.get(name.lower())
        self.setRawHeaders(name, [value] if found is None else [*found, value])

    def getRawHeaders(self, name: bytes, default: list[bytes] | None = None) -> list[bytes] | None:
        return self._values.get(name.lower(), default)

    def hasHeader(self, name: bytes) -> bool:
        return name.lower() in self._values

    def removeHeader(self, name: bytes) -> None:
        lowered = name.lower()
        self._names.pop(lowered, None)
        self._values.pop(lowered, None)

    def lines(self) -> list[bytes]:
        names = self._names
        return [
            b"%s: %s\r\n" % (names[lowered], value)
            for lowered, values in self._values.items()
            for value in values
        ]


class LeanRequest:
    """One relayed request on a ``FrontChannel``: what ``ProxyResource`` needs of a request."""

    route_class = "other"
    model: str | None = None
    defaultContentType: bytes | None = None
    code = 200
    phrase: bytes | None = None
    finished = False
    startedWriting = False
    _disconnected = False
    _chunked = False
    _no_body = False
    _producer = False

    def __init__(self, channel: FrontChannel, head: RequestHead, body: bytes, now: float) -> None:
        self.channel = channel
        self.method = head.method
        self.uri = head.target
        self.path = head.path
        self.requestHeaders = head
        self.content = io.BytesIO(body)
        self.responseHeaders = ResponseHeaders()
        self.keep_alive = head.keep_alive
        self.started = now
        self._notify: list[Deferred[None]] = []

    # -- the request's side -------------------------------------------------

    def getHeader(self, name: bytes) -> bytes | None:
        values = self.requestHeaders.getRawHeaders(name)
        return values[-1] if values else None

    def getClientAddress(self) -> Any:
        return self.channel.transport.getPeer()  # type: ignore[union-attr]

    def getHost(self) -> Any:
        return self.channel.transport.getHost()  # type: ignore[union-attr]

    def isSecure(self) -> bool:
        return ISSLTransport.providedBy(self.channel.transport)

    def notifyFinish(self) -> Deferred[None]:
        """Fires when the response is finished; fails if the client leaves first."""
        d: Deferred[None] = Deferred()
        if self.finished:
            d.callback(None)
        elif self._disconnected:
            d.errback(Failure(ConnectionError("the client closed the connection")))
        else:
            self._notify.append(d)
        return d

    # -- the response -----------------------------------------------------------

    def setResponseCode(self, code: int, message: bytes | None = None) -> None:
        self.code = code
        self.phrase = message

    def setHeader(self, name: bytes, value: bytes) -> None:
        self.responseHeaders.setRawHeaders(name, [value])

    def _bodyless(self) -> bool:
        """The answer has no body whatever is written (HEAD, 1xx, 204, 304)."""
        return self.method == b"HEAD" or self.code in _NO_BODY or self.code < 200

    def _head(self) -> list[bytes]:
        """The status line and headers, and how the body is framed."""
        self.startedWriting = True
        code = self.code
        phrase = self.phrase or RESPONSES.get(code, b"Unknown Status")
        headers = self.responseHeaders
        parts = [b"HTTP/1.1 %d %s\r\n" % (code, phrase), *headers.lines()]
        if not headers.hasHeader(b"date"):
            parts.append(b"Date: %s\r\n" % datecache.now_text())
        if self._bodyless():
            self._no_body = True
        elif not headers.hasHeader(b"content-length"):
            self._chunked = True
            parts.append(b"Transfer-Encoding: chunked\r\n")
        if not self.keep_alive:
            parts.append(b"Connection: close\r\n")
        parts.append(b"\r\n")
        return parts

    def write(self, data: bytes) -> None:
        if self.finished:
            raise RuntimeError("write() after finish()")
        if self._disconnected:
            return
        transport = self.channel.transport
        assert transport is not None
        if self.startedWriting:
            if not data or self._no_body:
                return
            # each piece leaves as it comes (a stream's chunks, a long body's reads)
            write_now(transport, b"%x\r\n%s\r\n" % (len(data), data) if self._chunked else data)
            return
        parts = self._head()
        if data and not self._no_body:
            parts.append(b"%x\r\n%s\r\n" % (len(data), data) if self._chunked else data)
        write_now(transport, b"".join(parts))

    def finish(self) -> None:
        if self.finished:
            raise RuntimeError("finish() called twice")
        if self._disconnected:
            return
        transport = self.channel.transport
        assert transport is not None
        if not self.startedWriting:
            if not self.responseHeaders.hasHeader(b"content-length") and not self._bodyless():
                self.responseHeaders.setRawHeaders(b"Content-Length", [b"0"])
            transport.writeSequence(self._head())
        elif self._chunked:
            transport.write(b"0\r\n\r\n")
        # A body of known length leaves here, at its end: the relay releases the
        # worker first, so the next dispatch does not wait for this write.
        send_now(transport)
        self.finished = True
        self.channel.finished(self, self.code)
        notify, self._notify = self._notify, []
        for d in notify:
            d.callback(None)

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        transport: Any = self.channel.transport
        if transport is not None and not self._disconnected:
            transport.registerProducer(producer, streaming)
            self._producer = True

    def unregisterProducer(self) -> None:
        transport: Any = self.channel.transport
        if self._producer and transport is not None:
            self._producer = False
            transport.unregisterProducer()

    def loseConnection(self) -> None:
        """Cut the client off: a response cut short must not look complete."""
        self.channel.cut()

    def connectionLost(self, reason: Failure) -> None:
        """The client left before the response was finished."""
        self._disconnected = True
        self._producer = False
        notify, self._notify = self._notify, []
        for d in notify:
            d.errback(reason)


class FrontChannel(Protocol):
    """One client connection: lean requests until one is not, then ``twisted.web``."""

    _web: Protocol | None = None  # the twisted.web channel, after the hand-over
    _current: LeanRequest | None = None
    _head: RequestHead | None = None  # parsed, its body still arriving
    _deadline: Any = None  # IDelayedCall: the head or body being received is late
    _idle: Any = None  # IDelayedCall: the idle-connection check
    _advancing = False
    _paused = False
    _gone = False

    def __init__(self, site: Any, addr: Any) -> None:
        self.site = site  # foreman.web.site.ForemanSite
        self.addr = addr
        self._reactor: Any = site.reactor
        self._buffer = b""
        self._last = 0.0

    @property
    def web(self) -> Protocol | None:
        """The ``twisted.web`` channel serving this connection since the hand-over, if any."""
        return self._web

    # -- the connection -----------------------------------------------------------

    def connectionMade(self) -> None:
        with contextlib.suppress(AttributeError, OSError):  # not TCP: a unix socket
            self.transport.setTcpNoDelay(True)  # type: ignore[union-attr]
        self._last = self._reactor.seconds()
        timeout = self.site.timeOut
        if timeout:
            self._idle = self._reactor.callLater(timeout, self._idle_check)

    def dataReceived(self, data: bytes) -> None:
        web = self._web
        if web is not None:
            web.dataReceived(data)
            return
        self._buffer = self._buffer + data if self._buffer else data
        self._last = self._reactor.seconds()
        if self._current is None:
            self._advance()
        elif len(self._buffer) > PIPELINE_LIMIT and not self._paused:
            self._paused = True
            self.transport.pauseProducing()  # type: ignore[union-attr]

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._gone = True
        self._stop_timers()
        web, self._web = self._web, None
        if web is not None:
            web.connectionLost(reason)
            return
        current, self._current = self._current, None
        if current is not None and not current.finished:
            current.connectionLost(reason)
            self.site.report_lean(current, 499)  # the client went away first

    def cut(self) -> None:
        self._gone = True
        transport: Any = self.transport
        transport.loseConnection()

    # -- requests ---------------------------------------------------------------------

    def _advance(self) -> None:
        """Serve what the buffer holds, one request at a time."""
        if self._advancing:
            return
        self._advancing = True
        try:
            while self._current is None and self._web is None and not self._gone:
                if not self._next():
                    break
        finally:
            self._advancing = False

    def _next(self) -> bool:
        """Start the next request if it is all here; False when it is not (or handed over)."""
        buffer = self._buffer
        head = self._head
        if head is None:
            if not buffer:
                return False
            end = buffer.find(b"\r\n\r\n", 0, HEAD_LIMIT + 4)
            if end < 0:
                if len(buffer) >= HEAD_LIMIT + 4:
                    self._hand_over()
                    return False
                self._expect("head")
                return False
            head = parse_head(buffer[:end])
            if head is None or not self.site.lean_route(head):
                self._hand_over()
                return False
            self._head = head
            buffer = self._buffer = buffer[end + 4 :]
            self._stop_deadline()  # the head came in time; the body has its own
        length = head.content_length
        if len(buffer) < length:
            self._expect("body")
            return False
        self._head = None
        if length:
            body, self._buffer = buffer[:length], buffer[length:]
        else:
            body = b""
        self._stop_deadline()
        request = LeanRequest(self, head, body, self._reactor.seconds())
        self._current = request
        self.site.serve_lean(request)
        return True

    def finished(self, request: LeanRequest, status: int) -> None:
        """``request`` has its whole response: report it, go on with the next."""
        self.site.report_lean(request, status)
        if self._current is request:
            self._current = None
        self._last = self._reactor.seconds()
        if not request.keep_alive:
            self.cut()
            return
        if self._paused:
            self._paused = False
            self.transport.resumeProducing()  # type: ignore[union-attr]
        if self._buffer:
            self._advance()

    # -- deadlines and the idle timeout --------------------------------------------

    def _expect(self, part: str) -> None:
        if self._deadline is not None:
            return  # armed when this part began; it does not restart with every byte
        seconds = self.site.deadline_for(part)
        self._deadline = self._reactor.callLater(seconds, self._too_slow, part, seconds)

    def _stop_deadline(self) -> None:
        deadline, self._deadline = self._deadline, None
        if deadline is not None and deadline.active():
            deadline.cancel()

    def _too_slow(self, part: str, seconds: float) -> None:
        self._deadline = None
        transport: Any = self.transport
        transport.write(too_slow_answer(part, seconds))
        self.cut()

    def _idle_check(self) -> None:
        """Close a connection idle for the site's timeout; a request in progress has none."""
        self._idle = None
        if self._web is not None or self._gone:
            return
        timeout = self.site.timeOut
        busy = self._current is not None or self._head is not None
        left = timeout if busy else self._last + timeout - self._reactor.seconds()
        if left > 0:
            self._idle = self._reactor.callLater(left, self._idle_check)
            return
        self.cut()

    def _stop_timers(self) -> None:
        for name in ("_deadline", "_idle"):
            timer = getattr(self, name)
            setattr(self, name, None)
            if timer is not None and timer.active():
                timer.cancel()

    # -- the hand-over -------------------------------------------------------------------

    def _hand_over(self) -> None:
        """From now on ``twisted.web`` serves this connection, starting with the buffered bytes."""
        self._stop_timers()
        web: Protocol = self.site.web_channel(self.addr)
        self._web = web
        web.makeConnection(self.transport)
        data, self._buffer = self._buffer, b""
        if data:
            web.dataReceived(data)
