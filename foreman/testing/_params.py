"""Reading request fields the way Ollama does, with its error wording. Pure."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from foreman.testing._content import count_tokens
from foreman.testing._exchange import HTTPError
from foreman.testing._models import ModelInfo, parse_keep_alive


def require_model(body: Mapping[str, Any]) -> str:
    """``model`` (or its alias ``name``), required."""
    name = body.get("model") or body.get("name")
    if not isinstance(name, str) or not name.strip():
        raise HTTPError(400, "model is required")
    return name


def keep_alive_of(body: Mapping[str, Any]) -> float:
    try:
        return parse_keep_alive(body.get("keep_alive"))
    except ValueError as exc:
        raise HTTPError(400, str(exc)) from None


def options_of(body: Mapping[str, Any]) -> dict[str, Any]:
    options = body.get("options")
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise HTTPError(400, "options must be an object")
    return options


def int_option(options: Mapping[str, Any], key: str) -> int | None:
    value = options.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise HTTPError(400, f"option {key!r} must be a number")
    return int(value)


def context_length(info: ModelInfo, options: Mapping[str, Any]) -> int:
    """``options.num_ctx`` when positive, else the model's default."""
    num_ctx = int_option(options, "num_ctx")
    return num_ctx if num_ctx is not None and num_ctx > 0 else info.context_length


def wants_thinking(value: object) -> bool:
    """``think: true`` or a level (``"low"``, ``"medium"``, ``"high"``)."""
    if isinstance(value, str):
        return value.lower() in ("low", "medium", "high", "true")
    return value is True


def stream_of(body: Mapping[str, Any], default: bool) -> bool:
    value = body.get("stream")
    return default if value is None else value is True


def message_text(content: object) -> str:
    """Text of a message ``content``: a string, or OpenAI-style parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = [
            part.get("text", "")
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        ]
        return "\n".join(texts)
    return ""


def messages_of(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    messages = body.get("messages")
    if messages is None:
        return []
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise HTTPError(400, "messages must be a list of objects")
    return messages


def prompt_tokens_of(messages: list[dict[str, Any]]) -> int:
    return sum(count_tokens(message_text(m.get("content"))) for m in messages) or 1


def call_ids(model: str, prompt: str, count: int) -> list[str]:
    """Deterministic tool-call ids."""
    return [
        "call_" + hashlib.sha256(f"{model}\x1f{prompt}\x1f{i}".encode()).hexdigest()[:24]
        for i in range(count)
    ]
