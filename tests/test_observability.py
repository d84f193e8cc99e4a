"""/metrics, /openapi.json, access and job logs, JSON log format, secret scrubbing."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any, cast

import pytest_twisted
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.threads import deferToThread
from twisted.logger import ILogObserver, LogEvent, LogLevel, globalLogPublisher

from foreman import __version__
from foreman.ops.logs import make_observer
from tests.harness import chat, start_stack
from tests.receiver import Receiver

METRICS_DOC = Path(__file__).resolve().parent.parent / "docs" / "metrics.md"


def _samples(text: str) -> dict[str, list[Any]]:
    found: dict[str, list[Any]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append(sample)
    return found


@pytest_twisted.ensureDeferred
async def test_metrics_scrape_has_the_documented_series(tmp_path: Path) -> None:
    import ollama  # on use: the client takes a second or two to import

    receiver = Receiver()
    await receiver.listen()
    stack = await start_stack(tmp_path)
    client = ollama.Client(host=stack.url)
    try:
        job = await stack.submit(chat("llama3.2"), webhook_url=receiver.url)
        await stack.wait_job(job["id"])
        reply = await deferToThread(
            client.chat, model="qwen3", messages=[{"role": "user", "content": "x"}]
        )
        assert reply.message.content
        response = await stack.get("/metrics")
        assert response.status == 200
        assert response.headers.getRawHeaders(b"content-type")[0].startswith(b"text/plain")
        samples = _samples(response.body.decode())
        requests = {
            (s.labels["route"], s.labels["status"]): s.value
            for s in samples["foreman_http_requests_total"]
        }
        assert requests[("inference", "200")] >= 1
        assert requests[("foreman", "202")] >= 1
        waits = {s.labels["kind"] for s in samples["foreman_queue_wait_seconds_count"]}
        assert waits == {"interactive", "job"}
        states = {s.labels["state"]: s.value for s in samples["foreman_job_transitions_total"]}
        assert states["done"] >= 1 and states["queued"] >= 1
        assert samples["foreman_target_up"][0].value == 1
        assert "foreman_queue_depth_by_kind" in samples
        assert "foreman_inflight_requests" in samples
        assert samples["foreman_model_loads_total"][0].value >= 1
        assert samples["foreman_model_load_seconds_count"][0].value >= 1
        assert samples["foreman_db_commit_seconds_count"][0].value >= 1
        assert samples["foreman_worker_dispatched_total"][0].value >= 2
        assert "foreman_model_switches_total" in samples
        assert "foreman_webhook_deliveries_total" in samples
        [build] = samples["foreman_build_info"]
        assert build.value == 1 and build.labels["version"] == __version__
        assert not [name for name in samples if name.endswith("_created")]
        # every series docs/metrics.md lists is exported (the last wake only after one)
        text = response.body.decode()
        documented = re.findall(r"^\| `(foreman_[a-z_]+)` \|", METRICS_DOC.read_text(), re.M)
        for name in documented:
            if name == "foreman_target_last_wake_seconds":
                continue
            family = re.sub(r"_(count|sum|bucket)$", "", name)
            assert f"# TYPE {family} " in text or f"# TYPE {name} " in text, name
    finally:
        client._client.close()
        await stack.stop()
        await receiver.close()


@pytest_twisted.ensureDeferred
async def test_openapi_document_lists_own_routes(tmp_path: Path) -> None:
    stack = await start_stack(tmp_path)
    try:
        doc = (await stack.get("/openapi.json")).json()
        assert doc["openapi"].startswith("3.1")
        for path in (
            "/jobs",
            "/jobs/{job_id}",
            "/jobs/{job_id}/cancel",
            "/jobs/{job_id}/events",
            "/jobs/{job_id}/artifacts/{name}",
            "/queue",
            "/status",
            "/healthz",
            "/readyz",
            "/metrics",
        ):
            assert path in doc["paths"], path
        assert doc["servers"][0]["url"] == stack.url
    finally:
        await stack.stop()


@pytest_twisted.ensureDeferred
async def test_access_and_job_lines_are_logged(tmp_path: Path) -> None:
    events: list[LogEvent] = []
    observer = cast(ILogObserver, events.append)
    globalLogPublisher.addObserver(observer)
    stack = await start_stack(tmp_path)
    try:
        job = await stack.submit(chat("llama3.2"))
        await stack.wait_job(job["id"])
        access = [e for e in events if e.get("log_namespace") == "foreman.access"]
        assert any(e["path"] == "/jobs" and e["status"] == 202 for e in access)
        transitions = [
            (e["job_id"], e["state"]) for e in events if e.get("log_namespace") == "foreman.jobs"
        ]
        assert transitions == [
            (job["id"], "queued"),
            (job["id"], "loading"),
            (job["id"], "working"),
            (job["id"], "done"),
        ]
        # a failed job is one warning line, not two (the runner used to add its own)
        failing = await stack.submit(chat("doesnotexist"))
        assert (await stack.wait_job(failing["id"]))["state"] == "failed"
        about = [e for e in events if e.get("job_id") == failing["id"]]
        failed = [e for e in about if "failed" in str(e)]
        assert len(failed) == 1, failed
        assert failed[0]["log_level"] == LogLevel.warn and failed[0]["error_code"]
    finally:
        globalLogPublisher.removeObserver(observer)
        await stack.stop()


def test_json_log_lines_and_secret_scrubbing() -> None:
    out = io.StringIO()
    observer = make_observer("json", ("s3cret-token",), out)
    observer(
        {
            "log_format": "client sent {header}",
            "header": "Bearer s3cret-token",
            "log_level": LogLevel.info,
            "log_namespace": "foreman.test",
            "log_time": 1700000000.0,
            "job_id": "job_1",
        }
    )
    observer({"log_format": "noise", "log_level": LogLevel.debug, "log_time": 1.0})
    lines = out.getvalue().splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert record["level"] == "info"
    assert record["namespace"] == "foreman.test"
    assert record["job_id"] == "job_1"
    assert "s3cret-token" not in lines[0]
    assert record["message"] == "client sent Bearer [redacted]"

    text = io.StringIO()
    make_observer("text", ("abc123",), text)(
        {
            "log_format": "token abc123",
            "log_level": LogLevel.warn,
            "log_time": 1.0,
            "log_namespace": "foreman.test",
        }
    )
    assert "abc123" not in text.getvalue()
    assert "[redacted]" in text.getvalue()
