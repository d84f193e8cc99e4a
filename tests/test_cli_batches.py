"""``foreman batch …``: progress and summary text (pure), then the commands against the daemon."""

from __future__ import annotations

import io
import json
import socket
from pathlib import Path
from typing import Any

import pytest_twisted

from foreman.client import Batch
from foreman.client._render import (
    RateMeter,
    batch_line,
    batch_summary,
    batch_table,
    duration,
    grouped,
)
from foreman.client.cli import Live
from foreman.testing import reply_text
from tests.harness import start_stack
from tests.test_cli import foreman, foreman_process, one_line
from tests.test_client_batches import batch_dict, request_line, slow_sim, write_jsonl

# -- text (pure)


def test_numbers_and_durations() -> None:
    assert [grouped(n) for n in (0, 999, 1234, 10000, 1234567)] == [
        "0",
        "999",
        "1 234",
        "10 000",
        "1 234 567",
    ]
    assert [
        duration(s) for s in (0, 0.4, 45, 59.6, 236, 3599, 3720, 86399, 2 * 86400 + 3 * 3600)
    ] == [
        "0s",
        "0s",
        "45s",
        "1m00s",
        "3m56s",
        "59m59s",
        "1h02m",
        "23h59m",
        "2d03h",
    ]


def test_rate_comes_from_observed_progress_over_a_window() -> None:
    meter = RateMeter(window=60)
    assert meter.rate is None and meter.eta(100, 0) is None
    meter.add(0.0, 10)
    assert meter.rate is None  # one observation: no rate yet
    meter.add(0.0, 10)
    assert meter.rate is None  # no time passed
    meter.add(5.0, 10)
    assert meter.rate is None and meter.eta(100, 10) is None  # no progress seen
    meter.add(10.0, 60)
    assert meter.rate == 5.0
    assert meter.eta(100, 60) == 8.0
    assert meter.eta(100, 100) == 0.0
    # a minute later at a new pace: the old observations leave the window
    for t in range(20, 200, 10):
        meter.add(float(t), 60 + (t - 10) * 2)
    assert meter.rate is not None and abs(meter.rate - 2.0) < 0.2
    stalled = RateMeter(window=30)
    stalled.add(0.0, 0)
    stalled.add(10.0, 50)
    for t in range(20, 100, 10):
        stalled.add(float(t), 50)
    assert stalled.rate is None  # nothing done within the window: ETA unknown again


def test_batch_progress_line() -> None:
    batch = Batch.from_dict(batch_dict())
    assert (
        batch_line(batch, 41.2, 236)
        == "batch_01  in_progress  1 234/10 000 done, 3 failed  41.2/s  ETA 3m56s"
    )
    assert batch_line(batch) == "batch_01  in_progress  1 234/10 000 done, 3 failed  ETA —"
    assert batch_line(batch, 0.05, 9000).endswith("  3.0/min  ETA 2h30m")
    no_failures = batch_dict(request_counts={"total": 3, "completed": 1, "failed": 0})
    assert batch_line(Batch.from_dict(no_failures), 2.0, 1) == (
        "batch_01  in_progress  1/3 done  2.0/s  ETA 1s"
    )
    validating = batch_dict(
        status="validating", request_counts={"total": 0, "completed": 0, "failed": 0}
    )
    assert batch_line(Batch.from_dict(validating), None, None) == "batch_01  validating"
    completed = batch_dict(
        status="completed", request_counts={"total": 10, "completed": 9, "failed": 1}
    )
    assert batch_line(Batch.from_dict(completed), 3.0, 0, elapsed=252) == (
        "batch_01  completed  10/10 done, 1 failed  in 4m12s"
    )


def test_batch_summary_and_table() -> None:
    batch = Batch.from_dict(
        batch_dict(
            status="completed",
            completed_at=1764900100,
            output_file_id="file-out",
            error_file_id="file-err",
            usage={"input_tokens": 5, "output_tokens": 7, "total_tokens": 12},
        )
    )
    rows = dict(line.split(None, 1) for line in batch_summary(batch).splitlines())
    assert rows["id"] == "batch_01" and rows["status"] == "completed"
    assert rows["output"] == "file-out" and rows["errors"] == "file-err"
    assert rows["requests"] == "10 000 total, 1 231 completed, 3 failed"
    assert rows["completed"] == "2025-12-05T02:01:40Z"
    assert rows["tokens"] == "5 input, 7 output, 12 total"
    assert rows["metadata"] == '{"project": "x"}'
    failed = Batch.from_dict(
        batch_dict(
            status="failed",
            errors={
                "object": "list",
                "data": [{"code": "invalid_json", "message": "bad", "line": 2}],
            },
        )
    )
    summary = batch_summary(failed)
    assert "error     line 2: invalid_json: bad" in summary
    assert "output    -" in summary

    table = batch_table([batch, failed]).splitlines()
    assert table[0].split() == ["ID", "STATUS", "ENDPOINT", "DONE", "FAILED", "CREATED"]
    assert table[1].split()[:5] == [
        "batch_01",
        "completed",
        "/v1/chat/completions",
        "1234/10000",
        "3",
    ]


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_is_one_line_on_a_terminal() -> None:
    terminal = _Terminal()
    live = Live(terminal, interval=5)
    batch = Batch.from_dict(batch_dict())
    for rate in (None, 10.0, 12.5):
        live.show(batch_line(batch, rate, 100 if rate else None))
    live.done("batch_01  completed  10 000/10 000 done  in 4m12s")
    text = terminal.getvalue()
    assert text.count("\n") == 1 and text.count("\r") == 4


# -- the commands without a daemon


@pytest_twisted.ensureDeferred
async def test_batch_alone_lists_its_commands_and_foreman_alone_lists_batch() -> None:
    bare = await foreman()
    assert bare.status == 2 and "\n    batch " in bare.err
    batch = await foreman("batch")
    assert batch.status == 2 and batch.out == ""
    assert batch.err.startswith("usage: foreman batch ")
    for command in ("submit", "get", "list", "wait", "cancel", "output"):
        assert f"\n    {command} " in batch.err, command
    helped = await foreman("batch", "submit", "--help")
    assert helped.status == 0 and helped.out.startswith("usage: foreman batch submit ")
    assert "--webhook-url" in helped.out and "--metadata KEY=VALUE" in helped.out


@pytest_twisted.ensureDeferred
async def test_batch_usage_errors_exit_2_and_unreachable_exits_3(tmp_path: Path) -> None:
    cases = [
        (("batch", "submit"), "usage: foreman batch submit ", "required: file"),
        (
            ("batch", "submit", "x.jsonl", "--metadata", "nokey"),
            "usage: foreman batch submit ",
            "key=value",
        ),
        (("batch", "get"), "usage: foreman batch get ", "required: id"),
        (("batch", "list", "--limit", "-1"), "usage: foreman batch list ", "--limit"),
        (
            ("batch", "submit", "x", "--wait", "--timeout", "-2"),
            "usage: foreman batch submit ",
            "--timeout",
        ),
    ]
    for args, usage, reason in cases:
        result = await foreman(*args, url="http://127.0.0.1:1")
        assert result.status == 2, (args, result.err)
        assert result.err.startswith(usage), result.err
        assert reason in result.err.splitlines()[-1], result.err

    missing = await foreman(
        "batch", "submit", str(tmp_path / "nope.jsonl"), url="http://127.0.0.1:1"
    )
    assert missing.status == 2
    assert "nope.jsonl" in one_line(missing.err)

    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{held.getsockname()[1]}"
        got = await foreman("batch", "get", "batch_x", url=closed)
        request = tmp_path / "in.jsonl"
        request.write_text("{}\n")
        submitted = await foreman("batch", "submit", str(request), url=closed)
    for result in (got, submitted):
        assert result.status == 3, result.err
        line = one_line(result.err)
        assert closed in line and "refused" in line, line


# -- against the daemon


def _ids(result: Any) -> list[str]:
    listed = result.json()
    assert isinstance(listed, list)
    return [str(b["id"]) for b in listed]


def _summary(text: str) -> dict[str, str]:
    return dict(line.split(None, 1) for line in text.splitlines() if " " in line)


@pytest_twisted.ensureDeferred
async def test_batch_submit_wait_then_output_get_and_list(tmp_path: Path) -> None:
    stack = await start_stack(tmp_path)
    try:
        lines = [
            request_line("a", "first"),
            request_line("b", "second"),
            request_line("c", "nobody", model="no-such-model"),
        ]
        path = write_jsonl(tmp_path / "in.jsonl", lines)
        run = await foreman_process(
            "batch", "submit", str(path), "--wait", "--metadata", "project=cli", url=stack.url
        )
        assert run.status == 0, run.err  # completed, even with a failed line
        summary = _summary(run.out)
        batch_id = summary["id"]
        assert batch_id.startswith("batch_") and summary["status"] == "completed"
        assert summary["requests"] == "3 total, 2 completed, 1 failed"
        assert summary["output"].startswith("file-") and summary["errors"].startswith("file-")
        progress = run.err.splitlines()  # not a TTY: plain lines, one per status at least
        assert all(line.startswith(batch_id) for line in progress[:-1]), run.err
        assert progress[-2].startswith(f"{batch_id}  completed  3/3 done, 1 failed  in ")
        assert progress[-1] == (
            f"foreman: 1 of 3 lines failed; see foreman batch output {batch_id} --errors"
        )

        output = await foreman("batch", "output", batch_id, url=stack.url)
        assert output.status == 0, output.err
        answers = [json.loads(line) for line in output.raw.splitlines()]
        assert sorted(a["custom_id"] for a in answers) == ["a", "b"]
        first = next(a for a in answers if a["custom_id"] == "a")
        assert first["response"]["body"]["choices"][0]["message"]["content"] == reply_text(
            "llama3.2", "first", 8
        )
        saved = tmp_path / "errors.jsonl"
        errors = await foreman(
            "batch", "output", batch_id, "--errors", "-o", str(saved), url=stack.url
        )
        assert (errors.status, errors.out) == (0, "")
        failed = [json.loads(line) for line in saved.read_text().splitlines()]
        assert [(f["custom_id"], f["response"]["status_code"]) for f in failed] == [("c", 404)]

        got = await foreman("batch", "get", batch_id, "--json", url=stack.url)
        assert got.status == 0, got.err
        shown = got.json()
        assert isinstance(shown, dict)
        assert (shown["status"], shown["metadata"]) == ("completed", {"project": "cli"})
        assert shown["request_counts"] == {"total": 3, "completed": 2, "failed": 1}

        clean = json.dumps(request_line("z", "only")).encode() + b"\n"
        submitted = await foreman(
            "batch", "submit", "-", "--endpoint", "/v1/chat/completions", url=stack.url, stdin=clean
        )
        assert submitted.status == 0, submitted.err
        second = submitted.out.strip()
        assert second.startswith("batch_") and "\n" not in second
        waited = await foreman("batch", "wait", second, "--json", url=stack.url)
        assert waited.status == 0, waited.err
        done = waited.json()
        assert isinstance(done, dict) and done["status"] == "completed"
        stdin_file = await foreman("batch", "get", second, url=stack.url)
        assert _summary(stdin_file.out)["input"] == done["input_file_id"]
        no_errors = await foreman("batch", "output", second, "--errors", url=stack.url)
        assert no_errors.status == 1 and no_errors.out == ""
        assert "no error file" in one_line(no_errors.err)

        listed = await foreman("batch", "list", url=stack.url)
        rows = listed.out.splitlines()
        assert rows[0].split()[:3] == ["ID", "STATUS", "ENDPOINT"]
        assert [r.split()[0] for r in rows[1:]] == [second, batch_id]  # newest first
        as_json = await foreman("batch", "list", "--limit", "1", "--json", url=stack.url)
        assert _ids(as_json) == [second]
        after = await foreman("batch", "list", "--after", second, "--json", url=stack.url)
        assert _ids(after) == [batch_id]
    finally:
        await stack.stop()


@pytest_twisted.ensureDeferred
async def test_batch_cancel_failed_and_unfinished_exit_1(tmp_path: Path) -> None:
    stack = await start_stack(tmp_path, sim=slow_sim())
    try:
        lines = [request_line(f"n{i}", f"question {i}") for i in range(8)]
        path = write_jsonl(tmp_path / "in.jsonl", lines)
        unfinished = await foreman(
            "batch", "submit", str(path), "--wait", "--timeout", "0.5", url=stack.url
        )
        assert unfinished.status == 1
        assert "still" in unfinished.err.splitlines()[-1]
        batch_id = unfinished.err.split()[0]
        assert batch_id.startswith("batch_")
        not_yet = await foreman("batch", "output", batch_id, url=stack.url)
        assert not_yet.status == 1 and "still" in one_line(not_yet.err)

        cancelled = await foreman("batch", "cancel", batch_id, url=stack.url)
        assert cancelled.status == 0, cancelled.err
        assert cancelled.out.split()[0] == batch_id
        assert cancelled.out.split()[1] in ("cancelling", "cancelled")
        waited = await foreman("batch", "wait", batch_id, url=stack.url)
        assert waited.status == 1
        assert f"foreman: batch {batch_id} cancelled" in waited.err
        assert _summary(waited.out)["status"] == "cancelled"

        bad = tmp_path / "bad.jsonl"
        bad.write_text(json.dumps(request_line("a", "hi")) + "\n{not json\n")
        failed = await foreman("batch", "submit", str(bad), "--wait", url=stack.url)
        assert failed.status == 1
        assert "failed" in failed.err and "line 2" in failed.err

        missing = await foreman("batch", "get", "batch_nope", url=stack.url)
        assert missing.status == 2 and "404" in one_line(missing.err)
        missing_output = await foreman("batch", "output", "batch_nope", url=stack.url)
        assert missing_output.status == 2
    finally:
        await stack.stop()
