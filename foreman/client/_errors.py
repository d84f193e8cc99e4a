"""Typed exceptions for the client, and the pure mapping from an HTTP error reply to one.

Every exception carries foreman's error ``code`` and ``message`` and the HTTP
``status`` (None when no reply was received), so callers can branch on types
and still log exactly what foreman said.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from foreman.client._models import Batch, Job

__all__ = [
    "ArtifactNotFound",
    "BadRequest",
    "BatchNotFound",
    "Conflict",
    "FileNotFound",
    "ForemanConnectionError",
    "ForemanError",
    "IdempotencyConflict",
    "InvalidURL",
    "JobCancelled",
    "JobFailed",
    "JobNotFound",
    "NotFound",
    "PayloadTooLarge",
    "PullFailed",
    "QueueFull",
    "ReactorThreadError",
    "ServiceUnavailable",
    "Unauthorized",
    "WaitTimeout",
    "error_from_reply",
]


class ForemanError(Exception):
    """Base of every error this client raises about foreman or the job."""

    def __init__(self, message: str, *, code: str = "error", status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status
        self.attempt = 1  # which try of the call got this reply (retried calls: > 1)

    def __str__(self) -> str:
        where = f"HTTP {self.status} " if self.status is not None else ""
        return f"{where}{self.code}: {self.message}"


class BadRequest(ForemanError):
    """400: malformed JSON, a missing or invalid field."""


class Unauthorized(ForemanError):
    """401: missing or wrong Bearer token."""


class NotFound(ForemanError):
    """404 for anything but a job (an unknown route)."""


class JobNotFound(NotFound):
    """404: no such job (never existed, or deleted / expired)."""


class ArtifactNotFound(NotFound):
    """404: the job exists but has no artifact of that name (yet)."""


class BatchNotFound(NotFound):
    """404: no such batch (``/v1/batches/{id}``)."""


class FileNotFound(NotFound):
    """404: no such file (``/v1/files/{id}``): never uploaded, or deleted."""


class Conflict(ForemanError):
    """409: the job is in a state that does not allow this (cancel a finished job …).

    Also a batch's (cancel a finished batch) or a file's (delete the input of a
    running batch).
    """


class IdempotencyConflict(Conflict):
    """409: the Idempotency-Key was already used with a different body."""


class PayloadTooLarge(ForemanError):
    """413: the request body is over foreman's limit."""


class ServiceUnavailable(ForemanError):
    """503 (or 502/504 from a proxy in front) for a reason other than a full queue."""


class QueueFull(ServiceUnavailable):
    """503 queue full; ``retry_after`` is the server's hint in seconds (None if absent)."""

    def __init__(
        self,
        message: str,
        *,
        code: str = "queue_full",
        status: int | None = 503,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, code=code, status=status)
        self.retry_after = retry_after


class ForemanConnectionError(ForemanError, ConnectionError):
    """No usable reply: refused, reset, timed out — after the retries were spent."""

    def __init__(self, message: str, *, code: str = "connection_error") -> None:
        super().__init__(message, code=code, status=None)


class InvalidURL(ForemanError, ValueError):
    """The base URL cannot be used (not http/https, no host, a bad port, spaces …).

    Raised when a client is made, before any request, so a typo reads as one
    line about the URL rather than a transport traceback at the first call.
    """

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"unusable foreman URL {url!r}: {reason}", code="invalid_url")
        self.url = url
        self.reason = reason


class WaitTimeout(ForemanError, TimeoutError):
    """``wait``/``run``/``wait_batch`` gave up before the job (batch) finished; it keeps running.

    ``job`` is the last job seen (``wait``/``run``), ``batch`` the last batch
    seen (``wait_batch``).
    """

    def __init__(self, message: str, job: Job | None = None, *, batch: Batch | None = None) -> None:
        super().__init__(message, code="wait_timeout")
        self.job = job
        self.batch = batch


class _JobEnded(ForemanError):
    def __init__(self, job: Job) -> None:
        error = job.error
        code = error.code if error is not None else job.state.value
        message = error.message if error is not None else f"job {job.id} is {job.state.value}"
        super().__init__(message, code=code)
        self.job = job

    def __str__(self) -> str:
        return f"job {self.job.id} {self.job.state.value}: {self.code}: {self.message}"


class JobFailed(_JobEnded):
    """The job ended ``failed``; ``job`` is the final job (``job.error`` says why)."""


class JobCancelled(_JobEnded):
    """The job ended ``cancelled``; ``job`` is the final job."""


class PullFailed(ForemanError):
    """A model pull ended with an error line (for example: no such model in the registry)."""


class ReactorThreadError(RuntimeError):
    """A blocking ForemanClient call was made on the thread that runs the reactor.

    Blocking there would wait for the reactor to answer while stopping it from
    running: a deadlock. Code on the reactor thread uses AsyncForemanClient.
    """


def _retry_after(headers: dict[str, str]) -> float | None:
    raw = headers.get("retry-after")
    if raw is None:
        return None
    try:
        return max(0.0, float(raw.strip()))
    except ValueError:
        return None  # an HTTP date: rare for a queue hint; not worth parsing


def _code_and_message(status: int, body: bytes) -> tuple[str, str]:
    """foreman's ``{"error": {"code", "message"}}``; also Ollama's and OpenAI's shapes."""
    text = body.decode("utf-8", "replace").strip()
    try:
        payload: Any = json.loads(text)
    except ValueError:  # a proxy's or another server's page: one line of it
        return f"http_{status}", " ".join(text[:2000].split())[:300] or f"HTTP {status}"
    error = payload.get("error") if isinstance(payload, dict) else None
    if isinstance(error, dict):
        code = error.get("code") or error.get("type") or f"http_{status}"
        return str(code), str(error.get("message", ""))
    if isinstance(error, str):
        return f"http_{status}", error
    return f"http_{status}", text[:500]


_NOT_FOUND: dict[str, type[NotFound]] = {
    "job_not_found": JobNotFound,
    "artifact_not_found": ArtifactNotFound,
    "batch_not_found": BatchNotFound,
    "file_not_found": FileNotFound,
}


def error_from_reply(
    status: int,
    body: bytes,
    headers: dict[str, str],
    not_found: type[NotFound] | None = None,
) -> ForemanError:
    """The exception for an HTTP error reply (``headers`` with lower-case names).

    ``not_found`` is what a 404 means on the route asked (BatchNotFound on
    ``/v1/batches/{id}`` …) when the code does not say: OpenAI-shaped errors
    carry a generic code or only a ``type``.
    """
    code, message = _code_and_message(status, body)
    kind: type[ForemanError] = ForemanError
    if status == 400:
        kind = BadRequest
    elif status == 401:
        kind = Unauthorized
    elif status == 404:
        kind = _NOT_FOUND.get(code) or not_found or NotFound
    elif status == 409:
        kind = IdempotencyConflict if code == "idempotency_conflict" else Conflict
    elif status == 413:
        kind = PayloadTooLarge
    elif status == 503 and code == "queue_full":
        return QueueFull(message, code=code, status=status, retry_after=_retry_after(headers))
    elif status in (502, 503, 504):
        kind = ServiceUnavailable
    return kind(message, code=code, status=status)
