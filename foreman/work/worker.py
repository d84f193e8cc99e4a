"""The one worker: takes the scheduler's next pick, runs it, repeats.

Exactly one inference request is in flight at the target at any time: an
interactive request is *admitted* (its held Deferred fires and the proxy
relays it) and the worker waits for the proxy to release the slot; a job is
run by the ``JobRunner``. While the target is down the worker does not pick
at all — nothing is dispatched to a target that cannot answer, and no
attempt is spent — and sends Wake-on-LAN if configured.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet.defer import CancelledError, Deferred, DeferredList
from twisted.logger import Logger

from foreman.core.backoff import RECORD_RETRY
from foreman.core.scheduler import INTERACTIVE, Waiting
from foreman.target.call import SHUTDOWN, TargetError
from foreman.work.queue import WorkQueue

__all__ = ["Worker"]

_log = Logger()


class JobRunner(Protocol):
    """What the worker needs of the job layer's runner (``foreman.jobs.runner``)."""

    @property
    def job_id(self) -> str | None:
        """The job whose attempt is running, if any."""

    async def run(self, job_id: str) -> str | None:
        """Run one attempt; return the model now resident when it got that far."""

    def abort(self, reason: TargetError | None = None) -> None:
        """Abort the running attempt's target call."""


class StorageHealth(Protocol):
    """What the worker needs of the store (``foreman.store.database.Store``)."""

    @property
    def write_problem(self) -> str | None:
        """Why the database refuses writes now, or None."""

    def probe(self) -> None:
        """Try a write, so ``write_problem`` clears once writes work again."""


class _WorkerSlot:
    """Handed to the proxy; ``release`` lets the worker go on."""

    __slots__ = ("_released", "queue_wait_ms")

    def __init__(self, queue_wait_ms: float, released: Deferred[None]) -> None:
        self.queue_wait_ms = queue_wait_ms
        self._released = released

    def release(self) -> None:
        if not self._released.called:
            self._released.callback(None)


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
        poke_interval: float = 5.0,
        storage: StorageHealth | None = None,
    ) -> None:
        self._reactor = reactor
        self._queue = queue
        self._runner = runner
        self._monitor = monitor
        self._wake = wake
        self._wake_interval = wake_interval
        self._storage = storage
        # while work waits for a down target, probe at least this often (the
        # monitor's own backoff grows to 30 s; a box that just woke should not wait)
        self._poke_interval = poke_interval
        self._last_wake = float("-inf")
        self._stopping = False
        self._loop: Deferred[None] | None = None
        self._waiting: Deferred[Any] | None = None
        self._released: Deferred[None] | None = None
        self.state = "idle"
        self.loaded: str | None = None
        self.current: dict[str, Any] | None = None
        self.dispatched = 0
        self.swaps = 0
        self.on_dispatch: Callable[[Waiting, float], None] | None = None

    def start(self) -> None:
        self._stopping = False
        self.state = "idle"
        loaded = tuple(self._monitor.loaded_models)
        if loaded:
            self.loaded = loaded[0].removesuffix(":latest")
        self._loop = Deferred.fromCoroutine(self._run())
        self._loop.addErrback(lambda f: _log.failure("worker loop crashed", f))

    async def _run(self) -> None:
        while not self._stopping:
            try:
                await self._wait(self._queue.wait_for_work())
                await self._wait_for_target()
            except CancelledError:
                break
            self.state = "idle"
            item = self._queue.pick(self.loaded)
            if item is None:
                continue
            if self._storage_refuses(item):
                continue
            try:
                await self._dispatch(item)
            except Exception:  # never lets the one worker die; the job is put back
                _log.failure("worker: dispatching {key} raised", key=item.key)
                self._put_back(item)
        self.state = "stopped"

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

    def _send_wake(self) -> None:
        now = self._reactor.seconds()
        if self._wake is not None and now - self._last_wake >= self._wake_interval:
            self._last_wake = now
            self._wake()

    async def _dispatch(self, item: Waiting) -> None:
        now = self._queue.clock()  # the clock that stamped item.enqueued_at
        waited = max(0.0, now - item.enqueued_at)
        if self.on_dispatch is not None:
            try:
                self.on_dispatch(item, waited)
            except Exception:  # an observer (logs, metrics) never stops the work
                _log.failure("worker: on_dispatch raised")
        if self.loaded is not None and item.model != self.loaded:
            self.swaps += 1
        self.dispatched += 1
        if item.kind == INTERACTIVE:
            await self._admit(item, waited)
        else:
            await self._run_job(item)

    async def _admit(self, item: Waiting, waited: float) -> None:
        held = self._queue.take_held(item.key)
        if held is None or held.deferred.called:
            return  # the client left between pick and dispatch
        released: Deferred[None] = Deferred()
        self._released = released
        self.state = "working"
        self.current = {"kind": "interactive", "model": item.model, "path": held.call.path}
        self.loaded = item.model
        held.deferred.callback(_WorkerSlot(waited * 1000.0, released))
        try:
            await released
        finally:
            self._released = None
            self.current = None
            self.state = "idle"

    async def _run_job(self, item: Waiting) -> None:
        self.state = "working"
        self.current = {"kind": "job", "id": item.key, "model": item.model}
        try:
            model = await self._runner.run(item.key)
            if model is not None:
                self.loaded = model
        finally:
            self.current = None
            self.state = "idle"

    def cancel_job(self, job_id: str) -> None:
        if self._runner.job_id == job_id:
            self._runner.abort()

    async def stop(self, grace: float) -> None:
        """Stop taking work; give the running request ``grace`` seconds, then abort it."""
        self._stopping = True
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
        if self._released is not None and not self._released.called:
            self._released.callback(None)
