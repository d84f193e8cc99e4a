"""Faults from outside end in a state and never hold memory or the worker (issue 19).

A *rogue target* answers some paths its own way and relays the rest to the
simulator: a JSON list where Ollama sends an object, ``/api/ps`` of the wrong
shape or never answering, an SSE event ``data: [1]``, an answer past the size
limit, a line without end. Each job must end in a state (``done`` where the
fault was only in what foreman reads for itself, ``failed`` with a clear code
where the answer itself is bad), and the worker must go on to the next job.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import pytest
import pytest_twisted
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.web.resource import Resource, getChildForRequest
from twisted.web.server import NOT_DONE_YET, Request, Site

import foreman.jobs.runner
from foreman.app.config import Config
from foreman.app.daemon import Daemon
from foreman.testing import OllamaSimulator, reply_text
from tests.harness import Stack, chat, reactor, until

Answer = Callable[[Request], bytes | int]  # bytes: the body; NOT_DONE_YET: the handler took it


class Rogue(Resource):
    """Paths in ``answers`` are answered by the test; the rest by the simulator."""

    isLeaf = True

    def __init__(self, sim: OllamaSimulator) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.sim = sim
        self.answers: dict[str, Answer] = {}
        self.hits: dict[str, int] = {}
        self.held: list[Request] = []

    def render(self, request: Request) -> bytes | int:
        path = request.path.decode()
        answer = self.answers.get(path)
        if answer is None:
            request.postpath = list(request.prepath or []) + list(request.postpath or [])
            request.prepath = []
            child = getChildForRequest(self.sim.resource(), request)
            result: bytes | int = child.render(request)
            return result
        self.hits[path] = self.hits.get(path, 0) + 1
        return answer(request)

    def hang(self, request: Request) -> int:
        self.held.append(request)
        return NOT_DONE_YET

    def release(self) -> None:
        for request in self.held:
            if request.channel is not None:
                request.channel.transport.abortConnection()  # type: ignore[union-attr]
        self.held.clear()


def json_answer(value: Any, content_type: bytes = b"application/json") -> Answer:
    def answer(request: Request) -> bytes:
        request.setHeader(b"content-type", content_type)
        return json.dumps(value).encode()

    return answer


@attrs.define
class RogueStack:
    stack: Stack
    rogue: Rogue
    port: Any

    async def stop(self) -> None:
        self.rogue.release()
        await self.stack.pool.closeCachedConnections()
        await self.stack.daemon.stop()
        await self.port.stopListening()
        await self.stack.sim.close()


async def rogue_stack(tmp_path: Path, **config: Any) -> RogueStack:
    from twisted.web.client import HTTPConnectionPool

    sim = OllamaSimulator(models=("llama3.2", "nomic-embed-text"), token_rate=500.0, load_time=0)
    rogue = Rogue(sim)
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Site(rogue))
    cfg = Config(
        listen="tcp:0:interface=127.0.0.1",
        target_url=f"http://127.0.0.1:{port.getHost().port}",
        data_dir=tmp_path / "data",
        webhook_allow_private=True,
        max_attempts=2,
    )
    cfg = attrs.evolve(cfg, **config)
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    cfg.artifacts_dir.mkdir(exist_ok=True)
    daemon = await Daemon.start(cfg, reactor)
    stack = Stack(sim, daemon, HTTPConnectionPool(reactor, persistent=True))
    await until(lambda: daemon.monitor is not None and daemon.monitor.state == "up")
    return RogueStack(stack, rogue, port)


async def _next_job_still_runs(stack: Stack) -> None:
    job = await stack.submit(chat("llama3.2", "after"))
    final = await stack.wait_job(job["id"])
    assert final["state"] == "done", final
    assert final["result"]["message"]["content"] == reply_text("llama3.2", "after", 8)


@pytest.fixture(autouse=True)
def _quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Retried attempts come back at once; the backoff itself is tested in tests/core."""
    monkeypatch.setattr("foreman.core.jobstate.job_retry_delay", lambda n, rng=None: 0.0)
    monkeypatch.setattr(foreman.jobs.runner, "METADATA_TIMEOUT", 0.5)


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize(
    "shape",
    [["x"], 5, "models", {"models": [{"name": 3}, None, "llama3.2"]}, [1, 2]],
    ids=["list-of-strings", "number", "string", "mixed", "not-an-object"],
)
async def test_api_ps_of_any_shape_still_runs_the_job(tmp_path: Path, shape: Any) -> None:
    rs = await rogue_stack(tmp_path)
    body = shape if isinstance(shape, dict) else {"models": shape}
    if shape == [1, 2]:
        body = shape
    rs.rogue.answers["/api/ps"] = json_answer(body)
    try:
        job = await rs.stack.submit(chat("llama3.2", "ps"))
        final = await rs.stack.wait_job(job["id"])
        assert final["state"] == "done", final
        assert rs.rogue.hits["/api/ps"] >= 1
        await _next_job_still_runs(rs.stack)
    finally:
        await rs.stop()


@pytest_twisted.ensureDeferred
async def test_api_ps_that_never_answers_does_not_hold_the_worker(tmp_path: Path) -> None:
    rs = await rogue_stack(tmp_path)
    rs.rogue.answers["/api/ps"] = rs.rogue.hang
    try:
        # the monitor's probes hang too; the worker's own read gives up after 0.5 s
        job = await rs.stack.submit(chat("llama3.2", "ps hangs"))
        final = await rs.stack.wait_job(job["id"], timeout=20)
        assert final["state"] == "done", final
        assert final["attempts"] == 0
    finally:
        await rs.stop()


def _sse(request: Request) -> bytes:
    request.setHeader(b"content-type", b"text/event-stream")
    return b"data: [1]\n\ndata: [DONE]\n\n"


_CHAT = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]}


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize(
    ("endpoint", "request_body", "answer"),
    [
        ("/api/embed", {"model": "nomic-embed-text", "input": "x"}, json_answer([1, 2, 3])),
        ("/v1/chat/completions", _CHAT, _sse),
    ],
    ids=["embed-answered-with-a-list", "sse-event-data-[1]"],
)
async def test_an_answer_of_the_wrong_shape_fails_the_job_clearly(
    tmp_path: Path, endpoint: str, request_body: dict[str, Any], answer: Answer
) -> None:
    rs = await rogue_stack(tmp_path)
    rs.rogue.answers[endpoint] = answer
    try:
        job = await rs.stack.submit(request_body, endpoint=endpoint)
        final = await rs.stack.wait_job(job["id"])
        assert final["state"] == "failed", final
        assert final["error"]["code"] == "stream_error", final
        await _next_job_still_runs(rs.stack)
    finally:
        await rs.stop()


def _endless_line(request: Request) -> int:
    """One NDJSON 'line' that never ends: 64 KiB writes until the client leaves."""
    request.setHeader(b"content-type", b"application/x-ndjson")
    chunk = b'{"message": {"content": "' + b"a" * 65536

    def more() -> None:
        if request.channel is None or request.finished:
            return
        request.write(chunk)
        reactor.callLater(0, more)

    more()
    return NOT_DONE_YET


@pytest_twisted.ensureDeferred
async def test_answer_past_the_size_limit_fails_and_closes_the_connection(tmp_path: Path) -> None:
    rs = await rogue_stack(tmp_path, max_response=1024 * 1024)
    rs.rogue.answers["/api/chat"] = _endless_line
    try:
        job = await rs.stack.submit(chat("llama3.2", "flood"))
        final = await rs.stack.wait_job(job["id"])
        assert final["state"] == "failed", final
        assert final["error"]["code"] == "response_too_large", final
        assert "1048576" in final["error"]["message"]
        del rs.rogue.answers["/api/chat"]
        await _next_job_still_runs(rs.stack)
    finally:
        await rs.stop()


@pytest_twisted.ensureDeferred
async def test_a_long_streamed_answer_within_the_limit_is_fine(tmp_path: Path) -> None:
    rs = await rogue_stack(tmp_path, max_response=1024 * 1024)
    try:
        job = await rs.stack.submit(chat("llama3.2", "long", options={"num_predict": 300}))
        final = await rs.stack.wait_job(job["id"])
        assert final["state"] == "done", final
    finally:
        await rs.stop()


class Injected(Exception):
    """Raised by a wrapped await point of the runner."""


class _Through:
    """Stands in for one of the runner's collaborators; named methods go through ``wrap``."""

    def __init__(self, real: Any, wrap: Callable[[str, Any], Any], names: tuple[str, ...]) -> None:
        self._real = real
        for name in names:
            setattr(self, name, wrap(name, getattr(real, name)))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


class FaultPoints:
    """Wraps every await point of a job attempt (the runner's calls only); raises on cue."""

    def __init__(self, daemon: Daemon) -> None:
        self.calls: list[str] = []
        self.fail_at: set[int] = set()
        runner: Any = daemon.runner
        runner._jobs = _Through(runner._jobs, self._wrap, ("get_row", "apply"))
        runner._artifacts = _Through(runner._artifacts, self._wrap, ("write",))
        for name in ("_resident", "_target"):
            setattr(runner, name, self._wrap(name, getattr(runner, name)))

    def _wrap(self, name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        async def point(*args: Any, **kwargs: Any) -> Any:
            n = len(self.calls)
            self.calls.append(name)
            if n in self.fail_at:
                raise Injected(f"injected at {name} (call {n})")
            return await real(*args, **kwargs)

        return point


@pytest_twisted.ensureDeferred
async def test_a_fault_at_every_await_point_of_an_attempt_ends_in_a_state(tmp_path: Path) -> None:
    """Every point, then every point followed by a fault in recording it: each job ends done.

    The points are enumerated from a clean run, so a new await in the runner
    is covered without changing this test.
    """
    from foreman.core.backoff import Backoff
    from tests.harness import start_stack

    monkey = pytest.MonkeyPatch()
    quick = Backoff.exponential(0.02, 0.1, 0.0)
    monkey.setattr("foreman.jobs.recorder.RECORD_RETRY", quick)
    monkey.setattr("foreman.work.worker.RECORD_RETRY", quick)
    stack = await start_stack(tmp_path, max_attempts=3)
    try:
        points = FaultPoints(stack.daemon)
        clean = await stack.submit(chat("llama3.2", "clean"))
        assert (await stack.wait_job(clean["id"]))["state"] == "done"
        await until(lambda: stack.daemon.worker.state == "idle")
        n = len(points.calls)
        assert n >= 5, points.calls  # get_row, loading, ps, load/generate, working, write, done
        outcomes = []
        for k in range(n):
            for faults in ({k}, {k, k + 1}):
                points.calls.clear()
                points.fail_at = faults
                job = await stack.submit(chat("llama3.2", f"fault {sorted(faults)}"))
                final = await stack.wait_job(job["id"], timeout=20)
                outcomes.append((sorted(faults), final["state"], final["attempts"]))
                assert final["state"] == "done", (faults, points.calls, final)
                assert final["result"]["message"]["content"] == reply_text(
                    "llama3.2", f"fault {sorted(faults)}", 8
                )
                await until(lambda: stack.daemon.worker.state == "idle")
        assert stack.daemon.queue.delayed == 0
    finally:
        monkey.undo()
        await stack.stop()


@pytest_twisted.ensureDeferred
async def test_a_fault_while_the_request_is_already_out_aborts_it_and_ends_in_a_state(
    tmp_path: Path,
) -> None:
    """A resident job's request leaves before its state writes; a fault in starting those
    writes ends the call (nothing orphaned at the target) and the attempt in a state."""
    from foreman.core.backoff import Backoff
    from foreman.testing import OllamaSimulator
    from tests.harness import start_stack

    monkey = pytest.MonkeyPatch()
    monkey.setattr("foreman.jobs.recorder.RECORD_RETRY", Backoff.exponential(0.02, 0.1, 0.0))
    monkey.setattr("foreman.core.jobstate.job_retry_delay", lambda n, rng=None: 0.0)
    sim = OllamaSimulator(models=("llama3.2",), token_rate=20.0, load_time=0.0)
    stack = await start_stack(tmp_path, sim=sim, max_attempts=3)
    try:
        warm = await stack.submit(chat("llama3.2", "warm"))  # the model is resident after it
        assert (await stack.wait_job(warm["id"]))["state"] == "done"
        runner: Any = stack.daemon.runner
        real_write, faults = runner._write, [1]

        def write_once_broken(attempt: Any, *transitions: Any, after: float = 0.0) -> Any:
            if faults:
                faults.pop()
                raise Injected("injected while starting the state writes")
            return real_write(attempt, *transitions, after=after)

        monkey.setattr(runner, "_write", write_once_broken)
        disconnects = len(sim.disconnects)
        job = await stack.submit(chat("llama3.2", "after the fault", options={"num_predict": 40}))
        final = await stack.wait_job(job["id"], timeout=20)
        assert final["state"] == "done", final
        assert final["result"]["message"]["content"] == reply_text(
            "llama3.2", "after the fault", 40
        )
        assert len(sim.disconnects) == disconnects + 1  # the first call was cut, not left running
        await until(lambda: stack.daemon.worker.state == "idle")
    finally:
        monkey.undo()
        await stack.stop()


def _one_chunk_then_silence(request: Request) -> int:
    """A streamed answer that starts, then never sends another byte."""
    request.setHeader(b"content-type", b"application/x-ndjson")
    request.write(
        b'{"model":"llama3.2","message":{"role":"assistant","content":"a"},"done":false}\n'
    )
    return NOT_DONE_YET


@pytest_twisted.ensureDeferred
async def test_an_interactive_request_to_a_silent_target_ends_and_frees_the_worker(
    tmp_path: Path,
) -> None:
    rs = await rogue_stack(tmp_path, job_idle_timeout=0.5)
    stack = rs.stack
    try:
        # no headers at all: 504 in Ollama's shape, after the idle limit
        rs.rogue.answers["/api/chat"] = rs.rogue.hang
        silent = await stack.post("/api/chat", chat("llama3.2", "hello?"))
        assert silent.status == 504, silent.body
        assert silent.json() == {
            "error": f"target {stack.daemon.config.target_url} did not answer within 0.5 s"
        }
        # a stream that stops mid-way: the client's connection is cut, not ended cleanly
        rs.rogue.answers["/api/chat"] = _one_chunk_then_silence
        with pytest.raises(Exception):  # noqa: B017 - treq reports the cut as ResponseFailed
            await stack.post("/api/chat", chat("llama3.2", "and you?", stream=True))
        # the worker is free again: the next request is answered
        del rs.rogue.answers["/api/chat"]
        rs.rogue.release()
        fine = await stack.post("/api/chat", chat("llama3.2", "after", stream=False))
        assert fine.status == 200, fine.body
        assert fine.json()["message"]["content"] == reply_text("llama3.2", "after", 8)
        await until(lambda: stack.daemon.worker.state == "idle")
    finally:
        await rs.stop()
