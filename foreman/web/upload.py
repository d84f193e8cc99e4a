"""A ``POST /v1/files`` body, parsed and written to disk while it arrives.

``ForemanRequest`` hands every body chunk of an upload here instead of
buffering it (Twisted would otherwise keep the whole body, then parse the
form in memory). The ``file`` part goes to a ``StreamWriter``; when the disk
falls behind by more than ``HIGH_WATER`` bytes the connection stops reading
until it catches up, so memory stays flat whatever the upload's size. Small
fields (``purpose``) are kept in memory, bounded.
"""

from __future__ import annotations

from typing import Any

from attrs import define, field

from foreman.core.errors import BadRequest
from foreman.core.multipart import (
    MultipartError,
    MultipartParser,
    PartData,
    PartEnd,
    PartStart,
    boundary_of,
)
from foreman.jobs.artifacts import StreamWriter

__all__ = ["HIGH_WATER", "Upload", "UploadTooLarge", "Uploaded"]

HIGH_WATER = 4 * 1024 * 1024  # bytes not yet on disk before the connection pauses
FIELD_LIMIT = 4096  # a form field other than the file (purpose …)


class UploadTooLarge(BadRequest):
    def __init__(self, limit: int) -> None:
        super().__init__(
            f"the upload is over the limit of {limit} bytes (FOREMAN_BATCH_MAX_BYTES)",
            "file_too_large",
            413,
        )
        self.limit = limit


@define
class Uploaded:
    """A complete upload: the file on disk under its temporary name, and the fields."""

    writer: StreamWriter
    filename: str
    fields: dict[str, str]


@define
class Upload:
    """One upload in progress; see the module docstring."""

    content_type: str
    new_writer: Any  # () -> StreamWriter
    limit: int
    transport: Any  # the connection: paused while the disk is behind
    error: Exception | None = None
    writer: StreamWriter | None = None
    filename: str | None = None
    fields: dict[str, str] = field(factory=dict)
    _parser: MultipartParser | None = None
    _current: str | None = None  # the part being read: "file", a field name, or None
    _received: int = 0
    _paused: bool = False
    _finished: bool = False

    def __attrs_post_init__(self) -> None:
        try:
            self._parser = MultipartParser(boundary_of(self.content_type))
        except MultipartError as e:
            self.error = BadRequest(
                f"expected a multipart/form-data body with fields file and purpose: {e}",
                "invalid_request",
            )

    def feed(self, data: bytes) -> None:
        if self.error is not None or self._parser is None:
            return  # the rest of a refused body is read and dropped
        self._received += len(data)
        if self._received > self.limit:
            self._fail(UploadTooLarge(self.limit))
            return
        try:
            events = self._parser.feed(data)
        except MultipartError as e:
            self._fail(BadRequest(f"the multipart body is malformed: {e}", "invalid_request"))
            return
        for event in events:
            self._take(event)
        writer = self.writer
        if writer is not None and writer.pending > HIGH_WATER and not self._paused:
            self._paused = True
            self.transport.pauseProducing()

    def _take(self, event: PartStart | PartData | PartEnd) -> None:
        if isinstance(event, PartStart):
            if event.name == "file" and event.filename is not None:
                if self.writer is not None:
                    self._fail(BadRequest("the body has more than one file", "invalid_request"))
                    return
                self.filename = _safe_name(event.filename)
                self.writer = self.new_writer()
                self.writer.on_written = self._caught_up
                self._current = "file"
            else:
                self._current = event.name
                self.fields[event.name] = ""
        elif isinstance(event, PartData):
            if self._current == "file":
                assert self.writer is not None
                self.writer.write(event.data)
            elif self._current is not None:
                value = self.fields[self._current] + event.data.decode("utf-8", "replace")
                if len(value) > FIELD_LIMIT:
                    self._fail(BadRequest(f"field {self._current} is too long", "invalid_request"))
                    return
                self.fields[self._current] = value
        else:
            self._current = None

    def _caught_up(self) -> None:
        writer = self.writer
        if self._paused and writer is not None and writer.pending <= HIGH_WATER // 2:
            self._paused = False
            self.transport.resumeProducing()

    def _fail(self, error: Exception) -> None:
        self.error = error
        self._resume()

    def _resume(self) -> None:
        if self._paused:
            self._paused = False
            self.transport.resumeProducing()

    async def result(self) -> Uploaded:
        """The whole body is in: the file synced to disk, or the reason it is refused."""
        self._finished = True
        if self.error is None and self._parser is not None:
            try:
                self._parser.close()
            except MultipartError as e:
                self.error = BadRequest(f"the multipart body is incomplete: {e}", "invalid_request")
        if self.error is None and self.writer is None:
            self.error = BadRequest(
                "the field file (the JSONL file) is required", "invalid_request"
            )
        if self.error is not None:
            await self.discard()
            raise self.error
        assert self.writer is not None and self.filename is not None
        await self.writer.finish()
        return Uploaded(self.writer, self.filename, self.fields)

    async def discard(self) -> None:
        """Drop what was written (refused, or the client went away)."""
        self._resume()
        writer, self.writer = self.writer, None
        if writer is not None:
            await writer.abort()


def _safe_name(filename: str) -> str:
    """The client's file name, cut to its last path part, 255 characters, no control bytes."""
    name = filename.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(c for c in name if c.isprintable() and c not in '"')[:255]
    return name or "upload.jsonl"
