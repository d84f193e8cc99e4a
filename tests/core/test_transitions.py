"""Properties of the Transition constructors in ``foreman.core.jobstate``.

They are the only way a job's state is written, so they must agree with the
table (``TRANSITIONS``), with the error policy (``after_error``,
``recover_on_start``) and with the columns the store lets them set.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from foreman.core import jobstate
from foreman.core.jobstate import (
    CODE_TOO_MANY_ATTEMPTS,
    RUNNING,
    TRANSITIONS,
    ErrorKind,
    Event,
    IllegalTransition,
    JobState,
    Transition,
    after_error,
    plan,
    recover_on_start,
)
from foreman.store.jobs import _SETTABLE
from tests.budget import examples

states = st.sampled_from(list(JobState))
running = st.sampled_from(sorted(RUNNING))
events = st.sampled_from(list(Event))
kinds = st.sampled_from(list(ErrorKind))
job_ids = st.integers(min_value=0, max_value=10**20).map(lambda n: f"job_{n:026d}")
times = st.floats(min_value=0.0, max_value=4e9, allow_nan=False, allow_infinity=False)
attempt_counts = st.integers(min_value=0, max_value=12)
max_attempt_counts = st.integers(min_value=1, max_value=10)
seeds = st.integers(min_value=0, max_value=2**32 - 1)
field_lists = st.lists(
    st.tuples(st.sampled_from(sorted(_SETTABLE)), st.none() | st.integers() | st.text()),
    max_size=3,
).map(tuple)

fast = settings(deadline=None, max_examples=examples(100))


def as_dict(change: Transition) -> dict[str, Any]:
    names = [name for name, _ in change.fields]
    assert len(names) == len(set(names)), f"a field is set twice: {names}"
    return dict(change.fields)


def allowed_from(event: Event) -> frozenset[JobState]:
    return frozenset(s for (s, e) in TRANSITIONS if e is event)


@fast
@given(job_id=job_ids, state=states, event=events, at=times, fields=field_lists)
def test_plan_from_one_source_follows_the_table(
    job_id: str, state: JobState, event: Event, at: float, fields: tuple[tuple[str, Any], ...]
) -> None:
    if (state, event) in TRANSITIONS:
        change = plan(job_id, event, at, fields, source=state)
        assert change.sources == frozenset({state})
        assert change.target is TRANSITIONS[(state, event)]
        assert (change.job_id, change.event, change.at, change.fields) == (
            job_id,
            event,
            at,
            fields,
        )
    else:
        with pytest.raises(IllegalTransition):
            plan(job_id, event, at, fields, source=state)


def test_plan_from_one_source_covers_every_pair() -> None:
    """The same property, exhaustively: 6 states x 6 events."""
    for state in JobState:
        for event in Event:
            legal = (state, event) in TRANSITIONS
            try:
                change = plan("job_x", event, 0.0, source=state)
            except IllegalTransition:
                assert not legal, (state, event)
            else:
                assert legal and change.target is TRANSITIONS[(state, event)], (state, event)


@fast
@given(job_id=job_ids, event=events, at=times)
def test_plan_without_source_allows_exactly_the_table_states(
    job_id: str, event: Event, at: float
) -> None:
    change = plan(job_id, event, at)
    assert change.sources == allowed_from(event)
    assert change.sources == jobstate.SOURCES[event]
    assert change.sources  # every event is possible from somewhere
    assert {TRANSITIONS[(s, event)] for s in change.sources} == {change.target}


@fast
@given(
    job_id=job_ids,
    state=running,
    attempts=attempt_counts,
    max_attempts=max_attempt_counts,
    kind=kinds,
    message=st.text(max_size=20),
    now=times,
    tokens=st.integers(min_value=0, max_value=10**6),
    seed=seeds,
)
def test_attempt_failed_agrees_with_after_error(
    job_id: str,
    state: JobState,
    attempts: int,
    max_attempts: int,
    kind: ErrorKind,
    message: str,
    now: float,
    tokens: int,
    seed: int,
) -> None:
    decision = after_error(state, attempts, max_attempts, kind, rng=random.Random(seed))
    change = jobstate.attempt_failed(
        job_id, state, attempts, max_attempts, kind, message, now, tokens, rng=random.Random(seed)
    )
    fields = as_dict(change)

    assert change.job_id == job_id and change.at == now
    assert change.event is decision.event
    assert change.target is decision.state
    assert change.sources == frozenset({state})
    assert fields["attempts"] == decision.attempts

    if kind in (ErrorKind.SHUTDOWN, ErrorKind.TARGET_UNREACHABLE, ErrorKind.CANCELLED):
        assert fields["attempts"] == attempts  # never uses an attempt

    if decision.event is Event.REQUEUE:
        assert change.target is JobState.QUEUED
        expected = now + decision.delay if decision.delay > 0 else None
        assert fields["not_before"] == expected
        assert (fields["error_code"], fields["error_message"]) == (kind.value, message)
        assert "finished_at" not in fields  # a requeued job is not finished
    elif decision.state is JobState.FAILED:
        assert fields["finished_at"] == now
        assert fields["error_code"] == decision.error_code
        assert fields["error_code"] is not None
        assert fields["error_message"] == message
        assert fields["tokens"] == tokens
    else:
        assert kind is ErrorKind.CANCELLED
        assert change.target is JobState.CANCELLED
        assert fields["finished_at"] == now
        assert fields["error_code"] is None and fields["error_message"] is None
        assert fields["tokens"] == tokens


@fast
@given(
    state=running,
    attempts=attempt_counts,
    max_attempts=max_attempt_counts,
    kind=kinds,
    seed=seeds,
)
def test_attempt_failed_delay_and_attempt_accounting(
    state: JobState, attempts: int, max_attempts: int, kind: ErrorKind, seed: int
) -> None:
    now = 1000.0
    change = jobstate.attempt_failed(
        "job_x", state, attempts, max_attempts, kind, "m", now, 0, rng=random.Random(seed)
    )
    fields = as_dict(change)
    if kind in jobstate.RETRYABLE and change.target is JobState.QUEUED:
        assert fields["not_before"] is not None and fields["not_before"] > now
    if kind in (ErrorKind.SHUTDOWN, ErrorKind.TARGET_UNREACHABLE):
        assert change.target is JobState.QUEUED and fields["not_before"] is None
    # attempts never grows past max_attempts, and never shrinks
    assert fields["attempts"] >= attempts
    assert fields["attempts"] <= max(attempts, max_attempts)


@fast
@given(
    state=st.sampled_from(sorted(set(JobState) - RUNNING)),
    attempts=attempt_counts,
    max_attempts=max_attempt_counts,
    kind=kinds,
)
def test_attempt_failed_outside_a_running_state_is_illegal(
    state: JobState, attempts: int, max_attempts: int, kind: ErrorKind
) -> None:
    with pytest.raises(IllegalTransition):
        jobstate.attempt_failed("job_x", state, attempts, max_attempts, kind, "m", 0.0, 0)


@fast
@given(
    job_id=job_ids,
    state=states,
    attempts=attempt_counts,
    max_attempts=max_attempt_counts,
    now=times,
)
def test_recovered_agrees_with_recover_on_start(
    job_id: str, state: JobState, attempts: int, max_attempts: int, now: float
) -> None:
    decision = recover_on_start(state, attempts, max_attempts)
    change = jobstate.recovered(job_id, state, attempts, max_attempts, now)
    if state not in RUNNING:
        assert change is None and decision is None
        return
    assert change is not None and decision is not None
    fields = as_dict(change)
    assert (change.job_id, change.at, change.sources) == (job_id, now, frozenset({state}))
    assert change.event is decision.event
    assert change.target is decision.state
    assert fields["attempts"] == decision.attempts
    if decision.state is JobState.FAILED:
        assert fields["error_code"] == decision.error_code == CODE_TOO_MANY_ATTEMPTS
        assert fields["finished_at"] == now
    else:
        assert change.target is JobState.QUEUED
        assert fields["error_code"] == "interrupted"
        assert "finished_at" not in fields
    assert isinstance(fields["error_message"], str) and fields["error_message"]


@fast
@given(
    job_id=job_ids,
    now=times,
    tokens=st.integers(min_value=0, max_value=10**6),
    result=st.none() | st.text(max_size=10),
    artifacts=st.text(max_size=10),
    state=states,
    attempts=attempt_counts,
    max_attempts=max_attempt_counts,
    kind=kinds,
    seed=seeds,
)
def test_every_constructor_sets_only_settable_columns(
    job_id: str,
    now: float,
    tokens: int,
    result: str | None,
    artifacts: str,
    state: JobState,
    attempts: int,
    max_attempts: int,
    kind: ErrorKind,
    seed: int,
) -> None:
    changes: list[Transition | None] = [
        jobstate.start_loading(job_id, now),
        jobstate.start_working(job_id, now),
        jobstate.succeed(job_id, now, tokens, result, artifacts),
        jobstate.cancel(job_id, now),
        jobstate.recovered(job_id, state, attempts, max_attempts, now),
    ]
    if state in RUNNING:
        changes.append(
            jobstate.attempt_failed(
                job_id,
                state,
                attempts,
                max_attempts,
                kind,
                "m",
                now,
                tokens,
                rng=random.Random(seed),
            )
        )
    for change in changes:
        if change is None:
            continue
        assert set(as_dict(change)) <= _SETTABLE, change.event
        assert change.sources == {s for s in change.sources if (s, change.event) in TRANSITIONS}
        assert change.target is TRANSITIONS[(next(iter(change.sources)), change.event)]


@fast
@given(job_id=job_ids, now=times)
def test_simple_constructors_use_the_whole_table(job_id: str, now: float) -> None:
    for change, event, set_now in (
        (jobstate.start_loading(job_id, now), Event.START_LOADING, "started_at"),
        (jobstate.start_working(job_id, now), Event.START_WORKING, "working_at"),
        (jobstate.succeed(job_id, now, 1, None, "[]"), Event.SUCCEED, "finished_at"),
        (jobstate.cancel(job_id, now), Event.CANCEL, "finished_at"),
    ):
        assert change.event is event
        assert change.sources == allowed_from(event)
        assert (change.job_id, change.at) == (job_id, now)
        assert as_dict(change)[set_now] == now
    loading = as_dict(jobstate.start_loading(job_id, now))
    assert loading["error_code"] is loading["error_message"] is loading["not_before"] is None
