"""When and how long to retry (pure): which failures are transient, and the backoff."""

from __future__ import annotations

import random

from attrs import frozen
from twisted.internet import error as neterror
from twisted.internet.defer import CancelledError
from twisted.internet.defer import TimeoutError as DeferTimeout
from twisted.web._newclient import (
    RequestNotSent,
    RequestTransmissionFailed,
    ResponseFailed,
    ResponseNeverReceived,
)

from foreman.client._errors import ForemanConnectionError, ServiceUnavailable
from foreman.core.backoff import Backoff, JitterMode

__all__ = ["RetryPolicy", "is_transient"]

_TRANSIENT = (
    neterror.ConnectError,  # refused, no route, connect timeout …
    neterror.ConnectingCancelledError,  # our timeout cancelled a connect attempt
    neterror.ConnectionLost,
    neterror.ConnectionClosed,
    neterror.TimeoutError,
    DeferTimeout,
    CancelledError,  # our own per-call timeout cancelled the exchange
    ResponseNeverReceived,
    RequestNotSent,
    RequestTransmissionFailed,
    ResponseFailed,
    ForemanConnectionError,  # a reply cut short while reading it
    ServiceUnavailable,  # 502/503/504 other than a full queue: a proxy or a restart
)


def is_transient(exc: BaseException) -> bool:
    """A failure worth another try of a call that is safe to repeat."""
    return isinstance(exc, _TRANSIENT) and not _is_queue_full(exc)


def _is_queue_full(exc: BaseException) -> bool:
    return getattr(exc, "code", None) == "queue_full"


_JITTER = 0.25


@frozen
class RetryPolicy:
    """``attempts`` tries in all; the n-th retry waits ``base * 2**(n-1)`` (capped), ±25 %."""

    attempts: int = 4
    base: float = 0.2
    cap: float = 5.0

    def delay(self, retry: int, rand: float | None = None) -> float:
        """Seconds before retry number ``retry`` (1-based); ``rand`` in [0, 1) for jitter."""
        if retry <= 0:
            return 0.0
        backoff = Backoff.exponential(self.base, self.cap, _JITTER, JitterMode.SPREAD)
        return backoff.delay(retry, draw=random.random() if rand is None else rand)
