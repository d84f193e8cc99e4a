"""Read-only views of the queue and the worker, as ``/queue`` and ``/status`` show them.

Kept beside the queue and the worker (not in the web layer) because they
know those objects' insides; the routes only serialise the dicts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from foreman.core.scheduler import INTERACTIVE
from foreman.work.queue import WorkQueue
from foreman.work.worker import Worker

__all__ = ["queue_view", "work_status"]


def queue_view(
    queue: WorkQueue,
    worker: Worker,
    now: float,
    limit: int,
    eta: Callable[[str], dict[str, Any] | None] = lambda key: None,
) -> dict[str, Any]:
    """The next ``limit`` items in dispatch order, with their waits at ``now`` and estimates."""
    items = []
    for position, item in enumerate(queue.order(worker.resident(), limit)):
        entry: dict[str, Any] = {
            "position": position,
            "kind": item.kind,
            "model": item.model,
            "priority": item.priority,
            "waited_ms": round(max(0.0, now - item.enqueued_at) * 1000.0, 1),
            "eta": eta(item.key),
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


def work_status(queue: WorkQueue, worker: Worker) -> dict[str, Any]:
    """The worker and queue part of ``/status``."""
    scheduler = queue.scheduler
    return {
        "worker": {
            "state": worker.state,
            "current": worker.current,
            "loaded_model": worker.loaded,
            "dispatched": worker.dispatched,
            "model_switches": worker.swaps,
            "model_loads": worker.loads,
            "lost_to_target": worker.lost,
        },
        "queue": {
            "depth": len(scheduler),
            "by_model": scheduler.depth_by_model(),
            "by_kind": scheduler.depth_by_kind(),
            "retrying": queue.delayed,
        },
    }
