"""Job state machine: random event sequences, crash recovery, attempt accounting."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from foreman.core.jobstate import (
    CODE_ARTIFACT_WRITE_ERROR,
    CODE_STREAM_ERROR,
    CODE_TARGET_ERROR,
    CODE_TOO_MANY_ATTEMPTS,
    RUNNING,
    TERMINAL,
    TRANSITIONS,
    Decision,
    ErrorKind,
    Event,
    IllegalTransition,
    JobState,
    after_error,
    can,
    is_terminal,
    recover_on_start,
    transition,
)
from tests.budget import examples

Q, L, W = JobState.QUEUED, JobState.LOADING, JobState.WORKING
DONE, FAILED, CANCELLED = JobState.DONE, JobState.FAILED, JobState.CANCELLED


def test_transition_table() -> None:
    assert transition(Q, Event.START_LOADING) is L
    assert transition(L, Event.START_WORKING) is W
    assert transition(W, Event.SUCCEED) is DONE
    for s in (Q, L, W):
        assert transition(s, Event.CANCEL) is CANCELLED
        assert transition(s, Event.FAIL) is FAILED
    for s in (L, W):
        assert transition(s, Event.REQUEUE) is Q
    with pytest.raises(IllegalTransition):
        transition(Q, Event.START_WORKING)  # loading is never skipped
    with pytest.raises(IllegalTransition):
        transition(Q, Event.REQUEUE)
    with pytest.raises(IllegalTransition):
        transition(L, Event.SUCCEED)
    with pytest.raises(IllegalTransition, match="cannot cancel a job that is done"):
        transition(DONE, Event.CANCEL)
    assert transition(JobState("queued"), Event("start_loading")) == "loading"


@given(state=st.sampled_from(list(JobState)), event=st.sampled_from(list(Event)))
def test_terminal_states_are_final_and_can_agrees(state: JobState, event: Event) -> None:
    if is_terminal(state):
        assert not can(state, event)
    if can(state, event):
        assert transition(state, event) in JobState
    else:
        with pytest.raises(IllegalTransition) as info:
            transition(state, event)
        assert info.value.state == state and info.value.event == event


def test_after_error_table() -> None:
    rng = random.Random(0)
    for s in RUNNING:
        d = after_error(s, 0, 3, ErrorKind.TARGET_UNREACHABLE)
        assert d == Decision(Event.REQUEUE, Q, 0, wait_for_target=True)
        assert after_error(s, 1, 3, ErrorKind.TARGET_4XX) == Decision(
            Event.FAIL, FAILED, 2, error_code=CODE_TARGET_ERROR
        )
        assert after_error(s, 0, 3, ErrorKind.STREAM_ERROR).error_code == CODE_STREAM_ERROR
        assert (
            after_error(s, 0, 3, ErrorKind.ARTIFACT_WRITE_ERROR).error_code
            == CODE_ARTIFACT_WRITE_ERROR
        )
        assert after_error(s, 2, 3, ErrorKind.CANCELLED) == Decision(Event.CANCEL, CANCELLED, 2)
        for kind in (ErrorKind.TARGET_5XX, ErrorKind.RESET, ErrorKind.TIMEOUT):
            first = after_error(s, 0, 3, kind, rng=rng)
            assert (first.event, first.state, first.attempts) == (Event.REQUEUE, Q, 1)
            assert 1.0 <= first.delay <= 2.0 and not first.wait_for_target
            second = after_error(s, 1, 3, kind, rng=rng)
            assert second.attempts == 2 and 2.0 <= second.delay <= 4.0
            last = after_error(s, 2, 3, kind, rng=rng)
            assert last == Decision(Event.FAIL, FAILED, 3, error_code=CODE_TOO_MANY_ATTEMPTS)
    with pytest.raises(IllegalTransition):
        after_error(Q, 0, 3, ErrorKind.TARGET_5XX)
    with pytest.raises(IllegalTransition):
        after_error(DONE, 0, 3, ErrorKind.CANCELLED)
    with pytest.raises(ValueError):
        after_error(W, -1, 3, ErrorKind.RESET)
    with pytest.raises(ValueError):
        after_error(W, 0, 0, ErrorKind.RESET)
    assert after_error(W, 0, 1, ErrorKind.TIMEOUT).state is FAILED  # one attempt only


def test_recover_on_start() -> None:
    for s in RUNNING:
        assert recover_on_start(s, 0, 3) == Decision(Event.REQUEUE, Q, 1)
        assert recover_on_start(s, 1, 3) == Decision(Event.REQUEUE, Q, 2)
        assert recover_on_start(s, 2, 3) == Decision(
            Event.FAIL, FAILED, 3, error_code=CODE_TOO_MANY_ATTEMPTS
        )
        # max_attempts lowered between restarts: fail, attempts not pushed further
        assert recover_on_start(s, 5, 3) == Decision(
            Event.FAIL, FAILED, 5, error_code=CODE_TOO_MANY_ATTEMPTS
        )
    for s in (Q, *TERMINAL):
        assert recover_on_start(s, 1, 3) is None


class JobMachine(RuleBasedStateMachine):
    """A job driven by a worker, crashes, cancellations and random (maybe illegal) events."""

    def __init__(self) -> None:
        super().__init__()
        self.state = Q
        self.attempts = 0
        self.max_attempts = 3
        self.history: list[JobState] = [Q]
        self.rng = random.Random(0)

    @initialize(max_attempts=st.integers(1, 5))
    def setup(self, max_attempts: int) -> None:
        self.max_attempts = max_attempts

    def _apply(self, d: Decision) -> None:
        assert can(self.state, d.event)
        assert transition(self.state, d.event) == d.state
        assert d.attempts >= self.attempts  # never decreases
        if d.state is Q:
            assert d.attempts < self.max_attempts  # requeued only with attempts left
        self.state, self.attempts = d.state, d.attempts
        self.history.append(d.state)

    @rule(event=st.sampled_from(list(Event)))
    def random_event(self, event: Event) -> None:
        if can(self.state, event):
            self.state = transition(self.state, event)
            self.history.append(self.state)
        else:
            before = self.state
            with pytest.raises(IllegalTransition):
                transition(self.state, event)
            assert self.state == before

    @precondition(lambda self: self.state is Q)
    @rule()
    def dispatch(self) -> None:
        self.state = transition(self.state, Event.START_LOADING)
        self.history.append(self.state)

    @rule(kind=st.sampled_from(list(ErrorKind)))
    def error(self, kind: ErrorKind) -> None:
        if self.state in RUNNING:
            self._apply(
                after_error(self.state, self.attempts, self.max_attempts, kind, rng=self.rng)
            )
        else:
            with pytest.raises(IllegalTransition):
                after_error(self.state, self.attempts, self.max_attempts, kind)

    @rule()
    def crash_and_restart(self) -> None:
        d = recover_on_start(self.state, self.attempts, self.max_attempts)
        if self.state in RUNNING:
            assert d is not None
            self._apply(d)
        else:
            assert d is None

    @invariant()
    def attempts_bounded(self) -> None:
        assert 0 <= self.attempts <= self.max_attempts

    @invariant()
    def terminal_is_final(self) -> None:
        for i, s in enumerate(self.history):
            if s in TERMINAL:
                assert all(later == s for later in self.history[i:])
        if self.state in TERMINAL:
            assert not any(can(self.state, e) for e in Event)


JobMachine.TestCase.settings = settings(
    max_examples=examples(300), stateful_step_count=30, deadline=None
)
TestJobMachine = JobMachine.TestCase


def test_every_transition_reachable_from_queued() -> None:
    reachable = {Q}
    frontier = [Q]
    while frontier:
        s = frontier.pop()
        for (src, _), dst in TRANSITIONS.items():
            if src == s and dst not in reachable:
                reachable.add(dst)
                frontier.append(dst)
    assert reachable == set(JobState)
