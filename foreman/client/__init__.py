"""foreman's client library: the job API as typed values and exceptions.

* :class:`AsyncForemanClient` — Twisted (and asyncio, through Twisted's asyncio
  reactor): every call returns a Deferred.
* :class:`ForemanClient` — the same calls, blocking, for programs without a
  reactor; the reactor runs in a shared background thread.

Both also speak OpenAI's Batch API as foreman serves it (``upload_file``,
``submit_batch``, ``wait_batch``, ``batch_output`` …), and control the queue
as a whole (``pause``, ``resume``, ``drain``, ``activity``). ``foreman
keep-awake`` (:mod:`foreman.client.keepawake`) keeps the box running Ollama
awake while there is work.

See ``docs/client.md``.
"""

from __future__ import annotations

from foreman.client._async import AsyncForemanClient
from foreman.client._blocking import BlockingIterator, ForemanClient
from foreman.client._errors import (
    ArtifactNotFound,
    BadRequest,
    BatchNotFound,
    Conflict,
    FileNotFound,
    ForemanConnectionError,
    ForemanError,
    IdempotencyConflict,
    InvalidURL,
    JobCancelled,
    JobFailed,
    JobNotFound,
    NotFound,
    PayloadTooLarge,
    PullFailed,
    QueueFull,
    ReactorThreadError,
    ServiceUnavailable,
    Unauthorized,
    WaitTimeout,
)
from foreman.client._models import (
    Artifact,
    Batch,
    BatchCounts,
    BatchError,
    BatchPage,
    BatchResult,
    BatchStatus,
    FileObject,
    FilePage,
    Job,
    JobError,
    JobEvent,
    JobPage,
    JobState,
    QueueActivity,
    QueueItem,
    QueueState,
)
from foreman.client._retry import RetryPolicy
from foreman.client._streams import AsyncioIterator, EventStream, JobIterator, PullStream

__all__ = [
    "Artifact",
    "ArtifactNotFound",
    "AsyncForemanClient",
    "AsyncioIterator",
    "BadRequest",
    "Batch",
    "BatchCounts",
    "BatchError",
    "BatchNotFound",
    "BatchPage",
    "BatchResult",
    "BatchStatus",
    "BlockingIterator",
    "Conflict",
    "EventStream",
    "FileNotFound",
    "FileObject",
    "FilePage",
    "ForemanClient",
    "ForemanConnectionError",
    "ForemanError",
    "IdempotencyConflict",
    "InvalidURL",
    "Job",
    "JobCancelled",
    "JobError",
    "JobEvent",
    "JobFailed",
    "JobIterator",
    "JobNotFound",
    "JobPage",
    "JobState",
    "NotFound",
    "PayloadTooLarge",
    "PullFailed",
    "PullStream",
    "QueueActivity",
    "QueueFull",
    "QueueItem",
    "QueueState",
    "ReactorThreadError",
    "RetryPolicy",
    "ServiceUnavailable",
    "Unauthorized",
    "WaitTimeout",
]
