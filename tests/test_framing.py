"""Stream decoders: arbitrary chunking gives the same result as decoding whole."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from foreman.core.framing import (
    FramingError,
    NDJSONDecoder,
    SSEDecoder,
    SSEEvent,
    format_sse,
    format_sse_comment,
)
from tests.budget import examples


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, prev = [], 0
    for p in points:
        pieces.append(data[prev:p])
        prev = p
    pieces.append(data[prev:])
    return pieces


# --------------------------------------------------------------------------- NDJSON

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)
json_objects = st.dictionaries(st.text(max_size=8), json_values, max_size=4)


@st.composite
def ndjson_streams(draw: st.DrawFn) -> tuple[bytes, list[dict[str, Any]]]:
    objs = draw(st.lists(json_objects, max_size=8))
    drop_final_newline: bool = draw(st.booleans())
    out = bytearray()
    for obj in objs:
        for _ in range(draw(st.integers(0, 2))):
            out += draw(st.sampled_from([b"\n", b"\r\n", b"  \n", b"\t\r\n"]))
        out += json.dumps(obj, ensure_ascii=draw(st.booleans())).encode()
        out += draw(st.sampled_from([b"\n", b"\r\n"]))
    if objs and drop_final_newline:
        out = out.rstrip(b"\r\n")  # final line without newline
    return bytes(out), objs


def decode_ndjson(pieces: list[bytes]) -> list[dict[str, Any]]:
    dec = NDJSONDecoder()
    got: list[dict[str, Any]] = []
    for piece in pieces:
        got += dec.feed(piece)
    return got + dec.flush()


@given(stream=ndjson_streams(), cuts=st.lists(st.integers(0, 10**6), max_size=12))
@settings(max_examples=examples(300), deadline=None)
def test_ndjson_chunking_invariant(
    stream: tuple[bytes, list[dict[str, Any]]], cuts: list[int]
) -> None:
    data, objs = stream
    assert decode_ndjson([data]) == objs
    assert decode_ndjson(split_at(data, cuts)) == objs


@given(stream=ndjson_streams())
@settings(max_examples=examples(50), deadline=None)
def test_ndjson_byte_by_byte(stream: tuple[bytes, list[dict[str, Any]]]) -> None:
    data, objs = stream
    assert decode_ndjson([data[i : i + 1] for i in range(len(data))]) == objs


@given(
    good=st.lists(json_objects, min_size=0, max_size=4),
    bad=st.sampled_from([b"{not json", b"[1, 2]", b"42", b'"str"', b"\xff\xfe{}", b"{}}"]),
    cuts=st.lists(st.integers(0, 10**6), max_size=6),
)
@settings(max_examples=examples(200), deadline=None)
def test_ndjson_invalid_line_raises_whatever_the_chunking(
    good: list[dict[str, Any]], bad: bytes, cuts: list[int]
) -> None:
    data = b"".join(json.dumps(o).encode() + b"\n" for o in good) + bad + b"\n" + b'{"after": 1}\n'
    dec = NDJSONDecoder()
    got: list[dict[str, Any]] = []
    with pytest.raises(FramingError) as info:
        for piece in split_at(data, cuts):
            got += dec.feed(piece)
        dec.flush()
    assert got + info.value.decoded == good


def test_ndjson_details() -> None:
    dec = NDJSONDecoder()
    assert dec.feed(b'{"a": 1}\r\n\r\n{"b"') == [{"a": 1}]
    assert dec.pending == 4
    assert dec.feed(b": 2}") == []
    assert dec.flush() == [{"b": 2}]
    assert dec.flush() == []
    assert dec.feed(b"") == []
    with pytest.raises(FramingError, match="not an object"):
        NDJSONDecoder().feed(b"[1]\n")
    limited = NDJSONDecoder(max_line_bytes=10)
    assert limited.feed(b'{"a":1}\n{"b"') == [{"a": 1}]
    with pytest.raises(FramingError, match="longer than 10"):
        limited.feed(b":" * 20)


def test_ndjson_real_ollama_stream() -> None:
    raw = (
        b'{"model":"llama3.2","created_at":"2025-01-01T00:00:00Z","message":{"role":"assistant",'
        b'"content":"Hel"},"done":false}\n'
        b'{"model":"llama3.2","created_at":"2025-01-01T00:00:00Z","message":{"role":"assistant",'
        b'"content":"lo"},"done":false}\n'
        b'{"model":"llama3.2","created_at":"2025-01-01T00:00:01Z","message":{"role":"assistant",'
        b'"content":""},"done":true,"done_reason":"stop","total_duration":1,"eval_count":2}\n'
    )
    objs = decode_ndjson(split_at(raw, [7, 100, 101, 250]))
    assert [o["message"]["content"] for o in objs] == ["Hel", "lo", ""]
    assert objs[-1]["done"] is True


# ------------------------------------------------------------------------------ SSE


def decode_sse(pieces: list[bytes]) -> tuple[list[SSEEvent], int | None]:
    dec = SSEDecoder()
    got: list[SSEEvent] = []
    for piece in pieces:
        got += dec.feed(piece)
    return got, dec.retry


sse_fragments = st.sampled_from(
    [
        "data: ",
        "data:",
        "data",
        "event: ",
        "event:update",
        "id: 7",
        "id:",
        "id",
        "id: a\0b",
        ": comment",
        ":",
        "retry: 1500",
        "retry: x1",
        "foo: bar",
        "\r\n",
        "\n",
        "\r",
        "\r\n\r\n",
        "\n\n",
        "é",
        "😀",
        "\ufeff",
        "hello",
        " ",
        "[DONE]",
        '{"a": 1}',
    ]
)


@given(
    text=st.lists(sse_fragments, max_size=40).map("".join),
    junk=st.binary(max_size=8),
    cuts=st.lists(st.integers(0, 10**6), max_size=12),
)
@settings(max_examples=examples(300), deadline=None)
def test_sse_chunking_invariant(text: str, junk: bytes, cuts: list[int]) -> None:
    data = text.encode() + junk + text.encode()
    whole = decode_sse([data])
    assert decode_sse(split_at(data, cuts)) == whole
    assert decode_sse([data[i : i + 1] for i in range(len(data))]) == whole


_line_end = re.compile(r"\r\n|\r|\n")
single_line = st.text(max_size=10).filter(lambda s: not _line_end.search(s))


@given(
    events=st.lists(
        st.tuples(
            st.text(max_size=30),
            st.none() | single_line,
            st.none() | single_line.filter(lambda s: "\0" not in s),
        ),
        max_size=6,
    ),
    cuts=st.lists(st.integers(0, 10**6), max_size=8),
)
@settings(max_examples=examples(300), deadline=None)
def test_sse_round_trip(events: list[tuple[str, str | None, str | None]], cuts: list[int]) -> None:
    data = b"".join(format_sse(d, event=e, id=i) for d, e, i in events)
    data = format_sse_comment("keep\nalive") + data + format_sse_comment()
    expected = []
    last_id: str | None = None
    for d, e, i in events:
        if i is not None:
            last_id = i or None
        expected.append(SSEEvent(data=_line_end.sub("\n", d), event=e or "message", id=last_id))
    assert decode_sse(split_at(data, cuts))[0] == expected


def test_sse_spec_examples() -> None:
    got, _ = decode_sse([b"data: YHOO\ndata: +2\ndata: 10\n\n"])
    assert got == [SSEEvent(data="YHOO\n+2\n10")]
    stream = (
        b": test stream\n\ndata: first event\nid: 1\n\ndata:second event\nid\n\n"
        b"data:  third event\n\n"
    )
    got, _ = decode_sse([stream])
    assert got == [
        SSEEvent(data="first event", id="1"),
        SSEEvent(data="second event", id=None),
        SSEEvent(data=" third event", id=None),
    ]
    got, _ = decode_sse([b"data\n\ndata\ndata\n\ndata:"])  # last one never completed
    assert got == [SSEEvent(data=""), SSEEvent(data="\n")]
    got, _ = decode_sse([b"data:test\n\ndata: test\n\n"])
    assert got == [SSEEvent(data="test"), SSEEvent(data="test")]


def test_sse_details() -> None:
    # BOM split across reads, CR/LF split across reads, retry, event types
    got, retry = decode_sse(
        [b"\xef\xbb", b"\xbfevent: ping\rretry: 250\r", b"\ndata: x\r\n\r", b"\n"]
    )
    assert got == [SSEEvent(data="x", event="ping")]
    assert retry == 250
    # a CR at the end of a read followed by CR starts a blank line (dispatch)
    got, _ = decode_sse([b"data: y\r", b"\r"])
    assert got == [SSEEvent(data="y")]
    # event type without data is reset at the blank line
    got, _ = decode_sse([b"event: a\n\ndata: z\n\n"])
    assert got == [SSEEvent(data="z")]
    # OpenAI-style stream via Ollama
    got, _ = decode_sse([b'data: {"id":"chatcmpl-1"}\n\ndata: [DONE]\n\n'])
    assert [e.data for e in got] == ['{"id":"chatcmpl-1"}', "[DONE]"]


def test_format_sse() -> None:
    assert format_sse("a\nb", event="e", id="1", retry=10) == (
        b"event: e\nid: 1\nretry: 10\ndata: a\ndata: b\n\n"
    )
    assert format_sse("") == b"data: \n\n"
    assert format_sse_comment("ping") == b": ping\n"
    with pytest.raises(ValueError):
        format_sse("x", event="a\nb")
    with pytest.raises(ValueError):
        format_sse("x", id="x\ry")
    with pytest.raises(ValueError):
        format_sse("x", id="\0")
    with pytest.raises(ValueError):
        format_sse("x", retry=-1)
