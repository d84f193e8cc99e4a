"""A GPU that came back wrong: a resident model partly or wholly on the CPU.

After a box resumes from sleep, Ollama sometimes loses the GPU: ``/api/ps``
shows ``size_vram`` far below ``size`` and tokens come ten times slower.
foreman says so per model in ``/status``, exposes the fraction in
``/metrics`` and logs one rate-limited warning per model, then an info line
when the model is back on the GPU. First the monitor alone on a
``task.Clock`` (ten minutes pass in no time), then the real daemon against
the simulator's ``gpu_lost()``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.task import Clock
from twisted.logger import LogEvent, LogLevel, formatEvent

from foreman.ops.metrics import Metrics
from foreman.testing import OllamaSimulator
from tests.harness import chat, start_stack, until
from tests.target.test_monitor import FakeAgent, make

GB = 1_000_000_000
MODEL = "llama3.2:latest"


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def agent(clock: Clock) -> FakeAgent:
    return FakeAgent(clock)


def _warnings_naming(logged: list[LogEvent], model: str) -> list[LogEvent]:
    return [e for e in logged if e.get("log_level") == LogLevel.warn and model in formatEvent(e)]


def _gpu_lines(logged: list[LogEvent], level: LogLevel) -> list[str]:
    return [
        formatEvent(e)
        for e in logged
        if e.get("log_level") == level and "GPU" in e.get("log_format", "")
    ]


def _ps(size_vram: int, size: int = 4 * GB) -> dict[str, Any]:
    return {"models": [{"name": MODEL, "size": size, "size_vram": size_vram}]}


# -- the monitor: one warning per model per ten minutes ------------------------------------


def test_the_monitor_warns_once_per_ten_minutes_and_notes_the_recovery(
    clock: Clock, agent: FakeAgent, logged: list[LogEvent]
) -> None:
    agent.set(b"/api/ps", _ps(int(1.2 * GB)))
    monitor = make(clock, agent, interval=5.0)
    monitor.start()
    assert monitor.state == "up"
    warnings = _gpu_lines(logged, LogLevel.warn)
    assert warnings == [
        "model llama3.2:latest runs 30% on the GPU (size_vram 1.2 GB of 4.0 GB):"
        " the target may have come back from sleep without its GPU"
    ]
    event = next(e for e in logged if e.get("log_level") == LogLevel.warn)
    assert (event["model"], event["vram_fraction"], event["size_vram"], event["size"]) == (
        MODEL,
        0.3,
        int(1.2 * GB),
        4 * GB,
    )
    clock.advance(595.0)  # 120 more probes: still one warning
    assert len(_gpu_lines(logged, LogLevel.warn)) == 1
    clock.advance(5.0)  # ten minutes after the first: once more
    assert len(_gpu_lines(logged, LogLevel.warn)) == 2

    agent.set(b"/api/ps", _ps(0))  # 30 % → 0 %: news at once
    clock.advance(5.0)
    warnings = _gpu_lines(logged, LogLevel.warn)
    assert len(warnings) == 3 and "runs 0% on the GPU (size_vram 0 B of 4.0 GB)" in warnings[-1]

    agent.set(b"/api/ps", _ps(4 * GB))
    clock.advance(5.0)
    clock.advance(5.0)
    assert _gpu_lines(logged, LogLevel.info) == [
        "model llama3.2:latest runs on the GPU again (100% in VRAM: size_vram 4.0 GB of 4.0 GB)"
    ]
    assert len(_gpu_lines(logged, LogLevel.warn)) == 3
    monitor.stop()


def test_a_target_that_does_not_report_sizes_is_left_alone(
    clock: Clock, agent: FakeAgent, logged: list[LogEvent]
) -> None:
    agent.set(b"/api/ps", {"models": [{"name": MODEL, "size_vram": 0}]})
    monitor = make(clock, agent, interval=5.0)
    monitor.start()
    clock.advance(20.0)
    assert _gpu_lines(logged, LogLevel.warn) == []
    monitor.stop()


def test_the_gauge_has_one_series_per_model_with_a_known_fraction() -> None:
    metrics = Metrics()
    state: dict[str, Any] = {
        "by_model": {},
        "by_kind": {},
        "retrying": 0,
        "target_up": 1,
        "loaded_models": [],
        "inflight": 0,
        "dispatched": 0,
        "switches": 0,
        "model_loads": 0,
        "lost": 0,
        "load_costs": {},
        "vram_fractions": {"a:latest": 0.25, "b:latest": 1.0},
        "last_wake": None,
        "webhooks": {},
        "webhooks_failed": 0,
    }
    metrics.watch(lambda: state)
    text = metrics.render().decode()
    assert 'foreman_model_vram_fraction{model="a:latest"} 0.25' in text
    assert 'foreman_model_vram_fraction{model="b:latest"} 1.0' in text
    assert "# TYPE foreman_model_vram_fraction gauge" in text


# -- the daemon against the simulator -------------------------------------------------------


def _row(status: dict[str, Any], name: str = MODEL) -> dict[str, Any]:
    rows = [r for r in status["target"]["resident_models"] if r["name"] == name]
    assert len(rows) == 1, status["target"]["resident_models"]
    row: dict[str, Any] = rows[0]
    return row


def _gauge(metrics: str, name: str = MODEL) -> float | None:
    found = re.search(
        rf'^foreman_model_vram_fraction\{{model="{re.escape(name)}"\}} (\S+)$', metrics, re.M
    )
    return float(found.group(1)) if found else None


@pytest_twisted.ensureDeferred
async def test_a_model_on_the_cpu_shows_in_status_metrics_and_one_warning(
    tmp_path: Path, logged: list[LogEvent]
) -> None:
    sim = OllamaSimulator(models=("llama3.2", "qwen3"), token_rate=200.0, load_time=0.05)
    stack = await start_stack(tmp_path, sim=sim)
    daemon = stack.daemon
    monitor = daemon.monitor
    assert monitor is not None
    monitor.interval = 0.1  # many /api/ps answers, to show the rate limit
    monitor.poke()

    def fraction_seen(value: float) -> bool:
        return any(
            r["name"] == MODEL and r["vram_fraction"] == value
            for r in daemon.worker.residency.describe(daemon.queue.clock())
        )

    try:
        sim.gpu_lost(fraction=0.25)  # the box came back from sleep without its GPU
        response = await stack.post("/api/chat", chat("llama3.2", "hi", stream=False))
        assert response.status == 200, response.body
        await until(lambda: fraction_seen(0.25))

        row = _row((await stack.get("/status")).json())
        assert row["on_cpu"] is True and row["vram_fraction"] == 0.25
        assert row["size"] > 0 and row["size_vram"] == round(row["size"] * 0.25)
        gauge = _gauge((await stack.get("/metrics")).body.decode())
        assert gauge is not None and abs(gauge - 0.25) < 1e-6

        probes = monitor.probes
        await until(lambda: monitor.probes >= probes + 5)  # five more /api/ps: no new warning
        warnings = _warnings_naming(logged, "llama3.2")
        assert len(warnings) == 1, [formatEvent(e) for e in warnings]
        text = formatEvent(warnings[0])
        assert "model llama3.2:latest runs 25% on the GPU (size_vram " in text
        assert "without its GPU" in text and warnings[0]["vram_fraction"] == 0.25

        sim.gpu_restored()
        sim.unload()  # Ollama keeps a model where it loaded it: reload it on the GPU
        await until(lambda: not daemon.worker.residency.describe(daemon.queue.clock()))
        response = await stack.post("/api/chat", chat("llama3.2", "again", stream=False))
        assert response.status == 200, response.body
        await until(lambda: fraction_seen(1.0))

        row = _row((await stack.get("/status")).json())
        assert row["on_cpu"] is False and row["vram_fraction"] == 1.0
        assert row["size_vram"] == row["size"]
        assert _gauge((await stack.get("/metrics")).body.decode()) == 1.0
        recovered = [
            formatEvent(e)
            for e in logged
            if e.get("log_level") == LogLevel.info and "on the GPU again" in formatEvent(e)
        ]
        assert len(recovered) == 1 and "llama3.2:latest" in recovered[0]
        assert len(_warnings_naming(logged, "llama3.2")) == 1
    finally:
        await stack.stop()
