"""Drain-by-model and the single worker, end to end: daemon + simulator + real clients."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest_twisted
from twisted.internet.defer import DeferredList, ensureDeferred
from twisted.internet.threads import deferToThread

from foreman.testing import OllamaSimulator, reply_text
from tests.harness import Stack, chat, start_stack, until

MODELS = ("llama3.2", "qwen3", "gemma3")


async def _submit_all(stack: Stack, bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    results = await DeferredList(
        [ensureDeferred(stack.submit(body)) for body in bodies], consumeErrors=True
    )
    jobs = []
    for ok, value in results:
        assert ok, value
        jobs.append(value)
    return jobs


@pytest_twisted.ensureDeferred
async def test_interleaved_jobs_load_each_model_once(tmp_path: Path) -> None:
    sim = OllamaSimulator(models=MODELS, token_rate=400.0, load_time=0.05)
    stack = await start_stack(tmp_path, sim=sim)
    try:
        await stack.daemon.worker.stop(0)  # queue everything first, as a batch would
        bodies = [chat(MODELS[i % 3], f"item {i}") for i in range(60)]
        jobs = await _submit_all(stack, bodies)
        stack.daemon.worker.start()
        finals = [await stack.wait_job(job["id"]) for job in jobs]
        assert {f["state"] for f in finals} == {"done"}
        assert sim.loads == 3, sim.loads
        assert sim.max_in_flight == 1
        for body, final in zip(bodies, finals, strict=True):
            text = reply_text(body["model"], body["messages"][0]["content"], 8)
            assert final["result"]["message"]["content"] == text
        # the target saw one model at a time: two switches for three models
        served = [r.model for r in sim.requests if r.path == "/api/chat" and r.json["messages"]]
        assert len(served) == 60
        switches = sum(1 for a, b in itertools.pairwise(served) if a != b)
        assert switches == 2
    finally:
        await stack.stop()


@pytest_twisted.ensureDeferred
async def test_interactive_and_jobs_never_overlap_at_the_target(tmp_path: Path) -> None:
    import ollama  # on use: the client takes a second or two to import

    sim = OllamaSimulator(models=MODELS, token_rate=300.0, load_time=0.05)
    stack = await start_stack(tmp_path, sim=sim)
    client = ollama.Client(host=stack.url)
    try:
        jobs = await _submit_all(stack, [chat(MODELS[i % 3], f"job {i}") for i in range(12)])

        def interactive(i: int) -> str:
            model = MODELS[i % 3]
            if i % 2:
                parts = client.chat(
                    model=model, messages=[{"role": "user", "content": f"q{i}"}], stream=True
                )
                return "".join(p.message.content or "" for p in parts)
            reply = client.chat(model=model, messages=[{"role": "user", "content": f"q{i}"}])
            return reply.message.content or ""

        answers = await DeferredList(
            [deferToThread(interactive, i) for i in range(6)], consumeErrors=True
        )
        for i, (ok, value) in enumerate(answers):
            assert ok, value
            assert value == reply_text(MODELS[i % 3], f"q{i}", 8)
        finals = [await stack.wait_job(job["id"]) for job in jobs]
        assert {f["state"] for f in finals} == {"done"}
        assert sim.max_in_flight == 1
    finally:
        client._client.close()
        await stack.stop()


@pytest_twisted.ensureDeferred
async def test_sleeping_target_then_wake_everything_finishes(tmp_path: Path) -> None:
    import ollama  # on use: the client takes a second or two to import

    sim = OllamaSimulator(models=MODELS, token_rate=300.0, load_time=0.05)
    stack = await start_stack(tmp_path, sim=sim)
    client = ollama.Client(host=stack.url, timeout=60)
    try:
        await sim.sleep(refuse=True)
        monitor = stack.daemon.monitor
        assert monitor is not None
        await until(lambda: monitor.state == "down", timeout=15)
        jobs = await _submit_all(stack, [chat(MODELS[i % 2], f"asleep {i}") for i in range(4)])
        pending = deferToThread(
            lambda: client.chat(model="llama3.2", messages=[{"role": "user", "content": "wake"}])
        )
        await until(lambda: stack.daemon.queue.interactive_waiting == 1, timeout=10)
        status = (await stack.get("/status")).json()
        assert status["target"]["state"] == "down"
        assert status["worker"]["state"] == "waiting_for_target"
        for job in jobs:
            shown = (await stack.get(f"/jobs/{job['id']}")).json()
            assert shown["state"] == "queued"
            assert shown["attempts"] == 0

        await sim.wake()
        reply = await pending
        assert reply.message.content == reply_text("llama3.2", "wake", 8)
        finals = [await stack.wait_job(job["id"]) for job in jobs]
        assert {f["state"] for f in finals} == {"done"}
        assert all(f["attempts"] == 0 for f in finals)
    finally:
        client._client.close()
        await stack.stop()


@pytest_twisted.ensureDeferred
async def test_failing_target_retries_then_fails(tmp_path: Path) -> None:
    from foreman.testing import Fault

    sim = OllamaSimulator(models=MODELS, token_rate=300.0, load_time=0.05)
    stack = await start_stack(tmp_path, sim=sim, max_attempts=2)
    try:
        import foreman.core.backoff

        original = foreman.core.backoff.job_retry_delay
        sim.inject(Fault.HTTP_500, count=1, path="/api/chat")
        job = await stack.submit(chat("llama3.2", "retry me"))
        first = await stack.wait_job(job["id"], timeout=60)
        assert first["state"] == "done", first
        assert first["attempts"] == 1
        assert foreman.core.backoff.job_retry_delay is original

        sim.inject(Fault.ERROR_MID_STREAM, count=1, path="/api/chat")
        broken = await stack.submit(chat("llama3.2", "break me"))
        failed = await stack.wait_job(broken["id"], timeout=60)
        assert failed["state"] == "failed"
        assert failed["error"]["code"] == "stream_error"
    finally:
        await stack.stop()
