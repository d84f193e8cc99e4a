"""A running foreman: its parts, its services, and what its own routes read.

``Daemon.start`` is what ``twistd foreman`` runs (through
``foreman.app.service.ForemanService``) and what the integration tests run
in-process, so both exercise the same wiring.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import attrs
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from foreman import __version__
from foreman.app.config import Config
from foreman.app.parts import Parts
from foreman.app.services import (
    ListenService,
    OrderedServices,
    PartService,
    services_for,
    settle,
)
from foreman.app.wiring import build_parts, build_site
from foreman.core.forwarding import TrustedProxies
from foreman.jobs.batches import BatchService
from foreman.jobs.hub import JobHub
from foreman.jobs.runner import JobRunner
from foreman.jobs.service import JobService
from foreman.ops.metrics import Metrics
from foreman.outbox.delivery import Delivery
from foreman.store.database import Store
from foreman.target.monitor import TargetMonitor
from foreman.web.proxy import ProxyResource
from foreman.web.site import ForemanSite
from foreman.work.control import QueueControl
from foreman.work.queue import WorkQueue
from foreman.work.views import queue_view, work_status
from foreman.work.worker import Worker

__all__ = ["Daemon"]

_log = Logger()


class Daemon:
    """One started foreman; implements ``foreman.web.view.DaemonView`` for the routes."""

    def __init__(self, config: Config, reactor: Any) -> None:
        self.config = config
        self.reactor = reactor
        self.started_at: float = reactor.seconds()
        self.simulator: Any = None
        self.services = OrderedServices()  # type: ignore[no-untyped-call]
        self._parts: Parts | None = None
        self._listen: ListenService | None = None
        self.site: ForemanSite | None = None

    @classmethod
    async def start(cls, config: Config, reactor: Any | None = None) -> Daemon:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        daemon = cls(config, reactor)
        try:
            await daemon._start()
        except BaseException:
            await daemon.stop()
            raise
        return daemon

    async def _start(self) -> None:
        if self.config.simulate:
            await self._start_simulator()
        self._parts = parts = build_parts(self.config, self.reactor)
        self.site = build_site(parts, self)
        self._listen = ListenService(self.reactor, self.config.listen, self.site)
        services_for(parts, self._listen).setServiceParent(self.services)  # type: ignore[no-untyped-call]
        await self.services.startService()
        _log.info(
            "foreman {version} listening on {url}, target {target}",
            version=__version__,
            url=self.url,
            target=self.config.target_url,
        )

    async def _start_simulator(self) -> None:
        from foreman.testing import make_simulator

        self.simulator = simulator = make_simulator(reactor=self.reactor)
        await simulator.listen("tcp:0:interface=127.0.0.1")
        # added first, so it stops last: the target outlives everything that calls it
        part = PartService("simulator", stop=simulator.close)
        part.setServiceParent(self.services)  # type: ignore[no-untyped-call]
        part.startService()  # running already, so a failed start still closes it
        self.config = attrs.evolve(self.config, target_url=simulator.url)

    async def stop(self) -> None:
        """Stop listening, let running work finish (bounded), close the database."""
        if self.services.running:
            await self.services.stopService()
        else:  # start failed part-way: stop what did start
            for child in reversed(list(self.services)):
                if child.running:
                    await settle(child.stopService())

    # -- the parts (typed; also what tests reach for)

    @property
    def parts(self) -> Parts:
        assert self._parts is not None, "the daemon has not been started"
        return self._parts

    @property
    def store(self) -> Store:
        return self.parts.store

    @property
    def metrics(self) -> Metrics:
        return self.parts.metrics

    @property
    def jobs(self) -> JobService:
        return self.parts.jobs

    @property
    def batches(self) -> BatchService:
        return self.parts.batches

    @property
    def control(self) -> QueueControl:
        return self.parts.control

    @property
    def hub(self) -> JobHub:
        return self.parts.hub

    @property
    def queue(self) -> WorkQueue:
        return self.parts.queue

    @property
    def worker(self) -> Worker:
        return self.parts.worker

    @property
    def runner(self) -> JobRunner:
        return self.parts.runner

    @property
    def monitor(self) -> TargetMonitor:
        return self.parts.monitor

    @property
    def delivery(self) -> Delivery:
        return self.parts.delivery

    @property
    def proxy(self) -> ProxyResource:
        return self.parts.proxy

    # -- DaemonView

    @property
    def clock(self) -> IReactorTime:
        clock: IReactorTime = self.reactor
        return clock

    @property
    def public_url(self) -> str | None:
        return self.config.public_url

    @property
    def trusted_proxies(self) -> TrustedProxies:
        return self.config.trusted_proxies

    @property
    def accepting(self) -> bool:
        return self._listen is not None and self._listen.accepting

    @property
    def url(self) -> str:
        port = self._listen.port if self._listen is not None else None
        assert port is not None, "not listening"
        host = port.getHost()
        address = getattr(host, "host", "127.0.0.1")
        if address in ("0.0.0.0", "::", ""):
            address = "127.0.0.1"
        if ":" in address:
            address = f"[{address}]"
        return f"http://{address}:{host.port}"  # type: ignore[attr-defined]

    def target_state(self) -> str:
        return self.monitor.state if self._parts is not None else "unknown"

    def target_problem(self) -> str | None:
        if self._parts is None or self.monitor.state == "up":
            return None
        return self.monitor.last_error

    def cancel_running(self, job_id: str) -> None:
        self.worker.cancel_job(job_id)

    def queue_view(self, limit: int) -> dict[str, Any]:
        view = queue_view(self.queue, self.worker, self.reactor.seconds(), limit, self.jobs.eta_of)
        view["state"] = self.control.state()
        return view

    def status(self) -> dict[str, Any]:
        return {
            "version": __version__,
            "uptime_s": round(self.reactor.seconds() - self.started_at, 3),
            "database": str(self.config.db_path),
            "target": self._target_status(),
            **work_status(self.queue, self.worker),
            "control": self.control.state(),
            "learned": self.worker.estimator.learned(),
        }

    def _wake_status(self) -> dict[str, Any]:
        worker = self.worker
        since = worker.target_wait_started
        return {
            "waiting_s": None if since is None else round(self.reactor.seconds() - since, 1),
            "last_s": None
            if worker.last_wake_seconds is None
            else round(worker.last_wake_seconds, 3),
            "count": worker.wakes,
            "packets": worker.wake_packets,
        }

    def _target_status(self) -> dict[str, Any]:
        monitor = self.monitor
        seen = monitor.last_seen
        return {
            "url": self.config.target_url,
            "state": monitor.state,
            "error": monitor.last_error,
            "loaded_models": list(monitor.loaded_models),
            "resident_models": self.worker.residency.describe(self.queue.clock()),
            "probe_timeout_s": monitor.probe_timeout,
            "wake": self._wake_status(),
            "version": monitor.version,
            "last_seen": (
                datetime.fromtimestamp(seen, UTC).isoformat().replace("+00:00", "Z")
                if seen is not None
                else None
            ),
        }
