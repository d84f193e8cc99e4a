"""Estimated start and finish on the real daemon: jobs, /queue, batches, /status."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import pytest_twisted

from foreman.testing import OllamaSimulator
from tests.harness import chat, start_stack
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
        await stack.post("/queue/pause")
        jobs = [await stack.submit(chat("llama3.2", f"wait {i}")) for i in range(3)]
        stranger = await stack.submit(chat("qwen2.5", "never seen"))
        etas = [(await stack.get(f"/jobs/{j['id']}")).json()["eta"] for j in jobs]
        assert all(e["known"] for e in etas), etas
        starts = [_time(e["start_at"]) for e in etas]
        finishes = [_time(e["finish_at"]) for e in etas]
        assert starts == sorted(starts) and all(
            f > s for s, f in zip(starts, finishes, strict=True)
        )
        assert 0.02 < finishes[0] - starts[0] < 2.0  # about the learned time
        unknown = (await stack.get(f"/jobs/{stranger['id']}")).json()["eta"]
        assert unknown["known"] is False and "qwen2.5" in unknown["note"]
        queue = (await stack.get("/queue")).json()
        assert [item["eta"]["known"] for item in queue["data"]] == [True, True, True, False]
        learned = (await stack.get("/status")).json()["learned"]
        assert learned["llama3.2:latest"]["samples"] >= 3
        batch = await create(
            stack, (await upload(stack, [chat_line(f"b{i}") for i in range(4)]))["id"]
        )
        shown: dict[str, Any] = {}
        for _ in range(100):
            shown = (await stack.get(f"/v1/batches/{batch['id']}")).json()
            if shown["status"] == "in_progress":
                break
        assert shown["eta"]["known"] is True
        assert shown["eta"]["finish_at"] >= int(finishes[-1])  # after the jobs ahead of it
        await stack.post("/queue/resume")
        for j in [*jobs, stranger]:
            final = await stack.wait_job(j["id"])
            assert final["state"] == "done" and final["eta"] is None
    finally:
        await stack.stop()
