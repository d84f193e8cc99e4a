"""The official ollama JavaScript client through foreman (Node, real streaming)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest_twisted
from twisted.internet.utils import getProcessOutputAndValue

from foreman.testing import OllamaSimulator, reply_text
from tests.harness import reactor, start_stack

JS = Path(__file__).parent / "js"


@pytest_twisted.ensureDeferred
async def test_official_js_client_lists_chats_streams_generates_embeds(tmp_path: Path) -> None:
    node = shutil.which("node")
    assert node, "node is needed for the JavaScript client test (scripts/test installs it)"
    assert (JS / "node_modules" / "ollama").exists(), "run: npm ci --prefix tests/js"
    sim = OllamaSimulator(
        models=("llama3.2", "qwen3", "nomic-embed-text"), token_rate=40.0, load_time=0.05
    )
    stack = await start_stack(tmp_path, sim=sim, api_tokens=("js-token",))
    try:
        out, err, code = await getProcessOutputAndValue(
            node,
            [str(JS / "client.mjs"), stack.url, "js-token"],
            env=dict(os.environ),
            path=str(JS),
            reactor=reactor,
        )
        assert code == 0, err.decode()
        result = json.loads(out)
        assert "llama3.2:latest" in result["models"]
        assert result["chat"] == reply_text("llama3.2", "hello from js", 8)
        assert result["streamed"] == reply_text("llama3.2", "stream from js", 8)
        assert result["chunks"] >= 8
        assert result["spread_ms"] >= 100  # chunk by chunk at 40 tokens/s, not one burst
        assert result["generated"] == reply_text("qwen3", "generate from js", 8)
        assert result["embeddings"] == 2
        assert {r.authorization for r in sim.requests} == {None}  # client token not passed on
    finally:
        await stack.stop()
