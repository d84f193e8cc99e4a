"""Values from outside: bounded, escaped in logs, and failures always JSON (issue 19)."""

from __future__ import annotations

import io
import json
import sqlite3
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
import pytest_twisted
from twisted.logger import ILogObserver, LogEvent, Logger, formatEvent
from twisted.web.http_headers import Headers

from foreman.app import observe as access_module
from foreman.app.observe import request_line
from foreman.core.logtext import escape_for_log
from foreman.ops.logs import make_observer
from foreman.ops.metrics import Metrics
from tests.harness import chat, start_stack


@pytest_twisted.ensureDeferred
async def test_a_failure_no_route_expected_is_json_in_the_family_shape(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack = await start_stack(tmp_path)
    jobs: Any = stack.daemon.jobs
    try:

        async def locked(*args: Any, **kwargs: Any) -> Any:
            raise sqlite3.OperationalError("database is locked")

        monkeypatch.setattr(jobs, "list_page", locked)
        answer = await stack.get("/jobs")
        assert answer.status == 503, answer.body
        assert answer.headers.getRawHeaders(b"content-type") == [b"application/json"]
        assert answer.headers.getRawHeaders(b"retry-after") == [b"5"]
        assert answer.json()["error"]["code"] == "database_unavailable"

        async def broken(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("a bug")

        monkeypatch.setattr(jobs, "list_page", broken)
        answer = await stack.get("/jobs")
        assert answer.status == 500, answer.body
        assert b"<html" not in answer.body
        assert answer.json() == {
            "error": {
                "code": "internal_error",
                "message": "foreman failed to answer this request (see its log)",
            }
        }
        # the daemon answers the next request as before
        assert (await stack.get("/healthz")).status == 200
    finally:
        await stack.stop()


@pytest_twisted.ensureDeferred
async def test_deep_json_is_a_400_everywhere(tmp_path: Path) -> None:
    stack = await start_stack(tmp_path)
    deep = b"[" * 100_000 + b"]" * 100_000
    try:
        for path in ("/jobs", "/api/chat", "/v1/chat/completions"):
            answer = await stack.request("POST", path, raw=deep)
            assert answer.status == 400, (path, answer.body)
            assert b"<html" not in answer.body
            json.loads(answer.body)
    finally:
        await stack.stop()


@pytest_twisted.ensureDeferred
async def test_model_names_past_256_bytes_are_refused(tmp_path: Path) -> None:
    stack = await start_stack(tmp_path)
    try:
        huge = "m" * 300
        job = await stack.post("/jobs", {"request": chat(huge)})
        assert job.status == 400 and job.json()["error"]["code"] == "invalid_model", job.body
        native = await stack.post("/api/chat", chat(huge))
        assert native.status == 400 and "256" in native.json()["error"], native.body
        openai = await stack.post("/v1/chat/completions", chat(huge))
        assert openai.status == 400 and openai.json()["error"]["code"] == "invalid_model"
        # 128 two-byte characters are 256 bytes: accepted (the model then is unknown)
        fits = await stack.post("/jobs", {"request": chat("é" * 128)})
        assert fits.status == 202, fits.body
    finally:
        await stack.stop()


@pytest_twisted.ensureDeferred
async def test_metadata_is_counted_in_utf8_bytes(tmp_path: Path) -> None:
    stack = await start_stack(tmp_path)
    try:
        # 6 000 "é" are 12 000 bytes of UTF-8 (36 000 as \\u escapes): under 16 KiB
        fits = await stack.post("/jobs", {"request": chat("llama3.2"), "metadata": "é" * 6000})
        assert fits.status == 202, fits.body
        over = await stack.post("/jobs", {"request": chat("llama3.2"), "metadata": "é" * 9000})
        assert over.status == 400 and over.json()["error"]["code"] == "metadata_too_large"
        # an unpaired surrogate escape is JSON syntax but no text: a 400, not a 500
        lone = json.dumps({"request": chat("llama3.2"), "metadata": "\ud800"}).encode()
        odd = await stack.request("POST", "/jobs", raw=lone)
        assert odd.status == 400 and odd.json()["error"]["code"] == "malformed_json", odd.body
        paired = json.dumps({"request": chat("llama3.2"), "metadata": "\U0001f600"}).encode()
        assert b"\\ud83d" in paired
        assert (await stack.request("POST", "/jobs", raw=paired)).status == 202
    finally:
        await stack.stop()


def test_the_text_log_cannot_be_forged_or_flooded() -> None:
    out = io.StringIO()
    observer = make_observer("text", (), out)
    log = Logger(namespace="foreman.test", observer=observer)
    log.info("request model={model}", model="x\r\n2026-01-01 [foreman] forged\x1b[31m\x00")
    log.info("request model={model}", model="m" * 8_000_000)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert "\\r\\n2026-01-01 [foreman] forged\\x1b[31m\\x00" in lines[0]
    assert len(lines[1]) < 1200 and "(+7998976 chars)" in lines[1]


def test_escape_for_log_keeps_plain_text_and_escapes_controls() -> None:
    assert escape_for_log("llama3.2:8b") == "llama3.2:8b"
    assert escape_for_log("a\tb\\c") == "a\\tb\\\\c"
    assert escape_for_log("\u2028") == "\\u2028"
    assert escape_for_log("é" * 10) == "é" * 10
    assert escape_for_log("x" * 300).endswith("…(+44 chars)")


def test_the_access_line_is_rendered_once_escaped_and_scrubbed() -> None:
    """The per-request line skips format parsing but says what Twisted's rendering says."""
    out, seen = io.StringIO(), []
    text_observer = make_observer("text", ("tok-123",), out)

    def both(event: LogEvent) -> None:
        seen.append(event)
        text_observer(event)

    request = SimpleNamespace(
        route_class="inference",
        started=10.0,
        model="llama3.2",
        method=b"POST",
        path=b"/api/chat\r\n[forged]tok-123",
        responseHeaders=Headers({b"X-Foreman-Queue-Wait-Ms": [b"7"]}),
    )
    publisher = access_module._access
    saved = publisher.observer
    publisher.observer = cast(ILogObserver, both)
    try:
        request_line(Metrics(), SimpleNamespace(seconds=lambda: 10.0125))(request, 200)
    finally:
        publisher.observer = saved
    (line,) = out.getvalue().splitlines()
    assert line.endswith(
        "[foreman.access#info] POST /api/chat\\r\\n[forged][redacted] 200 12.5ms inference"
        " model=llama3.2 waited 7ms"
    ), line
    (event,) = seen
    assert event["path"] == "/api/chat\r\n[forged]tok-123" and event["status"] == 200
    # an observer that formats the event itself gets the same words (unescaped fields)
    plain = formatEvent(event)
    assert plain == (
        "POST /api/chat\r\n[forged]tok-123 200 12.5ms inference model=llama3.2 waited 7ms"
    )
    json_out = io.StringIO()
    make_observer("json", ("tok-123",), json_out)(event)
    record = json.loads(json_out.getvalue())
    assert record["message"].startswith("POST /api/chat\\r\\n[forged][redacted] 200")
    assert record["status"] == 200 and "log_foreman_line" not in record
