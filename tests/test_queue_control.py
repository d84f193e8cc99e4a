"""Pause, resume, drain and activity on the real daemon (in-process) and the simulator."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest_twisted
from twisted.internet.defer import Deferred

from foreman.testing import OllamaSimulator
from tests.harness import Stack, chat, start_stack, until


def _sim(**kw: Any) -> OllamaSimulator:
    kw.setdefault("token_rate", 400.0)
    kw.setdefault("load_time", 0.0)
    kw.setdefault("reply_tokens", 4)
    return OllamaSimulator(models=("llama3.2", "qwen3"), **kw)


async def state(stack: Stack) -> dict[str, Any]:
    found: dict[str, Any] = (await stack.get("/queue")).json()["state"]
    return found


@pytest_twisted.ensureDeferred
async def test_pause_holds_everything_and_resume_runs_it(tmp_path: Path) -> None:
    stack = await start_stack(tmp_path, _sim())
    try:
        paused = await stack.post("/queue/pause")
        assert paused.status == 200
        body = paused.json()
        assert body["object"] == "queue.state" and body["paused"] and not body["draining"]
        assert body["since"] is not None and body["drained"] is True
        again = (await stack.post("/queue/pause")).json()
        assert again["since"] == body["since"]  # idempotent: the first pause's time stays
        job = await stack.submit(chat("llama3.2", "held"))
        chat_reply: Deferred[Any] = Deferred.fromCoroutine(
            stack.post("/api/chat", {**chat("qwen3", "waits"), "stream": False})
        )
        await until(lambda: len(stack.daemon.queue.scheduler) == 2)
        assert stack.sim.loads == 0  # nothing reached the target
        status = (await stack.get("/status")).json()
        assert status["worker"]["state"] == "paused" and status["control"]["queued"] == 2
        assert (await stack.get(f"/jobs/{job['id']}")).json()["state"] == "queued"
        metrics = (await stack.get("/metrics")).body.decode()
        assert "foreman_queue_paused 1.0" in metrics
        resumed = (await stack.post("/queue/resume")).json()
        assert resumed["paused"] is False and resumed["since"] is None
        assert (await chat_reply).status == 200
        assert (await stack.wait_job(job["id"]))["state"] == "done"
        noop = await stack.post("/queue/resume")
        assert noop.status == 200 and noop.json()["paused"] is False
    finally:
        await stack.stop()


@pytest_twisted.ensureDeferred
async def test_drain_lets_the_running_request_finish_then_reports_drained(
    tmp_path: Path,
) -> None:
    stack = await start_stack(tmp_path, _sim(token_rate=20.0, reply_tokens=10))
    try:
        first = await stack.submit(chat("llama3.2", "running"))
        second = await stack.submit(chat("llama3.2", "stays"))
        await until(lambda: stack.daemon.worker.current is not None)
        started = time.monotonic()
        drained = (await stack.post("/queue/drain?wait=30")).json()
        assert drained["paused"] and drained["draining"] and drained["drained"]
        assert drained["running"] is False and drained["queued"] == 1
        assert time.monotonic() - started > 0.1  # it waited for the running job
        assert (await stack.get(f"/jobs/{first['id']}")).json()["state"] == "done"
        assert (await stack.get(f"/jobs/{second['id']}")).json()["state"] == "queued"
        await stack.post("/queue/resume")
        assert (await stack.wait_job(second["id"]))["state"] == "done"
    finally:
        await stack.stop()


@pytest_twisted.ensureDeferred
async def test_paused_survives_a_restart(tmp_path: Path) -> None:
    stack = await start_stack(tmp_path, _sim())
    try:
        await stack.post("/queue/pause")
        job = await stack.submit(chat("llama3.2", "after restart"))
    finally:
        await stack.stop()
    stack = await start_stack(tmp_path, _sim())
    try:
        assert (await state(stack))["paused"] is True
        await until(lambda: stack.daemon.worker.state == "paused")
        assert (await stack.get(f"/jobs/{job['id']}")).json()["state"] == "queued"
        await stack.post("/queue/resume")
        assert (await stack.wait_job(job["id"]))["state"] == "done"
    finally:
        await stack.stop()


@pytest_twisted.ensureDeferred
async def test_activity_answers_on_a_change_not_by_polling(tmp_path: Path) -> None:
    stack = await start_stack(tmp_path, _sim(token_rate=50.0, reply_tokens=5))
    try:
        idle = (await stack.get("/queue/activity")).json()
        assert idle == {
            "object": "queue.activity",
            "busy": False,
            "queued": 0,
            "running": False,
            "paused": False,
            "draining": False,
        }
        waiting: Deferred[Any] = Deferred.fromCoroutine(
            stack.get("/queue/activity?wait=30&busy=false")
        )
        await until(lambda: True, timeout=0.1)
        assert not waiting.called
        job = await stack.submit(chat("llama3.2", "wakes it"))
        busy = (await waiting).json()
        assert busy["busy"] is True
        # asked with what it already knows, it waits for the end
        ended = (await stack.get("/queue/activity?wait=30&busy=true")).json()
        assert ended["busy"] is False
        assert (await stack.get(f"/jobs/{job['id']}?wait=5")).json()["state"] == "done"
        timed_out = (await stack.get("/queue/activity?wait=0.2&busy=false")).json()
        assert timed_out["busy"] is False
    finally:
        await stack.stop()


@pytest_twisted.ensureDeferred
async def test_bad_queue_input_gets_clear_errors(tmp_path: Path) -> None:
    stack = await start_stack(tmp_path, _sim())
    try:
        unknown = await stack.post("/queue/explode")
        assert unknown.status == 404
        assert unknown.json()["error"]["code"] == "unknown_queue_action"
        assert "pause, resume, drain" in unknown.json()["error"]["message"]
        wrong = await stack.get("/queue/pause")
        assert wrong.status == 405
        bad = await stack.get("/queue/activity?wait=soon")
        assert bad.status == 400 and bad.json()["error"]["code"] == "invalid_parameter"
        bad = await stack.get("/queue/activity?busy=maybe")
        assert bad.status == 400
        bad = await stack.post("/queue/drain?wait=9999")
        assert bad.status == 400
        assert (await state(stack))["paused"] is False  # a refused drain pauses nothing
    finally:
        await stack.stop()
