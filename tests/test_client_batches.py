"""The client's OpenAI batch calls: values, the streamed upload body, and the real daemon.

Pure tests first (models, error mapping, the wait loop's pacing, the
multipart producer: its bytes parse back, and it reads the file in chunks,
never whole); then AsyncForemanClient against the daemon and the simulator,
and the blocking client in a plain script.
"""

from __future__ import annotations

import datetime
import email.parser
import email.policy
import io
import json
import os
from pathlib import Path
from typing import Any, BinaryIO

import pytest
import pytest_twisted
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Cooperator

from foreman.client import (
    AsyncForemanClient,
    BadRequest,
    Batch,
    BatchCounts,
    BatchError,
    BatchNotFound,
    BatchPage,
    BatchResult,
    BatchStatus,
    Conflict,
    FileNotFound,
    FileObject,
    FilePage,
    ForemanConnectionError,
    JobNotFound,
    NotFound,
    PayloadTooLarge,
    WaitTimeout,
)
from foreman.client._async import MIN_POLL_INTERVAL, next_poll
from foreman.client._errors import error_from_reply
from foreman.client._models import parse_results
from foreman.client._upload import CHUNK, MultipartUpload, open_source
from foreman.testing import OllamaSimulator, reply_text
from tests.harness import reactor, start_stack
from tests.test_client_blocking import run_python

# -- values


def batch_dict(**over: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": "batch_01",
        "object": "batch",
        "endpoint": "/v1/chat/completions",
        "errors": None,
        "input_file_id": "file-in",
        "completion_window": "24h",
        "status": "in_progress",
        "output_file_id": None,
        "error_file_id": None,
        "created_at": 1764900000,
        "in_progress_at": 1764900001,
        "expires_at": 1764986400,
        "finalizing_at": None,
        "completed_at": None,
        "failed_at": None,
        "expired_at": None,
        "cancelling_at": None,
        "cancelled_at": None,
        "request_counts": {"total": 10000, "completed": 1231, "failed": 3},
        "usage": None,
        "metadata": {"project": "x"},
    }
    data.update(over)
    return data


def test_batch_from_openai_shape() -> None:
    data = batch_dict()
    batch = Batch.from_dict(data)
    assert batch.id == "batch_01" and batch.status is BatchStatus.IN_PROGRESS
    assert not batch.terminal and batch.finished_at is None
    assert batch.request_counts == BatchCounts(10000, 1231, 3)
    assert batch.request_counts.done == 1234
    assert batch.created_at == datetime.datetime(2025, 12, 5, 2, 0, tzinfo=datetime.UTC)
    assert batch.in_progress_at is not None and batch.in_progress_at.tzinfo is not None
    assert batch.expires_at == batch.created_at + datetime.timedelta(hours=24)
    assert (batch.output_file_id, batch.error_file_id, batch.errors) == (None, None, ())
    assert batch.metadata == {"project": "x"} and batch.usage is None
    assert batch.raw is data
    assert batch == Batch.from_dict(dict(data))  # raw is not compared
    assert "raw" not in repr(batch)

    failed = Batch.from_dict(
        batch_dict(
            status="failed",
            failed_at=1764900002,
            request_counts={"total": 0, "completed": 0, "failed": 0},
            errors={
                "object": "list",
                "data": [
                    {"code": "invalid_json", "message": "not JSON", "param": None, "line": 3},
                    {"code": "duplicate_custom_id", "message": "twice", "line": 7},
                ],
            },
        )
    )
    assert failed.terminal and failed.finished_at == failed.failed_at
    assert failed.errors == (
        BatchError("invalid_json", "not JSON", None, 3),
        BatchError("duplicate_custom_id", "twice", None, 7),
    )
    assert str(failed.errors[0]) == "line 3: invalid_json: not JSON"

    usage = {"input_tokens": 5, "output_tokens": 7, "total_tokens": 12}
    done = Batch.from_dict(
        batch_dict(
            status="completed",
            completed_at=1764900100,
            output_file_id="file-out",
            error_file_id="file-err",
            usage=usage,
        )
    )
    assert done.terminal and done.usage == usage
    assert (done.output_file_id, done.error_file_id) == ("file-out", "file-err")
    assert done.finished_at == datetime.datetime(2025, 12, 5, 2, 1, 40, tzinfo=datetime.UTC)

    with pytest.raises(ValueError):
        Batch.from_dict(batch_dict(status="paused"))


def test_batch_status_terminal() -> None:
    terminal = {s for s in BatchStatus if s.terminal}
    assert terminal == {"failed", "completed", "expired", "cancelled"}
    assert BatchStatus("cancelling") is BatchStatus.CANCELLING and str(BatchStatus.CANCELLING)
    assert f"{BatchStatus.IN_PROGRESS}" == "in_progress"  # a StrEnum


def test_pages_and_files() -> None:
    file = {
        "id": "file-1",
        "object": "file",
        "bytes": 120,
        "created_at": 1764900000,
        "filename": "in.jsonl",
        "purpose": "batch",
        "expires_at": None,
        "status": "processed",
        "status_details": None,
    }
    parsed = FileObject.from_dict(file)
    assert (parsed.id, parsed.bytes, parsed.filename, parsed.purpose) == (
        "file-1",
        120,
        "in.jsonl",
        "batch",
    )
    assert parsed.status == "processed" and parsed.expires_at is None
    assert parsed.created_at is not None and parsed.raw is file

    page = FilePage.from_dict(
        {
            "object": "list",
            "data": [file],
            "first_id": "file-1",
            "last_id": "file-1",
            "has_more": True,
        }
    )
    assert page.files == (parsed,) and page.next_after == "file-1"
    last = BatchPage.from_dict(
        {
            "object": "list",
            "data": [batch_dict(), batch_dict(id="batch_00")],
            "first_id": "batch_01",
            "last_id": "batch_00",
            "has_more": False,
        }
    )
    assert [b.id for b in last.batches] == ["batch_01", "batch_00"]
    assert last.next_after is None and last.first_id == "batch_01"
    empty = BatchPage.from_dict({"object": "list", "data": [], "has_more": False})
    assert empty.batches == () and empty.last_id is None


def test_result_lines() -> None:
    ok = {
        "id": "batch_req_1",
        "custom_id": "a",
        "response": {
            "status_code": 200,
            "request_id": "job_1",
            "body": {"choices": [{"message": {"content": "hi"}}]},
        },
        "error": None,
    }
    refused = {
        "id": "batch_req_2",
        "custom_id": "b",
        "response": {"status_code": 404, "request_id": "job_2", "body": {"error": "no model"}},
        "error": None,
    }
    never_ran = {
        "id": "batch_req_3",
        "custom_id": "c",
        "response": None,
        "error": {"code": "batch_cancelled", "message": "the batch was cancelled"},
    }
    data = b"\n".join(json.dumps(line).encode() for line in (ok, refused, never_ran)) + b"\n\n"
    results = parse_results(data)
    assert [r.custom_id for r in results] == ["a", "b", "c"]
    first, second, third = results
    assert first.ok and first.status_code == 200 and first.request_id == "job_1"
    assert first.body == ok["response"]["body"] and first.raw == ok  # type: ignore[index]
    assert not second.ok and second.status_code == 404 and second.error is None
    assert not third.ok and third.status_code is None and third.body is None
    assert third.error == BatchError("batch_cancelled", "the batch was cancelled")
    assert BatchResult.from_dict(ok) == first
    with pytest.raises(ValueError, match="line 2"):
        parse_results(b'{"custom_id": "a"}\n{not json}\n')


def test_404_on_batch_and_file_routes_maps_to_their_not_found() -> None:
    body = json.dumps(
        {"error": {"message": "no batch 'batch_x'", "type": "not_found_error", "code": "not_found"}}
    ).encode()
    batch = error_from_reply(404, body, {}, BatchNotFound)
    assert isinstance(batch, BatchNotFound) and isinstance(batch, NotFound)
    assert (batch.status, batch.code, batch.message) == (404, "not_found", "no batch 'batch_x'")
    assert isinstance(error_from_reply(404, body, {}, FileNotFound), FileNotFound)
    assert type(error_from_reply(404, body, {})) is NotFound  # a route with no hint
    # the code, when it says, wins over the route's hint
    coded = json.dumps({"error": {"code": "file_not_found", "message": "gone"}}).encode()
    assert isinstance(error_from_reply(404, coded, {}, BatchNotFound), FileNotFound)
    job = json.dumps({"error": {"code": "job_not_found", "message": "no job"}}).encode()
    assert isinstance(error_from_reply(404, job, {}), JobNotFound)
    # only 404s: a 400 on a batch route stays a 400
    bad = json.dumps({"error": {"message": "no", "type": "invalid_request_error"}}).encode()
    assert not isinstance(error_from_reply(400, bad, {}, BatchNotFound), NotFound)


def test_wait_polls_are_paced_and_never_pause_past_the_deadline() -> None:
    def rounded(now: float, deadline: float | None, asked: float | None) -> tuple[Any, float]:
        left, pause = next_poll(now, deadline, asked)
        return (None if left is None else round(left, 6)), round(pause, 6)

    pace = round(MIN_POLL_INTERVAL - 0.1, 6)
    assert rounded(100.0, None, None) == (None, 0.0)  # the first look: at once
    assert rounded(100.0, None, 99.9) == (None, pace)
    assert rounded(100.0, None, 90.0) == (None, 0.0)  # a long-poll took its time
    assert rounded(100.0, 130.0, 99.9) == (30.0, pace)
    assert rounded(100.0, 100.1, 99.9) == (0.1, 0.1)  # not past the deadline
    assert rounded(100.0, 90.0, 99.9) == (0.0, 0.0)


# -- the multipart body


class SpyFile(io.BufferedReader):
    """A real file that records the size of every read."""

    def __init__(self, path: Path) -> None:
        super().__init__(io.FileIO(str(path), "rb"))
        self.reads: list[int | None] = []

    def read(self, size: int | None = -1, /) -> bytes:
        self.reads.append(size)
        return super().read(size)


def payload(size: int) -> bytes:
    line = b'{"custom_id": "x", "method": "POST", "url": "/v1/chat/completions"}\n'
    return (line * (size // len(line) + 1))[:size]


def parse_form(content_type: str, body: bytes) -> dict[str, tuple[str | None, str, bytes]]:
    """name -> (filename, content type, bytes), read back by Python's email parser."""
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    assert message.is_multipart() and not message.defects
    parts: dict[str, tuple[str | None, str, bytes]] = {}
    for part in message.iter_parts():  # type: ignore[attr-defined]
        name = str(part.get_param("name", header="content-disposition"))
        data = part.get_payload(decode=True)
        assert isinstance(data, bytes)
        parts[name] = (part.get_filename(), part.get_content_type(), data)
    return parts


def test_multipart_body_parses_back_and_the_file_is_read_in_chunks(tmp_path: Path) -> None:
    path = tmp_path / "requests.jsonl"
    data = payload(5 * CHUNK + 123)
    path.write_bytes(data)
    spy = SpyFile(path)
    source = open_source(spy, "requests.jsonl")  # type: ignore[arg-type]
    assert source.size == len(data) and source.filename == "requests.jsonl"
    upload = MultipartUpload(source, {"purpose": "batch"})
    assert upload.boundary in upload.content_type
    assert upload.content_type.startswith("multipart/form-data; boundary=")

    pieces = list(upload.chunks())
    body = b"".join(pieces)
    assert len(body) == upload.length  # the Content-Length sent up front is exact
    assert max(len(p) for p in pieces) == CHUNK
    assert spy.reads == [CHUNK] * 5 + [123]  # bounded reads only, never read() whole

    parts = parse_form(upload.content_type, body)
    assert parts["purpose"] == (None, "text/plain", b"batch")
    assert parts["file"] == ("requests.jsonl", "application/jsonl", data)
    assert list(parts) == ["purpose", "file"]


def test_multipart_names_survive_quotes_and_non_ascii(tmp_path: Path) -> None:
    path = tmp_path / "x"
    path.write_bytes(b'{"a": 1}\n')
    for name in ('my "big" batch.jsonl', "back\\slash.jsonl", "été.jsonl"):
        upload = MultipartUpload(open_source(path, name), {"purpose": "batch"})
        body = b"".join(upload.chunks())
        parts = parse_form(upload.content_type, body)
        assert parts["file"][0] == name, body[:300]
        assert parts["file"][2] == b'{"a": 1}\n'
    newline = MultipartUpload(open_source(path, "a\r\nb.jsonl"), {"purpose": "batch"})
    assert b"a%0D%0Ab.jsonl" in b"".join(newline.chunks())  # no header injection


def test_sources_paths_file_objects_and_streams(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"0123456789")
    from_path = open_source(path)
    assert (from_path.size, from_path.filename) == (10, "in.jsonl")
    from_path.close()
    assert from_path.file.closed  # we opened it: we close it

    with open(path, "rb") as handle:
        handle.read(4)  # sent from the current position
        from_handle = open_source(handle)
        assert (from_handle.size, from_handle.filename) == (6, "in.jsonl")
        upload = MultipartUpload(from_handle, {})
        assert b"\r\n\r\n456789\r\n--" in b"".join(upload.chunks())
        upload.rewind()  # a retry sends the same bytes again
        assert b"\r\n\r\n456789\r\n--" in b"".join(upload.chunks())
        from_handle.close()
        assert not handle.closed  # the caller's file stays open

    class Pipe(io.RawIOBase):
        def __init__(self, data: bytes) -> None:
            self._data = io.BytesIO(data)

        def readable(self) -> bool:
            return True

        def readinto(self, buffer: Any) -> int:
            chunk = self._data.read(len(buffer))
            buffer[: len(chunk)] = chunk
            return len(chunk)

    stream: BinaryIO = io.BufferedReader(Pipe(payload(3 * CHUNK)))  # type: ignore[assignment]
    spooled = open_source(stream)
    assert (spooled.size, spooled.filename) == (3 * CHUNK, "upload.jsonl")
    upload = MultipartUpload(spooled, {"purpose": "batch"})
    parts = parse_form(upload.content_type, b"".join(upload.chunks()))
    assert parts["file"] == ("upload.jsonl", "application/jsonl", payload(3 * CHUNK))
    spooled.close()
    assert spooled.file.closed  # the spool is ours


def test_a_file_that_shrinks_during_the_upload_fails_instead_of_hanging(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(payload(3 * CHUNK))
    upload = MultipartUpload(open_source(path), {"purpose": "batch"})
    with open(path, "r+b") as f:
        f.truncate(CHUNK + 10)
    with pytest.raises(OSError, match="short"):
        b"".join(upload.chunks())
    upload.source.close()


class PausingConsumer:
    """Pauses the producer after every write and resumes it a tick later."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.writes = 0
        self.paused = False
        self.producer: MultipartUpload | None = None

    def write(self, data: bytes) -> None:
        assert not self.paused, "written to while paused"
        self.data += data
        self.writes += 1
        assert self.producer is not None
        self.paused = True
        self.producer.pauseProducing()
        reactor.callLater(0, self.resume)

    def resume(self) -> None:
        self.paused = False
        assert self.producer is not None
        self.producer.resumeProducing()


@pytest_twisted.ensureDeferred
async def test_the_producer_streams_to_a_consumer_and_obeys_pause(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    data = payload(4 * CHUNK + 1)
    path.write_bytes(data)
    cooperator = Cooperator(scheduler=lambda work: reactor.callLater(0, work))
    upload = MultipartUpload(
        open_source(path), {"purpose": "batch"}, cooperator=cooperator, clock=reactor.seconds
    )
    consumer = PausingConsumer()
    consumer.producer = upload
    try:
        await upload.startProducing(consumer)  # type: ignore[arg-type]
    finally:
        cooperator.stop()
        upload.source.close()
    assert consumer.writes == 7  # head, five chunks, tail: one per resume
    assert bytes(consumer.data) == b"".join(
        MultipartUpload(open_source(path), {"purpose": "batch"}, boundary=upload.boundary).chunks()
    )
    assert upload.sent == upload.length and upload.last_activity is not None


def test_stop_producing_before_the_end_is_quiet(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(payload(2 * CHUNK))
    calls: list[Any] = []
    scheduler: Any = calls.append  # runs only when we say
    cooperator = Cooperator(scheduler=scheduler)

    class Sink:
        def __init__(self) -> None:
            self.data = b""

        def write(self, data: bytes) -> None:
            self.data += data

    upload = MultipartUpload(open_source(path), {}, cooperator=cooperator)
    sink = Sink()
    outcome: list[object] = []
    upload.startProducing(sink).addBoth(outcome.append)  # type: ignore[arg-type]
    upload.stopProducing()
    while calls:
        calls.pop(0)()
    assert outcome == []  # IBodyProducer: neither fires nor fails once stopped
    upload.stopProducing()  # twice: still quiet
    upload.source.close()
    assert len(sink.data) < upload.length


# -- against the daemon


def request_line(custom_id: str, content: str, model: str = "llama3.2") -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": model, "messages": [{"role": "user", "content": content}]},
    }


def write_jsonl(path: Path, lines: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def slow_sim() -> OllamaSimulator:
    """8 tokens at 10/s: a line runs ~0.8 s, long enough to act while a batch runs."""
    return OllamaSimulator(models=("llama3.2",), token_rate=10.0, load_time=0.05)


@pytest_twisted.ensureDeferred
async def test_files_upload_get_list_content_download_delete(tmp_path: Path) -> None:
    stack = await start_stack(tmp_path)
    client = AsyncForemanClient(stack.url, reactor=reactor)
    try:
        data = payload(2_000_000 + 17)  # streamed in chunks, not one write
        path = tmp_path / "big.jsonl"
        path.write_bytes(data)
        uploaded = await client.upload_file(path)
        assert isinstance(uploaded, FileObject) and uploaded.id.startswith("file-")
        assert (uploaded.bytes, uploaded.filename, uploaded.purpose) == (
            len(data),
            "big.jsonl",
            "batch",
        )
        assert uploaded.created_at is not None and uploaded.raw["object"] == "file"
        assert await client.get_file(uploaded.id) == uploaded
        spy = SpyFile(path)
        again = await client.upload_file(spy)  # type: ignore[arg-type]
        assert again.bytes == len(data) and again.id != uploaded.id
        assert spy.reads and max(r or 0 for r in spy.reads) <= CHUNK  # never whole
        assert -1 not in spy.reads and None not in spy.reads
        assert not spy.closed  # the caller's file stays open
        spy.close()

        from_memory = await client.upload_file(io.BytesIO(b'{"x": 1}\n'), filename="small.jsonl")
        assert (from_memory.bytes, from_memory.filename) == (9, "small.jsonl")
        page = await client.list_files(purpose="batch")
        assert {uploaded.id, from_memory.id} <= {f.id for f in page.files}
        one = await client.list_files(limit=1)
        assert len(one.files) == 1 and one.has_more and one.next_after == one.files[0].id

        assert await client.file_content(uploaded.id) == data
        target = tmp_path / "copy.jsonl"
        assert await client.download_file(uploaded.id, target) == len(data)
        assert target.read_bytes() == data
        assert not (tmp_path / "copy.jsonl.part").exists()
        sink = io.BytesIO(b"keep:")
        sink.seek(5)
        await client.download_file(from_memory.id, sink)
        assert sink.getvalue() == b'keep:{"x": 1}\n'

        await client.delete_file(from_memory.id)
        with pytest.raises(FileNotFound) as missing:
            await client.get_file(from_memory.id)
        assert missing.value.status == 404
        with pytest.raises(FileNotFound):
            await client.delete_file(from_memory.id)
        with pytest.raises(FileNotFound):
            await client.file_content(from_memory.id)
        nowhere = tmp_path / "never.jsonl"
        with pytest.raises(FileNotFound):
            await client.download_file(from_memory.id, nowhere)
        assert not nowhere.exists()
        assert not (tmp_path / "never.jsonl.part").exists()  # no partial file left behind
        with pytest.raises(BadRequest):
            await client.upload_file(io.BytesIO(b"{}\n"), purpose="fine-tune")
    finally:
        await client.close()
        await stack.stop()


@pytest_twisted.ensureDeferred
async def test_an_upload_over_the_limit_is_payload_too_large(tmp_path: Path) -> None:
    stack = await start_stack(tmp_path, batch_max_bytes=100_000)
    client = AsyncForemanClient(stack.url, reactor=reactor)
    try:
        path = tmp_path / "big.jsonl"
        path.write_bytes(payload(300_000))
        with pytest.raises(PayloadTooLarge) as refused:
            await client.upload_file(path)
        assert refused.value.status == 413
        small = await client.upload_file(io.BytesIO(payload(1000)), filename="ok.jsonl")
        assert small.bytes == 1000  # the connection pool still works after a refusal
    finally:
        await client.close()
        await stack.stop()


@pytest_twisted.ensureDeferred
async def test_submit_wait_and_read_the_output(tmp_path: Path) -> None:
    stack = await start_stack(tmp_path)
    client = AsyncForemanClient(stack.url, reactor=reactor)
    try:
        lines = [
            request_line("a", "first question"),
            request_line("b", "second question"),
            request_line("c", "nobody home", model="no-such-model"),
        ]
        path = write_jsonl(tmp_path / "in.jsonl", lines)
        batch = await client.submit_batch(path, metadata={"project": "tests"})
        assert isinstance(batch, Batch) and batch.id.startswith("batch_")
        assert batch.input_file_id.startswith("file-")
        assert (batch.endpoint, batch.completion_window) == ("/v1/chat/completions", "24h")
        assert batch.metadata == {"project": "tests"}
        assert not batch.terminal

        seen: list[Batch] = []
        final = await client.wait_batch(batch.id, timeout=30, on_progress=seen.append)
        assert final.status is BatchStatus.COMPLETED and final.terminal
        assert final.request_counts == BatchCounts(total=3, completed=2, failed=1)
        assert final.output_file_id and final.error_file_id
        assert final.completed_at is not None and final.finished_at == final.completed_at
        assert seen[-1] == final and len(seen) < 20  # a look per change, no busy polling
        assert await client.get_batch(batch.id) == final

        results = await client.batch_output(batch.id)
        assert sorted(r.custom_id for r in results) == ["a", "b"]
        for result in results:
            assert result.ok and result.status_code == 200
            assert result.id.startswith("batch_req_")
            assert result.request_id is not None and result.request_id.startswith("job_")
            prompt = {"a": "first question", "b": "second question"}[result.custom_id]
            answer = result.body["choices"][0]["message"]["content"]
            assert answer == reply_text("llama3.2", prompt, 8)
        errors = await client.batch_output(batch.id, errors=True)
        assert [(e.custom_id, e.status_code, e.ok) for e in errors] == [("c", 404, False)]

        page = await client.list_batches()
        assert page.batches[0].id == batch.id and not page.has_more
    finally:
        await client.close()
        await stack.stop()


@pytest_twisted.ensureDeferred
async def test_cancel_a_running_batch(tmp_path: Path) -> None:
    stack = await start_stack(tmp_path, sim=slow_sim())
    client = AsyncForemanClient(stack.url, reactor=reactor)
    try:
        lines = [request_line(f"n{i}", f"question {i}") for i in range(8)]
        uploaded = await client.upload_file(write_jsonl(tmp_path / "in.jsonl", lines))
        batch = await client.create_batch(uploaded.id, webhook_url=None)
        with pytest.raises(WaitTimeout) as waited:
            await client.wait_batch(batch.id, timeout=0.3)
        last = waited.value.batch
        assert last is not None and last.id == batch.id and not last.terminal

        cancelling = await client.cancel_batch(batch.id)
        assert cancelling.status in (BatchStatus.CANCELLING, BatchStatus.CANCELLED)
        final = await client.wait_batch(batch.id, timeout=30)
        assert final.status is BatchStatus.CANCELLED and final.cancelled_at is not None
        counts = final.request_counts
        assert counts.total == 8 and counts.completed < 8 and counts.done == 8
        errors = await client.batch_output(batch.id, errors=True)
        assert {e.error.code for e in errors if e.error is not None} == {"batch_cancelled"}
        again = await client.cancel_batch(batch.id)
        assert again.status is BatchStatus.CANCELLED
    finally:
        await client.close()
        await stack.stop()


@pytest_twisted.ensureDeferred
async def test_unknown_batches_and_files_and_bad_input(tmp_path: Path) -> None:
    stack = await start_stack(tmp_path)
    client = AsyncForemanClient(stack.url, reactor=reactor)
    try:
        for call in (
            client.get_batch,
            client.cancel_batch,
            client.wait_batch,
            client.batch_output,
        ):
            with pytest.raises(BatchNotFound) as missing:
                await call("batch_nope")
            assert missing.value.status == 404
        with pytest.raises(FileNotFound):
            await client.create_batch("file-nope")
        uploaded = await client.upload_file(
            write_jsonl(tmp_path / "in.jsonl", [request_line("a", "hi")])
        )
        with pytest.raises(BadRequest):
            await client.create_batch(uploaded.id, endpoint="/v1/images/generations")

        bad = tmp_path / "bad.jsonl"
        bad.write_text(json.dumps(request_line("a", "hi")) + "\n{not json\n")
        batch = await client.submit_batch(bad)
        final = await client.wait_batch(batch.id, timeout=30)
        assert final.status is BatchStatus.FAILED and final.failed_at is not None
        assert final.errors and final.errors[0].line == 2
        assert await client.batch_output(batch.id) == []  # no output file: nothing ran
        with pytest.raises(Conflict):
            await client.cancel_batch(batch.id)  # it is over
    finally:
        await client.close()
        await stack.stop()


@pytest_twisted.ensureDeferred
async def test_the_blocking_client_in_a_plain_script(tmp_path: Path) -> None:
    stack = await start_stack(tmp_path)
    try:
        path = write_jsonl(
            tmp_path / "in.jsonl", [request_line("x", "from a script"), request_line("y", "two")]
        )
        script = """
            import json, sys, threading
            from foreman.client import BatchStatus, ForemanClient

            with ForemanClient(sys.argv[1]) as client:
                threads = set()

                def progress(batch):
                    threads.add(threading.current_thread().name)

                batch = client.submit_batch(sys.argv[2], metadata={"via": "script"})
                final = client.wait_batch(batch.id, timeout=30, on_progress=progress)
                assert final.status is BatchStatus.COMPLETED, final
                results = client.batch_output(batch.id)
                content = client.file_content(final.output_file_id)
                print(json.dumps({
                    "threads": sorted(threads),
                    "ids": sorted(r.custom_id for r in results),
                    "lines": len(content.splitlines()),
                    "listed": client.list_batches(limit=1).batches[0].id == batch.id,
                }))
        """
        out, err, status = await run_python(script, stack.url, str(path))
        assert status == 0, err
        report = json.loads(out)
        assert report == {
            "threads": ["MainThread"],  # on_progress runs on the caller's thread
            "ids": ["x", "y"],
            "lines": 2,
            "listed": True,
        }
    finally:
        await stack.stop()


class _Deaf(Protocol):
    """Accepts a connection and never reads from it: an upload stalls."""

    def connectionMade(self) -> None:
        self.transport.pauseProducing()  # type: ignore[union-attr]


@pytest_twisted.ensureDeferred
async def test_a_stalled_upload_is_given_up_after_the_timeout_without_reading_it_all(
    tmp_path: Path,
) -> None:
    port = reactor.listenTCP(0, Factory.forProtocol(_Deaf), interface="127.0.0.1")
    client = AsyncForemanClient(
        f"http://127.0.0.1:{port.getHost().port}", reactor=reactor, timeout=0.5
    )
    path = tmp_path / "big.jsonl"
    size = 64 * 1024 * 1024  # more than any socket buffers hold
    path.write_bytes(b"")
    os.truncate(path, size)  # sparse: costs no disk
    try:
        with pytest.raises(ForemanConnectionError) as stalled:
            await client.upload_file(path)
        message = stalled.value.message
        assert "no progress within 0.5 s" in message, message
        sent = int(message.split("(")[1].split()[0])
        assert 0 < sent < size  # it went out as the connection took it, then stopped
    finally:
        await client.close()
        await port.stopListening()
        for conn in list(reactor.getReaders()) + list(reactor.getWriters()):
            if isinstance(getattr(conn, "protocol", None), _Deaf):
                conn.abortConnection()
