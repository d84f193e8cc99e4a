"""The gate a suspended simulator closes: whatever it would do meanwhile waits for the wake.

A suspended box neither answers nor computes. Rather than stopping every
timer, the simulator lets them run and makes whatever they would lead to
(a token written, a load finished, a model expiring) pass this gate first:
while it is closed they queue in order, and they go on, in that order, when
it opens.
"""

from __future__ import annotations

from twisted.internet.defer import CancelledError, Deferred, fail, succeed


class Gate:
    def __init__(self) -> None:
        self.closed = False
        self._shut = False
        self._waiting: list[Deferred[None]] = []

    def passage(self) -> Deferred[None]:
        """Fires now when open, else when it next opens; cancelling it leaves the queue."""
        if self._shut:
            return fail(CancelledError())
        if not self.closed:
            return succeed(None)

        def leave(d: Deferred[None]) -> None:
            if d in self._waiting:
                self._waiting.remove(d)

        d: Deferred[None] = Deferred(leave)
        self._waiting.append(d)
        return d

    def close(self) -> None:
        self.closed = True

    def open(self) -> None:
        """Let the waiting through in order (stopping if one of them closes it again)."""
        self.closed = False
        while self._waiting and not self.closed:
            self._waiting.pop(0).callback(None)

    def shut(self) -> None:
        """For good (the simulator is closing): cancel every waiter, refuse new ones."""
        self._shut = True
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.cancel()

    @property
    def waiting(self) -> int:
        return len(self._waiting)
