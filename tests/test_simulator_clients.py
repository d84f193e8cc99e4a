"""The simulator against the official ``ollama`` and ``openai`` Python clients.

Both clients validate responses with pydantic models, so these tests check
the response shapes, not just the status codes. The blocking clients run in
a thread (``deferToThread``) while the reactor serves the simulator.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, TypeVar

import pytest
import pytest_twisted
from twisted.internet.threads import deferToThread

from foreman.testing import (
    OllamaSimulator,
    embedding_vector,
    reply_text,
    thinking_text,
)
from tests.harness import running_simulator

T = TypeVar("T")

if TYPE_CHECKING:
    import ollama
    import openai


def running(**kwargs: Any) -> AbstractAsyncContextManager[OllamaSimulator]:
    """A listening simulator, paced (200 tokens/s) so streams are real streams."""
    return running_simulator(**{"token_rate": 200.0, "reply_tokens": 5, **kwargs})


async def with_ollama(sim: OllamaSimulator, work: Callable[[ollama.Client], T]) -> T:
    import ollama  # on use: the client takes a second or two to import

    def run() -> T:
        with ollama.Client(host=sim.url) as client:
            return work(client)

    result: T = await deferToThread(run)
    return result


async def with_openai(sim: OllamaSimulator, work: Callable[[openai.OpenAI], T]) -> T:
    import openai  # on use: the client takes a second or two to import

    def run() -> T:
        with openai.OpenAI(base_url=sim.url + "/v1", api_key="x", max_retries=0) as client:
            return work(client)

    result: T = await deferToThread(run)
    return result


@pytest.fixture(autouse=True)
def _no_ambient_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OLLAMA_API_KEY", "OLLAMA_HOST", "OPENAI_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)


@pytest_twisted.ensureDeferred
async def test_ollama_client_metadata() -> None:
    import ollama  # on use: the client takes a second or two to import

    async with running(pullable=["gemma3"], pull_time=0.05) as sim:

        def work(client: ollama.Client) -> dict[str, Any]:
            listed = client.list()
            client.generate(model="llama3.2", prompt="")  # preload
            running_models = client.ps()
            shown = client.show("qwen3:0.6b")
            progress = list(client.pull("gemma3", stream=True))
            final = client.pull("gemma3")
            after = client.list()
            with pytest.raises(ollama.ResponseError) as missing:
                client.pull("does-not-exist")
            with pytest.raises(ollama.ResponseError) as unknown:
                client.chat(model="ghost", messages=[{"role": "user", "content": "x"}])
            return {
                "listed": [m.model for m in listed.models],
                "ps": running_models.models,
                "shown": shown,
                "progress": progress,
                "final": final.status,
                "after": [m.model for m in after.models],
                "missing": missing.value,
                "unknown": unknown.value,
            }

        got = await with_ollama(sim, work)
        assert got["listed"] == ["llama3.2:latest", "qwen3:0.6b", "nomic-embed-text:latest"]
        (loaded,) = got["ps"]
        assert loaded.model == "llama3.2:latest" and loaded.details.family == "llama"
        assert loaded.expires_at is not None and loaded.size_vram == loaded.size
        assert loaded.context_length == 4096
        assert got["shown"].capabilities == ["completion", "tools", "thinking"]
        assert got["shown"].modelinfo["general.architecture"] == "qwen3"
        assert got["shown"].details.parameter_size == "0.6B"
        statuses = [p.status for p in got["progress"]]
        assert statuses[0] == "pulling manifest" and statuses[-1] == "success"
        assert any(p.total and p.completed == p.total for p in got["progress"])
        assert got["final"] == "success" and "gemma3:latest" in got["after"]
        assert "file does not exist" in got["missing"].error
        assert got["unknown"].status_code == 404


@pytest_twisted.ensureDeferred
async def test_ollama_client_inference() -> None:
    async with running() as sim:
        tool = {
            "type": "function",
            "function": {
                "name": "lookup",
                "description": "Look something up",
                "parameters": {
                    "type": "object",
                    "properties": {"query": {"type": "string"}},
                    "required": ["query"],
                },
            },
        }

        def work(client: ollama.Client) -> dict[str, Any]:
            messages = [{"role": "user", "content": "hello there"}]
            stream = list(client.chat(model="llama3.2", messages=messages, stream=True))
            whole = client.chat(model="llama3.2", messages=messages, options={"num_predict": 3})
            thought = client.chat(model="qwen3:0.6b", messages=messages, think=True)
            called = client.chat(model="qwen3:0.6b", messages=messages, tools=[tool])
            generated = client.generate(model="llama3.2", prompt="hello there")
            chunks = list(client.generate(model="llama3.2", prompt="hello there", stream=True))
            embedded = client.embed(model="nomic-embed-text", input=["a", "b"])
            legacy = client.embeddings(model="nomic-embed-text", prompt="a")
            return {
                "stream": stream,
                "whole": whole,
                "thought": thought,
                "called": called,
                "generated": generated,
                "chunks": chunks,
                "embedded": embedded,
                "legacy": legacy,
            }

        got = await with_ollama(sim, work)
        expected = reply_text("llama3.2", "hello there", 5)
        assert "".join(c.message.content or "" for c in got["stream"]) == expected
        assert got["stream"][-1].done and got["stream"][-1].done_reason == "stop"
        assert got["whole"].message.content == reply_text("llama3.2", "hello there", 3)
        assert got["whole"].done_reason == "length" and got["whole"].eval_count == 3
        assert got["thought"].message.thinking == thinking_text("qwen3:0.6b", "hello there")
        (call,) = got["called"].message.tool_calls
        assert call.function.name == "lookup" and call.function.arguments == {"query": "sim-query"}
        assert got["generated"].response == expected and got["generated"].context
        assert "".join(c.response or "" for c in got["chunks"]) == expected
        assert got["embedded"].embeddings == [
            embedding_vector("nomic-embed-text", "a"),
            embedding_vector("nomic-embed-text", "b"),
        ]
        assert list(got["legacy"].embedding) == embedding_vector("nomic-embed-text", "a")
        assert (sim.loads, sim.swaps) == (4, 3)


@pytest_twisted.ensureDeferred
async def test_openai_client() -> None:
    import openai  # on use: the client takes a second or two to import

    async with running() as sim:

        def work(client: openai.OpenAI) -> dict[str, Any]:
            messages: Any = [{"role": "user", "content": "hi"}]
            completion = client.chat.completions.create(model="llama3.2", messages=messages)
            stream = list(
                client.chat.completions.create(
                    model="llama3.2",
                    messages=messages,
                    stream=True,
                    stream_options={"include_usage": True},
                )
            )
            text = client.completions.create(model="llama3.2", prompt="hi", max_tokens=2)
            text_stream = list(
                client.completions.create(model="llama3.2", prompt="hi", stream=True)
            )
            default_b64 = client.embeddings.create(model="nomic-embed-text", input=["a", "b"])
            floats = client.embeddings.create(
                model="nomic-embed-text", input="a", encoding_format="float"
            )
            models = client.models.list()
            one = client.models.retrieve("qwen3:0.6b")
            with pytest.raises(openai.NotFoundError) as missing:
                client.chat.completions.create(model="ghost", messages=messages)
            return {
                "completion": completion,
                "stream": stream,
                "text": text,
                "text_stream": text_stream,
                "default_b64": default_b64,
                "floats": floats,
                "models": [m.id for m in models.data],
                "one": one,
                "missing": missing.value,
            }

        got = await with_openai(sim, work)
        expected = reply_text("llama3.2", "hi", 5)
        choice = got["completion"].choices[0]
        assert choice.message.content == expected and choice.finish_reason == "stop"
        assert got["completion"].usage.completion_tokens == 5
        deltas = [c.choices[0].delta.content or "" for c in got["stream"] if c.choices]
        assert "".join(deltas) == expected
        assert got["stream"][-1].usage is not None and got["stream"][-1].choices == []
        assert got["text"].choices[0].text == reply_text("llama3.2", "hi", 2)
        assert got["text"].choices[0].finish_reason == "length"
        assert "".join(c.choices[0].text for c in got["text_stream"]) == expected
        vectors = [d.embedding for d in got["default_b64"].data]
        assert vectors == [
            embedding_vector("nomic-embed-text", "a"),
            embedding_vector("nomic-embed-text", "b"),
        ]
        assert got["floats"].data[0].embedding == vectors[0]
        assert got["models"] == ["llama3.2:latest", "qwen3:0.6b", "nomic-embed-text:latest"]
        assert got["one"].id == "qwen3:0.6b"
        assert got["missing"].status_code == 404
        base64_request = next(r for r in sim.requests if r.path == "/v1/embeddings")
        assert base64_request.json["encoding_format"] == "base64"
        assert base64_request.authorization == "Bearer x"


@pytest_twisted.ensureDeferred
async def test_openai_client_tools_and_reasoning() -> None:
    async with running() as sim:
        tool: Any = {
            "type": "function",
            "function": {
                "name": "add",
                "parameters": {
                    "type": "object",
                    "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                },
            },
        }

        def work(client: openai.OpenAI) -> dict[str, Any]:
            messages: Any = [{"role": "user", "content": "1+1"}]
            called = client.chat.completions.create(
                model="qwen3:0.6b", messages=messages, tools=[tool]
            )
            streamed = list(
                client.chat.completions.create(
                    model="qwen3:0.6b", messages=messages, tools=[tool], stream=True
                )
            )
            return {"called": called, "streamed": streamed}

        got = await with_openai(sim, work)
        choice = got["called"].choices[0]
        assert choice.finish_reason == "tool_calls"
        (call,) = choice.message.tool_calls
        assert call.function.name == "add" and call.function.arguments == '{"a": 1, "b": 1}'
        calls = [tc for c in got["streamed"] for tc in (c.choices[0].delta.tool_calls or [])]
        assert calls[0].function.name == "add" and calls[0].index == 0
        assert got["streamed"][-1].choices[0].finish_reason == "tool_calls"
