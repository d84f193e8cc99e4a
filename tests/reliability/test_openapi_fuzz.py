"""Fuzzing foreman's own routes from its ``GET /openapi.json`` with schemathesis.

A real ``twistd -n foreman --simulate`` serves the document; schemathesis
generates valid and invalid requests for every operation in it and runs all
its checks on each answer: never a 5xx; status codes, content types, headers
and bodies as documented; invalid input refused with a 4xx.

The operations are listed at collection time from ``foreman.web.openapi`` (for one
test per operation and mode) and looked up at run time in the document the
daemon serves, so an operation missing from what is served fails. A second
daemon with ``FOREMAN_API_TOKENS`` set is fuzzed without a token: 401 as
documented everywhere but ``/healthz`` and ``/readyz``.

Only inputs that are not a test of foreman are filtered out of the generated
cases (see ``_install_hooks``); the mismatches this test found earlier are
fixed and pinned by their own tests below.

schemathesis' own pytest integration (``from_fixture``) does not work with
pytest 9 (it reads ``Function._nodeid``), so the hypothesis strategies are
used directly. Generated ``webhook_url`` values that name a host are pointed
at a closed loopback port before sending: foreman never resolves or calls a
host outside this machine. The hypothesis seed is printed; replay a run with
``RELIABILITY_SEED=<n>``.
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import requests
import schemathesis
from attrs import frozen
from hypothesis import HealthCheck, given, seed, settings
from schemathesis import GenerationMode

from foreman.web.openapi import openapi_document
from tests.budget import examples
from tests.proc import spawn, wait_ready

TOKEN = "reliability-token"
LOOPBACK_HOOK = "127.0.0.1:9"  # discard port, nothing listens: deliveries are refused
EXAMPLES = examples(50)
_METHODS = ("get", "put", "post", "delete", "patch", "head", "options")


def _negatable(parameters: list[dict[str, Any]], operation: dict[str, Any]) -> bool:
    """Can the operation's input violate its schema on the wire at all?

    A body can; so can a query or header parameter with a type or a
    constraint. A plain string (and any path segment) cannot: every value is one.
    """
    if "requestBody" in operation:
        return True
    return any(p["in"] != "path" and p["schema"] != {"type": "string"} for p in parameters)


OPERATIONS = [
    f"{method.upper()} {path}"
    for path, item in openapi_document()["paths"].items()
    for method in item
    if method in _METHODS
]


def _cases() -> list[Any]:
    cases = []
    for path, item in openapi_document()["paths"].items():
        for method, operation in item.items():
            if method not in _METHODS:
                continue
            label = f"{method.upper()} {path}"
            cases.append(pytest.param(label, GenerationMode.POSITIVE, id=f"{label}-positive"))
            parameters = item.get("parameters", []) + operation.get("parameters", [])
            if _negatable(parameters, operation):
                cases.append(pytest.param(label, GenerationMode.NEGATIVE, id=f"{label}-negative"))
    return cases


SEED = int(os.environ.get("RELIABILITY_SEED") or random.SystemRandom().randrange(2**32))


def _loopback_webhook(body: Any) -> Any:
    """A job's ``webhook_url`` and a batch's ``metadata.webhook_url``, on a closed port."""
    if isinstance(body, dict) and isinstance(body.get("webhook_url"), str):
        parts = urlsplit(body["webhook_url"])
        if parts.scheme.lower() in ("http", "https") and parts.netloc:
            body = {**body, "webhook_url": urlunsplit(parts._replace(netloc=LOOPBACK_HOOK))}
    if isinstance(body, dict) and isinstance(body.get("metadata"), dict):
        body = {**body, "metadata": _loopback_webhook(body["metadata"])}
    return body


@frozen
class Api:
    url: str
    schema: Any
    session: requests.Session


def _install_hooks(schema: Any) -> None:
    @schema.hook
    def map_body(context: Any, body: Any) -> Any:
        return _loopback_webhook(body)

    @schema.hook
    def filter_query(context: Any, query: Any) -> bool:
        # an object or array in a form-style query is sent as other keys or
        # repeated keys, not as a wrong value: not a test of foreman. An empty
        # value (?limit=) means "not given" to foreman, on purpose.
        return not any(isinstance(v, (dict, list)) or v == "" for v in (query or {}).values())

    @schema.hook
    def map_query(context: Any, query: Any) -> Any:
        # a long-poll's documented wait (up to 300 s) is a valid value, but one
        # that holds the fuzzer: valid waits are cut to half a second
        if isinstance(query, dict) and isinstance(query.get("wait"), (int, float)):
            query = {**query, "wait": min(query["wait"], 0.5)}
        return query

    @schema.hook
    def filter_body(context: Any, body: Any) -> bool:
        # the upload's extra form fields are ignored by foreman, but requests
        # (urllib3) writes their names the WHATWG way, a backslash unescaped,
        # while foreman reads RFC quoted-pairs: a generated name ending in "\"
        # comes out as `name="x\"`, ambiguous on the wire, not a test of foreman
        if context.operation.label == "POST /v1/files" and isinstance(body, dict):
            return not any("\\" in str(name) for name in body)
        return True


@contextmanager
def _served(data: Path, env: dict[str, str], headers: dict[str, str]) -> Iterator[Api]:
    """A ``--simulate`` daemon and the schema it serves; checks it ends well."""
    env = {"FOREMAN_WEBHOOK_ALLOW_PRIVATE": "true", **env}
    proc = spawn(data, env=env, args=("--simulate",))
    session = requests.Session()
    try:
        url = wait_ready(proc)
        schema = schemathesis.openapi.from_url(url + "/openapi.json", headers=headers)
        _install_hooks(schema)
        yield Api(url, schema, session)
        assert proc.popen.poll() is None, proc.log()
        assert proc.stop() == 0, proc.log()
        assert "Traceback" not in proc.log(), proc.log()
        assert _webhook_hosts(data / "foreman.sqlite3") <= {"127.0.0.1"}
    finally:
        session.close()
        proc.kill()


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    with _served(tmp_path_factory.mktemp("openapi") / "data", {}, {}) as served:
        yield served


@pytest.fixture(scope="module")
def locked_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """A daemon with FOREMAN_API_TOKENS set; the fuzzer sends no token."""
    data = tmp_path_factory.mktemp("openapi-locked") / "data"
    token = {"Authorization": f"Bearer {TOKEN}"}
    with _served(data, {"FOREMAN_API_TOKENS": TOKEN}, token) as served:
        yield served


def _webhook_hosts(db: Path) -> set[str | None]:
    conn = sqlite3.connect(str(db))
    try:
        rows = conn.execute("SELECT DISTINCT webhook_url FROM jobs WHERE webhook_url IS NOT NULL")
        return {urlsplit(r[0]).hostname for r in rows}
    finally:
        conn.close()


def _fuzz(api: Api, label: str, mode: GenerationMode, examples: int) -> set[int]:
    """Run schemathesis' checks on generated requests; returns the statuses seen."""
    print(f"hypothesis seed: {SEED} (replay with RELIABILITY_SEED={SEED})")
    operation = api.schema.find_operation_by_label(label)
    assert operation is not None, f"{label} is not in the served /openapi.json"

    @seed(SEED)
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        print_blob=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def check(case: Any) -> None:
        seen.add(case.call_and_validate(session=api.session, timeout=30).status_code)

    seen: set[int] = set()
    try:
        check()
    finally:
        if label in ("POST /queue/pause", "POST /queue/drain"):
            api.session.post(api.url + "/queue/resume", timeout=10)  # the next ones run
    return seen


@pytest.mark.parametrize(("label", "mode"), _cases())
def test_operation_answers_as_documented(api: Api, label: str, mode: GenerationMode) -> None:
    _fuzz(api, label, mode, EXAMPLES)


@pytest.mark.parametrize("label", OPERATIONS)
def test_without_the_token_answers_as_documented(locked_api: Api, label: str) -> None:
    """401 where a token is needed, the usual answer where none is (health, readiness)."""
    seen = _fuzz(locked_api, label, GenerationMode.POSITIVE, 10)
    if label in ("GET /healthz", "GET /readyz"):
        assert seen == {200}, seen
    else:
        assert seen == {401}, seen


def test_empty_idempotency_key_is_refused(api: Api) -> None:
    body: dict[str, Any] = {"request": {"model": "llama3.2", "messages": []}}
    response = api.session.post(
        api.url + "/jobs", json=body, headers={"Idempotency-Key": ""}, timeout=30
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "invalid_header"


def test_integral_float_priority_is_accepted(api: Api) -> None:
    body: dict[str, Any] = {"request": {"model": "llama3.2", "messages": []}, "priority": 417.0}
    response = api.session.post(api.url + "/jobs", json=body, timeout=30)
    assert response.status_code == 202, response.text
    assert response.json()["priority"] == 417


# -- OpenAI's Batch API: real objects against the document
#
# The fuzzer never names a file or batch that exists (generated ids are
# random), so what it checks of /v1/files and /v1/batches is mostly the
# upload, the lists and the errors. Here one batch runs to its end and every
# answer on the way is validated against the served document: the File,
# Batch (request_counts, usage, timestamps), lists and deletion schemas.


def _documented(api: Api, label: str, response: requests.Response) -> requests.Response:
    operation = api.schema.find_operation_by_label(label)
    assert operation is not None, f"{label} is not in the served /openapi.json"
    operation.validate_response(response)
    return response


def _upload(api: Api, lines: list[Any]) -> dict[str, Any]:
    data = "".join(json.dumps(line) + "\n" for line in lines).encode()
    response = api.session.post(
        api.url + "/v1/files",
        files={"file": ("lines.jsonl", data, "application/jsonl")},
        data={"purpose": "batch"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = _documented(api, "POST /v1/files", response).json()
    return body


def _settled(api: Api, batch: dict[str, Any]) -> dict[str, Any]:
    label = "GET /v1/batches/{batch_id}"
    for _ in range(60):
        if batch["status"] in ("completed", "failed", "expired", "cancelled"):
            return batch
        counts = batch["request_counts"]
        response = api.session.get(
            f"{api.url}/v1/batches/{batch['id']}",
            params={
                "wait": 5,
                "status": batch["status"],
                "done": counts["completed"] + counts["failed"],
            },
            timeout=30,
        )
        assert response.status_code == 200, response.text
        batch = _documented(api, label, response).json()
    raise AssertionError(f"batch {batch['id']} did not end: {batch}")


def _chat(custom_id: str, model: str = "llama3.2") -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1},
    }


def test_a_batch_and_its_files_answer_as_documented(api: Api) -> None:
    session, url = api.session, api.url
    upload = _upload(api, [_chat("a"), _chat("b", model="no-such-model")])
    for label, path in (
        ("GET /v1/files", "/v1/files"),
        ("GET /v1/files/{file_id}", f"/v1/files/{upload['id']}"),
        ("GET /v1/files/{file_id}/content", f"/v1/files/{upload['id']}/content"),
    ):
        response = session.get(url + path, params={"limit": 3} if "{" not in label else None)
        assert response.status_code == 200, response.text
        _documented(api, label, response)

    body = {
        "input_file_id": upload["id"],
        "endpoint": "/v1/chat/completions",
        "completion_window": "24h",
        "metadata": {"purpose": "openapi"},
    }
    response = session.post(url + "/v1/batches", json=body, timeout=30)
    assert response.status_code == 200, response.text
    batch = _settled(api, _documented(api, "POST /v1/batches", response).json())
    assert batch["status"] == "completed", batch
    assert batch["request_counts"] == {"total": 2, "completed": 1, "failed": 1}, batch
    assert batch["usage"] is not None and batch["output_file_id"] and batch["error_file_id"]

    response = session.get(url + "/v1/batches", params={"limit": 2}, timeout=30)
    assert response.status_code == 200, response.text
    assert _documented(api, "GET /v1/batches", response).json()["data"][0]["id"] == batch["id"]

    response = session.post(f"{url}/v1/batches/{batch['id']}/cancel", timeout=30)
    assert response.status_code == 409, response.text
    _documented(api, "POST /v1/batches/{batch_id}/cancel", response)

    output = session.get(f"{url}/v1/files/{batch['output_file_id']}", timeout=30)
    assert _documented(api, "GET /v1/files/{file_id}", output).json()["purpose"] == "batch_output"
    for expected in (200, 404):
        response = session.delete(f"{url}/v1/files/{batch['output_file_id']}", timeout=30)
        assert response.status_code == expected, response.text
        _documented(api, "DELETE /v1/files/{file_id}", response)


def test_a_failed_batch_lists_its_errors_as_documented(api: Api) -> None:
    bad = _chat("x") | {"method": "GET"}
    upload = _upload(api, [bad, _chat("a"), _chat("a")])
    body = {
        "input_file_id": upload["id"],
        "endpoint": "/v1/chat/completions",
        "completion_window": "24h",
    }
    response = api.session.post(api.url + "/v1/batches", json=body, timeout=30)
    assert response.status_code == 200, response.text
    batch = _settled(api, _documented(api, "POST /v1/batches", response).json())
    assert batch["status"] == "failed", batch
    assert [(e["code"], e["param"], e["line"]) for e in batch["errors"]["data"]] == [
        ("invalid_method", "method", 1),
        ("duplicate_custom_id", "custom_id", 3),
    ], batch
    assert batch["failed_at"] is not None and batch["completed_at"] is None
