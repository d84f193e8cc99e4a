"""Observability wiring: access log lines, job transition lines, metrics hooks.

One log line per HTTP request (method, path, status, duration, route class,
and the queue wait of inference requests) and one per job state change (job
id, state, model, attempts, error), so a slow or failing target shows in the
logs without debug mode. Both also feed the Prometheus metrics.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from twisted.logger import Logger

from foreman.jobs import Event, JobRow
from foreman.metrics import Metrics

if TYPE_CHECKING:
    from foreman.daemon import Daemon

__all__ = ["install"]

_access = Logger(namespace="foreman.access")
_jobs = Logger(namespace="foreman.jobs")


def _request_line(metrics: Metrics) -> Any:
    def report(request: Any, status: int) -> None:
        route = request.route_class
        metrics.request(route, status)
        started = getattr(request, "started", None)
        duration = (time.monotonic() - started) * 1000.0 if started else 0.0
        wait = request.responseHeaders.getRawHeaders(b"x-foreman-queue-wait-ms")
        model = request.model
        _access.info(
            "{method} {path} {status} {duration_ms:.1f}ms {route}{model_text}{wait_text}",
            method=request.method.decode("latin-1"),
            path=request.path.decode("latin-1"),
            status=status,
            duration_ms=duration,
            route=route,
            model=model,
            model_text=f" model={model}" if model else "",
            queue_wait_ms=float(wait[0]) if wait else None,
            wait_text=f" waited {wait[0].decode()}ms" if wait else "",
        )

    return report


def _transition_line(metrics: Metrics) -> Any:
    def on_transition(row: JobRow, event: Event) -> None:
        state = row.state
        metrics.transition(state)
        error = f" {row.error_code}: {row.error_message}" if row.error_code else ""
        _jobs.info(
            "job {job_id} {state} model={model} attempts={attempts}{error_text}",
            job_id=row.id,
            state=state,
            model=row.model,
            attempts=row.attempts,
            endpoint=row.endpoint,
            error_code=row.error_code,
            error_text=error,
        )

    return on_transition


def _live(daemon: Daemon) -> dict[str, Any]:
    scheduler = daemon.queue.scheduler
    monitor = daemon.monitor
    delivery = daemon.delivery
    return {
        "by_model": scheduler.depth_by_model(),
        "by_kind": scheduler.depth_by_kind(),
        "retrying": daemon.queue.delayed,
        "target_up": 1 if monitor is not None and monitor.state == "up" else 0,
        "loaded_models": list(monitor.loaded_models) if monitor is not None else [],
        "inflight": 1 if daemon.worker.current is not None else 0,
        "dispatched": daemon.worker.dispatched,
        "switches": daemon.worker.swaps,
        "webhooks": dict(delivery.outcomes),
        "webhooks_failed": delivery.failed,
    }


def install(daemon: Daemon) -> Metrics:
    """Create the daemon's metrics and hook every part into them."""
    metrics = Metrics()
    metrics.watch(lambda: _live(daemon))
    daemon.store.commit_observer = metrics.commit
    assert daemon.site is not None
    daemon.site.report = _request_line(metrics)
    daemon.jobs.transition_listeners.append(_transition_line(metrics))
    daemon.worker.on_dispatch = lambda item, waited: metrics.dispatched(item.kind, waited)
    daemon.runner.on_load = metrics.model_loaded
    return metrics
