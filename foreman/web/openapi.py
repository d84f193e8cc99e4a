"""``GET /openapi.json``: OpenAPI 3.1 description of foreman's own routes.

Written by hand, next to the code it describes, and checked against the
running daemon by a schemathesis test (every response must match it). That
includes OpenAI's Batch API (``/v1/files``, ``/v1/batches``), which foreman
serves itself on its job queue, in OpenAI's shapes and error bodies. The other
Ollama/OpenAI-compatible routes are not described here: they are Ollama's.
"""

from __future__ import annotations

from typing import Any

from foreman import __version__
from foreman.core.batchlines import BATCH_ENDPOINTS
from foreman.core.batchstate import BatchStatus
from foreman.core.ids import BATCH_ID, FILE_ID
from foreman.core.jobstate import JobState
from foreman.core.routeclass import INFERENCE_ROUTES

__all__ = ["openapi_document"]

_STATES = [s.value for s in JobState]
_JOB_ID = "^job_[0-9A-HJKMNP-TV-Z]{26}$"
_BATCH_STATUSES = [s.value for s in BatchStatus]
_FILE_ID = FILE_ID.pattern
_BATCH_ID = BATCH_ID.pattern


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return _json(_ref("Error"), description)


def _openai_error(description: str) -> dict[str, Any]:
    return _json(_ref("OpenAIError"), description)


_NULLABLE_TIME = {"type": ["string", "null"], "format": "date-time"}
_UNIX_TIME = {"type": "integer", "description": "Unix seconds"}
_NULLABLE_UNIX_TIME = {"type": ["integer", "null"], "description": "Unix seconds"}


def _list_of(item: str) -> dict[str, Any]:
    """OpenAI's page of ``item``: ``first_id``/``last_id`` are the cursors."""
    return {
        "type": "object",
        "required": ["object", "data", "first_id", "last_id", "has_more"],
        "properties": {
            "object": {"const": "list"},
            "data": {"type": "array", "items": _ref(item)},
            "first_id": {"type": ["string", "null"]},
            "last_id": {"type": ["string", "null"]},
            "has_more": {"type": "boolean"},
        },
    }


_BATCH_TIMES = [
    "in_progress_at",
    "finalizing_at",
    "completed_at",
    "failed_at",
    "expired_at",
    "expires_at",
    "cancelling_at",
    "cancelled_at",
]

# OpenAI's Batch API (/v1/files, /v1/batches): OpenAI's objects and error shape
_BATCH_SCHEMAS: dict[str, Any] = {
    "OpenAIError": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["message", "type", "code"],
                "properties": {
                    "message": {"type": "string"},
                    "type": {
                        "type": "string",
                        "description": "invalid_request_error, authentication_error, "
                        "not_found_error, conflict_error, server_error …",
                    },
                    "code": {"type": "string"},
                    "param": {"type": ["string", "null"]},
                },
            }
        },
    },
    "FileUpload": {
        "type": "object",
        "required": ["file", "purpose"],
        "properties": {
            "file": {
                "type": "string",
                "format": "binary",
                "description": "the JSONL input, one request per line "
                "(at most FOREMAN_BATCH_MAX_BYTES)",
            },
            "purpose": {"type": "string", "enum": ["batch"]},
        },
    },
    "File": {
        "type": "object",
        "required": ["id", "object", "bytes", "created_at", "filename", "purpose", "status"],
        "properties": {
            "id": {"type": "string", "pattern": _FILE_ID},
            "object": {"const": "file"},
            "bytes": {"type": "integer", "minimum": 0},
            "created_at": _UNIX_TIME,
            "filename": {"type": "string"},
            "purpose": {
                "type": "string",
                "enum": ["batch", "batch_output"],
                "description": "batch: uploaded input; batch_output: a batch's output or errors",
            },
            "expires_at": {
                "type": ["integer", "null"],
                "description": "always null: files do not expire",
            },
            "status": {"type": "string", "enum": ["uploaded", "processed", "error"]},
            "status_details": {"type": ["string", "null"]},
        },
    },
    "FileList": _list_of("File"),
    "DeletedFile": {
        "type": "object",
        "required": ["id", "object", "deleted"],
        "properties": {
            "id": {"type": "string", "pattern": _FILE_ID},
            "object": {"const": "file"},
            "deleted": {"const": True},
        },
    },
    "BatchCreate": {
        "type": "object",
        "required": ["input_file_id", "endpoint", "completion_window"],
        "additionalProperties": False,
        "properties": {
            "input_file_id": {
                "type": "string",
                "minLength": 1,
                "description": "an uploaded file with purpose batch",
            },
            "endpoint": {
                "type": "string",
                "enum": list(BATCH_ENDPOINTS),
                "description": "what every line calls; /api/* are foreman's extension",
            },
            "completion_window": {"type": "string", "enum": ["24h"]},
            "metadata": {
                "type": ["object", "null"],
                "description": "up to 16 string pairs; webhook_url there asks for webhooks",
                "maxProperties": 16,
                "propertyNames": {"maxLength": 64},
                "properties": {"webhook_url": {"type": "string", "format": "uri"}},
                "additionalProperties": {"type": "string", "maxLength": 512},
            },
            "output_expires_after": {
                "description": "OpenAI's {anchor, seconds}: accepted and ignored, "
                "foreman's files do not expire"
            },
        },
    },
    "Batch": {
        "type": "object",
        "required": [
            "id",
            "object",
            "endpoint",
            "input_file_id",
            "completion_window",
            "status",
            "output_file_id",
            "error_file_id",
            "errors",
            "request_counts",
            "usage",
            "metadata",
            "created_at",
            *_BATCH_TIMES,
        ],
        "properties": {
            "id": {"type": "string", "pattern": _BATCH_ID},
            "object": {"const": "batch"},
            "endpoint": {"type": "string", "enum": list(BATCH_ENDPOINTS)},
            "input_file_id": {"type": "string", "pattern": _FILE_ID},
            "completion_window": {"type": "string", "enum": ["24h"]},
            "status": {"type": "string", "enum": _BATCH_STATUSES},
            "output_file_id": {"type": ["string", "null"], "pattern": _FILE_ID},
            "error_file_id": {"type": ["string", "null"], "pattern": _FILE_ID},
            "errors": {
                "description": "why validation failed (the first 100 errors), else null",
                "oneOf": [
                    {"type": "null"},
                    {
                        "type": "object",
                        "required": ["object", "data"],
                        "properties": {
                            "object": {"const": "list"},
                            "data": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "required": ["code", "message", "param", "line"],
                                    "properties": {
                                        "code": {"type": "string"},
                                        "message": {"type": "string"},
                                        "param": {"type": ["string", "null"]},
                                        "line": {"type": ["integer", "null"], "minimum": 1},
                                    },
                                },
                            },
                        },
                    },
                ],
            },
            "request_counts": {
                "type": "object",
                "required": ["total", "completed", "failed"],
                "properties": {
                    "total": {"type": "integer", "minimum": 0},
                    "completed": {"type": "integer", "minimum": 0},
                    "failed": {"type": "integer", "minimum": 0},
                },
            },
            "usage": {
                "description": "token sums over the answered lines, once finished",
                "oneOf": [
                    {"type": "null"},
                    {
                        "type": "object",
                        "required": [
                            "input_tokens",
                            "input_tokens_details",
                            "output_tokens",
                            "output_tokens_details",
                            "total_tokens",
                        ],
                        "properties": {
                            "input_tokens": {"type": "integer", "minimum": 0},
                            "input_tokens_details": {
                                "type": "object",
                                "required": ["cached_tokens"],
                                "properties": {"cached_tokens": {"type": "integer"}},
                            },
                            "output_tokens": {"type": "integer", "minimum": 0},
                            "output_tokens_details": {
                                "type": "object",
                                "required": ["reasoning_tokens"],
                                "properties": {"reasoning_tokens": {"type": "integer"}},
                            },
                            "total_tokens": {"type": "integer", "minimum": 0},
                        },
                    },
                ],
            },
            "metadata": {
                "type": ["object", "null"],
                "additionalProperties": {"type": "string"},
            },
            "created_at": _UNIX_TIME,
            **{name: _NULLABLE_UNIX_TIME for name in _BATCH_TIMES},
        },
    },
    "BatchList": _list_of("Batch"),
}

_SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
            }
        },
    },
    "JobCreate": {
        "type": "object",
        "required": ["request"],
        "additionalProperties": False,
        "properties": {
            "endpoint": {
                "type": "string",
                "enum": sorted(p.decode() for p in INFERENCE_ROUTES),
                "default": "/api/chat",
            },
            "request": {
                "type": "object",
                "description": "exactly the body Ollama would get",
                "required": ["model"],
                "properties": {"model": {"type": "string", "minLength": 1}},
            },
            "webhook_url": {"type": ["string", "null"], "format": "uri"},
            "priority": {"type": "integer", "minimum": -1000, "maximum": 1000, "default": 0},
            "metadata": {"description": "any JSON, echoed back"},
        },
    },
    "Artifact": {
        "type": "object",
        "required": ["name", "url", "size", "content_type"],
        "properties": {
            "name": {"type": "string", "enum": ["request.json", "response.json", "stream.ndjson"]},
            "url": {"type": "string"},
            "size": {"type": "integer", "minimum": 0},
            "content_type": {"type": "string"},
        },
    },
    "Job": {
        "type": "object",
        "required": [
            "id",
            "object",
            "state",
            "endpoint",
            "model",
            "priority",
            "attempts",
            "error",
            "created_at",
            "started_at",
            "finished_at",
            "position",
            "progress",
            "artifacts",
            "result",
        ],
        "properties": {
            "id": {"type": "string", "pattern": _JOB_ID},
            "object": {"const": "job"},
            "state": {"type": "string", "enum": _STATES},
            "endpoint": {"type": "string"},
            "model": {"type": "string"},
            "priority": {"type": "integer"},
            "metadata": {},
            "attempts": {"type": "integer", "minimum": 0},
            "error": {
                "oneOf": [
                    {"type": "null"},
                    {
                        "type": "object",
                        "required": ["code", "message"],
                        "properties": {
                            "code": {"type": "string"},
                            "message": {"type": "string"},
                        },
                    },
                ]
            },
            "created_at": {"type": "string", "format": "date-time"},
            "started_at": _NULLABLE_TIME,
            "finished_at": _NULLABLE_TIME,
            "position": {"type": ["integer", "null"], "minimum": 0},
            "eta": {
                "description": "estimated start and finish while queued (learned per model)",
                "oneOf": [
                    {"type": "null"},
                    {
                        "type": "object",
                        "required": ["start_at", "finish_at", "known"],
                        "properties": {
                            "start_at": {"type": "string", "format": "date-time"},
                            "finish_at": {"type": "string", "format": "date-time"},
                            "known": {"type": "boolean"},
                            "note": {"type": "string"},
                        },
                    },
                ],
            },
            "progress": {
                "oneOf": [
                    {"type": "null"},
                    {
                        "type": "object",
                        "required": ["tokens"],
                        "properties": {"tokens": {"type": "integer", "minimum": 0}},
                    },
                ]
            },
            "artifacts": {"type": "array", "items": _ref("Artifact")},
            "result": {"type": ["object", "null"]},
            "webhook_url": {"type": "string"},
            "webhook": {
                "type": "object",
                "properties": {
                    "delivered": {"type": "integer"},
                    "pending": {"type": "integer"},
                    "failed": {"type": "integer"},
                    "deliveries": {"type": "array", "items": {"type": "object"}},
                },
            },
            "seq": {"type": "integer"},
        },
    },
    "JobList": {
        "type": "object",
        "required": ["data", "has_more", "next_after"],
        "properties": {
            "object": {"const": "list"},
            "data": {"type": "array", "items": _ref("Job")},
            "has_more": {"type": "boolean"},
            "next_after": {"type": ["string", "null"]},
        },
    },
    "Queue": {
        "type": "object",
        "required": ["data", "total", "by_model"],
        "properties": {
            "object": {"const": "queue"},
            "data": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["position", "kind", "model", "priority", "waited_ms"],
                    "properties": {
                        "position": {"type": "integer"},
                        "kind": {"type": "string", "enum": ["interactive", "job"]},
                        "id": {"type": "string"},
                        "path": {"type": ["string", "null"]},
                        "model": {"type": "string"},
                        "priority": {"type": "integer"},
                        "waited_ms": {"type": "number"},
                    },
                },
            },
            "total": {"type": "integer"},
            "by_model": {"type": "object", "additionalProperties": {"type": "integer"}},
            "by_kind": {"type": "object", "additionalProperties": {"type": "integer"}},
            "retrying": {"type": "integer"},
            "loaded_model": {"type": ["string", "null"]},
            "state": _ref("QueueState"),
        },
    },
    "QueueState": {
        "type": "object",
        "required": ["paused", "draining", "drained", "since", "running", "queued"],
        "properties": {
            "object": {"const": "queue.state"},
            "paused": {"type": "boolean"},
            "draining": {"type": "boolean"},
            "drained": {"type": "boolean", "description": "paused and nothing running"},
            "since": {"type": ["string", "null"], "format": "date-time"},
            "running": {"type": "boolean"},
            "queued": {"type": "integer"},
        },
    },
    "QueueActivity": {
        "type": "object",
        "required": ["object", "busy", "queued", "running", "paused", "draining"],
        "properties": {
            "object": {"const": "queue.activity"},
            "busy": {"type": "boolean", "description": "something queued or running"},
            "queued": {"type": "integer"},
            "running": {"type": "boolean"},
            "paused": {"type": "boolean"},
            "draining": {"type": "boolean"},
        },
    },
    "Status": {
        "type": "object",
        "required": ["version", "uptime_s", "target", "worker", "queue"],
        "properties": {
            "version": {"type": "string"},
            "uptime_s": {"type": "number"},
            "database": {"type": "string"},
            "target": {
                "type": "object",
                "required": ["url", "state"],
                "properties": {
                    "url": {"type": "string"},
                    "state": {"type": "string", "enum": ["unknown", "up", "down"]},
                    "loaded_models": {"type": "array", "items": {"type": "string"}},
                    "version": {"type": ["string", "null"]},
                    "last_seen": {"type": ["string", "null"]},
                },
            },
            "worker": {"type": "object"},
            "queue": {"type": "object"},
        },
    },
    **_BATCH_SCHEMAS,
}

_JOB_ID_PARAM = {
    "name": "job_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string"},
}
_UNAUTHORIZED = _error("missing or wrong Bearer token (when FOREMAN_API_TOKENS is set)")
_NOT_FOUND = _error("no such job")
_FILE_ID_PARAM = {"name": "file_id", "in": "path", "required": True, "schema": {"type": "string"}}
_BATCH_ID_PARAM = {"name": "batch_id", "in": "path", "required": True, "schema": {"type": "string"}}
_OPENAI_UNAUTHORIZED = _openai_error(
    "missing or wrong Bearer token (when FOREMAN_API_TOKENS is set)"
)
_NO_FILE = _openai_error("no such file")
_NO_BATCH = _openai_error("no such batch")


def _batch_paths() -> dict[str, Any]:
    """OpenAI's Batch API, served by foreman on its job queue (docs/batches.md)."""
    file = _json(_ref("File"), "the file")
    batch = _json(_ref("Batch"), "the batch")
    return {
        "/v1/files": {
            "post": {
                "summary": "Upload a batch input file (streamed to disk as it arrives)",
                "operationId": "createFile",
                "requestBody": {
                    "required": True,
                    "content": {"multipart/form-data": {"schema": _ref("FileUpload")}},
                },
                "responses": {
                    "200": {**file, "description": "stored"},
                    "400": _openai_error(
                        "not a multipart body, no file part, a malformed body, "
                        "or purpose is not batch"
                    ),
                    "401": _OPENAI_UNAUTHORIZED,
                    "413": _openai_error("file_too_large: over FOREMAN_BATCH_MAX_BYTES"),
                },
            },
            "get": {
                "summary": "List files, newest first",
                "operationId": "listFiles",
                "parameters": [
                    {
                        "name": "purpose",
                        "in": "query",
                        "description": "only files of this purpose (batch, batch_output)",
                        "schema": {"type": "string"},
                    },
                    {
                        "name": "after",
                        "in": "query",
                        "description": "the last_id of the previous page",
                        "schema": {"type": "string", "pattern": _FILE_ID},
                    },
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {
                            "type": "integer",
                            "minimum": 1,
                            "maximum": 10000,
                            "default": 10000,
                        },
                    },
                    {
                        "name": "order",
                        "in": "query",
                        "schema": {"type": "string", "enum": ["asc", "desc"], "default": "desc"},
                    },
                ],
                "responses": {
                    "200": _json(_ref("FileList"), "a page of files"),
                    "400": _openai_error("invalid cursor, limit or order"),
                    "401": _OPENAI_UNAUTHORIZED,
                },
            },
        },
        "/v1/files/{file_id}": {
            "parameters": [_FILE_ID_PARAM],
            "get": {
                "summary": "A file",
                "operationId": "getFile",
                "responses": {"200": file, "401": _OPENAI_UNAUTHORIZED, "404": _NO_FILE},
            },
            "delete": {
                "summary": "Delete a file and its content",
                "operationId": "deleteFile",
                "responses": {
                    "200": _json(_ref("DeletedFile"), "deleted"),
                    "401": _OPENAI_UNAUTHORIZED,
                    "404": _NO_FILE,
                    "409": _openai_error("file_in_use: the input of a batch still running"),
                },
            },
        },
        "/v1/files/{file_id}/content": {
            "parameters": [_FILE_ID_PARAM],
            "get": {
                "summary": "The file's bytes (HEAD: only its headers)",
                "operationId": "getFileContent",
                "responses": {
                    "200": {
                        "description": "the JSONL, sent as an attachment",
                        "content": {"application/jsonl": {"schema": {"type": "string"}}},
                    },
                    "401": _OPENAI_UNAUTHORIZED,
                    "404": _NO_FILE,
                },
            },
        },
        "/v1/batches": {
            "post": {
                "summary": "Create a batch: every line of the input file becomes a job",
                "operationId": "createBatch",
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("BatchCreate")}},
                },
                "responses": {
                    "200": {**batch, "description": "created, validating"},
                    "400": _openai_error(
                        "malformed JSON, a missing, unknown or invalid field, "
                        "or an input file whose purpose is not batch"
                    ),
                    "401": _OPENAI_UNAUTHORIZED,
                    "404": _openai_error("no such input file"),
                    "413": _openai_error("body over FOREMAN_MAX_BODY"),
                },
            },
            "get": {
                "summary": "List batches, newest first",
                "operationId": "listBatches",
                "parameters": [
                    {
                        "name": "after",
                        "in": "query",
                        "description": "the last_id of the previous page",
                        "schema": {"type": "string", "pattern": _BATCH_ID},
                    },
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 20},
                    },
                ],
                "responses": {
                    "200": _json(_ref("BatchList"), "a page of batches"),
                    "400": _openai_error("invalid cursor or limit"),
                    "401": _OPENAI_UNAUTHORIZED,
                },
            },
        },
        "/v1/batches/{batch_id}": {
            "parameters": [_BATCH_ID_PARAM],
            "get": {
                "summary": "A batch; ?wait=N&status=S&done=D long-polls for a change",
                "description": (
                    "foreman's extension: with wait and status, the answer comes as soon "
                    "as the batch's status differs from status or its completed + failed "
                    "from done, or after wait seconds with the batch unchanged."
                ),
                "operationId": "getBatch",
                "parameters": [
                    {
                        "name": "wait",
                        "in": "query",
                        "schema": {"type": "number", "minimum": 0, "maximum": 60},
                    },
                    {
                        "name": "status",
                        "in": "query",
                        "description": "the status last seen: one of " + ", ".join(_BATCH_STATUSES),
                        "schema": {"type": "string"},
                    },
                    {
                        "name": "done",
                        "in": "query",
                        "description": "completed + failed last seen",
                        "schema": {"type": "integer", "minimum": 0, "maximum": 10**9},
                    },
                ],
                "responses": {
                    "200": batch,
                    "400": _openai_error("invalid wait or done"),
                    "401": _OPENAI_UNAUTHORIZED,
                    "404": _NO_BATCH,
                },
            },
        },
        "/v1/batches/{batch_id}/cancel": {
            "parameters": [_BATCH_ID_PARAM],
            "post": {
                "summary": "Cancel a batch: queued lines at once, the running one aborted",
                "operationId": "cancelBatch",
                "responses": {
                    "200": {**batch, "description": "cancelling, or already cancelled"},
                    "401": _OPENAI_UNAUTHORIZED,
                    "404": _NO_BATCH,
                    "409": _openai_error(
                        "batch_not_cancellable: it ended (completed, failed, expired) "
                        "or is finalizing"
                    ),
                },
            },
        },
    }


def _paths() -> dict[str, Any]:
    job = _json(_ref("Job"), "the job")
    return {
        "/jobs": {
            "post": {
                "summary": "Create a job",
                "operationId": "createJob",
                "parameters": [
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "required": False,
                        "schema": {
                            "type": "string",
                            "pattern": "^[\\x21-\\x7e]([\\x20-\\x7e]{0,253}[\\x21-\\x7e])?$",
                        },
                    }
                ],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("JobCreate")}},
                },
                "responses": {
                    "202": {**job, "description": "created and committed"},
                    "200": {**job, "description": "same Idempotency-Key and body: the job"},
                    "400": _error("malformed JSON, missing or invalid field"),
                    "401": _UNAUTHORIZED,
                    "409": _error("Idempotency-Key used with another body"),
                    "413": _error("body over FOREMAN_MAX_BODY"),
                },
            },
            "get": {
                "summary": "List jobs, newest first",
                "operationId": "listJobs",
                "parameters": [
                    {"name": "state", "in": "query", "schema": {"type": "string", "enum": _STATES}},
                    {"name": "model", "in": "query", "schema": {"type": "string"}},
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "maximum": 1000},
                    },
                    {
                        "name": "after",
                        "in": "query",
                        "schema": {"type": "string", "pattern": _JOB_ID},
                    },
                ],
                "responses": {
                    "200": _json(_ref("JobList"), "a page of jobs"),
                    "400": _error("invalid filter or cursor"),
                    "401": _UNAUTHORIZED,
                },
            },
        },
        "/jobs/{job_id}": {
            "parameters": [_JOB_ID_PARAM],
            "get": {
                "summary": "A job; ?wait=N long-polls for the next state change",
                "operationId": "getJob",
                "parameters": [
                    {
                        "name": "wait",
                        "in": "query",
                        "schema": {"type": "number", "minimum": 0, "maximum": 300},
                    }
                ],
                "responses": {
                    "200": job,
                    "400": _error("invalid wait"),
                    "401": _UNAUTHORIZED,
                    "404": _NOT_FOUND,
                },
            },
            "delete": {
                "summary": "Delete a finished job and its artifacts",
                "operationId": "deleteJob",
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["id", "deleted"],
                            "properties": {
                                "id": {"type": "string"},
                                "object": {"const": "job"},
                                "deleted": {"const": True},
                            },
                        },
                        "deleted",
                    ),
                    "401": _UNAUTHORIZED,
                    "404": _NOT_FOUND,
                    "409": _error("the job is not finished"),
                },
            },
        },
        "/jobs/{job_id}/cancel": {
            "parameters": [_JOB_ID_PARAM],
            "post": {
                "summary": "Cancel a queued or running job",
                "operationId": "cancelJob",
                "responses": {
                    "200": job,
                    "401": _UNAUTHORIZED,
                    "404": _NOT_FOUND,
                    "409": _error("the job already finished"),
                },
            },
        },
        "/jobs/{job_id}/events": {
            "parameters": [_JOB_ID_PARAM],
            "get": {
                "summary": "Server-Sent Events of state changes and progress",
                "operationId": "jobEvents",
                "parameters": [
                    {
                        "name": "Last-Event-ID",
                        "in": "header",
                        "schema": {"type": "string"},
                    }
                ],
                "responses": {
                    "200": {
                        "description": "event stream; ends after a terminal state",
                        "content": {"text/event-stream": {"schema": {"type": "string"}}},
                    },
                    "401": _UNAUTHORIZED,
                    "404": _NOT_FOUND,
                },
            },
        },
        "/jobs/{job_id}/artifacts/{name}": {
            "parameters": [
                _JOB_ID_PARAM,
                {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}},
            ],
            "get": {
                "summary": "Artifact bytes",
                "operationId": "getArtifact",
                "responses": {
                    "200": {
                        "description": "the artifact",
                        "content": {
                            "application/json": {"schema": {}},
                            "application/x-ndjson": {"schema": {"type": "string"}},
                        },
                    },
                    "401": _UNAUTHORIZED,
                    "404": _error("no such job or artifact"),
                },
            },
        },
        "/queue": {
            "get": {
                "summary": "What waits, in dispatch order",
                "operationId": "getQueue",
                "parameters": [
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "maximum": 10000},
                    }
                ],
                "responses": {
                    "200": _json(_ref("Queue"), "the queue"),
                    "400": _error("invalid limit"),
                    "401": _UNAUTHORIZED,
                },
            }
        },
        "/queue/pause": {
            "post": {
                "summary": "Stop dispatching (requests and jobs are still accepted and queued)",
                "operationId": "pauseQueue",
                "responses": {
                    "200": _json(_ref("QueueState"), "paused (idempotent)"),
                    "401": _UNAUTHORIZED,
                },
            }
        },
        "/queue/resume": {
            "post": {
                "summary": "Dispatch again (a no-op when not paused)",
                "operationId": "resumeQueue",
                "responses": {
                    "200": _json(_ref("QueueState"), "the state now"),
                    "401": _UNAUTHORIZED,
                },
            }
        },
        "/queue/drain": {
            "post": {
                "summary": "Pause, let the running request finish; with wait, answer once drained",
                "operationId": "drainQueue",
                "parameters": [
                    {
                        "name": "wait",
                        "in": "query",
                        "schema": {"type": "number", "minimum": 0, "maximum": 300},
                    }
                ],
                "responses": {
                    "200": _json(_ref("QueueState"), "draining, or drained"),
                    "400": _error("invalid wait"),
                    "401": _UNAUTHORIZED,
                },
            }
        },
        "/queue/activity": {
            "get": {
                "summary": "Busy or idle; with wait and busy, answers when busy changes",
                "operationId": "queueActivity",
                "parameters": [
                    {
                        "name": "wait",
                        "in": "query",
                        "schema": {"type": "number", "minimum": 0, "maximum": 300},
                    },
                    {"name": "busy", "in": "query", "schema": {"type": "boolean"}},
                ],
                "responses": {
                    "200": _json(_ref("QueueActivity"), "the activity"),
                    "400": _error("invalid wait or busy"),
                    "401": _UNAUTHORIZED,
                },
            }
        },
        "/status": {
            "get": {
                "summary": "Target, worker and queue state",
                "operationId": "getStatus",
                "responses": {
                    "200": _json(_ref("Status"), "status"),
                    "401": _UNAUTHORIZED,
                },
            }
        },
        "/healthz": {
            "get": {
                "summary": "Liveness: the process and its database answer",
                "operationId": "healthz",
                "security": [],
                "responses": {
                    "200": _json({"type": "object"}, "alive"),
                    "503": _json({"type": "object"}, "database failing"),
                },
            }
        },
        "/readyz": {
            "get": {
                "summary": "Readiness: accepting work",
                "operationId": "readyz",
                "security": [],
                "responses": {
                    "200": _json({"type": "object"}, "ready"),
                    "503": _json({"type": "object"}, "starting or stopping"),
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "operationId": "metrics",
                "responses": {
                    "200": {
                        "description": "Prometheus text format",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    "401": _UNAUTHORIZED,
                },
            }
        },
        "/openapi.json": {
            "get": {
                "summary": "This document",
                "operationId": "openapi",
                "responses": {
                    "200": _json({"type": "object"}, "OpenAPI 3.1"),
                    "401": _UNAUTHORIZED,
                },
            }
        },
        **_batch_paths(),
    }


def openapi_document(server_url: str | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "foreman",
            "version": __version__,
            "description": (
                "foreman's own routes: durable jobs, queue and health, and OpenAI's "
                "Batch API (/v1/files, /v1/batches), which foreman serves itself on its "
                "job queue, with OpenAI's objects and error shape. The other Ollama- and "
                "OpenAI-compatible routes (/api/*, the rest of /v1/*) are relayed to the "
                "target and follow Ollama's API."
            ),
        },
        "components": {
            "schemas": _SCHEMAS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}, {}],
        "paths": _paths(),
    }
    if server_url:
        doc["servers"] = [{"url": server_url}]
    return doc
