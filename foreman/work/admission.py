"""The one admission point every inference request passes through.

The proxy asks ``admit(call)`` and relays only once the returned Deferred
fires with a ``Slot``; it calls ``slot.release()`` exactly once when the
upstream exchange ends (complete, failed, or client gone). The queue and the
worker plug in behind this interface; ``ImmediateAdmission`` admits at once.

If the client disconnects while waiting, the proxy ``cancel()``s the
Deferred: an implementation must then drop the call from its queue.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from attrs import frozen
from twisted.internet.defer import Deferred, succeed

__all__ = ["Admission", "ImmediateAdmission", "InferenceCall", "QueueFull", "Slot"]


@frozen
class InferenceCall:
    """What the scheduler needs to know about one inference request."""

    model: str
    priority: int
    path: str
    stream: bool
    received_at: float


class Slot(Protocol):
    """Permission to run one request at the target.

    The holder reports the target's answer (``outcome``: status code and,
    when the final chunk said, the load time) before it ``release``s, and may
    set ``on_lost`` to hear that the worker declared the target gone.
    """

    on_lost: Callable[[str], None] | None

    @property
    def queue_wait_ms(self) -> float: ...

    @property
    def target_wait_ms(self) -> float: ...

    def outcome(self, code: int, load_seconds: float | None) -> None: ...

    @property
    def waiting(self) -> bool:
        """Other requests wait for the target: the holder releases before its client's last
        bytes go out (ADR 0021); with none waiting, the answer goes out first."""
        ...

    def release(self) -> None: ...


class Admission(Protocol):
    def admit(self, call: InferenceCall) -> Deferred[Slot]: ...


class QueueFull(Exception):
    """The queue is at its limit; the client should retry after ``retry_after`` seconds."""

    def __init__(self, retry_after: int, message: str = "the queue is full") -> None:
        super().__init__(message)
        self.retry_after = retry_after


class _FreeSlot:
    """A slot that waited for nothing and guards nothing."""

    __slots__ = ("on_lost",)

    queue_wait_ms = 0.0
    target_wait_ms = 0.0
    waiting = False

    def __init__(self) -> None:
        self.on_lost: Callable[[str], None] | None = None

    def outcome(self, code: int, load_seconds: float | None) -> None:
        pass

    def release(self) -> None:
        pass


class ImmediateAdmission:
    """Admits every call at once: the proxy without a scheduler behind it."""

    def admit(self, call: InferenceCall) -> Deferred[Slot]:
        return succeed(_FreeSlot())
