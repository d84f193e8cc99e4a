"""The life of an OpenAI batch (pure): statuses, events, and what each one sets.

``validating → in_progress → finalizing → completed``; ``validating → failed``;
``in_progress → finalizing → expired`` when the window passes;
``validating | in_progress → cancelling → cancelled``. ``failed``,
``completed``, ``expired`` and ``cancelled`` are terminal (ADR 0018).

``finalizing`` and ``cancelling`` remember the terminal status they end in
(``ending``), so a restart in the middle finishes the same way.
"""

from __future__ import annotations

from enum import StrEnum

from attrs import frozen

__all__ = [
    "ACTIVE",
    "TERMINAL",
    "BatchEvent",
    "BatchStatus",
    "IllegalBatchTransition",
    "Step",
    "step",
]


class BatchStatus(StrEnum):
    VALIDATING = "validating"
    FAILED = "failed"
    IN_PROGRESS = "in_progress"
    FINALIZING = "finalizing"
    COMPLETED = "completed"
    EXPIRED = "expired"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"


TERMINAL: frozenset[BatchStatus] = frozenset(
    {BatchStatus.FAILED, BatchStatus.COMPLETED, BatchStatus.EXPIRED, BatchStatus.CANCELLED}
)
#: statuses whose lines may still be queued or running
ACTIVE: frozenset[BatchStatus] = frozenset(
    {BatchStatus.VALIDATING, BatchStatus.IN_PROGRESS, BatchStatus.CANCELLING}
)


class BatchEvent(StrEnum):
    VALID = "valid"  # every line checked and enqueued
    INVALID = "invalid"  # validation found errors: nothing enqueued
    LINES_DONE = "lines_done"  # no line is left unfinished
    EXPIRE = "expire"  # the completion window passed
    CANCEL = "cancel"
    FINALIZED = "finalized"  # output and error files written


@frozen
class Step:
    """The outcome of an event: the new status, the ``ending`` to keep, the stamp to set."""

    status: BatchStatus
    ending: BatchStatus | None
    stamp: str | None  # the ``*_at`` column that records this moment


class IllegalBatchTransition(ValueError):
    def __init__(self, status: BatchStatus, event: BatchEvent) -> None:
        super().__init__(f"cannot {event.value} a batch that is {status.value}")
        self.status = status
        self.event = event


def step(status: BatchStatus, ending: BatchStatus | None, event: BatchEvent) -> Step:
    """What ``event`` does to a batch in ``status`` (finishing toward ``ending``)."""
    status, event = BatchStatus(status), BatchEvent(event)
    ending = BatchStatus(ending) if ending is not None else None  # the row stores text
    S, E = BatchStatus, BatchEvent
    if status is S.VALIDATING:
        if event is E.VALID:
            return Step(S.IN_PROGRESS, None, "in_progress_at")
        if event is E.INVALID:
            return Step(S.FAILED, None, "failed_at")
    if status in (S.VALIDATING, S.IN_PROGRESS) and event is E.CANCEL:
        return Step(S.CANCELLING, S.CANCELLED, "cancelling_at")
    if status is S.IN_PROGRESS:
        if event is E.LINES_DONE:
            return Step(S.FINALIZING, S.COMPLETED, "finalizing_at")
        if event is E.EXPIRE:
            return Step(S.FINALIZING, S.EXPIRED, "finalizing_at")
    if status is S.CANCELLING and event is E.LINES_DONE:
        return Step(S.CANCELLING, S.CANCELLED, None)  # finalization follows
    if status in (S.FINALIZING, S.CANCELLING) and event is E.FINALIZED:
        final = ending or (S.CANCELLED if status is S.CANCELLING else S.COMPLETED)
        return Step(final, None, f"{final.value}_at")
    raise IllegalBatchTransition(status, event)


def can(status: BatchStatus, event: BatchEvent) -> bool:
    try:
        step(status, None, event)
    except IllegalBatchTransition:
        return False
    return True
