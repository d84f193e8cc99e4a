"""A file upload as a streamed ``multipart/form-data`` body (``POST /v1/files``).

:class:`MultipartUpload` is an ``IBodyProducer`` with a ``Content-Length``
known up front: the parts' heads and tails are a few hundred bytes, the file
is read from disk in chunks of :data:`CHUNK` bytes as the connection takes
them (paused while it is behind), never held whole. A 200 MB batch input
costs one chunk of memory.

``open_source`` turns what the caller gave (a path, or a binary file object)
into a seekable file and its size; a stream that cannot seek (a pipe,
``stdin``) is first copied to a temporary file, chunk by chunk, since the
length must be known before the first byte is sent.
"""

from __future__ import annotations

import contextlib
import mimetypes
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

from twisted.internet import task
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IConsumer
from twisted.python.failure import Failure
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer

__all__ = ["CHUNK", "MultipartUpload", "UploadSource", "open_source"]

CHUNK = 64 * 1024
CRLF = b"\r\n"

FileArg = str | os.PathLike[str] | BinaryIO


class UploadSource:
    """A seekable binary file positioned at the first byte to send, its size, its name.

    ``close()`` closes the file if this object opened it (a path, a spooled
    stream); a file object the caller passed stays open.
    """

    def __init__(self, fileobj: BinaryIO, size: int, filename: str, owned: bool) -> None:
        self.file = fileobj
        self.size = size
        self.filename = filename
        self.start = fileobj.tell()
        self._owned = owned

    def rewind(self) -> None:
        self.file.seek(self.start)

    def close(self) -> None:
        if self._owned:
            self.file.close()


def open_source(file: FileArg, filename: str | None = None) -> UploadSource:
    """``file`` (a path or a binary file object) ready to be sent from its current position."""
    if isinstance(file, str | os.PathLike):
        path = os.fspath(file)
        fileobj: BinaryIO = open(path, "rb")  # noqa: SIM115 (closed by UploadSource.close)
        try:
            size = os.fstat(fileobj.fileno()).st_size
        except BaseException:
            fileobj.close()
            raise
        return UploadSource(fileobj, size, filename or os.path.basename(path), owned=True)
    name = filename or os.path.basename(str(getattr(file, "name", "") or "")) or "upload.jsonl"
    if _seekable(file):
        start = file.tell()
        size = file.seek(0, os.SEEK_END) - start
        file.seek(start)
        return UploadSource(file, size, name, owned=False)
    spool = tempfile.TemporaryFile()  # noqa: SIM115 (closed by UploadSource.close)
    try:
        shutil.copyfileobj(file, spool, CHUNK)
        size = spool.tell()
        spool.seek(0)
    except BaseException:
        spool.close()
        raise
    return UploadSource(spool, size, name, owned=True)


def _seekable(file: BinaryIO) -> bool:
    try:
        return bool(file.seekable())
    except (AttributeError, ValueError, OSError):
        return False


def _quote(value: str) -> bytes:
    """A form-data parameter as a quoted string: UTF-8; ``\\`` and ``"`` as quoted pairs.

    CR and LF cannot appear in a header at all: they are percent-encoded, as
    browsers do.
    """
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    escaped = escaped.replace("\r", "%0D").replace("\n", "%0A")
    return b'"' + escaped.encode("utf-8") + b'"'


def content_type_of(filename: str) -> str:
    if filename.lower().endswith((".jsonl", ".ndjson")):
        return "application/jsonl"
    guessed, _ = mimetypes.guess_type(filename)
    return guessed or "application/octet-stream"


@implementer(IBodyProducer)
class MultipartUpload:
    """``multipart/form-data`` with text ``fields`` and then the file, streamed from disk.

    ``length`` is exact before anything is sent; ``content_type`` carries the
    boundary. ``last_activity`` (seconds on ``clock``) is when a chunk was last
    handed to the connection (by ``clock``): the caller's idle timeout. ``cooperator`` runs
    the reads (Twisted's global one unless given, as FileBodyProducer does).
    A producer is used once; ``rewind()`` readies it (and the file) for another try.
    """

    def __init__(
        self,
        source: UploadSource,
        fields: dict[str, str],
        *,
        file_field: str = "file",
        boundary: str | None = None,
        chunk_size: int = CHUNK,
        cooperator: Any = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.source = source
        self.boundary = boundary or f"foreman-{uuid.uuid4().hex}"
        self.content_type = f"multipart/form-data; boundary={self.boundary}"
        self._chunk_size = chunk_size
        self._cooperate: Callable[[Iterator[None]], task.CooperativeTask[Iterator[None]]] = (
            cooperator or task
        ).cooperate
        self.clock = clock
        self.error: BaseException | None = None  # why reading the file failed
        marker = b"--" + self.boundary.encode("ascii")
        head = bytearray()
        for name, value in fields.items():
            head += marker + CRLF
            head += b"Content-Disposition: form-data; name=" + _quote(name) + CRLF + CRLF
            head += value.encode("utf-8") + CRLF
        head += marker + CRLF
        head += (
            b"Content-Disposition: form-data; name="
            + _quote(file_field)
            + b"; filename="
            + _quote(source.filename)
            + CRLF
        )
        head += b"Content-Type: " + content_type_of(source.filename).encode("ascii") + CRLF + CRLF
        self._head = bytes(head)
        self._tail = CRLF + marker + b"--" + CRLF
        self.length = len(self._head) + source.size + len(self._tail)
        self.sent = 0  # bytes handed to the connection so far
        self.last_activity: float | None = None
        self._task: task.CooperativeTask[Iterator[None]] | None = None

    def chunks(self) -> Iterator[bytes]:
        """The body, piece by piece: the heads, the file in chunks, the tail.

        Raises OSError if the file ends before the size measured when it was
        opened (it shrank): the ``Content-Length`` sent could not be honoured.
        """
        yield self._head
        left = self.source.size
        while left > 0:
            data = self.source.file.read(min(self._chunk_size, left))
            if not data:
                raise OSError(
                    f"{self.source.filename}: file ended {left} bytes short of the "
                    f"{self.source.size} bytes measured before the upload (did it change?)"
                )
            left -= len(data)
            yield data
        yield self._tail

    def rewind(self) -> None:
        self.source.rewind()
        self.sent = 0
        self.error = None

    # -- IBodyProducer

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        self._task = self._cooperate(self._write_loop(consumer))
        done: Deferred[Any] = self._task.whenDone()

        def stopped(reason: Failure) -> Failure | Deferred[None]:
            if reason.check(CancelledError):
                self.stopProducing()
            elif not reason.check(task.TaskStopped):
                return reason
            # IBodyProducer: the Deferred does not fire once stopProducing was called
            return Deferred()

        return done.addCallbacks(lambda _: None, stopped)

    def _write_loop(self, consumer: IConsumer) -> Iterator[None]:
        try:
            for data in self.chunks():
                consumer.write(data)
                self.sent += len(data)
                if self.clock is not None:
                    self.last_activity = self.clock()
                yield None
        except Exception as e:
            self.error = e
            raise

    def pauseProducing(self) -> None:
        if self._task is not None:
            self._task.pause()

    def resumeProducing(self) -> None:
        if self._task is not None:
            self._task.resume()

    def stopProducing(self) -> None:
        if self._task is not None:
            with contextlib.suppress(task.TaskFinished):
                self._task.stop()
