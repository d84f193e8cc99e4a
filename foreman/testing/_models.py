"""Model catalog of the simulator: names, derived metadata, keep_alive parsing.

Pure: no reactor, no I/O. Ollama resolves ``llama3.2`` to ``llama3.2:latest``
and reports the tagged name everywhere (tags, ps, /v1/models); the catalog
does the same so a front sees realistic names.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterable

from attrs import define, evolve, field, frozen

DEFAULT_KEEP_ALIVE = 300.0
"""Ollama's default keep_alive: five minutes."""

FOREVER = math.inf
"""keep_alive of a negative value: never expire."""

DEFAULT_CONTEXT_LENGTH = 4096

CPU_SLOWDOWN = 10.0
"""How much slower a model wholly on the CPU generates than one wholly in VRAM."""


def check_vram_fraction(value: object) -> float:
    """``value`` as a float from 0 to 1; ValueError otherwise."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise ValueError("vram_fraction must be a number from 0 to 1")
    return float(value)


def _spec_fraction(value: float | None) -> float:
    return 1.0 if value is None else check_vram_fraction(value)


def cpu_slowdown(vram_fraction: float) -> float:
    """Token interval factor of a model with ``vram_fraction`` of it in VRAM.

    Linear between 1 (all in VRAM) and :data:`CPU_SLOWDOWN` (all on the CPU):
    ``0.3`` in VRAM generates 7.3 times slower.
    """
    return 1.0 + (CPU_SLOWDOWN - 1.0) * (1.0 - min(1.0, max(0.0, vram_fraction)))


def canonical_name(name: str) -> str:
    """``llama3.2`` → ``llama3.2:latest``; a name with a tag is kept as is."""
    name = name.strip()
    last = name.rsplit("/", 1)[-1]
    return name if ":" in last else f"{name}:latest"


@frozen
class ModelSpec:
    """What a test says about a model; everything else is derived from the name.

    ``embedding=None`` means: an embedding-only model when the name contains
    ``embed`` (like ``nomic-embed-text``). ``load_time=None`` takes the
    simulator's default. ``vram_fraction`` is the share of the model that
    fits in VRAM on a healthy GPU (1: all of it; ``/api/ps`` reports
    ``size_vram`` = fraction * ``size``, and tokens come slower below 1).
    """

    name: str
    load_time: float | None = None
    family: str | None = None
    parameter_size: str | None = None
    quantization_level: str | None = None
    context_length: int = DEFAULT_CONTEXT_LENGTH
    embedding: bool | None = None
    embedding_length: int = 768
    size: int | None = None
    vram_fraction: float = field(default=1.0, converter=_spec_fraction)


@frozen
class ModelInfo:
    """A present model with every field the API reports."""

    name: str
    load_time: float
    family: str
    parameter_size: str
    quantization_level: str
    context_length: int
    embedding: bool
    embedding_length: int
    size: int
    digest: str
    modified_at: float
    vram_fraction: float = 1.0
    """Share in VRAM when loaded on a healthy GPU."""

    @property
    def capabilities(self) -> list[str]:
        if self.embedding:
            return ["embedding"]
        caps = ["completion", "tools"]
        if self.family in ("qwen3", "deepseek2", "gptoss", "deepseek-r1"):
            caps.append("thinking")
        return caps


_PARAMS_IN_TAG = re.compile(r"(\d+(?:\.\d+)?)([bm])\b", re.IGNORECASE)


def _family(base: str, embedding: bool) -> str:
    if embedding:
        return "nomic-bert" if base.startswith("nomic") else "bert"
    if base.startswith("qwen3"):
        return "qwen3"
    match = re.match(r"[a-z]+", base.lower())
    return match.group(0) if match else "llama"


def _parameter_count(size: str) -> float:
    number = float(size[:-1])
    return number * (1e6 if size.endswith("M") else 1e9)


def describe(spec: ModelSpec | str, default_load_time: float, modified_at: float) -> ModelInfo:
    """Derive a complete, plausible ModelInfo from a spec (pure, deterministic)."""
    if isinstance(spec, str):
        spec = ModelSpec(spec)
    name = canonical_name(spec.name)
    base, _, tag = name.rpartition(":")
    base = base.rsplit("/", 1)[-1]
    embedding = spec.embedding if spec.embedding is not None else "embed" in base.lower()
    params = spec.parameter_size
    if params is None:
        match = _PARAMS_IN_TAG.search(tag)
        if match:
            params = f"{match.group(1)}{match.group(2).upper()}"
        else:
            params = "137M" if embedding else "3.2B"
    quant = spec.quantization_level or ("F16" if embedding else "Q4_K_M")
    bytes_per_param = 2.0 if quant == "F16" else 0.6
    size = spec.size or int(_parameter_count(params) * bytes_per_param) + 1_000_000
    digest = hashlib.sha256(f"foreman-simulator:{name}".encode()).hexdigest()
    return ModelInfo(
        name=name,
        load_time=default_load_time if spec.load_time is None else spec.load_time,
        family=spec.family or _family(base.lower(), embedding),
        parameter_size=params,
        quantization_level=quant,
        context_length=spec.context_length,
        embedding=embedding,
        embedding_length=spec.embedding_length,
        size=size,
        digest=digest,
        modified_at=modified_at,
        vram_fraction=spec.vram_fraction,
    )


@define
class Catalog:
    """Models present on the simulated server, and those a pull can fetch."""

    models: dict[str, ModelInfo] = field(factory=dict)
    pullable: dict[str, ModelSpec] = field(factory=dict)

    @classmethod
    def build(
        cls,
        models: Iterable[ModelSpec | str],
        pullable: Iterable[ModelSpec | str],
        default_load_time: float,
        now: float,
    ) -> Catalog:
        catalog = cls()
        for spec in models:
            catalog.add(describe(spec, default_load_time, now))
        for spec in pullable:
            spec = ModelSpec(spec) if isinstance(spec, str) else spec
            catalog.pullable[canonical_name(spec.name)] = spec
        return catalog

    def find(self, name: str) -> ModelInfo | None:
        return self.models.get(canonical_name(name))

    def add(self, info: ModelInfo) -> None:
        self.models[info.name] = info

    def remove(self, name: str) -> bool:
        return self.models.pop(canonical_name(name), None) is not None

    def copy(self, source: str, destination: str, now: float) -> bool:
        info = self.find(source)
        if info is None:
            return False
        self.add(evolve(info, name=canonical_name(destination), modified_at=now))
        return True

    def pull_spec(self, name: str) -> ModelSpec | None:
        """The spec a pull of ``name`` would install, or None if it cannot."""
        canon = canonical_name(name)
        if canon in self.pullable:
            return evolve(self.pullable[canon], name=canon)
        if canon in self.models:
            return ModelSpec(canon)
        return None


_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}


def _parse_go_duration(text: str) -> float:
    text = text.strip()
    sign = 1.0
    if not text:
        raise ValueError("time: invalid duration ''")
    if text[0] in "+-":
        sign = -1.0 if text[0] == "-" else 1.0
        text = text[1:]
    if text == "0":
        return 0.0
    try:
        return sign * float(text)  # a bare number: seconds (lenient)
    except ValueError:
        pass
    pos, total = 0, 0.0
    while pos < len(text):
        match = _DURATION_PART.match(text, pos)
        if match is None:
            raise ValueError(f"time: invalid duration {text!r}")
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    if not text:
        raise ValueError("time: invalid duration ''")
    return sign * total


def parse_keep_alive(value: object) -> float:
    """keep_alive as Ollama reads it → seconds; ``inf`` for negative (forever).

    Accepts a Go duration string (``"10m"``, ``"1h30m"``, ``"0"``), a number of
    seconds, or None (the default, five minutes). Raises ValueError otherwise.
    """
    if value is None:
        return DEFAULT_KEEP_ALIVE
    if isinstance(value, bool):
        raise ValueError("keep_alive must be a duration or a number")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        seconds = _parse_go_duration(value)
    else:
        raise ValueError("keep_alive must be a duration or a number")
    if math.isnan(seconds):
        raise ValueError("keep_alive must be a duration or a number")
    return FOREVER if seconds < 0 else seconds
