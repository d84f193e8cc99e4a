"""Target faults, end to end: the job outcome, the interactive error, and a free worker.

Real daemon in-process, real simulator. Every fault is injected into a real
request from foreman's worker or proxy. After each fault the worker must be
free: a plain job afterwards runs to ``done`` and ``/status`` shows the worker
idle with an empty queue.

SPEC ("Durability and failure"): target 4xx → failed with the target's
message; 5xx, reset, timeout → retried with backoff up to
FOREMAN_MAX_ATTEMPTS, then failed ``too_many_attempts``; an error object
inside a stream → failed ``stream_error``; target unreachable → the job waits
and no attempt is used. Interactive: the target's 500 and an in-stream error
are relayed as they are, a reset drops the client's connection, a client that
gives up on a hung target frees the worker.

The hang tests shorten the worker's idle timeout (900 s by default) by setting
``daemon.runner._idle_timeout``; there is no supported setting for it yet.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import treq
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.web.client import HTTPConnectionPool, ResponseFailed

from foreman.testing import Fault, OllamaSimulator, reply_text
from tests.harness import Stack, chat, reactor, start_stack, until

MODELS = ("llama3.2", "qwen3")
SIM_ERROR = "simulated"  # the simulator's fault messages mention it


def _sim(token_rate: float = 200.0) -> OllamaSimulator:
    return OllamaSimulator(models=MODELS, token_rate=token_rate, load_time=0.05)


async def _sleep(seconds: float) -> None:
    await deferLater(reactor, seconds, lambda: None)


def _event_types(stack: Stack, job_id: str) -> list[str]:
    conn = sqlite3.connect(str(stack.daemon.config.db_path))
    try:
        rows = conn.execute(
            "SELECT type FROM job_events WHERE job_id = ? ORDER BY seq", (job_id,)
        ).fetchall()
    finally:
        conn.close()
    return [r[0] for r in rows]


async def _warm(stack: Stack, model: str = "llama3.2") -> None:
    """Make ``model`` resident, so the next job sends its generation (no preload) first."""
    job = await stack.submit(chat(model, "warm up"))
    assert (await stack.wait_job(job["id"]))["state"] == "done"


async def _worker_is_free(stack: Stack) -> None:
    """A plain job still runs to done, and the worker ends idle with nothing queued."""
    job = await stack.submit(chat("llama3.2", "after the fault"))
    final = await stack.wait_job(job["id"], timeout=30)
    assert final["state"] == "done", final
    assert final["result"]["message"]["content"] == reply_text("llama3.2", "after the fault")
    await until(lambda: stack.daemon.worker.state == "idle")
    status = (await stack.get("/status")).json()
    assert status["worker"]["state"] == "idle", status
    assert status["queue"]["depth"] == 0, status
    assert (await stack.get("/healthz")).status == 200


def _idle_timers() -> list[Any]:
    """Pending idle-timeout timers of worker target calls (TargetCall._idle)."""
    return [
        c
        for c in reactor.getDelayedCalls()
        if c.active() and getattr(c.func, "__name__", "") == "_idle"
    ]


def _cancel_stray_idle_timers() -> int:
    """Cancel leaked idle timers so the leak guard reports only what the test is about.

    See ``test_refused_attempt_leaves_no_idle_timer_behind``.
    """
    stray = _idle_timers()
    for call in stray:
        call.cancel()
    return len(stray)


# -- jobs --------------------------------------------------------------------------------

# (fault, count, endpoint, state, error code, attempts)
JOB_CASES = [
    pytest.param(Fault.HTTP_500, 1, "/api/chat", "done", None, 1, id="500-once-retried"),
    pytest.param(
        Fault.HTTP_500, None, "/api/chat", "failed", "too_many_attempts", 2, id="500-always"
    ),
    pytest.param(Fault.RESET, 1, "/api/chat", "done", None, 1, id="reset-retried"),
    pytest.param(Fault.HANG, 1, "/api/chat", "done", None, 1, id="hang-timeout-retried"),
    pytest.param(
        Fault.ERROR_MID_STREAM, 1, "/api/chat", "failed", "stream_error", 1, id="error-in-ndjson"
    ),
    pytest.param(
        Fault.ERROR_MID_STREAM,
        1,
        "/v1/chat/completions",
        "failed",
        "stream_error",
        1,
        id="error-in-sse",
    ),
    pytest.param(Fault.SLOW, 1, "/api/chat", "done", None, 0, id="slow-is-not-a-timeout"),
]


@pytest.mark.parametrize(("fault", "count", "endpoint", "state", "code", "attempts"), JOB_CASES)
@pytest_twisted.ensureDeferred
async def test_job_outcome_for_target_fault(
    tmp_path: Path,
    fault: Fault,
    count: int | None,
    endpoint: str,
    state: str,
    code: str | None,
    attempts: int,
) -> None:
    stack = await start_stack(tmp_path, sim=_sim(), max_attempts=2)
    sim = stack.sim
    # a hung target is given up after 1 s of silence; a slow one (a token a
    # second) sends something more often than every 2.5 s and must not be
    stack.daemon.runner._idle_timeout = 2.5 if fault is Fault.SLOW else 1.0
    try:
        await _warm(stack)
        sim.inject(fault, count=count, path=endpoint)
        if endpoint == "/api/chat":
            request = chat("llama3.2", "faulty", options={"num_predict": 3})
        else:
            request = {
                "model": "llama3.2",
                "messages": [{"role": "user", "content": "faulty"}],
                "max_tokens": 3,
            }
        job = await stack.submit(request, endpoint=endpoint)
        final = await stack.wait_job(job["id"], timeout=40)
        sim.clear_faults()
        assert final["state"] == state, final
        assert final["attempts"] == attempts, final
        if code is None:
            assert final["error"] is None, final
            assert any(a["name"] == "response.json" for a in final["artifacts"])
        else:
            assert final["error"]["code"] == code, final
            assert SIM_ERROR in final["error"]["message"], final  # the target's own words
            assert [a["name"] for a in final["artifacts"]] == ["request.json"], final
            missing = await stack.get(f"/jobs/{job['id']}/artifacts/response.json")
            assert missing.status == 404
        types = _event_types(stack, job["id"])
        assert types.count("job.queued") == 1 + attempts - (state == "failed"), types
        assert types[-1] == f"job.{state}", types
        if fault is Fault.HANG:  # the worker closed the hung request itself
            assert [d.phase for d in sim.disconnects] == ["waiting"], sim.disconnects
        await _worker_is_free(stack)
    finally:
        await stack.stop()


@pytest_twisted.ensureDeferred
async def test_target_4xx_fails_with_the_targets_message_at_once(tmp_path: Path) -> None:
    stack = await start_stack(tmp_path, sim=_sim(), max_attempts=3)
    try:
        job = await stack.submit(
            {"model": "nomic-embed-text", "input": "x", "dimensions": 3}, endpoint="/api/embed"
        )
        await stack.wait_job(job["id"])
        bad = await stack.submit({"model": "no-such-model", "input": "x"}, endpoint="/api/embed")
        final = await stack.wait_job(bad["id"])
        assert final["state"] == "failed" and final["attempts"] == 1, final
        assert final["error"]["code"] == "target_error"
        assert "not found" in final["error"]["message"]
        await _worker_is_free(stack)
    finally:
        await stack.stop()


@pytest_twisted.ensureDeferred
async def test_target_going_down_mid_job_uses_one_attempt_then_waits(tmp_path: Path) -> None:
    """Refused connections: the cut attempt counts once; waiting for the target does not."""
    stack = await start_stack(tmp_path, sim=_sim(token_rate=30.0), max_attempts=2)
    sim = stack.sim
    monitor = stack.daemon.monitor
    assert monitor is not None
    try:
        job = await stack.submit(chat("llama3.2", "interrupted", options={"num_predict": 60}))
        await until(lambda: stack.daemon.runner.phase == "working")
        await sim.wait_for(lambda: sim.in_flight > 0)
        await sim.sleep(refuse=True)  # refuse connections and drop the one in progress
        asleep_at = reactor.seconds()
        await until(lambda: monitor.state == "down", timeout=20)
        # down for longer than the retry delay (at most 2 s after a first failure):
        # the job waits queued, attempts stay at 1
        await _sleep(max(0.5, asleep_at + 2.5 - reactor.seconds()))
        shown = (await stack.get(f"/jobs/{job['id']}")).json()
        assert shown["state"] == "queued", shown
        assert shown["attempts"] == 1, shown
        status = (await stack.get("/status")).json()
        assert status["worker"]["state"] == "waiting_for_target", status
        await sim.wake()
        monitor.poke()  # not wait for the monitor's backed-off probe
        final = await stack.wait_job(job["id"], timeout=30)
        assert final["state"] == "done" and final["attempts"] == 1, final
        assert final["result"]["message"]["content"] == reply_text("llama3.2", "interrupted", 60)
        await _worker_is_free(stack)
    finally:
        _cancel_stray_idle_timers()
        await stack.stop()


@pytest_twisted.ensureDeferred
async def test_refused_attempt_leaves_no_idle_timer_behind(tmp_path: Path) -> None:
    stack = await start_stack(tmp_path, sim=_sim(), max_attempts=3)
    sim = stack.sim
    stray = 0
    try:
        # the monitor has not noticed yet: the worker tries and is refused
        await sim.sleep(refuse=True)
        job = await stack.submit(chat("llama3.2", "refused"))
        await until(
            lambda: stack.daemon.monitor is not None and stack.daemon.monitor.state == "down",
            timeout=20,
        )
        shown = (await stack.get(f"/jobs/{job['id']}")).json()
        assert shown["attempts"] == 0, shown  # unreachable uses no attempt
        assert shown["error"] is not None and shown["error"]["code"] == "target_unreachable"
        await sim.wake()
        final = await stack.wait_job(job["id"])
        assert final["state"] == "done"
        stray = len(_idle_timers())
        assert stray == 0, f"{stray} idle timer(s) of finished target calls still pending"
    finally:
        _cancel_stray_idle_timers()
        await stack.stop()


@pytest_twisted.ensureDeferred
async def test_refused_target_does_not_spin_the_job_through_loading(tmp_path: Path) -> None:
    from tests.receiver import Receiver

    receiver = Receiver()
    await receiver.listen()
    stack = await start_stack(tmp_path, sim=_sim(), max_attempts=3)
    sim = stack.sim
    monitor = stack.daemon.monitor
    assert monitor is not None
    try:
        await sim.sleep(refuse=True)  # refused; the monitor has not noticed yet
        job = await stack.submit(chat("llama3.2", "refused"), webhook_url=receiver.url)
        await until(lambda: monitor.state == "down", timeout=20)
        await _sleep(0.5)
        await sim.wake()
        final = await stack.wait_job(job["id"], timeout=30)
        assert final["state"] == "done" and final["attempts"] == 0, final
        types = _event_types(stack, job["id"])
        # one refused try, then the successful one; not a loading/queued storm
        assert types.count("job.loading") <= 2, f"{types.count('job.loading')} loading events"
        await until(lambda: len(receiver.ok()) >= len(types))
        assert len(receiver.ok()) <= 6, f"{len(receiver.ok())} webhooks for one job"
    finally:
        _cancel_stray_idle_timers()
        await stack.stop()
        await receiver.close()


# -- interactive requests -----------------------------------------------------------------


async def _chat(
    stack: Stack, pool: HTTPConnectionPool, prompt: str, timeout: float | None = None, **extra: Any
) -> tuple[int, bytes]:
    body = chat("llama3.2", prompt, **extra)
    response = await treq.post(
        stack.url + "/api/chat", json.dumps(body).encode(), pool=pool, timeout=timeout
    )
    return response.code, await treq.content(response)


@pytest_twisted.ensureDeferred
async def test_interactive_faults_are_relayed_and_free_the_worker(tmp_path: Path) -> None:
    sim = OllamaSimulator(models=MODELS, token_rate=100.0, load_time=0.05)
    stack = await start_stack(tmp_path, sim=sim)
    pool = HTTPConnectionPool(reactor, persistent=False)
    try:
        status, body = await _chat(stack, pool, "warm", stream=False)
        assert status == 200, body

        # 500 from the target: relayed with the target's body
        sim.inject(Fault.HTTP_500)
        status, body = await _chat(stack, pool, "five hundred", stream=False)
        assert status == 500, body
        assert isinstance(json.loads(body)["error"], str)

        # an error inside a stream: relayed as is, the response ends normally
        sim.inject(Fault.ERROR_MID_STREAM)
        status, body = await _chat(stack, pool, "broken stream", stream=True)
        assert status == 200
        lines = [json.loads(line) for line in body.splitlines()]
        assert "error" in lines[-1] and len(lines) > 1, lines
        assert all("error" not in line for line in lines[:-1])

        # a reset mid-stream: the client's connection is dropped, not finished
        sim.inject(Fault.RESET)
        response = await treq.post(
            stack.url + "/api/chat",
            json.dumps(chat("llama3.2", "reset", stream=True)).encode(),
            pool=pool,
        )
        assert response.code == 200
        with pytest.raises(ResponseFailed):
            await treq.content(response)

        # a very slow stream: relayed complete
        sim.inject(Fault.SLOW)
        status, body = await _chat(stack, pool, "slowly", stream=True, options={"num_predict": 3})
        assert status == 200
        lines = [json.loads(line) for line in body.splitlines()]
        assert lines[-1]["done"] is True
        assert "".join(x["message"]["content"] for x in lines) == reply_text(
            "llama3.2", "slowly", 3
        )
        await _worker_is_free(stack)
    finally:
        await pool.closeCachedConnections()
        await stack.stop()


@pytest_twisted.ensureDeferred
async def test_client_giving_up_on_a_hung_target_frees_the_worker(tmp_path: Path) -> None:
    sim = OllamaSimulator(models=MODELS, token_rate=200.0, load_time=0.05)
    stack = await start_stack(tmp_path, sim=sim)
    pool = HTTPConnectionPool(reactor, persistent=False)
    try:
        sim.inject(Fault.HANG, path="/api/chat")
        hung = treq.post(
            stack.url + "/api/chat",
            json.dumps(chat("llama3.2", "hang", stream=True)).encode(),
            pool=pool,
            timeout=1.5,  # the client gives up
        )
        await until(lambda: stack.daemon.worker.state == "working")
        # a job queued behind the hung request waits for the worker …
        job = await stack.submit(chat("llama3.2", "behind the hang"))
        await _sleep(0.5)
        assert (await stack.get(f"/jobs/{job['id']}")).json()["state"] == "queued"
        with pytest.raises(Exception):  # noqa: B017 - treq's timeout cancels: CancelledError/ResponseNeverReceived
            await hung
        # … and runs once the client has left and the upstream request was closed
        await sim.wait_for(lambda: len(sim.disconnects) == 1, timeout=5)
        assert sim.disconnects[0].phase == "waiting"
        final = await stack.wait_job(job["id"], timeout=20)
        assert final["state"] == "done" and final["attempts"] == 0, final
        await _worker_is_free(stack)
    finally:
        await pool.closeCachedConnections()
        await stack.stop()


@pytest_twisted.ensureDeferred
async def test_interactive_request_waits_for_a_target_that_just_went_away(
    tmp_path: Path,
) -> None:
    stack = await start_stack(tmp_path, sim=_sim())
    sim = stack.sim
    monitor = stack.daemon.monitor
    assert monitor is not None
    pool = HTTPConnectionPool(reactor, persistent=False)
    try:
        await sim.sleep(refuse=True)  # refused from now on; the monitor has not probed since
        pending = Deferred.fromCoroutine(
            _chat(stack, pool, "are you there", timeout=30, stream=False)
        )
        await _sleep(1.0)
        await sim.wake()
        monitor.poke()
        status, body = await pending
        assert status == 200, body
        assert json.loads(body)["message"]["content"] == reply_text("llama3.2", "are you there")
        await _worker_is_free(stack)
    finally:
        _cancel_stray_idle_timers()
        await pool.closeCachedConnections()
        await stack.stop()


@pytest_twisted.ensureDeferred
async def test_cancel_frees_a_worker_stuck_on_a_hung_target(tmp_path: Path) -> None:
    stack = await start_stack(tmp_path, sim=_sim())  # idle timeout left at 900 s
    sim = stack.sim
    try:
        await _warm(stack)
        sim.inject(Fault.HANG, path="/api/chat")
        job = await stack.submit(chat("llama3.2", "hung"))
        await sim.wait_for(lambda: sim.in_flight == 1, timeout=10)
        cancelled = await stack.post(f"/jobs/{job['id']}/cancel")
        assert cancelled.status == 200 and cancelled.json()["state"] == "cancelled"
        await sim.wait_for(lambda: sim.in_flight == 0 and len(sim.disconnects) == 1, timeout=5)
        final = await stack.wait_job(job["id"])
        assert final["state"] == "cancelled" and final["attempts"] == 0, final
        await _worker_is_free(stack)
    finally:
        await stack.stop()


@pytest_twisted.ensureDeferred
async def test_graceful_stop_requeues_a_hung_job_without_using_an_attempt(
    tmp_path: Path,
) -> None:
    """SIGTERM's path: the grace period ends, the hung attempt is aborted, not counted."""
    sim = _sim()
    stack = await start_stack(tmp_path, sim=sim, shutdown_grace=0.5)
    restarted: Stack | None = None
    stopped = False
    try:
        await _warm(stack)
        sim.inject(Fault.HANG, path="/api/chat")
        job = await stack.submit(chat("llama3.2", "hung at shutdown"))
        await sim.wait_for(lambda: sim.in_flight == 1, timeout=10)
        started = reactor.seconds()
        stopped = True
        await stack.pool.closeCachedConnections()
        await stack.daemon.stop()
        assert reactor.seconds() - started < 5.0
        conn = sqlite3.connect(str(stack.daemon.config.db_path))
        try:
            row = conn.execute("SELECT state, attempts FROM jobs WHERE id = ?", (job["id"],))
            assert row.fetchone() == ("queued", 0)
        finally:
            conn.close()
        await sim.wait_for(lambda: sim.in_flight == 0, timeout=5)

        restarted = await start_stack(tmp_path, sim=sim)
        final = await restarted.wait_job(job["id"])
        assert final["state"] == "done" and final["attempts"] == 0, final
        assert final["result"]["message"]["content"] == reply_text("llama3.2", "hung at shutdown")
    finally:
        if restarted is not None:
            await restarted.stop()
        elif not stopped:
            await stack.stop()
        else:
            await sim.close()
