"""Interactive requests in the queue: wait header, queue limit, leaving the queue."""

from __future__ import annotations

import json
from pathlib import Path

import pytest_twisted
import treq
from twisted.internet.defer import ensureDeferred
from twisted.internet.task import deferLater

from foreman.testing import OllamaSimulator, reply_text
from tests.harness import chat, reactor, start_stack, until


def _slow_sim() -> OllamaSimulator:
    return OllamaSimulator(models=("llama3.2", "qwen3"), token_rate=20.0, load_time=0.05)


@pytest_twisted.ensureDeferred
async def test_queued_request_reports_its_wait_and_gets_its_answer(tmp_path: Path) -> None:
    stack = await start_stack(tmp_path, sim=_slow_sim())
    try:
        job = await stack.submit(chat("llama3.2", options={"num_predict": 10}))
        await until(lambda: stack.daemon.runner.phase == "working")
        body = chat("llama3.2", "quick", stream=False)
        response = await stack.post("/api/chat", body)
        assert response.status == 200
        waited = float(response.headers.getRawHeaders(b"x-foreman-queue-wait-ms")[0])
        assert waited > 50  # it waited for the running job
        assert response.json()["message"]["content"] == reply_text("llama3.2", "quick", 8)
        await stack.wait_job(job["id"])
    finally:
        await stack.stop()


@pytest_twisted.ensureDeferred
async def test_queue_full_gives_503_with_retry_after(tmp_path: Path) -> None:
    stack = await start_stack(tmp_path, sim=_slow_sim(), max_queue=1)
    try:
        job = await stack.submit(chat("llama3.2", options={"num_predict": 20}))
        await until(lambda: stack.daemon.runner.phase == "working")
        first = ensureDeferred(stack.post("/api/chat", chat("llama3.2", stream=False)))
        await until(lambda: stack.daemon.queue.interactive_waiting == 1)
        full = await stack.post("/api/chat", chat("llama3.2", stream=False))
        assert full.status == 503
        assert int(full.headers.getRawHeaders(b"retry-after")[0]) >= 1
        assert "error" in full.json()
        openai_full = await stack.post(
            "/v1/chat/completions", {"model": "llama3.2", "messages": []}
        )
        assert openai_full.status == 503
        assert openai_full.json()["error"]["message"]
        # jobs are not limited by FOREMAN_MAX_QUEUE
        more = await stack.submit(chat("qwen3"))
        assert (await first).status == 200
        await stack.wait_job(job["id"])
        await stack.wait_job(more["id"])
    finally:
        await stack.stop()


@pytest_twisted.ensureDeferred
async def test_client_leaving_while_queued_leaves_the_queue(tmp_path: Path) -> None:
    sim = _slow_sim()
    stack = await start_stack(tmp_path, sim=sim)
    try:
        job = await stack.submit(chat("llama3.2", options={"num_predict": 30}))
        await until(lambda: stack.daemon.runner.phase == "working")
        waiting = treq.post(
            stack.url + "/api/chat",
            data=json.dumps(chat("qwen3", "gone")).encode(),
            pool=stack.pool,
        )
        await until(lambda: stack.daemon.queue.interactive_waiting == 1)
        queue = (await stack.get("/queue")).json()
        assert [q["kind"] for q in queue["data"]] == ["interactive"]
        waiting.cancel()  # the client gives up
        await until(lambda: stack.daemon.queue.interactive_waiting == 0)
        assert (await stack.get("/queue")).json()["total"] == 0
        await stack.wait_job(job["id"])
        await deferLater(reactor, 0.2, lambda: None)
        assert all(r.model != "qwen3" for r in sim.requests)  # it never reached the target
    finally:
        await stack.stop()
