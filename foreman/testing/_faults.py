"""Failure injection: which fault the next matching request suffers. Pure."""

from __future__ import annotations

import enum
from typing import Any

from attrs import define, field


class Fault(enum.Enum):
    """Faults a test can inject with ``OllamaSimulator.inject``.

    * ``HTTP_500``: answer ``500 {"error": ...}`` at once.
    * ``HANG``: accept the request and never answer (until the client leaves
      or the simulator closes).
    * ``RESET``: drop the connection (TCP reset) after the response headers,
      or in the middle of a stream.
    * ``ERROR_MID_STREAM``: ``200``, some chunks, then a final ``{"error": ...}``
      line, as Ollama does when generation fails after streaming began
      (a non-streaming request gets ``500`` instead).
    * ``SLOW``: stream at about one token per second (at least ten times slower
      than ``token_rate``).
    """

    HTTP_500 = "http_500"
    HANG = "hang"
    RESET = "reset"
    ERROR_MID_STREAM = "error_mid_stream"
    SLOW = "slow"


ANY_PATH = "*"
"""``path`` value matching every route (control routes excepted)."""


@define
class FaultRule:
    fault: Fault
    remaining: int | None
    """How many more matching requests suffer it; None = until cleared."""
    path: str | None
    """None = inference routes only; ``"*"`` = every route; else an exact path."""

    def matches(self, path: str, inference: bool) -> bool:
        if self.path is None:
            return inference
        return self.path in (ANY_PATH, path)

    def describe(self) -> dict[str, Any]:
        return {"fault": self.fault.value, "remaining": self.remaining, "path": self.path}


def parse_fault(value: Fault | str) -> Fault:
    """A Fault from itself, its value (``"http_500"``) or its name (``"HTTP_500"``)."""
    if isinstance(value, Fault):
        return value
    try:
        return Fault(value.lower())
    except ValueError:
        raise ValueError(
            f"unknown fault {value!r}; one of {', '.join(f.value for f in Fault)}"
        ) from None


@define
class FaultBook:
    """Pending faults, applied in the order they were injected."""

    rules: list[FaultRule] = field(factory=list)

    def add(self, fault: Fault | str, count: int | None = 1, path: str | None = None) -> None:
        if count is not None and count < 1:
            raise ValueError("count must be at least 1 (or None for every request)")
        self.rules.append(FaultRule(parse_fault(fault), count, path))

    def take(self, path: str, inference: bool) -> Fault | None:
        """Consume one use of the first rule matching this request, if any."""
        for index, rule in enumerate(self.rules):
            if rule.matches(path, inference):
                if rule.remaining is not None:
                    rule.remaining -= 1
                    if rule.remaining == 0:
                        del self.rules[index]
                return rule.fault
        return None

    def clear(self) -> None:
        self.rules.clear()

    def describe(self) -> list[dict[str, Any]]:
        return [rule.describe() for rule in self.rules]
