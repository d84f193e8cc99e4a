"""The twisted.web Site of the simulator: quiet, TCP_NODELAY, connections tracked.

Tracking every connection lets ``sleep()`` and ``close()`` drop them and wait
until they are really gone (nothing left in the reactor), and lets a
suspended simulator stop reading them: the peer's bytes (a request, or its
leaving) then wait in the kernel until :meth:`SimulatorSite.resume`, as with
a box that froze. TCP_NODELAY makes each token chunk leave at once instead
of waiting for the peer's delayed ACK. The site serves whatever resource it
is given; it knows nothing of the simulator.
"""

from __future__ import annotations

import contextlib
from typing import Any

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.resource import IResource
from twisted.web.server import Site


class _Channel(HTTPChannel):
    site: SimulatorSite
    _suspended = False
    _unread: list[bytes] | None = None

    def connectionMade(self) -> None:
        super().connectionMade()  # type: ignore[no-untyped-call]
        with contextlib.suppress(Exception):
            self.transport.setTcpNoDelay(True)  # type: ignore[union-attr]
        self.site.opened(self)
        if self.site.suspended:
            self.suspend()

    def suspend(self) -> None:
        """Read nothing more until :meth:`resume`."""
        if self._suspended:
            return
        self._suspended = True
        self._unread = []
        if self.transport is not None:
            self.transport.pauseProducing()  # type: ignore[attr-defined]

    def resume(self) -> None:
        """Read again; bytes that slipped in meanwhile are handled first."""
        if not self._suspended:
            return
        self._suspended = False
        unread, self._unread = self._unread or [], None
        if unread:
            self.dataReceived(b"".join(unread))
        if self.transport is not None:
            self.transport.resumeProducing()  # type: ignore[attr-defined]

    def dataReceived(self, data: bytes) -> None:
        # Paused transports deliver nothing; this catches a read already under way.
        if self._unread is not None:
            self._unread.append(data)
        else:
            super().dataReceived(data)  # type: ignore[no-untyped-call]

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        try:
            super().connectionLost(reason)  # type: ignore[no-untyped-call]
        finally:
            self.site.lost(self)


class SimulatorSite(Site):
    noisy = False
    protocol = _Channel  # type: ignore[assignment]

    def __init__(self, resource: IResource, reactor: Any) -> None:
        super().__init__(resource, reactor=reactor)  # type: ignore[no-untyped-call]
        self._channels: dict[_Channel, list[Deferred[None]]] = {}
        self.suspended = False

    def log(self, request: Any) -> None:
        """No access log: tests and benchmarks do not want one line per request."""

    def opened(self, channel: _Channel) -> None:
        self._channels[channel] = []

    def lost(self, channel: _Channel) -> None:
        for d in self._channels.pop(channel, []):
            d.callback(None)

    def suspend(self) -> None:
        """Stop reading every open connection (and those opened later) until resume."""
        self.suspended = True
        for channel in list(self._channels):
            channel.suspend()

    def resume(self) -> None:
        self.suspended = False
        for channel in list(self._channels):
            channel.resume()

    def drop_connections(self) -> None:
        """Abort every open connection (the peer sees a reset)."""
        for channel in list(self._channels):
            transport = channel.transport
            if transport is not None:
                transport.abortConnection()  # type: ignore[attr-defined]

    def connections_lost(self) -> list[Deferred[None]]:
        """Deferreds firing when each currently open connection is gone."""
        waits: list[Deferred[None]] = []
        for channel, ds in self._channels.items():
            d: Deferred[None] = Deferred()
            ds.append(d)
            waits.append(d)
            del channel
        return waits
