"""OpenAI's Batch API on foreman, driven by the real ``openai`` client (only base_url changed).

The client blocks, so each use runs in a thread while the reactor serves
foreman and the simulator.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

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
