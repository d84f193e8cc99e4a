"""SIGKILL and restart of a real ``twistd -n foreman`` process.

The simulator runs in the test's reactor; the daemon is a subprocess pointed
at it, so the kill is a real process death with a real database left behind.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest_twisted
import treq
from twisted.web.client import HTTPConnectionPool

from foreman.testing import OllamaSimulator
from tests.harness import chat, reactor, until
from tests.proc import DaemonProcess, spawn, wait_ready_async
from tests.receiver import Receiver


async def _json(pool: HTTPConnectionPool, method: str, url: str, body: Any = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    headers: dict[bytes | str, list[bytes | str]] = {b"Content-Type": [b"application/json"]}
    response = await treq.request(method, url, data=data, headers=headers, pool=pool)
    return json.loads(await treq.content(response))


def _rows(db: Path) -> list[tuple[str, str, int]]:
    conn = sqlite3.connect(str(db))
    try:
        return conn.execute("SELECT id, state, attempts FROM jobs ORDER BY id").fetchall()
    finally:
        conn.close()


@pytest_twisted.ensureDeferred
async def test_sigkill_while_working_loses_no_job(tmp_path: Path) -> None:
    sim = OllamaSimulator(models=("llama3.2", "qwen3"), token_rate=30.0, load_time=0.1)
    await sim.listen("tcp:0:interface=127.0.0.1")
    receiver = Receiver()
    await receiver.listen()
    pool = HTTPConnectionPool(reactor, persistent=False)
    env = {"FOREMAN_TARGET_URL": sim.url, "FOREMAN_WEBHOOK_ALLOW_PRIVATE": "true"}
    data = tmp_path / "data"
    proc: DaemonProcess | None = None
    try:
        proc = spawn(data, env=env)
        url = await wait_ready_async(proc)
        ids = []
        for i in range(6):
            job = await _json(
                pool,
                "POST",
                url + "/jobs",
                {
                    "request": chat(
                        "llama3.2" if i % 2 else "qwen3", f"p{i}", options={"num_predict": 15}
                    ),
                    "webhook_url": receiver.url,
                },
            )
            ids.append(job["id"])
        # wait until a job is generating, then kill the process outright
        await sim.wait_for(lambda: sim.in_flight > 0 and sim.completed >= 1, timeout=20)
        proc.kill()
        await until(lambda: proc is not None and proc.popen.poll() is not None)
        before = {row[0]: row for row in _rows(data / "foreman.sqlite3")}
        assert set(before) == set(ids)  # every accepted job is in the database
        interrupted = [i for i, r in before.items() if r[1] in ("loading", "working")]
        assert interrupted, before

        proc = spawn(data, env=env)
        url = await wait_ready_async(proc)
        finals = {}
        for job_id in ids:
            for _ in range(60):
                job = await _json(pool, "GET", f"{url}/jobs/{job_id}?wait=5")
                if job["state"] in ("done", "failed", "cancelled"):
                    break
            finals[job_id] = job
        assert {j["state"] for j in finals.values()} == {"done"}, finals
        for job_id in interrupted:
            assert finals[job_id]["attempts"] == 1  # the interrupted attempt was counted
        # every job told its receiver it finished, exactly once per job
        await until(
            lambda: sum(1 for d in receiver.ok() if d.event()["type"] == "job.done") >= len(ids),
            timeout=20,
        )
        done_ids = [
            d.event()["data"]["id"] for d in receiver.ok() if d.event()["type"] == "job.done"
        ]
        assert sorted(done_ids) == sorted(ids)
        assert proc.stop() == 0
        conn = sqlite3.connect(str(data / "foreman.sqlite3"))
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        conn.close()
    finally:
        if proc is not None:
            proc.kill()
        await pool.closeCachedConnections()
        await receiver.close()
        await sim.close()


@pytest_twisted.ensureDeferred
async def test_webhook_pending_at_sigkill_is_delivered_after_restart(tmp_path: Path) -> None:
    sim = OllamaSimulator(models=("llama3.2",), token_rate=200.0, load_time=0.05)
    await sim.listen("tcp:0:interface=127.0.0.1")
    receiver = Receiver()
    await receiver.listen()
    hook_url, hook_port = receiver.url, receiver.port_number
    await receiver.close()  # receiver down: deliveries stay pending
    pool = HTTPConnectionPool(reactor, persistent=False)
    env = {"FOREMAN_TARGET_URL": sim.url, "FOREMAN_WEBHOOK_ALLOW_PRIVATE": "true"}
    data = tmp_path / "data"
    proc: DaemonProcess | None = None
    try:
        proc = spawn(data, env=env)
        url = await wait_ready_async(proc)
        job = await _json(
            pool, "POST", url + "/jobs", {"request": chat("llama3.2"), "webhook_url": hook_url}
        )
        for _ in range(20):
            shown = await _json(pool, "GET", f"{url}/jobs/{job['id']}?wait=5")
            if shown["state"] == "done":
                break
        assert shown["state"] == "done"
        proc.kill()
        conn = sqlite3.connect(str(data / "foreman.sqlite3"))
        pending = conn.execute("SELECT count(*) FROM outbox WHERE status = 'pending'").fetchone()
        conn.close()
        assert pending[0] == 4

        await receiver.listen(hook_port)
        proc = spawn(data, env=env)
        await wait_ready_async(proc)
        await until(lambda: len(receiver.ok()) == 4, timeout=30)
        assert receiver.types() == ["job.queued", "job.loading", "job.working", "job.done"]
        assert proc.stop() == 0
    finally:
        if proc is not None:
            proc.kill()
        await pool.closeCachedConnections()
        await receiver.close()
        await sim.close()


async def _sigterm_during_job(
    sim: OllamaSimulator, pool: HTTPConnectionPool, data: Path, grace: str, tokens: int
) -> tuple[int, tuple[str, str, int]]:
    """Start twistd, run one job, SIGTERM it mid-generation: (exit status, job row)."""
    env = {"FOREMAN_TARGET_URL": sim.url, "FOREMAN_SHUTDOWN_GRACE": grace}
    proc = spawn(data, env=env)
    try:
        url = await wait_ready_async(proc)
        body = {"request": chat("llama3.2", options={"num_predict": tokens})}
        job = await _json(pool, "POST", url + "/jobs", body)
        await sim.wait_for(lambda: sim.in_flight > 0, timeout=10)
        proc.signal(15)
        await until(lambda: proc.popen.poll() is not None, timeout=20)
    finally:
        proc.kill()
    rows = {row[0]: row for row in _rows(data / "foreman.sqlite3")}
    return proc.popen.returncode, rows[job["id"]]


@pytest_twisted.ensureDeferred
async def test_sigterm_lets_the_running_job_finish_or_requeues_it(tmp_path: Path) -> None:
    sim = OllamaSimulator(models=("llama3.2",), token_rate=20.0, load_time=0.05)
    await sim.listen("tcp:0:interface=127.0.0.1")
    pool = HTTPConnectionPool(reactor, persistent=False)
    data = tmp_path / "data"
    try:
        # a grace period long enough: the running job finishes, then the process exits 0
        status, row = await _sigterm_during_job(sim, pool, data, "20", 10)
        assert status == 0
        assert row[1] == "done"
        # a grace period too short: the job goes back to the queue, no attempt used
        status, row = await _sigterm_during_job(sim, pool, data, "0.3", 400)
        assert status == 0
        assert row[1:] == ("queued", 0)
    finally:
        await pool.closeCachedConnections()
        await sim.close()
