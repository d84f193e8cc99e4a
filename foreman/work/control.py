"""Pause, resume and drain the worker; and who is told when the box is busy or idle.

An operator pauses the queue to update the box: requests and jobs are still
accepted and queued, nothing is lost, the worker dispatches nothing until
resumed. ``drain`` pauses and lets the running request finish, then reports
``drained`` so Ollama or the box can be restarted safely. Paused survives a
restart (the ``settings`` table); a drain that a stop interrupted comes back
paused, and drained since nothing runs at start.

``activity`` is what a keep-awake helper on the target box follows: busy
while anything is queued or running. Waiters are told on a change, never
polled.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import Any

from attrs import define, field
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from foreman.store.database import Store
from foreman.work.queue import WorkQueue
from foreman.work.worker import Worker

__all__ = ["QueueControl"]

_log = Logger(namespace="foreman.queue")

PAUSED_KEY = "queue.paused"


def _get(conn: Any, key: str) -> str | None:
    row = conn.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
    return None if row is None else str(row[0])


def _put(conn: Any, key: str, value: str | None) -> None:
    if value is None:
        conn.execute("DELETE FROM settings WHERE key = ?", (key,))
    else:
        conn.execute("INSERT OR REPLACE INTO settings (key, value) VALUES (?, ?)", (key, value))


@define
class _Waiter:
    deferred: Deferred[None]
    timer: Any
    busy: bool | None = None  # activity waiters: the value the caller last saw


@define
class QueueControl:
    store: Store
    queue: WorkQueue
    worker: Worker
    clock: Any  # IReactorTime
    recording: Callable[[], int] = lambda: 0
    """How many finished attempts are still being written (a drain waits for them)."""
    draining: bool = False
    since: float | None = None
    _activity: list[_Waiter] = field(factory=list)
    _drains: list[_Waiter] = field(factory=list)
    _busy: bool = False
    _pending: Any = None  # IDelayedCall: a change seen, told at the end of this turn

    @property
    def paused(self) -> bool:
        return self.worker.paused

    async def load(self) -> None:
        """Paused before a stop stays paused (read before the worker starts)."""
        value = await self.store.read(_get, PAUSED_KEY)
        if value is not None:
            self.since = float(value)
            self.worker.hold()
            _log.warn(
                "the queue is paused (since {since}); POST /queue/resume to dispatch again",
                since=_when(self.since),
            )
        self.queue.on_change = self.changed
        self.worker.on_change = self.changed
        self._busy = self.busy

    # -- state

    @property
    def running(self) -> bool:
        return self.worker.current is not None

    @property
    def queued(self) -> int:
        return len(self.queue.scheduler) + self.queue.delayed

    @property
    def busy(self) -> bool:
        return self.running or self.queued > 0

    @property
    def drained(self) -> bool:
        return self.paused and not self.running and self.recording() == 0

    def state(self) -> dict[str, Any]:
        return {
            "paused": self.paused,
            "draining": self.draining and self.paused,
            "drained": self.drained,
            "since": _when(self.since),
            "running": self.running,
            "queued": self.queued,
        }

    def activity(self) -> dict[str, Any]:
        return {
            "object": "queue.activity",
            "busy": self.busy,
            "queued": self.queued,
            "running": self.running,
            "paused": self.paused,
            "draining": self.draining and self.paused,
        }

    # -- actions

    async def pause(self, drain: bool = False) -> dict[str, Any]:
        """Stop dispatching (idempotent); ``drain`` also waits for the running request."""
        if not self.paused:
            self.since = self.clock.seconds()
            await self.store.write(_put, PAUSED_KEY, repr(self.since))
            self.worker.hold()
            _log.warn(
                "queue {action}: nothing is dispatched until POST /queue/resume "
                "({queued} queued, {running})",
                action="draining" if drain else "paused",
                queued=self.queued,
                running="one running" if self.running else "none running",
            )
        if drain:
            self.draining = True
        self.changed()
        return self.state()

    async def resume(self) -> dict[str, Any]:
        """Dispatch again; a no-op when not paused."""
        if self.paused:
            await self.store.write(_put, PAUSED_KEY, None)
            self.worker.release()
            _log.info(
                "queue resumed after {seconds:.0f} s ({queued} queued)",
                seconds=self.clock.seconds() - (self.since or self.clock.seconds()),
                queued=self.queued,
            )
        self.draining = False
        self.since = None
        self.changed()
        return self.state()

    async def until_drained(self, timeout: float) -> dict[str, Any]:
        """The state once drained (nothing running, nothing being recorded), or at ``timeout``."""
        if not self.drained and timeout > 0:
            await self._wait(self._drains, timeout)
        return self.state()

    async def activity_change(self, busy: bool | None, timeout: float) -> dict[str, Any]:
        """``activity()`` at once when ``busy`` differs from now, else on a change or timeout."""
        if busy is not None and busy == self.busy and timeout > 0:
            self._busy = busy  # what a change is judged against from now on
            await self._wait(self._activity, timeout, busy)
        return self.activity()

    # -- change notification

    def changed(self) -> None:
        """Something queued, ran or finished: tell whoever waits, once this turn is over.

        A pick takes an item off the queue a moment before the worker marks it
        running; judged at once, that moment would read as idle.
        """
        # nobody waits: nothing to tell (no timer on every request's way)
        if self._pending is None and (self._activity or self._drains):
            self._pending = self.clock.callLater(0, self._tell)

    def _tell(self) -> None:
        self._pending = None
        busy = self.busy
        if busy != self._busy:
            self._busy = busy
            self._fire(self._activity)
        if self.drained:
            if self.draining and self._drains:
                _log.info("queue drained: the target is idle; safe to restart it")
            self._fire(self._drains)

    def recorded(self) -> None:
        """An attempt finished recording (a drain may be complete now)."""
        self.changed()

    def _fire(self, waiters: list[_Waiter]) -> None:
        ready, waiters[:] = list(waiters), []
        for waiter in ready:
            if waiter.timer.active():
                waiter.timer.cancel()
            if not waiter.deferred.called:
                waiter.deferred.callback(None)

    async def _wait(self, waiters: list[_Waiter], timeout: float, busy: bool | None = None) -> None:
        def forget(d: Deferred[None]) -> None:
            for waiter in list(waiters):
                if waiter.deferred is d:
                    waiters.remove(waiter)
                    if waiter.timer.active():
                        waiter.timer.cancel()

        d: Deferred[None] = Deferred(forget)

        def time_up() -> None:
            forget(d)
            if not d.called:
                d.callback(None)

        waiters.append(_Waiter(d, self.clock.callLater(timeout, time_up), busy))
        await d

    def close(self) -> None:
        """Answer every waiter now (shutting down)."""
        pending, self._pending = self._pending, None
        if pending is not None and pending.active():
            pending.cancel()
        self._fire(self._activity)
        self._fire(self._drains)


def _when(at: float | None) -> str | None:
    if at is None:
        return None
    stamp = datetime.datetime.fromtimestamp(at, tz=datetime.UTC)
    return stamp.isoformat(timespec="seconds").replace("+00:00", "Z")
