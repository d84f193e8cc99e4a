"""The job state machine and what to do after an error (pure).

States: ``queued -> loading -> working -> done | failed | cancelled``;
``done``, ``failed`` and ``cancelled`` are terminal.

Decisions (record in the ADR):

* ``attempts`` counts attempts *used up*: runs that ended in an error or were
  interrupted by a crash. A job that succeeds on its first run has
  ``attempts == 0``; the running attempt is not counted until it ends badly.
  This is the reading of the spec's "jobs found loading/working return to
  queued with attempts + 1". An attempt that never reached the target
  (target unreachable) and a cancelled attempt use nothing.
* A job fails for good when ``attempts`` would reach ``max_attempts``: with
  the default of 3, a job gets three runs. The same limit applies to crash
  recovery, which protects the daemon from a job that crashes it every time
  (code ``too_many_attempts``).
* ``queued -> failed`` is allowed: the worker may reject a job at dispatch
  before any request to the target (say its stored request is unreadable)
  without pretending it was loading.
* ``queued -> working`` is not: ``loading`` is always passed, even when the
  model is already resident (then it is instant).
* ``attempts`` never grows past ``max_attempts``; a value already above it
  (``max_attempts`` lowered between restarts) is left as is.
"""

from __future__ import annotations

import random
from enum import StrEnum
from typing import Any

from attrs import frozen

from foreman.core.backoff import job_retry_delay


class JobState(StrEnum):
    QUEUED = "queued"
    LOADING = "loading"
    WORKING = "working"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL: frozenset[JobState] = frozenset({JobState.DONE, JobState.FAILED, JobState.CANCELLED})
RUNNING: frozenset[JobState] = frozenset({JobState.LOADING, JobState.WORKING})


class Event(StrEnum):
    START_LOADING = "start_loading"
    START_WORKING = "start_working"
    SUCCEED = "succeed"
    FAIL = "fail"
    CANCEL = "cancel"
    REQUEUE = "requeue"


TRANSITIONS: dict[tuple[JobState, Event], JobState] = {
    (JobState.QUEUED, Event.START_LOADING): JobState.LOADING,
    (JobState.LOADING, Event.START_WORKING): JobState.WORKING,
    (JobState.WORKING, Event.SUCCEED): JobState.DONE,
    (JobState.QUEUED, Event.FAIL): JobState.FAILED,
    (JobState.LOADING, Event.FAIL): JobState.FAILED,
    (JobState.WORKING, Event.FAIL): JobState.FAILED,
    (JobState.QUEUED, Event.CANCEL): JobState.CANCELLED,
    (JobState.LOADING, Event.CANCEL): JobState.CANCELLED,
    (JobState.WORKING, Event.CANCEL): JobState.CANCELLED,
    (JobState.LOADING, Event.REQUEUE): JobState.QUEUED,
    (JobState.WORKING, Event.REQUEUE): JobState.QUEUED,
}


class IllegalTransition(ValueError):
    """``event`` cannot happen in ``state`` (e.g. cancelling a finished job: HTTP 409)."""

    def __init__(self, state: JobState, event: Event | str) -> None:
        super().__init__(f"cannot {event} a job that is {state}")
        self.state = state
        self.event = event


def can(state: JobState, event: Event) -> bool:
    return (state, event) in TRANSITIONS


def transition(state: JobState, event: Event) -> JobState:
    """The state after ``event``; raises :class:`IllegalTransition`."""
    try:
        return TRANSITIONS[(JobState(state), Event(event))]
    except (KeyError, ValueError):
        raise IllegalTransition(state, event) from None


def is_terminal(state: JobState) -> bool:
    return state in TERMINAL


class ErrorKind(StrEnum):
    TARGET_UNREACHABLE = "target_unreachable"  # connection refused / no route: target asleep
    TARGET_4XX = "target_4xx"
    TARGET_5XX = "target_5xx"
    RESET = "reset"  # connection dropped mid-request
    TIMEOUT = "timeout"
    STREAM_ERROR = "stream_error"  # an {"error": ...} object inside a 200 stream
    ARTIFACT_WRITE_ERROR = "artifact_write_error"
    CANCELLED = "cancelled"
    SHUTDOWN = "shutdown"  # foreman stopped the attempt: not the job's fault
    INTERNAL = "internal_error"  # foreman itself failed (disk, database, bug): retried
    TOO_LARGE = "response_too_large"  # the target's answer passed foreman's size limit


RETRYABLE: frozenset[ErrorKind] = frozenset(
    {ErrorKind.TARGET_5XX, ErrorKind.RESET, ErrorKind.TIMEOUT, ErrorKind.INTERNAL}
)

# Error codes in the job object's ``error`` when it fails.
CODE_TARGET_ERROR = "target_error"  # target answered 4xx; message is the target's
CODE_STREAM_ERROR = "stream_error"
CODE_ARTIFACT_WRITE_ERROR = "artifact_write_error"
CODE_RESPONSE_TOO_LARGE = "response_too_large"  # over FOREMAN_MAX_RESPONSE / a line limit
CODE_TOO_MANY_ATTEMPTS = "too_many_attempts"  # retries or crash recoveries used up

_FAIL_CODES = {
    ErrorKind.TARGET_4XX: CODE_TARGET_ERROR,
    ErrorKind.STREAM_ERROR: CODE_STREAM_ERROR,
    ErrorKind.ARTIFACT_WRITE_ERROR: CODE_ARTIFACT_WRITE_ERROR,
    ErrorKind.TOO_LARGE: CODE_RESPONSE_TOO_LARGE,
}


@frozen
class Decision:
    """What to store after an error or at start-up: apply ``event`` to reach ``state``.

    ``delay``: seconds before the job may be dispatched again (requeue only).
    ``wait_for_target``: requeued because the target is down; dispatch when the
    monitor reports it up again (no delay of its own).
    ``error_code``: for ``failed``; the caller writes the message (the target's
    text, or the last error for ``too_many_attempts``).
    """

    event: Event
    state: JobState
    attempts: int
    delay: float = 0.0
    wait_for_target: bool = False
    error_code: str | None = None


def _check_counts(attempts: int, max_attempts: int) -> None:
    if attempts < 0:
        raise ValueError(f"attempts must be >= 0, got {attempts}")
    if max_attempts < 1:
        raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")


def _use_one(attempts: int, max_attempts: int) -> int:
    return attempts + 1 if attempts < max_attempts else attempts


def _fail(attempts: int, code: str) -> Decision:
    return Decision(Event.FAIL, JobState.FAILED, attempts, error_code=code)


def after_error(
    state: JobState,
    attempts: int,
    max_attempts: int,
    error_kind: ErrorKind,
    *,
    rng: random.Random | None = None,
) -> Decision:
    """What happens to a running job whose attempt ended with ``error_kind``.

    ``attempts`` is the count before this attempt ended (see module doc).
    """
    state = JobState(state)
    kind = ErrorKind(error_kind)
    _check_counts(attempts, max_attempts)
    if state not in RUNNING:
        raise IllegalTransition(state, f"report {kind.value} for")
    if kind is ErrorKind.CANCELLED:
        return Decision(Event.CANCEL, JobState.CANCELLED, attempts)
    if kind is ErrorKind.TARGET_UNREACHABLE:
        return Decision(Event.REQUEUE, JobState.QUEUED, attempts, wait_for_target=True)
    if kind is ErrorKind.SHUTDOWN:
        return Decision(Event.REQUEUE, JobState.QUEUED, attempts)
    used = _use_one(attempts, max_attempts)
    if kind in RETRYABLE:
        if used >= max_attempts:
            return _fail(used, CODE_TOO_MANY_ATTEMPTS)
        return Decision(Event.REQUEUE, JobState.QUEUED, used, delay=job_retry_delay(used, rng))
    return _fail(used, _FAIL_CODES[kind])


def recover_on_start(state: JobState, attempts: int, max_attempts: int) -> Decision | None:
    """For a job found at start-up; None when nothing changes (queued or finished).

    A job found ``loading``/``working`` was interrupted: it goes back to
    ``queued`` with one more attempt used (at-least-once), or ``failed`` with
    ``too_many_attempts`` when that was its last attempt.
    """
    state = JobState(state)
    _check_counts(attempts, max_attempts)
    if state not in RUNNING:
        return None
    used = _use_one(attempts, max_attempts)
    if used >= max_attempts:
        return _fail(used, CODE_TOO_MANY_ATTEMPTS)
    return Decision(Event.REQUEUE, JobState.QUEUED, used)


# -- transitions: the only way a job's state is written ---------------------


@frozen
class Transition:
    """One state change, applied only while the job is still in one of ``sources``.

    Built by the constructors below, never by hand: ``sources`` and ``target``
    come from ``TRANSITIONS``, so the table is what the store enforces (a
    compare-and-set on the current state), and ``fields`` are the columns the
    change sets with it.
    """

    job_id: str
    event: Event
    sources: frozenset[JobState]
    target: JobState
    at: float
    fields: tuple[tuple[str, Any], ...] = ()


SOURCES: dict[Event, frozenset[JobState]] = {
    event: frozenset(s for (s, e) in TRANSITIONS if e is event) for event in Event
}


def plan(
    job_id: str,
    event: Event,
    at: float,
    fields: tuple[tuple[str, Any], ...] = (),
    *,
    source: JobState | None = None,
) -> Transition:
    """``event`` for ``job_id``, from any state the table allows or from ``source`` only."""
    if source is None:
        sources = SOURCES[event]
    else:
        transition(source, event)  # raises IllegalTransition
        sources = frozenset({JobState(source)})
    (target,) = {TRANSITIONS[(s, event)] for s in sources}
    return Transition(job_id, event, sources, target, at, fields)


def start_loading(job_id: str, now: float) -> Transition:
    clear = (("error_code", None), ("error_message", None), ("not_before", None))
    return plan(job_id, Event.START_LOADING, now, (("started_at", now), *clear))


def start_working(job_id: str, now: float) -> Transition:
    return plan(job_id, Event.START_WORKING, now, (("working_at", now),))


def succeed(job_id: str, now: float, tokens: int, result: str | None, artifacts: str) -> Transition:
    """``result``: the inline response (None when too large); ``artifacts``: JSON listing."""
    fields = (
        ("finished_at", now),
        ("tokens", tokens),
        ("result", result),
        ("artifacts", artifacts),
    )
    return plan(job_id, Event.SUCCEED, now, fields)


def cancel(job_id: str, now: float) -> Transition:
    fields = (("finished_at", now), ("error_code", None), ("error_message", None))
    return plan(job_id, Event.CANCEL, now, fields)


def attempt_failed(
    job_id: str,
    state: JobState,
    attempts: int,
    max_attempts: int,
    kind: ErrorKind,
    message: str,
    now: float,
    tokens: int,
    *,
    status: int | None = None,
    rng: random.Random | None = None,
) -> Transition:
    """The transition after a running attempt ended with ``kind`` (see ``after_error``).

    ``status``: the target's HTTP status, kept on a failed job (a batch's error
    file reports it as the line's ``status_code``).
    """
    kind = ErrorKind(kind)
    decision = after_error(state, attempts, max_attempts, kind, rng=rng)
    if decision.event is Event.REQUEUE:
        not_before = now + decision.delay if decision.delay else None
        fields: tuple[tuple[str, Any], ...] = (
            ("attempts", decision.attempts),
            ("not_before", not_before),
            ("error_code", kind.value),
            ("error_message", message),
        )
    else:
        failed = decision.state is JobState.FAILED
        fields = (
            ("attempts", decision.attempts),
            ("finished_at", now),
            ("error_code", (decision.error_code or kind.value) if failed else None),
            ("error_message", message if failed else None),
            ("tokens", tokens),
            ("error_status", status if failed else None),
        )
    return plan(job_id, decision.event, now, fields, source=state)


def recovered(
    job_id: str, state: JobState, attempts: int, max_attempts: int, now: float
) -> Transition | None:
    """For a job found at start-up (see ``recover_on_start``); None when nothing changes."""
    decision = recover_on_start(state, attempts, max_attempts)
    if decision is None:
        return None
    failed = decision.state is JobState.FAILED
    fields: tuple[tuple[str, Any], ...] = (
        ("attempts", decision.attempts),
        ("error_code", decision.error_code if failed else "interrupted"),
        (
            "error_message",
            f"interrupted {decision.attempts} times (foreman stopped mid-attempt)"
            if failed
            else "foreman stopped during the attempt; retrying",
        ),
    )
    if failed:
        fields += (("finished_at", now),)
    return plan(job_id, decision.event, now, fields, source=state)
