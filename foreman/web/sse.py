"""``GET /jobs/{id}/events``: a job's state changes and progress as Server-Sent Events.

State events carry ``id: <seq>`` (their durable sequence number), so a client
that reconnects with ``Last-Event-ID`` gets exactly the events it missed,
replayed from SQLite, then the live ones. Progress events (token counts)
carry no id: they are not durable and a resume simply gets fresh ones. The
listener is subscribed *before* the replay is read, so nothing falls in the
gap between the two. The stream ends after a terminal state.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import CancelledError, Deferred

from foreman.core.framing import format_sse
from foreman.core.jobstate import TERMINAL
from foreman.core.records import Event
from foreman.jobs.hub import Progress
from foreman.web.httpjson import json_error

if TYPE_CHECKING:
    from foreman.jobs.service import JobService

__all__ = ["stream_job_events"]

KEEPALIVE_SECONDS = 15.0
PROGRESS_INTERVAL = 0.25


def _last_event_id(request: Any) -> int:
    raw = request.getHeader(b"last-event-id")
    if raw is None:
        values = request.args.get(b"last_event_id")
        raw = values[-1] if values else None
    try:
        return max(0, int(raw)) if raw is not None else 0
    except ValueError:
        return 0


def _state_event(event: Event) -> bytes:
    return format_sse(event.data, event=event.type, id=str(event.seq))


async def stream_job_events(request: Any, jobs: JobService, job_id: str, reactor: Any) -> bytes:
    row = await jobs.get_row(job_id)
    if row is None:
        return json_error(request, 404, "job_not_found", f"no job {job_id!r}")
    last = _last_event_id(request)
    finished: Deferred[None] = Deferred()
    pending: list[Any] = []
    replaying = True
    last_progress = 0.0
    state = {"seq": last, "done": False}

    def send_event(event: Event) -> None:
        if event.seq <= state["seq"] or state["done"]:
            return
        state["seq"] = event.seq
        request.write(_state_event(event))
        if json.loads(event.data).get("state") in TERMINAL:
            state["done"] = True
            if not finished.called:
                finished.callback(None)

    def on_message(message: Any) -> None:
        nonlocal last_progress
        if replaying:
            pending.append(message)
            return
        if isinstance(message, Event):
            send_event(message)
        elif isinstance(message, Progress) and not state["done"]:
            now = time.monotonic()
            if now - last_progress >= PROGRESS_INTERVAL:
                last_progress = now
                body = json.dumps({"id": job_id, "tokens": message.tokens})
                request.write(format_sse(body, event="job.progress"))

    unsubscribe = jobs.hub.subscribe(job_id, on_message)
    keepalive: Any = None

    def send_eta() -> bool:
        """While it waits: its place and estimated start and finish (``job.eta``)."""
        if job_id not in jobs.queue.scheduler:
            return False
        position = jobs.queue.position(job_id, jobs.resident())
        body = json.dumps({"id": job_id, "position": position, "eta": jobs.eta_of(job_id)})
        request.write(format_sse(body, event="job.eta"))
        return True

    def ping() -> None:
        nonlocal keepalive
        if not send_eta():
            request.write(b": keep-alive\n\n")
        keepalive = reactor.callLater(KEEPALIVE_SECONDS, ping)

    try:
        request.setHeader(b"content-type", b"text/event-stream; charset=utf-8")
        request.setHeader(b"cache-control", b"no-cache")
        request.setHeader(b"x-accel-buffering", b"no")
        request.write(b"retry: 2000\n\n")
        for event in await jobs.events_after(job_id, last):
            send_event(event)
        replaying = False
        for message in pending:
            on_message(message)
        pending.clear()
        current = await jobs.get_row(job_id)
        if current is None or current.terminal:
            state["done"] = True  # resumed after the end: nothing more will come
        if not state["done"]:
            send_eta()
            keepalive = reactor.callLater(KEEPALIVE_SECONDS, ping)
            await finished
    except CancelledError:
        pass  # the client went away
    finally:
        unsubscribe()
        if keepalive is not None and keepalive.active():
            keepalive.cancel()
    return b""
