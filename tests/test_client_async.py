"""AsyncForemanClient against the real daemon and the simulator (no mocks of foreman).

A small TCP relay sits between client and daemon where a test needs the
network to misbehave: it cuts live connections (an interrupted event
stream), swallows a reply after the daemon has acted on the request (a
retried submit), and records the raw requests (to check headers and count
long-polls).
"""

from __future__ import annotations

import json
import os
import re
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import utils
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure

from foreman.client import (
    ArtifactNotFound,
    AsyncForemanClient,
    BadRequest,
    Conflict,
    ForemanConnectionError,
    ForemanError,
    IdempotencyConflict,
    InvalidURL,
    Job,
    JobCancelled,
    JobEvent,
    JobFailed,
    JobNotFound,
    JobState,
    NotFound,
    PullFailed,
    QueueFull,
    RetryPolicy,
    ServiceUnavailable,
    Unauthorized,
    WaitTimeout,
)
from foreman.client._errors import error_from_reply
from foreman.testing import OllamaSimulator, embedding_vector, reply_text
from tests.harness import chat, reactor, start_stack

FAST_RETRY = RetryPolicy(attempts=4, base=0.05, cap=0.2)
get_output_and_value: Any = utils.getProcessOutputAndValue


def slow_sim(**kw: Any) -> OllamaSimulator:
    """8 tokens at 10/s: a job works for ~0.8 s, long enough to act while it runs."""
    options: dict[str, Any] = {"models": ("llama3.2", "qwen3"), "token_rate": 10.0}
    options.update(kw)
    return OllamaSimulator(load_time=0.05, **options)


# -- a relay that can misbehave


class _Upstream(Protocol):
    def __init__(self, down: _Downstream) -> None:
        self.down = down

    def dataReceived(self, data: bytes) -> None:
        if self.down.swallow_reply:
            # the daemon has answered (so it acted): lose the answer and the connection
            self.down.transport.abortConnection()  # type: ignore[union-attr]
            self.transport.abortConnection()  # type: ignore[union-attr]
            return
        self.down.transport.write(data)  # type: ignore[union-attr]

    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:  # noqa: B008
        self.down.transport.loseConnection()  # type: ignore[union-attr]


class _Downstream(Protocol):
    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        self.up: _Upstream | None = None
        self.pending: list[bytes] = []
        self.swallow_reply = False
        self.seen = bytearray()

    def connectionMade(self) -> None:
        self.relay.connections.append(self)
        if self.relay.swallow_replies > 0:
            self.relay.swallow_replies -= 1
            self.swallow_reply = True
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.relay.target_port)
        connectProtocol(endpoint, _Upstream(self)).addCallback(self._connected)

    def _connected(self, up: _Upstream) -> None:
        self.up = up
        for chunk in self.pending:
            up.transport.write(chunk)  # type: ignore[union-attr]
        self.pending.clear()
        if self.transport is None or not self.transport.connected:  # type: ignore[attr-defined]
            up.transport.loseConnection()  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.seen += data
        if self.up is None:
            self.pending.append(data)
        else:
            self.up.transport.write(data)  # type: ignore[union-attr]

    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:  # noqa: B008
        if self.up is not None:
            self.up.transport.loseConnection()  # type: ignore[union-attr]

    def cut(self) -> None:
        self.transport.abortConnection()  # type: ignore[union-attr]
        if self.up is not None:
            self.up.transport.abortConnection()  # type: ignore[union-attr]


_REQUEST_HEAD = re.compile(rb"(?:GET|POST|DELETE) /\S* HTTP/1\.1\r\n.*?\r\n\r\n", re.DOTALL)


class Relay:
    def __init__(self, target_url: str) -> None:
        self.target_port = int(target_url.rsplit(":", 1)[1])
        self.connections: list[_Downstream] = []
        self.swallow_replies = 0
        self.port: Any = None

    async def start(self) -> str:
        factory = Factory.forProtocol(lambda: _Downstream(self))
        self.port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        return f"http://127.0.0.1:{self.port.getHost().port}"

    def cut_all(self) -> None:
        for conn in self.connections:
            conn.cut()

    def requests(self) -> list[bytes]:
        """Every request head the clients sent (request line and headers)."""
        return [
            m.group(0)
            for conn in self.connections
            for m in _REQUEST_HEAD.finditer(bytes(conn.seen))
        ]

    async def stop(self) -> None:
        self.cut_all()
        await self.port.stopListening()


# -- the calls


@pytest_twisted.ensureDeferred
async def test_submit_get_wait_artifacts_list_delete(tmp_path: Path) -> None:
    stack = await start_stack(tmp_path)
    client = AsyncForemanClient(stack.url, reactor=reactor)
    try:
        job = await client.submit(chat("llama3.2", "tell me"), metadata={"batch": 7}, priority=3)
        assert isinstance(job, Job)
        assert job.id.startswith("job_")
        assert job.state is JobState.QUEUED
        assert (job.model, job.endpoint, job.priority, job.metadata) == (
            "llama3.2",
            "/api/chat",
            3,
            {"batch": 7},
        )
        assert job.created_at is not None and job.created_at.tzinfo is not None

        done = await client.wait(job.id, timeout=30)
        assert done.state is JobState.DONE and done.terminal
        assert done.error is None and done.tokens == 8
        expected = reply_text("llama3.2", "tell me", 8)
        assert done.result is not None
        assert done.result["message"]["content"] == expected
        assert {a.name for a in done.artifacts} == {
            "request.json",
            "response.json",
            "stream.ndjson",
        }
        response_artifact = done.artifact("response.json")
        assert response_artifact is not None
        assert response_artifact.content_type == "application/json"

        got = await client.get(job.id)
        assert got == done

        body = await client.artifact(job.id, "response.json")
        assert json.loads(body) == done.result
        assert len(body) == response_artifact.size
        assert json.loads(await client.artifact(job.id, "request.json")) == chat(
            "llama3.2", "tell me"
        )
        lines = (await client.artifact(job.id, "stream.ndjson")).splitlines()
        assert "".join(json.loads(line)["message"]["content"] for line in lines) == expected

        assert await client.result(done) == done.result

        await client.delete(job.id)
        with pytest.raises(JobNotFound):
            await client.get(job.id)
    finally:
        await client.close()
        await stack.stop()


@pytest_twisted.ensureDeferred
async def test_list_walks_every_page(tmp_path: Path) -> None:
    stack = await start_stack(tmp_path)
    client = AsyncForemanClient(stack.url, reactor=reactor)
    try:
        ids = [(await client.submit(chat("qwen3", f"q{i}"))).id for i in range(5)]
        other = await client.submit(chat("llama3.2", "other"))
        for job_id in [*ids, other.id]:
            await client.wait(job_id, timeout=30)

        page = await client.list_page(model="qwen3", limit=2)
        assert [j.id for j in page.jobs] == ids[::-1][:2]
        assert page.has_more and page.next_after == ids[3]

        walked = [j.id async for j in client.list(model="qwen3", page_size=2)]
        assert walked == ids[::-1]  # newest first, across three pages
        assert [j.id async for j in client.list(limit=3, page_size=2)] == [
            other.id,
            ids[4],
            ids[3],
        ]
        done = [j async for j in client.list(state=JobState.DONE)]
        assert len(done) == 6 and all(j.state is JobState.DONE for j in done)
        assert [j async for j in client.list(state="failed")] == []
    finally:
        await client.close()
        await stack.stop()


@pytest_twisted.ensureDeferred
async def test_wait_long_polls_across_state_changes(tmp_path: Path) -> None:
    stack = await start_stack(tmp_path, sim=slow_sim())
    relay = Relay(stack.url)
    client = AsyncForemanClient(await relay.start(), reactor=reactor)
    try:
        job = await client.submit(chat("llama3.2", "slow"))
        with pytest.raises(WaitTimeout) as timed_out:
            await client.wait(job.id, timeout=0.1)
        assert timed_out.value.job is not None
        assert not timed_out.value.job.terminal

        done = await client.wait(job.id)
        assert done.state is JobState.DONE
        assert done.result is not None
        assert done.result["message"]["content"] == reply_text("llama3.2", "slow", 8)
        polls = [r for r in relay.requests() if r.startswith(f"GET /jobs/{job.id}?wait=".encode())]
        # one long-poll per state change (queued→loading→working→done), not a busy loop
        assert 1 <= len(polls) <= 6, polls
    finally:
        await client.close()
        await relay.stop()
        await stack.stop()


@pytest_twisted.ensureDeferred
async def test_run_returns_the_assembled_response(tmp_path: Path) -> None:
    stack = await start_stack(tmp_path)
    client = AsyncForemanClient(stack.url, reactor=reactor)
    try:
        result = await client.run(chat("llama3.2", "hi"), timeout=30)
        assert result["message"] == {
            "role": "assistant",
            "content": reply_text("llama3.2", "hi", 8),
        }
        assert result["done"] is True

        generated = await client.run(
            {"model": "qwen3", "prompt": "write", "stream": False}, endpoint="/api/generate"
        )
        assert generated["response"] == reply_text("qwen3", "write", 8)
    finally:
        await client.close()
        await stack.stop()


@pytest_twisted.ensureDeferred
async def test_run_fetches_a_result_over_the_inline_limit(tmp_path: Path) -> None:
    stack = await start_stack(tmp_path)
    client = AsyncForemanClient(stack.url, reactor=reactor)
    try:
        texts = [f"text number {i}" for i in range(8)]  # 8 x 768 floats: well over 64 KiB
        request = {"model": "nomic-embed-text", "input": texts}
        job = await client.submit(request, endpoint="/api/embed")
        done = await client.wait(job.id)
        assert done.state is JobState.DONE
        assert done.result is None  # too big to inline

        result = await client.run(request, endpoint="/api/embed")
        assert result["embeddings"] == [embedding_vector("nomic-embed-text", t) for t in texts]
    finally:
        await client.close()
        await stack.stop()


@pytest_twisted.ensureDeferred
async def test_run_raises_job_failed_and_job_cancelled(tmp_path: Path) -> None:
    stack = await start_stack(tmp_path, sim=slow_sim())
    client = AsyncForemanClient(stack.url, reactor=reactor)
    try:
        with pytest.raises(JobFailed) as failed:
            await client.run(chat("no-such-model", "hi"))
        assert failed.value.job.state is JobState.FAILED
        assert failed.value.job.error is not None
        assert "not found" in failed.value.job.error.message

        running = client.run(chat("llama3.2", "long"), idempotency_key="run-key")
        # the same key and body find the job run() created
        job = await client.submit(chat("llama3.2", "long"), idempotency_key="run-key")
        cancelled = await client.cancel(job.id)
        assert cancelled.state is JobState.CANCELLED
        with pytest.raises(JobCancelled) as stopped:
            await running
        assert stopped.value.job.id == job.id
        assert stopped.value.job.state is JobState.CANCELLED
    finally:
        await client.close()
        await stack.stop()


@pytest_twisted.ensureDeferred
async def test_errors_map_to_typed_exceptions(tmp_path: Path) -> None:
    stack = await start_stack(tmp_path)
    client = AsyncForemanClient(stack.url, reactor=reactor)
    try:
        with pytest.raises(JobNotFound) as missing:
            await client.get("job_00000000000000000000000000")
        assert (missing.value.status, missing.value.code) == (404, "job_not_found")

        with pytest.raises(BadRequest) as bad:
            await client.submit({"messages": []})
        assert (bad.value.status, bad.value.code) == (400, "missing_field")
        with pytest.raises(BadRequest) as endpoint:
            await client.submit(chat("llama3.2"), endpoint="/api/tags")
        assert endpoint.value.code == "invalid_endpoint"

        first = await client.submit(chat("llama3.2", "a"), idempotency_key="same-key")
        again = await client.submit(chat("llama3.2", "a"), idempotency_key="same-key")
        assert again.id == first.id
        with pytest.raises(IdempotencyConflict) as conflict:
            await client.submit(chat("llama3.2", "b"), idempotency_key="same-key")
        assert isinstance(conflict.value, Conflict)
        assert (conflict.value.status, conflict.value.code) == (409, "idempotency_conflict")

        done = await client.wait(first.id)
        with pytest.raises(Conflict) as not_cancellable:
            await client.cancel(done.id)
        assert not_cancellable.value.code == "not_cancellable"
        with pytest.raises(ArtifactNotFound):
            await client.artifact(done.id, "../../etc/passwd")
        with pytest.raises(NotFound):
            await client.artifact(done.id, "secrets.json")
    finally:
        await client.close()
        await stack.stop()


@pytest_twisted.ensureDeferred
async def test_unauthorized_without_the_token(tmp_path: Path) -> None:
    stack = await start_stack(tmp_path, api_tokens=("s3cret",))
    anonymous = AsyncForemanClient(stack.url, reactor=reactor)
    wrong = AsyncForemanClient(stack.url, "nope", reactor=reactor)
    right = AsyncForemanClient(stack.url, "s3cret", reactor=reactor)
    try:
        for client in (anonymous, wrong):
            with pytest.raises(Unauthorized) as denied:
                await client.submit(chat("llama3.2"))
            assert (denied.value.status, denied.value.code) == (401, "unauthorized")
            with pytest.raises(Unauthorized):
                [j async for j in client.list()]
        job = await right.submit(chat("llama3.2", "ok"))
        assert (await right.wait(job.id)).state is JobState.DONE
        with pytest.raises(Unauthorized):
            await anonymous.events(job.id).next()
    finally:
        for client in (anonymous, wrong, right):
            await client.close()
        await stack.stop()


# -- events


def _states(events: list[JobEvent]) -> list[str]:
    return [e.type for e in events if e.job is not None]


@pytest_twisted.ensureDeferred
async def test_events_from_start_and_resumed_from_an_id(tmp_path: Path) -> None:
    stack = await start_stack(tmp_path, sim=slow_sim())
    client = AsyncForemanClient(stack.url, reactor=reactor)
    try:
        job = await client.submit(chat("llama3.2", "events"))
        events = [e async for e in client.events(job.id)]
        assert _states(events) == ["job.queued", "job.loading", "job.working", "job.done"]
        seqs = [e.seq for e in events if e.seq is not None]
        assert seqs == sorted(seqs) and len(set(seqs)) == 4
        progress = [e.tokens for e in events if e.type == "job.progress" and e.tokens is not None]
        assert progress and progress == sorted(progress)
        assert all(e.job_id == job.id for e in events)
        last = events[-1]
        assert last.terminal and last.state is JobState.DONE and last.tokens == 8

        working_seq = next(e.seq for e in events if e.type == "job.working")
        resumed = [e async for e in client.events(job.id, last_event_id=working_seq)]
        assert _states(resumed) == ["job.done"]
        assert [e for e in resumed if e.job is None] == []  # progress is live only
        past_the_end = [e async for e in client.events(job.id, last_event_id=seqs[-1])]
        assert past_the_end == []

        with pytest.raises(JobNotFound):
            await client.events("job_00000000000000000000000000").next()
    finally:
        await client.close()
        await stack.stop()


@pytest_twisted.ensureDeferred
async def test_interrupted_event_stream_resumes_with_last_event_id(tmp_path: Path) -> None:
    stack = await start_stack(tmp_path, sim=slow_sim())
    relay = Relay(stack.url)
    client = AsyncForemanClient(await relay.start(), reactor=reactor, retry=FAST_RETRY)
    try:
        job = await client.submit(chat("llama3.2", "interrupted"))
        stream = client.events(job.id)
        seen: list[JobEvent] = []
        async for event in stream:
            seen.append(event)
            if event.type == "job.working":
                relay.cut_all()  # mid-stream, while the job works
        assert _states(seen) == ["job.queued", "job.loading", "job.working", "job.done"]
        assert stream.connections == 2
        working = next(e for e in seen if e.type == "job.working")
        event_requests = [r for r in relay.requests() if b"/events" in r.split(b"\r\n")[0]]
        assert len(event_requests) == 2
        assert b"last-event-id" not in event_requests[0].lower()
        assert f"last-event-id: {working.seq}\r\n".encode() in event_requests[1].lower()
        assert seen[-1].job is not None
        assert seen[-1].job.result is not None
        assert seen[-1].job.result["message"]["content"] == reply_text("llama3.2", "interrupted", 8)
    finally:
        await client.close()
        await relay.stop()
        await stack.stop()


@pytest_twisted.ensureDeferred
async def test_close_ends_an_open_event_stream(tmp_path: Path) -> None:
    stack = await start_stack(tmp_path, sim=slow_sim())
    client = AsyncForemanClient(stack.url, reactor=reactor)
    try:
        job = await client.submit(chat("llama3.2", "stop early"))
        async with client.events(job.id) as stream:
            first = await stream.next()
            assert first is not None and first.type == "job.queued"
        assert await stream.next() is None  # closed: the iteration is over
        other = client.events(job.id)
        assert await other.next() is not None
        await client.close()  # closes the still-open stream too
        assert await other.next() is None
    finally:
        await client.close()
        await stack.stop()


# -- retries


@pytest_twisted.ensureDeferred
async def test_retried_submit_does_not_create_a_second_job(tmp_path: Path) -> None:
    stack = await start_stack(tmp_path)
    relay = Relay(stack.url)
    client = AsyncForemanClient(await relay.start(), reactor=reactor, retry=FAST_RETRY)
    try:
        relay.swallow_replies = 1  # the daemon creates the job, its reply is lost
        job = await client.submit(chat("llama3.2", "once"))
        posts = [r for r in relay.requests() if r.startswith(b"POST /jobs ")]
        assert len(posts) == 2
        keys = [
            line.split(b":", 1)[1].strip()
            for post in posts
            for line in post.split(b"\r\n")
            if line.lower().startswith(b"idempotency-key:")
        ]
        assert len(keys) == 2 and keys[0] == keys[1]
        jobs = [j async for j in client.list()]
        assert [j.id for j in jobs] == [job.id]

        relay.swallow_replies = 1  # idempotent GET: retried too
        assert (await client.get(job.id)).id == job.id
    finally:
        await client.close()
        await relay.stop()
        await stack.stop()


@pytest_twisted.ensureDeferred
async def test_connection_refused_raises_after_retries() -> None:
    port = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")
    url = f"http://127.0.0.1:{port.getHost().port}"
    await port.stopListening()  # nothing listens there now
    client = AsyncForemanClient(url, reactor=reactor, retry=RetryPolicy(attempts=2, base=0.01))
    try:
        with pytest.raises(ForemanConnectionError) as refused:
            await client.get("job_00000000000000000000000000")
        assert "after 2 attempt(s)" in str(refused.value)
        assert "refused" in str(refused.value)
        with pytest.raises(ForemanConnectionError):
            await client.submit(chat("llama3.2"))
        with pytest.raises(ForemanConnectionError):
            await client.events("job_00000000000000000000000000").next()
    finally:
        await client.close()


@pytest_twisted.ensureDeferred
async def test_timeouts_and_dns_failures_raise_connection_errors_naming_the_url() -> None:
    # accepts connections and never answers
    port = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")
    silent = f"http://127.0.0.1:{port.getHost().port}"
    retry = RetryPolicy(attempts=2, base=0.01)
    client = AsyncForemanClient(silent, reactor=reactor, timeout=0.2, retry=retry)
    unknown = AsyncForemanClient("http://no-such-host.invalid:8080", reactor=reactor, retry=retry)
    try:
        for call in (
            lambda: client.get("job_1"),
            lambda: client.events("job_1").next(),
            lambda: client.pull("gemma3").next(),
        ):
            with pytest.raises(ForemanConnectionError) as timed_out:
                await call()
            assert silent in str(timed_out.value)
            assert "no reply within 0.2 s" in str(timed_out.value)
        for call in (
            lambda: unknown.get("job_1"),
            lambda: unknown.events("job_1").next(),
            lambda: unknown.pull("gemma3").next(),
        ):
            with pytest.raises(ForemanConnectionError) as not_resolved:
                await call()
            assert "http://no-such-host.invalid:8080/" in str(not_resolved.value)
            assert "DNS lookup failed" in str(not_resolved.value)
    finally:
        await client.close()
        await unknown.close()
        await port.stopListening()


# -- base URLs


@pytest_twisted.ensureDeferred
async def test_a_base_url_without_a_scheme_means_http(tmp_path: Path) -> None:
    stack = await start_stack(tmp_path)
    bare = stack.url.removeprefix("http://")
    client = AsyncForemanClient(bare + "/", reactor=reactor)
    try:
        assert client.base_url == stack.url
        proxied = AsyncForemanClient(" HTTPS://Example.com:8443/foreman/ ", reactor=reactor)
        assert proxied.base_url == "https://Example.com:8443/foreman"
        result = await client.run(chat("llama3.2", "no scheme"))
        assert result["message"]["content"] == reply_text("llama3.2", "no scheme", 8)
    finally:
        await client.close()
        await stack.stop()


def test_an_unusable_base_url_raises_invalid_url_at_once() -> None:
    cases = {
        "": "empty",
        "ftp://x": "ftp:// is not supported",
        "http://": "no host",
        "http://:8080": "no host",
        "http://exa mple": "space",
        "localhost:99999": "port",
        "localhost:http": "port",
        "http:/localhost:8080": "http://",
        "http://user:pw@host": "token",
        "http://host/?q=1": "query",
    }
    for url, reason in cases.items():
        with pytest.raises(InvalidURL) as invalid:
            AsyncForemanClient(url, reactor=reactor)
        error = invalid.value
        assert isinstance(error, ForemanError) and isinstance(error, ValueError)
        assert error.code == "invalid_url" and error.status is None
        assert repr(url) in error.message and reason in error.message, error.message
        assert "\n" not in str(error)


# -- pulls through foreman


@pytest_twisted.ensureDeferred
async def test_pull_streams_progress_and_reports_failure(tmp_path: Path) -> None:
    sim = OllamaSimulator(models=("llama3.2",), pullable=("gemma3",), pull_time=0.05)
    stack = await start_stack(tmp_path, sim=sim)
    client = AsyncForemanClient(stack.url, reactor=reactor)
    try:
        progress = [p async for p in client.pull("gemma3")]
        assert progress[0] == {"status": "pulling manifest"}
        assert progress[-1] == {"status": "success"}
        assert any("completed" in p for p in progress)
        tags = await stack.get("/api/tags")
        assert "gemma3:latest" in {m["name"] for m in tags.json()["models"]}

        with pytest.raises(PullFailed) as failed:
            [p async for p in client.pull("no-such-model")]
        assert "file does not exist" in failed.value.message
    finally:
        await client.close()
        await stack.stop()


# -- asyncio programs


ASYNCIO_SCRIPT = textwrap.dedent(
    """
    import asyncio, json, signal, sys
    from twisted.internet import asyncioreactor

    signal.alarm(60)  # never outlive a test run, whatever happens

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    asyncioreactor.install(loop)

    from foreman.client import AsyncForemanClient, JobNotFound

    async def main(url):
        client = AsyncForemanClient(url)
        try:
            result = await client.run(
                {"model": "llama3.2", "messages": [{"role": "user", "content": "from asyncio"}]}
            ).asFuture(loop)
            request = {"model": "qwen3", "prompt": "x"}
            job = await client.submit(request, "/api/generate").asFuture(loop)
            states = [e.type async for e in client.events(job.id).aio() if e.job is not None]
            try:
                await client.get("job_00000000000000000000000000").asFuture(loop)
                missing = "no error"
            except JobNotFound as e:
                missing = e.code
        finally:
            await client.close().asFuture(loop)
        print(json.dumps({"content": result["message"]["content"], "states": states,
                          "missing": missing, "loop": type(asyncio.get_running_loop()).__name__}))

    from twisted.internet import reactor
    from twisted.internet.defer import Deferred

    failed = []

    def start():
        done = Deferred.fromFuture(loop.create_task(main(sys.argv[1])))
        done.addErrback(lambda f: failed.append(f.printTraceback()))
        done.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(start)
    reactor.run()
    sys.exit(1 if failed else 0)
    """
)


@pytest_twisted.ensureDeferred
async def test_asyncio_program_on_the_asyncio_reactor(tmp_path: Path) -> None:
    stack = await start_stack(tmp_path)
    try:
        script = tmp_path / "asyncio_client.py"
        script.write_text(ASYNCIO_SCRIPT)
        env = {k: v for k, v in os.environ.items() if not k.startswith("FOREMAN_")}
        out, err, code = await get_output_and_value(
            sys.executable, [str(script), stack.url], env=env, path=os.getcwd()
        )
        assert code == 0, err.decode()
        report = json.loads(out.decode().strip().splitlines()[-1])
        assert report == {
            "content": reply_text("llama3.2", "from asyncio", 8),
            "states": ["job.queued", "job.loading", "job.working", "job.done"],
            "missing": "job_not_found",
            "loop": "_UnixSelectorEventLoop",
        }
    finally:
        await stack.stop()


# -- pure parts


def test_error_replies_map_to_exception_types() -> None:
    def err(status: int, code: str, headers: dict[str, str] | None = None) -> ForemanError:
        body = json.dumps({"error": {"code": code, "message": f"m-{code}"}}).encode()
        return error_from_reply(status, body, headers or {})

    cases = [
        (400, "malformed_json", BadRequest),
        (401, "unauthorized", Unauthorized),
        (404, "job_not_found", JobNotFound),
        (404, "artifact_not_found", ArtifactNotFound),
        (404, "not_found", NotFound),
        (409, "idempotency_conflict", IdempotencyConflict),
        (409, "job_active", Conflict),
        (503, "queue_full", QueueFull),
        (503, "not_admitted", ServiceUnavailable),
        (500, "internal", ForemanError),
    ]
    for status, code, kind in cases:
        error = err(status, code)
        assert type(error) is kind, (status, code)
        assert (error.status, error.code, error.message) == (status, code, f"m-{code}")
    full = err(503, "queue_full", {"retry-after": "7"})
    assert isinstance(full, QueueFull) and full.retry_after == 7.0
    assert str(full) == "HTTP 503 queue_full: m-queue_full"
    ollama = error_from_reply(404, b'{"error": "model not found"}', {})
    assert (ollama.code, ollama.message) == ("http_404", "model not found")
    html = error_from_reply(502, b"<html>bad gateway</html>", {})
    assert isinstance(html, ServiceUnavailable) and "bad gateway" in html.message


def test_retry_delays_grow_and_stay_bounded() -> None:
    policy = RetryPolicy(attempts=5, base=0.1, cap=1.0)
    assert policy.delay(0) == 0.0
    lows = [policy.delay(n, 0.0) for n in range(1, 7)]
    highs = [policy.delay(n, 0.999) for n in range(1, 7)]
    assert lows == sorted(lows) and lows[0] == pytest.approx(0.075)
    assert max(highs) <= 1.25


def test_job_and_events_parse_the_wire_shapes() -> None:
    wire = {
        "id": "job_01",
        "object": "job",
        "state": "working",
        "endpoint": "/api/chat",
        "model": "m",
        "priority": 0,
        "metadata": None,
        "attempts": 1,
        "error": {"code": "interrupted", "message": "retrying"},
        "created_at": "2026-01-02T03:04:05.678Z",
        "started_at": None,
        "finished_at": None,
        "position": None,
        "progress": {"tokens": 5},
        "artifacts": [{"name": "request.json", "url": "u", "size": 3, "content_type": "x"}],
        "result": None,
        "seq": 3,
    }
    job = Job.from_dict(wire)
    assert job.state is JobState.WORKING and not job.terminal
    assert job.tokens == 5 and job.seq == 3 and job.raw == wire
    assert job.error is not None and job.error.code == "interrupted"
    assert job.created_at is not None and job.created_at.microsecond == 678000
    event = JobEvent.parse("job.working", json.dumps(wire), "3")
    assert event is not None and event.seq == 3 and event.state is JobState.WORKING
    progress = JobEvent.parse("job.progress", '{"id": "job_01", "tokens": 9}', "3")
    assert progress == JobEvent(type="job.progress", job_id="job_01", tokens=9)
    assert JobEvent.parse("job.something-new", "{}", None) is None
