"""The twistd service: starts a ``Daemon`` and stops it gracefully.

SIGTERM and SIGINT end a graceful shutdown with exit status 0. twistd would
re-raise the signal after the reactor stops (status -15), which a supervisor
reads as a crash; so once the reactor runs, this service installs its own
handlers (the standard library's ``signal``) that stop the reactor the same
way Twisted's do, without recording the signal.

A start that fails once the reactor runs ends with exit status 1 (see
``exit_failed``), so a supervisor sees it like a configuration error.
"""

from __future__ import annotations

import gc
import os
import signal
import sys
from contextlib import suppress
from types import FrameType
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.error import ReactorNotRunning
from twisted.logger import ILogObserver, Logger
from twisted.python.failure import Failure

from foreman.app.config import Config
from foreman.app.daemon import Daemon
from foreman.app.services import ListenError
from foreman.ops.logs import make_observer

__all__ = ["ForemanService", "exit_failed"]

_log = Logger()


def exit_failed() -> None:
    """End the process with status 1: the last step of a shutdown after a failed start.

    twistd has no exit status of its own to set, so a start that failed once
    the reactor ran would end with status 0 and a supervisor would not notice.
    By now every service has stopped and every log line is written; only
    twistd's removal of its pid file is skipped, and twistd clears a stale
    pid file at the next start.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)


class ForemanService(Service):
    name = "foreman"

    def __init__(self, config: Config, reactor: Any, *, handle_signals: bool = True) -> None:
        self.config = config
        self.reactor = reactor
        self.daemon: Daemon | None = None
        self._handle_signals = handle_signals
        self._starting: Deferred[Any] | None = None
        self._signalled = False  # a stop signal came: the shutdown is under way

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
            # what start-up loaded (a queue of 100 000 jobs) lives as long as the
            # process: out of the collector's way, a full collection stays short
            gc.collect()
            gc.freeze()

        def failed(reason: Failure) -> None:
            if reason.check(ListenError):
                # the start-up probe passed, then something else took the address
                _log.error("foreman could not start: {problem}", problem=str(reason.value))
            else:
                _log.failure("foreman could not start", reason)
            self.reactor.addSystemEventTrigger("after", "shutdown", exit_failed)
            with suppress(ReactorNotRunning):
                self.reactor.stop()

        self._starting = ensureDeferred(start())
        self._starting.addErrback(failed)

    def _install_signal_handlers(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self._signalled:
            # a second signal (a supervisor and a user, Ctrl-C twice) while the
            # shutdown runs: stopping the reactor again would raise
            _log.info("received {signal} again: already shutting down", signal=name)
            return
        self._signalled = True
        _log.info("received {signal}, shutting down", signal=name)
        self.reactor.callFromThread(self._stop_reactor)

    def _stop_reactor(self) -> None:
        with suppress(ReactorNotRunning):  # stopped meanwhile by another way (twistd's own)
            self.reactor.stop()

    def stopService(self) -> Deferred[None]:
        super().stopService()  # type: ignore[no-untyped-call]

        async def stop() -> None:
            if self._starting is not None:
                await self._starting
            if self.daemon is not None:
                await self.daemon.stop()
            _log.info("foreman stopped")

        return ensureDeferred(stop())
