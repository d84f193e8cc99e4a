"""What the simulator observed: requests received and clients that went away."""

from __future__ import annotations

from typing import Any

from attrs import define, frozen


@define
class RecordedRequest:
    """One request as received (control routes under ``/_simulator/`` excluded).

    ``headers`` maps lower-case names to the last value sent; ``json`` is the
    parsed body, or None when the body is empty or not JSON. Times are
    ``reactor.seconds()``.
    """

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    json: Any
    received_at: float
    model: str | None = None
    status: int | None = None
    finished_at: float | None = None

    @property
    def authorization(self) -> str | None:
        return self.headers.get("authorization")

    @property
    def host(self) -> str | None:
        return self.headers.get("host")

    def describe(self) -> dict[str, Any]:
        """JSON-ready form (body as parsed JSON only), for ``/_simulator/state``."""
        return {
            "method": self.method,
            "path": self.path,
            "query": self.query,
            "headers": self.headers,
            "json": self.json,
            "model": self.model,
            "status": self.status,
            "received_at": self.received_at,
            "finished_at": self.finished_at,
        }


@frozen
class Disconnect:
    """An inference request whose client left before the response was complete.

    ``phase`` is ``"waiting"`` when no response byte had been sent yet (queued
    behind another request, or waiting for the model to load) and
    ``"streaming"`` after the response started.
    """

    method: str
    path: str
    model: str | None
    at: float
    phase: str

    def describe(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "path": self.path,
            "model": self.model,
            "at": self.at,
            "phase": self.phase,
        }
