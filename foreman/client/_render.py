"""Text for the command line (pure): job and batch summaries, tables, progress lines, answers."""

from __future__ import annotations

import datetime
import json
from collections import deque
from collections.abc import Iterable
from typing import Any

from foreman.client._models import Batch, BatchStatus, Job, QueueState

__all__ = [
    "RateMeter",
    "answer_text",
    "batch_line",
    "batch_summary",
    "batch_table",
    "build_request",
    "duration",
    "grouped",
    "human_bytes",
    "job_line",
    "job_summary",
    "job_table",
    "pull_bar",
    "pull_line",
    "queue_line",
    "queue_summary",
]


def human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def _when(at: datetime.datetime | None) -> str:
    return at.isoformat(timespec="seconds").replace("+00:00", "Z") if at else "-"


def build_request(endpoint: str, model: str, prompt: str) -> dict[str, Any]:
    """The smallest request body for ``endpoint`` asking ``model`` about ``prompt``."""
    if endpoint in ("/api/generate", "/v1/completions"):
        return {"model": model, "prompt": prompt}
    if endpoint in ("/api/embed", "/v1/embeddings"):
        return {"model": model, "input": prompt}
    if endpoint == "/api/embeddings":
        return {"model": model, "prompt": prompt}
    if endpoint == "/v1/responses":
        return {"model": model, "input": prompt}
    if endpoint == "/v1/messages":
        return {
            "model": model,
            "max_tokens": 1024,
            "messages": [{"role": "user", "content": prompt}],
        }
    return {"model": model, "messages": [{"role": "user", "content": prompt}]}


def answer_text(result: dict[str, Any]) -> str | None:
    """The generated text of a response in any of the inference shapes, else None."""
    message = result.get("message")
    if isinstance(message, dict) and isinstance(message.get("content"), str):
        return str(message["content"])  # /api/chat
    if isinstance(result.get("response"), str):
        return str(result["response"])  # /api/generate
    choices = result.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        first = choices[0]
        if isinstance(first.get("message"), dict):
            return str(first["message"].get("content") or "")  # /v1/chat/completions
        if isinstance(first.get("text"), str):
            return str(first["text"])  # /v1/completions
    if isinstance(result.get("output_text"), str):
        return str(result["output_text"])
    content = result.get("content")
    if isinstance(content, list):  # /v1/messages
        texts = [c.get("text", "") for c in content if isinstance(c, dict)]
        return "".join(t for t in texts if isinstance(t, str))
    output = result.get("output")
    if isinstance(output, list):  # /v1/responses
        parts = []
        for item in output:
            content = item.get("content") if isinstance(item, dict) else None
            for c in content if isinstance(content, list) else ():
                if isinstance(c, dict) and isinstance(c.get("text"), str):
                    parts.append(c["text"])
        return "".join(parts)
    return None


def starts_in(eta: dict[str, Any] | None, now: datetime.datetime | None = None) -> str | None:
    """``starts in ~12s`` from a job's ``eta`` (``~?`` marks a guess: nothing learned yet)."""
    if not eta or not isinstance(eta.get("start_at"), str):
        return None
    try:
        start = datetime.datetime.fromisoformat(eta["start_at"])
    except ValueError:
        return None
    now = now or datetime.datetime.now(datetime.UTC)
    left = max(0.0, (start - now).total_seconds())
    mark = "~" if eta.get("known") else "~? "
    return f"starts in {mark}{duration(left)}"


def job_line(
    job_id: str,
    state: str,
    tokens: int | None,
    elapsed: float | None,
    waiting: str | None = None,
) -> str:
    """One status line: ``job_… working  12 tokens  3.4 s`` (queued: ``starts in ~12s``)."""
    parts = [job_id, state]
    if waiting is not None and state == "queued":
        parts.append(waiting)
    if tokens is not None:
        parts.append(f"{tokens} token{'s' if tokens != 1 else ''}")
    if elapsed is not None:
        parts.append(f"{elapsed:.1f} s")
    return "  ".join(parts)


def job_summary(job: Job) -> str:
    rows = [
        ("id", job.id),
        ("state", job.state.value),
        ("model", job.model),
        ("endpoint", job.endpoint),
        ("priority", str(job.priority)),
        ("attempts", str(job.attempts)),
        ("created", _when(job.created_at)),
        ("started", _when(job.started_at)),
        ("finished", _when(job.finished_at)),
    ]
    if job.position is not None:
        rows.append(("position", str(job.position)))
    if job.tokens is not None:
        rows.append(("tokens", str(job.tokens)))
    if job.error is not None:
        rows.append(("error", f"{job.error.code}: {job.error.message}"))
    if job.metadata is not None:
        rows.append(("metadata", json.dumps(job.metadata)))
    if job.webhook_url:
        rows.append(("webhook", job.webhook_url))
    for artifact in job.artifacts:
        rows.append(("artifact", f"{artifact.name} ({human_bytes(artifact.size)})"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def job_table(jobs: Iterable[Job]) -> str:
    header = ("ID", "STATE", "MODEL", "TOKENS", "CREATED")
    rows = [header] + [
        (
            j.id,
            j.state.value,
            j.model,
            "-" if j.tokens is None else str(j.tokens),
            _when(j.created_at),
        )
        for j in jobs
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def pull_line(model: str, progress: dict[str, Any]) -> str:
    """Plain progress line: ``gemma3: pulling 75b270712216 (1.9 GB)``."""
    status = str(progress.get("status", ""))
    total = progress.get("total")
    if isinstance(total, int) and total > 0 and "completed" not in progress:
        return f"{model}: {status} ({human_bytes(total)})"
    return f"{model}: {status}"


def pull_bar(model: str, progress: dict[str, Any], width: int = 80) -> str:
    """Progress-bar line for a terminal, at most ``width`` characters."""
    status = str(progress.get("status", ""))
    total = progress.get("total")
    done = progress.get("completed") or 0
    if not isinstance(total, int) or total <= 0:
        return f"{model}  {status}"[:width]
    fraction = min(1.0, max(0.0, done / total))
    amounts = f"{human_bytes(done)}/{human_bytes(total)}"
    tail = f" {fraction * 100:3.0f}%  {amounts:<19}".rstrip()
    head = f"{model}  {status}  "
    bar_width = max(10, width - len(head) - 26)
    filled = int(bar_width * fraction)
    line = f"{head}[{'#' * filled}{'-' * (bar_width - filled)}]{tail}"
    return line[:width]


# -- batches


def grouped(n: int) -> str:
    """``1 234 567``: thousands apart, readable at a glance in a progress line."""
    return f"{n:,}".replace(",", " ")


def duration(seconds: float) -> str:
    """``45s``, ``3m56s``, ``1h02m``, ``2d03h``."""
    total = max(0, round(seconds))
    if total < 60:
        return f"{total}s"
    if total < 3600:
        return f"{total // 60}m{total % 60:02d}s"
    if total < 86400:
        return f"{total // 3600}h{total % 3600 // 60:02d}m"
    return f"{total // 86400}d{total % 86400 // 3600:02d}h"


def _rate_text(rate: float) -> str:
    if rate >= 0.1:
        return f"{rate:.1f}/s"
    return f"{rate * 60:.1f}/min"


class RateMeter:
    """Lines per second from observed progress, over the last ``window`` seconds.

    ``add(time, done)`` records an observation (``done`` = completed + failed);
    ``rate`` is None until two observations some time apart show progress.
    The oldest observation inside the window (and one just before it) is the
    baseline, so the rate follows a batch that speeds up or stalls.
    """

    def __init__(self, window: float = 60.0) -> None:
        self._window = window
        self._samples: deque[tuple[float, int]] = deque()

    def add(self, at: float, done: int) -> None:
        if self._samples and done < self._samples[-1][1]:
            self._samples.clear()  # a count went back (another batch?): start over
        self._samples.append((at, done))
        while len(self._samples) > 2 and self._samples[1][0] <= at - self._window:
            self._samples.popleft()

    @property
    def rate(self) -> float | None:
        if len(self._samples) < 2:
            return None
        (t0, d0), (t1, d1) = self._samples[0], self._samples[-1]
        if t1 <= t0 or d1 <= d0:
            return None
        return (d1 - d0) / (t1 - t0)

    def eta(self, total: int, done: int) -> float | None:
        """Seconds until ``total`` at the current rate (None while it is unknown)."""
        if done >= total:
            return 0.0
        rate = self.rate
        return None if rate is None else (total - done) / rate


def batch_line(
    batch: Batch, rate: float | None = None, eta: float | None = None, elapsed: float | None = None
) -> str:
    """One progress line: ``batch_… in_progress  1 234/10 000 done, 3 failed  41.2/s  ETA 3m56s``.

    Rate and ETA are shown while lines run (``ETA —`` until a rate is known);
    ``elapsed`` (the final line) is how long it was followed.
    """
    parts = [batch.id, batch.status.value]
    counts = batch.request_counts
    if counts.total or batch.status is not BatchStatus.VALIDATING:
        progress = f"{grouped(counts.done)}/{grouped(counts.total)} done"
        if counts.failed:
            progress += f", {grouped(counts.failed)} failed"
        parts.append(progress)
    if batch.status is BatchStatus.IN_PROGRESS:
        if rate is not None:
            parts.append(_rate_text(rate))
        parts.append(f"ETA {duration(eta) if eta is not None else '—'}")
    if elapsed is not None:
        parts.append(f"in {duration(elapsed)}")
    return "  ".join(parts)


def batch_summary(batch: Batch) -> str:
    counts = batch.request_counts
    requests = f"{grouped(counts.total)} total, {grouped(counts.completed)} completed"
    requests += f", {grouped(counts.failed)} failed"
    rows = [
        ("id", batch.id),
        ("status", batch.status.value),
        ("endpoint", batch.endpoint),
        ("input", batch.input_file_id),
        ("requests", requests),
        ("output", batch.output_file_id or "-"),
        ("errors", batch.error_file_id or "-"),
        ("created", _when(batch.created_at)),
    ]
    if batch.in_progress_at is not None:
        rows.append(("started", _when(batch.in_progress_at)))
    if batch.finished_at is not None:
        rows.append((batch.status.value, _when(batch.finished_at)))
    elif batch.expires_at is not None:
        rows.append(("expires", _when(batch.expires_at)))
    if batch.usage:
        tokens = [
            f"{batch.usage[k]} {k.removesuffix('_tokens')}"
            for k in ("input_tokens", "output_tokens", "total_tokens")
            if isinstance(batch.usage.get(k), int)
        ]
        if tokens:
            rows.append(("tokens", ", ".join(tokens)))
    if batch.metadata:
        rows.append(("metadata", json.dumps(batch.metadata)))
    for error in batch.errors:
        rows.append(("error", str(error)))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def batch_table(batches: Iterable[Batch]) -> str:
    header = ("ID", "STATUS", "ENDPOINT", "DONE", "FAILED", "CREATED")
    rows = [header] + [
        (
            b.id,
            b.status.value,
            b.endpoint,
            f"{b.request_counts.done}/{b.request_counts.total}",
            str(b.request_counts.failed),
            _when(b.created_at),
        )
        for b in batches
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


# -- the queue as a whole


def queue_line(state: QueueState) -> str:
    """``paused since 2026-…Z: 3 queued, 1 running``: the state and what waits or runs."""
    head = state.status
    if state.paused and state.since is not None:
        head += f" since {_when(state.since)}"
    running = "1 running" if state.running else "nothing running"
    return f"{head}: {grouped(state.queued)} queued, {running}"


def queue_summary(state: QueueState) -> str:
    """``foreman queue show``: the state, then the first waiting items in dispatch order."""
    rows = [("state", state.status)]
    if state.paused and state.since is not None:
        rows.append(("since", _when(state.since)))
    rows += [
        ("queued", grouped(state.queued)),
        ("running", "yes" if state.running else "no"),
        ("loaded", state.loaded_model or "-"),
    ]
    width = max(len(k) for k, _ in rows)
    text = "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)
    if not state.items:
        return text
    header = ("POS", "KIND", "MODEL", "PRIORITY", "WAITED", "STARTS", "ID")
    table = [header] + [
        (
            str(i.position),
            i.kind,
            i.model,
            str(i.priority),
            duration(i.waited),
            (starts_in(i.eta) or "-").removeprefix("starts in "),
            i.id or i.path or "-",
        )
        for i in state.items
    ]
    widths = [max(len(r[c]) for r in table) for c in range(len(header))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in table
    ]
    shown = len(state.items)
    if state.queued > shown:
        lines.append(f"… and {grouped(state.queued - shown)} more")
    return text + "\n\n" + "\n".join(lines)
