"""Push-style streaming parser for ``multipart/form-data`` bodies (RFC 7578, RFC 2046).

File uploads (``/v1/files``) can be hundreds of megabytes, so the server must
write them to disk as they arrive. :class:`MultipartParser` takes the body in
whatever chunks the socket delivers and returns events as soon as they are
certain: part content is released the moment it cannot be the start of a
delimiter, so at most ``len(boundary) + 3`` content bytes are ever held back
(plus the headers of the part being read, capped by ``max_header_bytes``).
Any split of the body into chunks gives the same events, concatenated.
"""

from __future__ import annotations

import enum
import re
from urllib.parse import unquote

from attrs import frozen

__all__ = [
    "MultipartError",
    "MultipartParser",
    "PartData",
    "PartEnd",
    "PartStart",
    "boundary_of",
]


class MultipartError(ValueError):
    """The body is not valid multipart/form-data (message says why, for a 400)."""


@frozen
class PartStart:
    """A part's headers are complete; its content follows as :class:`PartData`.

    ``filename`` is ``None`` for a plain field and ``""`` for a file input with
    no file chosen (browsers send that), so callers can tell them apart.
    """

    name: str
    filename: str | None
    content_type: str | None


@frozen
class PartData:
    """A piece of the current part's content; pieces may be split anywhere."""

    data: bytes


@frozen
class PartEnd:
    """The current part's content is complete."""


# RFC 2046 5.1.1: 1-70 bchars, the last one not a space.
_BOUNDARY = re.compile(rb"[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]")
# One `; name=value` parameter; the value is a quoted-string or a bare token.
_PARAM = re.compile(r'[\s;]*([^\s=;"]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;"]*?)\s*(?:;|$)')
_QUOTED_PAIR = re.compile(r'\\([\\"])')
_PADDING = re.compile(rb"[ \t]*")
_HEADERS_END = b"\r\n\r\n"


def boundary_of(content_type: str | bytes) -> bytes:
    """The boundary parameter of a multipart/form-data Content-Type (quoted or not).

    MultipartError if the type is not multipart/form-data or has no/invalid
    boundary (RFC 2046: 1-70 chars), so the caller can answer 400 at once.
    """
    if isinstance(content_type, bytes):
        content_type = content_type.decode("latin-1")
    media_type, params = _split_params(content_type, "Content-Type")
    if media_type != "multipart/form-data":
        raise MultipartError(f"Content-Type is {media_type or 'empty'!r}, not multipart/form-data")
    if "boundary" not in params:
        raise MultipartError("multipart/form-data Content-Type has no boundary parameter")
    boundary = params["boundary"].encode("latin-1")
    _check_boundary(boundary)
    return boundary


def _check_boundary(boundary: bytes) -> None:
    if not _BOUNDARY.fullmatch(boundary):
        raise MultipartError(
            f"invalid multipart boundary {boundary!r}: RFC 2046 allows 1-70 characters "
            "from letters, digits, space and '()+_,-./:=? (not ending in a space)"
        )


def _split_params(value: str, header: str) -> tuple[str, dict[str, str]]:
    """Split ``type; a=1; b="two"`` into the lower-cased type and its parameters.

    Parameter names are case-insensitive; a repeated one is refused because
    the two readings of the header would disagree.
    """
    head, _, rest = value.partition(";")
    params: dict[str, str] = {}
    pos = 0
    while rest[pos:].strip(" \t;"):
        match = _PARAM.match(rest, pos)
        if match is None:
            raise MultipartError(f"malformed parameters in {header}: {value!r}")
        name, raw = match[1].lower(), match[2]
        if name in params:
            raise MultipartError(f"parameter {name!r} given twice in {header}: {value!r}")
        params[name] = _QUOTED_PAIR.sub(r"\1", raw[1:-1]) if raw.startswith('"') else raw
        pos = match.end()
    return head.strip().lower(), params


def _ext_value(value: str) -> str:
    """Decode an RFC 5987 ``charset'lang'percent-encoded`` value (``filename*``)."""
    parts = value.split("'", 2)
    if len(parts) != 3:
        raise MultipartError(f"malformed filename* value {value!r}")
    charset = parts[0].lower()
    if charset not in ("utf-8", "iso-8859-1"):
        raise MultipartError(f"unsupported charset {parts[0]!r} in filename*")
    try:
        return unquote(parts[2], encoding=charset, errors="strict")
    except UnicodeDecodeError as e:
        raise MultipartError(f"filename* is not valid {charset}: {value!r}") from e


def _parse_headers(block: bytes, number: int) -> PartStart:
    """Turn one part's header block into a :class:`PartStart`."""
    try:
        text = block.decode("utf-8")
    except UnicodeDecodeError:
        text = block.decode("latin-1")  # HTTP's historical header charset
    headers: dict[str, str] = {}
    last = ""
    for line in text.split("\r\n") if text else []:
        if line[:1] in (" ", "\t") and last:  # obsolete line folding
            headers[last] += " " + line.strip()
            continue
        name, colon, value = line.partition(":")
        name = name.strip().lower()
        if not colon or not name:
            raise MultipartError(f"part {number}: malformed header line {line!r}")
        if name in headers and name in ("content-disposition", "content-type"):
            raise MultipartError(f"part {number}: {name} header given twice")
        headers[name] = value.strip()
        last = name
    if "content-disposition" not in headers:
        raise MultipartError(f"part {number} has no Content-Disposition header")
    disposition, params = _split_params(headers["content-disposition"], "Content-Disposition")
    if disposition != "form-data":
        raise MultipartError(
            f"part {number}: Content-Disposition is {disposition!r}, not form-data"
        )
    if "name" not in params:
        raise MultipartError(f"part {number}: Content-Disposition has no name")
    filename = params.get("filename")
    if "filename*" in params:  # RFC 6266: the extended form wins when both are given
        filename = _ext_value(params["filename*"])
    return PartStart(
        name=params["name"],
        filename=filename,
        content_type=headers.get("content-type") or None,
    )


class _State(enum.Enum):
    PREAMBLE = enum.auto()
    AFTER_DELIMITER = enum.auto()  # `--` closes, else padding and CRLF open a part
    HEADERS = enum.auto()
    CONTENT = enum.auto()
    DONE = enum.auto()


class MultipartParser:
    """Feed body chunks, get :class:`PartStart`/:class:`PartData`/:class:`PartEnd` events.

    Pure and incremental: no I/O, and each feed costs time proportional to its
    size (``bytes.find``, no per-byte loops). After a :class:`MultipartError`
    the parser stays failed, since the rest of the body cannot be trusted.
    """

    def __init__(
        self, boundary: bytes, *, max_header_bytes: int = 16 * 1024, max_parts: int = 64
    ) -> None:
        _check_boundary(boundary)
        self._boundary = boundary
        self._delimiter = b"\r\n--" + boundary
        self._max_header_bytes = max_header_bytes
        self._max_parts = max_parts
        self._state = _State.PREAMBLE
        # Unconsumed input. Starting with CRLF lets a body that opens with
        # `--boundary` match the one delimiter pattern `\r\n--boundary`.
        self._pending = b"\r\n"
        self._header_scanned = 0  # bytes of the header block already searched
        self._padded = False  # transport padding seen after the current delimiter
        self._parts = 0
        self._failure: str | None = None

    @property
    def done(self) -> bool:
        """Closing delimiter seen (bytes after it, the epilogue, are ignored)."""
        return self._state is _State.DONE

    def feed(self, data: bytes) -> list[PartStart | PartData | PartEnd]:
        """Events for what this chunk completes; MultipartError if the body is invalid."""
        if self._failure is not None:
            raise MultipartError(self._failure)
        if self._state is _State.DONE:
            return []
        buf = self._pending + data if self._pending else data
        events: list[PartStart | PartData | PartEnd] = []
        try:
            pos = self._run(buf, events)
        except MultipartError as e:
            self._failure = str(e)
            self._pending = b""
            raise
        self._pending = buf[pos:]
        return events

    def close(self) -> None:
        """End of body; MultipartError if the closing delimiter (--boundary--) was not seen."""
        if self._failure is not None:
            raise MultipartError(self._failure)
        if self._state is _State.DONE:
            return
        closing = (b"--" + self._boundary + b"--").decode("latin-1")
        if self._state is _State.PREAMBLE:
            message = "body ended before the first multipart delimiter"
        elif self._state is _State.HEADERS:
            message = f"body ended inside the headers of part {self._parts}"
        else:
            message = f"body ended without the closing delimiter {closing!r}"
        self._failure = message
        self._pending = b""
        raise MultipartError(message)

    def _run(self, buf: bytes, events: list[PartStart | PartData | PartEnd]) -> int:
        """Consume ``buf`` as far as it is certain; return where the kept remainder starts."""
        delimiter = self._delimiter
        pos = 0
        while True:
            state = self._state
            if state is _State.CONTENT:
                found = buf.find(delimiter, pos)
                if found >= 0:
                    if found > pos:
                        events.append(PartData(buf[pos:found]))
                    events.append(PartEnd())
                    pos = self._after_delimiter(found)
                    continue
                keep = self._held_back(buf, pos)
                if keep > pos:
                    events.append(PartData(buf[pos:keep]))
                return keep
            if state is _State.PREAMBLE:
                found = buf.find(delimiter, pos)
                if found < 0:
                    return self._held_back(buf, pos)  # the preamble itself is dropped
                pos = self._after_delimiter(found)
            elif state is _State.AFTER_DELIMITER:
                if not self._padded:
                    ahead = buf[pos : pos + 2]
                    if ahead == b"--":
                        self._state = _State.DONE
                        return len(buf)
                    if ahead == b"-":
                        return pos  # one byte short of telling `--` from garbage
                padding = _PADDING.match(buf, pos)
                assert padding is not None  # `[ \t]*` always matches
                if padding.end() > pos:
                    self._padded = True
                    pos = padding.end()
                ahead = buf[pos : pos + 2]
                if ahead in (b"", b"\r"):
                    return pos
                if ahead != b"\r\n":
                    bad = ahead if ahead.startswith(b"\r") else ahead[:1]
                    raise MultipartError(f"unexpected bytes {bad!r} after a multipart delimiter")
                if self._parts >= self._max_parts:
                    raise MultipartError(f"more than {self._max_parts} parts")
                self._parts += 1
                self._state = _State.HEADERS
                self._header_scanned = 0
                # pos stays on the CRLF so an empty header block is `\r\n\r\n` too
            elif state is _State.HEADERS:
                start = pos + max(0, self._header_scanned - 3)
                end = buf.find(_HEADERS_END, start)
                if end < 0:
                    self._header_scanned = len(buf) - pos
                    # the header block is at least this long even if the end is split off
                    if self._header_scanned - 2 - 3 > self._max_header_bytes:
                        raise self._headers_too_long()
                    return pos
                block = buf[pos + 2 : end]
                if len(block) > self._max_header_bytes:
                    raise self._headers_too_long()
                events.append(_parse_headers(block, self._parts))
                self._state = _State.CONTENT
                pos = end + len(_HEADERS_END)
            else:  # DONE: the epilogue is ignored
                return len(buf)

    def _after_delimiter(self, found: int) -> int:
        self._state = _State.AFTER_DELIMITER
        self._padded = False
        return found + len(self._delimiter)

    def _held_back(self, buf: bytes, pos: int) -> int:
        """Where a possible delimiter prefix at the end of ``buf`` starts (else ``len(buf)``).

        Boundaries cannot contain CR, so only a CR within the last
        ``len(delimiter) - 1`` bytes can start one.
        """
        cr = buf.rfind(b"\r", max(pos, len(buf) - len(self._delimiter) + 1))
        if cr >= 0 and self._delimiter.startswith(buf[cr:]):
            return cr
        return len(buf)

    def _headers_too_long(self) -> MultipartError:
        return MultipartError(
            f"headers of part {self._parts} are longer than {self._max_header_bytes} bytes"
        )
