"""scripts/pull-models against foreman's Ollama simulator on loopback.

The script is run as a real subprocess (as a user would run it), without
blocking the reactor that serves the simulator (``foreman.testing``), which
answers GET /api/tags and streams POST /api/pull progress as NDJSON, or an
``{"error"}`` line for a model its registry does not have.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import io
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

import pytest_twisted  # type: ignore[import-untyped,unused-ignore]
from twisted.internet import utils

from foreman.testing import OllamaSimulator

_F = TypeVar("_F")
# pytest_twisted and parts of twisted are untyped: give the edges a type here.
ensure_deferred: Callable[[_F], _F] = pytest_twisted.ensureDeferred
get_output_and_value: Any = utils.getProcessOutputAndValue

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "pull-models"


def _load_script() -> ModuleType:
    loader = importlib.machinery.SourceFileLoader("pull_models_script", str(SCRIPT))
    spec = importlib.util.spec_from_loader("pull_models_script", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


pull_models = _load_script()


async def _simulator(
    models: list[str], pullable: list[str], token: str | None = None
) -> OllamaSimulator:
    sim = OllamaSimulator(models=models, pullable=pullable, required_token=token, pull_time=0.05)
    await sim.listen("tcp:0:interface=127.0.0.1")
    return sim


def _pulls(sim: OllamaSimulator) -> list[str]:
    return [r.json["model"] for r in sim.requests if r.path == "/api/pull"]


async def _run(args: list[str], env_extra: dict[str, str] | None = None) -> tuple[str, str, int]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FOREMAN_")}
    env.update(env_extra or {})
    out, err, code = await get_output_and_value(sys.executable, [str(SCRIPT), *args], env=env)
    return out.decode(), err.decode(), code


@ensure_deferred
async def test_pulls_missing_models_with_progress() -> None:
    sim = await _simulator(["llama3.2"], pullable=["qwen2.5:7b", "phi4"], token="s3")
    try:
        args = ["--url", sim.url, "--token", "s3", "qwen2.5:7b", "phi4"]
        out, err, code = await _run(args)
        again = await _run(args)
    finally:
        await sim.close()
    assert code == 0, (out, err)
    assert _pulls(sim) == ["qwen2.5:7b", "phi4"]
    assert {r.authorization for r in sim.requests} == {"Bearer s3"}
    # Not a terminal: plain lines, one per status and per 10 % of a download.
    assert "qwen2.5:7b: pulling manifest" in out
    assert re.search(r"^qwen2\.5:7b: pulling [0-9a-f]{12} 0%$", out, re.M)
    assert re.search(r"^qwen2\.5:7b: pulling [0-9a-f]{12} 50%$", out, re.M)
    assert re.search(r"^phi4: pulling [0-9a-f]{12} 100%$", out, re.M)
    assert "phi4: success" in out
    assert "\r" not in out
    assert "pulled 2, already present 0, failed 0" in out
    # The second run finds both on the target and pulls nothing.
    out, err, code = again
    assert code == 0, (out, err)
    assert "phi4: already present" in out
    assert "pulled 0, already present 2, failed 0" in out
    assert len(_pulls(sim)) == 2


@ensure_deferred
async def test_skips_present_models_from_file_and_env(tmp_path: Path) -> None:
    models = tmp_path / "models.txt"
    models.write_text(
        "# models for the office box\n\nllama3.2   # chat\nnomic-embed-text:v1.5\nLLAMA3.2:latest\n"
    )
    sim = await _simulator(["llama3.2", "nomic-embed-text:v1.5"], pullable=[], token="t0k")
    try:
        out, err, code = await _run(
            ["--file", str(models)], {"FOREMAN_URL": sim.url + "/", "FOREMAN_TOKEN": "t0k"}
        )
    finally:
        await sim.close()
    assert code == 0, (out, err)
    assert _pulls(sim) == []
    assert [r.path for r in sim.requests] == ["/api/tags"]
    assert "llama3.2: already present" in out
    assert "nomic-embed-text:v1.5: already present" in out
    assert "pulled 0, already present 2, failed 0" in out


@ensure_deferred
async def test_unknown_model_fails_and_is_named() -> None:
    sim = await _simulator([], pullable=["phi4"])
    try:
        out, err, code = await _run(["--url", sim.url, "no-such-model", "phi4"])
    finally:
        await sim.close()
    assert code == 1, (out, err)
    # The failure does not stop the rest of the list.
    assert _pulls(sim) == ["no-such-model", "phi4"]
    assert "phi4: pulled" in out
    assert "no-such-model failed: pull model manifest: file does not exist" in err
    assert "pulled 1, already present 0, failed 1" in out
    assert {r.authorization for r in sim.requests} == {None}


@ensure_deferred
async def test_wrong_token_reports_the_listing_error() -> None:
    sim = await _simulator([], pullable=["phi4"], token="right")
    try:
        out, err, code = await _run(["--url", sim.url, "--token", "wrong", "phi4"])
    finally:
        await sim.close()
    assert code == 1, (out, err)
    assert _pulls(sim) == []
    assert "HTTP 401: unauthorized" in err


@ensure_deferred
async def test_unreachable_server_and_usage_errors(tmp_path: Path) -> None:
    sim = await _simulator([], pullable=[])
    try:
        await sim.sleep(refuse=True)  # connections refused, like a target that is off
        out, err, code = await _run(["--url", sim.url, "phi4"])
        assert code == 1 and "cannot reach" in err, (out, err)
        out, err, code = await _run(["--url", sim.url])
        assert code == 2 and "no models given" in err, (out, err)
        out, err, code = await _run(["--url", sim.url, "--file", str(tmp_path / "none.txt")])
        assert code == 2 and "cannot read" in err, (out, err)
    finally:
        await sim.close()


def test_names_and_model_file() -> None:
    canonical = pull_models.canonical
    assert canonical("llama3.2") == canonical("llama3.2:latest") == "llama3.2:latest"
    assert canonical("qwen2.5:7b") == "qwen2.5:7b"
    assert canonical("host:5000/ns/model") == "host:5000/ns/model:latest"
    assert canonical("hf.co/org/Repo-GGUF:Q4_K_M") == "hf.co/org/repo-gguf:q4_k_m"
    lines = ["# header", "", "  a  ", "b # note", "#c", "a:latest"]
    assert pull_models.read_model_file(lines) == ["a", "b", "a:latest"]
    assert pull_models.unique(["a", "b", "a:latest", "B"]) == ["a", "b"]


def test_terminal_progress_bar() -> None:
    out = io.StringIO()
    progress = pull_models.Progress(out, tty=True)
    progress.event("m", {"status": "pulling manifest"})
    for done in (0, 500, 1000):
        progress.event("m", {"status": "pulling ab12", "total": 1000, "completed": done})
    progress.event("m", {"status": "success"})
    progress.done()
    text = out.getvalue()
    frames = text.split("\r")
    assert any("m: pulling ab12 [" in f and " 50% " in f for f in frames)
    assert any(re.search(r"\] 100% +1\.0 kB/1\.0 kB$", f.rstrip()) for f in frames)
    bars = [f.index("]") for f in frames if "[" in f]
    assert len(set(bars)) == 1, "the bar keeps its width while it fills"
    assert "-" * 10 in text and "#" * 10 in text
    assert text.endswith("\n")
    assert frames[-1].startswith("m: success")
