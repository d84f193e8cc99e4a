"""Batches and files in OpenAI's shapes (``foreman.core.batchview``).

The ``openai`` package is the judge of what parses: every object is validated
with its pydantic models in strict mode (an int must be an int, a literal one
of its values) and must carry no field the model does not know. ``openai`` is
imported inside the tests that use it: it takes seconds to import.
"""

from __future__ import annotations

import json
from typing import Any

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from foreman.core.batchlines import LineError
from foreman.core.batchstate import TERMINAL, BatchStatus
from foreman.core.batchview import (
    BatchRow,
    Counts,
    FileRow,
    Usage,
    batch_object,
    file_object,
    line_result,
)
from tests.budget import examples

T0 = 1_700_000_000.75
FILE_ID = "file-01JEXAMPLE0000000000000000"
BATCH_ID = "batch_01JEXAMPLE0000000000000000"
JOB_ID = "job_01JEXAMPLE0000000000000001"
STAMPS = (
    "in_progress_at",
    "finalizing_at",
    "completed_at",
    "failed_at",
    "expired_at",
    "cancelling_at",
    "cancelled_at",
)


def validate_file(obj: dict[str, Any]) -> Any:
    from openai.types import FileObject

    parsed = FileObject.model_validate(obj, strict=True)
    assert not parsed.model_extra, f"fields openai does not know: {parsed.model_extra}"
    assert set(obj) == set(FileObject.model_fields)  # and none it knows is left out
    return parsed


def validate_batch(obj: dict[str, Any]) -> Any:
    from openai.types import Batch

    parsed = Batch.model_validate(obj, strict=True)
    assert not parsed.model_extra, f"fields openai does not know: {parsed.model_extra}"
    assert set(Batch.model_fields) - set(obj) == {"model"}  # OpenAI's own addition
    return parsed


def batch_row(**changes: Any) -> BatchRow:
    row = BatchRow(
        id=BATCH_ID,
        status="validating",
        ending=None,
        endpoint="/v1/chat/completions",
        input_file_id=FILE_ID,
        completion_window="24h",
        metadata=None,
        webhook_url=None,
        output_file_id=None,
        error_file_id=None,
        errors=None,
        total=0,
        completed=0,
        failed=0,
        usage=None,
        created_at=T0,
        in_progress_at=None,
        finalizing_at=None,
        completed_at=None,
        failed_at=None,
        expired_at=None,
        expires_at=T0 + 86400,
        cancelling_at=None,
        cancelled_at=None,
        base_url="http://127.0.0.1:8080",
    )
    return attrs.evolve(row, **changes)


# -- files ------------------------------------------------------------------------------


@pytest.mark.parametrize("purpose", ["batch", "batch_output"])
def test_file_object_parses_as_an_openai_file(purpose: str) -> None:
    row = FileRow(FILE_ID, purpose, "input.jsonl", 1234, T0, None)
    obj = file_object(row)
    assert obj == {
        "id": FILE_ID,
        "object": "file",
        "bytes": 1234,
        "created_at": 1_700_000_000,  # whole seconds, truncated
        "filename": "input.jsonl",
        "purpose": purpose,
        "expires_at": None,  # files do not expire (ADR 0018)
        "status": "processed",
        "status_details": None,
    }
    parsed = validate_file(obj)
    assert (parsed.id, parsed.bytes, parsed.purpose) == (FILE_ID, 1234, purpose)
    assert json.loads(json.dumps(obj)) == obj


def test_file_object_does_not_show_its_batch() -> None:
    with_batch = file_object(FileRow(FILE_ID, "batch_output", "o.jsonl", 0, T0, BATCH_ID))
    assert "batch_id" not in with_batch
    assert with_batch == file_object(FileRow(FILE_ID, "batch_output", "o.jsonl", 0, T0))
    validate_file(with_batch)


@settings(deadline=None, max_examples=examples(50))
@given(
    size=st.integers(0, 2**40),
    at=st.floats(0, 4e9, allow_nan=False),
    name=st.text(max_size=40),
    purpose=st.sampled_from(["batch", "batch_output"]),
)
def test_any_file_row_parses(size: int, at: float, name: str, purpose: str) -> None:
    obj = file_object(FileRow(FILE_ID, purpose, name, size, at))
    parsed = validate_file(obj)
    assert parsed.created_at == int(at) and parsed.filename == name and parsed.bytes == size


# -- batches ------------------------------------------------------------------------------


def test_a_new_batch_parses_as_an_openai_batch() -> None:
    obj = batch_object(batch_row())
    assert obj == {
        "id": BATCH_ID,
        "object": "batch",
        "endpoint": "/v1/chat/completions",
        "input_file_id": FILE_ID,
        "completion_window": "24h",
        "status": "validating",
        "output_file_id": None,
        "error_file_id": None,
        "errors": None,
        "request_counts": {"total": 0, "completed": 0, "failed": 0},
        "usage": None,
        "metadata": None,
        "created_at": 1_700_000_000,
        "in_progress_at": None,
        "finalizing_at": None,
        "completed_at": None,
        "failed_at": None,
        "expired_at": None,
        "expires_at": 1_700_086_400,
        "cancelling_at": None,
        "cancelled_at": None,
    }
    parsed = validate_batch(obj)
    assert parsed.status == "validating" and parsed.request_counts.total == 0


def test_internal_columns_are_not_shown() -> None:
    obj = batch_object(batch_row(ending="completed", webhook_url="https://h.example/x"))
    assert not {"ending", "webhook_url", "base_url", "total", "completed", "failed"} & set(obj)


@pytest.mark.parametrize("status", list(BatchStatus))
def test_every_status_parses(status: BatchStatus) -> None:
    stamps = {name: T0 + i + 1.5 for i, name in enumerate(STAMPS)}
    row = batch_row(status=status.value, **stamps)
    obj = batch_object(row)
    parsed = validate_batch(obj)
    assert parsed.status == status.value
    for i, name in enumerate(STAMPS):
        assert obj[name] == int(T0 + i + 1.5)
        assert isinstance(obj[name], int)
        assert getattr(parsed, name) == obj[name]


def test_a_completed_batch_with_files_counts_usage_and_metadata() -> None:
    usage = Usage(120, 45)
    row = batch_row(
        status="completed",
        output_file_id="file-01JOUTPUT000000000000000000",
        error_file_id="file-01JERRORS000000000000000000",
        total=10,
        completed=8,
        failed=2,
        usage=json.dumps(usage.as_dict()),
        metadata=json.dumps({"project": "nightly", "webhook_url": "https://h.example/x"}),
        in_progress_at=T0 + 1,
        finalizing_at=T0 + 50,
        completed_at=T0 + 51,
    )
    obj = batch_object(row)
    parsed = validate_batch(obj)
    assert obj["request_counts"] == {"total": 10, "completed": 8, "failed": 2}
    assert (parsed.request_counts.completed, parsed.request_counts.failed) == (8, 2)
    assert obj["usage"] == {
        "input_tokens": 120,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": 45,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 165,
    }
    assert (parsed.usage.input_tokens, parsed.usage.total_tokens) == (120, 165)
    assert parsed.metadata == {"project": "nightly", "webhook_url": "https://h.example/x"}
    assert parsed.output_file_id == row.output_file_id
    assert parsed.error_file_id == row.error_file_id
    assert (parsed.completed_at, parsed.failed_at) == (1_700_000_051, None)


def test_a_failed_batch_shows_its_errors_as_a_list() -> None:
    errors = [
        LineError("invalid_json_line", "this line is not parseable as valid JSON", 3),
        LineError("missing_required_parameter", "body.model is required", 7, "body.model"),
        LineError("empty_file", "the input file has no requests"),
    ]
    row = batch_row(
        status="failed",
        errors=json.dumps([e.as_dict() for e in errors]),
        failed_at=T0 + 2,
    )
    obj = batch_object(row)
    assert obj["errors"] == {"object": "list", "data": [e.as_dict() for e in errors]}
    parsed = validate_batch(obj)
    assert parsed.errors.object == "list"
    assert [(e.code, e.line, e.param) for e in parsed.errors.data] == [
        ("invalid_json_line", 3, None),
        ("missing_required_parameter", 7, "body.model"),
        ("empty_file", None, None),
    ]
    assert parsed.failed_at == 1_700_000_002


def test_an_empty_error_list_is_still_a_list_and_no_errors_is_null() -> None:
    assert batch_object(batch_row(errors="[]"))["errors"] == {"object": "list", "data": []}
    assert batch_object(batch_row(errors=None))["errors"] is None
    assert batch_object(batch_row(errors=""))["errors"] is None
    validate_batch(batch_object(batch_row(errors="[]")))


def test_live_counts_override_the_stored_ones() -> None:
    row = batch_row(status="in_progress", total=5, completed=1, failed=0, in_progress_at=T0)
    assert batch_object(row)["request_counts"] == {"total": 5, "completed": 1, "failed": 0}
    live = Counts(total=5, completed=3, failed=1)
    obj = batch_object(row, live)
    assert obj["request_counts"] == {"total": 5, "completed": 3, "failed": 1}
    validate_batch(obj)
    assert live.finished == 4
    assert row.counts == Counts(5, 1, 0)
    assert Counts().as_dict() == {"total": 0, "completed": 0, "failed": 0}


def test_batch_row_fields_follow_the_store_columns() -> None:
    from foreman.store.batches import _BATCH_COLUMNS, _FILE_COLUMNS

    assert [f.name for f in attrs.fields(BatchRow)] == [
        c.strip() for c in _BATCH_COLUMNS.split(",")
    ]
    assert [f.name for f in attrs.fields(FileRow)] == [c.strip() for c in _FILE_COLUMNS.split(",")]


metadata_maps = st.dictionaries(st.text(max_size=64), st.text(max_size=64), max_size=16)
maybe_times = st.none() | st.floats(0, 4e9, allow_nan=False)
counts = st.integers(0, 50_000)
error_lists = st.lists(
    st.builds(
        LineError,
        code=st.sampled_from(["invalid_json_line", "duplicate_custom_id", "empty_file"]),
        message=st.text(max_size=30),
        line=st.none() | st.integers(1, 50_000),
        param=st.none() | st.sampled_from(["custom_id", "body", "body.model", "url"]),
    ),
    max_size=5,
)


@settings(deadline=None, max_examples=examples(100))
@given(
    status=st.sampled_from(list(BatchStatus)),
    endpoint=st.sampled_from(["/v1/chat/completions", "/v1/embeddings", "/api/generate"]),
    metadata=st.none() | metadata_maps,
    errors=st.none() | error_lists,
    usage=st.none() | st.tuples(counts, counts),
    numbers=st.tuples(counts, counts, counts),
    created=st.floats(0, 4e9, allow_nan=False),
    stamps=st.tuples(*[maybe_times] * len(STAMPS)),
    files=st.tuples(st.booleans(), st.booleans()),
)
def test_any_batch_row_parses(
    status: BatchStatus,
    endpoint: str,
    metadata: dict[str, str] | None,
    errors: list[LineError] | None,
    usage: tuple[int, int] | None,
    numbers: tuple[int, int, int],
    created: float,
    stamps: tuple[float | None, ...],
    files: tuple[bool, bool],
) -> None:
    row = batch_row(
        status=status.value,
        ending=BatchStatus.COMPLETED.value if status is BatchStatus.FINALIZING else None,
        endpoint=endpoint,
        metadata=None if metadata is None else json.dumps(metadata),
        errors=None if errors is None else json.dumps([e.as_dict() for e in errors]),
        usage=None if usage is None else json.dumps(Usage(*usage).as_dict()),
        total=numbers[0],
        completed=numbers[1],
        failed=numbers[2],
        created_at=created,
        expires_at=created + 86400,
        output_file_id=FILE_ID if files[0] else None,
        error_file_id=FILE_ID if files[1] else None,
        **dict(zip(STAMPS, stamps, strict=True)),
    )
    obj = batch_object(row)
    parsed = validate_batch(obj)
    assert parsed.id == BATCH_ID and parsed.status == status.value
    assert parsed.created_at == int(created) and parsed.expires_at == int(created + 86400)
    assert parsed.metadata == metadata
    assert (parsed.request_counts.total, parsed.request_counts.completed) == numbers[:2]
    if usage is not None:
        assert parsed.usage.total_tokens == sum(usage)
    for name, at in zip(STAMPS, stamps, strict=True):
        assert getattr(parsed, name) == (None if at is None else int(at))
    if errors is not None:
        assert [e.line for e in parsed.errors.data] == [e.line for e in errors]
    # what the API sends is JSON: the object survives a round trip unchanged
    assert json.loads(json.dumps(obj)) == obj


# -- usage ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        # OpenAI chat and completions
        ({"usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}}, (11, 7)),
        # OpenAI embeddings: prompt tokens only
        ({"object": "list", "usage": {"prompt_tokens": 5, "total_tokens": 5}}, (5, 0)),
        # OpenAI responses
        ({"usage": {"input_tokens": 9, "output_tokens": 4, "total_tokens": 13}}, (9, 4)),
        # Ollama's native chat / generate
        ({"model": "m", "prompt_eval_count": 26, "eval_count": 290, "done": True}, (26, 290)),
        # Ollama's native embed: prompt only
        ({"embeddings": [[0.1]], "prompt_eval_count": 8}, (8, 0)),
        # a cached prompt: Ollama leaves prompt_eval_count out
        ({"eval_count": 3}, (0, 3)),
        # OpenAI-style wins over native counts when both are there
        ({"usage": {"prompt_tokens": 1, "completion_tokens": 2}, "eval_count": 99}, (1, 2)),
        # a usage that is not an object falls back to the native counts
        ({"usage": None, "prompt_eval_count": 4, "eval_count": 5}, (4, 5)),
        ({"usage": [1, 2], "prompt_eval_count": 4}, (4, 0)),
        # counts that are not integers are not counted
        ({"usage": {"prompt_tokens": "11", "completion_tokens": 2.5}}, (0, 0)),
        ({"usage": {"prompt_tokens": True, "completion_tokens": False}}, (0, 0)),
        ({"prompt_eval_count": None, "eval_count": "3"}, (0, 0)),
        ({}, (0, 0)),
    ],
)
def test_usage_add_reads_both_dialects(body: dict[str, Any], expected: tuple[int, int]) -> None:
    added = Usage(100, 200).add(body)
    assert (added.input_tokens, added.output_tokens) == (100 + expected[0], 200 + expected[1])
    assert Usage().add(body) == Usage(*expected)


@pytest.mark.parametrize("body", [None, "text", 42, [{"usage": {"prompt_tokens": 1}}], b"{}"])
def test_usage_add_ignores_what_is_not_an_object(body: Any) -> None:
    before = Usage(3, 4)
    assert before.add(body) is before


def test_usage_accumulates_without_changing_the_original() -> None:
    start = Usage()
    total = start
    for body in (
        {"usage": {"prompt_tokens": 1, "completion_tokens": 2}},
        {"prompt_eval_count": 10, "eval_count": 20},
        None,
        {"usage": {"input_tokens": 100, "output_tokens": 200}},
    ):
        total = total.add(body)
    assert total == Usage(111, 222)
    assert start == Usage(0, 0)


def test_usage_as_dict_parses_as_openai_batch_usage() -> None:
    from openai.types.batch_usage import BatchUsage

    obj = Usage(7, 5).as_dict()
    assert obj["total_tokens"] == 12
    parsed = BatchUsage.model_validate(obj, strict=True)
    assert not parsed.model_extra
    assert set(obj) == set(BatchUsage.model_fields)
    assert (parsed.input_tokens, parsed.output_tokens, parsed.total_tokens) == (7, 5, 12)
    assert parsed.input_tokens_details.cached_tokens == 0
    assert parsed.output_tokens_details.reasoning_tokens == 0


# -- output lines ------------------------------------------------------------------------------


def result(**kw: Any) -> Any:
    args: dict[str, Any] = {
        "job_id": JOB_ID,
        "custom_id": "req-7",
        "endpoint": "/v1/chat/completions",
        "state": "done",
        "error_code": None,
        "error_message": None,
        "error_status": None,
        "body": None,
        "ending": BatchStatus.COMPLETED,
    }
    args.update(kw)
    return line_result(**args)


REQUEST_ID = "batch_req_01JEXAMPLE0000000000000001"


def test_a_done_line_is_a_200_response_in_the_output_file() -> None:
    body = {"id": "chatcmpl-1", "object": "chat.completion", "choices": []}
    out = result(body=body)
    assert out.error is False
    assert out.line == {
        "id": REQUEST_ID,
        "custom_id": "req-7",
        "response": {"status_code": 200, "request_id": JOB_ID, "body": body},
        "error": None,
    }
    assert list(out.line) == ["id", "custom_id", "response", "error"]
    assert json.loads(json.dumps(out.line)) == out.line


@pytest.mark.parametrize("ending", [BatchStatus.COMPLETED, BatchStatus.EXPIRED])
def test_a_done_line_stays_done_whatever_the_ending(ending: BatchStatus) -> None:
    out = result(body={"response": "ok"}, ending=ending, endpoint="/api/generate")
    assert out.error is False and out.line["response"]["status_code"] == 200


@pytest.mark.parametrize(
    ("endpoint", "status", "kind"),
    [
        ("/v1/chat/completions", 404, "invalid_request_error"),
        ("/v1/completions", 400, "invalid_request_error"),
        ("/v1/embeddings", 499, "invalid_request_error"),
        ("/v1/responses", 500, "server_error"),
        ("/v1/chat/completions", 503, "server_error"),
    ],
)
def test_a_target_refusal_keeps_its_status_in_openai_dialect(
    endpoint: str, status: int, kind: str
) -> None:
    out = result(
        endpoint=endpoint,
        state="failed",
        error_code="target_error",
        error_message="model 'nope' not found",
        error_status=status,
    )
    assert out.error is True
    assert out.line == {
        "id": REQUEST_ID,
        "custom_id": "req-7",
        "response": {
            "status_code": status,
            "request_id": JOB_ID,
            "body": {"error": {"message": "model 'nope' not found", "type": kind, "code": None}},
        },
        "error": None,
    }


@pytest.mark.parametrize("endpoint", ["/api/chat", "/api/generate", "/api/embed"])
def test_a_target_refusal_keeps_its_status_in_ollama_dialect(endpoint: str) -> None:
    out = result(
        endpoint=endpoint,
        state="failed",
        error_code="target_error",
        error_message="model 'nope' not found",
        error_status=404,
    )
    assert out.error is True
    assert out.line["response"] == {
        "status_code": 404,
        "request_id": JOB_ID,
        "body": {"error": "model 'nope' not found"},
    }
    assert out.line["error"] is None


@pytest.mark.parametrize(
    ("endpoint", "body"),
    [
        (
            "/v1/chat/completions",
            {
                "error": {
                    "message": "the target answered HTTP 400",
                    "type": "invalid_request_error",
                    "code": None,
                }
            },
        ),
        ("/api/chat", {"error": "the target answered HTTP 400"}),
    ],
)
def test_a_refusal_without_a_message_says_the_status(endpoint: str, body: Any) -> None:
    out = result(endpoint=endpoint, state="failed", error_status=400)
    assert out.line["response"]["body"] == body


def test_a_refusal_parses_as_an_openai_error_body() -> None:
    """What the client's error classes read: ``error.message`` and ``error.type``."""
    from openai.types.shared import ErrorObject

    out = result(state="failed", error_status=422, error_message="bad options")
    parsed = ErrorObject.model_validate(out.line["response"]["body"]["error"])
    assert (parsed.message, parsed.type, parsed.code) == (
        "bad options",
        "invalid_request_error",
        None,
    )


@pytest.mark.parametrize(
    "ending", [BatchStatus.COMPLETED, BatchStatus.CANCELLED, BatchStatus.EXPIRED]
)
def test_a_failure_without_status_is_an_error_with_the_job_code(ending: BatchStatus) -> None:
    out = result(
        state="failed",
        error_code="too_many_attempts",
        error_message="the target reset the connection 3 times",
        ending=ending,
    )
    assert out.error is True
    assert out.line == {
        "id": REQUEST_ID,
        "custom_id": "req-7",
        "response": None,
        "error": {
            "code": "too_many_attempts",
            "message": "the target reset the connection 3 times",
        },
    }


def test_a_failure_without_code_or_message() -> None:
    out = result(state="failed")
    assert out.line["error"] == {"code": "failed", "message": ""}
    assert out.line["response"] is None


def test_a_line_stopped_by_a_cancel_is_batch_cancelled() -> None:
    out = result(state="cancelled", ending=BatchStatus.CANCELLED, body={"ignored": True})
    assert out.error is True
    assert out.line == {
        "id": REQUEST_ID,
        "custom_id": "req-7",
        "response": None,
        "error": {
            "code": "batch_cancelled",
            "message": "the batch was cancelled before this request finished",
        },
    }


def test_a_line_stopped_by_the_window_is_batch_expired() -> None:
    out = result(state="cancelled", ending=BatchStatus.EXPIRED)
    assert out.error is True
    assert out.line["response"] is None
    assert out.line["error"] == {
        "code": "batch_expired",
        "message": "the batch's completion window passed before this request ran",
    }


@settings(deadline=None, max_examples=examples(100))
@given(
    state=st.sampled_from(["done", "failed", "cancelled"]),
    status=st.none() | st.integers(400, 599),
    ending=st.sampled_from(sorted(TERMINAL - {BatchStatus.FAILED})),
    endpoint=st.sampled_from(["/v1/chat/completions", "/api/generate"]),
    code=st.none() | st.sampled_from(["target_error", "timeout", "interrupted"]),
    message=st.none() | st.text(max_size=20),
)
def test_every_line_has_one_shape_and_exactly_one_of_response_and_error(
    state: str,
    status: int | None,
    ending: BatchStatus,
    endpoint: str,
    code: str | None,
    message: str | None,
) -> None:
    out = result(
        state=state,
        error_status=status if state == "failed" else None,
        ending=ending,
        endpoint=endpoint,
        error_code=code,
        error_message=message,
        body={"x": 1} if state == "done" else None,
    )
    line = out.line
    assert set(line) == {"id", "custom_id", "response", "error"}
    assert line["id"] == REQUEST_ID and line["custom_id"] == "req-7"
    assert (line["response"] is None) != (line["error"] is None)
    assert out.error == (state != "done")
    if line["response"] is not None:
        assert line["response"]["request_id"] == JOB_ID
        assert (line["response"]["status_code"] >= 400) == out.error
    else:
        assert set(line["error"]) == {"code", "message"}
        assert isinstance(line["error"]["code"], str) and line["error"]["code"]
        assert isinstance(line["error"]["message"], str)
    json.dumps(line)
