"""The /jobs API through the real daemon against the simulator."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import ensureDeferred
from twisted.internet.task import deferLater

from foreman.testing import reply_text
from tests.harness import chat, reactor, start_stack, until


@pytest_twisted.ensureDeferred
async def test_chat_job_runs_to_done_with_artifacts(tmp_path: Path) -> None:
    stack = await start_stack(tmp_path)
    try:
        response = await stack.post(
            "/jobs",
            {"request": chat("llama3.2", "tell me"), "metadata": {"batch": 7}},
        )
        assert response.status == 202
        job = response.json()
        assert job["id"].startswith("job_")
        assert job["state"] == "queued"
        assert job["metadata"] == {"batch": 7}
        assert response.headers.getRawHeaders(b"location") == [f"/jobs/{job['id']}".encode()]

        done = await stack.wait_job(job["id"])
        assert done["state"] == "done", done
        assert done["error"] is None
        assert done["attempts"] == 0
        assert done["started_at"] and done["finished_at"]
        expected = reply_text("llama3.2", "tell me", 8)
        assert done["result"]["message"]["content"] == expected
        assert done["result"]["done"] is True
        assert done["progress"]["tokens"] == 8
        names = {a["name"]: a for a in done["artifacts"]}
        assert set(names) == {"request.json", "response.json", "stream.ndjson"}
        for artifact in done["artifacts"]:
            assert artifact["url"] == f"{stack.url}/jobs/{job['id']}/artifacts/{artifact['name']}"

        got = await stack.get(f"/jobs/{job['id']}/artifacts/response.json")
        assert got.status == 200
        assert got.headers.getRawHeaders(b"content-type") == [b"application/json"]
        assert got.json() == done["result"]
        assert len(got.body) == names["response.json"]["size"]

        stream = await stack.get(f"/jobs/{job['id']}/artifacts/stream.ndjson")
        assert stream.headers.getRawHeaders(b"content-type") == [b"application/x-ndjson"]
        lines = [json.loads(line) for line in stream.body.splitlines()]
        assert "".join(c["message"]["content"] for c in lines) == expected
        assert lines[-1]["done"] is True

        req = await stack.get(f"/jobs/{job['id']}/artifacts/request.json")
        assert req.json() == chat("llama3.2", "tell me")
    finally:
        await stack.stop()


@pytest_twisted.ensureDeferred
async def test_non_streaming_job_has_no_stream_artifact(tmp_path: Path) -> None:
    stack = await start_stack(tmp_path)
    try:
        job = await stack.submit(
            {"model": "qwen3", "prompt": "write", "stream": False}, endpoint="/api/generate"
        )
        done = await stack.wait_job(job["id"])
        assert done["state"] == "done"
        assert {a["name"] for a in done["artifacts"]} == {"request.json", "response.json"}
        assert done["result"]["response"] == reply_text("qwen3", "write", 8)
        missing = await stack.get(f"/jobs/{job['id']}/artifacts/stream.ndjson")
        assert missing.status == 404
    finally:
        await stack.stop()


@pytest_twisted.ensureDeferred
async def test_openai_and_embedding_jobs(tmp_path: Path) -> None:
    stack = await start_stack(tmp_path)
    try:
        oa = await stack.submit(
            {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]},
            endpoint="/v1/chat/completions",
        )
        emb = await stack.submit(
            {"model": "nomic-embed-text", "input": ["a", "b"]}, endpoint="/api/embed"
        )
        oa_done = await stack.wait_job(oa["id"])
        emb_done = await stack.wait_job(emb["id"])
        assert oa_done["state"] == "done", oa_done
        assert oa_done["result"]["object"] == "chat.completion"
        assert oa_done["result"]["choices"][0]["message"]["content"] == reply_text(
            "llama3.2", "hi", 8
        )
        assert emb_done["state"] == "done", emb_done
        assert len(emb_done["result"]["embeddings"]) == 2
    finally:
        await stack.stop()


@pytest_twisted.ensureDeferred
async def test_unknown_model_fails_with_the_targets_message(tmp_path: Path) -> None:
    stack = await start_stack(tmp_path)
    try:
        job = await stack.submit(chat("no-such-model"))
        done = await stack.wait_job(job["id"])
        assert done["state"] == "failed"
        assert done["error"]["code"] == "target_error"
        assert "not found" in done["error"]["message"]
    finally:
        await stack.stop()


@pytest_twisted.ensureDeferred
async def test_bad_input_is_refused_and_nothing_is_stored(tmp_path: Path) -> None:
    stack = await start_stack(tmp_path)
    try:
        cases: list[tuple[Any, int, str]] = [
            (b"{not json", 400, "malformed_json"),
            ([1, 2], 400, "malformed_json"),
            ({"request": {"messages": []}}, 400, "missing_field"),
            ({"request": {"model": ""}}, 400, "missing_field"),
            ({}, 400, "missing_field"),
            ({"request": {"model": "m"}, "endpoint": "/api/pull"}, 400, "invalid_endpoint"),
            ({"request": {"model": "m"}, "priority": "high"}, 400, "invalid_priority"),
            ({"request": {"model": "m"}, "colour": "blue"}, 400, "unknown_field"),
            ({"request": {"model": "m"}, "webhook_url": "ftp://x"}, 400, "invalid_webhook_url"),
        ]
        for body, status, code in cases:
            if isinstance(body, bytes):
                response = await stack.post("/jobs", raw=body)
            else:
                response = await stack.post("/jobs", body)
            assert response.status == status, (body, response.body)
            assert response.json()["error"]["code"] == code, (body, response.body)
        too_big = await stack.post(
            "/jobs", raw=b'{"request": {"model": "m", "x": "' + b"a" * 2048 + b'"}}'
        )
        assert too_big.status == 200 or too_big.status == 202  # under the limit
        listing = (await stack.get("/jobs")).json()
        assert len(listing["data"]) == 1

        missing = await stack.get("/jobs/job_00000000000000000000000000")
        assert missing.status == 404
        assert missing.json()["error"]["code"] == "job_not_found"
        assert (await stack.get("/jobs/../etc/passwd")).status == 404
        bad_cursor = await stack.get("/jobs?after=nope")
        assert bad_cursor.status == 400
        assert bad_cursor.json()["error"]["code"] == "invalid_cursor"
        assert (await stack.get("/jobs?limit=0")).status == 400
        assert (await stack.get("/jobs?state=sleeping")).status == 400
        assert (await stack.get("/jobs/x?wait=abc")).status == 400
    finally:
        await stack.stop()


@pytest_twisted.ensureDeferred
async def test_oversized_body_is_413(tmp_path: Path) -> None:
    stack = await start_stack(tmp_path, max_body=1024)
    try:
        response = await stack.post("/jobs", raw=b'{"request": {"model": "' + b"m" * 4096 + b'"}}')
        assert response.status == 413
        assert response.json()["error"]["code"] == "body_too_large"
        assert (await stack.get("/jobs")).json()["data"] == []
    finally:
        await stack.stop()


@pytest_twisted.ensureDeferred
async def test_idempotency_key(tmp_path: Path) -> None:
    stack = await start_stack(tmp_path)
    try:
        body = {"request": chat("llama3.2")}
        first = await stack.post("/jobs", body, headers={"Idempotency-Key": "k1"})
        assert first.status == 202
        again = await stack.post("/jobs", body, headers={"Idempotency-Key": "k1"})
        assert again.status == 200
        assert again.json()["id"] == first.json()["id"]
        other = await stack.post(
            "/jobs", {"request": chat("qwen3")}, headers={"Idempotency-Key": "k1"}
        )
        assert other.status == 409
        assert other.json()["error"]["code"] == "idempotency_conflict"
        assert len((await stack.get("/jobs")).json()["data"]) == 1
    finally:
        await stack.stop()


@pytest_twisted.ensureDeferred
async def test_list_pagination_and_filters(tmp_path: Path) -> None:
    stack = await start_stack(tmp_path)
    try:
        await stack.daemon.worker.stop(0)  # keep everything queued
        ids = []
        for i in range(7):
            job = await stack.submit(chat("llama3.2" if i % 2 else "qwen3", f"n{i}"))
            ids.append(job["id"])
        seen: list[str] = []
        after = ""
        while True:
            page = (await stack.get(f"/jobs?limit=3{'&after=' + after if after else ''}")).json()
            seen += [j["id"] for j in page["data"]]
            if not page["has_more"]:
                assert page["next_after"] is None
                break
            after = page["next_after"]
        assert seen == list(reversed(ids))
        qwen = (await stack.get("/jobs?model=qwen3&state=queued")).json()["data"]
        assert [j["id"] for j in qwen] == [ids[i] for i in (6, 4, 2, 0)]
        assert (await stack.get("/jobs?state=done")).json()["data"] == []
        positions = sorted(j["position"] for j in (await stack.get("/jobs")).json()["data"])
        assert positions == list(range(7))
        queue = (await stack.get("/queue")).json()
        assert queue["total"] == 7
        assert [q["id"] for q in queue["data"]] == [
            j["id"]
            for j in sorted((await stack.get("/jobs")).json()["data"], key=lambda j: j["position"])
        ]
    finally:
        await stack.stop()


@pytest_twisted.ensureDeferred
async def test_cancel_queued_and_running_jobs_and_delete(tmp_path: Path) -> None:
    from foreman.testing import OllamaSimulator

    sim = OllamaSimulator(models=("llama3.2",), token_rate=20.0, load_time=0.05)
    stack = await start_stack(tmp_path, sim=sim)
    try:
        running = await stack.submit(chat("llama3.2", options={"num_predict": 400}))
        queued = await stack.submit(chat("llama3.2"))
        await until(lambda: stack.daemon.runner.phase == "working")
        await until(lambda: stack.daemon.runner.tokens > 2)

        refused = await stack.request("DELETE", f"/jobs/{queued['id']}")
        assert refused.status == 409
        assert refused.json()["error"]["code"] == "job_active"
        cancelled = await stack.post(f"/jobs/{queued['id']}/cancel")
        assert cancelled.status == 200
        assert cancelled.json()["state"] == "cancelled"

        disconnects = len(sim.disconnects)
        stopped = await stack.post(f"/jobs/{running['id']}/cancel")
        assert stopped.status == 200
        assert stopped.json()["state"] == "cancelled"
        await sim.wait_for(lambda: len(sim.disconnects) > disconnects, timeout=5)
        await until(lambda: stack.daemon.worker.state == "idle")

        again = await stack.post(f"/jobs/{running['id']}/cancel")
        assert again.status == 409
        assert (await stack.post("/jobs/job_00000000000000000000000000/cancel")).status == 404

        after = await stack.submit(chat("llama3.2"))
        done = await stack.wait_job(after["id"])
        assert done["state"] == "done"
        deleted = await stack.request("DELETE", f"/jobs/{after['id']}")
        assert deleted.status == 200
        assert (await stack.get(f"/jobs/{after['id']}")).status == 404
        assert not (stack.daemon.config.artifacts_dir / after["id"]).exists()
    finally:
        await stack.stop()


@pytest_twisted.ensureDeferred
async def test_long_poll_returns_on_state_change(tmp_path: Path) -> None:
    stack = await start_stack(tmp_path)
    try:
        await stack.daemon.worker.stop(0)
        job = await stack.submit(chat("llama3.2"))
        quick = await stack.get(f"/jobs/{job['id']}?wait=0.2")
        assert quick.json()["state"] == "queued"
        started = time.monotonic()
        poll = ensureDeferred(stack.get(f"/jobs/{job['id']}?wait=10"))
        await deferLater(reactor, 0.3, lambda: None)
        assert not poll.called
        await stack.post(f"/jobs/{job['id']}/cancel")
        polled = await poll
        assert polled.json()["state"] == "cancelled"
        assert 0.3 <= time.monotonic() - started < 5
    finally:
        await stack.stop()


@pytest_twisted.ensureDeferred
async def test_retention_deletes_finished_jobs_and_artifacts(tmp_path: Path) -> None:
    stack = await start_stack(tmp_path, job_retention=0.5)
    try:
        await stack.daemon.worker.stop(0)
        waiting = await stack.submit(chat("llama3.2", "stays"))
        stack.daemon.worker.start()
        await stack.wait_job(waiting["id"])
        await stack.daemon.worker.stop(0)
        queued = await stack.submit(chat("llama3.2", "queued"))
        folder = stack.daemon.config.artifacts_dir / waiting["id"]
        assert folder.exists()
        await deferLater(reactor, 0.6, lambda: None)
        deleted = await stack.daemon.jobs.purge(stack.daemon.config.job_retention)
        assert deleted == 1
        assert (await stack.get(f"/jobs/{waiting['id']}")).status == 404
        assert not folder.exists()
        # unfinished jobs are never purged, however old
        assert (await stack.get(f"/jobs/{queued['id']}")).json()["state"] == "queued"
    finally:
        await stack.stop()


@pytest_twisted.ensureDeferred
async def test_tokens_on_both_sides(tmp_path: Path) -> None:
    from foreman.testing import OllamaSimulator

    sim = OllamaSimulator(models=("llama3.2",), token_rate=200.0, required_token="target-secret")
    stack = await start_stack(
        tmp_path, sim=sim, target_token="target-secret", api_tokens=("client-a", "client-b")
    )
    try:
        body = {"request": chat("llama3.2")}
        refused = await stack.post("/jobs", body)
        assert refused.status == 401
        assert refused.json()["error"]["code"] == "unauthorized"
        wrong = await stack.post("/jobs", body, headers={"Authorization": "Bearer nope"})
        assert wrong.status == 401
        ok = await stack.post("/jobs", body, headers={"Authorization": "Bearer client-b"})
        assert ok.status == 202
        job_id = ok.json()["id"]
        auth = {"Authorization": "Bearer client-a"}
        while (shown := (await stack.get(f"/jobs/{job_id}?wait=5", headers=auth)).json())[
            "state"
        ] not in ("done", "failed"):
            pass
        assert shown["state"] == "done", shown
        assert (await stack.get("/healthz")).status == 200  # open for probes
        seen = {r.authorization for r in sim.requests}
        assert seen == {"Bearer target-secret"}
    finally:
        await stack.stop()


async def _queued_behind_a_stopped_worker(
    tmp_path: Path, token_rate: float, prompts: list[str]
) -> tuple[Any, Any, list[dict[str, Any]]]:
    """A stack whose worker is stopped, with one llama3.2 chat job queued per prompt."""
    from foreman.testing import OllamaSimulator

    sim = OllamaSimulator(models=("llama3.2",), token_rate=token_rate, load_time=0.0)
    stack = await start_stack(tmp_path, sim=sim)
    try:
        await stack.daemon.worker.stop(0)
        jobs = [await stack.submit(chat("llama3.2", prompt)) for prompt in prompts]
    except BaseException:
        await stack.stop()
        raise
    return stack, sim, jobs


async def _six_queued_then_started(
    tmp_path: Path, token_rate: float
) -> tuple[Any, Any, list[dict[str, Any]]]:
    """A stack whose worker was stopped while jobs q0..q5 were queued, then started."""
    prompts = [f"q{n}" for n in range(6)]
    stack, sim, jobs = await _queued_behind_a_stopped_worker(tmp_path, token_rate, prompts)
    stack.daemon.worker.start()
    return stack, sim, jobs


@pytest_twisted.ensureDeferred
async def test_a_job_cancelled_while_its_row_is_read_ahead_never_runs(tmp_path: Path) -> None:
    """The worker reads the next jobs' rows while one runs; a cancel still wins."""
    stack, sim, jobs = await _six_queued_then_started(tmp_path, token_rate=50.0)
    try:
        runner, victim = stack.daemon.runner, jobs[3]
        await until(lambda: runner.has_ahead(victim["id"]))  # its row is read, it waits
        assert (await stack.post(f"/jobs/{victim['id']}/cancel")).json()["state"] == "cancelled"
        ends = [await stack.wait_job(j["id"]) for j in jobs]
        assert [e["state"] for e in ends] == ["done"] * 3 + ["cancelled"] + ["done"] * 2
        chats = [r.json for r in sim.requests if r.path == "/api/chat" and r.json.get("messages")]
        asked = [c["messages"][0]["content"] for c in chats]  # loads carry no messages
        assert asked == ["q0", "q1", "q2", "q4", "q5"]
    finally:
        await stack.stop()


@pytest_twisted.ensureDeferred
async def test_queued_jobs_hand_the_target_on_and_each_records_its_own_answer(
    tmp_path: Path,
) -> None:
    """Each call's last byte starts the next job before the attempt is recorded (ADR 0021);
    every job still ends with its own result, tokens and stream."""
    stack, _, jobs = await _six_queued_then_started(tmp_path, token_rate=400.0)
    try:
        ends = [await stack.wait_job(j["id"]) for j in jobs]
        for n, end in enumerate(ends):
            assert end["state"] == "done", end
            expected = reply_text("llama3.2", f"q{n}", 8)
            assert end["result"]["message"]["content"] == expected
            assert end["progress"]["tokens"] == 8
            stream = await stack.get(f"/jobs/{end['id']}/artifacts/stream.ndjson")
            lines = [json.loads(line) for line in stream.body.splitlines()]
            assert "".join(c["message"]["content"] for c in lines) == expected
        # the first job loaded the model; each later one was started by the one before,
        # its request formatted while the one before ran and sent as one write (ADR 0024)
        assert stack.daemon.worker.early >= len(jobs) - 2
        assert stack.daemon.runner.staged_sends == len(jobs) - 1
        assert stack.daemon.worker.state == "idle"
        assert stack.daemon.runner.job_id is None
    finally:
        await stack.stop()


async def _event_kinds(stack: Any, job_id: str) -> list[str]:
    """The event types of a finished job, from its SSE event stream."""
    body = (await stack.get(f"/jobs/{job_id}/events")).body.decode()
    return [line[len("event: ") :] for line in body.splitlines() if line.startswith("event: ")]


def _record_applies(stack: Any) -> list[tuple[float, str, str]]:
    """Every state write the job service starts: (time, job id, state it moves to)."""
    jobs = stack.daemon.jobs
    real_apply, seen = jobs.apply, []

    def apply(transition: Any) -> Any:
        seen.append((reactor.seconds(), transition.job_id, transition.target.value))
        return real_apply(transition)

    jobs.apply = apply
    return seen


@pytest_twisted.ensureDeferred
async def test_a_resident_jobs_state_writes_start_after_the_target_took_its_request(
    tmp_path: Path,
) -> None:
    """ADR 0022: a job whose model is resident is sent first; its state writes and the
    recording wait ``after_dispatch``, yet the job moves queued → loading → working → done
    in order, ``started_at`` is the dispatch, and the answer is its own."""
    from foreman.testing import OllamaSimulator

    sim = OllamaSimulator(models=("llama3.2",), token_rate=400.0, load_time=0.0)
    stack = await start_stack(tmp_path, sim=sim)
    try:
        warm = await stack.submit(chat("llama3.2", "warm"))
        assert (await stack.wait_job(warm["id"]))["state"] == "done"
        stack.daemon.runner.recorder.after_dispatch = 0.3  # longer than the 20 ms answer
        seen = _record_applies(stack)
        job = await stack.submit(chat("llama3.2", "late writes"))
        end = await stack.wait_job(job["id"])
        assert end["state"] == "done", end
        assert end["result"]["message"]["content"] == reply_text("llama3.2", "late writes", 8)
        sent = [r for r in sim.requests if r.json and r.json.get("messages")]
        arrived = sent[-1].received_at
        assert sent[-1].json["messages"][0]["content"] == "late writes"
        writes = [(at, state) for at, job_id, state in seen if job_id == job["id"]]
        assert [state for _, state in writes] == ["loading", "working", "done"]
        # nothing was written for it before the target had its request
        assert all(at >= arrived for at, _ in writes)
        assert writes[0][0] - arrived >= 0.2
        kinds = await _event_kinds(stack, job["id"])
        assert kinds.index("job.loading") < kinds.index("job.working") < kinds.index("job.done")
        started = end["started_at"]
        assert started is not None
        from datetime import datetime

        assert datetime.fromisoformat(started.replace("Z", "+00:00")).timestamp() <= arrived
    finally:
        await stack.stop()


@pytest_twisted.ensureDeferred
async def test_a_job_cancelled_before_its_late_state_writes_stays_cancelled(
    tmp_path: Path,
) -> None:
    """Cancelled after its request left but before its state writes started: the call is
    cut, the late writes find the job gone (compare-and-set), and it ends cancelled."""
    from foreman.testing import OllamaSimulator

    sim = OllamaSimulator(models=("llama3.2",), token_rate=20.0, load_time=0.0)
    stack = await start_stack(tmp_path, sim=sim)
    try:
        warm = await stack.submit(chat("llama3.2", "warm"))
        assert (await stack.wait_job(warm["id"]))["state"] == "done"
        stack.daemon.runner.recorder.after_dispatch = 1.0
        seen = _record_applies(stack)
        disconnects = len(sim.disconnects)
        job = await stack.submit(chat("llama3.2", "cut short", options={"num_predict": 40}))
        await until(lambda: stack.daemon.runner.job_id == job["id"])
        assert not [s for s in seen if s[1] == job["id"]]  # its writes are still to come
        cancelled = await stack.post(f"/jobs/{job['id']}/cancel")
        assert cancelled.status == 200
        assert cancelled.json()["state"] == "cancelled"
        await until(lambda: len(sim.disconnects) == disconnects + 1)
        await until(lambda: len([s for s in seen if s[1] == job["id"]]) >= 2, timeout=5)
        await until(lambda: stack.daemon.runner.recorder.recording == 0, timeout=5)
        final = (await stack.get(f"/jobs/{job['id']}")).json()
        assert final["state"] == "cancelled"
        assert final.get("result") is None
        kinds = await _event_kinds(stack, job["id"])
        assert "job.cancelled" in kinds
        assert "job.loading" not in kinds and "job.done" not in kinds
        await until(lambda: stack.daemon.worker.state == "idle")
    finally:
        await stack.stop()


@pytest_twisted.ensureDeferred
async def test_a_staged_request_is_the_same_request_with_the_targets_token(
    tmp_path: Path,
) -> None:
    """ADR 0024: the next job's request is formatted ahead; what the target gets from a
    staged send equals what it gets from an ordinary one: path, token, forced stream."""
    from foreman.testing import OllamaSimulator

    sim = OllamaSimulator(
        models=("llama3.2",), token_rate=200.0, load_time=0.0, required_token="target-secret"
    )
    stack = await start_stack(tmp_path, sim=sim, target_token="target-secret")
    try:
        await stack.daemon.worker.stop(0)
        jobs = [await stack.submit(chat("llama3.2", f"s{n}", stream=False)) for n in range(4)]
        stack.daemon.worker.start()
        ends = [await stack.wait_job(j["id"]) for j in jobs]
        assert [e["state"] for e in ends] == ["done"] * 4, ends
        for n, end in enumerate(ends):
            assert end["result"]["message"]["content"] == reply_text("llama3.2", f"s{n}", 8)
        assert stack.daemon.runner.staged_sends == 3  # all but the first, which loaded
        chats = [r for r in sim.requests if r.path == "/api/chat" and r.json.get("messages")]
        assert [c.json["messages"][0]["content"] for c in chats] == ["s0", "s1", "s2", "s3"]
        # the first went the ordinary way, the others staged: one shape for all
        shapes = {
            (c.method, c.authorization, c.headers.get("content-type"), c.json["stream"])
            for c in chats
        }
        assert shapes == {("POST", "Bearer target-secret", "application/json", True)}
        assert {c.headers.get("content-length") for c in chats} == {str(len(c.body)) for c in chats}
    finally:
        await stack.stop()


@pytest_twisted.ensureDeferred
async def test_a_job_cancelled_after_its_request_was_staged_never_reaches_the_target(
    tmp_path: Path,
) -> None:
    stack, sim, jobs = await _six_queued_then_started(tmp_path, token_rate=50.0)
    try:
        runner, victim = stack.daemon.runner, jobs[2]
        await until(lambda: runner.staged_job == victim["id"])  # q1 runs, q2 is formatted
        assert (await stack.post(f"/jobs/{victim['id']}/cancel")).json()["state"] == "cancelled"
        ends = [await stack.wait_job(j["id"]) for j in jobs]
        assert [e["state"] for e in ends] == ["done"] * 2 + ["cancelled"] + ["done"] * 3
        chats = [r.json for r in sim.requests if r.path == "/api/chat" and r.json.get("messages")]
        assert [c["messages"][0]["content"] for c in chats] == ["q0", "q1", "q3", "q4", "q5"]
        assert runner.staged_job is None
    finally:
        await stack.stop()


@pytest_twisted.ensureDeferred
async def test_a_staged_request_never_goes_before_the_load_its_model_needs(
    tmp_path: Path,
) -> None:
    """The next job is staged while another model is resident: at its start the load
    comes first, then its own request, formatted again the ordinary way."""
    from foreman.testing import OllamaSimulator

    sim = OllamaSimulator(
        models=("llama3.2", "qwen3"), token_rate=100.0, load_time=0.05, max_loaded=1
    )
    stack = await start_stack(tmp_path, sim=sim)
    try:
        await stack.daemon.worker.stop(0)
        first = await stack.submit(chat("llama3.2", "first"))
        second = await stack.submit(chat("qwen3", "second"))
        runner = stack.daemon.runner
        stack.daemon.worker.start()
        await until(lambda: runner.staged_job == second["id"])
        ends = [await stack.wait_job(first["id"]), await stack.wait_job(second["id"])]
        assert [e["state"] for e in ends] == ["done", "done"], ends
        assert ends[1]["result"]["message"]["content"] == reply_text("qwen3", "second", 8)
        asked = [
            (r.json["model"], bool(r.json.get("messages")))
            for r in sim.requests
            if r.path == "/api/chat"
        ]
        # each model's explicit load (no messages) before its own request
        assert asked == [("llama3.2", False), ("llama3.2", True), ("qwen3", False), ("qwen3", True)]
        assert runner.staged_sends == 0
    finally:
        await stack.stop()


async def _all_recorded(stack: Any) -> None:
    """Every queued job ran and its end is recorded (without reading a row to know it)."""
    daemon = stack.daemon
    await until(
        lambda: (
            len(daemon.queue.scheduler) == 0
            and daemon.worker.state == "idle"
            and daemon.runner.job_id is None
            and daemon.runner.recorder.recording == 0
        )
    )


def _count_row_reads(stack: Any) -> dict[str, int]:
    """How often the job service reads one row, and how often a batch of rows."""
    jobs, counts = stack.daemon.jobs, {"one": 0, "batch": 0}
    get_row, get_rows = jobs.get_row, jobs.get_rows

    def one(job_id: str) -> Any:
        counts["one"] += 1
        return get_row(job_id)

    def batch(job_ids: Any) -> Any:
        counts["batch"] += 1
        return get_rows(job_ids)

    jobs.get_row, jobs.get_rows = one, batch
    return counts


@pytest.mark.parametrize(("budget", "single_reads", "staged"), [(None, 1, 11), (0, 12, 0)])
@pytest_twisted.ensureDeferred
async def test_queued_jobs_rows_are_read_ahead_in_one_query_within_a_byte_budget(
    tmp_path: Path, monkeypatch: Any, budget: int | None, single_reads: int, staged: int
) -> None:
    """Twelve jobs behind a stopped worker: the first is read when it runs, the eleven after
    it in one read while it runs, and each of those goes out staged (ADR 0025). The
    read-ahead holds at most ``READ_AHEAD_BYTES`` of requests: at zero no row is held, each
    job is read when its turn comes and none is staged. Every job ends with its own answer."""
    from foreman.jobs import runner

    if budget is not None:
        monkeypatch.setattr(runner, "READ_AHEAD_BYTES", budget)
    prompts = [f"r{n}" for n in range(12)]
    stack, _, jobs = await _queued_behind_a_stopped_worker(tmp_path, 400.0, prompts)
    try:
        counts = _count_row_reads(stack)
        stack.daemon.worker.start()
        await _all_recorded(stack)
        # counted before any GET of ours reads a row
        assert counts == {"one": single_reads, "batch": 1}
        assert stack.daemon.runner.staged_sends == staged
        ends = [await stack.wait_job(j["id"]) for j in jobs]
        assert [e["result"]["message"]["content"] for e in ends] == [
            reply_text("llama3.2", p, 8) for p in prompts
        ]
    finally:
        await stack.stop()


@pytest_twisted.ensureDeferred
async def test_jobs_wait_while_recording_is_backlogged_and_a_chat_does_not(
    tmp_path: Path,
) -> None:
    """ADR 0026: a target faster than the disk cannot pile up answers: with the recorder's
    limit at 2 and recordings slowed, never more than 3 attempts are being recorded (the
    limit, and the one whose last byte started the next job before it was counted); the
    worker waits for room between jobs, a chat sent meanwhile is answered at once, and every
    job ends with its own answer."""
    prompts = [f"w{n}" for n in range(6)]
    stack, _, jobs = await _queued_behind_a_stopped_worker(tmp_path, 400.0, prompts)
    try:
        recorder = stack.daemon.runner.recorder
        recorder.limit, recorder.after_dispatch = 2, 0.3
        most = [0]
        later = recorder.later

        def counted(job_id: str, work: Any, tokens: int) -> None:
            later(job_id, work, tokens)
            most[0] = max(most[0], recorder.recording)

        recorder.later = counted
        stack.daemon.worker.start()
        await until(lambda: stack.daemon.worker.state == "waiting_for_recording")
        started = reactor.seconds()
        answered = await stack.post("/api/chat", chat("llama3.2", "meanwhile", stream=False))
        assert answered.status == 200, answered.body
        assert answered.json()["message"]["content"] == reply_text("llama3.2", "meanwhile", 8)
        assert reactor.seconds() - started < 0.25  # before any recording made room
        ends = [await stack.wait_job(j["id"]) for j in jobs]
        assert [e["result"]["message"]["content"] for e in ends] == [
            reply_text("llama3.2", p, 8) for p in prompts
        ]
        assert most[0] == recorder.limit + 1
    finally:
        await stack.stop()
