"""The job service: validation, creation, state changes, cancel, delete, recovery.

``apply`` is the one writer of job states. The HTTP routes, the runner and
start-up recovery hand it a ``core.jobstate.Transition`` (built from the
state table); it commits the row, the event and the outbox entry in one
transaction, then logs the transition, counts it, publishes it to live
listeners and wakes the webhook delivery: every transition, the same path.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from twisted.logger import Logger, LogLevel

from foreman.core import jobstate
from foreman.core.errors import BadRequest
from foreman.core.ids import JOB_ID, new_job_id
from foreman.core.jobview import job_object, queued_json
from foreman.core.logtext import escape_for_log, model_name_too_long
from foreman.core.records import JobRow, NewJob
from foreman.core.routeclass import INFERENCE_ROUTES
from foreman.core.scheduler import DEFAULT_JOB_PRIORITY
from foreman.jobs.artifacts import ArtifactStore
from foreman.jobs.hub import JobHub
from foreman.ops.logs import TEXT_FIELD_LIMIT, emit_rendered
from foreman.ops.metrics import Metrics
from foreman.store import jobs as sql
from foreman.store.database import Store
from foreman.work.queue import WorkQueue

__all__ = ["JobService"]

_log = Logger()
_transitions = Logger(namespace="foreman.jobs")

INFERENCE_PATHS = frozenset(p.decode() for p in INFERENCE_ROUTES)
_CREATE_FIELDS = frozenset({"endpoint", "request", "webhook_url", "priority", "metadata"})
_METADATA_LIMIT = 16 * 1024
_PRIORITY_RANGE = (-1000, 1000)


def _validate_create(body: Any) -> tuple[str, dict[str, Any], str | None, int, str | None]:
    """The fields of a create body; ``metadata`` as the JSON text it is stored as."""
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object", "malformed_json")
    unknown = sorted(set(body) - _CREATE_FIELDS)
    if unknown:
        raise BadRequest(f"unknown field(s): {', '.join(unknown)}", "unknown_field")
    endpoint = body.get("endpoint", "/api/chat")
    if not isinstance(endpoint, str) or endpoint not in INFERENCE_PATHS:
        choices = ", ".join(sorted(INFERENCE_PATHS))
        raise BadRequest(f"endpoint must be one of: {choices}", "invalid_endpoint")
    request = body.get("request")
    if not isinstance(request, dict):
        raise BadRequest("request is required and must be a JSON object", "missing_field")
    model = request.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("request.model is required", "missing_field")
    too_long = model_name_too_long(model)
    if too_long is not None:
        raise BadRequest(too_long, "invalid_model")
    webhook_url = body.get("webhook_url")  # null: no webhook
    if webhook_url is not None and not isinstance(webhook_url, str):
        raise BadRequest("webhook_url must be a string", "invalid_webhook_url")
    priority = body.get("priority", DEFAULT_JOB_PRIORITY)
    if isinstance(priority, float) and priority.is_integer():
        priority = int(priority)  # JSON has one number type: 417.0 is the integer 417
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise BadRequest("priority must be an integer", "invalid_priority")
    if not _PRIORITY_RANGE[0] <= priority <= _PRIORITY_RANGE[1]:
        raise BadRequest(
            f"priority must be between {_PRIORITY_RANGE[0]} and {_PRIORITY_RANGE[1]}",
            "invalid_priority",
        )
    metadata = body.get("metadata")
    text = None
    if metadata is not None:
        text = json.dumps(metadata)
        # ``text`` escapes every non-ASCII character (6 or 12 bytes where UTF-8
        # takes 2 to 4), so the UTF-8 size is never larger: counted only when
        # ``text`` itself is over the limit
        if len(text) > _METADATA_LIMIT and _utf8_size(metadata) > _METADATA_LIMIT:
            raise BadRequest(f"metadata is over {_METADATA_LIMIT} bytes", "metadata_too_large")
    return endpoint, request, webhook_url, priority, text


# encoders made once (``json.dumps`` with options builds one per call)
_UNESCAPED = json.JSONEncoder(ensure_ascii=False)
_COMPACT = json.JSONEncoder(separators=(",", ":"))


def _utf8_size(value: Any) -> int:
    """JSON size in UTF-8 bytes: an "é" counts 2, not the 6 of its \\u escape."""
    return len(_UNESCAPED.encode(value).encode("utf-8", "surrogatepass"))


#: what a plain Twisted observer renders a transition event with (the same line)
_TRANSITION_FORMAT = "job {job_id} {state} model={model} attempts={attempts}{error_text}"


def _log_transition(row: JobRow) -> None:
    """The one line per state change; one with an error (failed, or queued again
    after a failed attempt) is a warning.

    It is logged for every transition, so its line is rendered here by one
    f-string (``emit_rendered``), as the access line is. Only when no text field needs
    escaping, so the line is exactly what the observers would make of
    ``log_format``; otherwise (a model name with a control character, a long
    error message) they format it as before. The fields stay in the event.
    """
    error = f" {row.error_code}: {row.error_message}" if row.error_code else ""
    fields: dict[str, Any] = {
        "job_id": row.id,
        "state": row.state,
        "model": row.model,
        "attempts": row.attempts,
        "endpoint": row.endpoint,
        "error_code": row.error_code,
        "error_text": error,
    }
    texts = (row.id, row.state, row.model, error)
    line = None
    if all(escape_for_log(t, TEXT_FIELD_LIMIT) == t for t in texts):
        line = f"job {row.id} {row.state} model={row.model} attempts={row.attempts}{error}"
    level = LogLevel.warn if row.error_code else LogLevel.info
    emit_rendered(_transitions, level, _TRANSITION_FORMAT, line, fields)


class EtaOf(Protocol):
    """The estimate of a waiting job (``position``: its place, when already known)."""

    def __call__(self, key: str, position: int | None = None) -> dict[str, Any] | None: ...


def _no_eta(key: str, position: int | None = None) -> dict[str, Any] | None:
    return None


class JobService:
    def __init__(
        self,
        *,
        store: Store,
        queue: WorkQueue,
        hub: JobHub,
        artifacts: ArtifactStore,
        reactor: Any,
        metrics: Metrics,
        public_url: str | None,
        max_attempts: int,
        check_webhook: Callable[[str], Any],
    ) -> None:
        self.store = store
        self.queue = queue
        self.hub = hub
        self.artifacts = artifacts
        self.reactor = reactor
        self._metrics = metrics
        self.public_url = public_url
        self.max_attempts = max_attempts
        self._check_webhook = check_webhook
        self.outbox_listeners: list[Callable[[], None]] = []
        self.resident: Callable[[], tuple[str, ...]] = tuple
        self.live_tokens: Callable[[str], int | None] = lambda job_id: None
        #: the estimated start and finish of a queued job (``foreman.work.etaboard``)
        self.eta_of: EtaOf = _no_eta
        #: told of every batch line that reached done, failed or cancelled
        self.line_listeners: list[Callable[[JobRow], None]] = []
        #: True while a batch still needs its lines (they cannot be deleted then)
        self.batch_active: Callable[[str], bool] = lambda batch_id: False

    # -- rendering

    def base_url(self, row: JobRow) -> str:
        return self.public_url or row.base_url or ""

    def render(self, row: JobRow, seq: int | None = None) -> dict[str, Any]:
        position = eta = None
        if row.state == jobstate.JobState.QUEUED:
            position = self.queue.position(row.id, self.resident())
            eta = self.eta_of(row.id, position)
        return job_object(
            row,
            self.base_url(row),
            position=position,
            eta=eta,
            tokens=self.live_tokens(row.id) if row.state == jobstate.JobState.WORKING else None,
            seq=seq,
        )

    # -- reads

    async def get_row(self, job_id: str) -> JobRow | None:
        if not JOB_ID.match(job_id):
            return None
        row: JobRow | None = await self.store.read(lambda c: sql.get_job(c, job_id))
        return row

    async def get_rows(self, job_ids: Sequence[str]) -> dict[str, JobRow]:
        """The rows of those ``job_ids`` that exist, by id, in one read."""
        valid = [job_id for job_id in job_ids if JOB_ID.match(job_id)]
        if not valid:
            return {}
        rows: dict[str, JobRow] = await self.store.read(lambda c: sql.get_jobs(c, valid))
        return rows

    async def get(self, job_id: str) -> dict[str, Any] | None:
        if not JOB_ID.match(job_id):
            return None

        def read(c: Any) -> tuple[JobRow | None, dict[str, Any] | None]:
            return sql.get_job(c, job_id), sql.webhook_summary(c, job_id)

        row, webhook = await self.store.read(read)
        if row is None:
            return None
        body = self.render(row)
        if webhook is not None:
            body["webhook"] = webhook
        return body

    async def list_page(
        self, state: str | None, model: str | None, after: str | None, limit: int
    ) -> dict[str, Any]:
        rows, has_more = await self.store.read(
            lambda c: sql.list_jobs(c, state, model, after, limit)
        )
        data = [self.render(r) for r in rows]
        return {
            "object": "list",
            "data": data,
            "has_more": has_more,
            "next_after": rows[-1].id if has_more and rows else None,
        }

    async def events_after(self, job_id: str, seq: int) -> list[sql.Event]:
        found: list[sql.Event] = await self.store.read(lambda c: sql.events_after(c, job_id, seq))
        return found

    # -- writes

    async def create(
        self, body: Any, idempotency_key: str | None, request_base: str
    ) -> tuple[dict[str, Any], bool]:
        """Validate and commit a new job (or find it by Idempotency-Key): (job object,
        created). The job is committed when this returns."""
        job, created, _ = await self._create(body, idempotency_key, request_base)
        return job, created

    async def create_json(
        self, body: Any, idempotency_key: str | None, request_base: str
    ) -> tuple[dict[str, Any], bool, str]:
        """``create``, and the job object's JSON (compact) for the answer: for a job
        just queued, made from its event's JSON instead of encoding it again."""
        job, created, text = await self._create(body, idempotency_key, request_base)
        return job, created, _COMPACT.encode(job) if text is None else text

    async def _create(
        self, body: Any, idempotency_key: str | None, request_base: str
    ) -> tuple[dict[str, Any], bool, str | None]:
        endpoint, request, webhook_url, priority, metadata = _validate_create(body)
        if webhook_url is not None:
            await self._check_webhook(webhook_url)
        now = self.reactor.seconds()
        new = NewJob(
            id=new_job_id(now),
            endpoint=endpoint,
            model=request["model"],
            priority=priority,
            request=_COMPACT.encode(request),
            metadata=metadata,
            webhook_url=webhook_url,
            created_at=now,
            idempotency_key=idempotency_key,
            request_hash=sql.request_hash(body),
            base_url=request_base,
        )
        stored: list[dict[str, Any]] = []  # the job object its event was rendered from

        def render_once(row: JobRow, seq: int) -> dict[str, Any]:
            job = self.render_for_event(row, seq)
            stored.append(job)
            return job

        row, created, event = await self.store.write(lambda c: sql.insert_job(c, new, render_once))
        if created:
            self.queue.add_job(row.id, row.model, row.priority, row.created_at, None)
            self._published(row, event)
            if stored and event is not None:  # (rendered again if its batch ran again)
                return self._queued_answer(row, stored[-1], event.data)
        return self.render(row), created, None

    def _queued_answer(
        self, row: JobRow, event_body: dict[str, Any], event_json: str
    ) -> tuple[dict[str, Any], bool, str | None]:
        """``render(row)`` of a job just queued, from the object its event was rendered
        from: the same fields but its place and estimate, and no ``seq``; and its JSON,
        from the event's."""
        body = dict(event_body)
        del body["seq"]
        body["position"] = position = self.queue.position(row.id, self.resident())
        body["eta"] = eta = self.eta_of(row.id, position)
        text = queued_json(event_json, _COMPACT.encode(position), _COMPACT.encode(eta))
        return body, True, text

    def render_for_event(self, row: JobRow, seq: int) -> dict[str, Any]:
        """The job object stored with an event; runs on the store thread (no scheduler)."""
        return job_object(row, self.base_url(row), seq=seq)

    def new_id(self) -> str:
        return new_job_id(self.reactor.seconds())

    async def apply(self, transition: jobstate.Transition) -> JobRow | None:
        """Write ``transition``; None when the job left its source states meanwhile."""
        row, event = await self.store.write(
            lambda c: sql.change_state(c, transition, self.render_for_event)
        )
        if row is not None and event is not None:
            self._published(row, event)
        return row

    def _published(self, row: JobRow, event: sql.Event | None) -> None:
        if event is None:
            return
        self._metrics.transition(row.state)
        _log_transition(row)
        self.hub.publish(row.id, event)
        if row.webhook_url:
            for poke in self.outbox_listeners:
                poke()
        if row.batch_id is not None and row.terminal:
            for listener in self.line_listeners:
                listener(row)

    def published_quietly(self, row: JobRow, event: sql.Event) -> None:
        """A change made in bulk (a batch's lines cancelled): counted, told, not logged."""
        self._metrics.transition(row.state)
        self.hub.publish(row.id, event)

    def requeue(self, row: JobRow) -> None:
        self.queue.add_job(row.id, row.model, row.priority, row.created_at, row.not_before)

    async def cancel(
        self, job_id: str, abort_running: Callable[[str], None]
    ) -> tuple[JobRow | None, bool]:
        """Cancel a queued or running job: (row, cancelled by this call); row None if unknown."""
        row = await self.get_row(job_id)
        if row is None or row.terminal:
            return row, False
        # off the queue first: the worker must not pick it while the cancel commits
        unqueued = self.queue.remove_job(job_id)
        try:
            changed = await self.apply(jobstate.cancel(job_id, self.reactor.seconds()))
        except Exception:
            if unqueued:
                self.requeue(row)
            raise
        if changed is None:  # it finished meanwhile
            return await self.get_row(job_id), False
        # the row read above may predate the attempt's own state writes (they are
        # not waited for before the call): abort whatever runs under this id
        abort_running(job_id)
        return changed, True

    async def delete(self, job_id: str) -> str:
        """'deleted', 'missing' or 'active' (not finished: refuse)."""
        row = await self.get_row(job_id)
        if row is None:
            return "missing"
        if not row.terminal or (row.batch_id is not None and self.batch_active(row.batch_id)):
            return "active"
        deleted = await self.store.write(lambda c: sql.delete_job(c, job_id))
        if not deleted:
            return "active"
        await self.artifacts.discard([job_id])
        return "deleted"

    # -- start and housekeeping

    async def recover(self) -> tuple[int, int]:
        """Interrupted attempts back to the queue (or failed past max attempts); load queue.

        Returns (recovered, queued).
        """
        interrupted: list[JobRow] = await self.store.read(sql.interrupted_jobs)
        now = self.reactor.seconds()
        for row in interrupted:
            transition = jobstate.recovered(
                row.id, jobstate.JobState(row.state), row.attempts, self.max_attempts, now
            )
            if transition is not None:
                await self.apply(transition)
        if interrupted:
            await self.artifacts.discard([r.id for r in interrupted])
        queued = await self.store.read(sql.queued_jobs)
        self.queue.add_jobs(queued)
        return len(interrupted), len(queued)

    async def purge(self, retention: float) -> int:
        """Delete finished jobs (and artifacts) older than ``retention`` seconds."""
        total = 0
        while True:
            before = self.reactor.seconds() - retention
            ids: list[str] = await self.store.read(sql.expired_jobs, before)
            if not ids:
                return total
            await self.store.write(sql.delete_jobs, ids)
            await self.artifacts.discard(ids)
            total += len(ids)
