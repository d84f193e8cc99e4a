"""The running parts as Twisted services, started in order and stopped in reverse.

``MultiService`` starts its children in order but does not wait for a
child's asynchronous start, and stops them all at once; foreman's parts
depend on each other (the worker must finish its last write before the
database closes), so ``OrderedServices`` awaits each child's Deferred in
turn, both ways. Everything else is Twisted's own: ``Service`` adapters and a
``TimerService`` for the retention purge.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from twisted.application.internet import TimerService
from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.web.server import Site

from foreman.app.parts import Parts
from foreman.store.database import Store, check_writable
from foreman.store.migrations import migrate

__all__ = ["ListenService", "OrderedServices", "PartService", "services_for", "settle"]

_log = Logger()

PURGE_INTERVAL = 3600.0

Step = Callable[[], Awaitable[Any] | Any]


async def settle(result: Any) -> None:
    """Wait for ``result`` if a start or stop call returned something awaitable."""
    if isinstance(result, Deferred) or hasattr(result, "__await__"):
        await result


class OrderedServices(MultiService):
    """A ``MultiService`` whose children start one after another and stop in reverse."""

    def startService(self) -> Deferred[None]:  # type: ignore[override]
        Service.startService(self)  # type: ignore[no-untyped-call]
        return ensureDeferred(self._start_children())

    async def _start_children(self) -> None:
        for child in list(self):
            await settle(child.startService())

    def stopService(self) -> Deferred[None]:  # type: ignore[override]
        Service.stopService(self)  # type: ignore[no-untyped-call]
        return ensureDeferred(self._stop_children())

    async def _stop_children(self) -> None:
        for child in reversed(list(self)):
            if not child.running:
                continue
            try:
                await settle(child.stopService())
            except Exception:
                _log.failure("stopping {name} failed", name=child.name)


class PartService(Service):
    """Adapts a part's start and stop calls (plain or awaitable) to ``IService``."""

    def __init__(self, name: str, start: Step | None = None, stop: Step | None = None) -> None:
        self.name = name
        self._start = start
        self._stop = stop

    def startService(self) -> Deferred[None]:  # type: ignore[override]
        super().startService()  # type: ignore[no-untyped-call]
        start = self._start
        return ensureDeferred(settle(start() if start is not None else None))

    def stopService(self) -> Deferred[None]:
        super().stopService()  # type: ignore[no-untyped-call]
        stop = self._stop
        return ensureDeferred(settle(stop() if stop is not None else None))


class ListenService(Service):
    """Listens on the configured endpoint; ``accepting`` is what ``/readyz`` reports."""

    name = "listen"

    def __init__(self, reactor: Any, description: str, site: Site) -> None:
        self._reactor = reactor
        self._description = description
        self._site = site
        self.port: IListeningPort | None = None
        self.accepting = False

    def startService(self) -> Deferred[None]:  # type: ignore[override]
        super().startService()  # type: ignore[no-untyped-call]
        return ensureDeferred(self._listen())

    async def _listen(self) -> None:
        endpoint = serverFromString(self._reactor, self._description)
        self.port = await endpoint.listen(self._site)
        self.accepting = True

    def stopService(self) -> Deferred[None]:
        super().stopService()  # type: ignore[no-untyped-call]
        self.accepting = False
        port, self.port = self.port, None
        return ensureDeferred(settle(port.stopListening() if port is not None else None))


def services_for(parts: Parts, listen: ListenService) -> OrderedServices:
    """The start order of a foreman process; the stop order is its reverse."""
    services = OrderedServices()  # type: ignore[no-untyped-call]
    children: list[IService] = [
        PartService("store", lambda: _open_store(parts.store), parts.store.close),
        PartService("upstream", stop=parts.upstream.stop),
        PartService("monitor", parts.monitor.start, parts.monitor.stop),
        PartService("work", lambda: _start_work(parts), lambda: _stop_work(parts)),
        PartService("delivery", parts.delivery.start, parts.delivery.stop),
        _purge_service(parts),
        listen,
    ]
    for child in children:
        child.setServiceParent(services)
    return services


async def _open_store(store: Store) -> None:
    store.start()
    # twistd's start-up checks migrated already; in-process starts rely on this
    await store.on_writer(migrate)
    await store.write(check_writable)


async def _start_work(parts: Parts) -> None:
    clock = parts.reactor
    started = clock.seconds()
    recovered, queued = await parts.jobs.recover()
    _log.info(
        "job queue ready: {queued} queued ({recovered} interrupted attempts requeued) "
        "in {seconds:.2f} s",
        queued=queued,
        recovered=recovered,
        seconds=clock.seconds() - started,
    )
    parts.worker.start()


async def _stop_work(parts: Parts) -> None:
    await parts.worker.stop(parts.config.shutdown_grace)
    parts.queue.close()


def _purge_service(parts: Parts) -> TimerService:
    async def purge() -> None:
        try:
            deleted = await parts.jobs.purge(parts.config.job_retention)
        except Exception:
            # an uncaught error would end the TimerService's loop for good
            _log.failure("job retention purge failed")
            return
        if deleted:
            _log.info("deleted {count} finished jobs past retention", count=deleted)

    timer = TimerService(PURGE_INTERVAL, lambda: ensureDeferred(purge()))
    timer.clock = parts.reactor
    timer.setName("purge")
    return timer
