"""The running parts as Twisted services, started in order and stopped in reverse.

``MultiService`` starts its children in order but does not wait for a
child's asynchronous start, and stops them all at once; foreman's parts
depend on each other (the worker must finish its last write before the
database closes), so ``OrderedServices`` awaits each child's Deferred in
turn, both ways. Everything else is Twisted's own: ``Service`` adapters and a
``TimerService`` for the retention purge.
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from twisted.application.internet import TimerService
from twisted.application.service import IService, MultiService, Service
from twisted.internet.abstract import isIPv6Address
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.server import Site

from foreman.app.parts import Parts
from foreman.store.database import Store, check_writable
from foreman.store.migrations import migrate

__all__ = [
    "ListenError",
    "ListenService",
    "OrderedServices",
    "PartService",
    "check_listen",
    "services_for",
    "settle",
]

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


class ListenError(Exception):
    """The configured endpoint cannot be listened on; ``str()`` is the one line to show."""

    def __init__(self, description: str, reason: str) -> None:
        super().__init__(f"cannot listen on {description}: {reason}")


def _listen_reason(error: BaseException, port: int | None = None) -> str:
    """The operating system's reason, with what to do where that is clear."""
    if isinstance(error, OverflowError):  # socket.bind's complaint about the port range
        return "the port must be 0-65535"
    if not isinstance(error, OSError):
        return str(error)
    reason = error.strerror or str(error)
    reason = reason[:1].lower() + reason[1:]
    if error.errno == errno.EADDRINUSE:
        reason += "; choose another port with --listen or FOREMAN_LISTEN"
    elif error.errno == errno.EACCES and port is not None and 0 < port < 1024:
        reason += " (ports below 1024 need root or CAP_NET_BIND_SERVICE)"
    return reason


class _ProbeReactor:
    """Stands in for the reactor so that Twisted's own endpoint parsing says what to bind.

    ``check_listen`` hands it to ``serverFromString``; the endpoint's ``listen``
    then calls ``listenTCP``/``listenSSL`` with the port and interface it
    would use. Other endpoint types (unix, systemd …) find no method here and
    are not probed.
    """

    def __init__(self, description: str) -> None:
        self._description = description

    def listenTCP(self, port: int, factory: object, backlog: int = 50, interface: str = "") -> None:
        # bound as twisted.internet.tcp.Port binds (SO_REUSEADDR on POSIX, so a
        # port in TIME_WAIT passes; IPv6 by the interface's spelling), then
        # closed without ever listening
        family = socket.AF_INET6 if isIPv6Address(interface) else socket.AF_INET
        try:
            with socket.socket(family, socket.SOCK_STREAM) as probe:
                if os.name == "posix":
                    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    info = socket.getaddrinfo(interface, port, 0, 0, 0, socket.AI_NUMERICHOST)
                    probe.bind(info[0][4])
                else:
                    probe.bind((interface, port))
        except (OSError, OverflowError) as e:
            raise ListenError(self._description, _listen_reason(e, port)) from None

    def listenSSL(
        self,
        port: int,
        factory: object,
        contextFactory: object,
        backlog: int = 50,
        interface: str = "",
    ) -> None:
        self.listenTCP(port, factory, backlog, interface)


def check_listen(description: str) -> None:
    """Raise ListenError now if the endpoint's address cannot be bound.

    Start-up (``foreman.app.tap``) checks this before it creates the data
    directory, so a port in use leaves nothing behind. The real listen comes
    last in the start order (``services_for``) and may still lose a race;
    ``ListenService`` reports that the same way.
    """
    failures: list[Failure] = []
    endpoint = serverFromString(_ProbeReactor(description), description)
    try:
        endpoint.listen(Factory()).addErrback(failures.append)
    except AttributeError:  # an endpoint type the probe does not stand in for
        return
    problem = failures[0].value if failures else None
    if isinstance(problem, ListenError):
        raise problem


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
        try:
            self.port = await endpoint.listen(self._site)
        except CannotListenError as e:
            reason = _listen_reason(e.socketError, e.port)
            raise ListenError(self._description, reason) from None
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
    await parts.control.load()
    recovered, queued = await parts.jobs.recover()
    await parts.batches.recover()
    _log.info(
        "job queue ready: {queued} queued ({recovered} interrupted attempts requeued) "
        "in {seconds:.2f} s",
        queued=queued,
        recovered=recovered,
        seconds=clock.seconds() - started,
    )
    parts.worker.start()


async def _stop_work(parts: Parts) -> None:
    parts.control.close()
    await parts.batches.stop()
    await parts.worker.stop(parts.config.shutdown_grace)
    await parts.runner.recorder.drain()  # the last attempts' records, before the store closes
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
