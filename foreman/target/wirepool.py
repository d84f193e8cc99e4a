"""Keep-alive connections to the target for the lean client (``foreman.target.wire``).

``WirePool.request`` formats a request once (request line, Host, the caller's
header lines, Content-Length, a bytes body) and sends it on the most recently
used idle connection, or on a new one. A connection comes back the moment its
response body ends and the response allowed keep-alive, so the next request
goes out on it at once. At most ``max_idle`` connections wait, each at most
``idle_timeout`` seconds; one timer sweeps them, so taking and returning a
connection costs no timer work. A request whose reused connection drops
before any byte of the answer (the target had closed it while it sat idle) is
sent once more on a new connection, unless its body was a producer that
cannot be replayed.

``close()`` closes the idle connections and fires once they are closed; any
connection still busy then is closed as soon as its response ends.
"""

from __future__ import annotations

from typing import Any

from attrs import frozen
from twisted.internet.defer import Deferred, DeferredList, fail
from twisted.internet.interfaces import IAddress, IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer, IResponse

from foreman.target.exchange import Exchange
from foreman.target.wire import WireConnection

__all__ = ["Prepared", "WirePool"]

#: Methods that announce an empty body (``Content-Length: 0``) when they have none.
_BODY_METHODS = frozenset({b"POST", b"PUT", b"PATCH"})


@frozen
class Prepared:
    """A whole request, formatted ahead of the moment it is sent (``WirePool.prepare``)."""

    method: bytes
    data: bytes


class _Factory(Factory):
    noisy = False  # no "Starting factory" line for every new connection

    def __init__(self, pool: WirePool) -> None:
        self._pool = pool

    def buildProtocol(self, addr: IAddress | None) -> WireConnection:
        return WireConnection(self._pool)


class WirePool:
    """The lean client's connections to one endpoint."""

    def __init__(
        self,
        reactor: Any,
        endpoint: IStreamClientEndpoint,
        host_line: bytes,
        *,
        max_idle: int = 4,
        idle_timeout: float = 50.0,
    ) -> None:
        self._reactor = reactor
        self._endpoint = endpoint
        self._host_line = host_line  # b"Host: name[:port]\r\n"
        self._max_idle = max_idle
        self._idle_timeout = idle_timeout
        self._factory = _Factory(self)
        self._idle: list[WireConnection] = []  # oldest first; the newest is used next
        self._sweeper: Any = None
        self._closed = False
        self.connects = 0  # connections opened so far (tests and curiosity)

    def request(
        self,
        method: bytes,
        target: bytes,
        head: list[bytes],
        body: bytes | IBodyProducer | None,
    ) -> Deferred[IResponse]:
        """Send a request; fires with the response once its head arrives.

        ``target`` is the request target (origin form); ``head`` holds complete
        header lines (``b"Name: value\\r\\n"``) without Host and Content-Length.
        A body is bytes (written with the head) or a producer with a known
        length (streamed after it). Cancelling the Deferred aborts the request.
        """
        try:
            parts = self._parts(method, target, head, body)
        except ValueError as e:
            return fail(e)
        producer = None if body is None or isinstance(body, bytes) else body
        ex = Exchange(method, parts, producer)
        self._dispatch(ex)
        return ex.d

    def prepare(self, method: bytes, target: bytes, head: list[bytes], body: bytes) -> Prepared:
        """A request with a bytes body, formatted now and sent later by ``send``.

        The worker builds the next job's request while the target works on the
        current one, so handing the target on costs a single write (ADR 0024).
        """
        return Prepared(method, b"".join(self._parts(method, target, head, body)))

    def _parts(
        self,
        method: bytes,
        target: bytes,
        head: list[bytes],
        body: bytes | IBodyProducer | None,
    ) -> list[bytes]:
        """Request line, Host, the caller's header lines, Content-Length and a bytes body."""
        parts = [b"%s %s HTTP/1.1\r\n" % (method, target), self._host_line, *head]
        if body is None:
            parts.append(b"Content-Length: 0\r\n\r\n" if method in _BODY_METHODS else b"\r\n")
        elif isinstance(body, bytes):
            parts.append(b"Content-Length: %d\r\n\r\n" % len(body))
            parts.append(body)
        else:
            if body.length is UNKNOWN_LENGTH:
                raise ValueError("a request body producer needs a known length")
            parts.append(b"Content-Length: %d\r\n\r\n" % body.length)
        return parts

    def send(self, prepared: Prepared) -> Deferred[IResponse]:
        """Send a request ``prepare`` formatted: like ``request``, minus the formatting."""
        ex = Exchange(prepared.method, [prepared.data], None)
        self._dispatch(ex)
        return ex.d

    def _dispatch(self, ex: Exchange) -> None:
        """On the most recently used idle connection, or on a new one."""
        idle = self._idle
        while idle:
            conn = idle.pop()
            if not conn.stale():
                conn.send(ex, True)
                return
        self._connect(ex)

    # -- connections -----------------------------------------------------------

    def _connect(self, ex: Exchange) -> None:
        self.connects += 1
        d: Deferred[Any] = self._endpoint.connect(self._factory)
        ex.connecting = d
        d.addCallbacks(self._connected, self._not_connected, callbackArgs=(ex,), errbackArgs=(ex,))

    def _connected(self, conn: WireConnection, ex: Exchange) -> None:
        ex.connecting = None
        if ex.fired:
            self.idle(conn)
        else:
            conn.send(ex, False)

    def _not_connected(self, failure: Any, ex: Exchange) -> None:
        ex.connecting = None
        if not ex.fired:
            ex.fail(failure)

    # -- ConnectionHooks -----------------------------------------------------------

    def idle(self, conn: WireConnection) -> None:
        idle = self._idle
        if self._closed or conn.lost or len(idle) >= self._max_idle:
            conn.transport.loseConnection()  # type: ignore[union-attr]
            return
        conn.idle_since = self._reactor.seconds()
        idle.append(conn)
        if self._sweeper is None:
            self._sweeper = self._reactor.callLater(self._idle_timeout, self._sweep)

    def forget(self, conn: WireConnection) -> None:
        if conn in self._idle:
            self._idle.remove(conn)

    def retry(self, exchange: Exchange) -> None:
        self._connect(exchange)

    # -- idle timeout and shutdown ---------------------------------------------------

    def _sweep(self) -> None:
        self._sweeper = None
        now = self._reactor.seconds()
        idle = self._idle
        while idle and idle[0].idle_since + self._idle_timeout <= now:
            idle.pop(0).transport.loseConnection()  # type: ignore[union-attr]
        if idle:
            wait = idle[0].idle_since + self._idle_timeout - now
            self._sweeper = self._reactor.callLater(wait, self._sweep)

    @property
    def idle_count(self) -> int:
        return len(self._idle)

    def close(self) -> Deferred[None]:
        """Close the idle connections (fires when they are closed); busy ones close when done."""
        self._closed = True
        sweeper, self._sweeper = self._sweeper, None
        if sweeper is not None and sweeper.active():
            sweeper.cancel()
        idle, self._idle = self._idle, []
        waits = [conn.closed() for conn in idle]
        for conn in idle:
            conn.transport.loseConnection()  # type: ignore[union-attr]
        done: Deferred[None] = DeferredList(waits).addCallback(lambda _: None)
        return done
