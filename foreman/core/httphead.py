"""The head of an HTTP/1.1 request, for the lean front protocol (ADR 0020).

``parse_head`` takes the bytes before the blank line and says whether the
request is plain enough for foreman's lean server path: an origin-form
target, ``HTTP/1.1``, well-formed header lines, and a body framed by at most
one ``Content-Length``. Anything else (chunked or ``Expect`` bodies,
upgrades, HTTP/1.0, obsolete line folding, odd bytes) is ``None``: the
connection then goes to ``twisted.web``, which answers it as it always did,
errors included. Being strict costs nothing but the fast path; being lax
would let two parsers disagree about where a request ends.
"""

from __future__ import annotations

from collections.abc import Iterator

__all__ = ["MAX_HEADERS", "RequestHead", "parse_head"]

MAX_HEADERS = 100  # more than this: not for the lean path
_TCHAR = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


class RequestHead:
    """A parsed request head; header names are looked up case-insensitively."""

    __slots__ = ("_index", "content_length", "keep_alive", "method", "pairs", "path", "target")

    def __init__(
        self,
        method: bytes,
        target: bytes,
        pairs: list[tuple[bytes, bytes]],
        index: dict[bytes, list[bytes]],
        content_length: int,
        keep_alive: bool,
    ) -> None:
        self.method = method
        self.target = target
        self.path = target.split(b"?", 1)[0]
        self.pairs = pairs  # (name as sent, value) in order
        self._index = index  # lower-case name -> values
        self.content_length = content_length
        self.keep_alive = keep_alive

    def getRawHeaders(self, name: bytes, default: list[bytes] | None = None) -> list[bytes] | None:
        return self._index.get(name.lower(), default)

    def getAllRawHeaders(self) -> Iterator[tuple[bytes, list[bytes]]]:
        for name, value in self.pairs:
            yield name, [value]

    def hasHeader(self, name: bytes) -> bool:
        return name.lower() in self._index


def parse_head(head: bytes) -> RequestHead | None:
    """The request in ``head`` (without the final CRLF CRLF), or None: not lean."""
    if b"\x00" in head or b"\n\n" in head:
        return None
    lines = head.split(b"\r\n")
    first = lines[0].split(b" ")
    if len(first) != 3:
        return None
    method, target, version = first
    if version != b"HTTP/1.1" or target[:1] != b"/" or not method.isalpha() or not method.isupper():
        return None
    if b"\r" in target or b"\n" in target or not target.isascii():
        return None
    if len(lines) - 1 > MAX_HEADERS:
        return None
    pairs: list[tuple[bytes, bytes]] = []
    index: dict[bytes, list[bytes]] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not _is_token(name) or b"\r" in value or b"\n" in value:
            return None
        value = value.strip(b" \t")
        pairs.append((name, value))
        lowered = name.lower()
        found = index.get(lowered)
        if found is None:
            index[lowered] = [value]
        else:
            found.append(value)
    if b"transfer-encoding" in index or b"expect" in index or b"upgrade" in index:
        return None
    length = 0
    declared = index.get(b"content-length")
    if declared is not None:
        if len(declared) != 1 or not declared[0].isdigit() or not declared[0].isascii():
            return None
        length = int(declared[0])
    keep_alive = True
    connection = index.get(b"connection")
    if connection is not None:
        tokens = {t.strip().lower() for value in connection for t in value.split(b",")}
        if b"upgrade" in tokens:
            return None
        keep_alive = b"close" not in tokens
    return RequestHead(method, target, pairs, index, length, keep_alive)


def _is_token(name: bytes) -> bool:
    """An RFC 9110 token: one or more of its ``tchar`` bytes, nothing else."""
    return bool(name) and not name.translate(None, _TCHAR)
