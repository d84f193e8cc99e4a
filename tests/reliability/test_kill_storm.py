"""Repeated SIGKILL of a real ``twistd -n foreman`` at random moments, under load.

The single-kill tests (``tests/test_crash_recovery.py``) kill once at a chosen
moment. Here the daemon is killed again and again — while starting up, while a
job is generating, at any moment — while clients keep submitting jobs (retrying
with the same ``Idempotency-Key`` when a kill cuts them off, as a real client
does) and keep streaming interactive requests through the proxy. Afterwards:

* every accepted job exists exactly once and reached one terminal state
  (``done``), with the right content and its artifacts;
* its event log has exactly one terminal event, and seqs have no gap;
* the webhook outbox holds exactly one ``job.done`` per job, all delivered; the
  receiver saw exactly one ``job.done`` message id per job (a message may be
  re-sent after a kill — at-least-once, same id), each job's events first
  arrived in seq order, and every signature verifies;
* ``PRAGMA integrity_check`` and ``foreign_key_check`` pass; no half-written
  artifact is left behind.

The randomness is seeded; the seed is printed (pytest shows it on failure) and
``RELIABILITY_SEED=<n>`` replays a run. The everyday run kills three times;
``RELIABILITY_KILLS=<n>`` kills more often.
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest_twisted
import treq
from attrs import define, field
from standardwebhooks import Webhook
from twisted.internet.defer import Deferred, ensureDeferred, gatherResults
from twisted.internet.task import deferLater
from twisted.web.client import HTTPConnectionPool

from foreman.testing import OllamaSimulator, reply_text
from tests.harness import chat, reactor, start_stack, until
from tests.proc import DaemonProcess, find_url, spawn, wait_ready_async
from tests.receiver import Receiver

JOBS = 24
KILLS = int(os.environ.get("RELIABILITY_KILLS", "3"))
LANES = 3
MODELS = ("llama3.2", "qwen3")
MOMENTS = ("startup", "generating", "anytime")


def _seed() -> int:
    raw = os.environ.get("RELIABILITY_SEED")
    return int(raw) if raw else random.SystemRandom().randrange(2**32)


async def _sleep(seconds: float) -> None:
    await deferLater(reactor, seconds, lambda: None)


@define
class Load:
    """What the clients did and saw while the daemon was being killed."""

    url: str | None = None
    accepted: dict[str, str] = field(factory=dict)  # idempotency key -> job id
    interactive_complete: int = 0
    interactive_cut: int = 0
    stop: bool = False


def _job_generating(sim: OllamaSimulator) -> bool:
    """A worker (job) request is being answered by the target right now."""
    return any(
        r.finished_at is None and r.headers.get("user-agent") == "foreman-worker"
        for r in sim.requests[-8:]
    )


async def _submit_all(
    load: Load, pool: HTTPConnectionPool, rng: random.Random, specs: list[tuple[str, Any]]
) -> None:
    """Submit every job; a POST cut off by a kill is retried with the same key."""
    for key, body in specs:
        headers: dict[bytes | str, bytes | str] = {
            "Content-Type": "application/json",
            "Idempotency-Key": key,
        }
        while not load.stop:
            url = load.url
            if url is None:
                await _sleep(0.05)
                continue
            try:
                response = await treq.post(
                    url + "/jobs",
                    json.dumps(body).encode(),
                    headers=headers,
                    pool=pool,
                    timeout=30,
                )
                content = await treq.content(response)
            except Exception:  # killed mid-request: try again on the next daemon
                await _sleep(0.05)
                continue
            assert response.code in (200, 202), (response.code, content)
            load.accepted[key] = json.loads(content)["id"]
            break
        await _sleep(rng.uniform(0.0, 0.2))


async def _interactive(load: Load, pool: HTTPConnectionPool) -> None:
    """Stream chats through the proxy; any that completes must be complete and right."""
    n = 0
    while not load.stop:
        url = load.url
        if url is None:
            await _sleep(0.05)
            continue
        n += 1
        prompt = f"interactive {n}"
        body = chat("llama3.2", prompt, stream=True, options={"num_predict": 6})
        try:
            response = await treq.post(
                url + "/api/chat", json.dumps(body).encode(), pool=pool, timeout=30
            )
            content = await treq.content(response)
        except Exception:
            load.interactive_cut += 1
            await _sleep(0.05)
            continue
        assert response.code == 200, content
        lines = [json.loads(line) for line in content.splitlines() if line.strip()]
        assert lines[-1]["done"] is True, lines[-1]
        text = "".join(line["message"]["content"] for line in lines)
        assert text == reply_text("llama3.2", prompt, 6)
        load.interactive_complete += 1
        await _sleep(0.3)


def _db(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(str(path))
    conn.row_factory = sqlite3.Row
    return conn


def _running_jobs(db: Path) -> int:
    if not db.exists():
        return 0
    conn = _db(db)
    try:
        row = conn.execute(
            "SELECT count(*) FROM jobs WHERE state IN ('loading', 'working')"
        ).fetchone()
        return int(row[0])
    except sqlite3.OperationalError:  # killed before the schema was created
        return 0
    finally:
        conn.close()


@pytest_twisted.ensureDeferred
async def test_repeated_sigkill_under_load_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    seed = _seed()
    print(f"kill storm seed: {seed} (replay with RELIABILITY_SEED={seed})")
    rng = random.Random(seed)
    sim = OllamaSimulator(models=MODELS, token_rate=60.0, load_time=0.05)
    await sim.listen("tcp:0:interface=127.0.0.1")
    receiver = Receiver()
    await receiver.listen()
    pool = HTTPConnectionPool(reactor, persistent=False)
    env = {
        "FOREMAN_TARGET_URL": sim.url,
        "FOREMAN_WEBHOOK_ALLOW_PRIVATE": "true",
        "FOREMAN_MAX_ATTEMPTS": "50",  # a kill uses an attempt; none may fail for that here
    }
    data = tmp_path / "data"
    db = data / "foreman.sqlite3"
    expected: dict[str, str] = {}  # idempotency key -> reply text
    specs = []
    for i in range(JOBS):
        model, prompt, n = MODELS[i % 2], f"job {i}", rng.randint(8, 30)
        expected[f"key-{i}"] = reply_text(model, prompt, n)
        request = chat(model, prompt, options={"num_predict": n})
        specs.append((f"key-{i}", {"request": request, "webhook_url": receiver.url}))
    load = Load()
    proc: DaemonProcess | None = None
    submitting: Deferred[Any] | None = None
    chatting: Deferred[None] | None = None
    lanes: list[Deferred[None]] = []
    kills: list[tuple[str, float, int]] = []
    try:
        # three clients submit side by side, so creations share group commits
        lanes = [
            ensureDeferred(_submit_all(load, pool, random.Random(rng.random()), specs[i::LANES]))
            for i in range(LANES)
        ]
        submitting = gatherResults(lanes, consumeErrors=True)
        chatting = ensureDeferred(_interactive(load, pool))
        for round_no in range(KILLS):
            moment = "generating" if round_no == 0 else rng.choice(MOMENTS)
            proc = spawn(data, env=env)
            if moment == "startup":  # may land before, during or just after start-up
                delay = rng.uniform(0.0, 1.0)
                await _sleep(delay)
                load.url = find_url(proc)
                assert proc.popen.poll() is None, proc.log()
            else:
                load.url = await wait_ready_async(proc)
                delay = rng.uniform(0.0, 0.25) if moment == "generating" else rng.uniform(0, 1.5)
                if moment == "generating":
                    await sim.wait_for(lambda: _job_generating(sim), timeout=20)
                await _sleep(delay)
            load.url = None
            proc.kill()
            kills.append((moment, round(delay, 3), _running_jobs(db)))
        print(f"kills (moment, delay s, jobs loading/working in the database): {kills}")
        assert any(interrupted for _, _, interrupted in kills), kills

        proc = spawn(data, env=env)
        load.url = await wait_ready_async(proc)
        await submitting
        ids = {key: load.accepted[key] for key, _ in specs}
        finals: dict[str, dict[str, Any]] = {}
        for key, job_id in ids.items():
            for _ in range(12):
                response = await treq.get(f"{load.url}/jobs/{job_id}?wait=5", pool=pool)
                job = json.loads(await treq.content(response))
                if job["state"] in ("done", "failed", "cancelled"):
                    break
            finals[key] = job
        load.stop = True
        await chatting
        print(f"interactive: {load.interactive_complete} complete, {load.interactive_cut} cut")

        for key, job in finals.items():
            assert job["state"] == "done", (seed, job)
            assert job["result"]["message"]["content"] == expected[key], (seed, key)
            assert {a["name"] for a in job["artifacts"]} >= {"response.json", "stream.ndjson"}
        assert len(set(ids.values())) == JOBS

        # every outbox message reaches the receiver (at least once)
        def all_delivered() -> bool:
            conn = _db(db)
            try:
                row = conn.execute("SELECT count(*) FROM outbox WHERE status != 'delivered'")
                return int(row.fetchone()[0]) == 0
            finally:
                conn.close()

        await until(all_delivered, timeout=30)
        assert proc.stop() == 0, proc.log()
        proc = None

        conn = _db(db)
        try:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
            rows = {r["id"]: r for r in conn.execute("SELECT * FROM jobs")}
            # one job per idempotency key: a retried POST never made a second job
            assert set(rows) == set(ids.values()), (seed, sorted(rows))
            events: dict[str, list[tuple[int, str]]] = defaultdict(list)
            for r in conn.execute("SELECT job_id, seq, type FROM job_events ORDER BY job_id, seq"):
                events[r["job_id"]].append((r["seq"], r["type"]))
            outbox: dict[str, list[sqlite3.Row]] = defaultdict(list)
            for r in conn.execute("SELECT * FROM outbox ORDER BY job_id, seq"):
                outbox[r["job_id"]].append(r)
        finally:
            conn.close()
        for job_id, row in rows.items():
            seqs = [seq for seq, _ in events[job_id]]
            types = [t for _, t in events[job_id]]
            assert seqs == list(range(1, len(seqs) + 1)), (seed, job_id, events[job_id])
            assert types[0] == "job.queued" and types[-1] == "job.done", (seed, types)
            terminal = [t for t in types if t in ("job.done", "job.failed", "job.cancelled")]
            assert terminal == ["job.done"], (seed, job_id, types)
            assert [o["seq"] for o in outbox[job_id]] == seqs  # one message per event
            assert [o["type"] for o in outbox[job_id]] == types
            assert row["attempts"] <= KILLS
            # interrupted attempts are counted, and only those: a job that never
            # went back to the queue finished on its first attempt
            assert (row["attempts"] == 0) == (types.count("job.queued") == 1), (seed, types)
            # artifacts are complete files, and match the stored result
            folder = data / "artifacts" / job_id
            assert json.loads((folder / "response.json").read_bytes()) == json.loads(row["result"])
        leftovers = [p.name for p in (data / "artifacts").rglob("*") if p.name.endswith(".tmp")]
        assert leftovers == [], (seed, leftovers)

        # the receiver: one job.done message per job, first arrivals in seq order, all signed
        secret = (data / "webhook-secret").read_text().strip()
        verifier = Webhook(secret)
        done_ids: dict[str, set[str]] = defaultdict(set)
        first_seen: dict[str, list[int]] = defaultdict(list)
        seen_msgs: set[str] = set()
        for delivery in receiver.ok():
            event = verifier.verify(delivery.body, delivery.headers)
            job_id, msg_id = event["data"]["id"], delivery.headers["webhook-id"]
            if event["type"] == "job.done":
                done_ids[job_id].add(msg_id)
                assert event["data"]["attempts"] == rows[job_id]["attempts"]
            if msg_id not in seen_msgs:
                seen_msgs.add(msg_id)
                first_seen[job_id].append(event["data"]["seq"])
        for job_id in rows:
            assert len(done_ids[job_id]) == 1, (seed, job_id, done_ids[job_id])
            assert first_seen[job_id] == sorted(first_seen[job_id]), (seed, first_seen[job_id])
            assert first_seen[job_id] == [o["seq"] for o in outbox[job_id]], (seed, job_id)
    finally:
        load.stop = True
        load.url = None
        if proc is not None:
            proc.kill()
        for task in (*lanes, chatting):
            if task is not None and not task.called:
                task.cancel()
        for pending in (submitting, chatting):
            if pending is not None:  # silence the cancelled ones; failures already raised
                pending.addErrback(lambda _: None)
        await pool.closeCachedConnections()
        await receiver.close()
        await sim.close()


@pytest_twisted.ensureDeferred
async def test_webhook_secret_file_left_empty_by_a_kill(tmp_path: Path) -> None:
    """What a SIGKILL between creating and writing the secret file leaves behind.

    Either is right: start and sign with a usable secret (nobody can hold the
    lost one), or refuse to start with a message naming the file.
    """
    data = tmp_path / "data"
    data.mkdir()
    (data / "webhook-secret").write_bytes(b"")
    receiver = Receiver()
    await receiver.listen()
    try:
        try:
            stack = await start_stack(tmp_path)
        except Exception as e:
            assert "webhook-secret" in str(e), e
            return
        try:
            job = await stack.submit(chat("llama3.2"), webhook_url=receiver.url)
            await stack.wait_job(job["id"])
            await until(lambda: len(receiver.ok()) == 4, timeout=5)
            secret = (data / "webhook-secret").read_text().strip()
            for delivery in receiver.ok():
                Webhook(secret).verify(delivery.body, delivery.headers)
        finally:
            await stack.stop()
    finally:
        await receiver.close()
