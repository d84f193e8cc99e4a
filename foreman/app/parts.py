"""The typed set of parts one foreman process is made of."""

from __future__ import annotations

from typing import Any

from attrs import frozen

from foreman.app.config import Config
from foreman.jobs.artifacts import ArtifactStore
from foreman.jobs.batches import BatchService
from foreman.jobs.hub import JobHub
from foreman.jobs.runner import JobRunner
from foreman.jobs.service import JobService
from foreman.ops.metrics import Metrics
from foreman.outbox.delivery import Delivery
from foreman.store.database import Store
from foreman.target.monitor import TargetMonitor
from foreman.target.upstream import Upstream
from foreman.web.proxy import ProxyResource
from foreman.work.control import QueueControl
from foreman.work.queue import WorkQueue
from foreman.work.worker import Worker

__all__ = ["Parts"]


@frozen
class Parts:
    """Every long-lived object, built once by ``foreman.app.wiring.build_parts``.

    ``reactor`` provides ``IReactorTime`` (the clock every part was given),
    ``IReactorTCP`` and ``IReactorThreads``.
    """

    config: Config
    reactor: Any
    store: Store
    metrics: Metrics
    upstream: Upstream
    monitor: TargetMonitor
    queue: WorkQueue
    hub: JobHub
    artifacts: ArtifactStore
    jobs: JobService
    batches: BatchService
    runner: JobRunner
    worker: Worker
    control: QueueControl
    delivery: Delivery
    proxy: ProxyResource
