"""OpenAI's Batch API on foreman, driven by the real ``openai`` client (only base_url changed).

The client blocks, so each use runs in a thread while the reactor serves
foreman and the simulator.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest_twisted
from twisted.internet.threads import deferToThread

from foreman.testing import ModelSpec, OllamaSimulator
from tests.harness import Stack, start_stack, until


def _sim(**kw: Any) -> OllamaSimulator:
    kw.setdefault("token_rate", 2000.0)
    kw.setdefault("load_time", 0.0)
    kw.setdefault("reply_tokens", 3)
    return OllamaSimulator(
        models=("llama3.2", "qwen2.5", ModelSpec("nomic-embed-text", embedding=True)), **kw
    )


def chat_line(custom_id: str, model: str = "llama3.2", **extra: Any) -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": model, "messages": [{"role": "user", "content": custom_id}], **extra},
    }


def jsonl(lines: list[Any]) -> bytes:
    return b"".join(
        (line if isinstance(line, bytes) else json.dumps(line).encode()) + b"\n" for line in lines
    )


def openai_client(stack: Stack) -> Any:
    import openai  # on use: the client takes a second or two to import

    return openai.OpenAI(base_url=stack.url + "/v1", api_key="k", max_retries=0)


async def with_client(stack: Stack, fn: Any) -> Any:
    """``fn(client)`` in a thread, the client closed after (no connection left open)."""

    def run() -> Any:
        with openai_client(stack) as client:
            return fn(client)

    return await deferToThread(run)


async def settle(stack: Stack, batch_id: str, timeout: float = 30.0) -> dict[str, Any]:
    done: dict[str, Any] = {}

    async def ended() -> bool:
        body = (await stack.get(f"/v1/batches/{batch_id}")).json()
        done.update(body)
        return body["status"] in ("completed", "failed", "expired", "cancelled")

    deadline = timeout
    while deadline > 0:
        if await ended():
            return done
        await until(lambda: True, timeout=0.05)
        deadline -= 0.05
        reply = await stack.get(
            f"/v1/batches/{batch_id}?wait=5&status={done['status']}"
            f"&done={done['request_counts']['completed'] + done['request_counts']['failed']}"
        )
        done.update(reply.json())
        if done["status"] in ("completed", "failed", "expired", "cancelled"):
            return done
    raise AssertionError(f"batch {batch_id} did not end: {done}")


@pytest_twisted.ensureDeferred
async def test_a_batch_runs_end_to_end_with_the_openai_client(tmp_path: Path) -> None:
    stack = await start_stack(tmp_path, _sim())
    try:
        lines = [chat_line(f"req-{i}", "llama3.2" if i % 2 else "qwen2.5") for i in range(6)]
        lines.append(chat_line("missing", "doesnotexist"))

        def submit(client: Any) -> Any:
            uploaded = client.files.create(
                file=("in.jsonl", io.BytesIO(jsonl(lines))), purpose="batch"
            )
            batch = client.batches.create(
                input_file_id=uploaded.id,
                endpoint="/v1/chat/completions",
                completion_window="24h",
                metadata={"project": "test"},
            )
            return uploaded, batch

        uploaded, batch = await with_client(stack, submit)
        assert uploaded.id.startswith("file-") and uploaded.purpose == "batch"
        assert uploaded.bytes == len(jsonl(lines)) and uploaded.filename == "in.jsonl"
        assert batch.id.startswith("batch_") and batch.status == "validating"
        assert batch.metadata == {"project": "test"}
        ended = await settle(stack, batch.id)
        assert ended["status"] == "completed", ended
        assert ended["request_counts"] == {"total": 7, "completed": 6, "failed": 1}

        def read(client: Any) -> Any:
            got = client.batches.retrieve(batch.id)
            output = client.files.content(got.output_file_id).text
            errors = client.files.content(got.error_file_id).text
            listed = client.batches.list(limit=10)
            return got, output, errors, listed

        got, output, errors, listed = await with_client(stack, read)
        assert got.completed_at is not None and got.in_progress_at is not None
        assert got.finalizing_at is not None and got.expires_at == got.created_at + 86400
        assert got.usage is not None and got.usage.output_tokens == 6 * 3
        out = [json.loads(line) for line in output.splitlines()]
        assert sorted(o["custom_id"] for o in out) == sorted(f"req-{i}" for i in range(6))
        for line in out:
            assert line["id"].startswith("batch_req_") and line["error"] is None
            assert line["response"]["status_code"] == 200
            assert line["response"]["body"]["object"] == "chat.completion"
            assert line["response"]["request_id"].startswith("job_")
        (err,) = [json.loads(line) for line in errors.splitlines()]
        assert err["custom_id"] == "missing" and err["response"]["status_code"] == 404
        assert [b.id for b in listed.data] == [batch.id]
    finally:
        await stack.stop()


@pytest_twisted.ensureDeferred
async def test_a_bad_line_fails_the_batch_and_nothing_is_queued(tmp_path: Path) -> None:
    stack = await start_stack(tmp_path, _sim())
    try:
        lines: list[Any] = [chat_line("a"), b"{not json", chat_line("a")]
        lines.append({**chat_line("c"), "url": "/v1/embeddings"})

        def submit(client: Any) -> Any:
            uploaded = client.files.create(file=("x.jsonl", jsonl(lines)), purpose="batch")
            return client.batches.create(
                input_file_id=uploaded.id,
                endpoint="/v1/chat/completions",
                completion_window="24h",
            )

        batch = await with_client(stack, submit)
        ended = await settle(stack, batch.id)
        assert ended["status"] == "failed" and ended["failed_at"] is not None
        errors = ended["errors"]["data"]
        assert [(e["line"], e["code"]) for e in errors] == [
            (2, "invalid_json_line"),
            (3, "duplicate_custom_id"),
            (4, "mismatched_endpoint"),
        ]
        jobs = (await stack.get("/jobs")).json()
        assert jobs["data"] == []
    finally:
        await stack.stop()


@pytest_twisted.ensureDeferred
async def test_wrong_purpose_and_unknown_file_are_openai_errors(tmp_path: Path) -> None:
    import openai

    stack = await start_stack(tmp_path, _sim())
    try:

        def attempt(client: Any) -> list[Any]:
            seen: list[Any] = []
            try:
                client.batches.create(
                    input_file_id="file-00000000000000000000000000",
                    endpoint="/v1/chat/completions",
                    completion_window="24h",
                )
            except openai.NotFoundError as e:
                seen.append(e)
            try:
                client.files.create(file=("x.jsonl", b"{}\n"), purpose="assistants")
            except openai.BadRequestError as e:
                seen.append(e)
            try:
                client.batches.create(
                    input_file_id="file-00000000000000000000000000",
                    endpoint="/v1/moderations",  # type: ignore[arg-type]
                    completion_window="24h",
                )
            except openai.BadRequestError as e:
                seen.append(e)
            return seen

        missing, purpose, endpoint = await with_client(stack, attempt)
        assert missing.status_code == 404
        assert purpose.status_code == 400 and "purpose" in purpose.message
        assert endpoint.status_code == 400 and "not served by Ollama" in endpoint.message
        files = (await stack.get("/v1/files")).json()
        assert files["data"] == []  # the refused upload left nothing behind
    finally:
        await stack.stop()


async def upload(stack: Stack, lines: list[Any], name: str = "in.jsonl") -> dict[str, Any]:
    reply = await stack.request(
        "POST",
        "/v1/files",
        raw=multipart({"purpose": "batch"}, ("file", name, jsonl(lines))),
        headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
    )
    assert reply.status == 200, reply.body
    found: dict[str, Any] = reply.json()
    return found


BOUNDARY = "foremanTestBoundary7"


def multipart(fields: dict[str, str], *files: tuple[str, str, bytes]) -> bytes:
    out = b""
    for name, value in fields.items():
        out += (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
        ).encode()
    for name, filename, data in files:
        out += (
            f"--{BOUNDARY}\r\nContent-Disposition: form-data; "
            f'name="{name}"; filename="{filename}"\r\nContent-Type: application/jsonl\r\n\r\n'
        ).encode()
        out += data + b"\r\n"
    return out + f"--{BOUNDARY}--\r\n".encode()


async def create(stack: Stack, file_id: str, **extra: Any) -> dict[str, Any]:
    body = {
        "input_file_id": file_id,
        "endpoint": "/v1/chat/completions",
        "completion_window": "24h",
        **extra,
    }
    reply = await stack.post("/v1/batches", body)
    assert reply.status == 200, reply.body
    found: dict[str, Any] = reply.json()
    return found


def completed(stack: Stack, batch_id: str) -> int:
    counts = stack.daemon.batches.counts(batch_id)
    return 0 if counts is None else counts.completed


async def content(stack: Stack, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    reply = await stack.get(f"/v1/files/{file_id}/content")
    assert reply.status == 200, reply.body
    return [json.loads(line) for line in reply.body.splitlines()]


@pytest_twisted.ensureDeferred
async def test_cancel_stops_queued_lines_aborts_the_running_one_and_keeps_what_finished(
    tmp_path: Path,
) -> None:
    stack = await start_stack(tmp_path, _sim(token_rate=40.0, reply_tokens=8))
    try:
        lines = [chat_line(f"c{i}") for i in range(12)]
        batch = await create(stack, (await upload(stack, lines))["id"])
        await until(
            lambda: completed(stack, batch["id"]) >= 2,
            timeout=10,
        )
        cancelling = (await stack.post(f"/v1/batches/{batch['id']}/cancel")).json()
        assert cancelling["status"] in ("cancelling", "cancelled")
        assert cancelling["cancelling_at"] is not None
        ended = await settle(stack, batch["id"])
        assert ended["status"] == "cancelled" and ended["cancelled_at"] is not None
        counts = ended["request_counts"]
        assert counts["total"] == 12 and counts["completed"] + counts["failed"] == 12
        assert 2 <= counts["completed"] < 12
        out = await content(stack, ended["output_file_id"])
        errors = await content(stack, ended["error_file_id"])
        assert len(out) == counts["completed"] and len(errors) == counts["failed"]
        assert {e["error"]["code"] for e in errors} == {"batch_cancelled"}
        ids = sorted(o["custom_id"] for o in out + errors)
        assert ids == sorted(f"c{i}" for i in range(12))
        # nothing of it is left to run, and a second cancel answers the same batch
        assert len(stack.daemon.queue.scheduler) == 0
        again = await stack.post(f"/v1/batches/{batch['id']}/cancel")
        assert again.status == 200 and again.json()["status"] == "cancelled"
        assert again.json()["output_file_id"] == ended["output_file_id"]
    finally:
        await stack.stop()


@pytest_twisted.ensureDeferred
async def test_a_batch_past_its_window_expires_with_batch_expired_lines(tmp_path: Path) -> None:
    stack = await start_stack(tmp_path, _sim(token_rate=40.0, reply_tokens=8))
    try:
        stack.daemon.batches.window = 1.0
        lines = [chat_line(f"e{i}") for i in range(20)]
        batch = await create(stack, (await upload(stack, lines))["id"])
        assert batch["expires_at"] - batch["created_at"] in (0, 1, 2)
        ended = await settle(stack, batch["id"])
        assert ended["status"] == "expired" and ended["expired_at"] is not None
        counts = ended["request_counts"]
        assert counts["total"] == 20 and counts["completed"] < 20
        errors = await content(stack, ended["error_file_id"])
        assert {e["error"]["code"] for e in errors} == {"batch_expired"}
        assert len(errors) == counts["failed"]
    finally:
        await stack.stop()


@pytest_twisted.ensureDeferred
async def test_batch_webhooks_are_signed_and_carry_the_batch(tmp_path: Path) -> None:
    from foreman.webhooks import generate_secret, verify
    from tests.receiver import Receiver

    secret = generate_secret()
    receiver = Receiver()
    await receiver.listen()
    stack = await start_stack(tmp_path, _sim(), webhook_secret=secret)
    try:
        done = await create(
            stack,
            (await upload(stack, [chat_line("w1"), chat_line("w2")]))["id"],
            metadata={"webhook_url": receiver.url},
        )
        bad = await create(stack, (await upload(stack, [b"nope"]))["id"])
        assert (await settle(stack, done["id"]))["status"] == "completed"
        assert (await settle(stack, bad["id"]))["status"] == "failed"
        await until(lambda: len(receiver.deliveries) >= 1, timeout=10)
        (delivery,) = receiver.deliveries  # the failed batch named no webhook
        event = verify(secret, delivery.headers, delivery.body)
        assert event["type"] == "batch.completed"
        assert event["data"]["id"] == done["id"] and event["data"]["object"] == "batch"
        assert event["data"]["request_counts"] == {"total": 2, "completed": 2, "failed": 0}
    finally:
        await stack.stop()
        await receiver.close()


@pytest_twisted.ensureDeferred
async def test_the_configured_default_webhook_gets_failed_batches(tmp_path: Path) -> None:
    from tests.receiver import Receiver

    receiver = Receiver()
    await receiver.listen()
    stack = await start_stack(tmp_path, _sim(), batch_webhook_url=receiver.url)
    try:
        bad = await create(stack, (await upload(stack, [chat_line("x", "")]))["id"])
        ended = await settle(stack, bad["id"])
        assert ended["errors"]["data"][0]["param"] == "body.model"
        await until(lambda: len(receiver.deliveries) == 1, timeout=10)
        assert receiver.deliveries[0].event()["type"] == "batch.failed"
    finally:
        await stack.stop()
        await receiver.close()


@pytest_twisted.ensureDeferred
async def test_a_chat_waits_for_at_most_one_batch_line(tmp_path: Path) -> None:
    stack = await start_stack(tmp_path, _sim(token_rate=100.0, reply_tokens=10))
    try:
        lines = [chat_line(f"p{i}") for i in range(60)]
        batch = await create(stack, (await upload(stack, lines))["id"])
        await until(
            lambda: completed(stack, batch["id"]) >= 3,
            timeout=10,
        )
        before = completed(stack, batch["id"])
        reply = await stack.post(
            "/api/chat",
            {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}], "stream": False},
        )
        assert reply.status == 200
        assert completed(stack, batch["id"]) - before <= 1  # the one running when it came
        await stack.post(f"/v1/batches/{batch['id']}/cancel")
        await settle(stack, batch["id"])
    finally:
        await stack.stop()


@pytest_twisted.ensureDeferred
async def test_native_and_embedding_endpoints_and_usage(tmp_path: Path) -> None:
    stack = await start_stack(tmp_path, _sim())
    try:
        native = [
            {
                "custom_id": f"n{i}",
                "method": "POST",
                "url": "/api/chat",
                "body": {"model": "llama3.2", "messages": [{"role": "user", "content": "x"}]},
            }
            for i in range(3)
        ]
        embed = [
            {
                "custom_id": f"v{i}",
                "method": "POST",
                "url": "/v1/embeddings",
                "body": {"model": "nomic-embed-text", "input": ["a", "b"]},
            }
            for i in range(2)
        ]
        a = await create(stack, (await upload(stack, native))["id"], endpoint="/api/chat")
        b = await create(stack, (await upload(stack, embed))["id"], endpoint="/v1/embeddings")
        ended_a = await settle(stack, a["id"])
        ended_b = await settle(stack, b["id"])
        assert ended_a["status"] == ended_b["status"] == "completed"
        out_a = await content(stack, ended_a["output_file_id"])
        assert all(o["response"]["body"]["done"] is True for o in out_a)
        assert ended_a["usage"]["output_tokens"] == 3 * 3
        out_b = await content(stack, ended_b["output_file_id"])
        assert all(len(o["response"]["body"]["data"]) == 2 for o in out_b)
        # each line is a job too, with its place in the batch
        job_id = out_a[0]["response"]["request_id"]
        job = (await stack.get(f"/jobs/{job_id}")).json()
        assert job["batch"]["id"] == a["id"] and job["batch"]["custom_id"] == out_a[0]["custom_id"]
    finally:
        await stack.stop()


@pytest_twisted.ensureDeferred
async def test_uploads_refused_whole_leave_nothing(tmp_path: Path) -> None:
    stack = await start_stack(tmp_path, _sim(), batch_max_bytes=1000)
    try:
        big = jsonl([chat_line(f"b{i}") for i in range(40)])
        headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
        too_big = await stack.request(
            "POST",
            "/v1/files",
            raw=multipart({"purpose": "batch"}, ("file", "b", big)),
            headers=headers,
        )
        assert too_big.status == 413
        assert too_big.json()["error"]["code"] == "file_too_large"
        assert too_big.json()["error"]["type"] == "invalid_request_error"
        broken = await stack.request(
            "POST", "/v1/files", raw=multipart({"purpose": "batch"})[:-4], headers=headers
        )
        assert broken.status == 400 and "multipart" in broken.json()["error"]["message"]
        no_file = await stack.request(
            "POST", "/v1/files", raw=multipart({"purpose": "batch"}), headers=headers
        )
        assert no_file.status == 400 and "file" in no_file.json()["error"]["message"]
        not_form = await stack.post("/v1/files", {"purpose": "batch"})
        assert not_form.status == 400
        assert (await stack.get("/v1/files")).json()["data"] == []
        leftovers = list((tmp_path / "data" / "files").glob("*"))
        assert leftovers == []
    finally:
        await stack.stop()


@pytest_twisted.ensureDeferred
async def test_files_list_get_delete_and_in_use(tmp_path: Path) -> None:
    stack = await start_stack(tmp_path, _sim(token_rate=20.0, reply_tokens=10))
    try:
        first = await upload(stack, [chat_line("a")], "a.jsonl")
        second = await upload(stack, [chat_line("b")], "b.jsonl")
        listed = (await stack.get("/v1/files?limit=1")).json()
        assert [f["id"] for f in listed["data"]] == [second["id"]] and listed["has_more"]
        older = (await stack.get(f"/v1/files?limit=1&after={second['id']}")).json()
        assert [f["id"] for f in older["data"]] == [first["id"]] and not older["has_more"]
        got = (await stack.get(f"/v1/files/{first['id']}")).json()
        assert got == first
        raw = await stack.get(f"/v1/files/{first['id']}/content")
        assert raw.body == jsonl([chat_line("a")])
        batch = await create(stack, second["id"])
        in_use = await stack.request("DELETE", f"/v1/files/{second['id']}")
        assert in_use.status == 409 and in_use.json()["error"]["code"] == "file_in_use"
        gone = await stack.request("DELETE", f"/v1/files/{first['id']}")
        assert gone.json() == {"id": first["id"], "object": "file", "deleted": True}
        assert (await stack.get(f"/v1/files/{first['id']}")).status == 404
        assert (await stack.get(f"/v1/files/{first['id']}/content")).status == 404
        assert (await stack.get("/v1/batches/batch_nope")).status == 404
        await settle(stack, batch["id"])
        assert (await stack.request("DELETE", f"/v1/files/{second['id']}")).status == 200
    finally:
        await stack.stop()


@pytest_twisted.ensureDeferred
async def test_a_file_name_is_kept_safe(tmp_path: Path) -> None:
    stack = await start_stack(tmp_path, _sim())
    try:
        name = 'dir\\sub/ü "quoted".jsonl'
        body = (
            (
                f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
                f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; '
                f"filename*=UTF-8''{quote(name)}\r\n\r\n"
            ).encode()
            + jsonl([chat_line("a")])
            + f"\r\n--{BOUNDARY}--\r\n".encode()
        )
        reply = await stack.request(
            "POST",
            "/v1/files",
            raw=body,
            headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
        )
        assert reply.status == 200, reply.body
        stored = reply.json()
        assert stored["filename"] == "ü quoted.jsonl"
        got = await stack.get(f"/v1/files/{stored['id']}/content")
        disposition = got.headers.getRawHeaders(b"content-disposition")[0].decode()
        assert disposition == (
            "attachment; filename=\"_ quoted.jsonl\"; filename*=UTF-8''%C3%BC%20quoted.jsonl"
        )
    finally:
        await stack.stop()


@pytest_twisted.ensureDeferred
async def test_a_mixed_batch_and_jobs_are_drained_by_model(tmp_path: Path) -> None:
    sim = _sim(load_time=0.05, max_loaded=1)
    stack = await start_stack(tmp_path, sim)
    try:
        models = ("llama3.2", "qwen2.5")
        lines = [chat_line(f"m{i}", models[i % 2]) for i in range(16)]
        batch = await create(stack, (await upload(stack, lines))["id"])
        jobs = [
            await stack.submit(
                {"model": models[i % 2], "messages": [{"role": "user", "content": "x"}]}
            )
            for i in range(4)
        ]
        ended = await settle(stack, batch["id"])
        for job in jobs:
            await stack.wait_job(job["id"])
        assert ended["request_counts"]["completed"] == 16
        # 20 requests over two models, one resident at a time: FIFO would load 20 times
        assert sim.loads <= 4, sim.loads
    finally:
        await stack.stop()
