"""Job artifacts on disk: one directory per job under ``<data dir>/artifacts``.

Files are written off the reactor thread (``deferToThread``), each to a
temporary name then renamed, so a crash never leaves a half-written artifact
under its real name. ``request.json`` is not a file: it is served from the
job row, which already holds it.

A job's stream (``stream.ndjson``) is written while it arrives
(``StreamWriter``): pieces are gathered up to ``FLUSH_AT`` bytes and appended
by one thread write at a time, so the daemon holds at most about that much
of a stream however long the answer, and the file is renamed into place with
the rest of the job's artifacts.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.python.failure import Failure

from foreman.core.jobview import ARTIFACT_TYPES

__all__ = ["ArtifactStore", "StreamWriter"]

FLUSH_AT = 256 * 1024  # bytes of a stream gathered before one write to disk


class StreamWriter:
    """Appends a job's stream to ``.<name>.tmp`` as it arrives; see the module doc."""

    def __init__(self, folder: Path, name: str, flush_at: int = FLUSH_AT) -> None:
        self.folder = folder
        self.name = name
        self.tmp = folder / f".{name}.tmp"
        self.size = 0
        self._flush_at = flush_at
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._in_flight = 0
        self._writing: Deferred[None] | None = None
        self._error: OSError | None = None
        self._file: Any = None
        #: called after each write to disk, so a producer paused on ``pending`` can resume
        self.on_written: Callable[[], None] | None = None

    @property
    def pending(self) -> int:
        """Bytes taken but not yet on disk (buffered, or being written)."""
        return self._buffered + self._in_flight

    def write(self, data: bytes) -> None:
        if self._error is not None:
            return  # finish() reports it
        self._buffer.append(data)
        self._buffered += len(data)
        self.size += len(data)
        if self._buffered >= self._flush_at and self._writing is None:
            self._flush()

    def _flush(self) -> None:
        chunk = b"".join(self._buffer)
        self._buffer, self._buffered = [], 0
        self._in_flight = len(chunk)
        self._writing = deferToThread(self._append, chunk)
        self._writing.addBoth(self._written)

    def _append(self, chunk: bytes) -> None:
        if self._file is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._file = open(self.tmp, "wb")  # noqa: SIM115 - open across many writes
        self._file.write(chunk)

    def _written(self, result: Any) -> None:
        self._writing = None
        self._in_flight = 0
        if isinstance(result, Failure):
            error = result.value
            self._error = error if isinstance(error, OSError) else OSError(str(error))
            self._buffer, self._buffered = [], 0
        elif self._buffered >= self._flush_at:
            self._flush()
        if self.on_written is not None:
            self.on_written()

    async def finish(self) -> None:
        """Everything on disk and synced, still under the temporary name; OSError if not."""
        while self._writing is not None:
            await self._writing
        if self._error is None:
            await deferToThread(self._finish, b"".join(self._buffer))
            self._buffer, self._buffered = [], 0
        if self._error is not None:
            raise self._error

    def _finish(self, rest: bytes) -> None:
        try:
            self._append(rest)
            self._file.flush()
            os.fsync(self._file.fileno())
        except OSError as e:
            self._error = e
        finally:
            self._close()

    def _close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    async def abort(self) -> None:
        """The attempt ended without a result: drop what was written."""
        while self._writing is not None:
            await self._writing
        self._buffer, self._buffered = [], 0
        await deferToThread(self._remove)

    def _remove(self) -> None:
        # best effort: the attempt already failed, maybe for this very disk, and
        # discarding the job's directory removes whatever is left
        with contextlib.suppress(OSError):
            self._close()
        with contextlib.suppress(OSError):
            self.tmp.unlink(missing_ok=True)


class ArtifactStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, job_id: str, name: str) -> Path | None:
        """The file of a known artifact name, or None (unknown names, traversal)."""
        if name not in ARTIFACT_TYPES or name == "request.json":
            return None
        return self.root / job_id / name

    def stream(self, job_id: str, name: str) -> StreamWriter:
        """A writer for an artifact that arrives in pieces; ``write`` puts it in place."""
        if name not in ARTIFACT_TYPES:
            raise ValueError(f"not an artifact name: {name}")
        return StreamWriter(self.root / job_id, name)

    def write(
        self, job_id: str, files: dict[str, bytes], streamed: tuple[StreamWriter, ...] = ()
    ) -> Deferred[list[dict[str, Any]]]:
        """Write ``files`` and rename finished ``streamed`` ones into place; the listing."""
        return deferToThread(self._write, job_id, files, streamed)

    def _write(
        self, job_id: str, files: dict[str, bytes], streamed: tuple[StreamWriter, ...]
    ) -> list[dict[str, Any]]:
        folder = self.root / job_id
        folder.mkdir(parents=True, exist_ok=True)
        listing = []
        for name, data in files.items():
            if name not in ARTIFACT_TYPES:
                raise ValueError(f"not an artifact name: {name}")
            tmp = folder / f".{name}.tmp"
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, folder / name)
            listing.append({"name": name, "size": len(data)})
        for writer in streamed:
            os.replace(writer.tmp, folder / writer.name)
            listing.append({"name": writer.name, "size": writer.size})
        return listing

    def discard(self, job_ids: list[str]) -> Deferred[None]:
        return deferToThread(self._discard, job_ids)

    def _discard(self, job_ids: list[str]) -> None:
        for job_id in job_ids:
            shutil.rmtree(self.root / job_id, ignore_errors=True)
