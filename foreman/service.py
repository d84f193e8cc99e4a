"""The twistd service wrapping ``Daemon``."""

from __future__ import annotations

import signal
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.logger import ILogObserver, Logger
from twisted.python.failure import Failure

from foreman.config import Config
from foreman.daemon import Daemon
from foreman.logs import make_observer

__all__ = ["ForemanService"]

_log = Logger()


class ForemanService(Service):
    name = "foreman"

    def __init__(self, config: Config) -> None:
        self.config = config
        self.daemon: Daemon | None = None
        self._starting: Deferred[Any] | None = None

    def setServiceParent(self, parent: Any) -> None:
        super().setServiceParent(parent)  # type: ignore[no-untyped-call]
        # twistd asks the application for a log observer before using its own.
        if hasattr(parent, "setComponent"):
            observer = make_observer(self.config.log_format, self.config.secrets())
            parent.setComponent(ILogObserver, observer)

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        from twisted.internet import reactor

        async def start() -> None:
            self.daemon = await Daemon.start(self.config, reactor)

        def failed(reason: Failure) -> None:
            _log.failure("foreman could not start", reason)
            reactor.stop()

        self._starting = ensureDeferred(start())
        self._starting.addErrback(failed)

    def stopService(self) -> Deferred[None]:
        super().stopService()  # type: ignore[no-untyped-call]

        async def stop() -> None:
            if self._starting is not None:
                await self._starting
            if self.daemon is not None:
                await self.daemon.stop()
            _log.info("foreman stopped")
            # twistd re-raises the signal that stopped the reactor, so SIGTERM would
            # end with status -15; a completed graceful shutdown is a success (0).
            from twisted.internet import reactor

            if getattr(reactor, "_exitSignal", None) in (signal.SIGTERM, signal.SIGINT):
                reactor._exitSignal = None  # type: ignore[attr-defined]

        return ensureDeferred(stop())
