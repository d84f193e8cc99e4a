"""The official clients, unchanged but for the base URL, talking to the simulator via foreman.

The clients block, so each runs in a thread (``deferToThread``) while the
reactor serves foreman and the simulator.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest_twisted
from twisted.internet.threads import deferToThread

from foreman.testing import ModelSpec, OllamaSimulator, reply_text
from tests.test_proxy_support import running

RATE = 20.0
TOKENS = 10
TOKEN = "client-token"


def _sim() -> OllamaSimulator:
    return OllamaSimulator(
        models=("llama3.2", ModelSpec("nomic-embed-text", embedding=True)),
        token_rate=RATE,
        load_time=0.0,
        reply_tokens=TOKENS,
        pullable=("gemma3",),
        pull_time=0.3,
    )


def _spread_ok(times: list[float]) -> bool:
    """Chunks arrived over (most of) the time the simulator took to send them."""
    return times[-1] - times[0] >= (len(times) - 1) / RATE * 0.5


@pytest_twisted.ensureDeferred
async def test_ollama_python_client(tmp_path: Path) -> None:
    import ollama  # on use: the client takes a second or two to import

    async with running(tmp_path, sim=_sim(), api_tokens=(TOKEN,)) as (daemon, sim):
        assert sim is not None

        def use_client() -> dict[str, Any]:
            client = ollama.Client(host=daemon.url, headers={"Authorization": f"Bearer {TOKEN}"})
            out: dict[str, Any] = {}
            try:
                out["list"] = [m.model for m in client.list().models]
                out["chat"] = client.chat(
                    model="llama3.2", messages=[{"role": "user", "content": "hello"}]
                )
                times, parts = [], []
                for part in client.chat(
                    model="llama3.2",
                    messages=[{"role": "user", "content": "hello"}],
                    stream=True,
                ):
                    times.append(time.monotonic())
                    parts.append(part)
                out["stream_times"], out["stream_parts"] = times, parts
                out["ps"] = [m.model for m in client.ps().models]
                out["show"] = client.show("llama3.2")
                out["generate"] = client.generate(model="llama3.2", prompt="tell me")
                out["embed"] = client.embed(model="nomic-embed-text", input=["a", "b"])
                out["pull"] = [p.status for p in client.pull("gemma3", stream=True)]
                out["list_after"] = [m.model for m in client.list().models]
            finally:
                client._client.close()
            return out

        out = await deferToThread(use_client)
        assert "llama3.2:latest" in out["list"]
        assert out["chat"].message.role == "assistant"
        assert out["chat"].message.content == reply_text("llama3.2", "hello", TOKENS)
        parts = out["stream_parts"]
        assert parts[-1].done is True
        assert "".join(p.message.content for p in parts) == reply_text("llama3.2", "hello", TOKENS)
        assert _spread_ok(out["stream_times"][:-1]), out["stream_times"]
        assert out["ps"] and out["ps"][0].startswith("llama3.2")
        assert out["show"].details is not None
        assert out["generate"].response == reply_text("llama3.2", "tell me", TOKENS)
        assert len(out["embed"].embeddings) == 2
        assert len(out["pull"]) > 2 and out["pull"][-1] == "success"
        assert any(name.startswith("gemma3") for name in out["list_after"])
        # the target saw no client token
        assert all(r.authorization is None for r in sim.requests)


@pytest_twisted.ensureDeferred
async def test_openai_python_client(tmp_path: Path) -> None:
    import openai  # on use: the client takes a second or two to import

    async with running(tmp_path, sim=_sim()) as (daemon, sim):
        assert sim is not None

        def use_client() -> dict[str, Any]:
            client = openai.OpenAI(base_url=daemon.url + "/v1", api_key="k", max_retries=0)
            out: dict[str, Any] = {}
            try:
                out["chat"] = client.chat.completions.create(
                    model="llama3.2", messages=[{"role": "user", "content": "hello"}]
                )
                times, deltas = [], []
                stream = client.chat.completions.create(
                    model="llama3.2",
                    messages=[{"role": "user", "content": "hello"}],
                    stream=True,
                )
                for chunk in stream:
                    if chunk.choices and chunk.choices[0].delta.content:
                        times.append(time.monotonic())
                        deltas.append(chunk.choices[0].delta.content)
                out["stream_times"], out["deltas"] = times, deltas
                out["embeddings"] = client.embeddings.create(
                    model="nomic-embed-text", input=["one", "two", "three"]
                )
                out["models"] = [m.id for m in client.models.list()]
            finally:
                client.close()
            return out

        out = await deferToThread(use_client)
        expected = reply_text("llama3.2", "hello", TOKENS)
        assert out["chat"].choices[0].message.content == expected
        assert "".join(out["deltas"]) == expected
        assert _spread_ok(out["stream_times"]), out["stream_times"]
        assert [len(e.embedding) > 0 for e in out["embeddings"].data] == [True] * 3
        assert any(m.startswith("llama3.2") for m in out["models"])
