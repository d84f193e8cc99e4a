"""Handlers of Ollama's native routes (``/``, ``/api/*``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from foreman.testing import _shapes as shapes
from foreman.testing._content import (
    context_ids,
    count_tokens,
    embedding_vector,
    make_plan,
)
from foreman.testing._exchange import Exchange, HTTPError
from foreman.testing._faults import Fault
from foreman.testing._formats import NDJSON_TYPE, NativeChat, NativeGenerate
from foreman.testing._generation import (
    MID_STREAM_ERROR,
    apply_plain_fault,
    reset_after_flush,
    run_generation,
)
from foreman.testing._host import GenerationHost
from foreman.testing._models import ModelInfo, describe
from foreman.testing._params import (
    call_ids,
    context_length,
    int_option,
    keep_alive_of,
    message_text,
    messages_of,
    options_of,
    prompt_tokens_of,
    require_model,
    stream_of,
    wants_thinking,
)

PULL_MISSING = "pull model manifest: file does not exist"


def find_model(sim: GenerationHost, name: str) -> ModelInfo:
    info = sim.catalog.find(name)
    if info is None:
        raise HTTPError(404, shapes.not_found_message(name))
    return info


async def root(sim: GenerationHost, ex: Exchange, fault: Fault | None) -> None:
    if not await apply_plain_fault(ex, fault):
        ex.respond_text(200, "Ollama is running")


async def version(sim: GenerationHost, ex: Exchange, fault: Fault | None) -> None:
    if not await apply_plain_fault(ex, fault):
        ex.respond_json(200, {"version": shapes.SIMULATED_VERSION})


async def tags(sim: GenerationHost, ex: Exchange, fault: Fault | None) -> None:
    if not await apply_plain_fault(ex, fault):
        models = [shapes.tags_entry(info) for info in sim.catalog.models.values()]
        ex.respond_json(200, {"models": models})


async def ps(sim: GenerationHost, ex: Exchange, fault: Fault | None) -> None:
    if await apply_plain_fault(ex, fault):
        return
    models = []
    for slot, expires_at in sim.resident_slots():  # most recently used first
        info = sim.catalog.find(slot.model)
        if info is not None:
            fraction = sim.slot_vram_fraction(slot)
            models.append(shapes.ps_entry(info, slot.context_length, expires_at, fraction))
    ex.respond_json(200, {"models": models})


async def show(sim: GenerationHost, ex: Exchange, fault: Fault | None) -> None:
    body = ex.json_body()
    info = find_model(sim, require_model(body))
    if not await apply_plain_fault(ex, fault):
        ex.respond_json(200, shapes.show_body(info))


async def _preload(
    sim: GenerationHost,
    ex: Exchange,
    info: ModelInfo,
    ctx: int,
    keep_alive: float,
    render: Callable[[str], dict[str, Any]],
) -> None:
    """Empty prompt: load the model (``done_reason: load``) or, with keep_alive 0, unload."""
    if keep_alive == 0:
        sim.unload(info.name)
        ex.completed = True
        ex.respond_json(200, render("unload"))
        return
    sim.release(await sim.acquire(ex, info, ctx, keep_alive))
    ex.completed = True
    ex.respond_json(200, render("load"))


async def chat(sim: GenerationHost, ex: Exchange, fault: Fault | None) -> None:
    body = ex.json_body()
    name = require_model(body)
    ex.model = name
    info = find_model(sim, name)
    keep_alive = keep_alive_of(body)
    messages = messages_of(body)
    options = options_of(body)
    ctx = context_length(info, options)
    if info.embedding:
        raise HTTPError(400, f'"{name}" does not support chat')
    if not messages:

        def render(reason: str) -> dict[str, Any]:
            return shapes.chat_final(name, sim.now(), reason, None)

        await _preload(sim, ex, info, ctx, keep_alive, render)
        return
    last = messages[-1]
    prompt = message_text(last.get("content"))
    plan = make_plan(
        model=info.name,
        prompt=prompt,
        prompt_tokens=prompt_tokens_of(messages),
        default_tokens=sim.reply_tokens,
        num_predict=int_option(options, "num_predict"),
        think=wants_thinking(body.get("think")),
        tools=body.get("tools"),
        last_role=str(last.get("role", "user")),
        fmt=body.get("format"),
    )
    fmt = NativeChat(name, plan, call_ids(info.name, prompt, len(plan.tool_calls)))
    await run_generation(
        sim,
        ex,
        info=info,
        context_length=ctx,
        keep_alive=keep_alive,
        plan=plan,
        stream=stream_of(body, True),
        fmt=fmt,
        fault=fault,
    )


async def generate(sim: GenerationHost, ex: Exchange, fault: Fault | None) -> None:
    body = ex.json_body()
    name = require_model(body)
    ex.model = name
    info = find_model(sim, name)
    keep_alive = keep_alive_of(body)
    options = options_of(body)
    ctx = context_length(info, options)
    prompt = body.get("prompt") or ""
    if not isinstance(prompt, str):
        raise HTTPError(400, "prompt must be a string")
    if info.embedding:
        raise HTTPError(400, f'"{name}" does not support generate')
    if not prompt:

        def render(reason: str) -> dict[str, Any]:
            return shapes.generate_final(name, sim.now(), reason, None)

        await _preload(sim, ex, info, ctx, keep_alive, render)
        return
    system = body.get("system") if isinstance(body.get("system"), str) else ""
    plan = make_plan(
        model=info.name,
        prompt=prompt,
        prompt_tokens=count_tokens(f"{system} {prompt}"),
        default_tokens=sim.reply_tokens,
        num_predict=int_option(options, "num_predict"),
        think=wants_thinking(body.get("think")),
        fmt=body.get("format"),
    )
    context = context_ids(info.name, prompt, plan.prompt_tokens + plan.eval_count)
    await run_generation(
        sim,
        ex,
        info=info,
        context_length=ctx,
        keep_alive=keep_alive,
        plan=plan,
        stream=stream_of(body, True),
        fmt=NativeGenerate(name, plan, context),
        fault=fault,
    )


def _inputs(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return list(value)
    raise HTTPError(400, "invalid input type")


def _dimensions(info: ModelInfo, body: dict[str, Any]) -> int:
    value = body.get("dimensions")
    if value is None:
        return info.embedding_length
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise HTTPError(400, "dimensions must be a positive integer")
    return min(value, info.embedding_length)


async def embed(sim: GenerationHost, ex: Exchange, fault: Fault | None) -> None:
    body = ex.json_body()
    name = require_model(body)
    ex.model = name
    info = find_model(sim, name)
    keep_alive = keep_alive_of(body)
    ctx = context_length(info, options_of(body))
    inputs = _inputs(body.get("input", []))
    dims = _dimensions(info, body)
    lease = await sim.acquire(ex, info, ctx, keep_alive)
    try:
        vectors = [embedding_vector(info.name, text, dims) for text in inputs]
        if await apply_plain_fault(ex, fault):
            return
    finally:
        sim.release(lease)
    tokens = sum(count_tokens(text) for text in inputs)
    total = sim.now() - ex.received_at
    ex.completed = True
    ex.respond_json(200, shapes.embed_body(name, vectors, total, lease.load, tokens))


async def embeddings(sim: GenerationHost, ex: Exchange, fault: Fault | None) -> None:
    body = ex.json_body()
    name = require_model(body)
    ex.model = name
    info = find_model(sim, name)
    keep_alive = keep_alive_of(body)
    ctx = context_length(info, options_of(body))
    prompt = body.get("prompt") or ""
    if not isinstance(prompt, str):
        raise HTTPError(400, "prompt must be a string")
    lease = await sim.acquire(ex, info, ctx, keep_alive)
    try:
        vector = embedding_vector(info.name, prompt, info.embedding_length) if prompt else []
        if await apply_plain_fault(ex, fault):
            return
    finally:
        sim.release(lease)
    ex.completed = True
    ex.respond_json(200, {"embedding": vector})


async def pull(sim: GenerationHost, ex: Exchange, fault: Fault | None) -> None:
    body = ex.json_body()
    name = require_model(body)
    ex.model = name
    stream = stream_of(body, True)
    spec = sim.catalog.pull_spec(name)
    if spec is None:
        if stream:
            ex.start(200, NDJSON_TYPE)
            ex.write(shapes.ndjson({"status": "pulling manifest"}))
            ex.write(shapes.ndjson(shapes.ollama_error(PULL_MISSING)))
            ex.finish()
        else:
            ex.respond_error(500, PULL_MISSING)
        return
    info = sim.catalog.find(name) or describe(spec, sim.load_time, sim.now())
    lines = shapes.pull_progress(info)
    if not stream:
        await ex.sleep(sim.pull_time)
        if await apply_plain_fault(ex, fault):
            return
        sim.catalog.add(info)
        sim.changed()
        ex.respond_json(200, {"status": "success"})
        return
    interval = sim.pull_time / len(lines)
    if fault is Fault.SLOW:
        interval = max(1.0, interval * 10)
    cut = len(lines) // 2 if fault in (Fault.RESET, Fault.ERROR_MID_STREAM) else None
    ex.start(200, NDJSON_TYPE)
    for index, line in enumerate(lines):
        if index == cut:
            break
        if index:
            await ex.sleep(interval)
        if line["status"] == "success":
            sim.catalog.add(info)
            sim.changed()
        ex.write(shapes.ndjson(line))
    if fault is Fault.RESET:
        await reset_after_flush(ex)
    elif fault is Fault.ERROR_MID_STREAM:
        ex.write(shapes.ndjson(shapes.ollama_error(MID_STREAM_ERROR)))
        ex.finish()
    else:
        ex.finish()


async def delete(sim: GenerationHost, ex: Exchange, fault: Fault | None) -> None:
    body = ex.json_body()
    name = require_model(body)
    if sim.catalog.find(name) is None:
        raise HTTPError(404, f'model "{name}" not found')
    if await apply_plain_fault(ex, fault):
        return
    sim.unload(name)
    sim.catalog.remove(name)
    sim.changed()
    ex.respond(200, b"application/json; charset=utf-8", b"")


async def copy(sim: GenerationHost, ex: Exchange, fault: Fault | None) -> None:
    body = ex.json_body()
    source, destination = body.get("source"), body.get("destination")
    if not isinstance(source, str) or not source or not isinstance(destination, str):
        raise HTTPError(400, "source and destination are required")
    if not destination:
        raise HTTPError(400, "source and destination are required")
    if await apply_plain_fault(ex, fault):
        return
    if not sim.catalog.copy(source, destination, sim.now()):
        raise HTTPError(404, f'model "{source}" not found')
    sim.changed()
    ex.respond(200, b"application/json; charset=utf-8", b"")
