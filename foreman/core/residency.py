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

A model whose ``size_vram`` is well below its ``size`` runs partly or wholly
on the CPU, about ten times slower: the known failure of a box that came back
from sleep without its GPU. :func:`vram_fraction` and :func:`on_cpu` are the
rule; :class:`VramWatch` decides when that is worth a log line (once per
model per ``repeat_after``, again when the fraction moves a lot, and once
when the model is back on the GPU).
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
    "ON_CPU_BELOW",
    "VRAM_CHANGE",
    "VRAM_REPEAT_AFTER",
    "ResidentModel",
    "ResidentSet",
    "VramNotice",
    "VramWatch",
    "canonical_model",
    "human_bytes",
    "on_cpu",
    "parse_ps",
    "parse_time",
    "read_ps",
    "vram_fraction",
]

ABOUT_TO_EXPIRE = 5.0
"""Seconds: a model expiring sooner is not counted as resident."""

ASSUMED_KEEP_ALIVE = 300.0
"""Ollama's default keep_alive, for a model known only from a response."""

LOAD_COST_WEIGHT = 0.5
"""Weight of the newest ``load_duration`` in the learned mean."""

ON_CPU_BELOW = 0.9
"""A model with less than this fraction of its size in VRAM counts as on the CPU."""

VRAM_REPEAT_AFTER = 600.0
"""Seconds: the warning about a model on the CPU is repeated at most this often."""

VRAM_CHANGE = 0.2
"""A fraction in VRAM that moved by at least this much is warned about at once."""

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
    size: int | None = None
    """Bytes the loaded model takes (weights and cache); ``size_vram`` of it on the GPU."""


def _byte_count(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _fraction(size_vram: int | None, size: int | None) -> float | None:
    if size_vram is None or size is None or size <= 0:
        return None
    return min(1.0, size_vram / size)


def vram_fraction(model: ResidentModel) -> float | None:
    """The share of ``model`` in VRAM (0 to 1); None when ``/api/ps`` did not say."""
    return _fraction(model.size_vram, model.size)


def on_cpu(model: ResidentModel, threshold: float = ON_CPU_BELOW) -> bool:
    """Whether ``model`` runs partly or wholly on the CPU (a known fraction below ``threshold``)."""
    fraction = vram_fraction(model)
    return fraction is not None and fraction < threshold


def human_bytes(count: int) -> str:
    """``1234567890`` → ``1.2 GB`` (decimal units, as ``ollama ps`` prints them)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count} B"


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
        out.append(
            ResidentModel(
                canonical_model(name),
                math.inf if expires is None else expires,
                _byte_count(entry.get("size_vram")),
                _byte_count(entry.get("size")),
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


@frozen
class VramNotice:
    """A log line :class:`VramWatch` decided on: a model on the CPU, or back on the GPU."""

    model: str
    recovered: bool
    fraction: float
    size_vram: int
    size: int

    @property
    def percent(self) -> int:
        """The fraction in VRAM as a whole percentage, never rounded up to 100 while short of it."""
        return min(round(self.fraction * 100), 99 if self.fraction < 1.0 else 100)


@define
class _Warned:
    fraction: float
    at: float


@define
class VramWatch:
    """When a model on the CPU is worth a warning, and its return to the GPU an info line.

    Fed every ``/api/ps`` answer. A model whose fraction in VRAM is below
    ``threshold`` is warned about when first seen so, then at most once per
    ``repeat_after`` seconds, or at once when its fraction moved by
    ``change`` or more since the last warning. Once it is seen at or above
    ``threshold`` again, one recovery notice. A model that leaves ``/api/ps``
    keeps its record: reloaded on the CPU within ``repeat_after`` it is not
    warned about again; reloaded on the GPU it gets its recovery notice.
    A model whose sizes ``/api/ps`` does not give is left alone.
    """

    threshold: float = ON_CPU_BELOW
    repeat_after: float = VRAM_REPEAT_AFTER
    change: float = VRAM_CHANGE
    _warned: dict[str, _Warned] = field(factory=dict)

    def observe(self, models: Iterable[ResidentModel], now: float) -> list[VramNotice]:
        """What to log about this ``/api/ps`` answer (usually nothing)."""
        notices: list[VramNotice] = []
        for model in models:
            fraction = vram_fraction(model)
            if fraction is None or model.size_vram is None or model.size is None:
                continue
            warned = self._warned.get(model.name)
            if fraction >= self.threshold:
                if warned is not None:
                    del self._warned[model.name]
                    notices.append(
                        VramNotice(model.name, True, fraction, model.size_vram, model.size)
                    )
                continue
            if (
                warned is None
                or now - warned.at >= self.repeat_after
                or now < warned.at  # the clock went back: do not stay silent for long
                or abs(fraction - warned.fraction) >= self.change
            ):
                self._warned[model.name] = _Warned(fraction, now)
                notices.append(VramNotice(model.name, False, fraction, model.size_vram, model.size))
        return notices

    @property
    def warned(self) -> tuple[str, ...]:
        """Models last warned about as on the CPU (not yet seen back on the GPU)."""
        return tuple(sorted(self._warned))


@define
class _Known:
    expires_at: float
    used_at: float
    size_vram: int | None
    size: int | None = None


@define
class ResidentSet:
    """The resident set as the scheduler should see it, and the learned load costs."""

    margin: float = ABOUT_TO_EXPIRE
    keep_alive: float = ASSUMED_KEEP_ALIVE
    capacity: int = 1
    """The most models seen resident at once: the scheduler's guess of the target's room."""
    on_cpu_below: float = ON_CPU_BELOW
    _models: dict[str, _Known] = field(factory=dict)
    _load_seconds: dict[str, float] = field(factory=dict)
    _ps_room: int = 1  # the most models /api/ps has listed at once

    def observe_ps(self, models: Iterable[ResidentModel], now: float) -> None:
        """``/api/ps`` answered: it replaces what was believed."""
        seen: dict[str, _Known] = {}
        for index, model in enumerate(models):
            known = self._models.get(model.name)
            # without our own record, a later expiry means a more recent use;
            # ties keep the listed order (Ollama lists the most recent first)
            used = known.used_at if known is not None else model.expires_at - self.keep_alive
            used = min(used, now) - index * 1e-6
            seen[model.name] = _Known(model.expires_at, used, model.size_vram, model.size)
        self._models = seen
        # /api/ps is the authority on the room too: a response may have counted
        # a model before its load pushed another out (see observe_response)
        self._ps_room = max(self._ps_room, len(seen))
        self.capacity = self._ps_room

    def observe_response(self, model: str, now: float) -> None:
        """A response for ``model`` arrived: it is resident and its keep-alive restarts."""
        name = canonical_model(model)
        known = self._models.get(name)
        newest = max((k.used_at for k in self._models.values()), default=now)
        used = max(now, newest + 1e-6)  # the most recent, whatever /api/ps guessed
        expires = now + self.keep_alive
        if known is not None and known.expires_at > expires:
            expires = known.expires_at  # a longer keep_alive reported by /api/ps
        vram, size = (known.size_vram, known.size) if known is not None else (None, None)
        self._models[name] = _Known(expires, used, vram, size)
        # until /api/ps is asked again (after every load) it may be one too many
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
        out: list[dict[str, object]] = []
        for name, known in rows:
            fraction = _fraction(known.size_vram, known.size)
            out.append(
                {
                    "name": name,
                    "expires_in_s": (
                        None if math.isinf(known.expires_at) else round(known.expires_at - now, 1)
                    ),
                    "size_vram": known.size_vram,
                    "size": known.size,
                    "vram_fraction": None if fraction is None else round(fraction, 3),
                    "on_cpu": fraction is not None and fraction < self.on_cpu_below,
                    "counted": known.expires_at - now >= self.margin,
                    "load_s": self._load_seconds.get(name),
                }
            )
        return out

    def vram_fractions(self) -> dict[str, float]:
        """The share in VRAM of every model believed resident whose sizes are known."""
        out: dict[str, float] = {}
        for name, known in self._models.items():
            fraction = _fraction(known.size_vram, known.size)
            if fraction is not None:
                out[name] = fraction
        return out

    @property
    def load_costs(self) -> dict[str, float]:
        return dict(self._load_seconds)
