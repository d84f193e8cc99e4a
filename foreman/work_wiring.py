"""Wiring of the work side of the daemon: queue, job service, runner, worker.

Kept apart from ``daemon.py`` so the daemon module stays about start/stop
order; these functions build the parts onto the ``Daemon`` and return the
views the routes need (``/queue``, the worker part of ``/status``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from attrs import define
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from foreman.artifacts import ArtifactStore
from foreman.delivery import Delivery, load_or_create_secret
from foreman.httpjson import BadRequest
from foreman.hub import JobHub
from foreman.jobservice import JobService
from foreman.runner import JobRunner
from foreman.scheduler import INTERACTIVE, Scheduler
from foreman.ssrf import InvalidWebhookURL, check_url, resolve_and_check
from foreman.wol import send_magic_packet
from foreman.worker import Worker
from foreman.workqueue import WorkQueue

if TYPE_CHECKING:
    from foreman.daemon import Daemon
    from foreman.monitor import TargetMonitor
    from foreman.upstream import Upstream

__all__ = ["build_work", "queue_view", "start_work", "work_status"]

_log = Logger()

PURGE_INTERVAL = 3600.0


@define
class _WorkStopper:
    """Stops the worker (bounded by the grace period), then releases the queue."""

    worker: Worker
    queue: WorkQueue
    grace: float

    def stop(self) -> Deferred[None]:
        async def stop() -> None:
            await self.worker.stop(self.grace)
            self.queue.close()

        return ensureDeferred(stop())


@define
class Stopper:
    """A daemon part whose stopping is an awaitable call (``close()``, ``stop()``)."""

    stop_fn: Callable[[], Any]

    def stop(self) -> Deferred[Any]:
        return ensureDeferred(self.stop_fn())


@define
class _LoopStopper:
    loop: LoopingCall

    def stop(self) -> None:
        if self.loop.running:
            self.loop.stop()


def build_work(daemon: Daemon, upstream: Upstream, monitor: TargetMonitor) -> None:
    config = daemon.config
    reactor = daemon.reactor
    queue = WorkQueue(Scheduler(config.max_wait), config.max_queue, reactor)
    hub = JobHub()
    artifacts = ArtifactStore(config.artifacts_dir)

    async def check_webhook(url: str) -> None:
        problem = check_url(url)
        if problem is not None:
            raise BadRequest(f"webhook_url: {problem}", "invalid_webhook_url")
        if config.webhook_allow_private:
            return
        try:
            await resolve_and_check(reactor, url, False)
        except InvalidWebhookURL as e:
            raise BadRequest(f"webhook_url: {e}", "invalid_webhook_url") from None

    jobs = JobService(
        store=daemon.store,
        queue=queue,
        hub=hub,
        artifacts=artifacts,
        reactor=reactor,
        public_url=config.public_url,
        max_attempts=config.max_attempts,
        check_webhook=check_webhook,
    )
    runner = JobRunner(
        reactor=reactor,
        upstream=upstream,
        token=config.target_token,
        jobs=jobs,
        artifacts=artifacts,
        max_attempts=config.max_attempts,
        on_unreachable=monitor.mark_down,
        idle_timeout=config.job_idle_timeout,
    )
    wol_mac = config.wol_mac
    wake = None
    if wol_mac is not None:

        def wake() -> None:
            send_magic_packet(wol_mac, config.wol_broadcast)

    worker = Worker(reactor=reactor, queue=queue, runner=runner, monitor=monitor, wake=wake)
    delivery = Delivery(
        reactor=reactor,
        store=daemon.store,
        secret=load_or_create_secret(config.data_dir, config.webhook_secret),
        allow_private=config.webhook_allow_private,
    )
    jobs.outbox_listeners.append(delivery.poke)
    daemon.delivery = delivery
    jobs.loaded = lambda: worker.loaded
    jobs.live_tokens = lambda job_id: runner.tokens if runner.job_id == job_id else None
    daemon.queue, daemon.hub, daemon.jobs = queue, hub, jobs
    daemon.runner, daemon.worker = runner, worker


async def start_work(daemon: Daemon) -> None:
    started = time.monotonic()
    recovered, queued = await daemon.jobs.recover()
    _log.info(
        "job queue ready: {queued} queued ({recovered} interrupted attempts requeued) "
        "in {seconds:.2f} s",
        queued=queued,
        recovered=recovered,
        seconds=time.monotonic() - started,
    )
    daemon.worker.start()
    daemon.delivery.start()
    daemon.parts.append(_WorkStopper(daemon.worker, daemon.queue, daemon.config.shutdown_grace))
    daemon.parts.append(Stopper(daemon.delivery.stop))
    purge = LoopingCall(_purge, daemon)
    purge.clock = daemon.reactor
    purge.start(PURGE_INTERVAL, now=True).addErrback(
        lambda f: _log.failure("job retention purge failed", f)
    )
    daemon.parts.append(_LoopStopper(purge))


def _purge(daemon: Daemon) -> Deferred[None]:
    async def purge() -> None:
        deleted = await daemon.jobs.purge(daemon.config.job_retention)
        if deleted:
            _log.info("deleted {count} finished jobs past retention", count=deleted)

    return ensureDeferred(purge())


def queue_view(daemon: Daemon, limit: int) -> dict[str, Any]:
    queue: WorkQueue = daemon.queue
    worker: Worker = daemon.worker
    now = time.time()
    items = []
    for position, item in enumerate(queue.order(worker.loaded, limit)):
        entry: dict[str, Any] = {
            "position": position,
            "kind": item.kind,
            "model": item.model,
            "priority": item.priority,
            "waited_ms": round(max(0.0, now - item.enqueued_at) * 1000.0, 1),
        }
        if item.kind == INTERACTIVE:
            held = queue.held(item.key)
            entry["path"] = held.call.path if held is not None else None
        else:
            entry["id"] = item.key
        items.append(entry)
    scheduler = queue.scheduler
    return {
        "object": "queue",
        "data": items,
        "total": len(scheduler),
        "by_model": scheduler.depth_by_model(),
        "by_kind": scheduler.depth_by_kind(),
        "retrying": queue.delayed,
        "loaded_model": worker.loaded,
    }


def work_status(daemon: Daemon) -> dict[str, Any]:
    worker: Worker = daemon.worker
    scheduler = daemon.queue.scheduler
    return {
        "worker": {
            "state": worker.state,
            "current": worker.current,
            "loaded_model": worker.loaded,
            "dispatched": worker.dispatched,
            "model_switches": worker.swaps,
        },
        "queue": {
            "depth": len(scheduler),
            "by_model": scheduler.depth_by_model(),
            "by_kind": scheduler.depth_by_kind(),
            "retrying": daemon.queue.delayed,
        },
    }
