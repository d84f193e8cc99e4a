"""The public job object (SPEC "Jobs"), rendered from a row. Pure."""

from __future__ import annotations

import datetime
import json
from typing import Any

from foreman.core.jobstate import JobState
from foreman.core.records import JobRow

__all__ = ["ARTIFACT_TYPES", "RESULT_INLINE_LIMIT", "job_object", "queued_json", "rfc3339"]

RESULT_INLINE_LIMIT = 64 * 1024

ARTIFACT_TYPES = {
    "request.json": "application/json",
    "response.json": "application/json",
    "stream.ndjson": "application/x-ndjson",
}


#: UTC dates already formatted (``2026-12-05``) by day number since the epoch
_DAYS: dict[int, str] = {}
_DAYS_KEPT = 4096
_YEAR_10000 = 253_402_300_800  # the first second datetime cannot show


def rfc3339(at: float | None) -> str | None:
    """``at`` (epoch seconds) as ``2026-12-05T08:45:12.345Z``, milliseconds truncated.

    The same text as ``datetime.fromtimestamp(at, UTC).isoformat(timespec=
    "milliseconds")`` with ``Z``: microseconds rounded half to even as datetime
    does, then cut to milliseconds. Only the date is formatted by datetime,
    once per day seen; the time of day is arithmetic (UTC has no leap seconds
    in epoch time).
    """
    if at is None:
        return None
    if not 0 <= at < _YEAR_10000:  # also NaN: datetime says what is wrong with it
        dt = datetime.datetime.fromtimestamp(at, tz=datetime.UTC)
        return dt.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    second = int(at)
    micros = round((at - second) * 1e6)
    if micros >= 1_000_000:
        second += 1
        micros -= 1_000_000
    day, clock = divmod(second, 86_400)
    date = _DAYS.get(day)
    if date is None:
        if len(_DAYS) >= _DAYS_KEPT:
            _DAYS.clear()
        date = _DAYS[day] = datetime.date.fromordinal(_EPOCH_ORDINAL + day).isoformat()
    hours, clock = divmod(clock, 3600)
    minutes, seconds = divmod(clock, 60)
    two = _TWO_DIGITS
    return f"{date}T{two[hours]}:{two[minutes]}:{two[seconds]}.{_THREE_DIGITS[micros // 1000]}Z"


_EPOCH_ORDINAL = datetime.date(1970, 1, 1).toordinal()
# zero-padded numbers by index: an f-string format spec costs ten times a lookup
_TWO_DIGITS = tuple(f"{n:02d}" for n in range(60))
_THREE_DIGITS = tuple(f"{n:03d}" for n in range(1000))


def artifact_list(row: JobRow, base_url: str) -> list[dict[str, Any]]:
    prefix = f"{base_url}/jobs/{row.id}/artifacts/"
    found: list[dict[str, Any]] = [{"name": "request.json", "size": len(row.request.encode())}]
    found += json.loads(row.artifacts) if row.artifacts else []
    return [
        {
            "name": a["name"],
            "url": prefix + a["name"],
            "size": a["size"],
            "content_type": ARTIFACT_TYPES[a["name"]],
        }
        for a in found
    ]


def job_object(
    row: JobRow,
    base_url: str,
    *,
    position: int | None = None,
    tokens: int | None = None,
    seq: int | None = None,
    eta: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The job as clients see it; ``tokens`` overrides the stored count while working."""
    error = None
    if row.error_code is not None:
        error = {"code": row.error_code, "message": row.error_message or ""}
    count = row.tokens if tokens is None else tokens
    body: dict[str, Any] = {
        "id": row.id,
        "object": "job",
        "state": row.state,
        "endpoint": row.endpoint,
        "model": row.model,
        "priority": row.priority,
        "metadata": json.loads(row.metadata) if row.metadata else None,
        "attempts": row.attempts,
        "error": error,
        "created_at": rfc3339(row.created_at),
        "started_at": rfc3339(row.started_at),
        "finished_at": rfc3339(row.finished_at),
        "position": position if row.state == JobState.QUEUED else None,
        "eta": eta if row.state == JobState.QUEUED else None,
        "progress": {"tokens": count} if row.state == JobState.WORKING or count else None,
        "artifacts": artifact_list(row, base_url),
        "result": json.loads(row.result) if row.result else None,
    }
    if row.webhook_url is not None:
        body["webhook_url"] = row.webhook_url
    if row.batch_id is not None:
        body["batch"] = {"id": row.batch_id, "custom_id": row.custom_id, "line": row.line}
    if seq is not None:
        body["seq"] = seq
    return body


# A job's first event (``job.queued``) renders its object with ``seq`` 1 and no
# place or estimate; the answer to its ``POST /jobs`` is that object with them.
_NO_PLACE = ',"position":null,"eta":null,'
_FIRST_SEQ = ',"seq":1}'


def queued_json(event_json: str, position_json: str, eta_json: str) -> str | None:
    """The compact JSON of ``job_object(row, base, position=…, eta=…)`` from the
    compact JSON of ``job_object(row, base, seq=1)`` (a queued job's first event),
    without encoding the object again; None if ``event_json`` is not of that shape.

    The place and estimate are the ``"position":null,"eta":null`` found last: what
    follows them at the top level (progress, artifacts, result, webhook_url, batch,
    seq) cannot hold that text, and inside a JSON string every quote is escaped.
    """
    if not event_json.endswith(_FIRST_SEQ):
        return None
    at = event_json.rfind(_NO_PLACE)
    if at < 0:
        return None
    rest = event_json[at + len(_NO_PLACE) : -len(_FIRST_SEQ)]
    return f'{event_json[:at]},"position":{position_json},"eta":{eta_json},{rest}}}'
