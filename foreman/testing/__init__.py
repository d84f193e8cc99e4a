"""An Ollama simulator for tests and benchmarks (public API).

``OllamaSimulator`` is a ``twisted.web`` server speaking Ollama's HTTP API
with the real response shapes -- native ``/api/*`` routes and the
OpenAI-compatible ``/v1/*`` routes -- so the official ``ollama`` and
``openai`` Python clients (which validate responses) work against it. It
streams NDJSON / SSE one token per chunk at a configurable rate, keeps one
model resident at a time with a configurable load time, can sleep (refuse
connections) and wake, and injects faults. Everything it does is
deterministic, and everything it sees is recorded for assertions.

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
            await sim.sleep(); await sim.wake()  # refused, then back on the same port
            await sim.wait_for(lambda: len(sim.disconnects) == 1, timeout=5)
        finally:
            await sim.close()                    # leaves nothing in the reactor

``sim.resource()`` returns the ``IResource`` to mount in another site instead.
Blocking clients (``ollama.Client(host=sim.url)``, ``openai.OpenAI(base_url=
sim.url + "/v1", api_key="x")``) must run in a thread (``deferToThread``) while
the reactor serves the simulator.

Constructor: ``OllamaSimulator(models=DEFAULT_MODELS, *, token_rate=50.0,
load_time=0.2, reply_tokens=8, reactor=None, required_token=None,
pullable=(), pull_time=0.2, record_limit=10_000)``. ``models`` and ``pullable`` take names or
:class:`ModelSpec` (per-model ``load_time``, ``context_length``,
``embedding``, ``embedding_length``, ...). ``token_rate`` is tokens per
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
    One model (and ``num_ctx``) at a time. A request for another model waits
    until the resident one has no request running, then for the model's
    ``load_time``; no response header is sent before generation starts.
    ``loads`` counts completed loads, ``swaps`` those that replaced a
    resident model. ``keep_alive`` (``"10m"``, seconds, negative = forever,
    0 = unload after the response; default 5 min) schedules the unload.
    ``/api/generate`` without prompt or ``/api/chat`` with ``messages: []``
    preloads (``done_reason: "load"``), or unloads with ``keep_alive: 0``
    (``done_reason: "unload"``).

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
    ``swaps``, ``resident`` / ``loading`` (canonical ``name:tag``),
    ``faults``, ``state()``. ``wait_for(predicate, timeout=5)`` returns a
    Deferred firing when the predicate becomes true (re-checked on every
    change, no polling; TimeoutError otherwise); shortcuts
    ``wait_for_disconnects(count)`` and ``wait_for_requests(count, path)``.
    ``unload(model=None)`` unloads an idle model (a busy one after its
    request). Requests the simulator itself drops (faults, ``sleep``,
    ``close``) are not counted as disconnects.

Faults
    ``inject(fault, count=1, path=None)`` with a :class:`Fault`; ``path=None``
    targets inference routes, ``"*"`` every route, else one exact path.
    ``clear_faults()``; ``reset(unload=False)`` clears records and faults.

Control over HTTP (for a simulator in another process)
    ``GET /_simulator/state[?requests=1]``, ``POST /_simulator/faults``
    ``{"fault": "http_500", "count": 1, "path": null}``, ``DELETE
    /_simulator/faults``, ``POST /_simulator/sleep {"seconds": N}``, ``POST
    /_simulator/reset {"unload": false}``.

Running alone::

    python -m foreman.testing --listen tcp:11434 --models llama3.2,qwen3 \\
        --token-rate 20 --load-time 0.5 [--token T]

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
