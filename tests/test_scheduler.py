"""Scheduler: compared pick for pick with an obviously correct O(n) reference.

Micro check (not a test; no timing asserts here): ``python tests/test_scheduler.py``
prints the cost of add/pick/remove at 10, 1 000 and 100 000 waiting requests.
Measured on the 2-core dev box: 1.8 us (10), 2.0 us (1 000), 3.2 us (100 000)
per operation: logarithmic, effectively flat.
"""

from __future__ import annotations

import math
import random
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from foreman.core.scheduler import INTERACTIVE, JOB, Scheduler, Waiting
from tests.budget import examples

MODELS = ["a", "b", "c", "d"]
PRIORITIES = [0, 5, 10]
MAX_WAITS = [0.0, 1.0, 5.0, 30.0, math.inf]


def as_resident(resident: str | tuple[str, ...] | None) -> tuple[str, ...]:
    if resident is None:
        return ()
    if isinstance(resident, str):
        return (resident,)
    return tuple(dict.fromkeys(resident))


def after_pick(resident: tuple[str, ...], model: str, cap: int) -> tuple[str, ...]:
    """Most recently used first; a load past ``cap`` drops the least recently used."""
    if model in resident:
        return (model, *[m for m in resident if m != model])
    return (model, *resident)[:cap]


class Reference:
    """The rules written down as literally as possible, O(n) per operation."""

    def __init__(
        self, max_wait: float, capacity: int = 1, costs: dict[str, float] | None = None
    ) -> None:
        self.max_wait = max_wait
        self.capacity = capacity
        self.costs = costs or {}
        self.items: list[Waiting] = []
        self.turn_model: str | None = None
        self.turn_start = -math.inf

    def clone(self) -> Reference:
        other = Reference(self.max_wait, self.capacity, self.costs)
        other.items = list(self.items)
        other.turn_model, other.turn_start = self.turn_model, self.turn_start
        return other

    def add(self, item: Waiting) -> None:
        assert all(x.key != item.key for x in self.items)
        self.items.append(item)

    def remove(self, key: str) -> Waiting | None:
        for x in self.items:
            if x.key == key:
                self.items.remove(x)
                return x
        return None

    def effective_turn(self, now: float, resident: Any) -> tuple[str | None, float]:
        if self.turn_model is not None and self.turn_model in as_resident(resident):
            return self.turn_model, self.turn_start
        return None, now

    def starving(self, now: float, resident: Any) -> list[Waiting]:
        """Requests at the top priority that need a load and are past the bound."""
        _, start = self.effective_turn(now, resident)
        if not self.items:
            return []
        top = max(x.priority for x in self.items)
        return [
            x
            for x in self.items
            if x.priority == top
            and x.model not in as_resident(resident)
            and now - max(x.enqueued_at, start) > self.max_wait
        ]

    def decide(self, now: float, resident: Any) -> tuple[Waiting | None, str | None, float]:
        if not self.items:
            return None, self.turn_model, self.turn_start
        names = as_resident(resident)
        model, start = self.effective_turn(now, names)
        top = max(x.priority for x in self.items)
        at_top = [x for x in self.items if x.priority == top]
        mine = [x for x in at_top if x.model in names]
        oldest = min(at_top, key=lambda x: x.age)
        if mine and not self.starving(now, names):
            chosen = min(mine, key=lambda x: x.age)
        elif oldest.model in names:
            chosen = oldest
        else:
            # a load: among requests exactly as old, the model that loads fastest
            tied = [
                x for x in at_top if x.model not in names and x.enqueued_at == oldest.enqueued_at
            ]
            chosen = min(tied, key=lambda x: (self.costs.get(x.model, math.inf), x.age))
        if chosen.model not in names or model is None:
            model, start = chosen.model, now
        return chosen, model, start

    def pick(self, now: float, resident: Any) -> Waiting | None:
        chosen, model, start = self.decide(now, resident)
        if chosen is not None:
            self.turn_model, self.turn_start = model, start
            self.items.remove(chosen)
        return chosen

    def order(self, now: float, resident: Any, limit: int | None = None) -> list[Waiting]:
        copy = self.clone()
        out: list[Waiting] = []
        current = as_resident(resident)
        cap = max(self.capacity, len(current), 1)
        while limit is None or len(out) < limit:
            x = copy.pick(now, current)
            if x is None:
                break
            out.append(x)
            current = after_pick(current, x.model, cap)
        return out


def mk(
    key: str,
    model: str,
    enqueued_at: float,
    seq: int,
    priority: int = 0,
    kind: str = JOB,
) -> Waiting:
    return Waiting(
        key=key, model=model, priority=priority, enqueued_at=enqueued_at, seq=seq, kind=kind
    )


# --------------------------------------------------------------------------- stateful


class SchedulerMachine(RuleBasedStateMachine):
    """Random adds, removals, picks and resident-set changes (loads, expiries)."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = 1000.0
        self.seq = 0
        self.resident: tuple[str, ...] = ()
        self.capacity = 1
        self.sched = Scheduler(0.0)
        self.ref = Reference(0.0)

    @initialize(
        max_wait=st.sampled_from(MAX_WAITS),
        capacity=st.integers(1, 3),
        costs=st.dictionaries(st.sampled_from(MODELS), st.sampled_from([1.0, 5.0, 30.0])),
    )
    def setup(self, max_wait: float, capacity: int, costs: dict[str, float]) -> None:
        self.capacity = capacity
        self.sched = Scheduler(max_wait, capacity)
        self.sched.load_costs = {f"{m}:latest": c for m, c in costs.items()}
        self.ref = Reference(max_wait, capacity, costs)

    @rule(dt=st.sampled_from([0.0, 0.5, 1.0, 3.0, 10.0, 40.0]))
    def tick(self, dt: float) -> None:
        self.clock += dt

    @rule(
        model=st.sampled_from(MODELS),
        priority=st.sampled_from(PRIORITIES),
        back=st.sampled_from([0.0, 0.0, 2.0, 50.0, 500.0]),
        kind=st.sampled_from([INTERACTIVE, JOB]),
    )
    def add(self, model: str, priority: int, back: float, kind: str) -> None:
        self.seq += 1
        item = mk(f"k{self.seq}", model, self.clock - back, self.seq, priority, kind)
        self.sched.add(item)
        self.ref.add(item)

    @precondition(lambda self: bool(self.ref.items))
    @rule(data=st.data())
    def remove_existing(self, data: st.DataObject) -> None:
        victim = data.draw(st.sampled_from(self.ref.items))
        assert self.sched.remove(victim.key) == victim
        assert self.ref.remove(victim.key) == victim
        assert victim.key not in self.sched

    @rule(n=st.integers(0, 10**6))
    def remove_missing(self, n: int) -> None:
        assert self.sched.remove(f"missing{n}") is None

    @precondition(lambda self: bool(self.resident))
    @rule(data=st.data())
    def expire(self, data: st.DataObject) -> None:
        """A model's keep-alive ran out (or it is about to: no longer counted)."""
        gone = data.draw(st.sampled_from(self.resident))
        self.resident = tuple(m for m in self.resident if m != gone)

    @rule(model=st.sampled_from(MODELS))
    def loaded_elsewhere(self, model: str) -> None:
        """Another client of the target loaded a model: /api/ps shows it."""
        self.resident = after_pick(self.resident, model, self.capacity)

    def _resident(self, data: st.DataObject) -> Any:
        return data.draw(
            st.one_of(
                st.just(self.resident),
                st.just(self.resident),
                st.none(),
                st.sampled_from(MODELS),
                st.lists(st.sampled_from(MODELS), max_size=4).map(tuple),
            )
        )

    @rule(data=st.data())
    def pick(self, data: st.DataObject) -> None:
        resident = self._resident(data)
        names = as_resident(resident)
        now = self.clock
        starving = self.ref.starving(now, names)
        before = list(self.ref.items)
        expected = self.ref.pick(now, resident)
        got = self.sched.pick(now, resident)
        assert got == expected
        if got is None:
            return
        self.resident = after_pick(names, got.model, max(self.capacity, len(names)))
        # never a lower priority while a higher one waits
        assert got.priority == max(x.priority for x in before)
        # no load while resident work waits at that priority, unless the bound says so
        resident_work = [x for x in before if x.priority == got.priority and x.model in names]
        if got.model not in names and resident_work:
            assert starving
        # within a model, always the oldest at that priority
        same = [x for x in before if x.priority == got.priority and x.model == got.model]
        assert got.age == min(x.age for x in same)

    @rule(data=st.data())
    def peek(self, data: st.DataObject) -> None:
        loaded = self._resident(data)
        assert self.sched.peek(self.clock, loaded) == self.ref.decide(self.clock, loaded)[0]

    @rule(data=st.data(), limit=st.one_of(st.none(), st.integers(0, 8)))
    def order(self, data: st.DataObject, limit: int | None) -> None:
        loaded = self._resident(data)
        turn = self.sched.turn
        expected = self.ref.order(self.clock, loaded, limit)
        assert self.sched.order(self.clock, loaded, limit) == expected
        assert self.sched.turn == turn  # order() does not start a turn

    @precondition(lambda self: bool(self.ref.items))
    @rule(data=st.data())
    def position(self, data: st.DataObject) -> None:
        loaded = self._resident(data)
        full = self.ref.order(self.clock, loaded)
        for index, item in enumerate(full):
            assert self.sched.position(item.key, self.clock, loaded) == index
        assert self.sched.position("nope", self.clock, loaded) is None

    @invariant()
    def same_contents(self) -> None:
        items = self.ref.items
        assert len(self.sched) == len(items)
        models: dict[str, int] = {}
        kinds: dict[str, int] = {}
        for x in items:
            models[x.model] = models.get(x.model, 0) + 1
            kinds[x.kind] = kinds.get(x.kind, 0) + 1
            assert x.key in self.sched
            assert self.sched.get(x.key) == x
        assert self.sched.depth_by_model() == models
        assert self.sched.depth_by_kind() == kinds
        assert self.sched.turn == (self.ref.turn_model, self.ref.turn_start)


SchedulerMachine.TestCase.settings = settings(
    max_examples=examples(200), stateful_step_count=40, deadline=None
)
TestSchedulerMachine = SchedulerMachine.TestCase


# ----------------------------------------------------------------------- properties

item_specs = st.lists(
    st.tuples(
        st.sampled_from(MODELS),
        st.sampled_from(PRIORITIES),
        st.floats(0, 1000, allow_nan=False),
    ),
    max_size=40,
)


@given(
    specs=item_specs,
    max_wait=st.sampled_from(MAX_WAITS),
    runs=st.lists(st.floats(0, 100, allow_nan=False), min_size=1, max_size=5),
    loaded=st.sampled_from([None, *MODELS]),
)
@settings(max_examples=examples(200), deadline=None)
def test_liveness_picks_drain_everything(
    specs: list[tuple[str, int, float]], max_wait: float, runs: list[float], loaded: str | None
) -> None:
    sched = Scheduler(max_wait)
    ref = Reference(max_wait)
    for i, (model, priority, at) in enumerate(specs):
        item = mk(f"k{i}", model, at, i, priority)
        sched.add(item)
        ref.add(item)
    now = 1000.0
    seen: list[str] = []
    current = loaded
    for step in range(len(specs)):
        got = sched.pick(now, current)
        assert got is not None
        assert got == ref.pick(now, current)
        seen.append(got.key)
        current = got.model
        now += runs[step % len(runs)]
    assert sorted(seen) == sorted(f"k{i}" for i in range(len(specs)))
    assert sched.pick(now, current) is None
    assert len(sched) == 0
    assert sched.depth_by_model() == {} and sched.depth_by_kind() == {}


@given(
    models=st.integers(2, 6),
    rounds=st.integers(1, 8),
    run=st.floats(0, 5, allow_nan=False),
    max_wait=st.sampled_from([1e9, math.inf]),
)
@settings(max_examples=examples(100), deadline=None)
def test_interleaved_arrivals_swap_once_per_model(
    models: int, rounds: int, run: float, max_wait: float
) -> None:
    """ABCABC... queued at once: AAA BBB CCC, one swap per distinct model."""
    sched = Scheduler(max_wait)
    names = [f"m{i}" for i in range(models)]
    seq = 0
    for _ in range(rounds):
        for name in names:
            seq += 1
            sched.add(mk(f"k{seq}", name, 0.0, seq))
    now, current = 1.0, None
    switches = 0
    picked: list[str] = []
    while (item := sched.pick(now, current)) is not None:
        if item.model != current:
            switches += 1
        current = item.model
        picked.append(item.model)
        now += run
    assert switches == models
    assert picked == [name for name in names for _ in range(rounds)]


@given(
    backlog=st.integers(0, 30),
    runs=st.lists(st.floats(0.1, 10, allow_nan=False), min_size=1, max_size=6),
    max_wait=st.sampled_from([0.0, 5.0, 30.0, 120.0]),
    b_at=st.floats(0, 200, allow_nan=False),
)
@settings(max_examples=examples(200), deadline=None)
def test_starvation_bound_under_a_stream_of_the_loaded_model(
    backlog: int, runs: list[float], max_wait: float, b_at: float
) -> None:
    """An endless stream of model A cannot starve one B request.

    B goes right after every A request older than it, and no later than
    ``max_wait`` + one run after it arrived (or after the older A requests
    are done, whichever is later).
    """
    sched = Scheduler(max_wait)
    longest = max(runs)
    seq = 0
    for _ in range(backlog):
        seq += 1
        sched.add(mk(f"a{seq}", "a", 0.0, seq))
    now, current = 0.0, "a"
    b_added = False
    b_time, b_seq = 0.0, 0
    older_done_at = 0.0
    for step in range(10_000):
        if not b_added and now >= b_at:
            seq += 1
            sched.add(mk("b", "b", now, seq))
            b_added, b_time, b_seq = True, now, seq
        seq += 1  # the stream: one more A request per run
        sched.add(mk(f"a{seq}", "a", now, seq))
        item = sched.pick(now, current)
        assert item is not None
        if item.key == "b":
            assert sched.turn == ("b", now)
            assert now <= max(b_time, older_done_at) + max_wait + longest + 1e-9
            return
        if b_added and item.age < (b_time, b_seq, "b"):
            older_done_at = now
        current = item.model
        now += runs[step % len(runs)]
    pytest.fail("b never picked")


@given(
    specs=st.lists(
        st.tuples(
            st.sampled_from(MODELS),
            st.sampled_from([0, 10]),
            st.sampled_from([0.0, 10.0, 20.0, 30.0, 40.0, 90.0]),
        ),
        min_size=1,
        max_size=30,
    ),
    warmup=st.lists(st.sampled_from([None, *MODELS]), max_size=3),
    max_wait=st.sampled_from([0.0, 15.0, 35.0, 1e9]),
    now=st.sampled_from([50.0, 100.0]),
    loaded=st.one_of(
        st.sampled_from([None, *MODELS]),
        st.lists(st.sampled_from(MODELS), max_size=4).map(tuple),
    ),
    capacity=st.integers(1, 4),
    costs=st.dictionaries(st.sampled_from(MODELS), st.sampled_from([1.0, 5.0, 30.0])),
)
@settings(max_examples=examples(300), deadline=None)
def test_order_and_position_match_reference(
    specs: list[tuple[str, int, float]],
    warmup: list[str | None],
    max_wait: float,
    now: float,
    loaded: Any,
    capacity: int,
    costs: dict[str, float],
) -> None:
    """Dense states (few ages, many models, resident sets, load costs, a turn begun earlier)."""
    sched = Scheduler(max_wait, capacity)
    sched.load_costs = {f"{m}:latest": c for m, c in costs.items()}
    ref = Reference(max_wait, capacity, costs)
    for i, (model, priority, at) in enumerate(specs):
        item = mk(f"k{i}", model, at, i, priority)
        sched.add(item)
        ref.add(item)
    for j, warm in enumerate(warmup):  # start a turn at t=j (before the items aged)
        assert sched.pick(float(j), warm) == ref.pick(float(j), warm)
    expected = ref.order(now, loaded)
    assert sched.order(now, loaded) == expected
    assert sched.order(now, loaded, limit=3) == expected[:3]
    for index, item in enumerate(expected):
        assert sched.position(item.key, now, loaded) == index
    assert sched.pick(now, loaded) == ref.pick(now, loaded)


def test_lazy_deletions_are_compacted() -> None:
    sched = Scheduler(600.0)
    for i in range(1000):
        sched.add(mk(f"k{i}", "a", float(i), i))
    for i in range(1, 1000):  # never the head: all lazy
        if i % 100:
            sched.remove(f"k{i}")
    assert len(sched) == 10
    assert _internal_size(sched) <= 2 * 10 + 16 + 1 + 1
    assert [x.key for x in sched.order(0.0, "a")] == [f"k{i}" for i in range(0, 1000, 100)]


def test_order_does_not_grow_internal_state() -> None:
    sched = Scheduler(600.0)
    for i in range(50):
        sched.add(mk(f"k{i}", f"m{i % 5}", float(i), i, priority=i % 3))
    sizes = set()
    for _ in range(200):
        sched.order(100.0, "m1", limit=40)
        sizes.add(_internal_size(sched))
    assert max(sizes) <= 2 * 50 + 3 * (2 * 5 + 16)


def test_strict_priority_over_starvation() -> None:
    sched = Scheduler(0.0)
    sched.add(mk("low-old", "b", 0.0, 1, priority=0))
    for i in range(5):
        sched.add(mk(f"high{i}", "a", 100.0 + i, 2 + i, priority=10))
    got = [sched.pick(10_000.0, "a") for _ in range(5)]
    assert [x.key for x in got if x] == [f"high{i}" for i in range(5)]
    picked = sched.pick(10_000.0, "a")
    assert picked is not None and picked.key == "low-old"


def test_drain_by_model_prefers_loaded_then_oldest_model() -> None:
    sched = Scheduler(600.0)
    sched.add(mk("b1", "b", 1.0, 1))
    sched.add(mk("a1", "a", 2.0, 2))
    sched.add(mk("c1", "c", 3.0, 3))
    sched.add(mk("a2", "a", 4.0, 4))
    sched.add(mk("b2", "b", 5.0, 5))
    assert [x.key for x in sched.order(10.0, "a")] == ["a1", "a2", "b1", "b2", "c1"]
    assert [x.key for x in sched.order(10.0, None)] == ["b1", "b2", "a1", "a2", "c1"]
    assert sched.position("c1", 10.0, "a") == 4
    assert len(sched) == 5


def test_turn_bound_measured_from_turn_start() -> None:
    """A backlog older than max_wait is not turned into FIFO."""
    sched = Scheduler(60.0)
    for i in range(3):
        sched.add(mk(f"a{i}", "a", 0.0, 2 * i))
        sched.add(mk(f"b{i}", "b", 0.0, 2 * i + 1))
    # everything waited 1000 s already; the turn of "a" starts now (t=1000)
    first = sched.pick(1000.0, "a")
    assert first is not None and first.key == "a0"
    assert sched.turn == ("a", 1000.0)
    second = sched.pick(1030.0, "a")
    assert second is not None and second.key == "a1"
    # 61 s into the turn b0 starves; a2 is younger than b0 so b's turn begins
    third = sched.pick(1061.0, "a")
    assert third is not None and third.key == "b0"
    assert sched.turn == ("b", 1061.0)


def test_starvation_takes_older_requests_of_the_turn_model_first() -> None:
    sched = Scheduler(10.0)
    sched.add(mk("a-first", "a", 0.0, 0))
    assert sched.pick(0.0, "a") is not None  # the turn of "a" begins at t=0
    sched.add(mk("a-old", "a", 0.0, 1))
    sched.add(mk("b", "b", 5.0, 2))
    sched.add(mk("a-young", "a", 50.0, 3))
    assert sched.peek(15.0, "a") == sched.get("a-old")
    assert [x.key for x in sched.order(15.0, "a")] == ["a-old", "a-young", "b"]
    order = [x.key for x in sched.order(100.0, "a")]
    assert order == ["a-old", "b", "a-young"]
    assert [sched.position(k, 100.0, "a") for k in order] == [0, 1, 2]


def test_loaded_model_change_starts_a_new_turn() -> None:
    sched = Scheduler(10.0)
    sched.add(mk("a", "a", 0.0, 1))
    sched.add(mk("b", "b", 0.0, 2))
    assert sched.peek(100.0, "b") == sched.get("b")  # new turn at 100: b waited 0 s of it
    item = sched.pick(100.0, "b")
    assert item is not None and item.key == "b"
    assert sched.turn == ("b", 100.0)
    assert sched.pick(100.0, None) == mk("a", "a", 0.0, 1)
    assert sched.turn == ("a", 100.0)


def test_add_rejects_duplicates_and_bad_values() -> None:
    sched = Scheduler(1.0)
    sched.add(mk("x", "a", 0.0, 1))
    with pytest.raises(ValueError):
        sched.add(mk("x", "b", 0.0, 2))
    with pytest.raises(ValueError):
        sched.add(mk("y", "b", math.nan, 2))
    with pytest.raises(ValueError):
        Scheduler(-1.0)
    with pytest.raises(ValueError):
        Scheduler(math.nan)
    with pytest.raises(ValueError):
        Waiting(key="z", model="a", priority=0, enqueued_at=0.0, seq=1, kind="batch")
    assert sched.remove("x") is not None and sched.remove("x") is None
    assert sched.order(0.0, None) == [] and sched.order(0.0, None, 0) == []


def test_every_model_resident_is_oldest_first_with_no_load() -> None:
    """With room for every model, residency costs nothing: plain FIFO per priority."""
    sched = Scheduler(600.0, capacity=3)
    for i, model in enumerate("abcabcab"):
        sched.add(mk(f"k{i}", model, float(i), i))
    sched.add(mk("chat", "c", 8.0, 8, priority=10, kind=INTERACTIVE))
    resident = ("a", "b", "c")
    order = sched.order(10.0, resident)
    assert [x.key for x in order] == ["chat"] + [f"k{i}" for i in range(8)]
    picked = []
    while (item := sched.pick(10.0, resident)) is not None:
        assert item.model in resident  # never a load
        picked.append(item.key)
    assert picked == [x.key for x in order]


def test_a_resident_model_does_not_wait_for_the_drain_of_another() -> None:
    """The issue's case: b is resident, so its chat goes between a's backlog in age order."""
    sched = Scheduler(600.0, capacity=2)
    for i in range(5):
        sched.add(mk(f"a{i}", "a", float(i), i))
    sched.add(mk("b-chat", "b", 2.5, 10))
    sched.add(mk("c-job", "c", 0.5, 11))  # needs a load: waits for resident work
    keys = [x.key for x in sched.order(10.0, ("a", "b"))]
    assert keys == ["a0", "a1", "a2", "b-chat", "a3", "a4", "c-job"]
    # with only a resident, b needs a load and waits like c (oldest first after a)
    keys = [x.key for x in sched.order(10.0, ("a",))]
    assert keys == ["a0", "a1", "a2", "a3", "a4", "c-job", "b-chat"]
    assert sched.position("b-chat", 10.0, ("a", "b")) == 3


def test_prediction_evicts_the_least_recently_used() -> None:
    """order() assumes a load past capacity pushes out the least recently used model."""
    sched = Scheduler(600.0, capacity=2)
    sched.add(mk("c1", "c", 1.0, 1))
    sched.add(mk("a1", "a", 2.0, 2))
    sched.add(mk("b1", "b", 3.0, 3))
    # resident (a, b): a1 and b1 first; then c is loaded and pushes out a (LRU)
    assert [x.key for x in sched.order(10.0, ("a", "b"))] == ["a1", "b1", "c1"]
    sched.add(mk("a2", "a", 4.0, 4))
    sched.add(mk("b2", "b", 5.0, 5))
    sched.add(mk("a-low", "a", 0.0, 6, priority=-1))
    sched.add(mk("b-low", "b", 0.0, 7, priority=-1))
    keys = [x.key for x in sched.order(10.0, ("a", "b"))]
    # after c's load (a out, b in), b-low needs no load but a-low does
    assert keys == ["a1", "b1", "a2", "b2", "c1", "b-low", "a-low"]
    assert [sched.position(k, 10.0, ("a", "b")) for k in keys] == list(range(7))


@given(
    backlog=st.integers(0, 20),
    runs=st.lists(st.floats(0.1, 10, allow_nan=False), min_size=1, max_size=6),
    max_wait=st.sampled_from([0.0, 5.0, 30.0]),
    c_at=st.floats(0, 100, allow_nan=False),
)
@settings(max_examples=examples(100), deadline=None)
def test_starvation_bound_under_streams_of_several_resident_models(
    backlog: int, runs: list[float], max_wait: float, c_at: float
) -> None:
    """Work for two resident models, arriving forever, cannot starve a load of c."""
    sched = Scheduler(max_wait, capacity=2)
    longest = max(runs)
    seq = 0
    for i in range(backlog):
        seq += 1
        sched.add(mk(f"r{seq}", "ab"[i % 2], 0.0, seq))
    now, resident = 0.0, ("a", "b")
    c_time = None
    older_done_at = 0.0
    for step in range(10_000):
        if c_time is None and now >= c_at:
            seq += 1
            sched.add(mk("c", "c", now, seq))
            c_time, c_seq = now, seq
        for model in "ab":
            seq += 1
            sched.add(mk(f"r{seq}", model, now, seq))
        item = sched.pick(now, resident)
        assert item is not None
        if item.key == "c":
            assert c_time is not None
            assert now <= max(c_time, older_done_at) + max_wait + longest + 1e-9
            return
        assert item.model in resident
        if c_time is not None and item.age < (c_time, c_seq, "c"):
            older_done_at = now
        now += runs[step % len(runs)]
    pytest.fail("c never picked")


def test_among_requests_exactly_as_old_the_fastest_load_goes_first() -> None:
    """A batch submitted at once: its lines share a timestamp; loads go cheapest first."""
    sched = Scheduler(600.0)
    for i, model in enumerate(["big", "small", "mid"] * 2):
        sched.add(mk(f"k{i}", model, 5.0, i))
    assert [x.model for x in sched.order(10.0, None)][::2] == ["big", "small", "mid"]
    sched.load_costs = {"big:latest": 30.0, "small:latest": 2.0, "mid:latest": 8.0}
    keys = [x.key for x in sched.order(10.0, None)]
    assert keys == ["k1", "k4", "k2", "k5", "k0", "k3"]
    assert [sched.position(k, 10.0, None) for k in keys] == list(range(6))
    sched.add(mk("older", "big", 4.0, 9))  # cost never beats age
    assert [x.key for x in sched.order(10.0, None)][:3] == ["older", "k0", "k3"]


def _internal_size(sched: Scheduler) -> int:
    s: Any = sched
    return sum(len(h) for h in s._by_pm.values()) + sum(len(h) for h in s._heads.values())


def test_many_waiting_correct_and_no_garbage_build_up() -> None:
    """Scale check without timing: 10 000 jobs, churn, lazy deletions stay bounded.

    The bound does not depend on the size; bench/scheduling.py runs 100 000.
    """
    rng = random.Random(7)
    sched = Scheduler(600.0)
    n = 10_000
    for i in range(n):
        sched.add(mk(f"j{i}", f"m{i % 4}", float(i), i, priority=0))
    # drain-by-model: the first 1000 picks are m0's oldest, in order
    got = [sched.pick(1e6, "m0") for _ in range(1000)]
    assert [x.key for x in got if x] == [f"j{4 * i}" for i in range(1000)]
    # churn: interactive clients come and leave, jobs get cancelled
    for i in range(2_000):
        key = f"i{i}"
        sched.add(mk(key, f"m{rng.randrange(4)}", 1e6, n + i, priority=10, kind=INTERACTIVE))
        if rng.random() < 0.9:
            assert sched.remove(key) is not None
        sched.remove(f"j{rng.randrange(n)}")
        sched.order(1e6, "m0", limit=20)
    assert _internal_size(sched) <= 2 * len(sched) + 4 * 16 * 8
    first = sched.peek(1e6, "m0")
    assert first is not None and first.priority == 10
    assert sched.position(first.key, 1e6, "m0") == 0


def _micro_check() -> None:  # pragma: no cover - manual benchmark
    for n in (10, 1_000, 100_000):
        sched = Scheduler(600.0)
        for i in range(n):
            sched.add(mk(f"j{i}", f"m{i % 8}", float(i), i))
        ops = 20_000
        t0 = time.perf_counter()
        for i in range(ops):
            item = sched.pick(1e7, "m0")
            assert item is not None
            sched.add(mk(f"r{i}", item.model, 1e7 + i, n + i))
            sched.remove(f"j{(i * 7919) % n}")
            sched.add(mk(f"x{i}", "m1", 1e7 + i, 2 * n + i))
        dt = time.perf_counter() - t0
        print(f"{n:>7} waiting: {dt / (ops * 4) * 1e6:.2f} us per add/pick/remove")


if __name__ == "__main__":  # pragma: no cover
    _micro_check()
