"""Deterministic "model output": reply words, thinking, tool calls, embeddings.

Pure functions of their inputs (SHA-256 based, no process-level hash seed),
so a test can compute the exact content it will receive::

    reply_text("llama3.2", "hi", 8)  # the 8-token reply to the prompt "hi"

The *prompt* is the text of the last message for chat routes and the
``prompt`` string for generate/completions routes. Token *i* is a word of
:data:`VOCABULARY` chosen by ``sha256(model:tag, prompt, i)``; tokens after
the first carry a leading space, as real tokenizers emit them. The model
name is canonicalised first (``llama3.2`` and ``llama3.2:latest`` agree).
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import random
import re
import struct
from collections.abc import Mapping, Sequence
from typing import Any

from attrs import frozen

from foreman.testing._models import canonical_name

VOCABULARY: tuple[str, ...] = (
    "amber", "bright", "cedar", "delta", "ember", "fable", "garnet", "harbor",
    "island", "jasper", "kestrel", "lantern", "meadow", "nectar", "orchid", "pebble",
    "quartz", "river", "saffron", "timber", "umber", "valley", "willow", "xenon",
    "yarrow", "zephyr", "anchor", "breeze", "canyon", "dune", "echo", "falcon",
    "glacier", "horizon", "ivory", "juniper", "kelp", "lagoon", "maple", "nimbus",
    "ocean", "prairie", "quill", "ridge", "summit", "tundra", "upland", "violet",
    "wander", "yonder", "zenith", "aurora", "basalt", "coral", "drift", "estuary",
    "fjord", "grove", "heather", "inlet", "jade", "knoll", "lichen", "mesa",
)  # fmt: skip

THINKING_TOKENS = 4
"""Number of thinking tokens produced when a request asks to think."""


def _seed(*parts: str) -> int:
    digest = hashlib.sha256("\x1f".join(parts).encode()).digest()
    return int.from_bytes(digest[:8], "big")


def _words(model: str, prompt: str, salt: str, count: int) -> list[str]:
    model = canonical_name(model)
    words = [VOCABULARY[_seed(model, prompt, salt, str(i)) % len(VOCABULARY)] for i in range(count)]
    return [word if i == 0 else " " + word for i, word in enumerate(words)]


def reply_tokens(model: str, prompt: str, count: int) -> list[str]:
    """The reply tokens (one streamed chunk each) for ``prompt``."""
    return _words(model, prompt, "reply", count)


def reply_text(model: str, prompt: str, count: int = 8) -> str:
    """The full reply text: ``"".join(reply_tokens(...))``."""
    return "".join(reply_tokens(model, prompt, count))


def thinking_tokens(model: str, prompt: str, count: int = THINKING_TOKENS) -> list[str]:
    """The thinking tokens streamed before the reply when ``think`` is on."""
    return _words(model, prompt, "think", count)


def thinking_text(model: str, prompt: str, count: int = THINKING_TOKENS) -> str:
    return "".join(thinking_tokens(model, prompt, count))


def count_tokens(text: str) -> int:
    """Simulated token count of a prompt: its whitespace-separated words (at least 1)."""
    return max(1, len(text.split()))


def embedding_vector(model: str, text: str, dimensions: int = 768) -> list[float]:
    """Unit-length vector for ``text``; every component is exactly a float32 value.

    Exact float32 values make the ``encoding_format: "base64"`` form of
    ``/v1/embeddings`` decode to the very numbers ``/api/embed`` returns.
    """
    rng = random.Random(_seed(canonical_name(model), text, "embed"))
    raw = [rng.random() * 2.0 - 1.0 for _ in range(dimensions)]
    norm = math.sqrt(sum(x * x for x in raw)) or 1.0
    packed = struct.pack(f"<{dimensions}f", *(x / norm for x in raw))
    return list(struct.unpack(f"<{dimensions}f", packed))


def embedding_base64(vector: Sequence[float]) -> str:
    """Base64 of the little-endian float32 array, as OpenAI's API encodes it."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


def context_ids(model: str, prompt: str, count: int) -> list[int]:
    """Deterministic stand-in for /api/generate's (deprecated) ``context`` array."""
    model = canonical_name(model)
    return [_seed(model, prompt, "ctx", str(i)) % 128_000 for i in range(count)]


def value_for_schema(schema: object, key: str = "value") -> Any:
    """A deterministic value that satisfies a simple JSON schema."""
    if not isinstance(schema, Mapping):
        return f"sim-{key}"
    if schema.get("enum"):
        return next(iter(schema["enum"]))
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "string")
    if kind == "integer":
        return 1
    if kind == "number":
        return 1.5
    if kind == "boolean":
        return True
    if kind == "array":
        return [value_for_schema(schema.get("items"), key)]
    if kind == "object" or "properties" in schema:
        props = schema.get("properties") or {}
        if not isinstance(props, Mapping):
            return {}
        required = schema.get("required")
        names = [n for n in props if n in required] if isinstance(required, list) else list(props)
        return {name: value_for_schema(props[name], name) for name in names}
    return f"sim-{key}"


@frozen
class ToolCall:
    name: str
    arguments: dict[str, Any]


def tool_call_for(tools: object) -> ToolCall | None:
    """The call the simulated model makes: the first function tool, schema-valid args."""
    if not isinstance(tools, list):
        return None
    for tool in tools:
        if not isinstance(tool, Mapping):
            continue
        function = tool.get("function")
        if isinstance(function, Mapping) and isinstance(function.get("name"), str):
            args = value_for_schema(function.get("parameters") or {"type": "object"})
            return ToolCall(function["name"], args if isinstance(args, dict) else {})
    return None


def structured_text(fmt: object, model: str, prompt: str, count: int) -> str:
    """JSON output for ``format``: ``"json"`` → ``{"reply": ...}``; a schema → a match."""
    if isinstance(fmt, Mapping):
        return json.dumps(value_for_schema(fmt, "reply"))
    return json.dumps({"reply": reply_text(model, prompt, count)})


def split_tokens(text: str) -> list[str]:
    """Split text into stream pieces whose concatenation is ``text``."""
    pieces = re.findall(r"\s*\S+", text)
    rest = text[len("".join(pieces)) :]
    if rest:
        pieces.append(rest)
    return pieces


@frozen
class Plan:
    """What the simulated model produces for one request."""

    thinking: list[str]
    content: list[str]
    tool_calls: list[ToolCall]
    done_reason: str
    prompt_tokens: int

    @property
    def eval_count(self) -> int:
        return len(self.thinking) + len(self.content) + len(self.tool_calls)

    @property
    def text(self) -> str:
        return "".join(self.content)

    @property
    def thinking_text(self) -> str:
        return "".join(self.thinking)


def make_plan(
    *,
    model: str,
    prompt: str,
    prompt_tokens: int,
    default_tokens: int,
    num_predict: int | None = None,
    think: bool = False,
    tools: object = None,
    last_role: str = "user",
    fmt: object = None,
) -> Plan:
    """Decide the output: tool call, structured JSON, or ``reply_tokens``.

    * ``tools`` given and the last message is not a tool result → one call of
      the first tool, no text;
    * ``format`` (``"json"`` or a schema) → JSON text;
    * otherwise ``num_predict`` tokens (done_reason ``length``) when set and
      non-negative, else ``default_tokens`` (done_reason ``stop``).
    """
    thinking = thinking_tokens(model, prompt) if think else []
    call = tool_call_for(tools) if last_role != "tool" else None
    if call is not None:
        return Plan(thinking, [], [call], "stop", prompt_tokens)
    if fmt not in (None, ""):
        text = structured_text(fmt, model, prompt, default_tokens)
        return Plan(thinking, split_tokens(text), [], "stop", prompt_tokens)
    if num_predict is not None and num_predict >= 0:
        return Plan(thinking, reply_tokens(model, prompt, num_predict), [], "length", prompt_tokens)
    return Plan(thinking, reply_tokens(model, prompt, default_tokens), [], "stop", prompt_tokens)
