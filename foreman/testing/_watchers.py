"""``wait_for``: Deferreds that fire when a predicate on the simulator becomes true.

The simulator calls :meth:`Watchers.changed` after every state change, so a
test awaits a condition without polling loops or stray timers; each wait
owns one timeout call, cancelled as soon as the wait ends.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall


class _Watcher:
    def __init__(self, predicate: Callable[[], bool], d: Deferred[None]) -> None:
        self.predicate = predicate
        self.d = d
        self.call: IDelayedCall | None = None


class Watchers:
    def __init__(self, clock: Any) -> None:
        self._clock = clock
        self._watchers: list[_Watcher] = []

    def wait_for(self, predicate: Callable[[], bool], timeout: float) -> Deferred[None]:
        try:
            if predicate():
                return succeed(None)
        except Exception as exc:
            return fail(exc)

        def cancel(_: Deferred[None]) -> None:
            self._drop(watcher)

        d: Deferred[None] = Deferred(cancel)
        watcher = _Watcher(predicate, d)

        def expire() -> None:
            self._drop(watcher)
            d.errback(TimeoutError(f"condition not met within {timeout} s"))

        watcher.call = self._clock.callLater(timeout, expire)
        self._watchers.append(watcher)
        return d

    def _drop(self, watcher: _Watcher) -> None:
        if watcher in self._watchers:
            self._watchers.remove(watcher)
        if watcher.call is not None and watcher.call.active():
            watcher.call.cancel()

    def changed(self) -> None:
        """Re-check every predicate; fire the waits that are now satisfied."""
        for watcher in list(self._watchers):
            try:
                ok = watcher.predicate()
            except Exception as exc:
                self._drop(watcher)
                watcher.d.errback(exc)
                continue
            if ok:
                self._drop(watcher)
                watcher.d.callback(None)

    def cancel_all(self) -> None:
        for watcher in list(self._watchers):
            self._drop(watcher)
            watcher.d.cancel()
