"""Text for the command line (pure): job summaries, tables, progress lines, answer text."""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterable
from typing import Any

from foreman.client._models import Job

__all__ = [
    "answer_text",
    "build_request",
    "human_bytes",
    "job_line",
    "job_summary",
    "job_table",
    "pull_bar",
    "pull_line",
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


def job_line(job_id: str, state: str, tokens: int | None, elapsed: float | None) -> str:
    """One status line: ``job_… working  12 tokens  3.4 s``."""
    parts = [job_id, state]
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
