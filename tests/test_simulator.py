"""The Ollama simulator over real loopback HTTP (treq): routes, residency, faults, pacing."""

from __future__ import annotations

import base64
import json
import math
import struct
import time
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import Any

import pytest
import pytest_twisted
import treq
from treq.client import HTTPClient
from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool, ResponseFailed, ResponseNeverReceived
from twisted.web.server import Site

from foreman.testing import (
    Fault,
    ModelSpec,
    OllamaSimulator,
    embedding_vector,
    reply_text,
    thinking_text,
)
from tests.harness import running_simulator

reactor: Any = _reactor

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city"],
        },
    },
}


def running(**kwargs: Any) -> AbstractAsyncContextManager[OllamaSimulator]:
    """A listening simulator, unpaced (tokens as fast as possible)."""
    return running_simulator(**{"token_rate": 0.0, "reply_tokens": 4, **kwargs})


@pytest.fixture
def http() -> Any:
    """treq client without persistent connections: nothing lingers after a test."""
    return HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))


def sleep(seconds: float) -> Deferred[None]:
    return deferLater(reactor, seconds, lambda: None)


def post(http: Any, sim: OllamaSimulator, path: str, body: Any, **kw: Any) -> Deferred[Any]:
    d: Deferred[Any] = http.post(sim.url + path, data=json.dumps(body).encode(), **kw)
    return d


async def post_json(http: Any, sim: OllamaSimulator, path: str, body: Any) -> tuple[int, Any]:
    response = await post(http, sim, path, body)
    return response.code, json.loads(await response.content())


async def collect(response: Any) -> list[tuple[float, bytes]]:
    arrivals: list[tuple[float, bytes]] = []
    await treq.collect(response, lambda data: arrivals.append((time.monotonic(), data)))
    return arrivals


def ndjson_lines(arrivals: list[tuple[float, bytes]]) -> list[dict[str, Any]]:
    raw = b"".join(data for _, data in arrivals)
    return [json.loads(line) for line in raw.split(b"\n") if line]


def sse_events(raw: bytes) -> list[str]:
    return [block.removeprefix(b"data: ").decode() for block in raw.split(b"\n\n") if block]


# ----------------------------------------------------------------- metadata


@pytest_twisted.ensureDeferred
async def test_metadata_routes(http: Any) -> None:
    async with running() as sim:
        root = await http.get(sim.url + "/")
        assert (root.code, await root.text()) == (200, "Ollama is running")
        head = await http.head(sim.url + "/")
        assert head.code == 200 and await head.content() == b""
        version = await (await http.get(sim.url + "/api/version")).json()
        assert isinstance(version["version"], str)
        tags = await (await http.get(sim.url + "/api/tags")).json()
        names = [m["name"] for m in tags["models"]]
        assert names == ["llama3.2:latest", "qwen3:0.6b", "nomic-embed-text:latest"]
        entry = tags["models"][0]
        assert set(entry) == {"name", "model", "modified_at", "size", "digest", "details"}
        assert set(entry["details"]) == {
            "parent_model",
            "format",
            "family",
            "families",
            "parameter_size",
            "quantization_level",
        }
        assert (await (await http.get(sim.url + "/api/ps")).json()) == {"models": []}
        code, show = await post_json(http, sim, "/api/show", {"model": "qwen3:0.6b"})
        assert code == 200 and "thinking" in show["capabilities"]
        assert {"modelfile", "parameters", "template", "details", "model_info"} <= set(show)
        models = await (await http.get(sim.url + "/v1/models")).json()
        assert models["object"] == "list" and models["data"][0]["id"] == "llama3.2:latest"
        one = await (await http.get(sim.url + "/v1/models/qwen3:0.6b")).json()
        assert one == {**one, "id": "qwen3:0.6b", "object": "model"}


@pytest_twisted.ensureDeferred
async def test_errors_have_ollama_and_openai_shapes(http: Any) -> None:
    async with running() as sim:
        code, body = await post_json(
            http, sim, "/api/chat", {"model": "ghost", "messages": [{"role": "user"}]}
        )
        assert (code, body) == (404, {"error": 'model "ghost" not found, try pulling it first'})
        code, body = await post_json(http, sim, "/api/show", {"model": "ghost"})
        assert code == 404 and "not found" in body["error"]
        code, body = await post_json(
            http, sim, "/v1/chat/completions", {"model": "ghost", "messages": [{"role": "user"}]}
        )
        assert code == 404 and body["error"]["type"] == "not_found_error"
        assert "ghost" in body["error"]["message"]
        missing = await (await http.get(sim.url + "/v1/models/ghost")).json()
        assert "message" in missing["error"]
        bad = await http.post(sim.url + "/api/generate", data=b"{nope")
        assert bad.code == 400 and "error" in await bad.json()
        code, body = await post_json(http, sim, "/api/chat", {"messages": []})
        assert (code, body) == (400, {"error": "model is required"})
        code, body = await post_json(http, sim, "/api/chat", {"model": "nomic-embed-text"})
        assert code == 400 and "does not support chat" in body["error"]
        wrong = await http.get(sim.url + "/api/chat")
        assert wrong.code == 405 and await wrong.text() == "405 method not allowed"
        unknown = await http.get(sim.url + "/api/nothing")
        assert unknown.code == 404
        code, body = await post_json(
            http, sim, "/api/generate", {"model": "llama3.2", "prompt": "x", "keep_alive": "later"}
        )
        assert code == 400


# ---------------------------------------------------------------- inference


@pytest_twisted.ensureDeferred
async def test_chat_stream_chunks_and_final_stats(http: Any) -> None:
    async with running(reply_tokens=5) as sim:
        messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
        response = await post(http, sim, "/api/chat", {"model": "llama3.2", "messages": messages})
        assert response.headers.getRawHeaders(b"content-type") == [b"application/x-ndjson"]
        lines = ndjson_lines(await collect(response))
        assert len(lines) == 6
        assert all(line["done"] is False for line in lines[:-1])
        assert all(line["message"]["role"] == "assistant" for line in lines)
        text = "".join(line["message"]["content"] for line in lines)
        assert text == reply_text("llama3.2", "hi", 5)
        final = lines[-1]
        assert final["done"] is True and final["done_reason"] == "stop"
        assert final["model"] == "llama3.2"
        datetime.fromisoformat(final["created_at"])
        for key in (
            "total_duration",
            "load_duration",
            "prompt_eval_count",
            "prompt_eval_duration",
            "eval_count",
            "eval_duration",
        ):
            assert isinstance(final[key], int), key
        assert final["eval_count"] == 5 and final["prompt_eval_count"] == 3
        assert final["load_duration"] >= 40_000_000  # waited for the 0.05 s load
        assert sim.completed == 1 and sim.in_flight == 0 and sim.max_in_flight == 1


@pytest_twisted.ensureDeferred
async def test_non_stream_generate_num_predict_and_context(http: Any) -> None:
    async with running() as sim:
        code, body = await post_json(
            http,
            sim,
            "/api/generate",
            {
                "model": "qwen3:0.6b",
                "prompt": "why",
                "stream": False,
                "options": {"num_predict": 7},
            },
        )
        assert code == 200 and body["done"] is True and body["done_reason"] == "length"
        assert body["response"] == reply_text("qwen3:0.6b", "why", 7)
        assert body["eval_count"] == 7 and len(body["context"]) == 8
        response = await post(http, sim, "/api/generate", {"model": "qwen3:0.6b", "prompt": "why"})
        lines = ndjson_lines(await collect(response))
        assert "".join(line["response"] for line in lines) == reply_text("qwen3:0.6b", "why", 4)
        assert "context" in lines[-1] and "context" not in lines[0]


@pytest_twisted.ensureDeferred
async def test_think_and_tools(http: Any) -> None:
    async with running() as sim:
        body: dict[str, Any] = {
            "model": "qwen3:0.6b",
            "messages": [{"role": "user", "content": "weather?"}],
            "think": True,
            "tools": [WEATHER_TOOL],
        }
        lines = ndjson_lines(await collect(await post(http, sim, "/api/chat", body)))
        thinking = "".join(line["message"].get("thinking", "") for line in lines)
        assert thinking == thinking_text("qwen3:0.6b", "weather?")
        calls = [c for line in lines for c in line["message"].get("tool_calls", [])]
        assert len(calls) == 1
        assert calls[0]["function"]["name"] == "get_weather"
        assert calls[0]["function"]["arguments"] == {"city": "sim-city"}
        body["messages"] += [
            {"role": "assistant", "content": "", "tool_calls": calls},
            {"role": "tool", "content": "sunny", "tool_name": "get_weather"},
        ]
        body["stream"] = False
        code, answer = await post_json(http, sim, "/api/chat", body)
        assert code == 200 and answer["message"]["content"] == reply_text("qwen3:0.6b", "sunny", 4)
        assert "tool_calls" not in answer["message"]


@pytest_twisted.ensureDeferred
async def test_embeddings_native_and_openai_base64(http: Any) -> None:
    async with running() as sim:
        code, body = await post_json(
            http, sim, "/api/embed", {"model": "nomic-embed-text", "input": ["a", "b c"]}
        )
        assert code == 200 and body["prompt_eval_count"] == 3
        assert body["embeddings"] == [
            embedding_vector("nomic-embed-text", "a"),
            embedding_vector("nomic-embed-text", "b c"),
        ]
        assert sim.resident == "nomic-embed-text:latest" and sim.loads == 1
        code, legacy = await post_json(
            http, sim, "/api/embeddings", {"model": "nomic-embed-text", "prompt": "a"}
        )
        assert legacy == {"embedding": embedding_vector("nomic-embed-text", "a")}
        code, oai = await post_json(
            http,
            sim,
            "/v1/embeddings",
            {"model": "nomic-embed-text", "input": "a", "encoding_format": "base64"},
        )
        assert code == 200 and oai["object"] == "list" and oai["usage"]["prompt_tokens"] == 1
        raw = base64.b64decode(oai["data"][0]["embedding"])
        assert list(struct.unpack(f"<{len(raw) // 4}f", raw)) == body["embeddings"][0]


@pytest_twisted.ensureDeferred
async def test_openai_routes_over_http(http: Any) -> None:
    async with running() as sim:
        body = {"model": "llama3.2", "messages": [{"role": "user", "content": "yo"}]}
        code, completion = await post_json(http, sim, "/v1/chat/completions", body)
        assert code == 200 and completion["object"] == "chat.completion"
        assert completion["choices"][0]["message"]["content"] == reply_text("llama3.2", "yo", 4)
        assert completion["usage"]["completion_tokens"] == 4
        response = await post(
            http,
            sim,
            "/v1/chat/completions",
            {**body, "stream": True, "stream_options": {"include_usage": True}},
        )
        assert response.headers.getRawHeaders(b"content-type") == [b"text/event-stream"]
        events = sse_events(await response.content())
        assert events[-1] == "[DONE]"
        chunks = [json.loads(e) for e in events[:-1]]
        assert all(c["object"] == "chat.completion.chunk" for c in chunks)
        assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
        assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] > 4
        code, text = await post_json(
            http, sim, "/v1/completions", {"model": "llama3.2", "prompt": "yo", "max_tokens": 2}
        )
        assert text["object"] == "text_completion"
        assert text["choices"][0] == {
            "text": reply_text("llama3.2", "yo", 2),
            "index": 0,
            "logprobs": None,
            "finish_reason": "length",
        }


# ---------------------------------------------------------------- residency


@pytest_twisted.ensureDeferred
async def test_loads_swaps_and_ps(http: Any) -> None:
    async with running(models=["llama3.2", ModelSpec("qwen3", load_time=0.2)]) as sim:
        chat = {"messages": [{"role": "user", "content": "x"}], "stream": False}
        for model in ("llama3.2", "llama3.2", "qwen3", "llama3.2:latest"):
            code, _ = await post_json(http, sim, "/api/chat", {"model": model, **chat})
            assert code == 200
        assert (sim.loads, sim.swaps, sim.resident) == (3, 2, "llama3.2:latest")
        ps = (await (await http.get(sim.url + "/api/ps")).json())["models"]
        assert [m["name"] for m in ps] == ["llama3.2:latest"]
        entry = ps[0]
        assert entry["context_length"] == 4096 and entry["size_vram"] == entry["size"]
        expires = datetime.fromisoformat(entry["expires_at"]).timestamp()
        assert 250 < expires - time.time() < 350  # the default five minutes
        started = time.monotonic()
        response = await post(http, sim, "/api/chat", {"model": "qwen3", **chat})
        assert time.monotonic() - started >= 0.18  # no headers before the 0.2 s load
        assert (await response.json())["load_duration"] >= 180_000_000
        code, _ = await post_json(
            http, sim, "/api/chat", {"model": "qwen3", "options": {"num_ctx": 8192}, **chat}
        )
        assert sim.resident_context_length == 8192 and sim.swaps == 4


@pytest_twisted.ensureDeferred
async def test_keep_alive_zero_short_and_forever(http: Any) -> None:
    async with running() as sim:
        base = {"model": "llama3.2", "prompt": "x", "stream": False}
        await post_json(http, sim, "/api/generate", {**base, "keep_alive": 0})
        assert sim.resident is None and sim.loads == 1
        await post_json(http, sim, "/api/generate", {**base, "keep_alive": 0.2})
        assert sim.resident == "llama3.2:latest"
        await sim.wait_for(lambda: sim.resident is None, timeout=3)
        await post_json(http, sim, "/api/generate", {**base, "keep_alive": -1})
        ps = (await (await http.get(sim.url + "/api/ps")).json())["models"]
        assert datetime.fromisoformat(ps[0]["expires_at"]).year > 2200
        await post_json(http, sim, "/api/generate", {**base, "keep_alive": "10m"})
        ps = (await (await http.get(sim.url + "/api/ps")).json())["models"]
        expires = datetime.fromisoformat(ps[0]["expires_at"]).timestamp()
        assert 550 < expires - time.time() < 650


@pytest_twisted.ensureDeferred
async def test_preload_and_unload(http: Any) -> None:
    async with running() as sim:
        code, body = await post_json(http, sim, "/api/generate", {"model": "llama3.2"})
        assert code == 200 and body["done"] is True and body["done_reason"] == "load"
        assert sim.resident == "llama3.2:latest" and sim.loads == 1
        code, body = await post_json(
            http, sim, "/api/chat", {"model": "llama3.2", "messages": [], "keep_alive": 0}
        )
        assert body["done_reason"] == "unload" and body["message"]["role"] == "assistant"
        assert sim.resident is None
        code, body = await post_json(http, sim, "/api/chat", {"model": "qwen3:0.6b"})
        assert body["done_reason"] == "load" and sim.resident == "qwen3:0.6b"


@pytest_twisted.ensureDeferred
async def test_one_model_at_a_time_with_concurrent_requests(http: Any) -> None:
    async with running(token_rate=50.0, load_time=0.1) as sim:
        chat = {"messages": [{"role": "user", "content": "x"}], "stream": False}
        pending = []
        for count, model in enumerate(("llama3.2", "qwen3:0.6b", "llama3.2"), start=1):
            body = {"model": model, **chat}
            pending.append(ensureDeferred(post_json(http, sim, "/api/chat", body)))
            await sim.wait_for(lambda n=count: sim.in_flight == n)  # type: ignore[misc]
        results = [await d for d in pending]
        assert [code for code, _ in results] == [200, 200, 200]
        assert sim.max_in_flight == 3 and sim.in_flight == 0
        assert (sim.loads, sim.swaps) == (3, 2)  # FIFO: llama, qwen, llama
        assert results[2][1]["load_duration"] > results[0][1]["load_duration"]


def outcome(d: Deferred[Any]) -> list[Any]:
    """Filled with the result once ``d`` settles (``d.called`` is true while it is chained)."""
    seen: list[Any] = []

    def note(result: Any) -> Any:
        seen.append(result)
        return result

    d.addBoth(note)
    return seen


def ps_of(body: dict[str, Any]) -> list[tuple[str, float]]:
    """(name, seconds until expiry) of each /api/ps entry, in order."""
    now = time.time()
    return [
        (m["name"], datetime.fromisoformat(m["expires_at"]).timestamp() - now)
        for m in body["models"]
    ]


@pytest_twisted.ensureDeferred
async def test_several_resident_models_ps_eviction_and_expiry(http: Any) -> None:
    models = ["llama3.2", "qwen3:0.6b", ModelSpec("gemma3", load_time=0.2)]
    async with running(models=models, max_loaded=2) as sim:

        async def ask(model: str, keep_alive: object) -> dict[str, Any]:
            body = {"model": model, "prompt": "x", "stream": False, "keep_alive": keep_alive}
            code, answer = await post_json(http, sim, "/api/generate", body)
            assert code == 200 and isinstance(answer, dict)
            return answer

        first = await ask("llama3.2", "10m")
        assert first["load_duration"] >= 40_000_000  # waited for the 0.05 s load
        warm = await ask("llama3.2", "10m")
        assert 0 < warm["load_duration"] < 1_000_000  # resident: no load
        await ask("qwen3:0.6b", "5m")
        assert (sim.loads, sim.swaps) == (2, 0)  # room for both
        ps = (await (await http.get(sim.url + "/api/ps")).json())["models"]
        assert [m["name"] for m in ps] == ["qwen3:0.6b", "llama3.2:latest"]  # recent first
        assert all(m["size_vram"] == m["size"] > 0 for m in ps)
        expiries = [seconds for _, seconds in ps_of({"models": ps})]
        assert 250 < expiries[0] < 350 and 550 < expiries[1] < 650
        assert sim.resident_models == ("qwen3:0.6b", "llama3.2:latest")
        assert sim.resident == "qwen3:0.6b" and sim.is_resident("llama3.2")

        # a third model evicts the idle one with the shortest keep_alive (qwen3), not
        # the least recently used (llama3.2)
        started = time.monotonic()
        third = await ask("gemma3", -1)
        assert time.monotonic() - started >= 0.18
        assert third["load_duration"] >= 180_000_000
        assert (sim.loads, sim.swaps) == (3, 1)
        ps = (await (await http.get(sim.url + "/api/ps")).json())["models"]
        assert [m["name"] for m in ps] == ["gemma3:latest", "llama3.2:latest"]
        assert datetime.fromisoformat(ps[0]["expires_at"]).year > 2200  # never
        state = await (await http.get(sim.url + "/_simulator/state")).json()
        assert state["resident_models"] == ["gemma3:latest", "llama3.2:latest"]
        assert state["max_loaded"] == 2 and state["resident"] == "gemma3:latest"

        # llama3.2 expires on its own keep_alive; gemma3 stays
        await ask("llama3.2", 0.3)
        assert sim.expires_at("llama3.2") == pytest.approx(sim.now() + 0.3, abs=0.1)
        await sim.wait_for(lambda: sim.resident_models == ("gemma3:latest",), timeout=3)
        ps = (await (await http.get(sim.url + "/api/ps")).json())["models"]
        assert [m["name"] for m in ps] == ["gemma3:latest"]
        assert sim.expires_at("llama3.2") is None and sim.expires_at() == math.inf


@pytest_twisted.ensureDeferred
async def test_resident_models_run_side_by_side(http: Any) -> None:
    async with running(token_rate=20.0, max_loaded=2, load_time=0.1) as sim:
        for model in ("llama3.2", "qwen3:0.6b"):  # preload both
            code, body = await post_json(http, sim, "/api/chat", {"model": model})
            assert body["done_reason"] == "load"
        chat = {"messages": [{"role": "user", "content": "x"}], "stream": False}
        pending = [
            ensureDeferred(post_json(http, sim, "/api/chat", {"model": model, **chat}))
            for model in ("llama3.2", "qwen3:0.6b")
        ]
        results = [await d for d in pending]
        assert [code for code, _ in results] == [200, 200]
        assert all(body["load_duration"] < 1_000_000 for _, body in results)
        first, second = sim.requests[-2:]
        assert first.finished_at is not None and second.finished_at is not None
        assert second.received_at < first.finished_at  # they ran at the same time
        assert sim.max_in_flight == 2 and (sim.loads, sim.swaps) == (2, 0)
        code, body = await post_json(
            http, sim, "/api/embed", {"model": "nomic-embed-text", "input": "a"}
        )
        assert code == 200 and body["load_duration"] >= 90_000_000
        assert (sim.loads, sim.swaps) == (3, 1) and len(sim.resident_models) == 2
        code, body = await post_json(
            http, sim, "/api/embed", {"model": "nomic-embed-text", "input": "a"}
        )
        assert body["load_duration"] < 1_000_000


# ------------------------------------------------------------------- faults


@pytest_twisted.ensureDeferred
async def test_fault_http_500_and_paths(http: Any) -> None:
    async with running() as sim:
        body = {"model": "llama3.2", "prompt": "x", "stream": False}
        sim.inject(Fault.HTTP_500, count=2)
        assert (await post(http, sim, "/api/tags", {})).code == 405  # not inference: no fault
        for _ in range(2):
            code, error = await post_json(http, sim, "/api/generate", body)
            assert code == 500 and "error" in error
        code, openai_error = await post_json(
            http, sim, "/v1/chat/completions", {"model": "llama3.2", "messages": [{"role": "u"}]}
        )
        assert code == 200
        sim.inject("http_500", path="/api/tags")
        assert (await http.get(sim.url + "/api/tags")).code == 500
        assert (await http.get(sim.url + "/api/tags")).code == 200
        sim.inject(Fault.HTTP_500)
        code, openai_error = await post_json(
            http, sim, "/v1/chat/completions", {"model": "llama3.2", "messages": [{"role": "u"}]}
        )
        assert code == 500 and "message" in openai_error["error"]
        sim.inject(Fault.HANG, count=None)
        sim.clear_faults()
        assert sim.faults == []


@pytest_twisted.ensureDeferred
async def test_fault_hang_until_client_gives_up(http: Any) -> None:
    async with running() as sim:
        sim.inject(Fault.HANG)
        d = post(http, sim, "/api/chat", {"model": "llama3.2", "messages": [{"role": "u"}]})
        answered: list[object] = []

        def note(result: object) -> object:
            answered.append(result)
            return result

        d.addBoth(note)
        await sim.wait_for(lambda: sim.in_flight == 1)
        await sleep(0.2)
        assert answered == []
        d.cancel()
        with pytest.raises(Exception):  # noqa: B017 - cancellation surfaces as a failure
            await d
        await sim.wait_for_disconnects(1)
        assert sim.disconnects[0].phase == "waiting" and sim.disconnects[0].path == "/api/chat"
        assert sim.in_flight == 0


@pytest_twisted.ensureDeferred
async def test_fault_reset_mid_stream_and_after_headers(http: Any) -> None:
    async with running(reply_tokens=6) as sim:
        sim.inject(Fault.RESET)
        response = await post(
            http, sim, "/api/chat", {"model": "llama3.2", "messages": [{"role": "u"}]}
        )
        assert response.code == 200
        arrivals: list[tuple[float, bytes]] = []
        with pytest.raises(ResponseFailed):
            await treq.collect(response, lambda data: arrivals.append((0.0, data)))
        lines = ndjson_lines(arrivals)
        assert 1 <= len(lines) < 7 and all(not line["done"] for line in lines)
        sim.inject(Fault.RESET, path="/api/version")
        response = await http.get(sim.url + "/api/version")
        with pytest.raises(ResponseFailed):
            await response.content()
        assert sim.disconnects == []  # the simulator dropped them, not the client


@pytest_twisted.ensureDeferred
async def test_fault_error_mid_stream(http: Any) -> None:
    async with running(reply_tokens=6) as sim:
        sim.inject(Fault.ERROR_MID_STREAM, count=2)
        response = await post(http, sim, "/api/generate", {"model": "llama3.2", "prompt": "p"})
        assert response.code == 200
        lines = ndjson_lines(await collect(response))
        assert len(lines) == 4 and "error" in lines[-1]
        assert all("response" in line for line in lines[:-1])
        code, body = await post_json(
            http, sim, "/api/generate", {"model": "llama3.2", "prompt": "p", "stream": False}
        )
        assert code == 500 and "error" in body
        assert sim.completed == 0


@pytest_twisted.ensureDeferred
async def test_fault_slow_stream(http: Any) -> None:
    async with running(token_rate=100.0) as sim:
        sim.inject(Fault.SLOW)
        started = time.monotonic()
        code, _ = await post_json(
            http,
            sim,
            "/api/generate",
            {"model": "llama3.2", "prompt": "p", "stream": False, "options": {"num_predict": 1}},
        )
        assert code == 200 and time.monotonic() - started >= 0.9


# --------------------------------------------------- disconnects and pacing


@pytest_twisted.ensureDeferred
async def test_client_disconnect_mid_stream_stops_generation(http: Any) -> None:
    async with running(token_rate=20.0) as sim:
        body = {
            "model": "llama3.2",
            "messages": [{"role": "user", "content": "long"}],
            "options": {"num_predict": 200},
        }
        response = await post(http, sim, "/api/chat", body, unbuffered=True)
        received: list[bytes] = []

        def got(data: bytes) -> None:
            received.append(data)
            if len(received) == 3:
                raise RuntimeError("enough")  # treq drops the connection: the client leaves

        with pytest.raises(RuntimeError):
            await treq.collect(response, got)
        await sim.wait_for_disconnects(1, timeout=3)
        gone = sim.disconnects[0]
        assert (gone.phase, gone.model, gone.path) == ("streaming", "llama3.2", "/api/chat")
        assert sim.in_flight == 0 and sim.completed == 0


@pytest_twisted.ensureDeferred
async def test_client_disconnect_while_model_loads(http: Any) -> None:
    async with running(load_time=0.5) as sim:
        d = post(http, sim, "/api/chat", {"model": "llama3.2", "messages": [{"role": "u"}]})
        await sim.wait_for(lambda: sim.loading == "llama3.2:latest")
        d.cancel()
        d.addErrback(lambda _: None)
        await sim.wait_for_disconnects(1)
        assert sim.disconnects[0].phase == "waiting"
        await sim.wait_for(lambda: sim.resident == "llama3.2:latest", timeout=3)
        assert sim.completed == 0 and sim.in_flight == 0


@pytest_twisted.ensureDeferred
async def test_tokens_are_paced_one_chunk_each(http: Any) -> None:
    async with running(token_rate=20.0, reply_tokens=6) as sim:
        response = await post(
            http, sim, "/api/generate", {"model": "llama3.2", "prompt": "p", "keep_alive": -1}
        )
        arrivals = await collect(response)
        lines = ndjson_lines(arrivals)
        assert len(lines) == 7
        span = arrivals[-1][0] - arrivals[0][0]
        assert 0.15 < span < 2.0  # 5 intervals of 50 ms between first and last token
        assert len(arrivals) >= 4  # chunks leave one by one, not in a single burst
        assert lines[-1]["eval_duration"] >= 250_000_000


# -------------------------------------------------- sleep, auth, control, misc


@pytest_twisted.ensureDeferred
async def test_sleep_refuses_then_wake_on_same_port(http: Any) -> None:
    async with running() as sim:
        url, port = sim.url, sim.port
        await sim.sleep(refuse=True)
        assert sim.sleeping
        with pytest.raises(ConnectionRefusedError):
            await http.get(url + "/api/version")
        await sim.wake()
        assert sim.port == port and (await http.get(url + "/api/version")).code == 200
        await sim.sleep(0.3, refuse=True)
        with pytest.raises(ConnectionRefusedError):
            await http.get(url + "/api/version")
        await sim.wait_for(lambda: not sim.sleeping, timeout=3)
        assert (await http.get(url + "/api/version")).code == 200


@pytest_twisted.ensureDeferred
async def test_suspended_new_connection_hangs_until_wake(http: Any) -> None:
    async with running() as sim:
        await sim.sleep()
        assert sim.sleeping and sim.sleep_mode == "suspended" and sim.port is not None
        with pytest.raises(ResponseNeverReceived):  # connected, but nothing answers
            await http.get(sim.url + "/api/version", timeout=0.3)
        pending = http.get(sim.url + "/api/tags")
        answered = outcome(pending)
        await sleep(0.3)
        assert answered == [] and sim.requests == []  # not even read
        await sim.wake()
        assert not sim.sleeping and sim.sleep_mode is None
        response = await pending
        assert response.code == 200 and "models" in await response.json()


@pytest_twisted.ensureDeferred
async def test_suspended_stream_stops_then_completes(http: Any) -> None:
    async with running(token_rate=20.0) as sim:
        body = {
            "model": "llama3.2",
            "messages": [{"role": "user", "content": "long"}],
            "options": {"num_predict": 12},
        }
        response = await post(http, sim, "/api/chat", body, unbuffered=True)
        received: list[bytes] = []
        third: Deferred[None] = Deferred()

        def got(data: bytes) -> None:
            received.append(data)
            if b"".join(received).count(b"\n") >= 3 and not third.called:
                third.callback(None)

        reading = treq.collect(response, got)
        await third
        await sim.sleep()
        await sleep(0.1)  # what had left already arrives
        count = len(received)
        await sleep(0.5)  # ten token intervals
        assert len(received) == count < 13
        assert sim.in_flight == 1 and sim.disconnects == [] and sim.completed == 0
        await sim.wake()
        await reading
        lines = ndjson_lines([(0.0, data) for data in received])
        assert len(lines) == 13 and lines[-1]["done"] is True
        text = "".join(line["message"]["content"] for line in lines)
        assert text == reply_text("llama3.2", "long", 12)
        assert sim.completed == 1 and sim.disconnects == []


@pytest_twisted.ensureDeferred
async def test_suspended_keep_alive_connection_answers_after_wake() -> None:
    pool = HTTPConnectionPool(reactor, persistent=True)
    client = HTTPClient(Agent(reactor, pool=pool))
    try:
        async with running(load_time=0.3) as sim:
            first = await client.get(sim.url + "/api/version")
            assert first.code == 200
            await first.content()  # the connection goes back to the pool
            loading = post(
                client,
                sim,
                "/api/generate",
                {"model": "llama3.2", "prompt": "x", "stream": False},
            )
            await sim.wait_for(lambda: sim.loading == "llama3.2:latest")
            await sim.sleep()
            pending = client.get(sim.url + "/api/ps")  # on the open connection, if free
            answered, loaded = outcome(pending), outcome(loading)
            await sleep(0.5)  # the load would have finished by now
            assert answered == [] and loaded == []
            assert sim.loading == "llama3.2:latest" and sim.loads == 0  # loads stand still
            assert [r.path for r in sim.requests] == ["/api/version", "/api/generate"]
            await sim.wake()
            answer = await (await loading).json()
            assert answer["done"] is True
            assert answer["load_duration"] >= 450_000_000  # the suspension included
            assert (await pending).code == 200
            assert [r.path for r in sim.requests][-1] == "/api/ps"
    finally:
        await pool.closeCachedConnections()


class RawClient(Protocol):
    """A bare TCP client: sends bytes, notes what comes back and when it is gone."""

    def __init__(self) -> None:
        self.data = b""
        self.first: Deferred[None] = Deferred()
        self.lost: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        if not self.first.called:
            self.first.callback(None)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost.callback(None)


@pytest_twisted.ensureDeferred
async def test_client_leaving_while_suspended_is_noticed_after_wake() -> None:
    async with running(token_rate=20.0) as sim:
        assert sim.port is not None
        client = RawClient()
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", sim.port), client)
        body = json.dumps({"model": "llama3.2", "prompt": "p", "options": {"num_predict": 50}})
        head = f"POST /api/generate HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n"
        assert client.transport is not None
        client.transport.write(head.encode() + body.encode())
        await client.first
        await sim.sleep()
        client.transport.loseConnection()
        await client.lost
        await sleep(0.2)
        assert sim.disconnects == [] and sim.in_flight == 1  # a suspended box notices nothing
        await sim.wake()
        await sim.wait_for_disconnects(1)
        assert sim.disconnects[0].phase == "streaming" and sim.in_flight == 0
        assert sim.completed == 0


@pytest_twisted.ensureDeferred
async def test_suspended_box_expires_nothing_until_wake(http: Any) -> None:
    async with running() as sim:
        body = {"model": "llama3.2", "prompt": "x", "stream": False, "keep_alive": 0.2}
        await post_json(http, sim, "/api/generate", body)
        await sim.sleep()
        await sleep(0.4)
        assert sim.resident == "llama3.2:latest"  # its keep_alive ran out while suspended
        await sim.wake()
        await sim.wait_for(lambda: sim.resident is None, timeout=1)


@pytest_twisted.ensureDeferred
async def test_close_while_suspended_leaves_nothing(http: Any) -> None:
    sim = OllamaSimulator(token_rate=20.0, load_time=0.05)
    await sim.listen("tcp:0:interface=127.0.0.1")
    response = await post(
        http, sim, "/api/chat", {"model": "llama3.2", "messages": [{"role": "u"}]}
    )
    reading = treq.collect(response, lambda data: None)
    await sim.sleep(30)
    backlog = http.get(sim.url + "/api/version")  # queued by the kernel, never accepted
    await sleep(0.1)
    await sim.close()
    with pytest.raises(ResponseFailed):
        await reading
    with pytest.raises(Exception):  # noqa: B017 - reset or closed, as the kernel decides
        await backlog
    assert sim.disconnects == []


@pytest_twisted.ensureDeferred
async def test_sleep_over_http_suspends_or_refuses(http: Any) -> None:
    async with running() as sim:
        code, answer = await post_json(http, sim, "/_simulator/sleep", {"seconds": 0.5})
        assert code == 200 and answer["refuse"] is False
        await sim.wait_for(lambda: sim.sleep_mode == "suspended", timeout=2)
        started = time.monotonic()
        response = await http.get(sim.url + "/api/version")  # hangs until the wake
        assert response.code == 200 and time.monotonic() - started > 0.2
        assert sim.sleep_mode is None
        code, _ = await post_json(http, sim, "/_simulator/sleep", {"seconds": 1, "refuse": 1})
        assert code == 400
        await sim.sleep(refuse=True)
        assert sim.sleep_mode == "refused"
        with pytest.raises(ConnectionRefusedError):
            await http.get(sim.url + "/api/version")
        await sim.sleep()  # switching modes wakes first
        assert sim.sleep_mode == "suspended"
        state_seen = sim.state()["sleep_mode"]
        await sim.wake()
        assert state_seen == "suspended" and (await http.get(sim.url + "/")).code == 200


@pytest_twisted.ensureDeferred
async def test_auth_and_recorded_headers(http: Any) -> None:
    async with running(required_token="s3cret") as sim:
        denied = await http.get(sim.url + "/api/tags")
        assert (denied.code, await denied.json()) == (401, {"error": "unauthorized"})
        wrong = await http.get(sim.url + "/api/tags", headers={"Authorization": "Bearer nope"})
        assert wrong.code == 401
        ok = await post(
            http,
            sim,
            "/api/generate",
            {"model": "llama3.2", "prompt": "x", "stream": False},
            headers={"Authorization": "Bearer s3cret", "Host": "ollama.internal:11434"},
        )
        assert ok.code == 200
        await ok.content()
        last = sim.requests[-1]
        assert last.authorization == "Bearer s3cret" and last.host == "ollama.internal:11434"
        assert last.json == {"model": "llama3.2", "prompt": "x", "stream": False}
        assert (last.method, last.path, last.status, last.model) == (
            "POST",
            "/api/generate",
            200,
            "llama3.2",
        )
        assert [r.status for r in sim.requests] == [401, 401, 200]
        state = await (await http.get(sim.url + "/_simulator/state")).json()
        assert state["request_count"] == 3  # control routes need no token, are not recorded


@pytest_twisted.ensureDeferred
async def test_http_control_routes(http: Any) -> None:
    async with running() as sim:
        chat = {"model": "llama3.2", "messages": [{"role": "u"}], "stream": False}
        code, faults = await post_json(
            http, sim, "/_simulator/faults", {"fault": "http_500", "count": 1, "path": None}
        )
        assert code == 200 and faults["faults"][0]["fault"] == "http_500"
        assert (await post(http, sim, "/api/chat", chat)).code == 500
        assert (await post(http, sim, "/api/chat", chat)).code == 200
        code, _ = await post_json(http, sim, "/_simulator/faults", {"fault": "bogus"})
        assert code == 400
        state = await (await http.get(sim.url + "/_simulator/state?requests=1")).json()
        assert state["loads"] == 1 and state["completed"] == 1 and state["resident"]
        assert [r["path"] for r in state["requests"]] == ["/api/chat", "/api/chat"]
        code, after = await post_json(http, sim, "/_simulator/reset", {"unload": True})
        assert (after["loads"], after["request_count"], after["resident"]) == (0, 0, None)
        code, _ = await post_json(http, sim, "/_simulator/sleep", {"seconds": 0.4, "refuse": True})
        assert code == 200
        await sim.wait_for(lambda: sim.sleeping, timeout=2)
        with pytest.raises(ConnectionRefusedError):
            await http.get(sim.url + "/api/version")
        await sim.wait_for(lambda: not sim.sleeping, timeout=3)
        assert (await http.get(sim.url + "/api/version")).code == 200


@pytest_twisted.ensureDeferred
async def test_pull_delete_copy(http: Any) -> None:
    async with running(pullable=["gemma3"], pull_time=0.05) as sim:
        response = await post(http, sim, "/api/pull", {"model": "gemma3"})
        lines = ndjson_lines(await collect(response))
        assert lines[0] == {"status": "pulling manifest"} and lines[-1] == {"status": "success"}
        layer = [line for line in lines if "completed" in line]
        assert layer and layer[-1]["completed"] == layer[-1]["total"]
        assert layer[0]["status"] == "pulling " + layer[0]["digest"][7:19]
        assert sim.catalog.find("gemma3") is not None
        code, body = await post_json(http, sim, "/api/pull", {"model": "nope", "stream": False})
        assert (code, body) == (500, {"error": "pull model manifest: file does not exist"})
        streamed = ndjson_lines(await collect(await post(http, sim, "/api/pull", {"name": "x"})))
        assert streamed[-1] == {"error": "pull model manifest: file does not exist"}
        code, body = await post_json(http, sim, "/api/pull", {"model": "gemma3", "stream": False})
        assert body == {"status": "success"}
        copied = await post(http, sim, "/api/copy", {"source": "gemma3", "destination": "g2"})
        assert copied.code == 200
        await copied.content()
        deleted = await http.delete(sim.url + "/api/delete", data=b'{"model": "gemma3"}')
        assert deleted.code == 200
        await deleted.content()
        names = [
            m["name"] for m in (await (await http.get(sim.url + "/api/tags")).json())["models"]
        ]
        assert "g2:latest" in names and "gemma3:latest" not in names
        missing = await http.delete(sim.url + "/api/delete", data=b'{"model": "gemma3"}')
        assert missing.code == 404
        await missing.content()


@pytest_twisted.ensureDeferred
async def test_close_aborts_open_streams_and_mounted_resource(http: Any) -> None:
    sim = OllamaSimulator(token_rate=5.0, load_time=0.05)
    await sim.listen("tcp:0:interface=127.0.0.1")
    response = await post(
        http, sim, "/api/chat", {"model": "llama3.2", "messages": [{"role": "u"}]}
    )
    reading = treq.collect(response, lambda data: None)
    hanging = sim.wait_for(lambda: False, timeout=30)
    hanging.addErrback(lambda _: None)
    await sim.close()
    with pytest.raises(ResponseFailed):
        await reading
    assert sim.disconnects == [] and sim.closed

    other = OllamaSimulator(load_time=0.0, token_rate=0.0)
    port = reactor.listenTCP(0, Site(other.resource()), interface="127.0.0.1")
    try:
        url = f"http://127.0.0.1:{port.getHost().port}"
        response = await http.post(
            url + "/api/generate", data=b'{"model": "llama3.2", "prompt": "p", "stream": false}'
        )
        assert (await response.json())["response"] == reply_text("llama3.2", "p", 8)
    finally:
        await other.close()
        await port.stopListening()
