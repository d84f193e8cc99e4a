"""Which waiting inference request the single worker runs next (pure, no I/O).

Interactive requests and durable jobs wait in one :class:`Scheduler`. Rules,
in order (a higher ``priority`` number is more urgent):

1. strict priority: only the highest priority present is considered;
2. drain-by-model: within it, requests for the model of the current *turn*
   (normally the loaded model) go first;
3. oldest first (``enqueued_at``, then ``seq``, then ``key``).

When nothing at the top priority waits for the turn's model, the next request
is the oldest at that priority and its model starts a new turn.

Starvation bound, applied per model *turn* (see ADR): the scheduler
remembers the turn's model and when the turn began (the ``now`` of the pick
that switched models; a ``loaded`` argument different from the turn's model
also starts a new turn at that ``now``). While work for the turn's model waits
at the top priority it keeps the worker, UNLESS a request of another model at
that priority has waited longer than ``max_wait`` measured from
``max(its enqueued_at, turn start)``. Then the pick is the oldest request at the
top priority: requests of the turn's model older than the starving one still go
first (they are older), then the switch happens. Measuring from the turn start
keeps drain-by-model alive when a whole backlog is older than ``max_wait``
(the literal "older than max_wait goes first" rule would swap models on every
request) and costs one swap per turn. A request therefore waits behind equal
priority about (models waiting) x ``max_wait`` + one run at most.

Priority is never overridden: a low priority request can wait forever behind a
continuous stream of higher priority work. That is what priority means here.

Complexity: ``add``, ``remove``, ``pick`` and ``peek`` are O(log n) amortised
(heaps with lazy deletion); ``order(limit=k)`` is O(k log n); ``position`` is
O(priorities x models x log n): each (priority, model) keeps its live ages in
a ``SortedList`` so a rank is a bisection.
"""

from __future__ import annotations

import heapq
import itertools
import math

from attrs import field, frozen, validators
from sortedcontainers import SortedList

INTERACTIVE = "interactive"
JOB = "job"
KINDS = (INTERACTIVE, JOB)
DEFAULT_INTERACTIVE_PRIORITY = 10
DEFAULT_JOB_PRIORITY = 0


@frozen
class Waiting:
    """One request waiting for the worker; ``key`` is unique among waiting items."""

    key: str
    model: str
    priority: int
    enqueued_at: float  # seconds on the caller's clock
    seq: int  # increasing tie-breaker
    kind: str = field(validator=validators.in_(KINDS))

    @property
    def age(self) -> tuple[float, int, str]:
        """Sort key: smaller is older."""
        return (self.enqueued_at, self.seq, self.key)


# (enqueued_at, seq, key, token): one item in its (priority, model) heap.
_Entry = tuple[float, int, str, int]
# (enqueued_at, seq, key, generation, model): the oldest item of one model, in
# the per-priority heap of model heads.
_Head = tuple[float, int, str, int, str]
_Age = tuple[float, int, str]
# (model, lower age bound exclusive, upper age bound exclusive, size)
_Segment = tuple[str, _Age | None, _Age | None, int]

_COMPACT_SLACK = 16


class Scheduler:
    """Priority, drain-by-model and starvation-bounded dispatch order.

    The caller supplies ``now`` (seconds, same clock as ``enqueued_at``) and
    ``loaded`` (the model the worker considers resident, usually the model of
    the request it dispatched last) on every decision, so the scheduler never
    reads a clock.
    """

    def __init__(self, max_wait: float) -> None:
        if not max_wait >= 0:  # also rejects NaN
            raise ValueError(f"max_wait must be >= 0, got {max_wait!r}")
        self._max_wait = float(max_wait)
        self._live: dict[str, tuple[Waiting, int]] = {}
        self._tokens = itertools.count()
        self._gens = itertools.count()
        self._by_pm: dict[tuple[int, str], list[_Entry]] = {}
        # live ages per (priority, model), sorted: O(log n) ranks for position()
        self._sorted: dict[tuple[int, str], SortedList] = {}
        self._count: dict[int, dict[str, int]] = {}
        self._prio_count: dict[int, int] = {}
        self._prio_heap: list[int] = []
        self._prio_in_heap: set[int] = set()
        self._heads: dict[int, list[_Head]] = {}
        self._head_of: dict[tuple[int, str], tuple[int, int]] = {}  # -> (token, generation)
        self._depth_model: dict[str, int] = {}
        self._depth_kind: dict[str, int] = {}
        self._turn_model: str | None = None
        self._turn_start = -math.inf

    # ------------------------------------------------------------------ queries

    @property
    def max_wait(self) -> float:
        return self._max_wait

    @property
    def turn(self) -> tuple[str | None, float]:
        """(model of the current turn, the ``now`` at which it began)."""
        return (self._turn_model, self._turn_start)

    def __len__(self) -> int:
        return len(self._live)

    def __contains__(self, key: object) -> bool:
        return key in self._live

    def get(self, key: str) -> Waiting | None:
        entry = self._live.get(key)
        return None if entry is None else entry[0]

    def depth_by_model(self) -> dict[str, int]:
        return dict(self._depth_model)

    def depth_by_kind(self) -> dict[str, int]:
        return dict(self._depth_kind)

    def depth_by_priority(self) -> dict[int, int]:
        return dict(self._prio_count)

    # ---------------------------------------------------------------- mutation

    def add(self, item: Waiting) -> None:
        """Queue ``item``; its key must not be waiting already. O(log n)."""
        if item.key in self._live:
            raise ValueError(f"key {item.key!r} is already waiting")
        if math.isnan(item.enqueued_at):
            raise ValueError("enqueued_at is NaN")
        token = next(self._tokens)
        self._live[item.key] = (item, token)
        p, m = item.priority, item.model
        heapq.heappush(
            self._by_pm.setdefault((p, m), []), (item.enqueued_at, item.seq, item.key, token)
        )
        ages = self._sorted.get((p, m))
        if ages is None:
            ages = self._sorted[(p, m)] = SortedList()
        ages.add(item.age)
        models = self._count.setdefault(p, {})
        models[m] = models.get(m, 0) + 1
        self._prio_count[p] = self._prio_count.get(p, 0) + 1
        if p not in self._prio_in_heap:
            heapq.heappush(self._prio_heap, -p)
            self._prio_in_heap.add(p)
        self._depth_model[m] = self._depth_model.get(m, 0) + 1
        self._depth_kind[item.kind] = self._depth_kind.get(item.kind, 0) + 1
        self._refresh_head(p, m)

    def remove(self, key: str) -> Waiting | None:
        """Take ``key`` out of the queue (client left, job cancelled). O(log n) amortised."""
        entry = self._live.pop(key, None)
        if entry is None:
            return None
        item, token = entry
        p, m = item.priority, item.model
        pm = (p, m)
        models = self._count[p]
        models[m] -= 1
        if models[m] == 0:
            del models[m]
            del self._by_pm[pm]
            del self._sorted[pm]
            del self._head_of[pm]
        elif self._head_of[pm][0] == token:
            self._sorted[pm].remove(item.age)
            self._refresh_head(p, m)
        else:
            self._sorted[pm].remove(item.age)
            heap = self._by_pm[pm]
            if len(heap) > 2 * models[m] + _COMPACT_SLACK:
                self._by_pm[pm] = self._valid_entries(heap)
                heapq.heapify(self._by_pm[pm])
        self._prio_count[p] -= 1
        if self._prio_count[p] == 0:
            del self._prio_count[p]
            del self._count[p]
            self._heads.pop(p, None)
        _decrement(self._depth_model, m)
        _decrement(self._depth_kind, item.kind)
        return item

    # --------------------------------------------------------------- decisions

    def pick(self, now: float, loaded: str | None) -> Waiting | None:
        """Remove and return the next request to run (None if nothing waits)."""
        item, self._turn_model, self._turn_start = self._decide(now, loaded)
        if item is not None:
            self.remove(item.key)
        return item

    def peek(self, now: float, loaded: str | None) -> Waiting | None:
        """What :meth:`pick` would return, without taking it."""
        return self._decide(now, loaded)[0]

    def order(self, now: float, loaded: str | None, limit: int | None = None) -> list[Waiting]:
        """Dispatch order if nothing else arrived and every pick happened at ``now``.

        O(k log n) for the first ``k`` (``limit``). Implemented by picking and
        putting the items back, so the result is by construction what
        :meth:`pick` would do; the observable state is unchanged afterwards.
        """
        if limit is not None and limit <= 0:
            return []
        saved = (self._turn_model, self._turn_start)
        taken: list[Waiting] = []
        try:
            current = loaded
            while limit is None or len(taken) < limit:
                item = self.pick(now, current)
                if item is None:
                    break
                taken.append(item)
                current = item.model
        finally:
            for item in taken:
                self.add(item)
            self._turn_model, self._turn_start = saved
        return taken

    def position(self, key: str, now: float, loaded: str | None) -> int | None:
        """0-based place of ``key`` in :meth:`order` (None if not waiting).

        Computed from the structure of the order (per priority: segments of
        models) instead of simulating every pick before ``key``.
        """
        entry = self._live.get(key)
        if entry is None:
            return None
        item = entry[0]
        age = item.age
        turn_model, turn_start = self._effective_turn(now, loaded)
        pos = 0
        for p in sorted(self._count, reverse=True):
            segments = self._plan(p, turn_model, turn_start, now)
            if p == item.priority:
                for model, lo, hi, size in segments:
                    if model == item.model and _within(age, lo, hi):
                        return pos + self._rank(p, model, lo, age)
                    pos += size
                raise AssertionError("item not found in its priority's plan")  # pragma: no cover
            pos += self._prio_count[p]
            if any(seg[0] != turn_model for seg in segments):
                turn_start = now
            turn_model = segments[-1][0]
        raise AssertionError("item priority not found")  # pragma: no cover

    # ---------------------------------------------------------------- internal

    def _effective_turn(self, now: float, loaded: str | None) -> tuple[str | None, float]:
        if loaded == self._turn_model:
            return self._turn_model, self._turn_start
        return loaded, now

    def _decide(self, now: float, loaded: str | None) -> tuple[Waiting | None, str | None, float]:
        turn_model, turn_start = self._effective_turn(now, loaded)
        p = self._top_priority()
        if p is None:
            return None, turn_model, turn_start
        head = self._oldest_head(p)
        assert head is not None
        key = head[2]
        if (
            turn_model is not None
            and head[4] != turn_model
            and turn_model in self._count[p]
            and not now - max(head[0], turn_start) > self._max_wait
        ):
            # The oldest request at p is another model's and it is not starving
            # (so none of that model or any other is): the turn's model keeps the
            # worker. When the turn's model holds the oldest request, it is the
            # pick either way.
            top = self._clean_top((p, turn_model))
            assert top is not None
            key = top[2]
        item = self._live[key][0]
        if item.model != turn_model:
            turn_model, turn_start = item.model, now
        return item, turn_model, turn_start

    def _top_priority(self) -> int | None:
        heap = self._prio_heap
        while heap:
            p = -heap[0]
            if p in self._prio_count:
                return p
            heapq.heappop(heap)
            self._prio_in_heap.discard(p)
        return None

    def _is_live(self, entry: _Entry) -> bool:
        current = self._live.get(entry[2])
        return current is not None and current[1] == entry[3]

    def _valid_entries(self, heap: list[_Entry]) -> list[_Entry]:
        return [e for e in heap if self._is_live(e)]

    def _clean_top(self, pm: tuple[int, str]) -> _Entry | None:
        heap = self._by_pm.get(pm)
        if heap is None:
            return None
        while heap:
            top = heap[0]
            if self._is_live(top):
                return top
            heapq.heappop(heap)
        return None

    def _refresh_head(self, p: int, m: str) -> None:
        """Keep exactly one valid entry for (p, m)'s oldest item in ``_heads[p]``."""
        top = self._clean_top((p, m))
        assert top is not None
        current = self._head_of.get((p, m))
        if current is not None and current[0] == top[3]:
            return
        gen = next(self._gens)
        self._head_of[(p, m)] = (top[3], gen)
        heads = self._heads.setdefault(p, [])
        heapq.heappush(heads, (top[0], top[1], top[2], gen, m))
        if len(heads) > 2 * len(self._count[p]) + _COMPACT_SLACK:
            heads[:] = [h for h in heads if self._head_valid(p, h)]
            heapq.heapify(heads)

    def _head_valid(self, p: int, head: _Head) -> bool:
        current = self._head_of.get((p, head[4]))
        return current is not None and current[1] == head[3]

    def _oldest_head(self, p: int) -> _Head | None:
        """Oldest request at priority ``p`` (the oldest of the model heads)."""
        heads = self._heads.get(p)
        while heads:
            top = heads[0]
            if self._head_valid(p, top):
                return top
            heapq.heappop(heads)
        return None

    def _head_age(self, p: int, m: str) -> _Age:
        top = self._clean_top((p, m))
        assert top is not None
        return (top[0], top[1], top[2])

    def _ages(self, p: int, m: str) -> SortedList:
        """Live ages of (p, m), oldest first."""
        return self._sorted[(p, m)]

    def _plan(
        self, p: int, turn_model: str | None, turn_start: float, now: float
    ) -> list[_Segment]:
        """Order of priority ``p``'s items as segments, if picked one after another at ``now``.

        After the first switch at ``now`` the turn starts at ``now``, so with
        ``max_wait >= 0`` nothing can starve again: each model then drains
        completely, models in the order of their oldest remaining item.
        """
        models = self._count[p]
        heads = {m: self._head_age(p, m) for m in models}
        if turn_model is None or turn_model not in models:
            return [(m, None, None, models[m]) for m in sorted(models, key=heads.__getitem__)]
        others = sorted((m for m in models if m != turn_model), key=heads.__getitem__)
        first: _Segment = (turn_model, None, None, models[turn_model])
        if not others:
            return [first]
        starving_age = heads[others[0]]
        if not now - max(starving_age[0], turn_start) > self._max_wait:
            return [first] + [(m, None, None, models[m]) for m in others]
        # Starvation: oldest-first until the oldest other model's head goes, then
        # switch; the turn model's younger rest competes like any other model.
        own = self._ages(p, turn_model)
        older = own.bisect_left(starving_age)
        first_younger = own.bisect_right(starving_age)
        younger = len(own) - first_younger
        segments: list[_Segment] = []
        if older:
            segments.append((turn_model, None, starving_age, older))
        group: list[tuple[_Age, _Segment]] = [
            (heads[m], (m, None, None, models[m])) for m in others
        ]
        if younger:
            group.append((own[first_younger], (turn_model, starving_age, None, younger)))
        group.sort()
        segments.extend(seg for _, seg in group)
        return segments

    def _rank(self, p: int, m: str, lo: _Age | None, age: _Age) -> int:
        """Items of (p, m) younger than ``lo`` (if given) and older than ``age``."""
        ages = self._ages(p, m)
        below: int = ages.bisect_left(age)
        if lo is None:
            return below
        above: int = ages.bisect_right(lo)
        return below - above


def _within(age: _Age, lo: _Age | None, hi: _Age | None) -> bool:
    return (lo is None or age > lo) and (hi is None or age < hi)


def _decrement(counts: dict[str, int], key: str) -> None:
    counts[key] -= 1
    if counts[key] == 0:
        del counts[key]
