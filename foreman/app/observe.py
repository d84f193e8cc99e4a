"""Observability hooks: access log lines and the live values metrics read at scrape time.

One log line per HTTP request (method, path, status, duration, route class,
and the queue wait of inference requests), so a slow or failing target shows
in the logs without debug mode; it also feeds the request metrics. Job
transitions are logged and counted by their one writer, ``JobService.apply``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.logger import Logger, LogLevel

from foreman.core.logtext import escape_for_log
from foreman.ops.logs import TEXT_FIELD_LIMIT, emit_rendered
from foreman.ops.metrics import Metrics

if TYPE_CHECKING:
    from foreman.app.parts import Parts

__all__ = ["live_state", "request_line"]

_access = Logger(namespace="foreman.access")


def request_line(metrics: Metrics, clock: Any) -> Callable[[Any, int], None]:
    """The per-request reporter: one access event, its text line rendered here once
    (``emit_rendered``), every outside value in it escaped."""
    info = LogLevel.info

    def report(request: Any, status: int) -> None:
        route = request.route_class
        metrics.request(route, status)
        started = getattr(request, "started", None)
        now = clock.seconds()
        duration = (now - started) * 1000.0 if started else 0.0
        headers = request.responseHeaders
        wait = headers.getRawHeaders(b"x-foreman-queue-wait-ms")
        down = headers.getRawHeaders(b"x-foreman-target-wait-ms")
        model = request.model
        method = request.method.decode("latin-1")
        path = request.path.decode("latin-1")
        model_text = f" model={escape_for_log(model, TEXT_FIELD_LIMIT)}" if model else ""
        wait_text = (f" waited {wait[0].decode()}ms" if wait else "") + (
            f" ({down[0].decode()}ms of it for the target)" if down else ""
        )
        line = (
            f"{escape_for_log(method, TEXT_FIELD_LIMIT)} {escape_for_log(path, TEXT_FIELD_LIMIT)}"
            f" {status} {duration:.1f}ms {route}{model_text}{wait_text}"
        )
        fields = {
            "method": method,
            "path": path,
            "status": status,
            "duration_ms": duration,
            "route": route,
            "model": model,
            "model_text": model_text,
            "queue_wait_ms": float(wait[0]) if wait else None,
            "target_wait_ms": float(down[0]) if down else None,
            "wait_text": wait_text,
        }
        emit_rendered(_access, info, _ACCESS_FORMAT, line, fields)

    return report


#: what a plain Twisted observer renders the access event with (the same line)
_ACCESS_FORMAT = "{method} {path} {status} {duration_ms:.1f}ms {route}{model_text}{wait_text}"


def live_state(parts: Parts) -> dict[str, Any]:
    """Values the metrics read at scrape time."""
    scheduler = parts.queue.scheduler
    monitor = parts.monitor
    delivery = parts.delivery
    worker = parts.worker
    return {
        "by_model": scheduler.depth_by_model(),
        "by_kind": scheduler.depth_by_kind(),
        "retrying": parts.queue.delayed,
        "target_up": 1 if monitor.state == "up" else 0,
        "loaded_models": list(monitor.loaded_models),
        "inflight": 1 if worker.current is not None else 0,
        "paused": 1 if worker.paused else 0,
        "draining": 1 if parts.control.draining and worker.paused else 0,
        "dispatched": worker.dispatched,
        "switches": worker.swaps,
        "model_loads": worker.loads,
        "lost": worker.lost,
        "load_costs": worker.residency.load_costs,
        "vram_fractions": worker.residency.vram_fractions(),
        "last_wake": worker.last_wake_seconds,
        "webhooks": dict(delivery.outcomes),
        "webhooks_failed": delivery.failed,
    }
