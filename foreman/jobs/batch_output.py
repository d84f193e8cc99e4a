"""A finished batch's output and error files, written from its lines' jobs (ADR 0018).

Lines are read from ``jobs`` a chunk at a time, in file order, one row per
line, so every ``custom_id`` appears exactly once however many attempts or
restarts there were. The files are written through ``StreamWriter`` (thread
writes, fsync) and renamed into place; their ``files`` rows are the caller's
to commit, with the batch's end, in one transaction.
"""

from __future__ import annotations

import json
from typing import Any

from attrs import frozen
from twisted.internet.threads import deferToThread

from foreman.core.batchstate import BatchStatus
from foreman.core.batchview import BatchRow, FileRow, Usage, line_result
from foreman.core.ids import new_file_id
from foreman.core.jobstate import JobState
from foreman.jobs.artifacts import ArtifactStore, StreamWriter
from foreman.jobs.files import FileStore
from foreman.store import batches as sql
from foreman.store.database import Store

__all__ = ["OUTPUT_CHUNK", "Output", "write_output"]

OUTPUT_CHUNK = 1000  # lines read per query while the output is written


@frozen
class Output:
    """The files written for a batch, and what they hold."""

    files: tuple[FileRow, ...]
    completed: int
    failed: int
    usage: Usage
    output_file_id: str | None
    error_file_id: str | None

    def fields(self) -> tuple[tuple[str, Any], ...]:
        """The batch columns this output sets."""
        return (
            ("output_file_id", self.output_file_id),
            ("error_file_id", self.error_file_id),
            ("total", self.completed + self.failed),
            ("completed", self.completed),
            ("failed", self.failed),
            ("usage", json.dumps(self.usage.as_dict())),
        )


def _name(batch_id: str, errors: bool) -> str:
    return f"{batch_id}_{'error' if errors else 'output'}.jsonl"


def _bodies(artifacts: ArtifactStore, lines: list[tuple[Any, ...]]) -> list[Any]:
    """The answers of done lines (inline, or from ``response.json``): in a thread."""
    found: list[Any] = []
    for job_id, _c, _l, state, _code, _msg, _status, result, _artifacts in lines:
        if state != JobState.DONE.value:
            found.append(None)
        elif result:
            found.append(json.loads(result))
        else:
            path = artifacts.path(job_id, "response.json")
            try:
                assert path is not None
                found.append(json.loads(path.read_bytes()))
            except (OSError, ValueError):
                found.append(None)
    return found


async def write_output(
    store: Store,
    files: FileStore,
    artifacts: ArtifactStore,
    row: BatchRow,
    ending: BatchStatus,
    now: float,
) -> Output:
    """Write the batch's output and error files (only those with lines) and put them in place."""
    output = files.writer(new_file_id(now))
    errors = files.writer(new_file_id(now))
    usage = Usage()
    completed = failed = after = 0
    try:
        while True:
            lines = await store.read(sql.batch_lines, row.id, after, OUTPUT_CHUNK)
            if not lines:
                break
            after = lines[-1][2]
            bodies = await deferToThread(_bodies, artifacts, lines)
            for values, body in zip(lines, bodies, strict=True):
                job_id, custom_id, _, state, code, message, status_code = values[:7]
                result = line_result(
                    job_id=job_id,
                    custom_id=custom_id,
                    endpoint=row.endpoint,
                    state=state,
                    error_code=code,
                    error_message=message,
                    error_status=status_code,
                    body=body,
                    ending=ending,
                )
                text = json.dumps(result.line, separators=(",", ":")).encode() + b"\n"
                if result.error:
                    failed += 1
                    errors.write(text)
                else:
                    completed += 1
                    usage = usage.add(body)
                    output.write(text)
        placed = (
            await _place(files, output, completed, _name(row.id, False), row.id, now),
            await _place(files, errors, failed, _name(row.id, True), row.id, now),
        )
    except BaseException:
        await output.abort()
        await errors.abort()
        raise
    return Output(
        files=tuple(f for f in placed if f is not None),
        completed=completed,
        failed=failed,
        usage=usage,
        output_file_id=output.name if completed else None,
        error_file_id=errors.name if failed else None,
    )


async def _place(
    files: FileStore, writer: StreamWriter, kept: int, name: str, batch_id: str, now: float
) -> FileRow | None:
    """Sync and rename a file that has lines; drop one that has none."""
    await writer.finish()
    if not kept:
        await writer.abort()
        return None
    await files.publish(writer)
    return FileRow(writer.name, "batch_output", name, writer.size, now, batch_id)
