"""Which waiting inference request the single worker runs next (pure, no I/O).

Interactive requests and durable jobs wait in one :class:`Scheduler`. The
target holds several models at once (its *resident set*, which the caller
passes in: what ``/api/ps`` and the worker's own responses say, minus models
about to expire). Rules, in order (a higher ``priority`` number is more urgent):

1. strict priority: only the highest priority present is considered;
2. drain-by-model: within it, requests for a resident model go first (they
   cost no load);
3. oldest first (``enqueued_at``, then ``seq``, then ``key``).

When nothing at the top priority waits for a resident model, the next request
is the oldest at that priority: its model is loaded and starts a new *turn*.
Among requests exactly as old (a batch submitted at once), the model with the
smallest learned load cost (``load_costs``) is loaded first.

Starvation bound, applied per turn (ADR 0006, ADR 0017): the scheduler
remembers the model of the last load and when it began (the ``now`` of that
pick); while that model stays resident the turn goes on, otherwise a turn
begins at the next decision. While resident work waits at the top priority it
keeps the worker, UNLESS the oldest request needing a load has waited longer
than ``max_wait`` measured from ``max(its enqueued_at, turn start)``. Then
resident requests older than it still go first, then it is loaded. Measuring
from the turn start keeps drain-by-model alive when a whole backlog is older
than ``max_wait`` and costs one load per turn. A request therefore waits
behind equal priority about (models waiting) x ``max_wait`` + one run at most.
With one resident model this is exactly the single-model drain-by-model rule.

Priority is never overridden: a low priority request can wait forever behind a
continuous stream of higher priority work. That is what priority means here.

Complexity (heaps with lazy deletion): ``add`` and ``remove`` are O(log n)
amortised; ``pick`` and ``peek`` add O(models waiting at the top priority) to
that (finding resident work); ``order(limit=k)`` is k picks; ``position`` is
O(priorities x models² x log n): each (priority, model) keeps its live ages in
a ``SortedList`` so a rank is a bisection.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Sequence

from attrs import define, field, frozen, validators
from sortedcontainers import SortedList

from foreman.core.residency import canonical_model

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
# one group of a priority's plan: (model, first index, end index) ranges of
# that (priority, model)'s sorted ages, drained together oldest first
_Group = list[tuple[str, int, int]]

#: What the caller counts as resident: model names, most recently used first
#: (``llama3.2`` and ``llama3.2:latest`` are the same model). A single name or
#: None is accepted for the one-model case.
Resident = Sequence[str] | str | None


@define
class _PlanState:
    resident: tuple[str, ...]
    turn_model: str | None
    turn_start: float


def after_pick(resident: tuple[str, ...], model: str, cap: int) -> tuple[str, ...]:
    """The resident set after running ``model``: it is the most recently used; a
    load past ``cap`` models pushes out the least recently used."""
    if model in resident:
        return (model, *(m for m in resident if m != model))
    return (model, *resident)[:cap]


_COMPACT_SLACK = 16
#: orders up to this long are simulated pick by pick; longer ones are read off the plan
_PICKED_ORDER = 32


class Scheduler:
    """Priority, drain-by-model and starvation-bounded dispatch order.

    The caller supplies ``now`` (seconds, same clock as ``enqueued_at``) and
    ``resident`` (the models it counts as resident, most recently used first)
    on every decision, so the scheduler never reads a clock or the target.
    """

    def __init__(self, max_wait: float, capacity: int = 1) -> None:
        if not max_wait >= 0:  # also rejects NaN
            raise ValueError(f"max_wait must be >= 0, got {max_wait!r}")
        self._max_wait = float(max_wait)
        #: how many models the target holds at once, as far as the caller knows;
        #: only the predictions (order, position) use it
        self.capacity = capacity
        #: learned load seconds per model (``name:tag``): among requests exactly
        #: as old, the fastest load goes first
        self.load_costs: dict[str, float] = {}
        self._canonical: dict[str, str] = {}
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
        """(model of the last load, the ``now`` at which its turn began)."""
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

    def pick(self, now: float, resident: Resident) -> Waiting | None:
        """Remove and return the next request to run (None if nothing waits)."""
        item, turn = self._decide(now, self._resident(resident))
        if item is not None:
            self._turn_model, self._turn_start = turn
            self.remove(item.key)
        return item

    def peek(self, now: float, resident: Resident) -> Waiting | None:
        """What :meth:`pick` would return, without taking it."""
        return self._decide(now, self._resident(resident))[0]

    def order(self, now: float, resident: Resident, limit: int | None = None) -> list[Waiting]:
        """Dispatch order if nothing else arrived and every pick happened at ``now``.

        Each pick is assumed to leave its model resident (most recently used
        first; a load beyond ``capacity`` pushes out the least recently used).
        A short order (``limit`` up to ``_PICKED_ORDER``) is made by picking and
        putting the items back, so it is by construction what :meth:`pick`
        would do, O(k log n); a longer one is read off the plan that
        :meth:`position` uses (the property tests hold both to a reference).
        The observable state is unchanged afterwards.
        """
        if limit is not None and limit <= 0:
            return []
        if limit is None or limit > _PICKED_ORDER:
            return self._planned_order(now, resident, limit)
        current = self._resident(resident)
        cap = self._cap(current)
        saved = (self._turn_model, self._turn_start)
        taken: list[Waiting] = []
        try:
            while limit is None or len(taken) < limit:
                item = self.pick(now, current)
                if item is None:
                    break
                taken.append(item)
                current = after_pick(current, self._c(item.model), cap)
        finally:
            for item in taken:
                self.add(item)
            self._turn_model, self._turn_start = saved
        return taken

    def _planned_order(self, now: float, resident: Resident, limit: int | None) -> list[Waiting]:
        """:meth:`order` read off the plan ``position`` uses: each priority's groups in
        turn, a group's items merged oldest first. A long order (the estimates plan
        the first thousand) costs no pick and put-back per item this way."""
        names = self._resident(resident)
        turn_model, turn_start = self._effective_turn(now, names)
        state = _PlanState(names, None if turn_model is None else self._c(turn_model), turn_start)
        cap = self._cap(names)
        live = self._live
        out: list[Waiting] = []
        for p in sorted(self._count, reverse=True):
            for group in self._plan(p, state, now, cap):
                slices = [self._ages(p, m)[start:end] for m, start, end in group]
                ages = slices[0] if len(slices) == 1 else heapq.merge(*slices)
                for age in ages:
                    out.append(live[age[2]][0])
                    if limit is not None and len(out) >= limit:
                        return out
        return out

    def position(self, key: str, now: float, resident: Resident) -> int | None:
        """0-based place of ``key`` in :meth:`order` (None if not waiting).

        Computed from the structure of the order (per priority: groups of
        models drained together) instead of simulating every pick before ``key``.
        """
        entry = self._live.get(key)
        if entry is None:
            return None
        item = entry[0]
        if len(self._count) == 1 and len(self._count[item.priority]) == 1:
            # one priority, one model (a queue of one model's jobs): whatever is
            # resident, the picks take its items oldest first
            found: int = self._ages(item.priority, item.model).index(item.age)
            return found
        names = self._resident(resident)
        turn_model, turn_start = self._effective_turn(now, names)
        state = _PlanState(names, None if turn_model is None else self._c(turn_model), turn_start)
        cap = self._cap(names)
        pos = 0
        for p in sorted(self._count, reverse=True):
            groups = self._plan(p, state, now, cap)
            if p != item.priority:
                pos += self._prio_count[p]
                continue
            for group in groups:
                index = None
                before = 0
                for model, start, end in group:
                    ages = self._ages(p, model)
                    if model == item.model:
                        index = ages.index(item.age)
                    below = min(max(ages.bisect_left(item.age), start), end)
                    before += below - start
                if index is not None and any(
                    m == item.model and start <= index < end for m, start, end in group
                ):
                    return pos + before
                pos += sum(end - start for _, start, end in group)
            raise AssertionError("item not found in its priority's plan")  # pragma: no cover
        raise AssertionError("item priority not found")  # pragma: no cover

    # ---------------------------------------------------------------- internal

    def _c(self, model: str) -> str:
        """``model`` as Ollama names it (``name:tag``): how resident sets are compared."""
        name = self._canonical.get(model)
        if name is None:
            if len(self._canonical) > 4096:  # a bound: model names come from clients
                self._canonical.clear()
            name = self._canonical[model] = canonical_model(model)
        return name

    def _resident(self, resident: Resident) -> tuple[str, ...]:
        if resident is None:
            return ()
        if isinstance(resident, str):
            return (self._c(resident),)
        return tuple(dict.fromkeys(self._c(m) for m in resident))

    def _cap(self, resident: tuple[str, ...]) -> int:
        return max(self.capacity, len(resident), 1)

    def _effective_turn(self, now: float, resident: tuple[str, ...]) -> tuple[str | None, float]:
        """The turn goes on while its model stays resident; otherwise one begins now."""
        if self._turn_model is not None and self._c(self._turn_model) in resident:
            return self._turn_model, self._turn_start
        return None, now

    def _decide(
        self, now: float, resident: tuple[str, ...]
    ) -> tuple[Waiting | None, tuple[str | None, float]]:
        p = self._top_priority()
        if p is None:
            return None, (self._turn_model, self._turn_start)
        turn_model, turn_start = self._effective_turn(now, resident)
        head = self._oldest_head(p)
        assert head is not None
        key = head[2]
        if self._c(head[4]) not in resident:
            # The oldest at p needs a load. A resident model's request goes
            # first unless the oldest has starved (waited past max_wait since
            # the later of its arrival and the turn's start).
            best: _Entry | None = None
            for model in self._count[p]:
                if self._c(model) in resident:
                    top = self._clean_top((p, model))
                    if top is not None and (best is None or top < best):
                        best = top
            if best is not None and not now - max(head[0], turn_start) > self._max_wait:
                key = best[2]
            else:
                key = self._load_choice(p, head, resident)
        item = self._live[key][0]
        if self._c(item.model) not in resident or turn_model is None:
            turn_model, turn_start = item.model, now
        return item, (turn_model, turn_start)

    def _cost(self, model: str) -> float:
        """Learned load seconds of ``model``; unknown sorts after every known one."""
        return self.load_costs.get(self._c(model), math.inf)

    def _load_choice(self, p: int, head: _Head, resident: tuple[str, ...]) -> str:
        """The key to load: the oldest, or among requests exactly as old (a batch
        submitted at once) the one whose model loads fastest."""
        if not self.load_costs:
            return head[2]
        heads = self._heads[p]
        tied: list[_Head] = []
        while heads and heads[0][0] == head[0]:
            top = heapq.heappop(heads)
            if self._head_valid(p, top):
                tied.append(top)
        for top in tied:
            heapq.heappush(heads, top)
        candidates = [h for h in tied if self._c(h[4]) not in resident]
        best = min(candidates, key=lambda h: (self._cost(h[4]), h[1], h[2]))
        return best[2]

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

    def _ages(self, p: int, m: str) -> SortedList:
        """Live ages of (p, m), oldest first."""
        return self._sorted[(p, m)]

    def _plan(self, p: int, state: _PlanState, now: float, cap: int) -> list[_Group]:
        """Priority ``p``'s items as groups, in the order picks at ``now`` would take them.

        A group is drained oldest first: either the waiting work of every
        resident model (no load) or the one request that loads a model.
        ``state`` (resident set, turn) is advanced past ``p``, so the next
        lower priority continues from it. Since every load at ``now`` starts
        a turn at ``now``, at most the first load can be forced by starvation;
        afterwards resident work always drains before the next load.
        """
        models = self._count[p]
        ages = {m: self._ages(p, m) for m in models}
        sizes = {m: len(a) for m, a in ages.items()}
        canon = {m: self._c(m) for m in models}
        costs = {m: self._cost(m) for m in models}
        start = dict.fromkeys(models, 0)
        # each model's next age (ages[m][start[m]]): indexing a SortedList is not free
        head = {m: a[0] for m, a in ages.items()}
        groups: list[_Group] = []
        while True:
            left = [m for m in models if start[m] < sizes[m]]
            if not left:
                return groups
            if state.turn_model not in state.resident:
                state.turn_model, state.turn_start = None, now
            here = state.resident
            resident = [m for m in left if canon[m] in here]
            others = [m for m in left if canon[m] not in here]
            load = None
            if others:
                oldest = min(head[m] for m in others)
                load = min(others, key=lambda m: (head[m][0], costs[m], *head[m][1:]))
            if resident:
                if load is None:
                    ends = sizes
                elif now - max(oldest[0], state.turn_start) > self._max_wait:
                    ends = {m: max(start[m], ages[m].bisect_left(oldest)) for m in resident}
                else:
                    ends = sizes
                group = [(m, start[m], ends[m]) for m in resident if ends[m] > start[m]]
                if group:
                    groups.append(group)
                    self._drained(p, group, state, now)
                    for m, _, end in group:
                        start[m] = end
                        if end < sizes[m]:
                            head[m] = ages[m][end]
                    continue
            assert load is not None
            groups.append([(load, start[load], start[load] + 1)])
            start[load] += 1
            if start[load] < sizes[load]:
                head[load] = ages[load][start[load]]
            state.resident = after_pick(state.resident, canon[load], cap)
            state.turn_model, state.turn_start = canon[load], now

    def _drained(self, p: int, group: _Group, state: _PlanState, now: float) -> None:
        """Advance ``state`` past a group of resident work picked oldest first."""
        if state.turn_model is None:
            first = min(group, key=lambda g: self._ages(p, g[0])[g[1]])
            state.turn_model, state.turn_start = self._c(first[0]), now
        last = sorted(group, key=lambda g: self._ages(p, g[0])[g[2] - 1], reverse=True)
        used = tuple(dict.fromkeys(self._c(m) for m, _, _ in last))
        state.resident = used + tuple(m for m in state.resident if m not in used)


def _decrement(counts: dict[str, int], key: str) -> None:
    counts[key] -= 1
    if counts[key] == 0:
        del counts[key]
