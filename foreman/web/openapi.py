"""``GET /openapi.json``: OpenAPI 3.1 description of foreman's own routes.

Written by hand, next to the code it describes, and checked against the
running daemon by a schemathesis test (every response must match it). The
Ollama/OpenAI-compatible routes are not described here: they are Ollama's.
"""

from __future__ import annotations

from typing import Any

from foreman import __version__
from foreman.core.jobstate import JobState
from foreman.core.routeclass import INFERENCE_ROUTES

__all__ = ["openapi_document"]

_STATES = [s.value for s in JobState]
_JOB_ID = "^job_[0-9A-HJKMNP-TV-Z]{26}$"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return _json(_ref("Error"), description)


_NULLABLE_TIME = {"type": ["string", "null"], "format": "date-time"}

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
}

_JOB_ID_PARAM = {
    "name": "job_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string"},
}
_UNAUTHORIZED = _error("missing or wrong Bearer token (when FOREMAN_API_TOKENS is set)")
_NOT_FOUND = _error("no such job")


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
    }


def openapi_document(server_url: str | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "foreman",
            "version": __version__,
            "description": (
                "foreman's own routes: durable jobs, queue and health. Ollama- and "
                "OpenAI-compatible routes (/api/*, /v1/*) are relayed to the target "
                "and follow Ollama's API."
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
