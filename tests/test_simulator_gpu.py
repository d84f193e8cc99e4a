"""The simulator's GPU: ``size``/``size_vram`` in ``/api/ps``, a GPU lost after sleep, CPU pace."""

from __future__ import annotations

import json
import math
import time
from typing import Any

import pytest
import pytest_twisted
from treq.client import HTTPClient
from twisted.internet import reactor as _reactor
from twisted.web.client import Agent, HTTPConnectionPool

from foreman.testing import ModelSpec, OllamaSimulator, make_simulator
from foreman.testing.__main__ import parse_args
from foreman.testing._models import CPU_SLOWDOWN, cpu_slowdown, describe
from foreman.testing._residency import Residency, Slot
from foreman.testing._shapes import loaded_size, ps_entry
from tests.harness import running_simulator

reactor: Any = _reactor


@pytest.fixture
def http() -> Any:
    return HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))


async def _post(http: Any, sim: OllamaSimulator, path: str, body: Any) -> tuple[int, Any]:
    response = await http.post(sim.url + path, data=json.dumps(body).encode())
    return response.code, json.loads(await response.content())


async def _ps(http: Any, sim: OllamaSimulator) -> dict[str, dict[str, Any]]:
    response = await http.get(sim.url + "/api/ps")
    body = json.loads(await response.content())
    return {entry["name"]: entry for entry in body["models"]}


async def _generate(http: Any, sim: OllamaSimulator, model: str) -> tuple[float, dict[str, Any]]:
    """A non-streamed generate; how long it took after its load (seconds) and its body."""
    started = time.monotonic()
    code, body = await _post(
        http, sim, "/api/generate", {"model": model, "prompt": "hi", "stream": False}
    )
    assert code == 200, body
    return time.monotonic() - started - body["load_duration"] / 1e9, body


# -- pure parts ---------------------------------------------------------------------------


def test_cpu_slowdown_is_ten_times_on_the_cpu_and_linear_between() -> None:
    assert cpu_slowdown(1.0) == 1.0
    assert cpu_slowdown(0.0) == CPU_SLOWDOWN == 10.0
    assert cpu_slowdown(0.3) == pytest.approx(7.3)
    assert cpu_slowdown(-1.0) == 10.0 and cpu_slowdown(2.0) == 1.0  # clamped


def test_model_spec_vram_fraction_is_checked_and_carried() -> None:
    assert describe(ModelSpec("a"), 0.1, 0.0).vram_fraction == 1.0
    assert describe(ModelSpec("a", vram_fraction=0.4), 0.1, 0.0).vram_fraction == 0.4
    assert ModelSpec("a", vram_fraction=None).vram_fraction == 1.0  # type: ignore[arg-type]
    for bad in (-0.1, 1.5, math.nan, True, "0.5"):
        with pytest.raises(ValueError):
            ModelSpec("a", vram_fraction=bad)  # type: ignore[arg-type]
    for bad in (-0.1, 1.5, math.nan):
        with pytest.raises(ValueError):
            OllamaSimulator(vram_fraction=bad)
        with pytest.raises(ValueError):
            OllamaSimulator().gpu_lost(bad)


def test_ps_entry_reports_size_and_the_share_in_vram() -> None:
    info = describe(ModelSpec("llama3.2"), 0.1, 0.0)
    size = loaded_size(info, 4096)
    assert ps_entry(info, 4096, 0.0)["size"] == ps_entry(info, 4096, 0.0)["size_vram"] == size
    assert ps_entry(info, 4096, 0.0, 0.0)["size_vram"] == 0
    assert ps_entry(info, 4096, 0.0, 0.25)["size_vram"] == round(size * 0.25)


def test_a_slot_keeps_the_share_it_was_loaded_with() -> None:
    r = Residency(max_loaded=2)
    a, b = Slot("a:latest", 4096), Slot("b:latest", 4096)
    r.enqueue("ta", a, 300.0)
    r.step()
    r.finish_load(0.0, vram_fraction=0.0)
    r.enqueue("tb", b, 300.0)
    r.step()
    r.step()
    r.finish_load(0.0)
    assert [(e.slot, e.vram_fraction) for e in r.residents] == [(b, 1.0), (a, 0.0)]


def test_gpu_state_token_interval_and_options() -> None:
    sim = OllamaSimulator(token_rate=10.0)
    assert sim.token_interval() == pytest.approx(0.1)
    assert sim.token_interval(vram_fraction=0.0) == pytest.approx(1.0)
    assert (sim.vram_fraction, sim.gpu_is_lost) == (1.0, False)
    sim.gpu_lost(0.2)
    assert (sim.vram_fraction, sim.gpu_is_lost) == (0.2, True)
    assert sim.state()["vram_fraction"] == 0.2 and sim.state()["gpu_lost"] is True
    sim.gpu_restored()
    assert (sim.vram_fraction, sim.gpu_is_lost) == (1.0, False)
    sim.gpu_lost()
    sim.reset()
    assert (sim.vram_fraction, sim.gpu_is_lost) == (1.0, False), "reset restores the GPU"
    half = OllamaSimulator(vram_fraction=0.5)
    half.gpu_lost(0.1)
    half.gpu_restored()
    assert half.vram_fraction == 0.5, "restored: back to the configured share"
    assert make_simulator(vram_fraction=0.7).vram_fraction == 0.7
    assert parse_args([]).vram_fraction == 1.0
    assert parse_args(["--vram-fraction", "0.25"]).vram_fraction == 0.25
    for bad in ("1.5", "-1", "nan"):
        with pytest.raises(SystemExit):
            parse_args(["--vram-fraction", bad])


# -- over HTTP ----------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_ps_reports_size_for_every_model_and_size_vram_from_the_spec(http: Any) -> None:
    models = ["llama3.2", ModelSpec("qwen3", vram_fraction=0.5)]
    async with running_simulator(models=models, token_rate=0.0, max_loaded=2) as sim:
        for model in ("llama3.2", "qwen3"):
            await _generate(http, sim, model)
        ps = await _ps(http, sim)
        assert set(ps) == {"llama3.2:latest", "qwen3:latest"}
        for entry in ps.values():
            assert isinstance(entry["size"], int) and entry["size"] > 0
        assert ps["llama3.2:latest"]["size_vram"] == ps["llama3.2:latest"]["size"]
        assert ps["qwen3:latest"]["size_vram"] == round(ps["qwen3:latest"]["size"] * 0.5)
        assert sim.resident_vram_fraction("qwen3") == 0.5
        assert sim.resident_vram_fraction() == 0.5  # the most recently used
        assert sim.resident_vram_fraction("gemma3") is None


@pytest_twisted.ensureDeferred
async def test_a_lost_gpu_puts_models_loaded_afterwards_on_the_cpu(http: Any) -> None:
    models = ["llama3.2", ModelSpec("qwen3", vram_fraction=0.5)]
    async with running_simulator(
        models=models, token_rate=50.0, reply_tokens=4, max_loaded=2
    ) as sim:
        healthy, _ = await _generate(http, sim, "llama3.2")
        sim.gpu_lost()
        ps = await _ps(http, sim)
        entry = ps["llama3.2:latest"]
        assert entry["size_vram"] == entry["size"], "a model already resident keeps its share"

        sim.unload()
        on_cpu, _ = await _generate(http, sim, "llama3.2")
        entry = (await _ps(http, sim))["llama3.2:latest"]
        assert entry["size_vram"] == 0 and entry["size"] > 0
        assert sim.resident_vram_fraction("llama3.2") == 0.0
        # 4 tokens at 20 ms apart on the GPU, 200 ms apart on the CPU
        assert on_cpu >= 0.9 * 4 * CPU_SLOWDOWN / 50.0 > healthy

        sim.gpu_lost(0.75)  # a spec saying less than what the GPU gives keeps its own
        await _generate(http, sim, "qwen3")
        ps = await _ps(http, sim)
        assert ps["qwen3:latest"]["size_vram"] == round(ps["qwen3:latest"]["size"] * 0.5)

        sim.gpu_restored()
        sim.unload()
        again, _ = await _generate(http, sim, "llama3.2")
        entry = (await _ps(http, sim))["llama3.2:latest"]
        assert entry["size_vram"] == entry["size"]
        assert again < on_cpu / 2


@pytest_twisted.ensureDeferred
async def test_gpu_over_http_control(http: Any) -> None:
    async with running_simulator(token_rate=0.0) as sim:
        code, body = await _post(http, sim, "/_simulator/gpu", {"lost": True, "fraction": 0.3})
        assert (code, body) == (200, {"gpu_lost": True, "vram_fraction": 0.3})
        await _generate(http, sim, "llama3.2")
        entry = (await _ps(http, sim))["llama3.2:latest"]
        assert entry["size_vram"] == round(entry["size"] * 0.3)
        code, body = await _post(http, sim, "/_simulator/gpu", {"lost": True})
        assert (code, body) == (200, {"gpu_lost": True, "vram_fraction": 0.0})
        code, body = await _post(http, sim, "/_simulator/gpu", {"lost": False})
        assert (code, body) == (200, {"gpu_lost": False, "vram_fraction": 1.0})
        for bad in ({"lost": "yes"}, {"lost": True, "fraction": 2}, {"fraction": 0.5}):
            code, body = await _post(http, sim, "/_simulator/gpu", bad)
            assert code == 400 and "error" in body
        state = json.loads(await (await http.get(sim.url + "/_simulator/state")).content())
        assert (state["gpu_lost"], state["vram_fraction"]) == (False, 1.0)
