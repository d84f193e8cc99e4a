"""Artifacts that cannot be written: the job fails clearly, the daemon carries on.

Tests run as root in CI, where ``chmod`` stops nothing, so the failures are
made with the file system itself: the artifacts directory replaced by a file
(every ``mkdir`` under it fails), a job's own directory taken by a file, and
a full disk — the job's temporary artifact file is a symlink to ``/dev/full``,
whose writes fail with ENOSPC exactly as on a full file system.

Expected (``foreman.core.jobstate``): ``failed`` with code ``artifact_write_error``
after one attempt (retrying would not make space), nothing partial left in
the job's directory, ``/healthz`` still 200, and the next job runs normally
once the operator has fixed the directory.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest_twisted

from foreman.testing import OllamaSimulator, reply_text
from tests.harness import Stack, chat, start_stack, until
from tests.receiver import Receiver


async def _next_job_is_fine(stack: Stack, prompt: str) -> None:
    job = await stack.submit(chat("llama3.2", prompt))
    final = await stack.wait_job(job["id"])
    assert final["state"] == "done", final
    served = await stack.get(f"/jobs/{job['id']}/artifacts/response.json")
    assert served.status == 200
    assert served.json()["message"]["content"] == reply_text("llama3.2", prompt)


def _assert_failed_for_artifacts(job: dict[str, object], detail: str) -> None:
    assert job["state"] == "failed", job
    assert job["attempts"] == 1, job
    error = job["error"]
    assert isinstance(error, dict), job
    assert error["code"] == "artifact_write_error", job
    assert "could not write artifacts" in error["message"], job
    assert detail in error["message"], job


@pytest_twisted.ensureDeferred
async def test_artifacts_directory_replaced_by_a_file(tmp_path: Path) -> None:
    receiver = Receiver()
    await receiver.listen()
    stack = await start_stack(tmp_path)
    artifacts = stack.daemon.config.artifacts_dir
    try:
        artifacts.rmdir()
        artifacts.write_bytes(b"not a directory")
        job = await stack.submit(chat("llama3.2", "nowhere to write"), webhook_url=receiver.url)
        final = await stack.wait_job(job["id"])
        _assert_failed_for_artifacts(final, "Not a directory")
        assert (await stack.get("/healthz")).status == 200
        assert (await stack.get(f"/jobs/{job['id']}/artifacts/response.json")).status == 404
        assert (await stack.get(f"/jobs/{job['id']}/artifacts/request.json")).status == 200
        await until(lambda: "job.failed" in receiver.types())
        failed_event = receiver.ok()[-1].event()
        assert failed_event["data"]["error"]["code"] == "artifact_write_error"

        artifacts.unlink()  # the operator fixes it; no restart needed
        artifacts.mkdir()
        await _next_job_is_fine(stack, "fixed")
    finally:
        await stack.stop()
        await receiver.close()


@pytest_twisted.ensureDeferred
async def test_job_directory_taken_and_disk_full(tmp_path: Path) -> None:
    sim = OllamaSimulator(models=("llama3.2",), token_rate=200.0, load_time=0.05)
    stack = await start_stack(tmp_path, sim=sim)
    monitor = stack.daemon.monitor
    assert monitor is not None
    artifacts = stack.daemon.config.artifacts_dir
    try:
        # hold the work back while the traps are laid: the target sleeps
        await sim.sleep(refuse=True)
        monitor.poke()
        await until(lambda: monitor.state == "down", timeout=20)
        taken = await stack.submit(chat("llama3.2", "taken"))
        full = await stack.submit(chat("llama3.2", "disk full"))
        fine = await stack.submit(chat("llama3.2", "fine"))
        (artifacts / taken["id"]).write_bytes(b"a file where the job's directory goes")
        (artifacts / full["id"]).mkdir()
        (artifacts / full["id"] / ".response.json.tmp").symlink_to("/dev/full")

        await sim.wake()
        monitor.poke()
        _assert_failed_for_artifacts(await stack.wait_job(taken["id"]), "File exists")
        _assert_failed_for_artifacts(
            await stack.wait_job(full["id"]), os.strerror(28)
        )  # ENOSPC: No space left on device
        assert (await stack.wait_job(fine["id"]))["state"] == "done"
        assert not (artifacts / full["id"]).exists()  # the partial attempt was discarded
        assert stat.S_ISCHR(os.stat("/dev/full").st_mode)  # … without following the symlink
        assert (await stack.get("/healthz")).status == 200
        status = (await stack.get("/status")).json()
        assert status["worker"]["state"] == "idle", status
        await _next_job_is_fine(stack, "after the disk was full")
    finally:
        await stack.stop()
