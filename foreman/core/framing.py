"""Incremental stream decoders (pure): NDJSON (Ollama native) and Server-Sent Events (/v1).

Both take bytes exactly as they come off the socket, split anywhere, and
give the same result as decoding the whole stream at once. Work per feed is
proportional to the bytes fed (no rescanning of buffered partial lines).
"""

from __future__ import annotations

import codecs
import json
import re
from typing import Any

from attrs import frozen


class FramingError(ValueError):
    """The stream is not valid NDJSON; ``decoded`` holds the objects before the bad line."""

    def __init__(self, message: str, decoded: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.decoded: list[dict[str, Any]] = decoded or []


class LineTooLong(FramingError):
    """A line grew past the decoder's ``max_line_bytes`` without ending."""


class NDJSONDecoder:
    """One JSON object per line; lines may arrive split across reads.

    LF or CRLF line ends, blank lines ignored, a last line without a newline is
    returned by :meth:`flush` at end of stream. ``max_line_bytes`` bounds the
    memory a peer without newlines can make us buffer.
    """

    def __init__(self, max_line_bytes: int | None = None) -> None:
        self._buf = bytearray()
        self._max = max_line_bytes

    @property
    def pending(self) -> int:
        """Bytes of an incomplete line held back."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        buf = self._buf
        start = len(buf)
        buf += data
        last_nl = buf.rfind(b"\n", start)
        if last_nl < 0:
            self._check_size()
            return []
        complete = bytes(buf[:last_nl])
        del buf[: last_nl + 1]
        out: list[dict[str, Any]] = []
        for line in complete.split(b"\n"):
            obj = _decode_line(line, out)
            if obj is not None:
                out.append(obj)
        self._check_size()
        return out

    def flush(self) -> list[dict[str, Any]]:
        """End of stream: decode what is left (a final line without newline)."""
        rest = bytes(self._buf)
        self._buf.clear()
        obj = _decode_line(rest, [])
        return [] if obj is None else [obj]

    def _check_size(self) -> None:
        if self._max is not None and len(self._buf) > self._max:
            raise LineTooLong(f"NDJSON line longer than {self._max} bytes")


def _decode_line(line: bytes, decoded: list[dict[str, Any]]) -> dict[str, Any] | None:
    if line.endswith(b"\r"):
        line = line[:-1]
    if not line.strip():
        return None
    try:
        obj = json.loads(line)
    except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError
        raise FramingError(
            f"invalid JSON in NDJSON stream ({e}) in line starting {line[:80]!r}", decoded
        ) from None
    if not isinstance(obj, dict):
        raise FramingError(
            f"NDJSON line is a JSON {type(obj).__name__}, not an object: {line[:80]!r}", decoded
        )
    return obj


@frozen
class SSEEvent:
    """A dispatched event. ``id`` is the last event ID in force (None when unset)."""

    data: str
    event: str = "message"
    id: str | None = None


_LINE_END = re.compile(r"\r\n|\r|\n")


class SSEDecoder:
    """Server-Sent Events per the WHATWG HTML spec's event-stream interpretation.

    UTF-8 (invalid bytes replaced, a leading BOM dropped), lines ended by CRLF,
    LF or CR (a CR at the end of one read and an LF at the start of the next
    are one line end), ``:`` comments ignored, ``data`` lines joined with
    ``\\n``, an event dispatched on a blank line, events without data dropped,
    the last event ID kept across events, ``retry`` exposed as :attr:`retry`.
    An event not ended by a blank line when the stream ends is discarded (spec).
    """

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending: list[str] = []  # text of an incomplete line
        self._bom_checked = False
        self._skip_lf = False
        self._data: list[str] = []
        self._has_data = False
        self._event = ""
        self._last_id = ""
        self.retry: int | None = None  # reconnection time in ms, if the server set one

    def feed(self, data: bytes) -> list[SSEEvent]:
        text = self._decoder.decode(data)
        if not text:
            return []
        if not self._bom_checked:
            self._bom_checked = True
            if text.startswith("\ufeff"):
                text = text[1:]
                if not text:
                    return []
        if self._skip_lf:
            self._skip_lf = False
            if text.startswith("\n"):
                text = text[1:]
                if not text:
                    return []
        if _LINE_END.search(text) is None:
            self._pending.append(text)
            return []
        if self._pending:
            self._pending.append(text)
            text = "".join(self._pending)
            self._pending = []
        lines = _LINE_END.split(text)
        rest = lines.pop()  # after the last line end: incomplete (maybe empty)
        if rest:
            self._pending.append(rest)
        elif text.endswith("\r"):
            self._skip_lf = True  # the LF of a CRLF may be in the next read
        out: list[SSEEvent] = []
        for line in lines:
            event = self._line(line)
            if event is not None:
                out.append(event)
        return out

    def _line(self, line: str) -> SSEEvent | None:
        if not line:
            return self._dispatch()
        if line[0] == ":":
            return None
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
            self._has_data = True
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self._last_id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            self.retry = int(value)
        return None

    def _dispatch(self) -> SSEEvent | None:
        event, self._event = self._event, ""
        if not self._has_data:
            self._data = []
            return None
        data = "\n".join(self._data)
        self._data = []
        self._has_data = False
        return SSEEvent(data=data, event=event or "message", id=self._last_id or None)


def format_sse(
    data: str,
    event: str | None = None,
    id: str | None = None,
    retry: int | None = None,
) -> bytes:
    """One SSE event as bytes; multi-line ``data`` becomes several ``data:`` lines.

    Line ends inside ``data`` (CRLF, CR, LF) all decode back as ``\\n``.
    """
    parts: list[str] = []
    if event is not None:
        _single_line("event", event)
        parts.append(f"event: {event}\n")
    if id is not None:
        _single_line("id", id)
        if "\0" in id:
            raise ValueError("SSE id must not contain NUL")
        parts.append(f"id: {id}\n")
    if retry is not None:
        if retry < 0:
            raise ValueError("SSE retry must be >= 0")
        parts.append(f"retry: {int(retry)}\n")
    for line in _LINE_END.split(data):
        parts.append(f"data: {line}\n")
    parts.append("\n")
    return "".join(parts).encode("utf-8")


def format_sse_comment(text: str = "") -> bytes:
    """Comment line(s), ignored by clients: keeps an idle stream open through proxies."""
    lines = _LINE_END.split(text)
    return "".join(f": {line}\n" if line else ":\n" for line in lines).encode("utf-8")


def _single_line(name: str, value: str) -> None:
    if "\n" in value or "\r" in value:
        raise ValueError(f"SSE {name} must be a single line")
