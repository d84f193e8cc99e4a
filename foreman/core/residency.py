"""What foreman believes is resident on the target (pure: no reactor, no I/O).

Ollama keeps several models loaded (``OLLAMA_MAX_LOADED_MODELS``) and lists
them in ``/api/ps`` with ``expires_at``. Two sources feed this view: the
monitor's ``/api/ps`` (authoritative, but only every few seconds) and what
the worker itself sees (a successful response for model M means M is resident
now; a 404 changes nothing). A model whose keep-alive runs out within
``margin`` seconds is not counted on: the scheduler would pick its work as
free and then pay the load anyway.

Load cost is learned from ``load_duration`` (Ollama's own figure, which
includes its queueing; foreman sends one request at a time, so that part is
small) as an exponentially weighted mean per model.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from datetime import datetime

from attrs import define, field, frozen

__all__ = [
    "ABOUT_TO_EXPIRE",
    "ASSUMED_KEEP_ALIVE",
    "ResidentModel",
    "ResidentSet",
    "canonical_model",
    "parse_ps",
    "parse_time",
    "read_ps",
]

ABOUT_TO_EXPIRE = 5.0
"""Seconds: a model expiring sooner is not counted as resident."""

ASSUMED_KEEP_ALIVE = 300.0
"""Ollama's default keep_alive, for a model known only from a response."""

LOAD_COST_WEIGHT = 0.5
"""Weight of the newest ``load_duration`` in the learned mean."""

_FRACTION = re.compile(r"\.(\d+)")


def canonical_model(name: str) -> str:
    """``llama3.2`` → ``llama3.2:latest``, as Ollama names models in ``/api/ps``."""
    name = name.strip()
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


def parse_time(text: str) -> float | None:
    """Epoch seconds of an RFC 3339 time as Ollama writes it (nanoseconds, any offset)."""
    text = text.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    text = _FRACTION.sub(lambda m: "." + m.group(1)[:6].ljust(6, "0"), text, count=1)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        return None
    return moment.timestamp()


@frozen
class ResidentModel:
    """One model the target holds, as ``/api/ps`` reports it."""

    name: str
    expires_at: float  # epoch seconds; inf: never
    size_vram: int | None = None


def parse_ps(doc: object) -> list[ResidentModel] | None:
    """The models of an ``/api/ps`` body (already JSON-decoded); None if it is not one."""
    if not isinstance(doc, dict) or not isinstance(doc.get("models"), list):
        return None
    out = []
    for entry in doc["models"]:
        if not isinstance(entry, dict):
            continue
        names = (entry.get("name"), entry.get("model"))
        name = next((n for n in names if isinstance(n, str) and n), None)
        if name is None:
            continue
        raw = entry.get("expires_at")
        expires = parse_time(raw) if isinstance(raw, str) else None
        vram = entry.get("size_vram")
        out.append(
            ResidentModel(
                canonical_model(name),
                math.inf if expires is None else expires,
                vram if isinstance(vram, int) and not isinstance(vram, bool) else None,
            )
        )
    return out


def read_ps(body: bytes) -> list[ResidentModel] | None:
    """:func:`parse_ps` of raw bytes; None for a body that is not JSON or not ``/api/ps``."""
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        return None
    return parse_ps(doc)


@define
class _Known:
    expires_at: float
    used_at: float
    size_vram: int | None


@define
class ResidentSet:
    """The resident set as the scheduler should see it, and the learned load costs."""

    margin: float = ABOUT_TO_EXPIRE
    keep_alive: float = ASSUMED_KEEP_ALIVE
    capacity: int = 1
    """The most models seen resident at once: the scheduler's guess of the target's room."""
    _models: dict[str, _Known] = field(factory=dict)
    _load_seconds: dict[str, float] = field(factory=dict)

    def observe_ps(self, models: Iterable[ResidentModel], now: float) -> None:
        """``/api/ps`` answered: it replaces what was believed."""
        seen: dict[str, _Known] = {}
        for index, model in enumerate(models):
            known = self._models.get(model.name)
            # without our own record, a later expiry means a more recent use;
            # ties keep the listed order (Ollama lists the most recent first)
            used = known.used_at if known is not None else model.expires_at - self.keep_alive
            used = min(used, now) - index * 1e-6
            seen[model.name] = _Known(model.expires_at, used, model.size_vram)
        self._models = seen
        self.capacity = max(self.capacity, len(seen))

    def observe_response(self, model: str, now: float) -> None:
        """A response for ``model`` arrived: it is resident and its keep-alive restarts."""
        name = canonical_model(model)
        known = self._models.get(name)
        newest = max((k.used_at for k in self._models.values()), default=now)
        used = max(now, newest + 1e-6)  # the most recent, whatever /api/ps guessed
        expires = now + self.keep_alive
        if known is not None and known.expires_at > expires:
            expires = known.expires_at  # a longer keep_alive reported by /api/ps
        size = known.size_vram if known is not None else None
        self._models[name] = _Known(expires, used, size)
        self.capacity = max(self.capacity, len(self._models))

    def observe_load(self, model: str, seconds: float) -> None:
        """A load of ``model`` took ``seconds`` (from ``load_duration``)."""
        if not seconds >= 0 or math.isinf(seconds):
            return
        name = canonical_model(model)
        before = self._load_seconds.get(name)
        self._load_seconds[name] = (
            seconds if before is None else before + LOAD_COST_WEIGHT * (seconds - before)
        )

    def load_seconds(self, model: str) -> float | None:
        return self._load_seconds.get(canonical_model(model))

    def is_resident(self, model: str, now: float) -> bool:
        known = self._models.get(canonical_model(model))
        return known is not None and known.expires_at - now >= self.margin

    def names(self, now: float) -> tuple[str, ...]:
        """Models to count as resident (``name:tag``), most recently used first."""
        counted = sorted(
            (
                (known.used_at, name)
                for name, known in self._models.items()
                if known.expires_at - now >= self.margin
            ),
            reverse=True,
        )
        return tuple(name for _, name in counted)

    def describe(self, now: float) -> list[dict[str, object]]:
        """For ``/status``: every model believed resident, most recently used first."""
        rows = sorted(self._models.items(), key=lambda kv: kv[1].used_at, reverse=True)
        return [
            {
                "name": name,
                "expires_in_s": (
                    None if math.isinf(known.expires_at) else round(known.expires_at - now, 1)
                ),
                "size_vram": known.size_vram,
                "counted": known.expires_at - now >= self.margin,
                "load_s": self._load_seconds.get(name),
            }
            for name, known in rows
        ]

    @property
    def load_costs(self) -> dict[str, float]:
        return dict(self._load_seconds)
