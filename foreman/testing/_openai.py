"""Handlers of the OpenAI-compatible routes (``/v1/*``).

As in Ollama, these stream only with ``"stream": true`` and answer errors in
OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from foreman.testing import _shapes as shapes
from foreman.testing._content import (
    count_tokens,
    embedding_base64,
    embedding_vector,
    make_plan,
)
from foreman.testing._exchange import Exchange, HTTPError
from foreman.testing._faults import Fault
from foreman.testing._formats import OpenAIChat, OpenAICompletion
from foreman.testing._generation import apply_plain_fault, run_generation
from foreman.testing._host import GenerationHost
from foreman.testing._models import ModelInfo
from foreman.testing._native import find_model
from foreman.testing._params import (
    call_ids,
    keep_alive_of,
    message_text,
    messages_of,
    prompt_tokens_of,
    require_model,
)


def _max_tokens(body: Mapping[str, Any]) -> int | None:
    for key in ("max_completion_tokens", "max_tokens"):
        value = body.get(key)
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, int):
                raise HTTPError(400, f"{key} must be an integer")
            return value
    return None


def _thinks(body: Mapping[str, Any]) -> bool:
    effort = body.get("reasoning_effort")
    reasoning = body.get("reasoning")
    if isinstance(reasoning, dict):
        effort = reasoning.get("effort", effort)
    return isinstance(effort, str) and effort not in ("none", "")


def _response_format(body: Mapping[str, Any]) -> object:
    value = body.get("response_format")
    if not isinstance(value, dict):
        return None
    if value.get("type") == "json_object":
        return "json"
    if value.get("type") == "json_schema":
        schema = value.get("json_schema")
        if isinstance(schema, dict) and isinstance(schema.get("schema"), dict):
            return schema["schema"]
        return "json"
    return None


def _include_usage(body: Mapping[str, Any]) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def _model(sim: GenerationHost, ex: Exchange, body: Mapping[str, Any]) -> tuple[str, ModelInfo]:
    name = require_model(body)
    ex.model = name
    return name, find_model(sim, name)


async def chat_completions(sim: GenerationHost, ex: Exchange, fault: Fault | None) -> None:
    body = ex.json_body()
    name, info = _model(sim, ex, body)
    messages = messages_of(body)
    if not messages:
        raise HTTPError(400, "messages is required")
    if info.embedding:
        raise HTTPError(400, f'"{name}" does not support chat')
    keep_alive = keep_alive_of(body)
    last = messages[-1]
    prompt = message_text(last.get("content"))
    plan = make_plan(
        model=info.name,
        prompt=prompt,
        prompt_tokens=prompt_tokens_of(messages),
        default_tokens=sim.reply_tokens,
        num_predict=_max_tokens(body),
        think=_thinks(body),
        tools=body.get("tools"),
        last_role=str(last.get("role", "user")),
        fmt=_response_format(body),
    )
    fmt = OpenAIChat(
        f"chatcmpl-{sim.next_id()}",
        name,
        plan,
        call_ids(info.name, prompt, len(plan.tool_calls)),
        _include_usage(body),
    )
    await run_generation(
        sim,
        ex,
        info=info,
        context_length=info.context_length,
        keep_alive=keep_alive,
        plan=plan,
        stream=body.get("stream") is True,
        fmt=fmt,
        fault=fault,
    )


async def completions(sim: GenerationHost, ex: Exchange, fault: Fault | None) -> None:
    body = ex.json_body()
    name, info = _model(sim, ex, body)
    prompt = body.get("prompt", "")
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise HTTPError(400, "prompt must be a string")
    if info.embedding:
        raise HTTPError(400, f'"{name}" does not support generate')
    plan = make_plan(
        model=info.name,
        prompt=prompt,
        prompt_tokens=count_tokens(prompt),
        default_tokens=sim.reply_tokens,
        num_predict=_max_tokens(body),
    )
    fmt = OpenAICompletion(f"cmpl-{sim.next_id()}", name, plan, _include_usage(body))
    await run_generation(
        sim,
        ex,
        info=info,
        context_length=info.context_length,
        keep_alive=keep_alive_of(body),
        plan=plan,
        stream=body.get("stream") is True,
        fmt=fmt,
        fault=fault,
    )


def _embedding_inputs(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value:
        if all(isinstance(item, str) for item in value):
            return list(value)
        if all(isinstance(item, int) for item in value):
            return [" ".join(str(item) for item in value)]
        if all(isinstance(item, list) for item in value):
            return [" ".join(str(token) for token in item) for item in value]
    raise HTTPError(400, "invalid input type")


async def embeddings(sim: GenerationHost, ex: Exchange, fault: Fault | None) -> None:
    body = ex.json_body()
    name, info = _model(sim, ex, body)
    inputs = _embedding_inputs(body.get("input"))
    encoding = body.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise HTTPError(400, "encoding_format must be float or base64")
    dims = body.get("dimensions") or info.embedding_length
    if isinstance(dims, bool) or not isinstance(dims, int) or dims <= 0:
        raise HTTPError(400, "dimensions must be a positive integer")
    dims = min(dims, info.embedding_length)
    lease = await sim.acquire(ex, info, info.context_length, keep_alive_of(body))
    try:
        vectors = [embedding_vector(info.name, text, dims) for text in inputs]
        if await apply_plain_fault(ex, fault):
            return
    finally:
        sim.release(lease)
    data: list[list[float] | str] = (
        [embedding_base64(v) for v in vectors] if encoding == "base64" else list(vectors)
    )
    tokens = sum(count_tokens(text) for text in inputs)
    ex.completed = True
    ex.respond_json(200, shapes.openai_embeddings(name, data, tokens))


async def models(sim: GenerationHost, ex: Exchange, fault: Fault | None) -> None:
    if await apply_plain_fault(ex, fault):
        return
    data = [shapes.openai_model(info) for info in sim.catalog.models.values()]
    ex.respond_json(200, {"object": "list", "data": data})


async def model(sim: GenerationHost, ex: Exchange, fault: Fault | None) -> None:
    name = ex.path.removeprefix("/v1/models/")
    info = sim.catalog.find(name) if name else None
    if info is None:
        raise HTTPError(404, f'model "{name}" not found')
    if not await apply_plain_fault(ex, fault):
        ex.respond_json(200, shapes.openai_model(info))
