"""``/jobs*`` and ``/queue``: foreman's job API on Klein.

Handlers only translate HTTP to the job service and back; validation errors
arrive as ``BadRequest`` and become foreman's JSON error shape.
"""

from __future__ import annotations

import json
import re
from typing import Any

from klein import Klein
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread

from foreman.core.forwarding import TrustedProxies
from foreman.core.ids import JOB_ID
from foreman.core.jobstate import JobState
from foreman.core.jobview import ARTIFACT_TYPES
from foreman.store.jobs import IdempotencyConflict
from foreman.web.httpjson import (
    BadRequest,
    int_arg,
    json_error,
    json_response,
    json_text_response,
    read_json,
    seconds_arg,
    text_arg,
)
from foreman.web.sse import stream_job_events
from foreman.web.view import DaemonView

__all__ = ["create_job", "lean_routes", "register"]

IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e](?:[\x20-\x7e]{0,253}[\x21-\x7e])?$")
_STATES = frozenset(s.value for s in JobState)
_MAX_WAIT = 300.0
_MAX_LIMIT = 1000


#: ``trusted.trusts(peer)`` per peer address, for the last ``TrustedProxies`` asked
#: (parsing the address costs more than the rest of ``request_base_url``)
_trust: tuple[TrustedProxies | None, dict[str | None, bool]] = (None, {})
_TRUST_KEPT = 1024


def _trusts(trusted: TrustedProxies, peer: str | None) -> bool:
    global _trust
    if _trust[0] is not trusted:
        _trust = (trusted, {})
    known = _trust[1]
    found = known.get(peer)
    if found is None:
        if len(known) >= _TRUST_KEPT:
            known.clear()
        found = known[peer] = trusted.trusts(peer)
    return found


def request_base_url(request: Any, trusted: TrustedProxies) -> str:
    """The URL clients used to reach foreman; a trusted proxy's forwarded headers win."""
    proto = host = None
    if _trusts(trusted, getattr(request.getClientAddress(), "host", None)):
        proto = request.getHeader(b"x-forwarded-proto")
        host = request.getHeader(b"x-forwarded-host")
    host = host or request.getHeader(b"host")
    scheme = proto.decode().split(",")[0].strip() if proto else None
    if not scheme:
        scheme = "https" if request.isSecure() else "http"
    if host:
        return f"{scheme}://{host.decode().split(',')[0].strip()}"
    address = request.getHost()
    return f"{scheme}://{address.host}:{address.port}"


def _not_found(request: Any, job_id: str) -> bytes:
    return json_error(request, 404, "job_not_found", f"no job {job_id!r}")


async def create_job(daemon: DaemonView, request: Any) -> bytes:
    """``POST /jobs``: the Klein route, and the front protocol's lean path (ADR 0020)."""
    body = read_json(request)
    key_header = request.getHeader(b"idempotency-key")
    key = None
    if key_header is not None:
        key = key_header.decode("latin-1")
        if not IDEMPOTENCY_KEY.match(key):
            raise BadRequest(
                "Idempotency-Key must be 1 to 255 visible ASCII characters", "invalid_header"
            )
    try:
        base = request_base_url(request, daemon.trusted_proxies)
        job, created, text = await daemon.jobs.create_json(body, key, base)
    except IdempotencyConflict as e:
        return json_error(
            request,
            409,
            "idempotency_conflict",
            f"Idempotency-Key was used for job {e.job_id} with a different body",
        )
    request.setHeader(b"location", f"/jobs/{job['id']}".encode())
    return json_text_response(request, text, 202 if created else 200)


def lean_routes(daemon: DaemonView) -> dict[tuple[bytes, bytes], Any]:
    """The own routes the front protocol may serve without twisted.web and Klein.

    Only ``POST /jobs``: it is the one a client calls at a rate (a batch
    submitted job by job), and it needs nothing of Klein but the handler.
    """

    def create(request: Any) -> Deferred[bytes]:
        return Deferred.fromCoroutine(create_job(daemon, request))

    return {(b"POST", b"/jobs"): create}


def register(app: Klein, daemon: DaemonView) -> None:
    jobs = daemon.jobs

    @app.route("/jobs", methods=["POST"])
    async def create(request: Any) -> bytes:
        return await create_job(daemon, request)

    @app.route("/jobs", methods=["GET"])
    async def list_jobs(request: Any) -> bytes:
        state = text_arg(request, "state") or None
        if state is not None and state not in _STATES:
            raise BadRequest(f"state must be one of {', '.join(sorted(_STATES))}", "invalid_state")
        after = text_arg(request, "after") or None
        if after is not None and not JOB_ID.match(after):
            raise BadRequest("after must be a job id (the next_after of a page)", "invalid_cursor")
        limit = int_arg(request, "limit", 20, 1, _MAX_LIMIT)
        page = await jobs.list_page(state, text_arg(request, "model") or None, after, limit)
        return json_response(request, page)

    @app.route("/jobs/<job_id>", methods=["GET"])
    async def get(request: Any, job_id: str) -> bytes:
        wait = seconds_arg(request, "wait", _MAX_WAIT)
        if wait > 0:
            row = await jobs.get_row(job_id)
            if row is None:
                return _not_found(request, job_id)
            if not row.terminal:
                await jobs.hub.next_event(job_id, daemon.clock, wait)
        job = await jobs.get(job_id)
        if job is None:
            return _not_found(request, job_id)
        return json_response(request, job)

    @app.route("/jobs/<job_id>/cancel", methods=["POST"])
    async def cancel(request: Any, job_id: str) -> bytes:
        row, cancelled = await jobs.cancel(job_id, daemon.cancel_running)
        if row is None:
            return _not_found(request, job_id)
        if not cancelled:
            return json_error(
                request, 409, "not_cancellable", f"job {job_id} is already {row.state}"
            )
        job = await jobs.get(job_id)
        return json_response(request, job)

    @app.route("/jobs/<job_id>", methods=["DELETE"])
    async def delete(request: Any, job_id: str) -> bytes:
        outcome = await jobs.delete(job_id)
        if outcome == "missing":
            return _not_found(request, job_id)
        if outcome == "active":
            return json_error(
                request, 409, "job_active", f"job {job_id} is not finished; cancel it first"
            )
        return json_response(request, {"id": job_id, "object": "job", "deleted": True})

    @app.route("/jobs/<job_id>/events", methods=["GET"])
    def events(request: Any, job_id: str) -> Deferred[bytes]:
        return Deferred.fromCoroutine(stream_job_events(request, jobs, job_id, daemon.clock))

    @app.route("/jobs/<job_id>/artifacts/<name>", methods=["GET", "HEAD"])
    async def artifact(request: Any, job_id: str, name: str) -> Any:
        if name not in ARTIFACT_TYPES:
            return json_error(request, 404, "artifact_not_found", f"no artifact {name!r}")
        row = await jobs.get_row(job_id)
        if row is None:
            return _not_found(request, job_id)
        if name == "request.json":
            request.setHeader(b"content-type", b"application/json")
            return row.request.encode()
        listed = {a["name"] for a in json.loads(row.artifacts)} if row.artifacts else set()
        path = jobs.artifacts.path(job_id, name)
        if name not in listed or path is None or not path.exists():
            return json_error(request, 404, "artifact_not_found", f"job has no {name}")
        try:
            data = await deferToThread(path.read_bytes)
        except FileNotFoundError:  # deleted meanwhile
            return json_error(request, 404, "artifact_not_found", f"job has no {name}")
        request.setHeader(b"content-type", ARTIFACT_TYPES[name].encode())
        return data

    @app.route("/queue", methods=["GET"])
    def queue(request: Any) -> bytes:
        limit = int_arg(request, "limit", 100, 1, 10000)
        return json_response(request, daemon.queue_view(limit))
