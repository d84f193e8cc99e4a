"""What foreman's own routes read from the running daemon.

A ``Protocol`` so the web layer names what it needs without importing the
application layer that builds it (``foreman.app.daemon`` implements it).
"""

from __future__ import annotations

from typing import Any, Protocol

from twisted.internet.interfaces import IReactorTime

from foreman.core.forwarding import TrustedProxies
from foreman.jobs.batches import BatchService
from foreman.jobs.service import JobService
from foreman.ops.metrics import Metrics
from foreman.store.database import Store
from foreman.work.control import QueueControl

__all__ = ["DaemonView"]


class DaemonView(Protocol):
    @property
    def store(self) -> Store: ...

    @property
    def metrics(self) -> Metrics: ...

    @property
    def jobs(self) -> JobService: ...

    @property
    def batches(self) -> BatchService: ...

    @property
    def control(self) -> QueueControl:
        """Pause, resume, drain; the activity a keep-awake helper follows."""

    @property
    def clock(self) -> IReactorTime: ...

    @property
    def public_url(self) -> str | None: ...

    @property
    def trusted_proxies(self) -> TrustedProxies: ...

    @property
    def accepting(self) -> bool:
        """True once listening and until shutdown begins (``/readyz``)."""

    def target_state(self) -> str: ...

    def target_problem(self) -> str | None:
        """Why the target is not up (the monitor's last probe error), or None."""

    def status(self) -> dict[str, Any]:
        """The whole ``/status`` body."""

    def queue_view(self, limit: int) -> dict[str, Any]: ...

    def cancel_running(self, job_id: str) -> None:
        """Abort the target call of ``job_id`` if it is the running attempt."""
