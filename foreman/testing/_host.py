"""What the HTTP side needs from the simulator, as structural types.

Route handlers, the control routes and the resource depend on these
protocols, never on :class:`~foreman.testing._simulator.OllamaSimulator`
itself, so dependencies point one way: pure parts → these protocols →
handlers → resource / site → the simulator facade (which satisfies them).
"""

from __future__ import annotations

from typing import Any, Protocol

from twisted.internet.defer import Deferred

from foreman.testing._exchange import Exchange
from foreman.testing._faults import Fault
from foreman.testing._gate import Gate
from foreman.testing._models import Catalog, ModelInfo
from foreman.testing._records import RecordedRequest
from foreman.testing._residency import Lease, Slot
from foreman.testing._timers import Timers


class GenerationHost(Protocol):
    """Catalog, residency and pacing: what the Ollama / OpenAI handlers use."""

    @property
    def catalog(self) -> Catalog: ...

    @property
    def timers(self) -> Timers: ...

    @property
    def reply_tokens(self) -> int: ...

    @property
    def load_time(self) -> float: ...

    @property
    def pull_time(self) -> float: ...

    def resident_slots(self) -> list[tuple[Slot, float]]: ...

    def slot_vram_fraction(self, slot: Slot) -> float: ...

    def now(self) -> float: ...

    def changed(self) -> None: ...

    def next_id(self) -> int: ...

    def token_interval(self, fault: Fault | None = None, vram_fraction: float = 1.0) -> float: ...

    def unload(self, model: str | None = None) -> bool: ...

    async def acquire(
        self, ex: Exchange, info: ModelInfo, context_length: int, keep_alive: float
    ) -> Lease: ...

    def release(self, lease: Lease) -> None: ...


class ControlHost(Protocol):
    """Counters, faults, reset and sleep: what the ``/_simulator/*`` routes use."""

    @property
    def timers(self) -> Timers: ...

    @property
    def faults(self) -> list[dict[str, Any]]: ...

    def state(self, include_requests: bool = False) -> dict[str, Any]: ...

    def inject(
        self, fault: Fault | str, count: int | None = 1, path: str | None = None
    ) -> None: ...

    def clear_faults(self) -> None: ...

    def reset(self, unload: bool = False) -> None: ...

    def sleep(self, seconds: float | None = None, *, refuse: bool = False) -> Deferred[None]: ...

    def gpu_lost(self, fraction: float = 0.0) -> None: ...

    def gpu_restored(self) -> None: ...


class SimulatorHost(GenerationHost, ControlHost, Protocol):
    """Everything the resource uses: the above plus auth, recording and fault dispatch."""

    @property
    def required_token(self) -> str | None: ...

    @property
    def closed(self) -> bool: ...

    @property
    def gate(self) -> Gate: ...

    def record(self, record: RecordedRequest) -> None: ...

    def begin(self, ex: Exchange) -> None: ...

    def end(self, ex: Exchange, record: RecordedRequest | None) -> None: ...

    def take_fault(self, path: str, inference: bool) -> Fault | None: ...


__all__ = ["ControlHost", "GenerationHost", "SimulatorHost"]
