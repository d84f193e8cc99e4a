"""An Ollama simulator for tests and benchmarks (public API).

``OllamaSimulator`` is a ``twisted.web`` server speaking Ollama's HTTP API
with the real response shapes -- native ``/api/*`` routes and the
OpenAI-compatible ``/v1/*`` routes -- so the official ``ollama`` and
``openai`` Python clients (which validate responses) work against it. It
streams NDJSON / SSE one token per chunk at a configurable rate, keeps up to
``max_loaded`` models resident (one by default) with a configurable load
time, can sleep (suspended: silent; or off: refusing connections) and wake,
and injects faults. Everything it does is deterministic, and everything it
sees is recorded for assertions.

Usage in a pytest-twisted test::

    import pytest_twisted, treq
    from foreman.testing import Fault, ModelSpec, OllamaSimulator, reply_text

    @pytest_twisted.ensureDeferred
    async def test_chat():
        sim = OllamaSimulator(models=["llama3.2", ModelSpec("qwen3", load_time=1.0)],
                              token_rate=100, load_time=0.1)
        await sim.listen("tcp:0:interface=127.0.0.1")
        try:
            ...  # talk to sim.url
            assert sim.loads == 1 and sim.resident == "llama3.2:latest"
            sim.inject(Fault.HTTP_500)           # the next inference request gets a 500
            await sim.sleep(); await sim.wake()  # silent, then goes on where it stopped
            await sim.sleep(refuse=True); await sim.wake()  # refused, then back
            await sim.wait_for(lambda: len(sim.disconnects) == 1, timeout=5)
        finally:
            await sim.close()                    # leaves nothing in the reactor

``sim.resource()`` returns the ``IResource`` to mount in another site instead.
Blocking clients (``ollama.Client(host=sim.url)``, ``openai.OpenAI(base_url=
sim.url + "/v1", api_key="x")``) must run in a thread (``deferToThread``) while
the reactor serves the simulator.

Constructor: ``OllamaSimulator(models=DEFAULT_MODELS, *, token_rate=50.0,
load_time=0.2, reply_tokens=8, reactor=None, required_token=None,
pullable=(), pull_time=0.2, record_limit=10_000, max_loaded=1,
vram_fraction=1.0)``.
``models`` and ``pullable`` take names or
:class:`ModelSpec` (per-model ``load_time``, ``context_length``,
``embedding``, ``embedding_length``, ``vram_fraction``, ...). ``token_rate`` is tokens per
second (0: as fast as possible). With ``required_token``, every route but
``/_simulator/*`` needs ``Authorization: Bearer <token>`` (else ``401
{"error": "unauthorized"}``).

Deterministic content
    The reply is ``reply_text(model, prompt, n)``: ``n`` words of
    ``VOCABULARY`` chosen by SHA-256 of (``model:tag``, prompt, index), one
    token per chunk, tokens after the first with a leading space. *prompt*
    is the last message's text (chat) or ``prompt`` (generate,
    completions). ``n`` is ``reply_tokens``, or ``options.num_predict`` /
    ``max_tokens`` when given (then ``done_reason``/``finish_reason`` is
    ``length``). ``think: true`` (or ``reasoning_effort`` on /v1) first
    streams ``thinking_text(model, prompt)`` (4 tokens) as
    ``message.thinking`` / ``thinking`` / ``delta.reasoning``. With
    ``tools``, unless the last message is a tool result, the model calls
    the first tool with schema-valid arguments (strings ``"sim-<name>"``,
    integers 1, numbers 1.5, booleans true, first enum value).
    ``format: "json"`` yields ``{"reply": reply_text(...)}``; a JSON schema
    yields a value built the same way. Embeddings are
    ``embedding_vector(model, text, dims)``: unit length, exact float32.
    Prompt token counts are whitespace-separated words.

Residency
    Up to ``max_loaded`` slots (``OLLAMA_MAX_LOADED_MODELS``; a slot is a
    model and its ``num_ctx``: another ``num_ctx`` is another slot) are
    resident at once. Requests are taken in arrival order: one for a
    resident slot runs at once, side by side with the others; one for
    another slot needs a load. Loads happen one at a time, and a request
    waiting to load blocks those behind it. A load takes the model's
    ``load_time``; when ``max_loaded`` slots are resident it first evicts an
    idle one (shortest keep_alive, then soonest expiry, then name), or
    waits until one is idle. No response header is sent before generation
    starts. ``loads`` counts completed loads, ``swaps`` those that evicted a
    slot. Each slot expires ``keep_alive`` after its last request ended
    (``"10m"``, seconds, negative = forever, 0 = unload after the response;
    default 5 min). Native final chunks report ``load_duration``: the whole
    wait (queue included) when the model was loaded for the request, else
    under a millisecond. ``/api/ps`` lists the resident models, most
    recently used first. ``/api/generate`` without prompt or ``/api/chat``
    with ``messages: []`` preloads (``done_reason: "load"``), or unloads
    with ``keep_alive: 0`` (``done_reason: "unload"``).

GPU
    ``/api/ps`` reports every resident model's ``size`` (weights plus a KV
    cache growing with ``num_ctx``) and ``size_vram``: ``size`` times its
    share in VRAM, fixed when it was loaded. That share is the smaller of
    its ``ModelSpec.vram_fraction`` and the simulator's ``vram_fraction``
    (both 1 by default). ``gpu_lost(fraction=0.0)`` is a box that came back
    from sleep without its GPU: models loaded afterwards get at most
    ``fraction`` in VRAM; ``gpu_restored()`` (or ``reset()``) undoes it.
    Models already resident keep their share until reloaded (``unload()``
    them). A model partly on the CPU generates slower: the token interval
    is multiplied by ``1 + 9 * (1 - share)``, ten times when wholly on the
    CPU. ``vram_fraction`` (now), ``gpu_is_lost``,
    ``resident_vram_fraction(model=None)``.

Sleep
    ``sleep(seconds=None, *, refuse=False)`` suspends the box the way a
    suspended machine behaves: the port stays bound but nothing is accepted
    (new connections hang), open connections are neither read nor written,
    and generation, loads and expiries stand still. ``wake()`` goes on where
    it stopped: queued connections are served, streams continue, requests
    sent meanwhile on open connections are answered, and clients that left
    meanwhile are noticed then. ``refuse=True`` is a box that is off: it
    stops listening (connections refused) and drops open connections;
    ``wake()`` listens again on the same port. With ``seconds`` it wakes by
    itself. Models stay resident either way. ``sleeping``, ``sleep_mode``
    (``"suspended"``, ``"refused"`` or None).

Model management
    ``/api/pull`` of a name in ``pullable`` (or already present) streams
    Ollama's progress lines over ``pull_time`` seconds and adds the model to
    ``/api/tags``; any other name fails as in Ollama: ``200`` then
    ``{"error": "pull model manifest: file does not exist"}`` when streaming,
    ``500`` with that error when ``stream: false``. ``/api/delete`` and
    ``/api/copy`` edit the catalog. Unknown models on inference or show get
    ``404 {"error": "model \\"x\\" not found, try pulling it first"}``.

Observations
    ``requests`` (:class:`RecordedRequest`: method, path, query, headers incl.
    ``authorization`` and ``host``, body, json, model, status, times; the
    newest ``record_limit`` are kept), ``disconnects`` (:class:`Disconnect`:
    an inference request whose client left early, with time and phase
    ``waiting``/``streaming``), ``completed``, ``in_flight`` (inference
    requests from arrival to last byte), ``max_in_flight``, ``loads``,
    ``swaps``, ``resident`` (the most recently used) / ``resident_models``
    (most recently used first) / ``loading`` (canonical ``name:tag``),
    ``resident_context_length``, ``expires_at(model=None)`` (epoch seconds,
    ``inf``: never, None: not resident), ``faults``, ``state()``.
    ``wait_for(predicate, timeout=5)`` returns a Deferred firing when the
    predicate becomes true (re-checked on every change, no polling;
    TimeoutError otherwise); shortcuts
    ``wait_for_disconnects(count)`` and ``wait_for_requests(count, path)``.
    ``unload(model=None)`` unloads the idle resident models (or only
    ``model``; a busy one after its requests). Requests the simulator
    itself drops (faults, ``sleep(refuse=True)``, ``close``) are not counted
    as disconnects.

Faults
    ``inject(fault, count=1, path=None)`` with a :class:`Fault`; ``path=None``
    targets inference routes, ``"*"`` every route, else one exact path.
    ``clear_faults()``; ``reset(unload=False)`` clears records and faults.

Control over HTTP (for a simulator in another process)
    ``GET /_simulator/state[?requests=1]``, ``POST /_simulator/faults``
    ``{"fault": "http_500", "count": 1, "path": null}``, ``DELETE
    /_simulator/faults``, ``POST /_simulator/sleep {"seconds": N, "refuse":
    false}`` (answers, then sleeps N seconds), ``POST /_simulator/gpu
    {"lost": true, "fraction": 0.0}`` (``{"lost": false}``: restored),
    ``POST /_simulator/reset {"unload": false}``. The state includes
    ``resident_models``, ``max_loaded``, ``sleep_mode``, ``vram_fraction``
    and ``gpu_lost``.

Running alone::

    python -m foreman.testing --listen tcp:11434 --models llama3.2,qwen3 \\
        --token-rate 20 --load-time 0.5 [--max-loaded N] [--vram-fraction F] [--token T]

For the daemon's ``--simulate`` mode, :func:`make_simulator` builds one with
friendly defaults: models ``llama3.2``, ``qwen3:0.6b``, ``nomic-embed-text``
(pullable: ``gemma3``, ``mistral``), 20 tokens/s, 0.5 s load time; then
``await sim.listen("tcp:0:interface=127.0.0.1")`` and use ``sim.url``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from foreman.testing._content import (
    THINKING_TOKENS,
    VOCABULARY,
    embedding_vector,
    reply_text,
    reply_tokens,
    thinking_text,
    thinking_tokens,
)
from foreman.testing._faults import Fault
from foreman.testing._models import ModelSpec, canonical_name
from foreman.testing._records import Disconnect, RecordedRequest
from foreman.testing._shapes import SIMULATED_VERSION
from foreman.testing._simulator import DEFAULT_MODELS, OllamaSimulator

DEFAULT_PULLABLE: tuple[str, ...] = ("gemma3", "mistral")


def make_simulator(
    models: Iterable[ModelSpec | str] | None = None,
    *,
    token_rate: float = 20.0,
    load_time: float = 0.5,
    token: str | None = None,
    pullable: Iterable[ModelSpec | str] | None = None,
    reply_tokens: int = 24,
    reactor: Any = None,
    max_loaded: int = 1,
    vram_fraction: float = 1.0,
) -> OllamaSimulator:
    """A simulator with demo-friendly defaults (used by ``--simulate`` and ``__main__``)."""
    return OllamaSimulator(
        models=DEFAULT_MODELS if models is None else models,
        token_rate=token_rate,
        load_time=load_time,
        reply_tokens=reply_tokens,
        required_token=token,
        pullable=DEFAULT_PULLABLE if pullable is None else pullable,
        reactor=reactor,
        max_loaded=max_loaded,
        vram_fraction=vram_fraction,
    )


make_simulator_from_options = make_simulator

__all__ = [
    "DEFAULT_MODELS",
    "DEFAULT_PULLABLE",
    "SIMULATED_VERSION",
    "THINKING_TOKENS",
    "VOCABULARY",
    "Disconnect",
    "Fault",
    "ModelSpec",
    "OllamaSimulator",
    "RecordedRequest",
    "canonical_name",
    "embedding_vector",
    "make_simulator",
    "make_simulator_from_options",
    "reply_text",
    "reply_tokens",
    "thinking_text",
    "thinking_tokens",
]
