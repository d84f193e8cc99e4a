"""The worker over the real WorkQueue, a fake runner and a fake monitor, on a task.Clock.

No reactor runs: every Deferred is fired by hand or by ``clock.advance``, so
each test is synchronous and takes microseconds.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from types import SimpleNamespace
from typing import Any

import pytest
from attrs import define
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.task import Clock
from twisted.logger import LogEvent

from foreman.core.residency import ResidentModel, canonical_model
from foreman.core.scheduler import INTERACTIVE, JOB, Scheduler, Waiting
from foreman.target.call import SHUTDOWN, TargetError
from foreman.work.admission import InferenceCall, Slot
from foreman.work.queue import WorkQueue
from foreman.work.views import queue_view, work_status
from foreman.work.worker import LOOK_AHEAD_AFTER, PREFETCH_WINDOW, JobRunner, Worker
from tests.deferreds import failure_of, result_of

# -- helpers ---------------------------------------------------------------


class FakeRunner:
    """A JobRunner whose attempts end when the test says so."""

    def __init__(self) -> None:
        self.job_id: str | None = None
        self.started: list[str] = []
        self.aborts: list[tuple[str | None, TargetError | None]] = []
        self.raise_at_once: dict[str, Exception] = {}
        self.finish_on_abort = True
        self._pending: dict[str, Deferred[str | None]] = {}
        self.prefetched: list[list[str]] = []
        self.staged: list[str] = []
        self.backlogged = False
        self._room: list[Deferred[None]] = []

    def when_room(self) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        if self.backlogged:
            self._room.append(d)
        else:
            d.callback(None)
        return d

    def recorded(self) -> None:
        """The backlog is over: the worker's wait for room ends."""
        self.backlogged = False
        room, self._room = self._room, []
        for d in room:
            if not d.called:
                d.callback(None)

    async def run(self, job_id: str) -> str | None:
        self.started.append(job_id)
        if job_id in self.raise_at_once:
            raise self.raise_at_once[job_id]
        self.job_id = job_id
        d: Deferred[str | None] = Deferred()
        self._pending[job_id] = d
        try:
            return await d
        finally:
            self.job_id = None
            self._pending.pop(job_id, None)

    def prefetch(self, job_ids: Sequence[str]) -> None:
        self.prefetched.append(list(job_ids))

    def has_ahead(self, job_id: str) -> bool:
        return job_id in self._ahead()

    def stage(self, job_id: str) -> None:
        self.staged.append(job_id)

    @property
    def ahead_count(self) -> int:
        return len(self._ahead())

    def _ahead(self) -> list[str]:
        """Like the real runner: the last window, less the jobs started since."""
        if not self.prefetched:
            return []
        return [j for j in self.prefetched[-1] if j not in self.started]

    def abort(self, reason: TargetError | None = None) -> None:
        self.aborts.append((self.job_id, reason))
        # like the real runner: the target call fails, the attempt records it and ends
        if self.finish_on_abort and self.job_id is not None:
            self._pending[self.job_id].callback(None)

    def finish(self, job_id: str, model: str | None = None) -> None:
        self._pending[job_id].callback(model)

    def crash(self, job_id: str, error: Exception) -> None:
        self._pending[job_id].errback(error)


class FakeMonitor:
    """What the worker reads of the TargetMonitor."""

    def __init__(self, clock: Clock, state: str = "up", loaded: tuple[str, ...] = ()) -> None:
        self._clock = clock
        self.state = state
        self.loaded_models = loaded
        self.resident = tuple(ResidentModel(canonical_model(m), math.inf) for m in loaded)
        self.last_error: str | None = None
        self.on_ps: Any = None
        self.refreshes = 0
        self.pokes: list[float] = []
        self.waiters: list[Deferred[None]] = []
        self.subscribers: list[Any] = []

    def poke(self) -> None:
        self.pokes.append(self._clock.seconds())

    def subscribe(self, callback: Any) -> Any:
        self.subscribers.append(callback)
        return lambda: self.subscribers.remove(callback)

    def refresh_models(self) -> Deferred[bool]:
        self.refreshes += 1
        return succeed(True)

    def ps(self, *names: str, expires_at: float = math.inf) -> None:
        """/api/ps answered with ``names``."""
        self.resident = tuple(ResidentModel(canonical_model(m), expires_at) for m in names)
        self.on_ps(self.resident)

    def go_down(self, error: str = "no answer within 3 s") -> None:
        self.state = "down"
        self.last_error = error
        for callback in list(self.subscribers):
            callback(SimpleNamespace(state="down"))

    def when_up(self) -> Deferred[None]:
        if self.state == "up":
            return succeed(None)
        d: Deferred[None] = Deferred(self.waiters.remove)
        self.waiters.append(d)
        return d

    def come_up(self) -> None:
        self.state = "up"
        waiters, self.waiters = self.waiters, []
        for w in waiters:
            w.callback(None)


@define
class Harness:
    clock: Clock
    queue: WorkQueue
    runner: FakeRunner
    monitor: FakeMonitor
    worker: Worker
    wakes: list[float]

    def add(
        self, job_id: str, model: str, priority: int = 0, created_at: float | None = None
    ) -> None:
        when = self.clock.seconds() if created_at is None else created_at
        self.queue.add_job(job_id, model, priority, when, None)

    def admit(self, model: str, priority: int = 10, path: str = "/api/chat") -> Deferred[Slot]:
        now = self.clock.seconds()
        return self.queue.admit(InferenceCall(model, priority, path, True, now))


def make(
    clock: Clock,
    *,
    state: str = "up",
    loaded: tuple[str, ...] = (),
    max_wait: float = 1000.0,
    max_interactive: int = 8,
    with_wake: bool = True,
    **kwargs: Any,
) -> Harness:
    queue = WorkQueue(Scheduler(max_wait), max_interactive, clock, clock=clock.seconds)
    runner = FakeRunner()
    monitor = FakeMonitor(clock, state, loaded)
    wakes: list[float] = []
    worker = Worker(
        reactor=clock,
        queue=queue,
        runner=runner,
        monitor=monitor,
        wake=(lambda: wakes.append(clock.seconds())) if with_wake else None,
        **kwargs,
    )
    return Harness(clock, queue, runner, monitor, worker, wakes)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def h(clock: Clock) -> Harness:
    return make(clock)


def test_the_fake_runner_is_a_job_runner() -> None:
    runner: JobRunner = FakeRunner()  # mypy checks the Protocol
    assert runner.job_id is None


# -- one at a time ---------------------------------------------------------


def test_runs_one_job_at_a_time(h: Harness) -> None:
    h.add("j1", "m")
    h.add("j2", "m")
    h.worker.start()

    assert h.runner.started == ["j1"]
    assert h.worker.state == "working"
    assert h.worker.current == {"kind": "job", "id": "j1", "model": "m"}
    h.clock.advance(3600)
    assert h.runner.started == ["j1"], "a second job started before the first ended"
    assert "j2" in h.queue.scheduler

    h.runner.finish("j1", "m")
    assert h.runner.started == ["j1", "j2"]
    assert h.worker.current == {"kind": "job", "id": "j2", "model": "m"}
    h.runner.finish("j2", "m")

    assert h.worker.state == "idle"
    assert h.worker.current is None
    assert h.worker.dispatched == 2
    assert len(h.queue.scheduler) == 0


def test_rows_of_the_next_jobs_are_read_ahead_half_a_window_early(h: Harness) -> None:
    total = 2 * PREFETCH_WINDOW + 1
    for n in range(1, total + 1):
        h.add(f"j{n}", "m")
    h.worker.start()
    assert h.runner.prefetched == []  # the target takes j1's request first
    h.clock.advance(LOOK_AHEAD_AFTER)
    # j1 runs; the next PREFETCH_WINDOW jobs in dispatch order are read ahead
    assert h.runner.prefetched == [[f"j{n}" for n in range(2, PREFETCH_WINDOW + 2)]]
    half = PREFETCH_WINDOW // 2
    for n in range(1, half + 1):
        h.runner.finish(f"j{n}", "m")
        h.clock.advance(LOOK_AHEAD_AFTER)
    # half of the window is used: a new window starts at the next pick, whose row is
    # already read (kept, not read again); the other half's rows are read now
    assert len(h.runner.prefetched) == 2
    assert h.runner.prefetched[1] == [f"j{n}" for n in range(half + 2, half + 2 + PREFETCH_WINDOW)]
    for n in range(half + 1, total + 1):
        h.runner.finish(f"j{n}", "m")
        h.clock.advance(LOOK_AHEAD_AFTER)
    planned = {j for window in h.runner.prefetched for j in window}
    assert planned == {f"j{n}" for n in range(2, total + 1)}  # every job but the first
    assert h.runner.started == [f"j{n}" for n in range(1, total + 1)]
    # and each dispatch staged the pick after it (ADR 0024)
    assert h.runner.staged == [f"j{n}" for n in range(2, total + 1)]


def test_the_look_ahead_is_one_timer_and_stop_cancels_it(h: Harness) -> None:
    """Dispatches closer together than ``LOOK_AHEAD_AFTER`` share one look-ahead; a
    stopping worker leaves no timer behind."""
    for n in (1, 2, 3):
        h.add(f"j{n}", "m")
    h.worker.start()
    h.runner.finish("j1", "m")  # j2 starts before j1's look-ahead ran
    assert len(h.clock.getDelayedCalls()) == 1
    h.clock.advance(LOOK_AHEAD_AFTER)
    assert h.runner.staged == ["j3"]  # planned from where the queue is now
    h.runner.finish("j2", "m")
    assert len(h.clock.getDelayedCalls()) == 1
    stopping = Deferred.fromCoroutine(h.worker.stop(5))
    h.runner.finish("j3", "m")
    result_of(stopping)
    assert h.clock.getDelayedCalls() == []


def test_idle_worker_picks_up_work_added_later(h: Harness) -> None:
    h.worker.start()
    assert h.worker.state == "idle"
    h.clock.advance(100)
    assert h.runner.started == []

    h.add("j1", "m")
    assert h.runner.started == ["j1"]
    h.runner.finish("j1")
    h.add("j2", "m")
    assert h.runner.started == ["j1", "j2"]


def test_start_takes_the_loaded_model_from_the_monitor(clock: Clock) -> None:
    h = make(clock, loaded=("llama3:latest", "qwen:7b"))
    h.worker.start()
    assert h.worker.loaded == "llama3"


# -- interactive admissions --------------------------------------------------


def test_admission_gets_a_slot_and_the_worker_waits_for_its_release(h: Harness) -> None:
    h.worker.start()
    d = h.admit("m", path="/api/generate")

    slot = result_of(d)
    assert h.worker.state == "working"
    assert h.worker.current == {"kind": "interactive", "model": "m", "path": "/api/generate"}
    assert h.worker.loaded is None  # resident once the target answered
    assert h.worker.dispatched == 1
    assert h.queue.interactive_waiting == 0

    h.add("j1", "m")
    h.clock.advance(600)
    assert h.runner.started == [], "a job started while the slot was held"

    slot.outcome(200, None)
    slot.release()
    assert h.runner.started == ["j1"]
    assert h.worker.loaded == "m"
    slot.release()  # a second release is harmless
    assert h.runner.started == ["j1"]


def test_a_slot_says_whether_others_wait_for_the_target(h: Harness) -> None:
    """The relay releases before its client's last bytes only when someone waits."""
    h.worker.start()
    first = result_of(h.admit("m"))
    assert first.waiting is False
    second = h.admit("m")
    assert first.waiting is True
    h.add("j1", "m")
    first.release()
    slot = result_of(second)
    assert slot.waiting is True  # the job still waits
    h.queue.remove_job("j1")
    assert slot.waiting is False


def test_only_one_admission_at_a_time(h: Harness) -> None:
    h.worker.start()
    first = h.admit("m")
    second = h.admit("m")
    slot = result_of(first)
    assert not second.called
    slot.release()
    result_of(second).release()
    assert h.worker.state == "idle"
    assert h.worker.dispatched == 2


def test_interactive_priority_goes_before_an_older_job(h: Harness) -> None:
    h.add("j1", "m", priority=0)
    h.clock.advance(1)
    d = h.admit("m", priority=10)
    h.worker.start()

    slot = result_of(d)
    assert h.runner.started == []
    slot.release()
    assert h.runner.started == ["j1"]


def test_no_job_starts_while_recording_is_backlogged_but_a_chat_still_goes(h: Harness) -> None:
    """ADR 0026: with the runner too far behind recording, the next job waits (the target
    idles, memory stays bounded); an interactive request arriving meanwhile goes at once;
    the jobs go on once there is room again, in their order."""
    _jobs_waiting_for_the_disk(h, jobs=3)  # j2 waits for room
    chat = h.admit("m", priority=0)
    slot = result_of(chat)  # not held back by the jobs' backlog
    assert h.runner.started == ["j1"]
    slot.outcome(200, None)
    slot.release()
    assert h.runner.started == ["j1"]  # still no room for a job
    assert h.worker.state == "waiting_for_recording"
    h.runner.recorded()
    assert h.runner.started == ["j1", "j2"]
    h.runner.finish("j2", "m")
    assert h.runner.started == ["j1", "j2", "j3"]  # handed on at once: no backlog now
    h.runner.finish("j3", "m")
    assert h.worker.state == "idle"


def _jobs_waiting_for_the_disk(h: Harness, jobs: int = 2) -> None:
    """``jobs`` queued, the first one ran, and the rest wait for recording room."""
    for n in range(1, jobs + 1):
        h.add(f"j{n}", "m")
    h.worker.start()
    h.runner.backlogged = True
    h.runner.finish("j1", "m")
    assert h.runner.started == ["j1"]
    assert h.worker.state == "waiting_for_recording"


@pytest.mark.parametrize(
    ("meanwhile", "state", "after"),
    [
        # paused (``POST /queue/pause``): room alone does not start the next job
        (lambda h: h.worker.hold(), "paused", lambda h: h.worker.release()),
        # the target went down: no attempt is spent on it
        (lambda h: h.monitor.go_down(), "waiting_for_target", lambda h: h.monitor.come_up()),
    ],
    ids=["hold", "target-down"],
)
def test_what_happens_while_jobs_wait_for_the_disk_holds_when_room_comes(
    h: Harness,
    meanwhile: Callable[[Harness], None],
    state: str,
    after: Callable[[Harness], None],
) -> None:
    _jobs_waiting_for_the_disk(h)
    meanwhile(h)
    h.runner.recorded()
    assert h.runner.started == ["j1"]
    assert h.worker.state == state
    after(h)
    assert h.runner.started == ["j1", "j2"]


def test_a_hold_while_waiting_for_the_target_is_kept(clock: Clock) -> None:
    h = make(clock, state="down")
    h.add("j1", "m")
    h.worker.start()
    assert h.worker.state == "waiting_for_target"
    h.worker.hold()
    h.monitor.come_up()
    assert h.runner.started == []
    assert h.worker.state == "paused"
    h.worker.release()
    assert h.runner.started == ["j1"]


def test_a_worker_waiting_for_recording_room_stops_cleanly(h: Harness) -> None:
    _jobs_waiting_for_the_disk(h)
    stopping = Deferred.fromCoroutine(h.worker.stop(5))
    result_of(stopping)
    assert h.worker.state == "stopped"
    assert h.runner.started == ["j1"]


def test_a_client_that_left_before_dispatch_is_dropped(h: Harness) -> None:
    d = h.admit("m")
    d.cancel()
    failure_of(d).trap(CancelledError)
    h.worker.start()
    assert h.worker.dispatched == 0
    assert h.worker.state == "idle"
    assert len(h.queue.scheduler) == 0


def test_slot_and_on_dispatch_report_the_wait_on_the_clock(h: Harness) -> None:
    seen: list[tuple[Waiting, float]] = []
    h.worker.on_dispatch = lambda item, waited: seen.append((item, waited))
    h.add("j1", "m")
    h.worker.start()
    d = h.admit("m")
    h.clock.advance(2.5)
    h.runner.finish("j1", "m")

    assert result_of(d).queue_wait_ms == 2500.0
    assert [(item.kind, waited) for item, waited in seen] == [(JOB, 0.0), (INTERACTIVE, 2.5)]


def test_slot_wait_follows_the_queue_clock_without_patching(h: Harness) -> None:
    h.add("j1", "m")
    h.worker.start()
    d = h.admit("m")
    h.clock.advance(2.5)
    h.runner.finish("j1", "m")
    assert result_of(d).queue_wait_ms == 2500.0


# -- the target handed on at the last byte (ADR 0021) ------------------------


def _learned(h: Harness, model: str) -> int:
    return int(h.worker.estimator.learned().get(canonical_model(model), {}).get("samples") or 0)


def test_a_release_starts_the_next_request_before_the_loop_learns_from_the_first(
    clock: Clock,
) -> None:
    h = make(clock, loaded=("m",))
    h.worker.start()
    first, second = h.admit("m"), h.admit("m")
    slot = result_of(first)
    seen: list[int] = []

    def admitted(slot: Slot) -> Slot:
        seen.append(_learned(h, "m"))
        return slot

    second.addCallback(admitted)
    slot.outcome(200, None)
    slot.release()
    assert seen == [0], "the second request waited for the first one's bookkeeping"
    assert _learned(h, "m") == 1  # learned right after, in the same turn
    assert h.worker.early == 1
    assert h.worker.current == {"kind": "interactive", "model": "m", "path": "/api/chat"}
    result_of(second).release()
    assert h.worker.state == "idle" and h.worker.current is None
    assert h.worker.dispatched == 2
    assert h.worker.dispatched_at is None


def test_a_release_after_a_load_asks_api_ps_before_the_next_pick(h: Harness) -> None:
    h.worker.start()
    first, second = h.admit("m"), h.admit("m")
    slot = result_of(first)
    assert h.worker.loads == 1
    slot.outcome(200, 2.0)
    slot.release()
    assert h.worker.early == 0
    assert h.monitor.refreshes == 1
    result_of(second).release()
    assert h.worker.dispatched == 2


def test_no_hand_on_while_paused_or_for_a_failed_answer(clock: Clock) -> None:
    h = make(clock, loaded=("m",))
    h.worker.start()
    first, second = h.admit("m"), h.admit("m")
    h.worker.hold()
    slot = result_of(first)
    slot.outcome(200, None)
    slot.release()
    assert not second.called and h.worker.state == "paused"
    h.worker.release()
    slot2 = result_of(second)
    third = h.admit("m")
    slot2.outcome(500, None)
    slot2.release()  # a failed answer still frees the target
    assert third.called and h.worker.early == 1
    result_of(third).release()
    assert h.worker.dispatched == 3


def test_a_job_whose_call_ended_hands_the_target_on_before_its_attempt_returns(
    clock: Clock,
) -> None:
    h = make(clock, loaded=("m",))
    h.add("j1", "m")
    h.add("j2", "m")
    h.worker.start()
    assert h.runner.started == ["j1"]
    h.worker.job_freed("j2", "m")  # not the running job: ignored
    assert h.runner.started == ["j1"]
    h.worker.job_freed("j1", "m")
    assert h.runner.started == ["j1", "j2"], "the next job waited for the attempt to return"
    assert h.worker.current == {"kind": "job", "id": "j2", "model": "m"}
    h.runner.finish("j1", "m")  # the first attempt returns: j2's state is left alone
    assert h.worker.current == {"kind": "job", "id": "j2", "model": "m"}
    assert h.worker.state == "working"
    h.runner.finish("j2", "m")
    assert h.worker.state == "idle" and h.worker.current is None
    assert h.worker.dispatched == 2 and h.worker.early == 1
    assert _learned(h, "m") == 2


def test_hand_on_never_recurses_through_requests_that_end_at_once(clock: Clock) -> None:
    h = make(clock, loaded=("m",), max_interactive=2000)
    h.worker.start()
    first = h.admit("m")
    later = [h.admit("m") for _ in range(1500)]  # past the recursion limit, were it nested

    def refused(slot: Slot) -> Slot:  # the relay ends the moment it starts
        slot.outcome(502, None)
        slot.release()
        return slot

    for d in later:
        d.addCallback(refused)
    result_of(first).release()
    assert all(d.called for d in later)
    assert h.worker.dispatched == 1501
    assert h.worker.early <= 751  # every other one, at most: the loop starts the rest
    assert h.worker.state == "idle"


# -- drain by model, counters -------------------------------------------------


def test_drains_the_loaded_model_first(clock: Clock) -> None:
    h = make(clock, loaded=("b:latest",))
    for t, job in enumerate(["a1", "b1", "a2", "b2"]):
        h.add(job, job[0], created_at=float(t))
    h.worker.start()
    assert h.worker.loaded == "b"

    for _ in range(4):
        job = h.runner.started[-1]
        h.runner.finish(job, job[0])

    assert h.runner.started == ["b1", "b2", "a1", "a2"]
    assert h.worker.dispatched == 4
    assert h.worker.swaps == 1
    assert h.worker.loaded == "a"


def test_without_a_loaded_model_the_oldest_model_goes_first_then_drains(h: Harness) -> None:
    for t, job in enumerate(["a1", "b1", "a2", "b2"]):
        h.add(job, job[0], created_at=float(t))
    h.worker.start()
    assert h.worker.loaded is None
    for _ in range(4):
        job = h.runner.started[-1]
        h.runner.finish(job, job[0])

    assert h.runner.started == ["a1", "a2", "b1", "b2"]
    assert h.worker.swaps == 1  # the first dispatch (nothing loaded) is no swap


@pytest.mark.parametrize(("run_for", "next_job"), [(5.0, "b2"), (11.0, "a1")])
def test_starvation_bound_is_measured_on_the_queue_clock(
    clock: Clock, run_for: float, next_job: str
) -> None:
    h = make(clock, loaded=("b",), max_wait=10.0)
    h.add("a1", "a")
    h.add("b1", "b")
    h.add("b2", "b")
    h.worker.start()
    assert h.runner.started == ["b1"]
    h.clock.advance(run_for)
    h.runner.finish("b1", "b")
    assert h.runner.started == ["b1", next_job]


def test_a_runner_returning_no_model_leaves_loaded_alone(clock: Clock) -> None:
    h = make(clock, loaded=("b",))
    h.add("a1", "a")
    h.worker.start()
    h.runner.finish("a1", None)  # did not get as far as loading
    assert h.worker.loaded == "b"
    assert h.worker.swaps == 1
    assert h.worker.dispatched == 1


def test_an_admission_counts_a_swap_and_sets_loaded(clock: Clock) -> None:
    h = make(clock, loaded=("b",))
    h.worker.start()
    for _ in range(2):
        slot = result_of(h.admit("a"))
        slot.outcome(200, 1.5)
        slot.release()
    assert (h.worker.loaded, h.worker.swaps, h.worker.dispatched) == ("a", 1, 2)
    assert h.worker.loads == 1  # the second found a resident
    assert h.worker.residency.load_seconds("a") == 1.5
    assert h.queue.scheduler.load_costs == {"a:latest": 1.5}  # ties go to fast loads


def test_a_404_leaves_the_resident_set_alone(clock: Clock) -> None:
    """A request for a model the target does not have does not make it 'loaded'."""
    h = make(clock, loaded=("b",))
    h.worker.start()
    slot = result_of(h.admit("doesnotexist"))
    slot.outcome(404, None)
    slot.release()
    assert h.worker.loaded == "b"
    assert h.worker.resident() == ("b:latest",)


# -- a target that is down ----------------------------------------------------


def test_target_down_dispatches_nothing_wakes_rate_limited_and_pokes(clock: Clock) -> None:
    h = make(clock, state="down", wake_interval=60.0, poke_interval=5.0)
    h.add("j1", "m")
    h.worker.start()

    assert h.runner.started == []
    assert h.worker.state == "waiting_for_target"
    assert h.worker.dispatched == 0
    assert "j1" in h.queue.scheduler, "no attempt may be spent on a down target"
    assert h.wakes == [0.0]
    assert h.monitor.pokes == [0.0]

    h.clock.advance(4.9)
    assert h.monitor.pokes == [0.0]
    h.clock.advance(0.1)
    assert h.monitor.pokes == [0.0, 5.0]
    assert h.wakes == [0.0], "wake must be rate-limited by wake_interval"
    assert len(h.monitor.waiters) == 1, "the worker must cancel the when_up it gave up on"

    for _ in range(11):
        h.clock.advance(5.0)
    assert h.monitor.pokes == [5.0 * i for i in range(13)]
    assert h.wakes == [0.0, 60.0]
    assert h.runner.started == []

    h.clock.advance(2.0)
    h.monitor.come_up()
    assert h.runner.started == ["j1"]
    assert h.worker.state == "working"
    h.clock.advance(LOOK_AHEAD_AFTER)  # the look-ahead after j1's dispatch
    assert h.clock.getDelayedCalls() == [], "the poke timer outlived the wait"
    assert h.monitor.pokes[-1] == 60.0


def test_wake_is_sent_again_after_wake_interval_of_reactor_time(clock: Clock) -> None:
    h = make(clock, state="down", wake_interval=60.0, poke_interval=5.0)
    h.add("j1", "m")
    h.worker.start()
    for _ in range(12):
        h.clock.advance(5.0)
    assert h.wakes == [0.0, 60.0]


def test_no_wake_while_the_first_probe_is_out(clock: Clock) -> None:
    h = make(clock, state="unknown", poke_interval=5.0)
    h.add("j1", "m")
    h.worker.start()
    h.clock.advance(5.0)
    assert h.wakes == []
    assert h.monitor.pokes == [0.0, 5.0]
    assert h.runner.started == []
    h.monitor.come_up()
    assert h.runner.started == ["j1"]


def test_down_without_wake_configured_still_waits_and_pokes(clock: Clock) -> None:
    h = make(clock, state="down", with_wake=False, poke_interval=2.0)
    h.add("j1", "m")
    h.worker.start()
    h.clock.advance(2.0)
    assert h.monitor.pokes == [0.0, 2.0]
    h.monitor.come_up()
    assert h.runner.started == ["j1"]


def test_an_idle_worker_does_not_poke_a_down_target(clock: Clock) -> None:
    h = make(clock, state="down")
    h.worker.start()
    h.clock.advance(60)
    assert h.monitor.pokes == []
    assert h.wakes == []
    assert h.worker.state == "idle"


def test_wake_is_sent_once_per_wake_up_with_bounded_resends(clock: Clock) -> None:
    h = make(clock, state="down", wake_interval=10.0, wake_resends=2, poke_interval=5.0)
    h.add("j1", "m")
    h.worker.start()
    h.clock.pump([5.0] * 20)  # 100 s asleep
    assert h.wakes == [0.0, 10.0, 20.0], "one packet, then two resends, then silence"
    assert h.worker.wake_packets == 3
    h.monitor.come_up()
    assert h.worker.last_wake_seconds == 100.0 and h.worker.wakes == 1
    assert h.worker.wake_packets == 0
    h.runner.finish("j1", "m")
    # the next sleep is a new wake-up: it gets its own packet
    h.monitor.state = "down"
    h.add("j2", "m")
    h.clock.advance(1.0)
    assert h.wakes == [0.0, 10.0, 20.0, 100.0]


def test_the_wait_for_the_target_shows_in_the_slot(clock: Clock) -> None:
    h = make(clock, state="down")
    h.worker.start()
    d = h.admit("m")
    h.clock.advance(7.0)
    h.monitor.come_up()
    slot = result_of(d)
    assert slot.queue_wait_ms == 7000.0 and slot.target_wait_ms == 7000.0
    slot.release()
    slot = result_of(h.admit("m"))  # arrived after the wake: no target wait
    assert slot.target_wait_ms == 0.0


def test_a_job_in_flight_is_lost_when_the_target_goes_down(clock: Clock) -> None:
    h = make(clock)
    h.add("j1", "m")
    h.worker.start()
    assert h.runner.started == ["j1"]
    h.monitor.go_down("no answer within 3 s (asleep, or dropping packets)")
    [(job, reason)] = h.runner.aborts
    assert job == "j1" and reason is not None
    assert reason.kind == "target_unreachable"  # requeued, no attempt spent
    assert "asleep" in reason.message
    assert h.worker.lost == 1
    assert h.worker.current is None


def test_an_interactive_request_in_flight_hears_that_the_target_is_lost(clock: Clock) -> None:
    h = make(clock)
    h.worker.start()
    slot = result_of(h.admit("m"))
    heard: list[str] = []
    slot.on_lost = heard.append
    h.monitor.go_down("no answer within 3 s")
    assert heard and "no answer within 3 s" in heard[0]
    slot.release()
    h.monitor.go_down()  # nothing in flight: nothing to lose
    assert h.worker.lost == 1


def test_after_a_load_the_worker_asks_ps_before_the_next_pick(clock: Clock) -> None:
    h = make(clock, loaded=("a",))
    h.add("j1", "a")
    h.add("j2", "b")
    h.worker.start()
    h.runner.finish("j1", "a")
    assert h.monitor.refreshes == 0, "a was resident: nothing to ask"
    h.runner.finish("j2", "b")
    assert h.monitor.refreshes == 1
    assert h.worker.loads == 1


def test_ps_answers_feed_the_resident_set_and_capacity(clock: Clock) -> None:
    h = make(clock)
    h.worker.start()
    h.monitor.ps("a", "b:7b")
    assert h.worker.resident() == ("a:latest", "b:7b")
    assert h.queue.scheduler.capacity == 2
    h.monitor.ps("a", expires_at=clock.seconds() + 2.0)  # about to expire: not counted
    assert h.worker.resident() == ()


# -- a runner that fails -----------------------------------------------------


def _crash_events(events: list[LogEvent]) -> list[LogEvent]:
    return [e for e in events if "log_failure" in e]


def test_a_crashing_attempt_is_logged_and_the_worker_goes_on(
    h: Harness, logged: list[LogEvent]
) -> None:
    h.add("j1", "m")
    h.add("j2", "m")
    h.worker.start()
    h.runner.crash("j1", RuntimeError("boom"))

    crashes = _crash_events(logged)
    assert len(crashes) == 1
    assert crashes[0]["key"] == "j1"
    assert crashes[0]["log_failure"].check(RuntimeError)
    assert h.runner.started == ["j1", "j2"]
    assert h.worker.current == {"kind": "job", "id": "j2", "model": "m"}
    h.runner.finish("j2", "m")
    assert h.worker.state == "idle"
    assert h.worker.loaded == "m"
    # the job whose run raised is not lost: it comes back after a pause
    assert h.queue.delayed == 1
    h.clock.advance(0.5)
    assert h.runner.started == ["j1", "j2", "j1"]


def test_a_runner_raising_at_once_does_not_kill_the_worker(
    h: Harness, logged: list[LogEvent]
) -> None:
    h.runner.raise_at_once["j1"] = ValueError("bad row")
    h.add("j1", "m")
    h.add("j2", "m")
    h.worker.start()
    assert h.runner.started == ["j1", "j2"]
    assert [e["key"] for e in _crash_events(logged)] == ["j1"]
    h.runner.finish("j2")
    h.add("j3", "m")
    assert h.runner.started[-1] == "j3"


def test_an_observer_raising_on_dispatch_does_not_stop_the_work(
    h: Harness, logged: list[LogEvent]
) -> None:
    def broken(item: object, waited: float) -> None:
        raise KeyError("metrics")

    h.worker.on_dispatch = broken
    h.add("j1", "m")
    h.worker.start()
    assert h.runner.started == ["j1"]
    h.runner.finish("j1", "m")
    assert h.worker.state == "idle" and h.worker.dispatched == 1
    assert len(_crash_events(logged)) == 1


# -- stop and cancel ---------------------------------------------------------


def test_stop_aborts_the_running_job_after_grace(h: Harness) -> None:
    h.add("j1", "m")
    h.add("j2", "m")
    h.worker.start()

    stopped = Deferred.fromCoroutine(h.worker.stop(10.0))
    h.clock.advance(9.99)
    assert h.runner.aborts == []
    assert not stopped.called
    h.clock.advance(0.01)

    assert len(h.runner.aborts) == 1
    job_id, reason = h.runner.aborts[0]
    assert job_id == "j1"
    assert isinstance(reason, TargetError)
    assert reason.kind == SHUTDOWN
    result_of(stopped)
    assert h.worker.state == "stopped"
    assert h.runner.started == ["j1"], "a stopping worker started the next job"
    assert "j2" in h.queue.scheduler
    assert h.clock.getDelayedCalls() == []


def test_stop_waits_for_a_job_that_ends_within_grace(h: Harness) -> None:
    h.add("j1", "m")
    h.add("j2", "m")
    h.worker.start()
    stopped = Deferred.fromCoroutine(h.worker.stop(30.0))
    h.clock.advance(1.0)
    h.runner.finish("j1", "m")

    result_of(stopped)
    assert h.runner.aborts == []
    assert h.runner.started == ["j1"]
    assert h.clock.getDelayedCalls() == [], "the grace timer must be cancelled"


def test_stop_of_an_idle_worker_is_immediate(h: Harness) -> None:
    h.worker.start()
    result_of(Deferred.fromCoroutine(h.worker.stop(10.0)))
    assert h.worker.state == "stopped"
    assert h.clock.getDelayedCalls() == []
    h.add("j1", "m")
    assert h.runner.started == []


def test_stop_before_start_returns_at_once(h: Harness) -> None:
    result_of(Deferred.fromCoroutine(h.worker.stop(10.0)))
    assert h.clock.getDelayedCalls() == []


def test_stop_while_waiting_for_the_target(clock: Clock) -> None:
    h = make(clock, state="down")
    h.add("j1", "m")
    h.worker.start()
    stopped = Deferred.fromCoroutine(h.worker.stop(30.0))

    result_of(stopped)
    assert h.worker.state == "stopped"
    assert h.monitor.waiters == []
    assert h.clock.getDelayedCalls() == []
    h.monitor.come_up()
    assert h.runner.started == []


def test_stop_lets_the_loop_end_under_a_held_slot_after_grace(h: Harness) -> None:
    h.worker.start()
    slot = result_of(h.admit("m"))
    stopped = Deferred.fromCoroutine(h.worker.stop(5.0))
    h.clock.advance(4.9)
    assert not stopped.called
    h.clock.advance(0.1)

    result_of(stopped)
    assert h.runner.aborts == [], "no job runs: nothing to abort"
    assert h.worker.state == "stopped"
    slot.release()  # the proxy's late release is harmless


def test_the_worker_can_start_again_after_stop(h: Harness) -> None:
    h.worker.start()
    result_of(Deferred.fromCoroutine(h.worker.stop(1.0)))
    h.worker.start()
    h.add("j1", "m")
    assert h.runner.started == ["j1"]


def test_cancel_job_aborts_only_the_running_job(h: Harness) -> None:
    h.runner.finish_on_abort = False
    h.add("j1", "m")
    h.add("j2", "m")
    h.worker.start()

    h.worker.cancel_job("j2")
    h.worker.cancel_job("nope")
    assert h.runner.aborts == []
    h.worker.cancel_job("j1")
    assert h.runner.aborts == [("j1", None)]


# -- views ---------------------------------------------------------------------


def test_queue_view_and_work_status(clock: Clock) -> None:
    h = make(clock, loaded=("b:latest",))
    clock.advance(80)
    h.add("j_run", "b")
    h.worker.start()
    assert h.runner.started == ["j_run"]

    clock.advance(20)  # now = 100
    h.add("j_old", "a", created_at=90.0)
    h.add("j_b", "b", created_at=95.0)
    h.add("j_a2", "a", created_at=99.0)
    h.queue.add_job("j_retry", "a", 0, 50.0, 130.0)  # waits for its backoff
    held = h.admit("a", priority=10, path="/api/chat")
    clock.advance(3)  # now = 103

    view = queue_view(h.queue, h.worker, clock.seconds(), limit=10)
    assert view == {
        "object": "queue",
        "data": [
            {
                "position": 0,
                "kind": "interactive",
                "model": "a",
                "priority": 10,
                "waited_ms": 3000.0,
                "eta": None,
                "path": "/api/chat",
            },
            # drain-by-model continues with the admission's model
            {
                "position": 1,
                "kind": "job",
                "model": "a",
                "priority": 0,
                "waited_ms": 13000.0,
                "eta": None,
                "id": "j_old",
            },
            {
                "position": 2,
                "kind": "job",
                "model": "a",
                "priority": 0,
                "waited_ms": 4000.0,
                "eta": None,
                "id": "j_a2",
            },
            {
                "position": 3,
                "kind": "job",
                "model": "b",
                "priority": 0,
                "waited_ms": 8000.0,
                "eta": None,
                "id": "j_b",
            },
        ],
        "total": 4,
        "by_model": {"a": 3, "b": 1},
        "by_kind": {"job": 3, "interactive": 1},
        "retrying": 1,
        "loaded_model": "b",
    }
    short = queue_view(h.queue, h.worker, clock.seconds(), limit=2)
    assert [e["position"] for e in short["data"]] == [0, 1]
    assert short["total"] == 4
    # the view is read-only: the real dispatch order is the one shown
    assert h.queue.position("j_b", h.worker.loaded) == 3

    assert work_status(h.queue, h.worker) == {
        "worker": {
            "state": "working",
            "current": {"kind": "job", "id": "j_run", "model": "b"},
            "loaded_model": "b",
            "dispatched": 1,
            "model_switches": 0,
            "model_loads": 0,
            "lost_to_target": 0,
        },
        "queue": {
            "depth": 4,
            "by_model": {"a": 3, "b": 1},
            "by_kind": {"job": 3, "interactive": 1},
            "retrying": 1,
        },
    }

    clock.advance(27)  # now = 130: the retry's backoff ends
    status = work_status(h.queue, h.worker)
    assert status["queue"]["retrying"] == 0
    assert status["queue"]["depth"] == 5

    h.runner.finish("j_run", "b")
    slot = result_of(held)
    status = work_status(h.queue, h.worker)
    assert status["worker"]["current"] == {
        "kind": "interactive",
        "model": "a",
        "path": "/api/chat",
    }
    assert (status["worker"]["dispatched"], status["worker"]["model_switches"]) == (2, 1)
    slot.outcome(200, None)
    slot.release()
    # j_retry (created at 50) is the oldest "a" job now
    assert h.runner.started == ["j_run", "j_retry"]


# -- work that leaves while the target is down -----------------------------------


def test_a_job_removed_while_waiting_for_the_target_is_not_dispatched(clock: Clock) -> None:
    h = make(clock, state="down")
    h.add("j1", "m")
    h.worker.start()
    assert h.queue.remove_job("j1")
    h.monitor.come_up()

    assert h.runner.started == []
    assert h.worker.dispatched == 0
    assert h.clock.getDelayedCalls() == []
    h.add("j2", "m")
    assert h.runner.started == ["j2"]


def test_state_is_idle_when_the_target_comes_up_and_nothing_is_left(clock: Clock) -> None:
    h = make(clock, state="down")
    h.add("j1", "m")
    h.worker.start()
    h.queue.remove_job("j1")
    h.monitor.come_up()
    assert h.worker.state == "idle"


def test_queue_view_orders_by_the_workers_loaded_model(clock: Clock) -> None:
    h = make(clock)
    h.add("a1", "a", created_at=0.0)
    h.add("b1", "b", created_at=1.0)
    h.add("a2", "a", created_at=2.0)
    h.worker.residency.observe_response("b", 0.0)  # not started: nothing is dispatched
    ids = [e["id"] for e in queue_view(h.queue, h.worker, 10.0, limit=10)["data"]]
    assert ids == ["b1", "a1", "a2"]
    h.worker.residency.observe_ps([], 0.0)
    ids = [e["id"] for e in queue_view(h.queue, h.worker, 10.0, limit=10)["data"]]
    assert ids == ["a1", "a2", "b1"]


class FakeStorage:
    def __init__(self) -> None:
        self.write_problem: str | None = None
        self.probes = 0

    def probe(self) -> None:
        self.probes += 1


def test_jobs_wait_while_the_database_refuses_writes(clock: Clock) -> None:
    storage = FakeStorage()
    h = make(clock, storage=storage)
    storage.write_problem = "OperationalError: attempt to write a readonly database"
    h.add("j1", "m")
    h.worker.start()
    assert h.runner.started == []  # no attempt is spent on a database that cannot record it
    assert h.worker.state == "waiting_for_database"
    assert storage.probes == 1
    # an interactive request needs no database: it still runs
    slot = h.admit("m")
    assert slot.called
    result_of(slot).release()
    clock.advance(0.5)
    assert h.runner.started == [] and storage.probes >= 2
    storage.write_problem = None  # a probe went through
    clock.advance(0.5)
    assert h.runner.started == ["j1"]
    h.runner.finish("j1", "m")
    assert h.worker.state == "idle"
