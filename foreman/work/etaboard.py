"""Estimates for what waits, from the worker's learned times (``core.eta``), cached briefly.

The dispatch order of the first ``PLANNED`` items is simulated once and kept
for ``FRESH`` seconds, so a page of twenty jobs, a batch with thousands of
lines or a burst of ``POST /jobs`` costs one plan a second, not one each. An
item the plan has not seen yet (created since) takes the estimate of the
item now at its place; items past the planned prefix get a rougher estimate
from the mean time per request.
"""

from __future__ import annotations

from collections.abc import Iterable

from attrs import define, field

from foreman.core.eta import Eta, Running
from foreman.work.queue import WorkQueue
from foreman.work.worker import Worker

__all__ = ["EtaBoard"]

PLANNED = 1000
FRESH = 1.0


@define
class EtaBoard:
    queue: WorkQueue
    worker: Worker
    _plan: dict[str, Eta] = field(factory=dict)
    _ordered: list[Eta] = field(factory=list)
    _last: Eta | None = None
    _made: float | None = None  # when the plan was made

    def _fresh(self) -> dict[str, Eta]:
        now = self.queue.clock()
        if self._made is not None and 0 <= now - self._made < FRESH:
            return self._plan
        resident = self.worker.resident()
        order = self.queue.order(resident, PLANNED)
        current = self.worker.current
        running = None
        if current is not None and self.worker.dispatched_at is not None:
            running = Running(
                str(current.get("model")), self.worker.dispatched_at, self.worker.dispatch_load
            )
        etas = self.worker.estimator.plan(
            now,
            order,
            running=running,
            resident=resident,
            capacity=self.queue.scheduler.capacity,
            load_costs=self.worker.residency.load_costs,
        )
        self._plan = {item.key: eta for item, eta in zip(order, etas, strict=True)}
        self._ordered = etas
        self._last = etas[-1] if etas else None
        self._made = now
        return self._plan

    def of(self, key: str, position: int | None = None) -> Eta | None:
        """The estimate for one waiting item (None: not waiting); ``position`` if known."""
        return self._paused(self._of(key, position))

    def _paused(self, eta: Eta | None) -> Eta | None:
        if eta is None or not self.worker.paused:
            return eta
        return eta.held("the queue is paused: counted as if it resumed now")

    def _of(self, key: str, position: int | None = None) -> Eta | None:
        plan = self._fresh()
        found = plan.get(key)
        if found is not None:
            return found
        if position is None:
            position = self.queue.position(key, self.worker.resident())
        if position is None:
            return None
        estimator = self.worker.estimator
        if position < len(self._ordered):  # new since the plan: it takes that place
            here = self._ordered[position]
        else:
            here = estimator.beyond(self._last, self.queue.clock(), position - len(plan) + 1)
        item = self.queue.scheduler.get(key)
        return here if item is None else estimator.placed(here, item.model)

    def last_of(self, keys: Iterable[str]) -> Eta | None:
        """The estimate of whichever of ``keys`` runs last (a batch's finish)."""
        return self._paused(self._last_of(keys))

    def _last_of(self, keys: Iterable[str]) -> Eta | None:
        plan = self._fresh()
        latest: Eta | None = None
        beyond = 0
        waiting = self.queue.scheduler
        for key in keys:
            found = plan.get(key)
            if found is None:
                if key in waiting:  # running, or in a retry's backoff: not counted here
                    beyond += 1
            elif latest is None or found.finish > latest.finish:
                latest = found
        if beyond:
            total_past = max(len(self.queue.scheduler) - len(plan), beyond)
            return self.worker.estimator.beyond(self._last, self.queue.clock(), total_past)
        return latest
