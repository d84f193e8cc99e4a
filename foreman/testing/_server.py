"""The twisted.web Site of the simulator: quiet, TCP_NODELAY, connections tracked.

Tracking every connection lets ``sleep()`` and ``close()`` drop them and wait
until they are really gone (nothing left in the reactor). TCP_NODELAY makes
each token chunk leave at once instead of waiting for the peer's delayed ACK.
The site serves whatever resource it is given; it knows nothing of the simulator.
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

    def connectionMade(self) -> None:
        super().connectionMade()  # type: ignore[no-untyped-call]
        with contextlib.suppress(Exception):
            self.transport.setTcpNoDelay(True)  # type: ignore[union-attr]
        self.site.opened(self)

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

    def log(self, request: Any) -> None:
        """No access log: tests and benchmarks do not want one line per request."""

    def opened(self, channel: _Channel) -> None:
        self._channels[channel] = []

    def lost(self, channel: _Channel) -> None:
        for d in self._channels.pop(channel, []):
            d.callback(None)

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
