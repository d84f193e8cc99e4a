"""Everything that waits for the worker: held interactive requests and queued jobs.

The proxy admits interactive calls here (``Admission``); the job service adds
queued jobs. Both become ``Waiting`` items in the pure ``Scheduler``; this
module keeps what the scheduler must not know (the held Deferreds, the retry
timers of jobs that wait for their backoff) and wakes the worker.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from attrs import define, field
from twisted.internet.defer import Deferred, fail
from twisted.logger import Logger

from foreman.core.residency import canonical_model
from foreman.core.scheduler import INTERACTIVE, JOB, Resident, Scheduler, Waiting
from foreman.work.admission import InferenceCall, QueueFull, Slot

__all__ = ["Held", "WorkQueue"]

_log = Logger(namespace="foreman.queue")


@define
class Held:
    """An interactive request waiting for the worker."""

    call: InferenceCall
    deferred: Deferred[Slot]
    enqueued_at: float


@define
class WorkQueue:
    scheduler: Scheduler
    max_interactive: int
    reactor: Any
    clock: Callable[[], float] = time.time
    retry_after: int = 5
    _held: dict[str, Held] = field(factory=dict)
    _delayed: dict[str, Any] = field(factory=dict)  # job id -> IDelayedCall
    _seq: int = 0
    _waiter: Deferred[None] | None = None
    _arrivals: list[Deferred[None]] = field(factory=list)
    on_change: Callable[[], None] | None = None
    #: the worker dispatches nothing while the target is down, so the proxy may
    #: hand back a request that met a refusing target
    waits_for_target: bool = True
    #: True while an operator has paused dispatching (``foreman.work.control``)
    paused: Callable[[], bool] = lambda: False

    # -- the Admission interface, used by the proxy

    def admit(self, call: InferenceCall) -> Deferred[Slot]:
        if len(self._held) >= self.max_interactive:
            return fail(QueueFull(self.retry_after, "the interactive queue is full"))
        self._seq += 1
        key = f"req_{self._seq}"
        now = self.clock()
        d: Deferred[Slot] = Deferred(lambda _: self._drop(key))
        self._held[key] = Held(call, d, now)
        self.scheduler.add(Waiting(key, call.model, call.priority, now, self._seq, INTERACTIVE))
        if self.paused():
            _log.info(
                "{path} for {model} waits: the queue is paused (POST /queue/resume)",
                path=call.path,
                model=call.model,
            )
        self._wake()
        return d

    def _drop(self, key: str) -> None:
        """The client left before dispatch: forget it."""
        self._held.pop(key, None)
        self.scheduler.remove(key)
        self._changed()

    def take_held(self, key: str) -> Held | None:
        return self._held.pop(key, None)

    # -- jobs

    def add_job(
        self, job_id: str, model: str, priority: int, created_at: float, not_before: float | None
    ) -> None:
        """Queue a job now, or when its retry backoff ends."""
        delay = 0.0 if not_before is None else not_before - self.clock()
        if delay > 0:
            self._delayed[job_id] = self.reactor.callLater(
                delay, self._release_delayed, job_id, model, priority, created_at
            )
            return
        self._seq += 1
        self.scheduler.add(Waiting(job_id, model, priority, created_at, self._seq, JOB))
        self._wake()

    def add_jobs(self, jobs: list[tuple[str, str, int, float, float | None]]) -> None:
        """Bulk load at start (sorted by age so sequence numbers follow creation)."""
        for job_id, model, priority, created_at, not_before in sorted(jobs, key=lambda j: j[3]):
            self.add_job(job_id, model, priority, created_at, not_before)

    def _release_delayed(self, job_id: str, model: str, priority: int, created_at: float) -> None:
        del self._delayed[job_id]
        self.add_job(job_id, model, priority, created_at, None)

    def remove_job(self, job_id: str) -> bool:
        timer = self._delayed.pop(job_id, None)
        if timer is not None:
            timer.cancel()
            return True
        removed = self.scheduler.remove(job_id) is not None
        if removed:
            self._changed()
        return removed

    # -- the worker's side

    def pick(self, resident: Resident) -> Waiting | None:
        item = self.scheduler.pick(self.clock(), resident)
        if item is not None:
            self._changed()
        return item

    def pick_interactive(self, resident: Resident) -> Waiting | None:
        """The interactive request to run while no job may: the highest priority, a
        resident model's first, then the oldest (the scheduler's order, without jobs)."""
        waiting = [w for w in map(self.scheduler.get, self._held) if w is not None]
        if not waiting:
            return None
        listed = () if resident is None else (resident,) if isinstance(resident, str) else resident
        names = {canonical_model(m) for m in listed}
        item = min(
            waiting,
            key=lambda w: (-w.priority, canonical_model(w.model) not in names, w.age),
        )
        self.scheduler.remove(item.key)
        self._changed()
        return item

    def wait_for_work(self) -> Deferred[None]:
        """Fires once something waits (at once if something already does)."""
        d: Deferred[None] = Deferred()
        if len(self.scheduler):
            d.callback(None)
        else:
            self._waiter = d
        return d

    def next_arrival(self) -> Deferred[None]:
        """Fires when the next request or job is queued (a worker waiting for something
        else looks at the queue again)."""

        def cancel(d: Deferred[None]) -> None:
            if d in self._arrivals:
                self._arrivals.remove(d)

        d: Deferred[None] = Deferred(cancel)
        self._arrivals.append(d)
        return d

    def _wake(self) -> None:
        self._changed()
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.called:
            waiter.callback(None)
        arrivals, self._arrivals = self._arrivals, []
        for d in arrivals:
            d.callback(None)

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    def close(self) -> None:
        """Cancel backoff timers and fail held requests (shutting down)."""
        for timer in self._delayed.values():
            if timer.active():
                timer.cancel()
        self._delayed.clear()
        for key, held in list(self._held.items()):
            self._held.pop(key, None)
            if not held.deferred.called:
                held.deferred.errback(QueueFull(self.retry_after, "foreman is shutting down"))
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.called:
            waiter.cancel()
        arrivals, self._arrivals = self._arrivals, []
        for d in arrivals:
            d.cancel()

    # -- views

    def position(self, key: str, resident: Resident) -> int | None:
        return self.scheduler.position(key, self.clock(), resident)

    def order(self, resident: Resident, limit: int | None) -> list[Waiting]:
        return self.scheduler.order(self.clock(), resident, limit)

    def held(self, key: str) -> Held | None:
        return self._held.get(key)

    @property
    def delayed(self) -> int:
        return len(self._delayed)

    @property
    def interactive_waiting(self) -> int:
        return len(self._held)
