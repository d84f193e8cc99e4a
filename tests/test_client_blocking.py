"""ForemanClient (blocking) in real programs: subprocess scripts against a real daemon.

The blocking client runs a reactor in a background thread; the test process
already runs one in its main thread (pytest-twisted), so every blocking
client lives in a subprocess, talking to a daemon the test started (an
in-process stack, or ``twistd -n foreman --simulate``).
"""

from __future__ import annotations

import ast
import json
import os
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

from foreman.testing import reply_text
from tests.harness import reactor, start_stack
from tests.proc import spawn, wait_ready_async

PRELUDE = "import signal; signal.alarm(60)  # never outlive the test run\n"


class _Collect(ProcessProtocol):
    def __init__(self) -> None:
        self.out: list[bytes] = []
        self.err: list[bytes] = []
        self.ended: Deferred[int] = Deferred()

    def outReceived(self, data: bytes) -> None:
        self.out.append(data)

    def errReceived(self, data: bytes) -> None:
        self.err.append(data)

    def processEnded(self, reason: Failure) -> None:
        self.ended.callback(getattr(reason.value, "exitCode", -1))


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("FOREMAN_")}


async def run_python(code: str, *args: str, timeout: float = 60) -> tuple[str, str, int]:
    """Run ``python -c code args…`` without blocking the reactor; (stdout, stderr, status)."""
    proto = _Collect()
    argv = [sys.executable, "-c", PRELUDE + textwrap.dedent(code), *args]
    process = reactor.spawnProcess(proto, sys.executable, argv, env=_env(), path=os.getcwd())
    killer = reactor.callLater(timeout, process.signalProcess, "KILL")
    try:
        status = await proto.ended
    finally:
        if killer.active():
            killer.cancel()
    return b"".join(proto.out).decode(), b"".join(proto.err).decode(), status


@pytest_twisted.ensureDeferred
async def test_run_from_a_plain_script_against_twistd_simulate(tmp_path: Path) -> None:
    daemon = spawn(tmp_path / "data", args=("--simulate",))
    try:
        url = await wait_ready_async(daemon)
        url = url.replace("127.0.0.1", "localhost")  # a name: exercises resolving, and exit
        one_liner = (
            "from foreman.client import ForemanClient; c = ForemanClient(URL); "
            "print(c.run({'model': 'llama3.2', 'messages': [{'role': 'user', 'content': 'hi'}]}))"
        ).replace("URL", repr(url))
        out, err, status = await run_python(one_liner)
        assert status == 0, err
        response = ast.literal_eval(out.strip())
        assert response["done"] is True
        assert response["model"] == "llama3.2"
        # --simulate replies with 24 tokens
        assert response["message"] == {
            "role": "assistant",
            "content": reply_text("llama3.2", "hi", 24),
        }
    finally:
        assert daemon.stop() == 0, daemon.log()


URLS = """
    import json, sys
    from foreman.client import ForemanClient, ForemanError, InvalidURL

    report = {}
    with ForemanClient(sys.argv[1]) as c:  # host:port, no scheme
        report["base_url"] = c.base_url
        report["run"] = c.run({"model": "llama3.2", "prompt": "bare"}, endpoint="/api/generate")[
            "response"
        ]
    for url in ("ftp://x", "http://", "local host:8080"):
        try:
            ForemanClient(url)  # refused at once, before any request
            report[url] = "accepted"
        except InvalidURL as e:
            report[url] = [isinstance(e, ForemanError), e.code]
    print(json.dumps(report))
"""


@pytest_twisted.ensureDeferred
async def test_a_url_without_a_scheme_and_unusable_ones(tmp_path: Path) -> None:
    stack = await start_stack(tmp_path)
    try:
        out, err, status = await run_python(URLS, stack.url.removeprefix("http://"))
        assert status == 0, err
        assert json.loads(out) == {
            "base_url": stack.url,
            "run": reply_text("llama3.2", "bare", 8),
            "ftp://x": [True, "invalid_url"],
            "http://": [True, "invalid_url"],
            "local host:8080": [True, "invalid_url"],
        }
    finally:
        await stack.stop()


EVERY_CALL = """
    import json, sys
    from foreman.client import (
        ForemanClient, Conflict, JobNotFound, BadRequest, JobCancelled, JobState,
    )

    url = sys.argv[1]
    report = {}
    with ForemanClient(url, timeout=20) as c:
        job = c.submit({"model": "llama3.2", "messages": [{"role": "user", "content": "one"}]},
                       metadata={"n": 1})
        report["submitted"] = [job.state.value, job.metadata]
        with c.events(job.id) as events:
            report["events"] = [e.type for e in events if e.job is not None]
        report["resumed"] = [e.type for e in c.events(job.id, last_event_id=2)]
        done = c.wait(job.id, timeout=30)
        report["done"] = [done.state.value, done.result["message"]["content"]]
        report["get"] = c.get(job.id) == done
        report["artifact"] = json.loads(c.artifact(job.id, "response.json")) == done.result
        generated = c.run({"model": "qwen3", "prompt": "two"}, endpoint="/api/generate")
        report["run"] = generated["response"]
        report["list"] = [j.id for j in c.list()]
        page = c.list_page(limit=1)
        report["page"] = [len(page.jobs), page.has_more]
        report["result"] = c.result(done) == done.result
        try:
            c.cancel(job.id)
        except Conflict as e:
            report["cancel_done"] = e.code
        c.delete(job.id)
        try:
            c.get(job.id)
        except JobNotFound as e:
            report["deleted"] = e.status
        try:
            c.submit({"messages": []})
        except BadRequest as e:
            report["bad"] = e.code
        report["pull"] = [p["status"] for p in c.pull("llama3.2")][-1]
    print(json.dumps(report))
"""


@pytest_twisted.ensureDeferred
async def test_every_blocking_call_from_a_script(tmp_path: Path) -> None:
    stack = await start_stack(tmp_path)
    try:
        out, err, status = await run_python(EVERY_CALL, stack.url)
        assert status == 0, err
        report = json.loads(out)
        jobs = [j["id"] for j in (await stack.get("/jobs")).json()["data"]]
        assert report == {
            "submitted": ["queued", {"n": 1}],
            "events": ["job.queued", "job.loading", "job.working", "job.done"],
            "resumed": ["job.working", "job.done"],
            "done": ["done", reply_text("llama3.2", "one", 8)],
            "get": True,
            "artifact": True,
            "run": reply_text("qwen3", "two", 8),
            "list": report["list"],
            "page": [1, True],
            "result": True,
            "cancel_done": "not_cancellable",
            "deleted": 404,
            "bad": "missing_field",
            "pull": "success",
        }
        assert len(report["list"]) == 2
        assert jobs == report["list"][:1]  # newest first; the older one was deleted
    finally:
        await stack.stop()


MANY_THREADS = """
    import json, sys, threading
    from concurrent.futures import ThreadPoolExecutor
    from foreman.client import ForemanClient

    url = sys.argv[1]
    shared = ForemanClient(url)
    own = [ForemanClient(url) for _ in range(4)]

    def work(i):
        client = shared if i % 2 else own[i // 2 % 4]
        prompt = f"thread {i}"
        messages = [{"role": "user", "content": prompt}]
        result = client.run({"model": "llama3.2", "messages": messages})
        job_count = len(list(client.list()))
        return prompt, result["message"]["content"], job_count

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(work, range(16)))
    reactors = [t.name for t in threading.enumerate() if t.name == "foreman-client-reactor"]
    for client in [shared, *own]:
        client.close()
    print(json.dumps({"results": results, "reactor_threads": len(reactors)}))
"""


@pytest_twisted.ensureDeferred
async def test_many_threads_share_one_reactor_thread(tmp_path: Path) -> None:
    stack = await start_stack(tmp_path)
    try:
        out, err, status = await run_python(MANY_THREADS, stack.url)
        assert status == 0, err
        report = json.loads(out)
        assert report["reactor_threads"] == 1
        assert len(report["results"]) == 16
        for prompt, content, count in report["results"]:
            assert content == reply_text("llama3.2", prompt, 8)
            assert 1 <= count <= 16
        listed = (await stack.get("/jobs?limit=100")).json()["data"]
        assert len(listed) == 16  # no call ran twice
    finally:
        await stack.stop()


ON_THE_REACTOR_THREAD = """
    import json, sys
    from twisted.internet import reactor
    from twisted.internet.threads import deferToThread
    from foreman.client import ForemanClient, ReactorThreadError

    client = ForemanClient(sys.argv[1])
    report = {}

    def on_reactor():
        try:
            client.list_page()
            report["reactor_thread"] = "no error"
        except ReactorThreadError as e:
            report["reactor_thread"] = str(e)
        d = deferToThread(lambda: len(client.list_page().jobs))  # another thread: fine
        d.addCallback(lambda n: report.update(worker_thread=n))
        d.addErrback(lambda f: report.update(worker_thread=repr(f.value)))
        d.addBoth(lambda _: deferToThread(client.close))
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(on_reactor)
    reactor.run()
    print(json.dumps(report))
"""


@pytest_twisted.ensureDeferred
async def test_a_call_on_the_reactor_thread_is_refused_clearly(tmp_path: Path) -> None:
    stack = await start_stack(tmp_path)
    try:
        out, err, status = await run_python(ON_THE_REACTOR_THREAD, stack.url)
        assert status == 0, err
        report: dict[str, Any] = json.loads(out)
        assert "deadlock" in report["reactor_thread"]
        assert "AsyncForemanClient" in report["reactor_thread"]
        assert report["worker_thread"] == 0
    finally:
        await stack.stop()
