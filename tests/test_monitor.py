"""The target monitor against the simulator: up/down, loaded models, backoff, when_up."""

from __future__ import annotations

import json
import random
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest_twisted
import treq
from twisted.internet import reactor as _reactor
from twisted.internet.defer import CancelledError
from twisted.internet.task import deferLater
from twisted.logger import LogLevel
from twisted.web.client import Agent, HTTPConnectionPool

from foreman.core.backoff import monitor_probe_delay
from foreman.target.monitor import TargetMonitor, TargetSnapshot
from foreman.target.upstream import build_upstream
from foreman.testing import SIMULATED_VERSION, OllamaSimulator
from tests.test_proxy_support import wait_until

reactor: Any = _reactor


@asynccontextmanager
async def watched(
    sim: OllamaSimulator, token: str | None = None, **kwargs: Any
) -> AsyncIterator[TargetMonitor]:
    if sim.port is None:
        await sim.listen("tcp:0:interface=127.0.0.1")
    upstream = build_upstream(reactor, sim.url)
    monitor = TargetMonitor(reactor, sim.url, token, upstream.agent, **kwargs)
    try:
        yield monitor
    finally:
        monitor.stop()
        await upstream.close()
        await sim.close()


async def _chat_directly(url: str, model: str) -> None:
    pool = HTTPConnectionPool(reactor, persistent=False)
    try:
        response = await treq.post(
            url + "/api/chat",
            data=json.dumps(
                {"model": model, "messages": [{"role": "user", "content": "x"}], "stream": False}
            ).encode(),
            agent=Agent(reactor, pool=pool),
        )
        await treq.content(response)
    finally:
        await pool.closeCachedConnections()


@pytest_twisted.ensureDeferred
async def test_sees_the_target_up_with_version_models_and_cached_metadata() -> None:
    sim = OllamaSimulator(token_rate=0, load_time=0.0)
    async with watched(sim, interval=0.1) as monitor:
        changes: list[TargetSnapshot] = []
        monitor.subscribe(changes.append)
        assert monitor.snapshot().state == "unknown"
        monitor.start()
        await wait_until(lambda: monitor.state == "up")
        assert monitor.version == SIMULATED_VERSION
        assert not monitor.loaded_models
        assert monitor.last_seen is not None
        tags = json.loads(monitor.cached[b"/api/tags"].body)
        assert any(m["name"] == "llama3.2:latest" for m in tags["models"])
        assert monitor.cached[b"/api/version"].content_type.startswith(b"application/json")

        await _chat_directly(sim.url, "llama3.2")
        await wait_until(lambda: monitor.loaded_models == ("llama3.2:latest",))
        assert [c.state for c in changes] == ["up", "up"]
        assert changes[-1].loaded_models == ("llama3.2:latest",)


@pytest_twisted.ensureDeferred
async def test_sends_the_target_token() -> None:
    sim = OllamaSimulator(required_token="target-secret")
    async with watched(sim, token="target-secret") as monitor:
        monitor.start()
        await wait_until(lambda: monitor.state == "up" and monitor.version is not None)
        assert {r.authorization for r in sim.requests} == {"Bearer target-secret"}


@pytest_twisted.ensureDeferred
async def test_down_with_backoff_then_up_again_and_when_up_fires() -> None:
    sim = OllamaSimulator()
    delays: list[tuple[int, float]] = []

    def fast_backoff(failures: int, rng: random.Random) -> float:
        delay = monitor_probe_delay(failures, rng) / 10  # same shape, ten times faster
        delays.append((failures, delay))
        return delay

    async with watched(sim, interval=5.0, delay=fast_backoff) as monitor:
        monitor.start()
        await wait_until(lambda: monitor.state == "up")
        assert monitor.when_up().called  # already up: fires at once

        await sim.sleep(refuse=True)
        monitor.poke()
        await wait_until(lambda: monitor.state == "down")
        waiting = monitor.when_up()
        assert not waiting.called
        await wait_until(lambda: monitor.consecutive_failures >= 4, timeout=10)
        ceilings = [d for _, d in delays[:4]]
        assert [n for n, _ in delays[:4]] == [1, 2, 3, 4]
        assert ceilings[3] > ceilings[0]  # growing
        assert all(d <= 3.0 for _, d in delays)  # capped (30 s / 10)
        assert not waiting.called

        await sim.wake()
        await wait_until(lambda: waiting.called, timeout=10)
        assert monitor.state == "up" and monitor.consecutive_failures == 0


@pytest_twisted.ensureDeferred
async def test_poke_is_rate_limited_and_stop_leaves_nothing_behind() -> None:
    sim = OllamaSimulator()
    async with watched(sim, interval=60.0, min_poke_interval=0.3) as monitor:
        monitor.start()
        await wait_until(lambda: monitor.state == "up")
        probes = monitor.probes
        for _ in range(20):
            monitor.poke()
        await wait_until(lambda: monitor.probes == probes + 1, timeout=2)
        await deferLater(reactor, 0.5, lambda: None)
        assert monitor.probes == probes + 1  # twenty pokes, one probe
        waiting = monitor.when_up()
        assert waiting.called  # up now
        idle = TargetMonitor(reactor, sim.url, None, Agent(reactor))
        gave_up = idle.when_up()
        gave_up.cancel()  # a waiter can give up
        failures: list[Any] = []
        gave_up.addErrback(failures.append)
        assert failures and failures[0].check(CancelledError)
    # the conftest leak guard fails this test if a timer or probe survived stop()


@pytest_twisted.ensureDeferred
async def test_a_wrong_target_url_is_a_warning_with_the_reason(logged: list[Any]) -> None:
    """Start-up against nothing: a warning naming the URL, and last_error says why."""
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
    url = f"http://127.0.0.1:{holder.getsockname()[1]}"
    upstream = build_upstream(reactor, url)
    monitor = TargetMonitor(reactor, url, None, upstream.agent, probe_timeout=1.0)
    try:
        monitor.start()
        await wait_until(lambda: monitor.state == "down")
        assert monitor.last_error and "refused" in monitor.last_error.lower()
        [warning] = [e for e in logged if "unreachable at start" in e.get("log_format", "")]
        assert warning["log_level"] == LogLevel.warn and warning["url"] == url
        assert "FOREMAN_TARGET_URL" in warning["log_format"]
    finally:
        monitor.stop()
        await upstream.close()
        holder.close()


@pytest_twisted.ensureDeferred
async def test_ps_entries_reach_on_ps_and_refresh_models_asks_now() -> None:
    sim = OllamaSimulator(["llama3.2", "qwen3:0.6b"], token_rate=0, load_time=0.0)
    async with watched(sim) as monitor:
        seen: list[Any] = []
        monitor.on_ps = seen.append
        monitor.start()
        await wait_until(lambda: monitor.state == "up")
        assert seen[-1] == ()
        await _chat_directly(sim.url, "qwen3:0.6b")
        assert await monitor.refresh_models() is True
        [entry] = seen[-1]
        assert entry.name == "qwen3:0.6b" and entry.expires_at > time.time() + 200
        assert monitor.resident == seen[-1]
