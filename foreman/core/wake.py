"""When to send Wake-on-LAN while work waits for a sleeping target (pure).

One packet when the wait begins; if the box does not answer, a bounded
number of resends ``interval`` apart (a packet can be lost, a box can need a
second nudge), then silence: a box that ignores four packets is off or
misconfigured, and flooding the LAN does not change that. ``reset`` when the
target answers, so the next sleep gets its own packet.
"""

from __future__ import annotations

from attrs import define

__all__ = ["WakePlan"]


@define
class WakePlan:
    interval: float = 60.0
    resends: int = 3
    count: int = 0
    """Packets sent in the current wait."""
    last: float = float("-inf")

    def due(self, now: float) -> bool:
        if self.count == 0:
            return True
        return self.count <= self.resends and now - self.last >= self.interval

    def sent(self, now: float) -> None:
        self.count += 1
        self.last = now

    def reset(self) -> None:
        self.count = 0
        self.last = float("-inf")
