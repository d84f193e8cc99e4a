"""Estimates over a dispatch order (pure): learned per model, loads where the model is out."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from foreman.core.eta import DEFAULT_SERVICE, Estimator, Running
from foreman.core.scheduler import INTERACTIVE, JOB, Waiting
from tests.budget import examples


def waiting(key: str, model: str, at: float = 0.0, seq: int = 0) -> Waiting:
    return Waiting(key, model, 0, at, seq, JOB)


def test_nothing_learned_is_a_guess_and_says_so() -> None:
    plan = Estimator().plan(
        100.0,
        [waiting("a", "llama3.2"), waiting("b", "qwen3")],
        running=None,
        resident=(),
        capacity=1,
        load_costs={},
    )
    assert [(e.start, e.finish) for e in plan] == [
        (100.0, 100.0 + DEFAULT_SERVICE),
        (100.0 + DEFAULT_SERVICE, 100.0 + 2 * DEFAULT_SERVICE),
    ]
    assert not plan[0].known and plan[0].unknown_models == ("llama3.2:latest",)
    assert plan[1].unknown_models == ("llama3.2:latest", "qwen3:latest")
    body = plan[1].as_dict(str)
    assert body["known"] is False and "llama3.2:latest, qwen3:latest" in str(body["note"])


def test_learned_times_loads_and_the_running_request() -> None:
    estimator = Estimator()
    estimator.observe("llama3.2", 2.0)
    estimator.observe("qwen3", 5.0, load_seconds=4.0)  # 1 s of work once loaded
    plan = estimator.plan(
        10.0,
        [waiting("a", "llama3.2"), waiting("b", "qwen3"), waiting("c", "llama3.2")],
        running=Running("llama3.2", since=9.5),  # 1.5 s left of its 2 s
        resident=("llama3.2",),
        capacity=1,
        load_costs={"qwen3:latest": 4.0, "llama3.2:latest": 3.0},
    )
    assert all(e.known for e in plan)
    assert [(e.start, e.finish) for e in plan] == [
        (11.5, 13.5),  # resident: no load
        (13.5, 18.5),  # starts with its load (4 s), pushing llama3.2 out (room for one)
        (18.5, 23.5),  # llama3.2 loads again (3 s)
    ]
    assert estimator.learned() == {
        "llama3.2:latest": {"service_s": 2.0, "samples": 1},
        "qwen3:latest": {"service_s": 1.0, "samples": 1},
    }


def test_a_request_past_its_expected_time_ends_soon_not_in_the_past() -> None:
    estimator = Estimator()
    estimator.observe("llama3.2", 2.0)
    (eta,) = estimator.plan(
        100.0,
        [waiting("a", "llama3.2")],
        running=Running("llama3.2", since=50.0),
        resident=("llama3.2",),
        capacity=1,
        load_costs={},
    )
    assert eta.start == 100.2  # a tenth of its expected time, never negative


def test_the_mean_follows_a_slower_box() -> None:
    estimator = Estimator()
    for _ in range(3):
        estimator.observe("m", 1.0)
    for _ in range(10):
        estimator.observe("m", 10.0)
    service = estimator.service("m")
    assert service is not None and 9.5 < service <= 10.0
    estimator.observe("m", -1.0)  # nonsense is ignored
    assert estimator.service("m") == service


@given(
    models=st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=30),
    times=st.dictionaries(st.sampled_from(["a", "b", "c"]), st.floats(0.01, 100.0)),
    capacity=st.integers(1, 3),
)
@settings(max_examples=examples(200), deadline=None)
def test_estimates_follow_the_order_without_gaps_or_overlaps(
    models: list[str], times: dict[str, float], capacity: int
) -> None:
    estimator = Estimator()
    for model, seconds in times.items():
        estimator.observe(model, seconds)
    order = [waiting(f"k{i}", m, seq=i) for i, m in enumerate(models)]
    plan = estimator.plan(
        0.0, order, running=None, resident=(), capacity=capacity, load_costs={"b:latest": 3.0}
    )
    assert len(plan) == len(order)
    previous = 0.0
    for eta, item in zip(plan, order, strict=True):
        assert eta.start >= previous  # one at a time: it starts after the one before ends
        assert eta.finish > eta.start
        previous = eta.finish
        assert eta.known == all(m in times for m in models[: order.index(item) + 1])
    beyond = estimator.beyond(plan[-1], 0.0, 3)
    assert beyond.start >= plan[-1].finish


def test_the_running_loads_cost_and_eviction_count() -> None:
    estimator = Estimator()
    estimator.observe("a", 1.0)
    estimator.observe("b", 1.0)
    (eta,) = estimator.plan(
        10.0,
        [waiting("x", "a")],
        running=Running("c", since=10.0, load=2.0),  # c is loading: 2 s, then a guess
        resident=("b", "a"),  # a is the least recently used
        capacity=2,
        load_costs={"a:latest": 3.0},
    )
    assert eta.start == 13.0  # after c's load and work (guessed as the learned mean, 1 s)
    assert eta.finish == 17.0  # c pushed a out: a loads again, 3 s + 1 s
    assert not eta.known and eta.unknown_models == ("c:latest",)


def test_interactive_requests_stretch_the_wait_of_jobs_not_of_requests() -> None:
    estimator = Estimator()
    estimator.observe("a", 1.0)
    for at in range(0, 300, 10):  # a chat of 3 s every 10 s: a 30 % share
        estimator.interactive(3.0, float(at))
    assert abs(estimator.interactive_share(299.0) - 0.3) < 1e-9
    job, chat = estimator.plan(
        299.0,
        [waiting("j", "a"), Waiting("r", "a", 10, 299.0, 1, INTERACTIVE)],
        running=Running("a", since=299.0),
        resident=("a",),
        capacity=1,
        load_costs={},
    )
    assert job.start == 299.0 + 1.0 / 0.7  # its 1 s wait, stretched
    assert chat.start == 301.0  # a request is not stretched: it goes ahead of jobs
    for at in range(300, 2000, 100):
        estimator.interactive(0.0, float(at))
    assert estimator.interactive_share(2000.0) == 0.0  # the window moved on
