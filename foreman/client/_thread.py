"""The reactor thread behind the blocking client: started once, shared, never in the way.

A program without a reactor gets one running in a daemon thread (no signal
handlers: they belong to the main thread). A program whose main thread
already runs the reactor keeps it: blocking calls from its other threads are
handed to it. A blocking call from the reactor's own thread is refused, since
it would wait for the very thread it blocks.
"""

from __future__ import annotations

import threading
from typing import Any

from twisted.python import threadable

from foreman.client._errors import ReactorThreadError

__all__ = ["reactor_for_blocking"]

_lock = threading.Lock()
_started = False

_DEADLOCK = (
    "ForemanClient (the blocking client) was called on the thread that runs the Twisted "
    "reactor; it would wait for an answer that this same thread must produce (a deadlock). "
    "In Twisted code use foreman.client.AsyncForemanClient and await its Deferreds, or call "
    "ForemanClient from another thread (deferToThread)."
)


def reactor_for_blocking() -> Any:
    """The running reactor, started in a background thread if nobody runs one."""
    global _started
    from twisted.internet import reactor as _reactor

    reactor: Any = _reactor
    if reactor.running and threadable.isInIOThread():
        raise ReactorThreadError(_DEADLOCK)
    if _started or reactor.running:
        return reactor
    with _lock:
        if _started or reactor.running:
            return reactor
        if getattr(reactor, "_startedBefore", False):
            raise RuntimeError(
                "the Twisted reactor in this process has already run and stopped; "
                "ForemanClient cannot restart it"
            )
        ready = threading.Event()
        reactor.callWhenRunning(ready.set)
        thread = threading.Thread(
            target=reactor.run,
            kwargs={"installSignalHandlers": False},
            name="foreman-client-reactor",
            daemon=True,
        )
        thread.start()
        if not ready.wait(30):
            raise RuntimeError("the Twisted reactor thread did not start")
        _watch_main_thread(reactor)
        _started = True
    return reactor


def _watch_main_thread(reactor: Any) -> None:
    """Stop the reactor when the main thread ends, before Python joins non-daemon threads.

    The reactor's thread pool (used for DNS lookups) has non-daemon workers
    that only a reactor shutdown stops; without this, a script that resolved
    a host name would never exit.
    """

    def watch() -> None:
        threading.main_thread().join()
        if reactor.running:
            reactor.callFromThread(reactor.stop)

    threading.Thread(target=watch, name="foreman-client-watchdog", daemon=True).start()
