"""Running one generation: wait for the model, pace the tokens, apply faults.

Shared by native and OpenAI-compatible routes; what differs between them is
only the :class:`~foreman.testing._formats.Format` that renders the bytes.
"""

from __future__ import annotations

from foreman.testing._content import Plan
from foreman.testing._exchange import JSON_TYPE, Exchange
from foreman.testing._faults import Fault
from foreman.testing._formats import Format, pieces
from foreman.testing._host import GenerationHost
from foreman.testing._models import ModelInfo
from foreman.testing._shapes import Stats

MID_STREAM_ERROR = "an error was encountered while running the model: simulated failure"
FLUSH_SECONDS = 0.05
"""How long a RESET fault lets written bytes leave before the connection is reset."""
PROMPT_SECONDS_PER_TOKEN = 0.0002
"""Synthetic prompt evaluation time reported (not waited)."""


async def reset_after_flush(ex: Exchange) -> None:
    """Send what was written (at least the headers), then reset the connection."""
    ex.flush_headers()
    await ex.sleep(FLUSH_SECONDS)
    ex.abort()


async def apply_plain_fault(ex: Exchange, fault: Fault | None) -> bool:
    """Apply a fault to a non-streaming response; True when it replaced the response."""
    if fault is Fault.SLOW:
        await ex.sleep(1.0)
        return False
    if fault is Fault.RESET:
        ex.start(200, JSON_TYPE)
        await reset_after_flush(ex)
        return True
    if fault is Fault.ERROR_MID_STREAM:
        ex.respond_error(500, MID_STREAM_ERROR)
        return True
    return False


def _stats(sim: GenerationHost, ex: Exchange, load: float, started: float, plan: Plan) -> Stats:
    now = sim.now()
    return Stats(
        total=now - ex.received_at,
        load=load,
        prompt_eval_count=plan.prompt_tokens,
        prompt_eval=plan.prompt_tokens * PROMPT_SECONDS_PER_TOKEN,
        eval_count=plan.eval_count,
        eval=now - started,
    )


async def run_generation(
    sim: GenerationHost,
    ex: Exchange,
    *,
    info: ModelInfo,
    context_length: int,
    keep_alive: float,
    plan: Plan,
    stream: bool,
    fmt: Format,
    fault: Fault | None,
) -> None:
    """Load (if needed), then emit one piece per token interval; no headers before that.

    The interval grows for a model partly or wholly on the CPU (``cpu_slowdown``).
    """
    lease = await sim.acquire(ex, info, context_length, keep_alive)
    try:
        interval = sim.token_interval(fault, lease.vram_fraction)
        if stream:
            await _stream(sim, ex, lease.load, interval, plan, fmt, fault)
        else:
            await _whole(sim, ex, lease.load, interval, plan, fmt, fault)
    finally:
        sim.release(lease)


def _cut(count: int, fault: Fault | None) -> int | None:
    """Where a RESET / ERROR_MID_STREAM fault interrupts: after about half the pieces."""
    if fault in (Fault.RESET, Fault.ERROR_MID_STREAM):
        return max(1, count // 2) if count else 0
    return None


async def _stream(
    sim: GenerationHost,
    ex: Exchange,
    load: float,
    interval: float,
    plan: Plan,
    fmt: Format,
    fault: Fault | None,
) -> None:
    items = pieces(plan)
    cut = _cut(len(items), fault)
    started = sim.now()
    ex.start(200, fmt.stream_type)
    for index, piece in enumerate(items):
        if index == cut:
            break
        await ex.sleep(interval)
        data = fmt.chunk(piece, sim.now())
        if data:
            ex.write(data)
    if fault is Fault.RESET:
        await reset_after_flush(ex)
        return
    if fault is Fault.ERROR_MID_STREAM:
        ex.write(fmt.error_chunk(MID_STREAM_ERROR, sim.now()))
        ex.finish()
        return
    ex.write(fmt.final(_stats(sim, ex, load, started, plan), sim.now()))
    ex.completed = True
    ex.finish()


async def _whole(
    sim: GenerationHost,
    ex: Exchange,
    load: float,
    interval: float,
    plan: Plan,
    fmt: Format,
    fault: Fault | None,
) -> None:
    items = pieces(plan)
    cut = _cut(len(items), fault)
    started = sim.now()
    await ex.sleep(interval * (len(items) if cut is None else cut))
    if fault is Fault.RESET:
        ex.start(200, JSON_TYPE)
        await reset_after_flush(ex)
        return
    if fault is Fault.ERROR_MID_STREAM:
        ex.respond_error(500, MID_STREAM_ERROR)
        return
    body = fmt.whole(_stats(sim, ex, load, started, plan), sim.now())
    ex.completed = True
    ex.respond_json(200, body)
