"""A response head from the target, parsed: status, headers, and how the body is framed.

``parse_head`` is pure (bytes in, fields out) so the lean client's connection
(``foreman.target.wire``) only decides what to do with the result. What it
accepts follows RFC 9112 with the usual leniency of clients: bare LF line
ends, obsolete line folding (joined with a space), a missing reason phrase.
What it refuses raises ``WireError``: a status line that is not HTTP/1.x, a
status code that is not three digits, a header line without a colon or with
a bad name, conflicting ``Content-Length`` values, more than ``MAX_HEADERS``
headers, or a line longer than ``MAX_LINE`` bytes.

Connection control headers (Content-Length, Connection, Transfer-Encoding
and the like) are left out of the returned ``Headers``, as Twisted's Agent
does, except ``Content-Length`` in the answer to a HEAD (the length the GET
would have).
"""

from __future__ import annotations

import re

from twisted.web.http_headers import Headers

from foreman.target.exchange import WireError

__all__ = [
    "BY_LENGTH",
    "CHUNKED",
    "MAX_HEADERS",
    "MAX_LINE",
    "NO_BODY",
    "UNTIL_CLOSE",
    "Head",
    "parse_head",
]

#: Longest status line, header line, chunk-size line or trailer line accepted.
MAX_LINE = 64 * 1024
#: Most header lines (and, separately, trailer lines) accepted in one response.
MAX_HEADERS = 100

# how the body is framed
NO_BODY, BY_LENGTH, CHUNKED, UNTIL_CLOSE = 0, 1, 2, 3

#: version, code, phrase, headers, keep-alive allowed, framing, Content-Length (or 0)
Head = tuple[tuple[bytes, int, int], int, bytes, Headers, bool, int, int]

_V11 = (b"HTTP", 1, 1)
_V10 = (b"HTTP", 1, 0)
#: Headers about this hop, kept out of the returned headers (as Agent does).
_CONTROL = frozenset(
    {
        b"content-length",
        b"connection",
        b"keep-alive",
        b"te",
        b"trailers",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-connection",
    }
)
_FOLD = re.compile(rb"\r?\n[ \t]+")


def parse_head(head: bytes, head_request: bool) -> Head:
    """Parse a head (status line and header lines, without the blank line that ends it).

    ``head_request``: the request was a HEAD, so the answer has no body
    whatever its headers say. A 1xx answer comes back like any other; the
    caller skips it (a 101 is refused here: foreman never asks to upgrade).
    """
    if b"\n " in head or b"\n\t" in head:
        head = _FOLD.sub(b" ", head)  # obsolete line folding: one header, one line
    lines = head.split(b"\n")
    if len(lines) > MAX_HEADERS + 1:
        raise WireError(f"the response has more than {MAX_HEADERS} headers")
    status = lines[0]
    if status[-1:] == b"\r":
        status = status[:-1]
    if len(status) > MAX_LINE:
        raise WireError(f"the status line is longer than {MAX_LINE} bytes")
    version_b, _, after = status.partition(b" ")
    code_b, _, phrase = after.partition(b" ")
    if version_b == b"HTTP/1.1":
        version, keep = _V11, True
    elif version_b == b"HTTP/1.0":
        version, keep = _V10, False
    else:
        raise WireError(f"not an HTTP/1.x status line: {status[:100]!r}")
    if len(code_b) != 3 or not code_b.isdigit() or code_b[0] == 0x30:
        raise WireError(f"bad status code in {status[:100]!r}")
    code = int(code_b)
    if code == 101:
        raise WireError("the target switched protocols (101) unasked")
    headers = Headers()
    lengths: list[bytes] | None = None
    codings: list[bytes] | None = None
    for line in lines[1:]:
        if line[-1:] == b"\r":
            line = line[:-1]
        if len(line) > MAX_LINE:
            raise WireError(f"a header line is longer than {MAX_LINE} bytes")
        name, colon, value = line.partition(b":")
        if not colon:
            raise WireError(f"a header line without a colon: {line[:100]!r}")
        value = value.strip(b" \t")
        lowered = name.lower()
        if lowered in _CONTROL:
            if lowered == b"content-length":
                lengths = [value] if lengths is None else [*lengths, value]
                if not head_request:
                    continue
            elif lowered == b"connection":
                for token in value.lower().split(b","):
                    token = token.strip(b" \t")
                    if token == b"close":
                        keep = False
                    elif token == b"keep-alive" and version is _V10:
                        keep = True
                continue
            elif lowered == b"transfer-encoding":
                codings = [value] if codings is None else [*codings, value]
                continue
            else:
                continue
        try:
            headers.addRawHeader(name, value)
        except ValueError as e:
            raise WireError(f"bad header name {name[:100]!r}") from e
    if head_request or code < 200 or code == 204 or code == 304:
        return version, code, phrase, headers, keep, NO_BODY, 0
    if codings is not None:
        last = b",".join(codings).rsplit(b",", 1)[-1].strip(b" \t").lower()
        if last == b"chunked":
            # both framings: RFC 9112 6.3 says to close the connection afterwards
            return version, code, phrase, headers, keep and lengths is None, CHUNKED, 0
        return version, code, phrase, headers, False, UNTIL_CLOSE, 0
    if lengths is not None:
        length = content_length(lengths)
        return version, code, phrase, headers, keep, BY_LENGTH if length else NO_BODY, length
    return version, code, phrase, headers, False, UNTIL_CLOSE, 0


def content_length(values: list[bytes]) -> int:
    """The one length that ``Content-Length`` values agree on (RFC 9110 8.6)."""
    if len(values) == 1:
        value = values[0]
        if value.isdigit() and len(value) <= 18:
            return int(value)
    found: set[bytes] = set()
    for value in values:
        for item in value.split(b","):
            item = item.strip(b" \t")
            if not item.isdigit() or len(item) > 18:
                raise WireError(f"bad Content-Length {value[:100]!r}")
            found.add(item.lstrip(b"0") or b"0")
    if len(found) != 1:
        raise WireError(f"conflicting Content-Length values {values[:4]!r}")
    return int(found.pop())
