"""Every timer the simulator starts, so that ``close()`` can cancel them all."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.task import deferLater


class Timers:
    """Tracks delays (Deferreds) and delayed calls until they fire or are cancelled."""

    def __init__(self, clock: Any) -> None:
        self._clock = clock
        self._deferreds: set[Deferred[Any]] = set()
        self._calls: set[IDelayedCall] = set()
        self._closed = False

    def _track(self, d: Deferred[Any]) -> Deferred[Any]:
        self._deferreds.add(d)

        def untrack(result: object) -> object:
            self._deferreds.discard(d)
            return result

        d.addBoth(untrack)
        return d

    def delay(self, seconds: float) -> Deferred[None]:
        """Fires after ``seconds``; cancelling it cancels the timer."""
        if self._closed:
            return fail(CancelledError())
        d: Deferred[None] = deferLater(self._clock, max(0.0, seconds), lambda: None)
        self._track(d)
        return d

    def never(self) -> Deferred[None]:
        """Never fires by itself; only cancellation (client gone, close) ends it."""
        if self._closed:
            return fail(CancelledError())
        d: Deferred[None] = Deferred()
        self._track(d)
        return d

    def call_later(self, seconds: float, f: Callable[[], object]) -> IDelayedCall:
        if self._closed:
            raise RuntimeError("timers are closed")
        holder: list[IDelayedCall] = []

        def run() -> None:
            self._calls.discard(holder[0])
            f()

        call: IDelayedCall = self._clock.callLater(max(0.0, seconds), run)
        holder.append(call)
        self._calls.add(call)
        return call

    def cancel(self, call: IDelayedCall | None) -> None:
        if call is not None and call.active():
            call.cancel()
        if call is not None:
            self._calls.discard(call)

    def close(self) -> None:
        """Cancel everything and refuse new timers (the simulator is closing)."""
        self._closed = True
        self.cancel_all()

    def cancel_all(self) -> None:
        for call in list(self._calls):
            if call.active():
                call.cancel()
        self._calls.clear()
        for d in list(self._deferreds):
            d.cancel()
        self._deferreds.clear()
