"""One request to the target and its response, as the lean client hands them out.

``Exchange`` is a request on its way: the bytes to write, an optional body
producer, the Deferred the caller holds, and where the request is
(connecting, or on a connection). Cancelling the Deferred before the
response head arrives aborts the request.

``WireResponse`` is what the callers use from ``IResponse``: ``code``,
``phrase``, ``headers`` (without the connection control headers, as Agent
does), ``length`` (an int, or ``UNKNOWN_LENGTH``) and ``deliverBody``. It is
also the body protocol's transport: ``pauseProducing``/``resumeProducing``
pause the socket reads (backpressure), ``stopProducing`` aborts the
connection. Body bytes that come before ``deliverBody`` (at most one read:
the connection pauses reading until then) are kept and handed over first.

The connection (``foreman.target.wire``) drives both through ``Carrier``.
"""

from __future__ import annotations

from typing import Any, Protocol, cast

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IProtocol, IPushProducer
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer, IResponse
from zope.interface import implementer

__all__ = ["Carrier", "Exchange", "WireError", "WireResponse"]


class WireError(Exception):
    """The target's answer broke HTTP/1.1 framing or one of the size limits."""


class Carrier(Protocol):
    """What an exchange and its response need from the connection carrying them."""

    def cancel(self, ex: Exchange) -> None:
        """Abort ``ex`` (its head has not come): close the connection."""

    def pause(self, user: bool) -> None:
        """Stop reading (``user``: the body protocol asked; else until deliverBody)."""

    def resume(self, user: bool) -> None:
        """Read again, unless the other reason to pause still holds."""

    def delivered(self) -> None:
        """The response has its body protocol now."""

    def stop(self) -> None:
        """Abort the connection: the body ends with ResponseFailed."""


class Exchange:
    """One request: its bytes, its Deferred, and where it is."""

    __slots__ = (
        "conn",
        "connecting",
        "d",
        "fired",
        "method",
        "parts",
        "producer",
        "retried",
        "sending",
    )

    def __init__(self, method: bytes, parts: list[bytes], producer: IBodyProducer | None) -> None:
        self.method = method
        self.parts = parts  # request line, headers and (bytes) body: one writeSequence
        self.producer = producer  # a body with a known length, streamed after ``parts``
        self.sending = False  # the producer is writing the body
        self.d: Deferred[IResponse] = Deferred(self._cancel)
        self.fired = False  # ``d`` has fired or was cancelled: nothing may fire it again
        self.retried = False
        self.conn: Carrier | None = None
        self.connecting: Deferred[Any] | None = None

    def fire(self, response: WireResponse) -> None:
        self.fired = True
        self.d.callback(response)

    def fail(self, failure: Failure) -> None:
        self.fired = True
        self.d.errback(failure)

    def _cancel(self, d: Deferred[IResponse]) -> None:
        # The Deferred errbacks with CancelledError once this returns.
        self.fired = True
        connecting, self.connecting = self.connecting, None
        if connecting is not None:
            connecting.cancel()
        elif self.conn is not None:
            self.conn.cancel(self)


@implementer(IResponse, IPushProducer)
class WireResponse:
    """A response whose head has arrived, and the transport its body protocol sees."""

    __slots__ = (
        "_buffer",
        "_conn",
        "_delivered",
        "_end",
        "_protocol",
        "_stopped",
        "code",
        "headers",
        "length",
        "phrase",
        "previousResponse",
        "request",
        "version",
    )

    def __init__(
        self,
        version: tuple[bytes, int, int],
        code: int,
        phrase: bytes,
        headers: Headers,
        length: int | object,
        conn: Carrier | None,
    ) -> None:
        self.version = version
        self.code = code
        self.phrase = phrase
        self.headers = headers
        self.length = length
        self.request = None
        self.previousResponse: IResponse | None = None
        self._conn = conn  # while the body is arriving
        self._protocol: IProtocol | None = None
        self._buffer: list[bytes] | None = None  # body bytes that came before deliverBody
        self._end: Failure | None = None  # how the body ended, before deliverBody
        self._stopped = False
        self._delivered = False

    def __repr__(self) -> str:
        return f"<WireResponse {self.code} length={self.length!r}>"

    # -- IResponse -----------------------------------------------------------

    def deliverBody(self, protocol: IProtocol) -> None:
        if self._delivered:
            raise RuntimeError("the body was already delivered")
        self._delivered = True
        self._protocol = protocol
        protocol.makeConnection(cast(Any, self))
        buffered, self._buffer = self._buffer, None
        if buffered and not self._stopped:
            for data in buffered:
                protocol.dataReceived(data)
        end, self._end = self._end, None
        if end is not None:
            self._protocol = None
            protocol.connectionLost(end)
            return
        conn = self._conn
        if conn is not None:
            conn.delivered()

    def setPreviousResponse(self, response: IResponse) -> None:
        self.previousResponse = response

    # -- IPushProducer (the body protocol's transport) -------------------------

    def pauseProducing(self) -> None:
        if self._conn is not None:
            self._conn.pause(user=True)

    def resumeProducing(self) -> None:
        if self._conn is not None:
            self._conn.resume(user=True)

    def stopProducing(self) -> None:
        """Abort the connection: the body ends with ResponseFailed."""
        conn = self._conn
        if conn is not None and not self._stopped:
            self._stopped = True
            conn.stop()

    # -- from the connection ----------------------------------------------------

    def data(self, data: bytes) -> None:
        protocol = self._protocol
        if protocol is not None:
            protocol.dataReceived(data)
        elif self._buffer is None:
            self._buffer = [data]
        else:
            self._buffer.append(data)

    def finish(self, reason: Failure) -> None:
        self._conn = None
        protocol = self._protocol
        if protocol is None:
            self._end = reason
            return
        self._protocol = None
        protocol.connectionLost(reason)
