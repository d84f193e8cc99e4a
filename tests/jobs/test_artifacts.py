"""A job's stream goes to disk while it arrives, in bounded pieces."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytest_twisted

from foreman.jobs.artifacts import FLUSH_AT, ArtifactStore, StreamWriter


@pytest_twisted.ensureDeferred
async def test_a_long_stream_is_written_in_pieces_and_put_in_place(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    writer = store.stream("job_1", "stream.ndjson")
    piece = b'{"message":{"content":"token"},"done":false}\n'
    held = writes = 0
    for _ in range(100_000):  # about 4.5 MB, arriving while the disk keeps up
        writer.write(piece)
        held = max(held, writer._buffered)
        if writer._writing is not None:
            writes += 1
            await writer._writing
    assert held < FLUSH_AT + len(piece)  # never more than one flush's worth in memory
    assert writes == len(piece) * 100_000 // FLUSH_AT  # and it went out in pieces
    await writer.finish()
    assert writer.tmp.exists() and not (tmp_path / "job_1" / "stream.ndjson").exists()
    listing = await store.write("job_1", {"response.json": b"{}"}, (writer,))
    assert listing == [
        {"name": "response.json", "size": 2},
        {"name": "stream.ndjson", "size": len(piece) * 100_000},
    ]
    assert (tmp_path / "job_1" / "stream.ndjson").read_bytes() == piece * 100_000
    assert not writer.tmp.exists()


@pytest_twisted.ensureDeferred
async def test_abort_leaves_nothing(tmp_path: Path) -> None:
    writer = ArtifactStore(tmp_path).stream("job_2", "stream.ndjson")
    writer.write(b"x" * (FLUSH_AT + 1))  # one write to disk under way
    await writer.abort()
    assert list((tmp_path / "job_2").iterdir()) == []


@pytest_twisted.ensureDeferred
async def test_a_full_disk_is_reported_by_finish(tmp_path: Path) -> None:
    folder = tmp_path / "job_3"
    folder.mkdir()
    (folder / ".stream.ndjson.tmp").symlink_to("/dev/full")
    writer = StreamWriter(folder, "stream.ndjson")
    writer.write(b"y" * (FLUSH_AT * 2))
    with pytest.raises(OSError) as caught:
        await writer.finish()
    assert caught.value.errno == 28  # ENOSPC
    writer.write(b"more")  # after an error: dropped, not buffered
    assert writer._buffered == 0
    await writer.abort()
    assert list(folder.iterdir()) == []


def test_only_artifact_names_stream(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not an artifact name"):
        ArtifactStore(tmp_path).stream("job_4", "../escape")
