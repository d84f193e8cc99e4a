"""Job artifacts on disk: one directory per job under ``<data dir>/artifacts``.

Files are written off the reactor thread (``deferToThread``), each to a
temporary name then renamed, so a crash never leaves a half-written artifact
under its real name. ``request.json`` is not a file: it is served from the
job row, which already holds it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread

from foreman.core.jobview import ARTIFACT_TYPES

__all__ = ["ArtifactStore"]


class ArtifactStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, job_id: str, name: str) -> Path | None:
        """The file of a known artifact name, or None (unknown names, traversal)."""
        if name not in ARTIFACT_TYPES or name == "request.json":
            return None
        return self.root / job_id / name

    def write(self, job_id: str, files: dict[str, bytes]) -> Deferred[list[dict[str, Any]]]:
        return deferToThread(self._write, job_id, files)

    def _write(self, job_id: str, files: dict[str, bytes]) -> list[dict[str, Any]]:
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
        return listing

    def discard(self, job_ids: list[str]) -> Deferred[None]:
        return deferToThread(self._discard, job_ids)

    def _discard(self, job_ids: list[str]) -> None:
        for job_id in job_ids:
            shutil.rmtree(self.root / job_id, ignore_errors=True)
