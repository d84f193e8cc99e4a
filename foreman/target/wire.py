"""A lean HTTP/1.1 client connection to the target: one request at a time, parsed in place.

Twisted's ``HTTP11ClientProtocol`` gives every response a line receiver, a
parser object, a transport proxy, a Deferred chain and a state dispatcher per
method call; on a small keep-alive request that machinery was about 29 % of
the daemon's busy time (docs/performance.md). ``WireConnection`` does the same
job for the one peer foreman talks to: it writes a request handed to it whole
(``Exchange``), finds the end of the response head with one search, frames
the body (Content-Length, chunked, or until close) and passes each piece of a
read to the body protocol as it comes (``WireResponse``, in
``foreman.target.exchange``).

The body ends with ``ResponseDone``, ``PotentialDataLoss`` (a body delimited by
the connection closing) or ``ResponseFailed``. Before the head arrives, a
dropped connection is ``ResponseNeverReceived`` (no byte came) or
``ResponseFailed``; a broken or oversized head is ``ResponseFailed`` around a
``WireError``. Each line of a head (and of chunk framing) is at most
``MAX_LINE`` bytes, a head at most ``MAX_HEADERS`` headers: past that the
response fails at once, nothing is buffered further.

The pool (``foreman.target.wirepool``) hands a connection one ``Exchange`` at a
time; the connection gives itself back (``ConnectionHooks.idle``) the moment
a body ends on a connection that may be kept, before the body protocol hears
``connectionLost``, so the next request can go out on it at once.
"""

from __future__ import annotations

import select
import socket
from typing import Any, Protocol, cast

from twisted.internet import tcp
from twisted.internet.defer import Deferred, fail
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import ITCPTransport
from twisted.internet.protocol import Protocol as TwistedProtocol
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import (
    RequestGenerationFailed,
    RequestTransmissionFailed,
    ResponseDone,
    ResponseFailed,
    ResponseNeverReceived,
)
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import UNKNOWN_LENGTH

from foreman.target.exchange import Exchange, WireError, WireResponse
from foreman.target.wirehead import (
    BY_LENGTH,
    CHUNKED,
    MAX_HEADERS,
    MAX_LINE,
    NO_BODY,
    UNTIL_CLOSE,
    parse_head,
)

__all__ = ["ConnectionHooks", "WireConnection", "send_now", "write_now"]

_log = Logger()

#: Methods sent again when a kept connection drops before any byte of the answer,
#: the request having gone out (RFC 9110 9.2.2); a POST may have started a generation.
_IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})
_POLL = getattr(select, "poll", None)
#: how every complete body ends; one shared instance (the body protocols only look
#: at it), since building a Failure per response was a measurable part of a relay
_DONE = Failure(ResponseDone("Response body fully received"))
_HEX = b"0123456789abcdefABCDEF"

# what the next bytes are: a head, or a body framed one of parse_head's ways
_HEAD, _CHUNK_DATA, _CHUNK_END, _TRAILER = 10, 11, 12, 13
_LENGTH, _CHUNK_SIZE, _CLOSE = BY_LENGTH, CHUNKED, UNTIL_CLOSE


class ConnectionHooks(Protocol):
    """What a connection tells its pool."""

    def idle(self, conn: WireConnection) -> None:
        """The connection finished a response and may carry another request."""

    def forget(self, conn: WireConnection) -> None:
        """The connection is closing: never hand it out again."""

    def retry(self, exchange: Exchange) -> None:
        """Send ``exchange`` again on a fresh connection."""


_TCP_TYPES: dict[type, bool] = {}  # transport class -> is a reactor TCP connection


def _plain_tcp(transport: Any) -> bool:
    """A TCP connection of the reactor's own, without TLS (a TLS wrapper forwards
    attribute lookups to the TCP transport under it, so duck typing is not enough)."""
    kind = type(transport)
    tcp_type = _TCP_TYPES.get(kind)
    if tcp_type is None:  # isinstance against the class tree is slow: once per class
        tcp_type = _TCP_TYPES[kind] = issubclass(kind, tcp.Connection)
    return tcp_type and not getattr(transport, "TLS", False)


def send_now(transport: Any) -> None:
    """Hand what was just written to the socket now instead of on the reactor's next turn.

    Twisted buffers every write until its next poll, after all the other work
    of this turn (relaying the answer, the next dispatch, the access line …):
    on a relayed request that was a measurable part of the added latency and
    of the gap between two dispatches. Plain TCP transports only (``doWrite``);
    one that is closing is left to the reactor.
    """
    if (
        _plain_tcp(transport)
        and not transport.disconnecting
        and (transport.dataBuffer or transport._tempDataBuffer)
    ):
        transport.doWrite()


def write_now(transport: Any, data: bytes) -> None:
    """Write ``data`` and hand it to the socket now (see ``send_now``).

    When nothing waits in a plain TCP transport's buffer, the bytes go
    straight to its socket: no buffering, and not the two ``epoll_ctl`` calls a
    buffered write costs (start, then stop, waiting for writability), which
    showed in a profile of 1 000 relayed streams. What the socket does not take
    is written to the transport as usual, so order and backpressure stay
    Twisted's. Any other transport (TLS, closing, with bytes pending) takes the
    ordinary path and ``send_now``.
    """
    if (
        not _plain_tcp(transport)
        or transport.disconnecting
        or not transport.connected
        or getattr(transport, "dataBuffer", True)
        or getattr(transport, "_tempDataBuffer", True)
    ):
        transport.write(data)
        send_now(transport)
        return
    try:
        sent = transport.socket.send(data)
    except (BlockingIOError, InterruptedError):
        sent = 0
    except OSError:
        transport.write(data)  # the reactor meets the error when it writes, and reports it
        return
    if sent < len(data):
        transport.write(data[sent:])


class WireConnection(TwistedProtocol):
    """One keep-alive connection to the target, carrying one exchange at a time."""

    def __init__(self, hooks: ConnectionHooks) -> None:
        self._hooks = hooks
        self._ex: Exchange | None = None
        self._response: WireResponse | None = None
        self._phase = _HEAD
        self._partial: bytearray | None = None  # an unfinished head or line
        self._lines = 0  # lines of an unfinished head (or of the trailers) so far
        self._tail = 0  # length of the unfinished last line of a head
        self._remaining = 0  # bytes left in a Content-Length body or a chunk
        self._keep = False  # the response allows another request on this connection
        self._got = False  # a byte of the current response has arrived
        self._halted = False  # aborted: read nothing more, never reuse
        self._paused_user = False
        self._paused_wait = False  # head delivered, no body protocol yet
        self._reused = False
        self._waiters: list[Deferred[None]] = []
        self._poller: Any = None
        self.lost = False
        self.idle_since = 0.0

    def connectionMade(self) -> None:
        transport: Any = self.transport
        if ITCPTransport.providedBy(transport):
            transport.setTcpNoDelay(True)
            handle = cast(Any, transport).getHandle()
            if _POLL is not None and isinstance(handle, socket.socket):  # not over TLS
                self._poller = _POLL()
                self._poller.register(handle.fileno(), select.POLLIN)

    def stale(self) -> bool:
        """Closed (or written to) by the target while idle, the reactor not told yet.

        One ``poll`` without waiting, before a kept connection carries a
        request: a target that closed it while it sat in the pool is noticed
        before anything is sent, whatever the method. A stale connection is
        closed here.
        """
        poller = self._poller
        if poller is None or not poller.poll(0):
            return False
        self._halt()
        return True

    # -- requests ------------------------------------------------------------------

    def send(self, ex: Exchange, reused: bool) -> None:
        """Write ``ex``'s request; its Deferred fires when the response head is in."""
        self._ex = ex
        ex.conn = self
        self._reused = reused
        self._got = False
        self._phase = _HEAD
        self._lines = self._tail = 0
        transport: Any = self.transport
        producer = ex.producer
        if producer is None:
            write_now(transport, b"".join(ex.parts))
        else:
            transport.writeSequence(ex.parts)
        if producer is not None:
            ex.sending = True
            transport.registerProducer(producer, True)
            try:
                producing: Deferred[None] = producer.startProducing(transport)
            except Exception:
                producing = fail()
            producing.addCallbacks(
                self._sent, self._send_failed, callbackArgs=(ex,), errbackArgs=(ex,)
            )

    def _sent(self, _: object, ex: Exchange) -> None:
        if ex.sending:
            ex.sending = False
            cast(Any, self.transport).unregisterProducer()

    def _send_failed(self, failure: Failure, ex: Exchange) -> None:
        if not ex.sending:
            return  # already stopped: the response ended first, or the connection went
        ex.sending = False
        if self.lost:
            return
        cast(Any, self.transport).unregisterProducer()
        if self._ex is ex:
            self._fail(ex, Failure(RequestGenerationFailed([failure])), wrap=False)

    def _stop_sending(self, ex: Exchange) -> None:
        producer = ex.producer
        if producer is None or not ex.sending:
            return
        ex.sending = False
        try:
            producer.stopProducing()
        except Exception:
            _log.failure("stopping a request body failed")
        if not self.lost:
            cast(Any, self.transport).unregisterProducer()

    def cancel(self, ex: Exchange) -> None:
        """The caller gave up on ``ex`` before its head came: drop the connection."""
        if self._ex is not ex:
            return
        self._ex = None
        self._response = None
        self._halt()
        self._stop_sending(ex)

    def closed(self) -> Deferred[None]:
        """Fires once the connection is closed."""
        d: Deferred[None] = Deferred()
        if self.lost:
            d.callback(None)
        else:
            self._waiters.append(d)
        return d

    # -- body flow control (from WireResponse) ----------------------------------------

    def pause(self, user: bool) -> None:
        if not (self._paused_user or self._paused_wait or self._halted):
            cast(Any, self.transport).pauseProducing()
        if user:
            self._paused_user = True
        else:
            self._paused_wait = True

    def resume(self, user: bool) -> None:
        if user:
            self._paused_user = False
        else:
            self._paused_wait = False
        if not (self._paused_user or self._paused_wait or self._halted):
            cast(Any, self.transport).resumeProducing()

    def delivered(self) -> None:
        if self._paused_wait:
            self.resume(user=False)

    def stop(self) -> None:
        if self._ex is not None:
            self._halt()

    def _halt(self) -> None:
        if not self._halted:
            self._halted = True
            self._hooks.forget(self)
            cast(Any, self.transport).abortConnection()

    # -- reading ---------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        ex = self._ex
        if ex is None:
            if not self._halted:
                _log.info("the target sent {n} bytes nobody asked for", n=len(data))
                self._halt()
            return
        if self._halted:
            return
        self._got = True
        try:
            while data:
                phase = self._phase
                if phase == _CHUNK_DATA:
                    data = self._chunk_data(data, ex)
                elif phase == _CHUNK_SIZE:
                    data = self._chunk_size(data)
                elif phase == _CHUNK_END:
                    data = self._chunk_end(data)
                elif phase == _LENGTH:
                    data = self._length(data, ex)
                elif phase == _HEAD:
                    data = self._head(data, ex)
                elif phase == _CLOSE:
                    self._body(data)
                    data = b""
                else:
                    data = self._trailer(data)
        except WireError:
            if self._ex is ex:
                self._fail(ex, Failure())
        except Exception:
            failure = Failure()
            _log.failure("reading the target's response failed", failure)
            if self._ex is ex:
                self._fail(ex, failure)

    def _body(self, data: bytes) -> None:
        response = self._response
        assert response is not None
        response.data(data)

    def _line(self, data: bytes) -> tuple[bytes | None, bytes]:
        """The next line (without its end), and what follows; or None and b"" if unfinished."""
        i = data.find(b"\n")
        part = self._partial
        if i < 0:
            if part is None:
                self._partial = part = bytearray(data)
            else:
                part += data
            if len(part) > MAX_LINE:
                raise WireError(f"a line of the response is longer than {MAX_LINE} bytes")
            return None, b""
        if part is None:
            line = data[:i]
        else:
            part += data[:i]
            line = bytes(part)
            self._partial = None
        if line[-1:] == b"\r":
            line = line[:-1]
        if len(line) > MAX_LINE:
            raise WireError(f"a line of the response is longer than {MAX_LINE} bytes")
        return line, data[i + 1 :]

    def _head(self, data: bytes, ex: Exchange) -> bytes:
        part = self._partial
        buf: bytes | bytearray
        if part is None:
            buf, start = data, 0
        else:
            start = len(part) - 2 if len(part) > 2 else 0
            part += data
            buf = part
        end = buf.find(b"\n\r\n", start)
        blank = buf.find(b"\n\n", start, end + 1 if end >= 0 else len(buf))
        if blank >= 0:
            stop, skip = blank, 2
        elif end >= 0:
            stop, skip = end, 3
        else:
            self._unfinished_head(data)
            return b""
        if part is None:
            head, rest = data[:stop], data[stop + skip :]
        else:
            head, rest = bytes(part[:stop]), bytes(part[stop + skip :])
            self._partial = None
            self._lines = self._tail = 0
        return self._parse_head(head, rest, ex)

    def _unfinished_head(self, data: bytes) -> None:
        if self._partial is None:
            self._partial = bytearray(data)
        ends = data.count(b"\n")
        if ends:
            self._lines += ends
            self._tail = len(data) - data.rfind(b"\n") - 1
        else:
            self._tail += len(data)
        if self._tail > MAX_LINE:
            raise WireError(f"a line of the response head is longer than {MAX_LINE} bytes")
        if self._lines > MAX_HEADERS + 1:  # the status line and the headers
            raise WireError(f"the response has more than {MAX_HEADERS} headers")

    def _parse_head(self, head: bytes, rest: bytes, ex: Exchange) -> bytes:
        version, code, phrase, headers, keep, framing, length = parse_head(
            head, ex.method == b"HEAD"
        )
        if code < 200:
            return rest  # 100 Continue and other interim answers: the real one follows
        self._keep = keep
        if framing == NO_BODY:  # the exchange is over with its head
            response = WireResponse(version, code, phrase, headers, 0, None)
            self._response = response
            self._complete(bool(rest))
            ex.fire(response)
            return b""
        self._phase = framing
        self._remaining = length if framing == BY_LENGTH else 0
        response = WireResponse(
            version, code, phrase, headers, length if framing == BY_LENGTH else UNKNOWN_LENGTH, self
        )
        self._response = response
        ex.fire(response)
        if self._ex is not ex or self._halted:
            return b""
        if response._protocol is None:
            self.pause(user=False)  # until deliverBody; at most this read is kept
        return rest

    def _length(self, data: bytes, ex: Exchange) -> bytes:
        response = self._response
        assert response is not None
        n = self._remaining
        size = len(data)
        if size < n:
            self._remaining = n - size
            response.data(data)
            return b""
        self._remaining = 0
        response.data(data if size == n else data[:n])
        if self._ex is ex and not self._halted:
            self._complete(size > n)
        return b""

    def _chunk_size(self, data: bytes) -> bytes:
        line, rest = self._line(data)
        if line is None:
            return b""
        size = line.split(b";", 1)[0].strip(b" \t")
        if not size or len(size) > 16 or size.translate(None, _HEX):
            raise WireError(f"bad chunk size line {line[:100]!r}")
        n = int(size, 16)
        if n:
            if rest[n : n + 2] == b"\r\n":  # the whole chunk came: hand it on in one step
                ex, response = self._ex, self._response
                assert response is not None
                response.data(rest[:n])
                if self._ex is not ex or self._halted:
                    return b""
                return rest[n + 2 :]
            self._phase = _CHUNK_DATA
            self._remaining = n
        else:
            self._phase = _TRAILER
            self._lines = 0
        return rest

    def _chunk_data(self, data: bytes, ex: Exchange) -> bytes:
        response = self._response
        assert response is not None
        n = self._remaining
        size = len(data)
        if size < n:
            self._remaining = n - size
            response.data(data)
            return b""
        self._phase = _CHUNK_END
        if size == n:
            response.data(data)
            return b""
        response.data(data[:n])
        if self._ex is not ex or self._halted:
            return b""
        return data[n:]

    def _chunk_end(self, data: bytes) -> bytes:
        line, rest = self._line(data)
        if line is None:
            return b""
        if line:
            raise WireError("a chunk is longer than its size line says")
        self._phase = _CHUNK_SIZE
        return rest

    def _trailer(self, data: bytes) -> bytes:
        line, rest = self._line(data)
        if line is None:
            return b""
        if line:
            self._lines += 1
            if self._lines > MAX_HEADERS:
                raise WireError(f"the response has more than {MAX_HEADERS} trailer lines")
            return rest  # trailers are read and ignored
        self._complete(bool(rest))
        return b""

    # -- endings -----------------------------------------------------------------------

    def _complete(self, leftover: bool) -> None:
        """The response is whole: back to the pool (or closed), then tell the body protocol."""
        ex, response = self._ex, self._response
        assert ex is not None and response is not None
        self._ex = None
        self._response = None
        self._phase = _HEAD
        keep = self._keep and not leftover
        if ex.sending:
            keep = False  # answered before the request body was all sent
            self._stop_sending(ex)
        if self._paused_user or self._paused_wait:
            self._paused_user = self._paused_wait = False
            if keep:
                cast(Any, self.transport).resumeProducing()
        if keep:
            self._hooks.idle(self)
        else:
            self._halted = True  # whatever else comes is dropped
            cast(Any, self.transport).loseConnection()
        response.finish(_DONE)

    def _fail(self, ex: Exchange, failure: Failure, wrap: bool = True) -> None:
        """Give up on the response (bad framing, a limit, a failed upload): close and report."""
        response = self._response
        self._ex = None
        self._response = None
        self._halt()
        self._stop_sending(ex)
        reason = Failure(ResponseFailed([failure])) if wrap else failure
        if response is not None:
            response.finish(reason)
        elif not ex.fired:
            ex.fail(reason)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost = True
        self._poller = None
        self._hooks.forget(self)
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(None)
        ex = self._ex
        if ex is None:
            return
        response = self._response
        self._ex = None
        self._response = None
        if ex.sending:
            self._stop_sending(ex)
            if response is None and not ex.fired:
                ex.fail(Failure(RequestTransmissionFailed([reason])))
                return
        if response is None:
            if ex.fired:
                return
            if (
                self._reused
                and ex.method in _IDEMPOTENT
                and not (self._got or ex.retried or ex.producer or self._halted)
            ):
                # a kept connection the target closed as the request went out
                ex.retried = True
                ex.conn = None
                self._hooks.retry(ex)
                return
            if self._got:
                ex.fail(Failure(ResponseFailed([reason])))
            else:
                ex.fail(Failure(ResponseNeverReceived([reason])))
            return
        if self._phase == _CLOSE and not self._halted and reason.check(ConnectionDone):
            response.finish(Failure(PotentialDataLoss()))
        else:
            response.finish(Failure(ResponseFailed([reason])))
