"""In-memory fan-out of job events to live listeners (long-polls, SSE streams).

The durable record is ``job_events`` in SQLite; this hub only tells whoever
is connected *now*. Progress (token counts) goes only through here: it changes
too often to be worth a write.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from typing import Any

from attrs import frozen
from twisted.internet.defer import Deferred

from foreman.core.records import Event

__all__ = ["JobHub", "Progress"]


@frozen
class Progress:
    job_id: str
    tokens: int


Listener = Callable[[Any], None]


class JobHub:
    def __init__(self) -> None:
        self._listeners: dict[str, list[Listener]] = defaultdict(list)

    def subscribe(self, job_id: str, listener: Listener) -> Callable[[], None]:
        """Call ``listener(message)`` for each event of ``job_id``; returns the unsubscribe."""
        self._listeners[job_id].append(listener)

        def unsubscribe() -> None:
            listeners = self._listeners.get(job_id)
            if listeners and listener in listeners:
                listeners.remove(listener)
                if not listeners:
                    del self._listeners[job_id]

        return unsubscribe

    def publish(self, job_id: str, message: Any) -> None:
        for listener in list(self._listeners.get(job_id, ())):
            listener(message)

    def next_event(self, job_id: str, reactor: Any, timeout: float) -> Deferred[Any]:
        """Fires with the next state event of the job, or None after ``timeout``.

        Cancelling it (client gone) removes the listener and the timer.
        """
        timer: list[Any] = []

        def cancel(d: Deferred[Any]) -> None:
            unsubscribe()
            if timer and timer[0].active():
                timer[0].cancel()

        d: Deferred[Any] = Deferred(cancel)

        def on_message(message: Any) -> None:
            if isinstance(message, Event) and not d.called:
                unsubscribe()
                if timer and timer[0].active():
                    timer[0].cancel()
                d.callback(message)

        def on_timeout() -> None:
            unsubscribe()
            if not d.called:
                d.callback(None)

        unsubscribe = self.subscribe(job_id, on_message)
        timer.append(reactor.callLater(timeout, on_timeout))
        return d
