"""The WorkQueue's own edges on a task.Clock: limits, cancellation, retry timers, close."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from foreman.core.scheduler import Scheduler
from foreman.work.admission import ImmediateAdmission, InferenceCall, QueueFull
from foreman.work.queue import WorkQueue


def _fired(d: Deferred[Any]) -> Any:
    box: list[Any] = []
    d.addBoth(box.append)
    assert box, "the Deferred has not fired"
    return box[0]


def _call(model: str = "m", path: str = "/api/chat") -> InferenceCall:
    return InferenceCall(model, 10, path, True, 0.0)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def queue(clock: Clock) -> WorkQueue:
    return WorkQueue(Scheduler(60.0), 2, clock, clock=clock.seconds, retry_after=7)


def test_the_interactive_queue_is_bounded(queue: WorkQueue) -> None:
    queue.admit(_call())
    queue.admit(_call())
    refused = _fired(queue.admit(_call()))
    assert isinstance(refused, Failure)
    assert isinstance(refused.value, QueueFull)
    assert refused.value.retry_after == 7
    assert queue.interactive_waiting == 2
    assert len(queue.scheduler) == 2


def test_a_cancelled_admission_leaves_the_queue_and_notifies(queue: WorkQueue) -> None:
    changes: list[int] = []
    queue.on_change = lambda: changes.append(len(queue.scheduler))
    d = queue.admit(_call())
    assert changes == [1]
    d.cancel()
    _fired(d).trap(CancelledError)
    assert changes == [1, 0]
    assert queue.interactive_waiting == 0
    assert queue.pick(None) is None


def test_a_job_with_a_backoff_waits_for_it_on_the_clock(clock: Clock, queue: WorkQueue) -> None:
    woken = queue.wait_for_work()
    queue.add_job("j1", "m", 0, 0.0, not_before=10.0)
    assert queue.delayed == 1
    assert len(queue.scheduler) == 0
    assert not woken.called
    clock.advance(9.9)
    assert not woken.called
    clock.advance(0.1)
    assert woken.called
    assert queue.delayed == 0
    item = queue.pick(None)
    assert item is not None
    assert item.key == "j1"


def test_remove_job_cancels_a_backoff_or_takes_a_queued_job(clock: Clock, queue: WorkQueue) -> None:
    queue.add_job("retrying", "m", 0, 0.0, not_before=10.0)
    queue.add_job("queued", "m", 0, 0.0, None)
    assert queue.remove_job("retrying") is True
    assert clock.getDelayedCalls() == []
    assert queue.remove_job("queued") is True
    assert queue.remove_job("queued") is False
    assert len(queue.scheduler) == 0


def test_add_jobs_numbers_jobs_in_creation_order(queue: WorkQueue) -> None:
    queue.add_jobs([("c", "m", 0, 3.0, None), ("a", "m", 0, 1.0, None), ("b", "m", 0, 1.0, None)])
    assert [w.key for w in queue.order(None, None)] == ["a", "b", "c"]
    # ties on created_at keep the order given; seq follows the sorted order
    assert [w.seq for w in queue.order(None, None)] == [1, 2, 3]
    assert queue.position("c", None) == 2


def test_close_fails_held_requests_cancels_timers_and_the_waiter(
    clock: Clock, queue: WorkQueue
) -> None:
    held = queue.admit(_call())
    queue.add_job("retrying", "m", 0, 0.0, not_before=10.0)
    queue.close()
    refused = _fired(held)
    assert isinstance(refused, Failure)
    assert refused.check(QueueFull)
    assert clock.getDelayedCalls() == []
    assert queue.delayed == 0
    assert queue.held("req_1") is None

    empty = WorkQueue(Scheduler(60.0), 2, clock, clock=clock.seconds)
    waiter = empty.wait_for_work()
    empty.close()
    _fired(waiter).trap(CancelledError)


def test_immediate_admission_admits_at_once() -> None:
    slot = _fired(ImmediateAdmission().admit(_call()))
    assert slot.queue_wait_ms == 0.0
    slot.release()


def test_pick_interactive_skips_jobs_and_ranks_priority_residency_then_age(
    clock: Clock,
) -> None:
    """What runs while no job may start (ADR 0026): only interactive requests, highest
    priority first, a resident model's before another's, then the oldest."""
    queue = WorkQueue(Scheduler(60.0), 8, clock, clock=clock.seconds)
    queue.add_job("job_old", "m", 99, 0.0, None)  # older and higher: still not picked
    clock.advance(1)
    queue.admit(InferenceCall("other", 10, "/api/chat", True, 0.0))  # req_2 (the job was 1)
    clock.advance(1)
    queue.admit(InferenceCall("m", 10, "/api/chat", True, 0.0))  # req_3
    clock.advance(1)
    queue.admit(InferenceCall("other", 20, "/api/chat", True, 0.0))  # req_4
    clock.advance(1)
    queue.admit(InferenceCall("m:latest", 10, "/api/chat", True, 0.0))  # req_5
    picked = [queue.pick_interactive(["m"]) for _ in range(4)]
    assert [p.key if p else None for p in picked] == ["req_4", "req_3", "req_5", "req_2"]
    assert queue.pick_interactive(["m"]) is None
    assert "job_old" in queue.scheduler and len(queue.scheduler) == 1
    # taken from the scheduler, still held for the worker to admit
    assert queue.interactive_waiting == 4


def test_next_arrival_fires_on_the_next_queued_item_and_can_be_cancelled(
    queue: WorkQueue,
) -> None:
    first, second = queue.next_arrival(), queue.next_arrival()
    second.cancel()
    assert not first.called
    queue.add_job("job_a", "m", 0, 0.0, None)
    assert _fired(first) is None
    assert isinstance(_fired(second), Failure)
    later = queue.next_arrival()
    queue.admit(_call())
    assert _fired(later) is None
