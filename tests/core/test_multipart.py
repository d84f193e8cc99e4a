"""multipart/form-data streaming parser: any chunking gives the same parts, byte-exact."""

from __future__ import annotations

import email.policy
import io
import re
from collections.abc import Iterable
from email.encoders import encode_noop
from email.mime.application import MIMEApplication
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText

import httpx
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from foreman.core.multipart import (
    MultipartError,
    MultipartParser,
    PartData,
    PartEnd,
    PartStart,
    boundary_of,
)
from tests.budget import examples

Part = tuple[str, str | None, str | None, bytes]
Event = PartStart | PartData | PartEnd


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, prev = [], 0
    for p in points:
        pieces.append(data[prev:p])
        prev = p
    pieces.append(data[prev:])
    return pieces


def assemble(events: Iterable[Event]) -> list[Part]:
    """Reassemble events into whole parts, checking they come in a legal order."""
    parts: list[Part] = []
    current: PartStart | None = None
    content = bytearray()
    for event in events:
        if isinstance(event, PartStart):
            assert current is None
            current, content = event, bytearray()
        elif isinstance(event, PartData):
            assert current is not None
            assert event.data, "empty PartData"
            content += event.data
        else:
            assert current is not None
            parts.append((current.name, current.filename, current.content_type, bytes(content)))
            current = None
    assert current is None
    return parts


def parse(
    pieces: Iterable[bytes], boundary: bytes, *, max_header_bytes: int = 16 * 1024
) -> list[Part]:
    parser = MultipartParser(boundary, max_header_bytes=max_header_bytes)
    events: list[Event] = []
    for piece in pieces:
        events += parser.feed(piece)
    parser.close()
    assert parser.done
    return assemble(events)


def parse_error(pieces: Iterable[bytes], boundary: bytes, **limits: int) -> str:
    """The MultipartError message a body gives, whether feed or close raises it."""
    parser = MultipartParser(boundary, **limits)
    with pytest.raises(MultipartError) as caught:
        for piece in pieces:
            parser.feed(piece)
        parser.close()
    return str(caught.value)


def httpx_body(content: bytes | io.BytesIO, boundary: str | None = None) -> tuple[bytes, str]:
    """A body as the openai client sends it for ``files.create(purpose="batch")``."""
    headers = (
        {} if boundary is None else {"Content-Type": f'multipart/form-data; boundary="{boundary}"'}
    )
    request = httpx.Request(
        "POST",
        "http://x/",
        headers=headers,
        files={"file": ("in.jsonl", content, "application/jsonl")},
        data={"purpose": "batch"},
    )
    return request.read(), request.headers["Content-Type"]


def batch_parts(content: bytes) -> list[Part]:
    return [("purpose", None, None, b"batch"), ("file", "in.jsonl", "application/jsonl", content)]


# --------------------------------------------------------------------------- strategies

BCHARS = "0123456789abcXYZ'()+_,-./:=?"
boundaries = st.one_of(
    st.sampled_from(["b", "-", "--", "boundary", "=_x", "a b"]),
    st.text(alphabet=BCHARS + " ", max_size=69).flatmap(
        lambda head: st.sampled_from(BCHARS).map(lambda last: head + last)
    ),
).map(str.encode)


def tricky_bytes(boundary: bytes) -> st.SearchStrategy[bytes]:
    """Content made of pieces of the delimiter, so near-misses are common."""
    delimiter = b"\r\n--" + boundary
    pieces = st.one_of(
        st.sampled_from([b"\r", b"\n", b"\r\n", b"-", b"--", b"\r\n--", b"\r\r\n", boundary]),
        st.integers(1, len(delimiter) - 1).map(lambda n: delimiter[:n]),
        st.integers(1, len(delimiter)).map(lambda n: delimiter[n:]),
        st.binary(max_size=12),
    )
    return st.lists(pieces, max_size=12).map(b"".join).filter(lambda b: delimiter not in b)


header_text = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=12)


def quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


@st.composite
def form_bodies(draw: st.DrawFn) -> tuple[bytes, bytes, list[Part]]:
    """A hand-built body exercising what RFC 2046/7578 allow, with its expected parts."""
    boundary = draw(boundaries)
    delimiter = b"\r\n--" + boundary
    expected: list[Part] = []
    preamble = draw(tricky_bytes(boundary))
    assume(delimiter not in b"\r\n" + preamble)
    body = bytearray(preamble)
    if preamble or draw(st.booleans()):
        body += b"\r\n"
    padding = st.sampled_from([b"", b" ", b"\t", b" \t  "])
    for _ in range(draw(st.integers(0, 4))):
        name = draw(header_text)
        filename = draw(st.none() | header_text)
        content_type = draw(st.none() | st.sampled_from(["text/plain", "application/jsonl"]))
        content = draw(tricky_bytes(boundary))
        disposition = f"form-data; name={quote(name)}"
        if filename is not None:
            if draw(st.booleans()):
                disposition += f"; filename={quote(filename)}"
            else:
                encoded = "".join(f"%{b:02X}" for b in filename.encode())
                disposition += f"; filename=\"fallback\"; filename*=UTF-8''{encoded}"
        cd_name = draw(st.sampled_from(["Content-Disposition", "content-disposition"]))
        headers = [f"{cd_name}: {disposition}"]
        if content_type is not None:
            ct_name = draw(st.sampled_from(["Content-Type", "CONTENT-TYPE"]))
            headers.append(f"{ct_name}: {content_type}")
        if draw(st.booleans()):
            headers.insert(draw(st.integers(0, len(headers))), "X-Extra: -- \r")
        body += b"--" + boundary + draw(padding) + b"\r\n"
        body += "\r\n".join(headers).encode() + b"\r\n\r\n" + content + b"\r\n"
        expected.append((name, filename, content_type, content))
    body += b"--" + boundary + b"--" + draw(st.binary(max_size=8) | st.just(b"\r\n" + delimiter))
    return bytes(body), boundary, expected


fast = settings(deadline=None, max_examples=examples(200))


# --------------------------------------------------------------------------- boundary_of


@pytest.mark.parametrize(
    ("content_type", "boundary"),
    [
        ("multipart/form-data; boundary=abc", b"abc"),
        ('multipart/form-data; boundary="a b:c"', b"a b:c"),
        ("Multipart/Form-Data;BOUNDARY=x-y", b"x-y"),
        (b'multipart/form-data; charset=utf-8; boundary="=\'()+_,-./:=?"', b"='()+_,-./:=?"),
        ("multipart/form-data; boundary=" + "z" * 70, b"z" * 70),
        ("multipart/form-data; boundary=a;", b"a"),
    ],
)
def test_boundary_of(content_type: str | bytes, boundary: bytes) -> None:
    assert boundary_of(content_type) == boundary


@pytest.mark.parametrize(
    ("content_type", "message"),
    [
        ("application/json", "not multipart/form-data"),
        ("multipart/mixed; boundary=abc", "not multipart/form-data"),
        ("", "not multipart/form-data"),
        ("multipart/form-data", "no boundary"),
        ("multipart/form-data; charset=utf-8", "no boundary"),
        ("multipart/form-data; boundary=", "invalid multipart boundary"),
        ('multipart/form-data; boundary=""', "invalid multipart boundary"),
        ("multipart/form-data; boundary=" + "z" * 71, "invalid multipart boundary"),
        ('multipart/form-data; boundary="ends in space "', "invalid multipart boundary"),
        ("multipart/form-data; boundary=a*b", "invalid multipart boundary"),
        ("multipart/form-data; boundary=a; boundary=b", "given twice"),
        ('multipart/form-data; boundary="unterminated', "malformed parameters"),
    ],
)
def test_boundary_of_refuses(content_type: str, message: str) -> None:
    with pytest.raises(MultipartError, match=re.escape(message)):
        boundary_of(content_type)


def test_parser_refuses_an_invalid_boundary() -> None:
    for bad in (b"", b"x" * 71, b"a\r\nb", b"trailing "):
        with pytest.raises(MultipartError, match="invalid multipart boundary"):
            MultipartParser(bad)


# --------------------------------------------------------------------------- round trips


def test_httpx_upload_whole_and_bytewise() -> None:
    content = b'{"custom_id": "1"}\n{"custom_id": "2"}\n'
    body, content_type = httpx_body(io.BytesIO(content))
    boundary = boundary_of(content_type)
    assert parse([body], boundary) == batch_parts(content)
    assert parse([body[i : i + 1] for i in range(len(body))], boundary) == batch_parts(content)


def test_httpx_non_ascii_filename() -> None:
    request = httpx.Request("POST", "http://x/", files={"file": ("über €.jsonl", b"x")})
    [part] = parse([request.read()], boundary_of(request.headers["Content-Type"]))
    assert part[:2] == ("file", "über €.jsonl")


@fast
@given(content=st.binary(max_size=2000), cuts=st.lists(st.integers(min_value=0), max_size=8))
def test_httpx_binary_content_any_split(content: bytes, cuts: list[int]) -> None:
    body, content_type = httpx_body(content)
    assert parse(split_at(body, cuts), boundary_of(content_type)) == batch_parts(content)


@fast
@given(data=st.data(), cuts=st.lists(st.integers(min_value=0), max_size=8))
def test_httpx_near_boundaries_any_split(data: st.DataObject, cuts: list[int]) -> None:
    boundary = data.draw(boundaries)
    content = data.draw(tricky_bytes(boundary))
    body, content_type = httpx_body(content, boundary.decode())
    assert boundary_of(content_type) == boundary
    assert parse(split_at(body, cuts), boundary) == batch_parts(content)


@fast
@given(case=form_bodies(), cuts=st.lists(st.integers(min_value=0), max_size=10))
def test_hand_built_bodies_any_split(
    case: tuple[bytes, bytes, list[Part]], cuts: list[int]
) -> None:
    body, boundary, expected = case
    assert parse(split_at(body, cuts), boundary) == expected


@settings(deadline=None, max_examples=examples(40))
@given(case=form_bodies())
def test_hand_built_bodies_bytewise(case: tuple[bytes, bytes, list[Part]]) -> None:
    body, boundary, expected = case
    assert parse([body[i : i + 1] for i in range(len(body))], boundary) == expected


def email_body(content: bytes) -> tuple[bytes, str]:
    """A body from the stdlib's MIME generator: quoted boundary, filename*, preamble."""
    form = MIMEMultipart("form-data", policy=email.policy.HTTP)
    upload = MIMEApplication(content, "octet-stream", encode_noop, policy=email.policy.HTTP)
    upload.add_header("Content-Disposition", "form-data", name="file", filename="naïve €.bin")
    form.attach(upload)
    field = MIMEText("batch", "plain", "us-ascii", policy=email.policy.HTTP)
    field.add_header("Content-Disposition", "form-data", name="purpose")
    form.attach(field)
    form.preamble = "This is a multi-part message in MIME format."
    form.epilogue = "trailing words"
    whole = form.as_bytes()
    return whole[whole.index(b"\r\n\r\n") + 4 :], form["Content-Type"]


@fast
@given(
    # the generator rewrites line ends in content, so leave them out
    content=st.binary(max_size=500).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),
    cuts=st.lists(st.integers(min_value=0), max_size=8),
)
def test_email_generated_bodies(content: bytes, cuts: list[int]) -> None:
    body, content_type = email_body(content)
    assert '"' in content_type  # the generator quotes its boundary
    boundary = boundary_of(content_type)
    assume(b"\r\n--" + boundary not in content)
    assert parse(split_at(body, cuts), boundary) == [
        ("file", "naïve €.bin", "application/octet-stream", content),
        ("purpose", None, 'text/plain; charset="us-ascii"', b"batch"),
    ]


def form(*parts: bytes, boundary: bytes = b"b", epilogue: bytes = b"") -> bytes:
    """``parts`` are header-block-and-content strings; wrap them in delimiters."""
    return b"".join(b"--" + boundary + b"\r\n" + p + b"\r\n" for p in parts) + (
        b"--" + boundary + b"--" + epilogue
    )


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"\r",
        b"\r\n",
        b"\n\r",
        b"\r\n--",
        b"\r\n--bound",
        b"\r\n--boundar",
        b"--boundary",
        b"--boundary--\r\n",
        b"x\r\n-boundary",
        b"\r\n\r\n--boundar",
        b"\r\r\r\n-\r\n--\r\n--bounda\r",
        bytes(range(256)) * 4,
    ],
)
def test_near_boundaries_are_content(content: bytes) -> None:
    body = form(b'Content-Disposition: form-data; name="f"\r\n\r\n' + content, boundary=b"boundary")
    expected = [("f", None, None, content)]
    assert parse([body], b"boundary") == expected
    assert parse([body[i : i + 1] for i in range(len(body))], b"boundary") == expected


@pytest.mark.parametrize(
    ("disposition", "name", "filename"),
    [
        ('form-data; name="a"; filename="x.txt"', "a", "x.txt"),
        ("form-data; name=a; filename=x.txt", "a", "x.txt"),
        ('FORM-DATA; NAME="a"; FileName=""', "a", ""),
        ('form-data;name="a;b";filename="q\\"uote\\\\d;.txt"', "a;b", 'q"uote\\d;.txt'),
        ('form-data; name="a"; filename="C:\\dir\\f.txt"', "a", "C:\\dir\\f.txt"),
        ("form-data; name=\"a\"; filename*=UTF-8''%E2%82%AC%20rates.txt", "a", "€ rates.txt"),
        (
            'form-data; name="a"; filename="EUR rates.txt"; filename*=utf-8\'\'%E2%82%AC.txt',
            "a",
            "€.txt",
        ),
        ("form-data; name=\"a\"; filename*=iso-8859-1'en'%A3%20rates", "a", "£ rates"),
        ('form-data; name="ü"; filename="über.txt"', "ü", "über.txt"),
        ('form-data; name=""', "", None),
        ('form-data; name="a";', "a", None),
    ],
)
def test_content_disposition(disposition: str, name: str, filename: str | None) -> None:
    body = form(f"Content-Disposition: {disposition}\r\n\r\nv".encode())
    assert parse([body], b"b") == [(name, filename, None, b"v")]


def test_latin1_header_bytes() -> None:
    body = form(b'Content-Disposition: form-data; name="a"; filename="\xfcber.txt"\r\n\r\nv')
    assert parse([body], b"b") == [("a", "über.txt", None, b"v")]


def test_folded_and_odd_headers() -> None:
    body = form(
        b"content-type:   text/plain;\r\n\tcharset=utf-8 \r\n"
        b"X-Whatever: 1\r\n"
        b'CONTENT-DISPOSITION:form-data; name="a"\r\n\r\nv'
    )
    assert parse([body], b"b") == [("a", None, "text/plain; charset=utf-8", b"v")]


def test_preamble_padding_epilogue_and_no_parts() -> None:
    body = (
        b"preamble --b \r\n-b\r\n--b \t \r\n"
        b'Content-Disposition: form-data; name="a"\r\n\r\nv\r\n--b\t\r\n'
        b'Content-Disposition: form-data; name="c"\r\n\r\n\r\n--b--  \r\n--b\r\ngarbage'
    )
    assert parse([body], b"b") == [("a", None, None, b"v"), ("c", None, None, b"")]
    assert parse([b"--b--"], b"b") == []
    assert parse([b"\r\n--b--"], b"b") == []


def test_done_and_feed_after_done() -> None:
    parser = MultipartParser(b"b")
    assert parser.feed(b'--b\r\nContent-Disposition: form-data; name="a"\r\n\r\nv\r\n--b-') == [
        PartStart("a", None, None),
        PartData(b"v"),
        PartEnd(),
    ]
    assert not parser.done
    assert parser.feed(b"-") == []
    assert parser.done
    assert parser.feed(b'\r\n--b\r\nContent-Disposition: form-data; name="x"\r\n\r\n') == []
    assert parser.feed(b"anything at all") == []
    parser.close()
    parser.close()


# --------------------------------------------------------------------------- errors

ERRORS = [
    (form(b"Content-Type: text/plain\r\n\r\nv"), "part 1 has no Content-Disposition header"),
    (form(b"\r\nv"), "part 1 has no Content-Disposition header"),
    (
        form(b"Content-Disposition: attachment; name=a\r\n\r\nv"),
        "part 1: Content-Disposition is 'attachment', not form-data",
    ),
    (form(b'Content-Disposition: form-data; filename="a"\r\n\r\nv'), "has no name"),
    (
        form(b"Content-Disposition: form-data; name=a\r\nContent-Disposition: form-data\r\n\r\n"),
        "content-disposition header given twice",
    ),
    (form(b"Content-Disposition: form-data; name=a\r\nno colon\r\n\r\n"), "malformed header line"),
    (form(b"Content-Disposition: form-data; name=a; name=b\r\n\r\n"), "'name' given twice"),
    (form(b'Content-Disposition: form-data; name="a\r\n\r\n'), "malformed parameters"),
    (
        form(b"Content-Disposition: form-data; name=a; filename*=UTF-16''%FF%FE\r\n\r\n"),
        "unsupported charset 'UTF-16' in filename*",
    ),
    (form(b"Content-Disposition: form-data; name=a; filename*=%C3%BC\r\n\r\n"), "malformed"),
    (
        form(b"Content-Disposition: form-data; name=a; filename*=utf-8''%FC\r\n\r\n"),
        "filename* is not valid utf-8",
    ),
    (b"--bX\r\n", "unexpected bytes b'X' after a multipart delimiter"),
    (b"--b\rX", "unexpected bytes b'\\rX' after a multipart delimiter"),
    (b"--b \r\n\r\n", "has no Content-Disposition"),
    (b"--b --\r\n", "unexpected bytes b'-' after a multipart delimiter"),
    (b"--b\n", "unexpected bytes b'\\n' after a multipart delimiter"),
    (
        form(b"Content-Disposition: form-data; name=a\r\n\r\nv\r\n--bb"),
        "unexpected bytes b'b' after a multipart delimiter",
    ),
    (
        form(*[b"Content-Disposition: form-data; name=a\r\n\r\n"] * 4),
        "more than 3 parts",
    ),
    (b"", "body ended before the first multipart delimiter"),
    (b"preamble only\r\n--", "body ended before the first multipart delimiter"),
    (b"-b\r\n", "body ended before the first multipart delimiter"),
    (b"--b\r\nContent-Disposition: form-data; name=a\r\n\r", "inside the headers of part 1"),
    (b"--b\r\nContent-Disposition: form-data; name=a\r\n\r\nv", "without the closing delimiter"),
    (b"--b\r\nContent-Disposition: form-data; name=a\r\n\r\nv\r\n--b", "closing delimiter '--b--'"),
    (b"--b\r\nContent-Disposition: form-data; name=a\r\n\r\nv\r\n--b-", "closing delimiter"),
    (b"--b\r\nContent-Disposition: form-data; name=a\r\n\r\nv\r\n--b \r", "closing delimiter"),
]


def test_errors_whole() -> None:
    for body, message in ERRORS:
        assert message in parse_error([body], b"b", max_parts=3), body


@settings(deadline=None, max_examples=examples(400))
@given(case=st.sampled_from(ERRORS), cuts=st.lists(st.integers(min_value=0), max_size=6))
def test_errors_any_split(case: tuple[bytes, str], cuts: list[int]) -> None:
    body, message = case
    assert message in parse_error(split_at(body, cuts), b"b", max_parts=3)


def test_a_failed_parser_stays_failed() -> None:
    parser = MultipartParser(b"b")
    with pytest.raises(MultipartError, match="unexpected bytes"):
        parser.feed(b"--b?")
    for call in (lambda: parser.feed(b"\r\n"), parser.close):
        with pytest.raises(MultipartError, match="unexpected bytes"):
            call()
    unclosed = MultipartParser(b"b")
    with pytest.raises(MultipartError, match="before the first"):
        unclosed.close()
    with pytest.raises(MultipartError, match="before the first"):
        unclosed.feed(b"--b--")


def test_max_parts_allows_exactly_the_limit() -> None:
    body = form(*[b"Content-Disposition: form-data; name=a\r\n\r\n"] * 3)
    assert len(parse([body], b"b")) == 3
    assert "more than 2 parts" in parse_error([body], b"b", max_parts=2)


@settings(deadline=None, max_examples=examples(100))
@given(
    pad=st.integers(0, 300),
    over=st.booleans(),
    cuts=st.lists(st.integers(min_value=0), max_size=6),
)
def test_header_limit_is_exact_for_any_split(pad: int, over: bool, cuts: list[int]) -> None:
    block = b'Content-Disposition: form-data; name="a"\r\nX-Pad: ' + b"p" * pad
    body = form(block + b"\r\n\r\nv")
    limit = len(block) - over
    pieces = split_at(body, cuts)
    if over:
        message = parse_error(pieces, b"b", max_header_bytes=limit)
        assert message == f"headers of part 1 are longer than {limit} bytes"
    else:
        assert parse(pieces, b"b", max_header_bytes=limit) == [("a", None, None, b"v")]


def test_endless_headers_fail_early() -> None:
    parser = MultipartParser(b"b", max_header_bytes=100)
    parser.feed(b"--b\r\nX-Long: ")
    with pytest.raises(MultipartError, match="longer than 100 bytes"):
        for _ in range(200):
            parser.feed(b"x")


# --------------------------------------------------------------------------- memory bound


@settings(deadline=None, max_examples=examples(200))
@given(
    data=st.data(),
    sizes=st.lists(st.integers(1, 64), min_size=1, max_size=40),
)
def test_content_is_released_promptly(data: st.DataObject, sizes: list[int]) -> None:
    boundary = data.draw(boundaries)
    content = data.draw(tricky_bytes(boundary)) * 4
    assume(b"\r\n--" + boundary not in content)
    head = b"--" + boundary + b'\r\nContent-Disposition: form-data; name="f"\r\n\r\n'
    body = head + content + b"\r\n--" + boundary + b"--"
    parser = MultipartParser(boundary)
    emitted, fed = 0, 0
    while fed < len(body):
        size = sizes[fed % len(sizes)]
        events = parser.feed(body[fed : fed + size])
        fed += size
        emitted += sum(len(e.data) for e in events if isinstance(e, PartData))
        content_fed = min(max(fed - len(head), 0), len(content))
        assert content_fed - (len(boundary) + 8) <= emitted <= content_fed
    parser.close()
    assert emitted == len(content)


def test_a_megabyte_chunk_is_one_event() -> None:
    """bytes.find does the work: one PartData per part per chunk, not per near-miss."""
    boundary = b"boundary"
    chunk = (b"\r\n--boundar\r\r\n-" + bytes(range(256))) * ((1 << 20) // 272) + b"\r\n--bou"
    parser = MultipartParser(boundary)
    assert parser.feed(b'--boundary\r\nContent-Disposition: form-data; name="f"\r\n\r\n') == [
        PartStart("f", None, None)
    ]
    total = 0
    for _ in range(8):
        [event] = parser.feed(chunk)
        assert isinstance(event, PartData)
        total += len(event.data)
    assert total == 8 * len(chunk) - 7  # the `\r\n--bou` that might begin the delimiter
    assert parser.feed(b"\r\n--boundary--") == [PartData(b"\r\n--bou"), PartEnd()]
    assert parser.done
