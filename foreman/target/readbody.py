"""Read an HTTP response body with a size limit and a deadline, or close the connection.

``treq.content`` reads whatever the other side sends for as long as it sends
it, and cancelling it leaves the connection open. Every body foreman reads
from outside (the target's metadata, a webhook receiver's answer) goes
through ``read_body`` instead: past ``limit`` bytes or ``timeout`` seconds the
connection is closed at once (``stopProducing`` on the body's transport), so a
receiver that trickles or floods costs neither memory nor a slot.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import IResponse

__all__ = [
    "BodyTimeout",
    "BodyTooLarge",
    "HeadersTimeout",
    "fetch",
    "read_body",
    "request_with_deadline",
]


class BodyTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"the body is larger than {limit} bytes")
        self.limit = limit


class BodyTimeout(Exception):
    def __init__(self, timeout: float) -> None:
        super().__init__(f"the body did not arrive within {timeout:g} s")
        self.timeout = timeout


class HeadersTimeout(Exception):
    def __init__(self, timeout: float) -> None:
        super().__init__(f"no answer within {timeout:g} s")
        self.timeout = timeout


class _Bounded(Protocol):
    def __init__(self, limit: int, keep: bool, done: Deferred[bytes]) -> None:
        self._limit = limit
        self._keep = keep
        self._done = done
        self._chunks: list[bytes] = []
        self._size = 0

    def dataReceived(self, data: bytes) -> None:
        if self._done.called:
            return
        self._size += len(data)
        if self._size > self._limit:
            self.give_up(BodyTooLarge(self._limit))
        elif self._keep:
            self._chunks.append(data)

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        if self._done.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self._done.callback(b"".join(self._chunks))
        else:
            self._done.errback(reason)

    def give_up(self, error: Exception) -> None:
        """Fail the read and close the connection; what is still coming is never read."""
        self._chunks.clear()
        # a response body's transport is a producer (TransportProxyProducer)
        stop = getattr(self.transport, "stopProducing", None)
        if stop is not None:
            stop()
        if not self._done.called:
            self._done.errback(error)


async def read_body(
    response: IResponse, *, limit: int, timeout: float, clock: Any, keep: bool = True
) -> bytes:
    """The whole body (``b""`` when ``keep`` is false), or BodyTooLarge / BodyTimeout."""
    protocol: _Bounded

    def cancel(_: Deferred[bytes]) -> None:
        protocol.give_up(BodyTimeout(timeout))

    done: Deferred[bytes] = Deferred(cancel)
    protocol = _Bounded(limit, keep, done)
    response.deliverBody(protocol)
    timer = clock.callLater(timeout, protocol.give_up, BodyTimeout(timeout))
    try:
        return await done
    finally:
        if timer.active():
            timer.cancel()


async def request_with_deadline(
    agent: Any,
    method: bytes,
    url: bytes,
    headers: Any,
    *,
    timeout: float,
    clock: Any,
    body: Any = None,
) -> IResponse:
    """``agent.request`` whose connect and response headers must come within ``timeout``."""
    d: Deferred[IResponse] = agent.request(method, url, headers, body)
    expired = False

    def expire() -> None:
        nonlocal expired
        expired = True
        d.cancel()

    timer = clock.callLater(timeout, expire)
    try:
        response: IResponse = await d
    except Exception:
        if expired:
            raise HeadersTimeout(timeout) from None
        raise
    finally:
        if timer.active():
            timer.cancel()
    return response


async def fetch(
    agent: Any, url: bytes, headers: Any, *, timeout: float, limit: int, clock: Any
) -> tuple[IResponse, bytes]:
    """GET ``url``: headers within ``timeout``, then at most ``limit`` bytes within another."""
    response = await request_with_deadline(
        agent, b"GET", url, headers, timeout=timeout, clock=clock
    )
    body = await read_body(response, limit=limit, timeout=timeout, clock=clock)
    return response, body
