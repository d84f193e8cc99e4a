"""The twistd service: starts a ``Daemon`` and stops it gracefully.

SIGTERM and SIGINT end a graceful shutdown with exit status 0. twistd would
re-raise the signal after the reactor stops (status -15), which a supervisor
reads as a crash; so once the reactor runs, this service installs its own
handlers (the standard library's ``signal``) that stop the reactor the same
way Twisted's do, without recording the signal.
"""

from __future__ import annotations

import signal
from types import FrameType
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.logger import ILogObserver, Logger
from twisted.python.failure import Failure

from foreman.app.config import Config
from foreman.app.daemon import Daemon
from foreman.ops.logs import make_observer

__all__ = ["ForemanService"]

_log = Logger()


class ForemanService(Service):
    name = "foreman"

    def __init__(self, config: Config, reactor: Any, *, handle_signals: bool = True) -> None:
        self.config = config
        self.reactor = reactor
        self.daemon: Daemon | None = None
        self._handle_signals = handle_signals
        self._starting: Deferred[Any] | None = None

    def setServiceParent(self, parent: Any) -> None:
        super().setServiceParent(parent)  # type: ignore[no-untyped-call]
        # twistd asks the application for a log observer before using its own.
        if hasattr(parent, "setComponent"):
            observer = make_observer(self.config.log_format, self.config.secrets())
            parent.setComponent(ILogObserver, observer)

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        if self._handle_signals:
            # after Twisted's own handlers are installed (during startup)
            self.reactor.callWhenRunning(self._install_signal_handlers)

        async def start() -> None:
            self.daemon = await Daemon.start(self.config, self.reactor)

        def failed(reason: Failure) -> None:
            _log.failure("foreman could not start", reason)
            self.reactor.stop()

        self._starting = ensureDeferred(start())
        self._starting.addErrback(failed)

    def _install_signal_handlers(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        _log.info("received {signal}, shutting down", signal=signal.Signals(signum).name)
        self.reactor.callFromThread(self.reactor.stop)

    def stopService(self) -> Deferred[None]:
        super().stopService()  # type: ignore[no-untyped-call]

        async def stop() -> None:
            if self._starting is not None:
                await self._starting
            if self.daemon is not None:
                await self.daemon.stop()
            _log.info("foreman stopped")

        return ensureDeferred(stop())
