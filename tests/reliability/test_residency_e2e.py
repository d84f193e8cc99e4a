"""A target as it really is: several resident models, and a box that sleeps mid-request.

Real daemon in-process, real simulator with ``max_loaded`` and a suspended
sleep (new connections unanswered, open ones silent until the wake). The
monitor probes every 0.3 s with ``FOREMAN_PROBE_TIMEOUT`` 0.5 s here, so a
sleeping box is noticed within about 0.8 s (5 s + 3 s by default).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest_twisted
import treq
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone

from foreman.testing import Fault, OllamaSimulator, reply_text
from tests.harness import Stack, chat, reactor, start_stack, until

PROBE = 0.5
INTERVAL = 0.3
BOUND = INTERVAL + PROBE + 1.5  # a probe cycle, plus slack for a loaded 2-core box


async def _stack(tmp_path: Path, sim: OllamaSimulator, **config: Any) -> Stack:
    stack = await start_stack(tmp_path, sim=sim, probe_timeout=PROBE, **config)
    monitor = stack.daemon.monitor
    assert monitor is not None
    monitor.interval = INTERVAL
    monitor.poke()
    return stack


def _sim(**kwargs: Any) -> OllamaSimulator:
    options: dict[str, Any] = {
        "models": ("llama3.2", "qwen3", "gemma3"),
        "token_rate": 100.0,
        "load_time": 0.2,
        **kwargs,
    }
    return OllamaSimulator(**options)


class _Lines(Protocol):
    """Collects a streamed body line by line; ``done`` fires when it ends."""

    def __init__(self) -> None:
        self.lines: list[dict[str, Any]] = []
        self.done: Deferred[str] = Deferred()
        self._buffer = b""

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        *whole, self._buffer = self._buffer.split(b"\n")
        self.lines += [json.loads(line) for line in whole if line.strip()]

    def connectionLost(self, reason: Any = None) -> None:
        self.done.callback("clean" if reason.check(ResponseDone) else "cut")


@pytest_twisted.ensureDeferred
async def test_a_resident_model_is_served_in_age_order_without_loads(tmp_path: Path) -> None:
    sim = _sim(max_loaded=2, token_rate=0.0)
    stack = await _stack(tmp_path, sim)
    try:
        for model in ("llama3.2", "qwen3"):  # both resident now
            job = await stack.submit(chat(model, "warm"))
            assert (await stack.wait_job(job["id"]))["state"] == "done"
        await until(lambda: len(stack.daemon.worker.resident()) == 2)
        loads = sim.loads
        stack.daemon.queue.scheduler.capacity = 2
        # hold the worker on a hanging request so the queue fills in a known order
        sim.inject(Fault.HANG)
        blocker = await stack.submit(chat("llama3.2", "blocker"))
        await until(lambda: stack.daemon.runner.job_id == blocker["id"])
        ids = []
        for model, text in (("llama3.2", "a0"), ("qwen3", "b"), ("llama3.2", "a1")):
            ids.append((await stack.submit(chat(model, text)))["id"])
        queue = (await stack.get("/queue")).json()
        assert [e["id"] for e in queue["data"]] == ids  # predicted: age order
        stack.daemon.runner.abort()
        await stack.wait_job(blocker["id"])
        finished = [await stack.wait_job(job_id) for job_id in ids]
        started = [f["started_at"] for f in finished]
        assert started == sorted(started), "qwen3 waited for llama3.2's drain"
        assert sim.loads == loads, "a resident model was loaded again"
        status = (await stack.get("/status")).json()
        names = [m["name"] for m in status["target"]["resident_models"]]
        assert sorted(names) == ["llama3.2:latest", "qwen3:latest"]
        assert status["worker"]["model_loads"] == 2  # the two warm-ups
    finally:
        await stack.stop()


@pytest_twisted.ensureDeferred
async def test_a_model_the_target_lacks_is_never_called_loaded(tmp_path: Path) -> None:
    stack = await _stack(tmp_path, _sim())
    try:
        job = await stack.submit(chat("llama3.2", "warm"))
        assert (await stack.wait_job(job["id"]))["state"] == "done"
        response = await stack.post("/api/chat", chat("doesnotexist", "hi", stream=False))
        assert response.status == 404
        status = (await stack.get("/status")).json()
        assert status["worker"]["loaded_model"] == "llama3.2"
        names = [m["name"] for m in status["target"]["resident_models"]]
        assert names == ["llama3.2:latest"]
    finally:
        await stack.stop()


@pytest_twisted.ensureDeferred
async def test_sleep_mid_job_requeues_it_without_an_attempt(tmp_path: Path) -> None:
    sim = _sim(token_rate=20.0)
    stack = await _stack(tmp_path, sim)
    monitor = stack.daemon.monitor
    assert monitor is not None
    try:
        request = chat("llama3.2", "interrupted", stream=True, options={"num_predict": 40})
        job = await stack.submit(request)
        await until(lambda: stack.daemon.runner.phase == "working" and stack.daemon.runner.tokens)
        await sim.sleep()  # suspended: the stream just stops, nothing is refused
        slept = time.monotonic()
        await until(lambda: monitor.state == "down", timeout=10)
        noticed = time.monotonic() - slept
        assert noticed < BOUND, f"took {noticed:.1f} s to notice"
        await until(lambda: stack.daemon.worker.state == "waiting_for_target", timeout=5)
        deadline = time.monotonic() + 15  # recorded just after the worker is freed
        while True:
            shown = (await stack.get(f"/jobs/{job['id']}")).json()
            if shown["state"] != "working" or time.monotonic() > deadline:
                break
            await deferLater(reactor, 0.02, lambda: None)
        assert (shown["state"], shown["attempts"]) == ("queued", 0), shown
        assert shown["error"]["code"] == "target_unreachable"
        status = (await stack.get("/status")).json()
        assert status["target"]["state"] == "down" and status["target"]["error"]
        assert status["worker"]["lost_to_target"] == 1
        ready = (await stack.get("/readyz")).json()
        assert "no answer" in ready["target_error"]
        await sim.wake()
        final = await stack.wait_job(job["id"], timeout=30)
        assert (final["state"], final["attempts"]) == ("done", 0), final
        expected = reply_text("llama3.2", "interrupted", 40)
        assert final["result"]["message"]["content"] == expected
        stream = await stack.get(f"/jobs/{job['id']}/artifacts/stream.ndjson")
        lines = [json.loads(line) for line in stream.body.splitlines()]
        assert "".join(c["message"]["content"] for c in lines) == expected  # no leftovers
        status = (await stack.get("/status")).json()
        assert status["target"]["wake"]["count"] == 1
        assert status["target"]["wake"]["last_s"] > 0
        metrics = (await stack.get("/metrics")).body.decode()
        assert "foreman_target_wake_seconds_count 1.0" in metrics
        assert "foreman_requests_lost_to_target_total 1.0" in metrics
    finally:
        await stack.stop()


@pytest_twisted.ensureDeferred
async def test_sleep_mid_stream_ends_the_stream_with_an_error_line(tmp_path: Path) -> None:
    sim = _sim(token_rate=20.0)
    stack = await _stack(tmp_path, sim)
    pool = HTTPConnectionPool(reactor, persistent=False)
    try:
        body = json.dumps(chat("llama3.2", "cut", options={"num_predict": 200})).encode()
        response = await treq.post(
            stack.url + "/api/chat", data=body, agent=Agent(reactor, pool=pool)
        )
        assert response.code == 200
        lines = _Lines()
        response.deliverBody(lines)
        await until(lambda: len(lines.lines) >= 3)
        await sim.sleep()
        assert await lines.done == "clean"
        last = lines.lines[-1]
        assert "target went away" in last["error"], last
        assert len(lines.lines) < 200
        await sim.wake()
    finally:
        await pool.closeCachedConnections()
        await stack.stop()


@pytest_twisted.ensureDeferred
async def test_a_request_without_an_answer_yet_waits_for_the_wake(
    tmp_path: Path, logged: list[Any]
) -> None:
    """Asleep during the load: no byte was relayed, so the request just waits again."""
    sim = _sim(load_time=1.5, token_rate=0.0)
    stack = await _stack(tmp_path, sim)
    pool = HTTPConnectionPool(reactor, persistent=False)
    try:
        body = json.dumps(chat("qwen3", "patient", stream=False)).encode()
        answer = treq.post(stack.url + "/api/chat", data=body, agent=Agent(reactor, pool=pool))
        answered: list[int] = []

        def seen(response: Any) -> Any:
            answered.append(response.code)
            return response

        answer.addCallback(seen)
        await sim.wait_for(lambda: sim.loading == "qwen3:latest")
        await sim.sleep()
        monitor = stack.daemon.monitor
        assert monitor is not None
        await until(lambda: monitor.state == "down", timeout=10)
        await until(lambda: stack.daemon.worker.state == "waiting_for_target", timeout=5)
        await deferLater(reactor, 0.3, lambda: None)
        assert answered == []  # no answer and no error: it waits like a queued one
        await sim.wake()
        response = await answer
        assert response.code == 200
        assert json.loads(await response.content())["message"]["content"] == reply_text(
            "qwen3", "patient"
        )
        waited = response.headers.getRawHeaders(b"x-foreman-target-wait-ms")
        assert waited and int(waited[0]) > 0
        [line] = [e for e in logged if e.get("path") == "/api/chat" and "status" in e]
        assert line["target_wait_ms"] == float(waited[0])  # the access log says it too
    finally:
        await pool.closeCachedConnections()
        await stack.stop()


@pytest_twisted.ensureDeferred
async def test_a_blackholed_target_holds_the_worker_no_longer_than_the_bound(
    tmp_path: Path,
) -> None:
    """Accepts, never answers (probes included): the job goes back, the worker waits."""
    sim = _sim()
    stack = await _stack(tmp_path, sim)
    monitor = stack.daemon.monitor
    assert monitor is not None
    try:
        job = await stack.submit(chat("llama3.2", "warm"))
        assert (await stack.wait_job(job["id"]))["state"] == "done"
        sim.inject(Fault.HANG, count=None, path="*")
        job = await stack.submit(chat("llama3.2", "into the void"))
        await until(lambda: stack.daemon.runner.job_id == job["id"])
        held = time.monotonic()
        await until(lambda: stack.daemon.runner.job_id is None, timeout=10)
        stuck = time.monotonic() - held
        assert stuck < BOUND, f"the worker was held {stuck:.1f} s"
        deadline = time.monotonic() + 15  # recorded just after the worker is freed
        while True:
            shown = (await stack.get(f"/jobs/{job['id']}")).json()
            if shown["state"] != "working" or time.monotonic() > deadline:
                break
            await deferLater(reactor, 0.02, lambda: None)
        assert (shown["state"], shown["attempts"]) == ("queued", 0), shown
        sim.clear_faults()
        final = await stack.wait_job(job["id"], timeout=30)
        assert (final["state"], final["attempts"]) == ("done", 0), final
    finally:
        await stack.stop()
