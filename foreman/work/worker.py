"""The one worker: takes the scheduler's next pick, runs it, repeats.

Exactly one inference request is in flight at the target at any time: an
interactive request is *admitted* (its held Deferred fires and the proxy
relays it) and the worker waits for the proxy to release the slot; a job is
run by the ``JobRunner``. While the target is down the worker does not pick
at all — nothing is dispatched to a target that cannot answer, and no
attempt is spent — and sends Wake-on-LAN if configured (once per wake-up,
then a bounded number of resends).

The worker keeps foreman's view of the target's resident set
(``foreman.core.residency``): the monitor's ``/api/ps`` answers, plus what
its own dispatches show (a successful response means the model is resident).
After a dispatch that needed a load it asks ``/api/ps`` again before the next
pick, so a model the load pushed out is not counted on. When the monitor
declares the target down while a request runs (a sleeping box drops
packets: the request would just hang), the request is declared lost: a job
goes back to the queue without spending an attempt, an interactive request
is handed back to the proxy (which requeues it or ends it with an error).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from attrs import define
from twisted.internet.defer import CancelledError, Deferred, DeferredList
from twisted.logger import Logger
from twisted.python.failure import Failure

from foreman.core.backoff import RECORD_RETRY
from foreman.core.eta import Estimator
from foreman.core.residency import ResidentModel, ResidentSet, canonical_model
from foreman.core.scheduler import INTERACTIVE, Waiting
from foreman.core.wake import WakePlan
from foreman.target.call import SHUTDOWN, UNREACHABLE, TargetError
from foreman.work.queue import WorkQueue

__all__ = ["Worker"]

_log = Logger()

#: job rows read ahead while the target works (a fast target outruns one read)
PREFETCH_WINDOW = 32
#: seconds after a job's dispatch before the worker looks ahead (reads rows, stages
#: the next request): the target takes its request first (ADRs 0022, 0024)
LOOK_AHEAD_AFTER = 0.002


class JobRunner(Protocol):
    """What the worker needs of the job layer's runner (``foreman.jobs.runner``)."""

    @property
    def job_id(self) -> str | None:
        """The job whose attempt is running, if any."""

    async def run(self, job_id: str) -> str | None:
        """Run one attempt; return the model now resident when it got that far."""

    def abort(self, reason: TargetError | None = None) -> None:
        """Abort the running attempt's target call."""

    def prefetch(self, job_ids: Sequence[str]) -> None:
        """Read ahead what the attempts for ``job_ids`` will need (they may never run)."""

    def has_ahead(self, job_id: str) -> bool:
        """Whether ``prefetch`` already covers ``job_id``."""

    def stage(self, job_id: str) -> None:
        """Get the request of ``job_id`` (the likely next run) ready to send as one write."""

    @property
    def backlogged(self) -> bool:
        """So many attempts are still being recorded that no job should start."""

    def when_room(self) -> Deferred[None]:
        """Fires once a job may start again."""

    @property
    def ahead_count(self) -> int:
        """Rows read ahead and not used yet."""


def _first_of(*ds: Deferred[None]) -> Deferred[None]:
    """Fires when the first of ``ds`` succeeds; cancelling it cancels them all."""

    def cancel(_: Deferred[None]) -> None:
        for d in ds:
            if not d.called:
                d.cancel()

    first: Deferred[None] = Deferred(cancel)

    def fired(result: object) -> None:
        if not isinstance(result, Failure) and not first.called:
            first.callback(None)

    for d in ds:
        d.addBoth(fired)
    return first


class StorageHealth(Protocol):
    """What the worker needs of the store (``foreman.store.database.Store``)."""

    @property
    def write_problem(self) -> str | None:
        """Why the database refuses writes now, or None."""

    def probe(self) -> None:
        """Try a write, so ``write_problem`` clears once writes work again."""


class _WorkerSlot:
    """Handed to the proxy; ``release`` lets the worker go on.

    The proxy reports the target's answer with ``outcome`` and registers
    ``on_lost`` to hear when the worker declares the target gone. ``release``
    runs the worker's ``_target_free`` first, so the next request can leave
    before the released one's client hears its last byte.
    """

    __slots__ = (
        "_free",
        "_queued",
        "_released",
        "code",
        "load_seconds",
        "on_lost",
        "queue_wait_ms",
        "target_wait_ms",
    )

    def __init__(
        self,
        queue_wait_ms: float,
        target_wait_ms: float,
        released: Deferred[None],
        free: Callable[[_WorkerSlot], None],
        queued: Callable[[], int],
    ) -> None:
        self.queue_wait_ms = queue_wait_ms
        self.target_wait_ms = target_wait_ms
        self._released = released
        self._free = free
        self._queued = queued
        self.code: int | None = None
        self.load_seconds: float | None = None
        self.on_lost: Callable[[str], None] | None = None

    def outcome(self, code: int, load_seconds: float | None) -> None:
        self.code, self.load_seconds = code, load_seconds

    @property
    def waiting(self) -> bool:
        return self._queued() > 0

    def release(self) -> None:
        if not self._released.called:
            self._free(self)
            self._released.callback(None)

    def lost(self, reason: str) -> None:
        if self.on_lost is not None and not self._released.called:
            self.on_lost(reason)


@define
class _Launch:
    """One dispatch on its way: what the loop awaits, and learns from, once it ends."""

    item: Waiting
    needs_load: bool
    started: float
    #: fires with True when the target answered it (it counts for the estimates)
    done: Deferred[bool]
    #: a job's call ended and the target was handed on before its attempt returned
    freed: bool = False


class Worker:
    def __init__(
        self,
        *,
        reactor: Any,
        queue: WorkQueue,
        runner: JobRunner,
        monitor: Any,  # foreman.target.monitor.TargetMonitor
        wake: Callable[[], None] | None = None,
        wake_interval: float = 60.0,
        wake_resends: int = 3,
        poke_interval: float = 5.0,
        storage: StorageHealth | None = None,
        residency: ResidentSet | None = None,
    ) -> None:
        self._reactor = reactor
        self._queue = queue
        self._runner = runner
        self._monitor = monitor
        self._wake = wake
        self._wake_plan = WakePlan(interval=wake_interval, resends=wake_resends)
        self._storage = storage
        # while work waits for a down target, probe at least this often (the
        # monitor's own backoff grows to 30 s; a box that just woke should not wait)
        self._poke_interval = poke_interval
        self._stopping = False
        self._loop: Deferred[None] | None = None
        self._waiting: Deferred[Any] | None = None
        self._slot: _WorkerSlot | None = None
        self._running: _Launch | None = None  # the interactive dispatch holding a slot
        self._job: _Launch | None = None  # the job dispatch whose call may still run
        #: the dispatch a released slot already started (``_target_free``)
        self._early: _Launch | None = None
        self._freeing = False
        self.early = 0
        """Dispatches started from the release of the one before (``_target_free``)."""
        self._unsubscribe: Callable[[], None] | None = None
        self.residency = residency if residency is not None else ResidentSet()
        self.state = "idle"
        self.last_model: str | None = None
        """The model of the last dispatch that got an answer."""
        self.current: dict[str, Any] | None = None
        self.dispatched = 0
        self.swaps = 0
        """Dispatches that needed a load while another model was resident."""
        self.loads = 0
        """Dispatches that needed a load."""
        self.lost = 0
        """Requests declared lost because the target went away under them."""
        self.target_wait_started: float | None = None
        self._last_wait: tuple[float, float] | None = None
        self.last_wake_seconds: float | None = None
        """How long the last wait for a down target took, until it answered."""
        self.wakes = 0
        self.on_dispatch: Callable[[Waiting, float], None] | None = None
        self.on_wake: Callable[[float], None] | None = None
        #: told when a request starts or ends running (the queue control follows it)
        self.on_change: Callable[[], None] | None = None
        self.paused = False
        self._holding: list[Deferred[None]] = []
        #: per-model times learned from the dispatches, for estimates (``core.eta``)
        self.estimator = Estimator()
        self.dispatched_at: float | None = None
        self.dispatch_load = 0.0  # the learned cost of the load the running dispatch began with
        self._load_seen: tuple[str, float] | None = None
        self._look_ahead: Any = None  # the pending look-ahead's IDelayedCall
        self.look_ahead_after = LOOK_AHEAD_AFTER

    def hold(self) -> None:
        """Dispatch nothing from the next pick on; the running request goes on."""
        self.paused = True

    def release(self) -> None:
        """Dispatch again."""
        self.paused = False
        holding, self._holding = self._holding, []
        for d in holding:
            if not d.called:
                d.callback(None)

    def _changed(self) -> None:
        if self.on_change is not None:
            try:
                self.on_change()
            except Exception:  # an observer never stops the work
                _log.failure("worker: on_change raised")

    @property
    def loaded(self) -> str | None:
        """The most recently used resident model (or the last one dispatched)."""
        names = self.resident()
        return names[0].removesuffix(":latest") if names else self.last_model

    def resident(self) -> tuple[str, ...]:
        """The models the scheduler may count as resident now, most recent first."""
        return self.residency.names(self._queue.clock())

    def start(self) -> None:
        self._stopping = False
        self.state = "idle"
        monitor = self._monitor
        self._observe_ps(tuple(monitor.resident))
        monitor.on_ps = self._observe_ps
        self._unsubscribe = monitor.subscribe(self._target_changed)
        self._loop = Deferred.fromCoroutine(self._run())
        self._loop.addErrback(lambda f: _log.failure("worker loop crashed", f))

    def _observe_ps(self, models: tuple[ResidentModel, ...]) -> None:
        self.residency.observe_ps(models, self._queue.clock())
        self._queue.scheduler.capacity = self.residency.capacity

    def _target_changed(self, snapshot: Any) -> None:
        """The monitor says down while a request runs: that request is lost."""
        if snapshot.state != "down" or self.current is None:
            return
        if not getattr(self._monitor, "down_by_probe", True):
            return  # a request's own failure: it is already ending with its error
        reason = getattr(self._monitor, "last_error", None) or "the target stopped answering"
        message = f"the target went away during the request: {reason}"
        self.lost += 1
        _log.warn(
            "target lost during {kind} {what}: {reason}",
            kind=self.current.get("kind"),
            what=self.current.get("id") or self.current.get("path"),
            reason=reason,
        )
        if self._runner.job_id is not None:
            self._runner.abort(TargetError(UNREACHABLE, message))
        elif self._slot is not None:
            self._slot.lost(message)

    async def _run(self) -> None:
        while not self._stopping:
            launch, self._early = self._early, None
            if launch is None:
                try:
                    await self._wait(self._queue.wait_for_work())
                    while self.paused and not self._stopping:
                        self.state = "paused"
                        held: Deferred[None] = Deferred()
                        self._holding.append(held)
                        await self._wait(held)
                    await self._wait_for_target()
                    await self._wait_for_recording()
                except CancelledError:
                    break
                if self.paused or self._monitor.state != "up":
                    continue  # held, or the target went away, while it waited for the disk
                self.state = "idle"
                launch = self._next()
                if launch is None:
                    continue
            try:
                served = await launch.done
            except Exception:  # never lets the one worker die; the job is put back
                _log.failure("worker: dispatching {key} raised", key=launch.item.key)
                self._put_back(launch.item)
                served = False
            self._learn(launch, served)
            if launch.needs_load and self._early is None and self._monitor.state == "up":
                # which model did that load push out? Ask before the next pick.
                await self._monitor.refresh_models()
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        self.state = "stopped"

    def _next(self) -> _Launch | None:
        """Pick and start the next dispatch, or None when nothing can start now."""
        resident = self.resident()
        if self._jobs_held_back():  # only an interactive request may start (ADR 0026)
            item = self._queue.pick_interactive(resident)
        else:
            item = self._queue.pick(resident)
        if item is None or self._storage_refuses(item):
            return None
        needs_load = canonical_model(item.model) not in resident
        try:
            return self._launch(item, needs_load, bool(resident))
        except Exception:  # never lets the one worker die; the job is put back
            _log.failure("worker: dispatching {key} raised", key=item.key)
            self.dispatched_at = None
            self._put_back(item)
            return None

    def _target_free(self, slot: _WorkerSlot) -> None:
        """An interactive request released the target: start the next one first.

        Runs inside the proxy's ``release``, before the released request's
        client gets its last bytes and before the loop resumes for the
        bookkeeping (``_learn``): the next request's bytes leave at once, the
        rest of this reactor turn follows (ADR 0021).
        """
        launch = self._running
        self._slot = self._running = None
        self.current = None
        self.state = "idle"
        if launch is not None and slot.code is not None and slot.code < 400:
            self._served(launch.item.model)  # before the pick: now the most recent
        self._hand_on(launch)

    def job_freed(self, job_id: str, model: str) -> None:
        """The running job's target call ended whole: start the next request first.

        The runner calls this at the answer's last byte, before it assembles
        and records the answer (which then runs after the next request left).
        """
        launch = self._job
        if launch is None or launch.item.key != job_id:
            return
        self._job = None
        launch.freed = True
        self.current = None
        self.state = "idle"
        self._served(model)
        self._hand_on(launch)

    def _hand_on(self, launch: _Launch | None) -> None:
        """Start the next dispatch now, when nothing else must come first.

        Not when paused or stopping, nor with the target down, nor after a
        load (``/api/ps`` is asked then, before the next pick), nor inside a
        start that ended at once (the loop goes on: no recursion).
        """
        if (
            launch is None
            or launch.needs_load
            or self._freeing
            or self._stopping
            or self.paused
            or self._monitor.state != "up"
            or not self._queued()
            or (self._jobs_held_back() and not self._queue.interactive_waiting)
        ):
            self._changed()
            return
        self._freeing = True
        try:
            self._early = self._next()
        finally:
            self._freeing = False
        if self._early is not None:
            self.early += 1
        else:
            self._changed()

    def _jobs_held_back(self) -> bool:
        """No job may start: the runner records too many attempts (ADR 0026)."""
        return self._runner.backlogged

    async def _wait_for_recording(self) -> None:
        """While no job may start, wait for room, or for an interactive request to run.

        A target that answers faster than the disk takes the answers would
        otherwise pile them up in memory without bound. Interactive requests
        are not held back: ``_next`` picks among them meanwhile.
        """
        while not self._stopping and self._jobs_held_back() and not self._queue.interactive_waiting:
            self.state = "waiting_for_recording"
            room, arrival = self._runner.when_room(), self._queue.next_arrival()
            try:
                await self._wait(_first_of(room, arrival))
            finally:
                for d in (room, arrival):
                    if not d.called:
                        d.cancel()

    def _queued(self) -> int:
        """Requests and jobs waiting for the target (a released slot's ``waiting``)."""
        return len(self._queue.scheduler)

    def _storage_refuses(self, item: Waiting) -> bool:
        """A job waits while the database refuses writes (an attempt would be lost)."""
        storage = self._storage
        if item.kind == INTERACTIVE or storage is None or storage.write_problem is None:
            return False
        self.state = "waiting_for_database"
        storage.probe()
        self._put_back(item)
        return True

    def _put_back(self, item: Waiting) -> None:
        """A job that could not run now goes back to the queue, after a pause."""
        if item.kind == INTERACTIVE:
            return  # its client's request ends with the proxy's error
        not_before = self._queue.clock() + RECORD_RETRY.delay(1)
        self._queue.add_job(item.key, item.model, item.priority, item.enqueued_at, not_before)

    async def _wait(self, d: Deferred[Any]) -> Any:
        self._waiting = d
        try:
            return await d
        finally:
            self._waiting = None

    async def _wait_for_target(self) -> None:
        if self._monitor.state == "up":
            return
        self.state = "waiting_for_target"
        started = self._reactor.seconds()
        if self.target_wait_started is None:
            self.target_wait_started = started
            _log.warn(
                "{n} request(s) wait for the target: {reason}",
                n=len(self._queue.scheduler),
                reason=getattr(self._monitor, "last_error", None) or "it is not answering",
            )
        while self._monitor.state != "up" and not self._stopping:
            if self._monitor.state == "down":  # not while the first probe is out
                self._send_wake()
            self._monitor.poke()
            up = self._monitor.when_up()
            timer = self._reactor.callLater(self._poke_interval, up.cancel)
            try:
                await self._wait(up)
            except CancelledError:
                if self._stopping:
                    raise
            finally:
                if timer.active():
                    timer.cancel()
        if self._stopping:
            raise CancelledError()
        self._woke()

    def _woke(self) -> None:
        """The target answers again: how long did the wait (the wake) take?"""
        began, self.target_wait_started = self.target_wait_started, None
        self._wake_plan.reset()
        if began is None:
            return
        ended = self._reactor.seconds()
        self._last_wait = (began, ended)
        seconds = max(0.0, ended - began)
        self.last_wake_seconds = seconds
        self.wakes += 1
        _log.info("target answers again after {seconds:.1f} s", seconds=seconds)
        if self.on_wake is not None:
            try:
                self.on_wake(seconds)
            except Exception:
                _log.failure("worker: on_wake raised")

    def _send_wake(self) -> None:
        now = self._reactor.seconds()
        if self._wake is not None and self._wake_plan.due(now):
            self._wake_plan.sent(now)
            self._wake()

    @property
    def wake_packets(self) -> int:
        """Wake-on-LAN packets sent for the current wait."""
        return self._wake_plan.count

    def _launch(self, item: Waiting, needs_load: bool, others_resident: bool) -> _Launch:
        """Start ``item``'s dispatch; the returned launch's ``done`` fires when it ends."""
        now = self._queue.clock()  # the clock that stamped item.enqueued_at
        waited = max(0.0, now - item.enqueued_at)
        if needs_load:
            self.loads += 1
            if others_resident or (self.last_model not in (None, item.model)):
                self.swaps += 1
        self.dispatched += 1
        started = self._reactor.seconds()
        self.dispatched_at, self._load_seen = started, None
        costs = self.residency.load_costs
        self.dispatch_load = costs.get(canonical_model(item.model), 0.0) if needs_load else 0.0
        done: Deferred[bool] = Deferred()
        launch = _Launch(item, needs_load, started, done)
        if item.kind == INTERACTIVE:
            self._admit(launch, waited)
        else:
            self._run_job(launch)
        if self.on_dispatch is not None:  # after the request left: observers wait
            try:
                self.on_dispatch(item, waited)
            except Exception:  # an observer (logs, metrics) never stops the work
                _log.failure("worker: on_dispatch raised")
        return launch

    def _learn(self, launch: _Launch, served: bool) -> None:
        """After a dispatch ended: how long it held the target, without its load."""
        if self._early is None:
            self.dispatched_at = None
        if not served:
            return
        item = launch.item
        load = self._load_seen[1] if self._load_seen is not None else None
        ended = self._reactor.seconds()
        self.estimator.observe(item.model, ended - launch.started, load)
        if item.kind == INTERACTIVE:
            self.estimator.interactive(ended - launch.started, ended)

    def observe_load(self, model: str, seconds: float) -> None:
        """A load of ``model`` took ``seconds``: the scheduler breaks ties with it."""
        self._load_seen = (model, seconds)
        self.residency.observe_load(model, seconds)
        self._queue.scheduler.load_costs = self.residency.load_costs

    def _served(self, model: str) -> None:
        """The target answered for ``model``: it is resident now."""
        self.last_model = model
        self.residency.observe_response(model, self._queue.clock())

    def _admit(self, launch: _Launch, waited: float) -> None:
        """Hand the target to one interactive request; ``launch.done`` fires at its release."""
        item = launch.item
        held = self._queue.take_held(item.key)
        if held is None or held.deferred.called:
            launch.done.callback(False)  # the client left between pick and dispatch
            return
        released: Deferred[None] = Deferred()
        self.state = "working"
        self.current = {"kind": "interactive", "model": item.model, "path": held.call.path}
        target_wait = 0.0
        if self._last_wait is not None:  # the part of its wait spent on a down target
            began, ended = self._last_wait
            target_wait = max(0.0, ended - max(began, item.enqueued_at))
        slot = _WorkerSlot(
            waited * 1000.0, target_wait * 1000.0, released, self._target_free, self._queued
        )
        self._slot = slot
        self._running = launch

        def answered(_: object) -> None:
            served = slot.code is not None and slot.code < 400
            if served and launch.needs_load and slot.load_seconds is not None:
                self.observe_load(item.model, slot.load_seconds)
            launch.done.callback(served)

        released.addCallback(answered)
        held.deferred.callback(slot)
        if self._running is launch:  # still running: observers hear it started
            self._changed()

    def _run_job(self, launch: _Launch) -> None:
        """Run one job's attempt; ``launch.done`` fires when the target is free again."""
        item = launch.item
        self.state = "working"
        self.current = {"kind": "job", "id": item.key, "model": item.model}
        self._job = launch

        def ended(model: str | None) -> bool:
            self._job_over(launch)
            if model is not None:
                if not launch.freed:
                    self._served(model)
                return True
            return False

        def failed(failure: Any) -> Any:
            self._job_over(launch)
            return failure

        running = Deferred.fromCoroutine(self._runner.run(item.key))
        if self._job is launch:  # still running: observers hear it started
            self._changed()
        self._look_ahead_later()
        running.addCallbacks(ended, failed).chainDeferred(launch.done)

    def _job_over(self, launch: _Launch) -> None:
        """A job's attempt returned: idle, unless ``job_freed`` handed the target on already."""
        if self._job is launch:
            self._job = None
            self.current = None
            self.state = "idle"
            self._changed()

    def _look_ahead_later(self) -> None:
        """Look ahead once the target has had time to take the request (one timer)."""
        if self._look_ahead is None or not self._look_ahead.active():
            self._look_ahead = self._reactor.callLater(self.look_ahead_after, self._look_now)

    def _look_now(self) -> None:
        self._look_ahead = None
        if not self._stopping:
            self._prefetch_next()

    def _prefetch_next(self) -> None:
        """While the target works, read the rows of the jobs most likely to run next.

        The window is planned again (``order``) when half of it is used or the
        next pick is not in it, about once every ``PREFETCH_WINDOW / 2`` jobs:
        the rows of the new half are read while the old half runs. The next
        pick's request is formatted once its row is in (``stage``, ADR 0024).
        """
        queue, resident = self._queue, self.resident()
        following = queue.scheduler.peek(queue.clock(), resident)
        if following is None or following.kind == INTERACTIVE:
            return
        runner = self._runner
        if not runner.has_ahead(following.key) or runner.ahead_count <= PREFETCH_WINDOW // 2:
            upcoming = queue.order(resident, PREFETCH_WINDOW)
            runner.prefetch([w.key for w in upcoming if w.kind != INTERACTIVE])
        runner.stage(following.key)

    def cancel_job(self, job_id: str) -> None:
        if self._runner.job_id == job_id:
            self._runner.abort()

    async def stop(self, grace: float) -> None:
        """Stop taking work; give the running request ``grace`` seconds, then abort it."""
        self._stopping = True
        if self._look_ahead is not None and self._look_ahead.active():
            self._look_ahead.cancel()
        self._look_ahead = None
        if self._waiting is not None:
            self._waiting.cancel()
        if self._loop is None:
            return
        timer = self._reactor.callLater(grace, self._abort_current)
        try:
            await DeferredList([self._loop], consumeErrors=True)
        finally:
            if timer.active():
                timer.cancel()

    def _abort_current(self) -> None:
        if self._runner.job_id is not None:
            self._runner.abort(TargetError(SHUTDOWN, "foreman is shutting down"))
        # an interactive request keeps its client; the proxy ends it when the
        # connection closes at process exit. Let the loop end now.
        slot = self._slot
        if slot is not None:
            slot.release()
