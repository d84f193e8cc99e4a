"""Checking a batch input file line by line (``foreman.core.batchlines``).

Each error code is shown on a line that is not the first (after a valid line
and a blank one), so the test also checks the line number it names; the
property tests feed whole files of valid lines, and of arbitrary bytes.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from foreman.core.batchlines import (
    BATCH_ENDPOINTS,
    CUSTOM_ID_LIMIT,
    EMBEDDING_INPUTS_LIMIT,
    MAX_ERRORS,
    BatchLine,
    LineChecker,
    LineError,
    endpoint_problem,
)
from foreman.core.logtext import MODEL_NAME_LIMIT
from tests.budget import examples

CHAT = "/v1/chat/completions"
LIMIT = 4096
DROP = object()  # a key to leave out of the line


def line(
    custom_id: object = "req-1",
    *,
    method: object = "POST",
    url: object = CHAT,
    body: object = None,
    model: object = "llama3.2",
    **extra: Any,
) -> bytes:
    """One input line; ``DROP`` leaves a key out."""
    if body is None:
        body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
        if model is DROP:
            del body["model"]  # type: ignore[attr-defined]
    doc = {"custom_id": custom_id, "method": method, "url": url, "body": body, **extra}
    return json.dumps({k: v for k, v in doc.items() if v is not DROP}).encode()


def checker(endpoint: str = CHAT, max_lines: int = 1000, line_limit: int = LIMIT) -> LineChecker:
    return LineChecker(endpoint, max_lines, line_limit)


def run(c: LineChecker, lines: list[bytes]) -> list[BatchLine | None]:
    return [c.check(raw) for raw in lines]


# -- endpoint_problem ---------------------------------------------------------------


@pytest.mark.parametrize("endpoint", BATCH_ENDPOINTS)
def test_every_batch_endpoint_is_accepted(endpoint: str) -> None:
    assert endpoint_problem(endpoint) is None


def test_the_batch_endpoints() -> None:
    assert set(BATCH_ENDPOINTS) == {
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/responses",
        "/api/chat",
        "/api/generate",
        "/api/embed",
    }


@pytest.mark.parametrize("endpoint", [None, "", 5, b"/v1/embeddings", ["/api/chat"]])
def test_a_missing_or_non_string_endpoint(endpoint: object) -> None:
    assert endpoint_problem(endpoint) == "endpoint is required and must be a string"


@pytest.mark.parametrize(
    "endpoint", ["/v1/moderations", "/v1/images/generations", "/v1/videos", "/v1/chat"]
)
def test_an_openai_endpoint_ollama_does_not_serve(endpoint: str) -> None:
    problem = endpoint_problem(endpoint)
    assert problem is not None
    assert problem.startswith(f"endpoint {endpoint} is not served by Ollama; use one of: ")
    assert all(e in problem for e in BATCH_ENDPOINTS)


@pytest.mark.parametrize(
    "endpoint", ["/api/pull", "/api/tags", "chat/completions", "/v1", "/V1/chat/completions"]
)
def test_anything_else_is_not_an_endpoint(endpoint: str) -> None:
    problem = endpoint_problem(endpoint)
    assert problem == f"endpoint must be one of: {', '.join(BATCH_ENDPOINTS)}"


# -- valid lines ----------------------------------------------------------------------


def test_a_valid_line_becomes_a_batch_line() -> None:
    c = checker()
    body = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}], "seed": 1}
    raw = json.dumps({"custom_id": "a", "method": "POST", "url": CHAT, "body": body}).encode()
    found = c.check(raw)
    assert found == BatchLine(line=1, custom_id="a", model="llama3.2", body=body)
    assert (c.lines, c.error_count, c.errors) == (1, 0, [])
    assert c.finish() == []


def test_a_line_with_its_newline_or_crlf_is_the_same_line() -> None:
    c = checker()
    a, b, d = run(c, [line("a") + b"\n", line("b") + b"\r\n", line("c")])
    assert a is not None and b is not None and d is not None
    assert [x.custom_id for x in (a, b, d)] == ["a", "b", "c"]
    assert [x.line for x in (a, b, d)] == [1, 2, 3]
    assert c.finish() == []


def test_unknown_keys_are_ignored_and_the_body_is_kept_whole() -> None:
    c = checker()
    body = {"model": "m", "messages": [], "options": {"num_ctx": 8}, "extra": [1, {"x": None}]}
    found = c.check(line("x", body=body, note="ignored", priority=9))
    assert found == BatchLine(1, "x", "m", body)


@pytest.mark.parametrize("endpoint", BATCH_ENDPOINTS)
def test_every_endpoint_takes_its_own_url(endpoint: str) -> None:
    c = checker(endpoint)
    found = c.check(line("a", url=endpoint, body={"model": "m", "input": "x"}))
    assert found == BatchLine(1, "a", "m", {"model": "m", "input": "x"})


def test_blank_lines_are_skipped_but_counted_in_line_numbers() -> None:
    c = checker()
    found = run(c, [b"", line("a"), b"\n", b"  \t \r\n", line("b"), b"\r\n"])
    assert [None if f is None else (f.line, f.custom_id) for f in found] == [
        None,
        (2, "a"),
        None,
        None,
        (5, "b"),
        None,
    ]
    assert c.lines == 2  # requests, not physical lines
    # an error after blank lines names the physical line
    c.check(b"")
    c.check(b"{oops")
    assert c.errors == [
        LineError("invalid_json_line", "this line is not parseable as valid JSON", 8, None)
    ]


def test_custom_id_at_the_length_limit_is_accepted() -> None:
    c = checker(line_limit=10_000)
    found = c.check(line("x" * CUSTOM_ID_LIMIT))
    assert found is not None and found.custom_id == "x" * CUSTOM_ID_LIMIT


def test_model_name_at_the_byte_limit_is_accepted() -> None:
    c = checker()
    model = "m" * MODEL_NAME_LIMIT
    found = c.check(line("a", model=model))
    assert found is not None and found.model == model


# -- each error, with its line number and param ---------------------------------------

LONG_MODEL = "m" * (MODEL_NAME_LIMIT + 1)
WIDE_MODEL = "é" * (MODEL_NAME_LIMIT // 2 + 1)  # fewer characters than bytes


@pytest.mark.parametrize(
    ("raw", "code", "param", "message"),
    [
        (b"{not json", "invalid_json_line", None, "this line is not parseable as valid JSON"),
        (b'{"custom_id": "a",', "invalid_json_line", None, "not parseable"),
        (b"\xff\xfe\x00garbage", "invalid_json_line", None, "not parseable"),
        (b"[" * 100_000, "invalid_json_line", None, "not parseable"),  # RecursionError
        (b"1" * 5000, "invalid_json_line", None, "not parseable"),  # int digits limit
        (b'"a string"', "invalid_json_line", None, "this line is not a JSON object"),
        (b"[1, 2]", "invalid_json_line", None, "this line is not a JSON object"),
        (b"null", "invalid_json_line", None, "this line is not a JSON object"),
        (line(DROP), "missing_required_parameter", "custom_id", "custom_id is required"),
        (line(None), "missing_required_parameter", "custom_id", "custom_id is required"),
        (line(""), "missing_required_parameter", "custom_id", "custom_id is required"),
        (line(7), "missing_required_parameter", "custom_id", "custom_id is required"),
        (line(["a"]), "missing_required_parameter", "custom_id", "custom_id is required"),
        (
            line("x" * (CUSTOM_ID_LIMIT + 1)),
            "invalid_custom_id",
            "custom_id",
            f"custom_id is over {CUSTOM_ID_LIMIT} characters",
        ),
        (line("b", method="GET"), "invalid_method", "method", "method must be POST"),
        (line("b", method="post"), "invalid_method", "method", "method must be POST"),
        (line("b", method=DROP), "invalid_method", "method", "method must be POST"),
        (
            line("b", url="/v1/completions"),
            "mismatched_endpoint",
            "url",
            f"url '/v1/completions' does not match the batch's endpoint {CHAT}",
        ),
        (line("b", url=DROP), "mismatched_endpoint", "url", "url None does not match"),
        (line("b", url=CHAT + "/"), "mismatched_endpoint", "url", "does not match"),
        (line("b", body=DROP), "missing_required_parameter", "body", "body is required"),
        (line("b", body=[1]), "missing_required_parameter", "body", "body is required"),
        (line("b", body="hi"), "missing_required_parameter", "body", "body is required"),
        (line("b", model=DROP), "missing_required_parameter", "body.model", "body.model is"),
        (line("b", model=""), "missing_required_parameter", "body.model", "body.model is"),
        (line("b", model=3), "missing_required_parameter", "body.model", "body.model is"),
        (line("b", model=None), "missing_required_parameter", "body.model", "body.model is"),
        (
            line("b", model=LONG_MODEL),
            "invalid_model",
            "body.model",
            f"model name is {MODEL_NAME_LIMIT + 1} bytes",
        ),
        (
            line("b", model=WIDE_MODEL),
            "invalid_model",
            "body.model",
            f"model name is {2 * len(WIDE_MODEL)} bytes",
        ),
    ],
)
def test_each_error_names_its_line_and_param(
    raw: bytes, code: str, param: str | None, message: str
) -> None:
    c = checker(line_limit=10**6)
    assert c.check(line("a")) is not None
    assert c.check(b"\n") is None
    assert c.check(raw) is None  # a bad line is never a request
    assert c.error_count == 1
    [error] = c.errors
    assert (error.code, error.line, error.param) == (code, 3, param)
    assert message in error.message
    assert error.as_dict() == {"code": code, "message": error.message, "param": param, "line": 3}
    assert c.lines == 2
    assert c.finish() == [error]  # no empty_file: there were requests


def test_a_duplicate_custom_id_is_reported_on_the_later_line() -> None:
    c = checker()
    first, _, again, other = run(c, [line("a"), line("b"), line("a"), line("c")])
    assert first is not None and first.custom_id == "a" and first.line == 1
    assert again is None
    assert other is not None and other.line == 4
    assert c.errors == [
        LineError(
            "duplicate_custom_id",
            "the custom_id 'a' is used by an earlier line",
            3,
            "custom_id",
        )
    ]


def test_custom_ids_are_compared_exactly() -> None:
    c = checker()
    found = run(c, [line("a"), line("A"), line("a "), line(" a")])
    assert all(f is not None for f in found)
    assert c.errors == []


def test_too_many_requests_is_reported_once_on_the_first_line_over() -> None:
    c = checker(max_lines=2)
    found = run(c, [line("a"), b"", line("b"), line("c"), line("d"), line("e")])
    assert c.error_count == 1
    assert c.errors == [
        LineError(
            "too_many_requests",
            "the file has more than 2 requests (FOREMAN_BATCH_MAX_LINES)",
            4,
            None,
        )
    ]
    assert c.lines == 5
    # the lines over the limit are still checked (their own errors are reported too)
    assert [f.custom_id for f in found if f is not None] == ["a", "b", "c", "d", "e"]
    c.check(b"{bad")
    assert [(e.code, e.line) for e in c.errors] == [
        ("too_many_requests", 4),
        ("invalid_json_line", 7),
    ]


def test_the_line_over_the_limit_can_carry_a_second_error() -> None:
    c = checker(max_lines=1)
    c.check(line("a"))
    c.check(b"nope")
    assert [(e.code, e.line) for e in c.errors] == [
        ("too_many_requests", 2),
        ("invalid_json_line", 2),
    ]
    assert c.error_count == 2


def test_line_too_long() -> None:
    exact = line("a")
    c = checker(line_limit=len(exact))
    assert c.check(exact) is not None  # at the limit: fine
    longer = line("bb")
    assert len(longer) == len(exact) + 1
    assert c.check(longer) is None
    assert c.check(b"x" * (len(exact) + 10)) is None  # too long is checked before JSON
    assert c.errors == [
        LineError("line_too_long", f"the line is over {len(exact)} bytes", 2, None),
        LineError("line_too_long", f"the line is over {len(exact)} bytes", 3, None),
    ]
    # a line refused for being too long does not claim its custom_id
    c2 = checker(line_limit=len(line("bb")))
    assert c2.check(line("bb", note="padding")) is None
    assert c2.check(line("bb")) is not None
    assert [e.code for e in c2.errors] == ["line_too_long"]


@pytest.mark.parametrize("endpoint", ["/v1/embeddings", "/api/embed"])
def test_too_many_inputs_in_an_embedding_batch(endpoint: str) -> None:
    half = EMBEDDING_INPUTS_LIMIT // 2
    c = checker(endpoint, line_limit=10**7)

    def embed(custom_id: str, given: object) -> bytes:
        return line(custom_id, url=endpoint, body={"model": "e", "input": given})

    assert c.check(embed("a", ["x"] * half)) is not None
    assert c.check(embed("b", ["x"] * (half - 1))) is not None
    assert c.check(embed("c", "one string")) is not None  # a string is one input
    assert c.errors == []  # exactly at the limit
    assert c.check(embed("d", "one more")) is None
    assert c.check(embed("e", ["x"])) is None  # and every later one
    assert c.errors == [
        LineError(
            "too_many_inputs",
            f"an embedding batch may hold at most {EMBEDDING_INPUTS_LIMIT} inputs",
            4,
            "body.input",
        ),
        LineError(
            "too_many_inputs",
            f"an embedding batch may hold at most {EMBEDDING_INPUTS_LIMIT} inputs",
            5,
            "body.input",
        ),
    ]


def test_a_body_without_input_counts_as_one() -> None:
    c = checker("/v1/embeddings", line_limit=10**7)
    big = ["x"] * (EMBEDDING_INPUTS_LIMIT - 1)
    assert c.check(line("a", url="/v1/embeddings", body={"model": "e", "input": big})) is not None
    assert c.check(line("b", url="/v1/embeddings", body={"model": "e"})) is not None
    assert c.check(line("c", url="/v1/embeddings", body={"model": "e", "input": "x"})) is None
    assert [e.code for e in c.errors] == ["too_many_inputs"]


def test_inputs_are_not_counted_outside_embedding_batches() -> None:
    c = checker("/v1/completions", line_limit=10**7)
    many = ["x"] * (EMBEDDING_INPUTS_LIMIT + 1)
    body = {"model": "m", "prompt": "p", "input": many}
    assert c.check(line("a", url="/v1/completions", body=body)) is not None
    assert c.errors == []


@pytest.mark.parametrize("lines", [[], [b""], [b"\n", b"  ", b"\r\n"]])
def test_a_file_without_requests_is_empty(lines: list[bytes]) -> None:
    c = checker()
    run(c, lines)
    errors = c.finish()
    assert errors == [LineError("empty_file", "the input file has no requests", None, None)]
    assert c.error_count == 1
    assert errors[0].as_dict() == {
        "code": "empty_file",
        "message": "the input file has no requests",
        "param": None,
        "line": None,
    }


def test_a_file_of_bad_lines_is_not_also_empty() -> None:
    c = checker()
    run(c, [b"{", b""])
    assert [e.code for e in c.finish()] == ["invalid_json_line"]


def test_at_most_max_errors_are_kept_but_all_are_counted() -> None:
    c = checker()
    bad = 2 * MAX_ERRORS + 17
    run(c, [b"{bad"] * bad + [line("a")])
    assert c.error_count == bad
    assert len(c.errors) == MAX_ERRORS
    assert [e.line for e in c.errors] == list(range(1, MAX_ERRORS + 1))  # the first ones
    errors = c.finish()
    assert errors == c.errors and errors is not c.errors  # a copy
    errors.clear()
    assert len(c.errors) == MAX_ERRORS
    assert MAX_ERRORS == 100  # ADR 0018: "at most 100 errors naming the line"


# -- properties ---------------------------------------------------------------------

custom_ids = st.text(min_size=1, max_size=40)
models = st.text(min_size=1, max_size=MODEL_NAME_LIMIT // 4)  # <= 4 bytes a character
scalars = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=10)
json_values = (
    scalars
    | st.lists(scalars, max_size=3)
    | st.dictionaries(st.text(max_size=5), scalars | st.lists(scalars, max_size=2), max_size=3)
)
extras = st.dictionaries(
    st.text(max_size=8).filter(lambda k: k != "model"), json_values, max_size=3
)


@st.composite
def valid_files(draw: st.DrawFn) -> tuple[str, list[tuple[str, dict[str, Any]]], list[bool]]:
    endpoint = draw(st.sampled_from(BATCH_ENDPOINTS))
    ids = draw(st.lists(custom_ids, unique=True, max_size=12))
    requests = [(i, {**draw(extras), "model": draw(models)}) for i in ids]
    blanks = draw(st.lists(st.booleans(), min_size=len(ids), max_size=len(ids)))
    return endpoint, requests, blanks


@settings(deadline=None, max_examples=examples(200))
@given(valid_files())
def test_valid_lines_with_unique_ids_give_one_batch_line_each_in_order(
    case: tuple[str, list[tuple[str, dict[str, Any]]], list[bool]],
) -> None:
    endpoint, requests, blanks = case
    c = checker(endpoint, max_lines=len(requests) or 1, line_limit=10**6)
    found: list[BatchLine] = []
    expected_numbers: list[int] = []
    number = 0
    for (custom_id, body), blank in zip(requests, blanks, strict=True):
        if blank:
            number += 1
            assert c.check(b"\n") is None
        number += 1
        expected_numbers.append(number)
        raw = json.dumps({"custom_id": custom_id, "method": "POST", "url": endpoint, "body": body})
        result = c.check(raw.encode() + b"\n")
        assert result is not None, c.errors
        found.append(result)
    assert c.errors == [] and c.error_count == 0
    assert [f.custom_id for f in found] == [i for i, _ in requests]
    assert [f.body for f in found] == [b for _, b in requests]
    assert [f.model for f in found] == [b["model"] for _, b in requests]
    assert [f.line for f in found] == expected_numbers
    assert c.lines == len(requests)
    if requests:
        assert c.finish() == []
    else:
        assert [e.code for e in c.finish()] == ["empty_file"]


@settings(deadline=None, max_examples=examples(200))
@given(st.lists(st.binary(max_size=60) | st.builds(line, custom_ids), max_size=40))
def test_any_bytes_give_a_line_or_errors_and_never_raise(lines: list[bytes]) -> None:
    c = checker(max_lines=100, line_limit=400)
    errors_before = 0
    found = []
    for number, raw in enumerate(lines, start=1):
        result = c.check(raw)
        if result is not None:
            found.append(result)
            assert result.line == number
            assert c.error_count == errors_before  # a request is a line without error
        elif raw.strip():
            assert c.error_count > errors_before
        errors_before = c.error_count
    errors = c.finish()
    assert len(errors) <= MAX_ERRORS and c.error_count >= len(errors)
    assert all(e.line is None or 1 <= e.line <= len(lines) for e in errors)
    assert [e.line for e in errors if e.line is not None] == sorted(
        e.line for e in errors if e.line is not None
    )
    ids = [f.custom_id for f in found]
    assert len(ids) == len(set(ids))
    assert (errors == []) == (c.error_count == 0)
