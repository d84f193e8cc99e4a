"""foreman's own routes (``build_app``) through ``treq.testing.StubTreq``, in memory.

The routes run over the real job service, store (a SQLite file in
``tmp_path``, migrated), work queue, hub, artifact store and metrics, wired as
``foreman.app.wiring.build_parts`` wires them; only the daemon around them is
a small ``DaemonView`` stand-in. The store's adbapi thread needs the real
reactor, so the tests are ``pytest_twisted.ensureDeferred`` coroutines; HTTP
itself never leaves memory (StubTreq's client and server meet over an
in-memory pump). Job timestamps and long-poll timers run on a ``task.Clock``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, cast

import attrs
import pytest
import pytest_twisted
from treq.testing import StubTreq
from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import Clock, deferLater
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers

from foreman.core import jobstate
from foreman.core.errors import BadRequest
from foreman.core.forwarding import TrustedProxies
from foreman.core.ids import JOB_ID
from foreman.core.scheduler import Scheduler
from foreman.jobs.artifacts import ArtifactStore
from foreman.jobs.batches import BatchService
from foreman.jobs.files import FileStore
from foreman.jobs.hub import JobHub, Progress
from foreman.jobs.service import JobService
from foreman.ops.metrics import CONTENT_TYPE, Metrics
from foreman.outbox.ssrf import check_url
from foreman.store.database import Store
from foreman.store.migrations import migrate
from foreman.web.routes import build_app
from foreman.web.view import DaemonView
from foreman.work.control import QueueControl
from foreman.work.queue import WorkQueue
from foreman.work.views import queue_view
from foreman.work.worker import Worker

reactor: Any = _reactor

BASE = "http://foreman.test"
NOW = 1_767_225_600.0  # 2026-01-01T00:00:00Z
NOW_TEXT = "2026-01-01T00:00:00.000Z"
CHAT = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]}
JOB_KEYS = {
    "id",
    "object",
    "state",
    "endpoint",
    "model",
    "priority",
    "metadata",
    "attempts",
    "error",
    "created_at",
    "started_at",
    "finished_at",
    "position",
    "eta",
    "progress",
    "artifacts",
    "result",
}


# -- the daemon around the routes


@attrs.define
class View:
    """A ``DaemonView`` over real parts; ``accepting`` and the status are the test's."""

    store: Store
    metrics: Metrics
    jobs: JobService
    clock: IReactorTime
    queue: WorkQueue
    worker: Worker
    batches: BatchService
    control: QueueControl
    public_url: str | None = None
    trusted_proxies: TrustedProxies = attrs.field(
        factory=lambda: TrustedProxies.parse("127.0.0.0/8,::1")
    )
    accepting: bool = True
    aborted: list[str] = attrs.field(factory=list)

    def target_state(self) -> str:
        return "up"

    def target_problem(self) -> str | None:
        return None

    def status(self) -> dict[str, Any]:
        return {"version": "test", "queue": {"depth": len(self.queue.scheduler)}, "n": [1, 2]}

    def queue_view(self, limit: int) -> dict[str, Any]:
        return queue_view(self.queue, self.worker, self.clock.seconds(), limit)

    def cancel_running(self, job_id: str) -> None:
        self.aborted.append(job_id)


def _as_view(view: View) -> DaemonView:
    return view  # mypy checks here that View implements the Protocol


async def _check_webhook(url: str) -> None:
    """The syntax half of ``foreman.app.wiring``'s check (no DNS in these tests)."""
    problem = check_url(url)
    if problem is not None:
        raise BadRequest(f"webhook_url: {problem}", "invalid_webhook_url")


# -- HTTP through StubTreq


@attrs.frozen
class Reply:
    status: int
    headers: Headers
    body: bytes

    def header(self, name: str) -> str | None:
        values = self.headers.getRawHeaders(name)
        return values[-1] if values else None

    def json(self) -> Any:
        return json.loads(self.body)


@attrs.define
class Pending:
    """A request in flight; ``results`` gets its outcome (response or Failure)."""

    results: list[Any]

    @property
    def answered(self) -> bool:
        return bool(self.results)


def track(d: Deferred[Any]) -> Pending:
    # (``d.called`` is no guide: treq's Deferred is "called" as soon as it is
    # chained to the agent's, long before a response exists)
    results: list[Any] = []
    d.addBoth(results.append)
    return Pending(results)


async def pumped(stub: StubTreq, pending: Pending) -> Any:
    """Wait for ``pending``, moving StubTreq's in-memory bytes while the handler awaits."""
    await until(lambda: pending.answered, stub)
    [result] = pending.results
    if isinstance(result, Failure):
        result.raiseException()
    return result


async def until(predicate: Callable[[], bool], stub: StubTreq) -> None:
    for _ in range(5000):
        stub.flush()
        if predicate():
            return
        await deferLater(reactor, 0.001, lambda: None)
    raise AssertionError("condition not reached in time")


@attrs.define
class Api:
    view: View
    clock: Clock
    stub: Any  # a StubTreq: its request functions are set per instance, untyped
    artifacts: ArtifactStore

    def start(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Pending:
        return track(self.stub.request(method, BASE + path, data=body, headers=headers))

    async def finish(self, pending: Pending) -> Reply:
        response = await pumped(self.stub, pending)
        body = await pumped(self.stub, track(response.content()))
        return Reply(response.code, response.headers, body)

    async def call(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        return await self.finish(self.start(method, path, body, headers))

    async def get(self, path: str) -> Reply:
        return await self.call("GET", path)

    async def post(
        self, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> Reply:
        raw = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        return await self.call(
            "POST", path, raw, {"Content-Type": "application/json", **(headers or {})}
        )

    async def create(self, request: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
        reply = await self.post("/jobs", {"request": request or CHAT, **fields})
        assert reply.status == 202, reply
        job: dict[str, Any] = reply.json()
        return job


@pytest_twisted.async_yield_fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    clock = Clock()
    clock.advance(NOW)
    metrics = Metrics()
    store = Store(tmp_path / "foreman.sqlite3")
    store.commit_observer = metrics.commit
    store.start()
    try:
        await store.on_writer(migrate)
        queue = WorkQueue(Scheduler(600.0), 16, clock, clock=clock.seconds)
        artifacts = ArtifactStore(tmp_path / "artifacts")
        jobs = JobService(
            store=store,
            queue=queue,
            hub=JobHub(),
            artifacts=artifacts,
            reactor=clock,
            metrics=metrics,
            public_url=None,
            max_attempts=3,
            check_webhook=_check_webhook,
        )
        # never started: /queue only reads which model it holds
        worker = Worker(reactor=clock, queue=queue, runner=cast(Any, None), monitor=None)
        batches = BatchService(
            store=store,
            jobs=jobs,
            files=FileStore(artifacts.root.parent / "files"),
            artifacts=artifacts,
            reactor=clock,
            max_lines=100,
            line_limit=1 << 20,
            default_webhook=None,
            check_webhook=_check_webhook,
        )
        control = QueueControl(store, queue, worker, clock)
        view = View(store, metrics, jobs, clock, queue, worker, batches, control)
        yield Api(view, clock, StubTreq(build_app(_as_view(view)).resource()), artifacts)
    finally:
        store.close()


def assert_error(reply: Reply, status: int, code: str) -> str:
    """The reply is foreman's JSON error shape with ``code``; returns the message."""
    assert reply.status == status, reply
    assert reply.header("content-type") == "application/json"
    body = reply.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message"}
    assert body["error"]["code"] == code
    message: str = body["error"]["message"]
    assert message
    return message


async def job_ids(api: Api, query: str = "") -> list[str]:
    reply = await api.get("/jobs" + query)
    assert reply.status == 200, reply
    return [j["id"] for j in reply.json()["data"]]


async def finish_job(api: Api, job_id: str, files: dict[str, bytes]) -> None:
    """Take a queued job to done the way the runner does, with ``files`` as artifacts."""
    jobs, now = api.view.jobs, api.clock.seconds()
    assert await jobs.apply(jobstate.start_loading(job_id, now)) is not None
    assert await jobs.apply(jobstate.start_working(job_id, now)) is not None
    listing = await api.artifacts.write(job_id, files)
    result = files.get("response.json")
    done = jobstate.succeed(
        job_id, now + 1.5, 7, result.decode() if result else None, json.dumps(listing)
    )
    assert await jobs.apply(done) is not None
    api.view.queue.remove_job(job_id)


# -- POST /jobs


@pytest_twisted.ensureDeferred
async def test_create_job(api: Api) -> None:
    reply = await api.post("/jobs", {"request": CHAT, "metadata": {"ticket": 42}, "priority": 5})
    assert reply.status == 202, reply
    assert reply.header("content-type") == "application/json"
    job = reply.json()
    assert JOB_ID.match(job["id"])
    assert reply.header("location") == f"/jobs/{job['id']}"
    assert set(job) == JOB_KEYS  # no webhook_url key without a webhook
    request_json = json.dumps(CHAT, separators=(",", ":"))
    assert job == {
        "id": job["id"],
        "object": "job",
        "state": "queued",
        "endpoint": "/api/chat",
        "model": "llama3.2",
        "priority": 5,
        "metadata": {"ticket": 42},
        "attempts": 0,
        "error": None,
        "created_at": NOW_TEXT,
        "started_at": None,
        "finished_at": None,
        "position": 0,
        "eta": None,
        "progress": None,
        "artifacts": [
            {
                "name": "request.json",
                "url": f"{BASE}/jobs/{job['id']}/artifacts/request.json",
                "size": len(request_json),
                "content_type": "application/json",
            }
        ],
        "result": None,
    }
    # committed and queued
    assert (await api.get(f"/jobs/{job['id']}")).json() == job
    assert [w.key for w in api.view.queue.order(None, None)] == [job["id"]]


@pytest_twisted.ensureDeferred
async def test_create_job_with_endpoint_webhook_and_float_priority(api: Api) -> None:
    reply = await api.post(
        "/jobs",
        {
            "endpoint": "/v1/chat/completions",
            "request": CHAT,
            "webhook_url": "https://hooks.example.com/foreman",
            "priority": 417.0,
        },
    )
    assert reply.status == 202, reply
    job = reply.json()
    assert job["endpoint"] == "/v1/chat/completions"
    assert job["webhook_url"] == "https://hooks.example.com/foreman"
    assert job["priority"] == 417
    assert job["metadata"] is None
    assert set(job) == JOB_KEYS | {"webhook_url"}


@pytest_twisted.ensureDeferred
async def test_create_honours_forwarded_headers_in_urls(api: Api) -> None:
    body = json.dumps({"request": CHAT}).encode()
    reply = await api.call(
        "POST",
        "/jobs",
        body,
        {"X-Forwarded-Proto": "https, http", "X-Forwarded-Host": "ai.example.com, inner"},
    )
    assert reply.status == 202, reply
    job = reply.json()
    url = f"https://ai.example.com/jobs/{job['id']}/artifacts/request.json"
    assert job["artifacts"][0]["url"] == url


@pytest_twisted.ensureDeferred
async def test_forwarded_headers_from_an_untrusted_peer_are_ignored(api: Api) -> None:
    api.view.trusted_proxies = TrustedProxies.parse("")  # nobody: not even loopback
    body = json.dumps({"request": CHAT}).encode()
    forged = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "evil.example", "Host": "ai.lan"}
    reply = await api.call("POST", "/jobs", body, forged)
    assert reply.status == 202, reply
    job = reply.json()
    url = f"http://ai.lan/jobs/{job['id']}/artifacts/request.json"
    assert job["artifacts"][0]["url"] == url


@pytest_twisted.ensureDeferred
async def test_idempotency_key_replays_and_conflicts(api: Api) -> None:
    key = {"Idempotency-Key": "order-7f3a"}
    first = await api.post("/jobs", {"request": CHAT, "priority": 1}, key)
    assert first.status == 202
    job = first.json()

    again = await api.post("/jobs", {"request": CHAT, "priority": 1}, key)
    assert again.status == 200
    assert again.json()["id"] == job["id"]
    assert again.header("location") == f"/jobs/{job['id']}"

    other = await api.post("/jobs", {"request": CHAT, "priority": 2}, key)
    message = assert_error(other, 409, "idempotency_conflict")
    assert job["id"] in message

    assert await job_ids(api) == [job["id"]]
    assert len(api.view.queue.scheduler) == 1


@pytest_twisted.ensureDeferred
async def test_idempotency_key_edges_that_are_valid(api: Api) -> None:
    for key in ("k", "x" * 255, "with inner spaces", "~!@#$%^&*()"):
        reply = await api.post("/jobs", {"request": CHAT}, {"Idempotency-Key": key})
        assert reply.status == 202, (key, reply)


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("key", ["x" * 256, "tab\there", "é"])
async def test_bad_idempotency_key_is_400(api: Api, key: str) -> None:
    raw = json.dumps({"request": CHAT}).encode()
    headers = Headers({b"Idempotency-Key": [key.encode("utf-8")]})
    pending = track(api.stub.request("POST", BASE + "/jobs", data=raw, headers=headers))
    assert_error(await api.finish(pending), 400, "invalid_header")
    assert await job_ids(api) == []


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"{not json", "malformed_json"),
        (b"", "malformed_json"),
        (b"\xff\xfe", "malformed_json"),
        (b"[" * 100_000 + b"]" * 100_000, "malformed_json"),  # nested too deeply
        (b'["request"]', "malformed_json"),
        (b"null", "malformed_json"),
        ({"request": CHAT, "colour": "red"}, "unknown_field"),
        ({"request": CHAT, "priority": "high"}, "invalid_priority"),
        ({"request": CHAT, "priority": True}, "invalid_priority"),
        ({"request": CHAT, "priority": 1.5}, "invalid_priority"),
        ({"request": CHAT, "priority": 1001}, "invalid_priority"),
        ({"request": CHAT, "priority": -1001}, "invalid_priority"),
        ({"request": CHAT, "endpoint": "/api/pull"}, "invalid_endpoint"),
        ({"request": CHAT, "endpoint": "/api/tags"}, "invalid_endpoint"),
        ({"request": CHAT, "endpoint": 7}, "invalid_endpoint"),
        ({}, "missing_field"),
        ({"request": "hi"}, "missing_field"),
        ({"request": {"messages": []}}, "missing_field"),
        ({"request": {"model": ""}}, "missing_field"),
        ({"request": CHAT, "webhook_url": 5}, "invalid_webhook_url"),
        ({"request": CHAT, "webhook_url": "ftp://example.com/x"}, "invalid_webhook_url"),
        ({"request": CHAT, "metadata": {"blob": "x" * 17_000}}, "metadata_too_large"),
    ],
)
async def test_bad_create_body_is_400_and_stores_nothing(api: Api, body: Any, code: str) -> None:
    reply = await api.post("/jobs", body)
    assert_error(reply, 400, code)
    assert reply.header("location") is None
    assert await job_ids(api) == []
    assert len(api.view.queue.scheduler) == 0


# -- GET /jobs


@pytest_twisted.ensureDeferred
async def test_list_jobs_filters_and_pages(api: Api) -> None:
    a1 = await api.create({"model": "a"})
    api.clock.advance(1)
    b1 = await api.create({"model": "b"})
    api.clock.advance(1)
    a2 = await api.create({"model": "a"})
    assert (await api.post(f"/jobs/{b1['id']}/cancel")).status == 200

    page = (await api.get("/jobs")).json()
    assert set(page) == {"object", "data", "has_more", "next_after"}
    assert page["object"] == "list"
    assert [j["id"] for j in page["data"]] == [a2["id"], b1["id"], a1["id"]]  # newest first
    assert (page["has_more"], page["next_after"]) == (False, None)

    assert await job_ids(api, "?state=queued") == [a2["id"], a1["id"]]
    assert await job_ids(api, "?state=cancelled") == [b1["id"]]
    assert await job_ids(api, "?state=done") == []
    assert await job_ids(api, "?model=a") == [a2["id"], a1["id"]]
    assert await job_ids(api, "?state=&model=&after=&limit=") == [a2["id"], b1["id"], a1["id"]]

    first = (await api.get("/jobs?limit=2")).json()
    assert [j["id"] for j in first["data"]] == [a2["id"], b1["id"]]
    assert (first["has_more"], first["next_after"]) == (True, b1["id"])
    second = (await api.get(f"/jobs?limit=2&after={first['next_after']}")).json()
    assert [j["id"] for j in second["data"]] == [a1["id"]]
    assert (second["has_more"], second["next_after"]) == (False, None)
    assert await job_ids(api, "?limit=1000") == [a2["id"], b1["id"], a1["id"]]


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize(
    ("query", "code"),
    [
        ("?state=running", "invalid_state"),
        ("?state=QUEUED", "invalid_state"),
        ("?after=nonsense", "invalid_cursor"),
        ("?after=job_123", "invalid_cursor"),
        ("?limit=0", "invalid_parameter"),
        ("?limit=1001", "invalid_parameter"),
        ("?limit=-5", "invalid_parameter"),
        ("?limit=ten", "invalid_parameter"),
        ("?limit=2.5", "invalid_parameter"),
    ],
)
async def test_list_jobs_rejects_bad_parameters(api: Api, query: str, code: str) -> None:
    assert_error(await api.get("/jobs" + query), 400, code)


# -- GET /jobs/{id}


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("job_id", ["job_01KDM0000000000000000000AB", "job_nope", "nope"])
async def test_unknown_job_is_404(api: Api, job_id: str) -> None:
    assert job_id in assert_error(await api.get(f"/jobs/{job_id}"), 404, "job_not_found")
    assert_error(await api.get(f"/jobs/{job_id}?wait=5"), 404, "job_not_found")
    assert_error(await api.post(f"/jobs/{job_id}/cancel"), 404, "job_not_found")
    assert_error(await api.call("DELETE", f"/jobs/{job_id}"), 404, "job_not_found")
    assert_error(await api.get(f"/jobs/{job_id}/events"), 404, "job_not_found")
    assert_error(await api.get(f"/jobs/{job_id}/artifacts/request.json"), 404, "job_not_found")


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("wait", ["soon", "-1", "300.5", "1e9", "nan", "inf"])
async def test_wait_must_be_0_to_300_seconds(api: Api, wait: str) -> None:
    job = await api.create()
    assert_error(await api.get(f"/jobs/{job['id']}?wait={wait}"), 400, "invalid_parameter")


@pytest_twisted.ensureDeferred
async def test_wait_zero_or_empty_answers_at_once(api: Api) -> None:
    job = await api.create()
    for query in ("?wait=0", "?wait=", "?wait=0.0"):
        reply = await api.get(f"/jobs/{job['id']}{query}")
        assert (reply.status, reply.json()["state"]) == (200, "queued")
    assert api.clock.getDelayedCalls() == []


@pytest_twisted.ensureDeferred
async def test_wait_returns_at_the_next_state_change(api: Api) -> None:
    job = await api.create()
    poll = api.start("GET", f"/jobs/{job['id']}?wait=300")
    await until(lambda: len(api.clock.getDelayedCalls()) == 1, api.stub)  # waiting on the hub
    assert not poll.answered
    assert (await api.post(f"/jobs/{job['id']}/cancel")).status == 200
    reply = await api.finish(poll)
    assert (reply.status, reply.json()["state"]) == (200, "cancelled")
    assert api.clock.getDelayedCalls() == []  # the long-poll timer is gone


@pytest_twisted.ensureDeferred
async def test_wait_times_out_with_the_unchanged_job(api: Api) -> None:
    job = await api.create()
    poll = api.start("GET", f"/jobs/{job['id']}?wait=30")
    await until(lambda: len(api.clock.getDelayedCalls()) == 1, api.stub)
    api.clock.advance(29.9)
    api.stub.flush()
    assert not poll.answered
    api.clock.advance(0.1)
    reply = await api.finish(poll)
    assert (reply.status, reply.json()["state"]) == (200, "queued")


@pytest_twisted.ensureDeferred
async def test_wait_on_a_finished_job_answers_at_once(api: Api) -> None:
    job = await api.create()
    await api.post(f"/jobs/{job['id']}/cancel")
    reply = await api.get(f"/jobs/{job['id']}?wait=300")
    assert (reply.status, reply.json()["state"]) == (200, "cancelled")
    assert api.clock.getDelayedCalls() == []


# -- cancel and delete


@pytest_twisted.ensureDeferred
async def test_cancel_a_queued_job_then_again(api: Api) -> None:
    job = await api.create()
    api.clock.advance(3)
    reply = await api.post(f"/jobs/{job['id']}/cancel")
    assert reply.status == 200, reply
    cancelled = reply.json()
    assert cancelled["id"] == job["id"]
    assert cancelled["state"] == "cancelled"
    assert cancelled["finished_at"] == "2026-01-01T00:00:03.000Z"
    assert cancelled["position"] is None
    assert cancelled["error"] is None
    assert len(api.view.queue.scheduler) == 0  # left the queue
    # whatever runs under its id is aborted: nothing does (the daemon's abort is a no-op then)
    assert api.view.aborted == [job["id"]]

    again = await api.post(f"/jobs/{job['id']}/cancel")
    assert "cancelled" in assert_error(again, 409, "not_cancellable")


@pytest_twisted.ensureDeferred
async def test_cancel_a_running_job_aborts_its_call(api: Api) -> None:
    job = await api.create()
    await api.view.jobs.apply(jobstate.start_loading(job["id"], api.clock.seconds()))
    reply = await api.post(f"/jobs/{job['id']}/cancel")
    assert (reply.status, reply.json()["state"]) == (200, "cancelled")
    assert api.view.aborted == [job["id"]]


@pytest_twisted.ensureDeferred
async def test_delete_refuses_an_active_job_then_deletes_it(api: Api) -> None:
    job = await api.create()
    message = assert_error(await api.call("DELETE", f"/jobs/{job['id']}"), 409, "job_active")
    assert "cancel it first" in message
    assert (await api.get(f"/jobs/{job['id']}")).json()["state"] == "queued"

    await api.post(f"/jobs/{job['id']}/cancel")
    reply = await api.call("DELETE", f"/jobs/{job['id']}")
    assert reply.status == 200
    assert reply.json() == {"id": job["id"], "object": "job", "deleted": True}
    assert_error(await api.get(f"/jobs/{job['id']}"), 404, "job_not_found")
    assert_error(await api.call("DELETE", f"/jobs/{job['id']}"), 404, "job_not_found")
    assert await job_ids(api) == []


# -- artifacts


@pytest_twisted.ensureDeferred
async def test_request_artifact_is_the_stored_request(api: Api) -> None:
    request = {
        "model": "m",
        "messages": [{"role": "user", "content": "ünïcode ✓"}],
        "stream": False,
    }
    job = await api.create(request)
    reply = await api.get(f"/jobs/{job['id']}/artifacts/request.json")
    assert reply.status == 200
    assert reply.header("content-type") == "application/json"
    assert reply.json() == request
    assert len(reply.body) == job["artifacts"][0]["size"]

    head = await api.call("HEAD", f"/jobs/{job['id']}/artifacts/request.json")
    assert (head.status, head.body) == (200, b"")


@pytest_twisted.ensureDeferred
async def test_unknown_or_missing_artifacts_are_404(api: Api) -> None:
    job = await api.create()
    for name in ("response.json", "stream.ndjson"):  # not written yet
        reply = await api.get(f"/jobs/{job['id']}/artifacts/{name}")
        assert_error(reply, 404, "artifact_not_found")
    for name in ("secrets.txt", ".response.json.tmp", "request.JSON"):
        reply = await api.get(f"/jobs/{job['id']}/artifacts/{name}")
        assert name in assert_error(reply, 404, "artifact_not_found")
    traversal = await api.get(f"/jobs/{job['id']}/artifacts/..%2F..%2Fforeman.sqlite3")
    assert traversal.status == 404


@pytest_twisted.ensureDeferred
async def test_written_artifacts_are_served_then_deleted_with_the_job(api: Api) -> None:
    job = await api.create()
    response = json.dumps({"model": "llama3.2", "message": {"content": "hello"}}).encode()
    stream = b'{"done":false}\n{"done":true}\n'
    await finish_job(api, job["id"], {"response.json": response, "stream.ndjson": stream})

    done = (await api.get(f"/jobs/{job['id']}")).json()
    assert done["state"] == "done"
    assert done["result"] == json.loads(response)
    assert done["progress"] == {"tokens": 7}
    assert done["finished_at"] == "2026-01-01T00:00:01.500Z"
    assert [(a["name"], a["size"]) for a in done["artifacts"]][1:] == [
        ("response.json", len(response)),
        ("stream.ndjson", len(stream)),
    ]
    got = await api.get(f"/jobs/{job['id']}/artifacts/response.json")
    assert (got.status, got.header("content-type"), got.body) == (
        200,
        "application/json",
        response,
    )
    got = await api.get(f"/jobs/{job['id']}/artifacts/stream.ndjson")
    assert (got.status, got.header("content-type"), got.body) == (
        200,
        "application/x-ndjson",
        stream,
    )

    (api.artifacts.root / job["id"] / "stream.ndjson").unlink()  # gone from disk
    reply = await api.get(f"/jobs/{job['id']}/artifacts/stream.ndjson")
    assert_error(reply, 404, "artifact_not_found")

    assert (await api.call("DELETE", f"/jobs/{job['id']}")).status == 200
    assert not (api.artifacts.root / job["id"]).exists()


# -- events (SSE)


def sse_events(body: bytes) -> list[dict[str, str]]:
    events = []
    for block in body.decode().split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            name, _, value = line.partition(": ")
            fields[name] = value
        if fields:
            events.append(fields)
    return events


@pytest_twisted.ensureDeferred
async def test_events_of_a_finished_job_replay_and_end(api: Api) -> None:
    job = await api.create()
    await finish_job(api, job["id"], {"response.json": b"{}"})
    reply = await api.get(f"/jobs/{job['id']}/events")
    assert reply.status == 200
    assert reply.header("content-type") == "text/event-stream; charset=utf-8"
    events = sse_events(reply.body)
    assert events[0] == {"retry": "2000"}
    assert [(e["event"], e["id"]) for e in events[1:]] == [
        ("job.queued", "1"),
        ("job.loading", "2"),
        ("job.working", "3"),
        ("job.done", "4"),
    ]
    assert json.loads(events[-1]["data"])["state"] == "done"

    resumed = await api.call("GET", f"/jobs/{job['id']}/events", headers={"Last-Event-ID": "2"})
    assert [e.get("event") for e in sse_events(resumed.body)] == [None, "job.working", "job.done"]


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize(
    ("query", "last_event_id", "replayed"),
    [
        ("?last_event_id=3", None, ["4"]),
        ("?last_event_id=1", "3", ["4"]),  # the header wins over the query
        ("", "not-a-number", ["1", "2", "3", "4"]),
        ("", "-7", ["1", "2", "3", "4"]),
        ("", "4", []),
    ],
)
async def test_events_resume_point(
    api: Api, query: str, last_event_id: str | None, replayed: list[str]
) -> None:
    job = await api.create()
    await finish_job(api, job["id"], {"response.json": b"{}"})
    headers = {"Last-Event-ID": last_event_id} if last_event_id is not None else None
    reply = await api.call("GET", f"/jobs/{job['id']}/events{query}", headers=headers)
    assert reply.status == 200
    assert [e["id"] for e in sse_events(reply.body)[1:]] == replayed


@pytest_twisted.ensureDeferred
async def test_events_stream_live_until_the_job_ends(api: Api) -> None:
    job = await api.create()
    stream = api.start("GET", f"/jobs/{job['id']}/events")
    await until(lambda: len(api.clock.getDelayedCalls()) == 1, api.stub)  # the keep-alive
    api.clock.advance(15)
    assert (await api.post(f"/jobs/{job['id']}/cancel")).status == 200
    reply = await api.finish(stream)
    events = sse_events(reply.body)
    # while it waits: its place and estimate at the start and at each 15 s beat
    assert [e.get("event") for e in events] == [
        None,
        "job.queued",
        "job.eta",
        "job.eta",
        "job.cancelled",
    ]
    eta = json.loads(events[2]["data"])
    assert eta["id"] == job["id"] and eta["position"] == 0
    assert api.clock.getDelayedCalls() == []


@pytest_twisted.ensureDeferred
async def test_events_stream_carries_throttled_progress(api: Api) -> None:
    job = await api.create()
    now = api.clock.seconds()
    api.view.queue.remove_job(job["id"])  # the worker took it
    await api.view.jobs.apply(jobstate.start_loading(job["id"], now))
    await api.view.jobs.apply(jobstate.start_working(job["id"], now))
    stream = api.start("GET", f"/jobs/{job['id']}/events")
    await until(lambda: len(api.clock.getDelayedCalls()) == 1, api.stub)
    api.view.jobs.hub.publish(job["id"], Progress(job["id"], 3))
    api.view.jobs.hub.publish(job["id"], Progress(job["id"], 4))  # within 0.25 s: dropped
    assert (await api.post(f"/jobs/{job['id']}/cancel")).status == 200
    api.view.jobs.hub.publish(job["id"], Progress(job["id"], 9))  # after the end: nothing more
    events = sse_events((await api.finish(stream)).body)
    assert [e.get("event") for e in events] == [
        None,
        "job.queued",
        "job.loading",
        "job.working",
        "job.progress",
        "job.cancelled",
    ]
    assert "id" not in events[4]  # progress is not durable: no resume point
    assert json.loads(events[4]["data"]) == {"id": job["id"], "tokens": 3}
    assert api.view.aborted == [job["id"]]


# -- /queue and the operational routes


@pytest_twisted.ensureDeferred
async def test_queue_lists_waiting_jobs_in_dispatch_order(api: Api) -> None:
    low = await api.create({"model": "a"}, priority=-5)
    api.clock.advance(2)
    high = await api.create({"model": "b"}, priority=50)
    api.clock.advance(0.25)
    reply = await api.get("/queue")
    assert reply.status == 200
    body = reply.json()
    assert body == {
        "object": "queue",
        "data": [
            {
                "position": 0,
                "kind": "job",
                "model": "b",
                "priority": 50,
                "waited_ms": 250.0,
                "eta": None,
                "id": high["id"],
            },
            {
                "position": 1,
                "kind": "job",
                "model": "a",
                "priority": -5,
                "waited_ms": 2250.0,
                "eta": None,
                "id": low["id"],
            },
        ],
        "total": 2,
        "by_model": {"a": 1, "b": 1},
        "by_kind": {"job": 2},
        "retrying": 0,
        "loaded_model": None,
    }
    one = (await api.get("/queue?limit=1")).json()
    assert ([i["id"] for i in one["data"]], one["total"]) == ([high["id"]], 2)


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("limit", ["0", "10001", "many"])
async def test_queue_limit_is_checked(api: Api, limit: str) -> None:
    assert_error(await api.get(f"/queue?limit={limit}"), 400, "invalid_parameter")


@pytest_twisted.ensureDeferred
async def test_healthz(api: Api) -> None:
    reply = await api.get("/healthz")
    assert (reply.status, reply.json()) == (200, {"status": "ok", "database": "ok"})
    head = await api.call("HEAD", "/healthz")
    assert (head.status, head.body) == (200, b"")


@pytest_twisted.ensureDeferred
async def test_healthz_is_503_when_the_database_fails(api: Api) -> None:
    api.view.store.close()
    reply = await api.get("/healthz")
    assert (reply.status, reply.json()) == (503, {"status": "failing", "database": "error"})


@pytest_twisted.ensureDeferred
async def test_readyz_follows_accepting(api: Api) -> None:
    api.view.accepting = False
    reply = await api.get("/readyz")
    assert (reply.status, reply.json()) == (503, {"ready": False, "target": "up"})
    api.view.accepting = True
    reply = await api.get("/readyz")
    assert (reply.status, reply.json()) == (200, {"ready": True, "target": "up"})


@pytest_twisted.ensureDeferred
async def test_readyz_says_why_while_the_database_refuses_writes(api: Api) -> None:
    store = api.view.jobs.store
    store.write_problem = "OperationalError: database or disk is full"
    reply = await api.get("/readyz")
    assert reply.status == 503
    assert reply.json() == {
        "ready": False,
        "target": "up",
        "database": "OperationalError: database or disk is full",
    }
    # the answer started a probe write; the database takes it, so ready again
    await until(lambda: store.write_problem is None, api.stub)
    reply = await api.get("/readyz")
    assert (reply.status, reply.json()) == (200, {"ready": True, "target": "up"})


@pytest_twisted.ensureDeferred
async def test_status_is_the_views_status(api: Api) -> None:
    await api.create()
    reply = await api.get("/status")
    assert reply.status == 200
    assert reply.header("content-type") == "application/json"
    assert (
        reply.json() == api.view.status() == {"version": "test", "queue": {"depth": 1}, "n": [1, 2]}
    )


@pytest_twisted.ensureDeferred
async def test_metrics_are_prometheus_text(api: Api) -> None:
    await api.create()
    reply = await api.get("/metrics")
    assert reply.status == 200
    assert reply.header("content-type") == CONTENT_TYPE.decode()
    assert 'foreman_job_transitions_total{state="queued"} 1.0' in reply.body.decode()


@pytest_twisted.ensureDeferred
async def test_openapi_document(api: Api) -> None:
    reply = await api.get("/openapi.json")
    assert reply.status == 200
    assert reply.header("content-type") == "application/json"
    doc = reply.json()
    assert doc["openapi"].startswith("3.1")
    assert set(doc["paths"]) == {  # every route the app serves, and only those
        "/jobs",
        "/jobs/{job_id}",
        "/jobs/{job_id}/cancel",
        "/jobs/{job_id}/events",
        "/jobs/{job_id}/artifacts/{name}",
        "/queue",
        "/queue/pause",
        "/queue/resume",
        "/queue/drain",
        "/queue/activity",
        "/status",
        "/healthz",
        "/readyz",
        "/metrics",
        "/openapi.json",
        "/v1/files",
        "/v1/files/{file_id}",
        "/v1/files/{file_id}/content",
        "/v1/batches",
        "/v1/batches/{batch_id}",
        "/v1/batches/{batch_id}/cancel",
    }
    assert {"get", "post"} <= set(doc["paths"]["/jobs"])
    methods = {p: set(item) - {"parameters"} for p, item in doc["paths"].items()}
    assert methods["/v1/files"] == {"get", "post"}
    assert methods["/v1/files/{file_id}"] == {"get", "delete"}
    assert methods["/v1/batches"] == {"get", "post"}
    assert methods["/v1/batches/{batch_id}"] == {"get"}
    assert methods["/v1/batches/{batch_id}/cancel"] == {"post"}
    assert methods["/queue/drain"] == {"post"} and methods["/queue/activity"] == {"get"}
    assert doc["servers"] == [{"url": BASE}]

    api.view.public_url = "https://ai.example.com"
    assert (await api.get("/openapi.json")).json()["servers"] == [{"url": "https://ai.example.com"}]


# -- errors of the app itself


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("path", ["/nope", "/jobs/a/b/c", "/jobs/job_x/cancel/now"])
async def test_unknown_path_is_404_json(api: Api, path: str) -> None:
    assert_error(await api.get(path), 404, "not_found")


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("PUT", "/jobs"),
        ("DELETE", "/jobs"),
        ("POST", "/queue"),
        ("POST", "/status"),
        ("DELETE", "/healthz"),
        ("POST", "/readyz"),
        ("POST", "/metrics"),
        ("PUT", "/openapi.json"),
        ("GET", "/jobs/job_01KDM0000000000000000000AB/cancel"),
        ("PATCH", "/jobs/job_01KDM0000000000000000000AB"),
    ],
)
async def test_wrong_method_is_405_json(api: Api, method: str, path: str) -> None:
    reply = await api.call(method, path, b"{}" if method != "GET" else None)
    assert method in assert_error(reply, 405, "method_not_allowed")
