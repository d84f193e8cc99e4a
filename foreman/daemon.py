"""The running daemon: builds the parts, starts them in order, stops them in reverse.

``Daemon.start`` is what ``twistd foreman`` runs (through ``ForemanService``)
and what the integration tests run in-process, so both exercise the same
wiring.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import attrs
from attrs import define, field
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger

from foreman import __version__
from foreman.admission import Admission
from foreman.auth import TokenCheck
from foreman.config import Config
from foreman.migrations import migrate
from foreman.monitor import TargetMonitor
from foreman.observe import install as install_observers
from foreman.proxy import ProxyResource
from foreman.routes import build_app
from foreman.site import ForemanSite
from foreman.store import Store
from foreman.upstream import Upstream, build_upstream
from foreman.work_wiring import Stopper, build_work, queue_view, start_work, work_status
from foreman.workqueue import WorkQueue

__all__ = ["Daemon"]

_log = Logger()


@define
class Daemon:
    config: Config
    reactor: Any
    store: Store
    started_at: float = field(factory=time.monotonic)
    accepting: bool = False
    port: IListeningPort | None = None
    site: ForemanSite | None = None
    parts: list[Any] = field(factory=list)
    upstream: Upstream | None = None
    monitor: TargetMonitor | None = None
    admission: Admission | None = None
    proxy: ProxyResource | None = None
    simulator: Any = None
    queue: Any = None
    hub: Any = None
    jobs: Any = None
    runner: Any = None
    worker: Any = None
    delivery: Any = None
    metrics: Any = None

    @classmethod
    async def start(cls, config: Config, reactor: Any | None = None) -> Daemon:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        store = Store(config.db_path)
        store.start()
        daemon = cls(config=config, reactor=reactor, store=store)
        try:
            await store.read(migrate)  # already done by twistd's start-up checks; cheap
            await daemon._start()
        except BaseException:
            await daemon.stop()
            raise
        return daemon

    async def _start(self) -> None:
        if self.config.simulate:
            from foreman.testing import make_simulator

            self.simulator = simulator = make_simulator(reactor=self.reactor)
            await simulator.listen("tcp:0:interface=127.0.0.1")
            self.parts.append(Stopper(simulator.close))
            self.config = attrs.evolve(self.config, target_url=simulator.url)
        self.upstream = upstream = build_upstream(self.reactor, self.config.target_url)
        self.parts.append(upstream)
        self.monitor = monitor = TargetMonitor(
            self.reactor, self.config.target_url, self.config.target_token, upstream.agent
        )
        monitor.start()
        self.parts.append(monitor)
        self.admission = admission = self._build_work(upstream, monitor)
        self.proxy = proxy = ProxyResource(
            self.reactor,
            upstream,
            admission,
            monitor=monitor,
            target_token=self.config.target_token,
        )
        own = build_app(self).resource()
        # No form parsing: nothing here reads form posts, and parsing the
        # Content-Type of every POST costs ~25 µs on the proxy's hot path.
        self.site = ForemanSite(
            own,
            proxy,
            TokenCheck(self.config.api_tokens),
            self.config.max_body,
            parsePOSTFormSubmission=False,
        )
        await self._start_work()
        self.metrics = install_observers(self)
        endpoint = serverFromString(self.reactor, self.config.listen)
        self.port = await endpoint.listen(self.site)
        self.accepting = True
        _log.info(
            "foreman {version} listening on {url}, target {target}",
            version=__version__,
            url=self.url,
            target=self.config.target_url,
        )

    @property
    def url(self) -> str:
        assert self.port is not None
        host = self.port.getHost()
        address = getattr(host, "host", "127.0.0.1")
        if address in ("0.0.0.0", "::", ""):
            address = "127.0.0.1"
        if ":" in address:
            address = f"[{address}]"
        return f"http://{address}:{host.port}"  # type: ignore[attr-defined]

    def target_state(self) -> str:
        return self.monitor.state if self.monitor is not None else "unknown"

    def status(self) -> dict[str, Any]:
        return {
            "version": __version__,
            "uptime_s": round(time.monotonic() - self.started_at, 3),
            "database": str(self.config.db_path),
            "target": self._target_status(),
        }

    def _target_status(self) -> dict[str, Any]:
        monitor = self.monitor
        seen = monitor.last_seen if monitor is not None else None
        return {
            "url": self.config.target_url,
            "state": self.target_state(),
            "loaded_models": list(monitor.loaded_models) if monitor is not None else [],
            "version": monitor.version if monitor is not None else None,
            "last_seen": (
                datetime.fromtimestamp(seen, UTC).isoformat().replace("+00:00", "Z")
                if seen is not None
                else None
            ),
        }

    async def stop(self) -> None:
        """Stop listening, let running work finish (bounded), close the database."""
        self.accepting = False
        if self.port is not None:
            port, self.port = self.port, None
            stopping = port.stopListening()
            if stopping is not None:
                await stopping
        for part in reversed(self.parts):
            stopped = part.stop()
            if isinstance(stopped, Deferred):
                await stopped
        self.parts.clear()
        self.store.close()

    # -- the queue, the worker and the job service (foreman.work_wiring)

    def _build_work(self, upstream: Upstream, monitor: TargetMonitor) -> WorkQueue:
        build_work(self, upstream, monitor)
        queue: WorkQueue = self.queue
        return queue

    async def _start_work(self) -> None:
        await start_work(self)

    def queue_view(self, limit: int) -> dict[str, Any]:
        return queue_view(self, limit)

    def work_status(self) -> dict[str, Any]:
        return work_status(self)
