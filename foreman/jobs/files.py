"""Uploaded and batch output files on disk: ``<data dir>/files/<file id>``.

A file is written under ``.<file id>.tmp`` (through ``StreamWriter``: thread
writes of gathered pieces, then fsync) and renamed to its id only once
whole, so a crash never leaves a half file under a real name; ``sweep``
removes what a crash left behind. The ``files`` row is the file's existence
for clients; it is written after the rename.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread

from foreman.core.ids import FILE_ID
from foreman.jobs.artifacts import StreamWriter

__all__ = ["UPLOAD_FLUSH_AT", "FileStore"]

UPLOAD_FLUSH_AT = 1024 * 1024  # bytes of an upload gathered before one write to disk


class FileStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, file_id: str) -> Path | None:
        """Where ``file_id`` is kept; None for anything that is not a file id."""
        if not FILE_ID.match(file_id):
            return None
        return self.root / file_id

    def writer(self, file_id: str) -> StreamWriter:
        """A writer for a new file; ``publish`` puts it under its id."""
        return StreamWriter(self.root, file_id, flush_at=UPLOAD_FLUSH_AT)

    def publish(self, writer: StreamWriter) -> Deferred[None]:
        """Rename a finished writer's file into place (``finish`` first)."""
        return deferToThread(os.replace, writer.tmp, self.root / writer.name)

    def delete(self, file_id: str) -> Deferred[None]:
        return deferToThread(self._delete, file_id)

    def _delete(self, file_id: str) -> None:
        path = self.path(file_id)
        if path is not None:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def sweep(self, known: set[str]) -> Deferred[int]:
        """Remove what a stop interrupted: temporary files, and files with no row in ``known``.

        A file is renamed into place before its row commits; a crash in between
        leaves a file no client can see, which is removed here.
        """
        return deferToThread(self._sweep, known)

    def _sweep(self, known: set[str]) -> int:
        self.root.mkdir(parents=True, exist_ok=True)
        removed = 0
        for entry in self.root.iterdir():
            temporary = entry.name.startswith(".") and entry.name.endswith(".tmp")
            orphan = FILE_ID.match(entry.name) is not None and entry.name not in known
            if temporary or orphan:
                with contextlib.suppress(OSError):
                    entry.unlink()
                    removed += 1
        return removed

    def lines(self, file_id: str, limit: int) -> Iterator[bytes]:
        """The file's lines, each at most ``limit`` bytes (longer ones cut): call in a thread."""
        path = self.path(file_id)
        if path is None:
            return
        with open(path, "rb") as f:
            while True:
                line = f.readline(limit + 1)
                if not line:
                    return
                if len(line) > limit and not line.endswith(b"\n"):
                    # the rest of an over-long line is skipped, never held
                    while True:
                        more = f.readline(1024 * 1024)
                        if not more or more.endswith(b"\n"):
                            break
                yield line
