"""Retry timing: bounds, caps, and never-decreasing ceilings."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from foreman.core.backoff import (
    JOB_RETRY,
    JOB_RETRY_BASE,
    JOB_RETRY_CAP,
    JOB_RETRY_JITTER,
    MONITOR_PROBE,
    PROBE_BASE,
    PROBE_CAP,
    PROBE_JITTER,
    WEBHOOK_RETRY,
    WEBHOOK_RETRY_JITTER,
    WEBHOOK_RETRY_SCHEDULE,
    Backoff,
    JitterMode,
    ceiling,
    jittered,
    job_retry_delay,
    monitor_probe_delay,
)
from tests.budget import examples

counts = st.integers(-5, 10_000)
seeds = st.integers(0, 2**32)


@given(n=counts, seed=seeds)
@settings(max_examples=examples(300), deadline=None)
def test_job_retry_delay_within_jittered_ceiling(n: int, seed: int) -> None:
    top = ceiling(n, JOB_RETRY_BASE, JOB_RETRY_CAP)
    d = job_retry_delay(n, random.Random(seed))
    assert top * (1 - JOB_RETRY_JITTER) <= d <= top <= JOB_RETRY_CAP
    assert d >= JOB_RETRY_BASE * (1 - JOB_RETRY_JITTER) > 0


@given(n=counts, seed=seeds)
@settings(max_examples=examples(300), deadline=None)
def test_probe_delay_within_jittered_ceiling(n: int, seed: int) -> None:
    top = ceiling(n, PROBE_BASE, PROBE_CAP)
    d = monitor_probe_delay(n, random.Random(seed))
    assert top * (1 - PROBE_JITTER) <= d <= top <= PROBE_CAP
    assert d > 0


@given(n=st.integers(-5, 5_000))
@settings(max_examples=examples(300), deadline=None)
def test_ceilings_never_decrease_and_reach_the_cap(n: int) -> None:
    for base, cap in ((JOB_RETRY_BASE, JOB_RETRY_CAP), (PROBE_BASE, PROBE_CAP)):
        assert ceiling(n, base, cap) <= ceiling(n + 1, base, cap)
    assert ceiling(10_000, JOB_RETRY_BASE, JOB_RETRY_CAP) == JOB_RETRY_CAP
    assert ceiling(10**9, PROBE_BASE, PROBE_CAP) == PROBE_CAP


def test_documented_schedule() -> None:
    assert [ceiling(n, JOB_RETRY_BASE, JOB_RETRY_CAP) for n in range(1, 11)] == [
        2,
        4,
        8,
        16,
        32,
        64,
        128,
        256,
        300,
        300,
    ]
    assert [ceiling(n, PROBE_BASE, PROBE_CAP) for n in range(0, 9)] == [
        0.5,
        0.5,
        1,
        2,
        4,
        8,
        16,
        30,
        30,
    ]


def test_jitter_actually_varies_and_default_rng_works() -> None:
    rng = random.Random(1)
    values = {job_retry_delay(3, rng) for _ in range(50)}
    assert len(values) > 40
    assert 4.0 <= job_retry_delay(3) <= 8.0
    assert jittered(3, 1.0, 10.0, 0.0, rng) == 4.0


def test_bad_jitter_rejected() -> None:
    import pytest

    with pytest.raises(ValueError):
        jittered(1, 1.0, 2.0, 1.5, None)


# --- the Backoff value behind the functions -------------------------------------


@given(n=counts, seed=seeds)
@settings(max_examples=examples(200), deadline=None)
def test_functions_are_the_named_backoffs(n: int, seed: int) -> None:
    assert job_retry_delay(n, random.Random(seed)) == JOB_RETRY.delay(n, random.Random(seed))
    assert monitor_probe_delay(n, random.Random(seed)) == MONITOR_PROBE.delay(
        n, random.Random(seed)
    )
    assert JOB_RETRY.ceiling(n) == ceiling(n, JOB_RETRY_BASE, JOB_RETRY_CAP)


def test_webhook_schedule_ceilings_and_the_last_step_repeats() -> None:
    tops = [WEBHOOK_RETRY.ceiling(n) for n in range(1, len(WEBHOOK_RETRY_SCHEDULE) + 3)]
    assert tops == [*WEBHOOK_RETRY_SCHEDULE, 86400, 86400]
    assert WEBHOOK_RETRY.ceiling(0) == WEBHOOK_RETRY.ceiling(-4) == 5


@given(n=st.integers(-5, 50), seed=seeds)
@settings(max_examples=examples(200), deadline=None)
def test_spread_jitter_goes_both_ways_within_bounds(n: int, seed: int) -> None:
    top = WEBHOOK_RETRY.ceiling(n)
    d = WEBHOOK_RETRY.delay(n, random.Random(seed))
    assert top * (1 - WEBHOOK_RETRY_JITTER) <= d <= top * (1 + WEBHOOK_RETRY_JITTER)


def test_draw_fixes_the_jitter() -> None:
    shorten = Backoff.exponential(1.0, 10.0, 0.5)
    assert shorten.delay(3, draw=0.0) == 4.0
    assert shorten.delay(3, draw=0.5) == 3.0
    spread = Backoff.schedule((10, 20), 0.25, JitterMode.SPREAD)
    assert spread.delay(2, draw=0.0) == 15.0
    assert spread.delay(2, draw=0.5) == 20.0


def test_bad_backoffs_rejected() -> None:
    import pytest

    with pytest.raises(ValueError):
        Backoff.exponential(1.0, 2.0, -0.1)
    with pytest.raises(ValueError):
        Backoff.schedule((), 0.1)
    with pytest.raises(ValueError):
        Backoff.schedule((5, -1), 0.1)
