"""Estimated start and finish on the real daemon: jobs, /queue, batches, /status."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted

from foreman.testing import Fault, OllamaSimulator
from tests.harness import chat, start_stack, until
from tests.test_batches_api import chat_line, create, upload


def _time(text: str) -> float:
    return datetime.datetime.fromisoformat(text).timestamp()


@pytest_twisted.ensureDeferred
async def test_queued_work_gets_estimates_learned_per_model(tmp_path: Path) -> None:
    sim = OllamaSimulator(
        models=("llama3.2", "qwen2.5"), token_rate=100.0, reply_tokens=10, load_time=0.0
    )
    stack = await start_stack(tmp_path, sim)
    try:
        for i in range(3):  # learn llama3.2: about 0.1 s a request
            done = await stack.submit(chat("llama3.2", f"learn {i}"))
            await stack.wait_job(done["id"])
        sim.inject(Fault.HANG, count=1, path="/api/chat")
        blocker = await stack.submit(chat("llama3.2", "holds the target"))
        await until(lambda: stack.daemon.worker.current is not None)
        jobs = [await stack.submit(chat("llama3.2", f"wait {i}")) for i in range(3)]
        stranger = await stack.submit(chat("qwen2.5", "never seen"))
        etas = [(await stack.get(f"/jobs/{j['id']}")).json()["eta"] for j in jobs]
        assert all(e["known"] for e in etas), etas
        starts = [_time(e["start_at"]) for e in etas]
        finishes = [_time(e["finish_at"]) for e in etas]
        assert starts == sorted(starts) and all(
            f > s for s, f in zip(starts, finishes, strict=True)
        )
        learned_s = stack.daemon.worker.estimator.service("llama3.2")
        assert learned_s is not None
        assert finishes[0] - starts[0] == pytest.approx(learned_s, abs=0.002)
        unknown = (await stack.get(f"/jobs/{stranger['id']}")).json()["eta"]
        assert unknown["known"] is False and "qwen2.5" in unknown["note"]
        queue = (await stack.get("/queue")).json()
        assert [item["eta"]["known"] for item in queue["data"]] == [True, True, True, False]
        learned = (await stack.get("/status")).json()["learned"]
        assert learned["llama3.2:latest"]["samples"] >= 3
        batch = await create(
            stack, (await upload(stack, [chat_line(f"b{i}") for i in range(4)]))["id"]
        )
        shown: dict[str, Any] = batch
        while shown["status"] == "validating":
            shown = (await stack.get(f"/v1/batches/{batch['id']}?wait=10&status=validating")).json()
        # llama3.2 is resident: its lines go before the qwen2.5 job (drain-by-model)
        assert shown["eta"]["known"] is True
        assert shown["eta"]["finish_at"] >= int(finishes[-1])  # after the jobs ahead of it
        await stack.post("/queue/pause")
        held = (await stack.get(f"/jobs/{jobs[0]['id']}")).json()["eta"]
        assert held["known"] is False and "paused" in held["note"]
        await stack.post("/queue/resume")
        await stack.post(f"/jobs/{blocker['id']}/cancel")
        for j in [*jobs, stranger]:
            final = await stack.wait_job(j["id"])
            assert final["state"] == "done" and final["eta"] is None
    finally:
        await stack.stop()


def test_the_cli_says_when_a_queued_job_starts() -> None:
    from foreman.client._render import job_line, starts_in

    now = datetime.datetime(2026, 12, 5, 8, 0, 0, tzinfo=datetime.UTC)
    learned = {"start_at": "2026-12-05T08:01:30.000Z", "finish_at": "…", "known": True}
    guess = {**learned, "known": False, "note": "a guess"}
    assert starts_in(learned, now) == "starts in ~1m30s"
    assert starts_in(guess, now) == "starts in ~? 1m30s"
    assert starts_in(None, now) is None
    line = job_line("job_1", "queued", None, 2.0, "starts in ~1m30s (position 3)")
    assert line == "job_1  queued  starts in ~1m30s (position 3)  2.0 s"
    assert "starts" not in job_line("job_1", "working", 4, 2.0, "starts in ~1m30s")
