"""The lean target client's parser, fed in memory: any split of a response parses the same.

A ``WirePool`` on a memory endpoint (a ``StringTransport`` per connection) and
a ``Clock``: the test writes the response bytes into the connection in pieces
cut at arbitrary points and checks the head, the body, how it ended, that
every piece of body reached the body protocol during the read that carried it
(nothing is held back or merged across reads), and whether the connection
went back to the pool.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IProtocolFactory, IStreamClientEndpoint
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone, ResponseFailed, ResponseNeverReceived
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import UNKNOWN_LENGTH, IResponse
from zope.interface import implementer

from foreman.target.exchange import WireError
from foreman.target.wire import WireConnection
from foreman.target.wirehead import BY_LENGTH, CHUNKED, NO_BODY, UNTIL_CLOSE, parse_head
from foreman.target.wirepool import WirePool
from tests.budget import examples


@implementer(IStreamClientEndpoint)
class MemoryEndpoint:
    """Connects at once to a StringTransport (or never, with ``hold``)."""

    def __init__(self, hold: bool = False) -> None:
        self.hold = hold
        self.conns: list[WireConnection] = []
        self.cancelled = 0

    def connect(self, factory: IProtocolFactory) -> Deferred[Any]:
        if self.hold:

            def cancel(d: Deferred[Any]) -> None:
                self.cancelled += 1

            return Deferred(cancel)
        conn = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 11434))
        assert isinstance(conn, WireConnection)
        conn.makeConnection(StringTransport())
        self.conns.append(conn)
        return succeed(conn)


class Recorder(Protocol):
    """Body protocol noting which feed each delivery happened in."""

    def __init__(self) -> None:
        self.feed = -1
        self.got: list[tuple[int, bytes]] = []
        self.reason: Failure | None = None

    def dataReceived(self, data: bytes) -> None:
        assert self.reason is None
        self.got.append((self.feed, data))

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        assert self.reason is None
        self.reason = reason


def make_pool(endpoint: MemoryEndpoint | None = None) -> tuple[WirePool, MemoryEndpoint, Clock]:
    clock = Clock()
    endpoint = endpoint or MemoryEndpoint()
    return WirePool(clock, endpoint, b"Host: target:11434\r\n"), endpoint, clock


@dataclass
class Answer:
    raw: bytes
    code: int
    body: bytes
    ends: type[Exception]  # ResponseDone or PotentialDataLoss
    keep: bool
    length: object
    headers: dict[bytes, list[bytes]] = field(default_factory=dict)


names = st.sampled_from([b"X-One", b"x-two", b"Content-Type", b"Set-Cookie", b"Date"])
values = st.binary(min_size=0, max_size=20).map(
    lambda b: bytes(c for c in b if 0x21 <= c <= 0x7E) or b"v"
)


@st.composite
def answers(draw: Any) -> Answer:
    eol = draw(st.sampled_from([b"\r\n", b"\n"]))
    body = draw(st.binary(max_size=300))
    framing = draw(st.sampled_from(["length", "chunked", "close"]))
    code = draw(st.sampled_from([200, 201, 404, 500]))
    extra = draw(st.lists(st.tuples(names, values), max_size=5))
    interim = draw(st.booleans())
    lines = [b"HTTP/1.1 %d Some Phrase" % code]
    expected: dict[bytes, list[bytes]] = {}
    for name, value in extra:
        lines.append(name + b": " + value)
        expected.setdefault(name.lower(), []).append(value)
    keep = True
    ends: type[Exception] = ResponseDone
    length: object = len(body)
    if framing == "length":
        lines.append(b"Content-Length: %d" % len(body))
        payload = body
    elif framing == "chunked":
        lines.append(b"Transfer-Encoding: chunked")
        length = UNKNOWN_LENGTH
        cuts = sorted(set(draw(st.lists(st.integers(1, max(1, len(body))), max_size=6))))
        pieces = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
        payload = b""
        for piece in pieces:
            if not piece:
                continue
            size = draw(st.sampled_from([b"%x", b"%X", b"%04x"])) % len(piece)
            ext = draw(st.sampled_from([b"", b";a=b", b' ; q="x y"']))
            payload += size + ext + b"\r\n" + piece + b"\r\n"
        trailers = draw(st.sampled_from([b"", b"X-T: 1\r\n", b"A: 1\r\nB: 2\r\n"]))
        payload += b"0\r\n" + trailers + b"\r\n"
    else:
        keep = False
        ends = PotentialDataLoss
        length = UNKNOWN_LENGTH
        payload = body
    head = eol.join(lines) + eol + eol
    if interim:
        head = b"HTTP/1.1 100 Continue\r\n\r\n" + head
    return Answer(head + payload, code, body, ends, keep, length, expected)


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in pairwise(edges) if b > a]


def run(answer: Answer, pieces: list[bytes], late: bool = False) -> tuple[IResponse, Recorder]:
    pool, endpoint, _ = make_pool()
    d = pool.request(b"GET", b"/api/tags", [b"Accept: */*\r\n"], None)
    conn = endpoint.conns[-1]
    body = Recorder()
    seen: list[IResponse] = []

    def got(response: IResponse) -> None:
        seen.append(response)
        if not late:
            response.deliverBody(body)

    d.addCallback(got)
    for i, piece in enumerate(pieces):
        body.feed = i
        conn.dataReceived(piece)
    if answer.ends is PotentialDataLoss:
        conn.connectionLost(Failure(ConnectionDone()))
    assert seen, "no response head"
    response = seen[0]
    if late:
        body.feed = -2
        response.deliverBody(body)
    transport: Any = conn.transport
    assert pool.idle_count == (1 if answer.keep else 0)
    assert not transport.disconnecting  # a kept one stays open; a close-delimited one was closed
    return response, body


@given(answer=answers(), cuts=st.lists(st.integers(0, 10**6), max_size=12))
@settings(max_examples=examples(400), deadline=None)
def test_any_split_of_an_answer_parses_the_same(answer: Answer, cuts: list[int]) -> None:
    pieces = split_at(answer.raw, cuts)
    response, body = run(answer, pieces)
    assert response.code == answer.code
    assert response.phrase == b"Some Phrase"
    assert response.length == answer.length
    for name, vals in answer.headers.items():
        assert list(response.headers.getRawHeaders(name) or []) == vals
    assert not response.headers.hasHeader(b"transfer-encoding")
    assert not response.headers.hasHeader(b"content-length")
    assert b"".join(data for _, data in body.got) == answer.body
    assert body.reason is not None and body.reason.check(answer.ends)
    # nothing held back or merged: each delivery is part of the read that carried it
    for feed, data in body.got:
        assert data and data in pieces[feed]


@given(answer=answers(), cuts=st.lists(st.integers(0, 10**6), max_size=6))
@settings(max_examples=examples(100), deadline=None)
def test_a_body_protocol_attached_late_gets_everything(answer: Answer, cuts: list[int]) -> None:
    _, body = run(answer, split_at(answer.raw, cuts), late=True)
    assert b"".join(data for _, data in body.got) == answer.body
    assert body.reason is not None and body.reason.check(answer.ends)


def test_byte_by_byte_chunked_with_everything() -> None:
    raw = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nX-Folded: a\r\n b\r\n\r\n"
        b"3;x=1\r\nabc\r\n10\r\n0123456789abcdef\r\n0;last\r\nT: 1\r\n\r\n"
    )
    pool, endpoint, _ = make_pool()
    d = pool.request(b"GET", b"/", [], None)
    conn = endpoint.conns[0]
    body = Recorder()
    d.addCallback(lambda r: r.deliverBody(body))
    for i in range(len(raw)):
        conn.dataReceived(raw[i : i + 1])
    assert b"".join(data for _, data in body.got) == b"abc0123456789abcdef"
    assert body.reason is not None and body.reason.check(ResponseDone)
    response = d.result
    assert response is None  # the callback returned None
    assert pool.idle_count == 1


def test_the_request_goes_out_in_one_write_with_host_and_length() -> None:
    pool, endpoint, _ = make_pool()
    pool.request(b"POST", b"/api/chat", [b"Content-Type: application/json\r\n"], b'{"a":1}')
    transport: Any = endpoint.conns[0].transport
    assert transport.value() == (
        b"POST /api/chat HTTP/1.1\r\nHost: target:11434\r\n"
        b'Content-Type: application/json\r\nContent-Length: 7\r\n\r\n{"a":1}'
    )
    pool2, endpoint2, _ = make_pool()
    pool2.request(b"POST", b"/api/pull", [], None)
    pool2.request(b"GET", b"/api/tags", [], None)
    sent = [c.transport.value() for c in endpoint2.conns]  # type: ignore[union-attr]
    assert sent[0].endswith(b"Content-Length: 0\r\n\r\n")
    assert sent[1] == b"GET /api/tags HTTP/1.1\r\nHost: target:11434\r\n\r\n"


def test_idle_connections_are_swept_after_the_timeout() -> None:
    pool, endpoint, clock = make_pool()
    for _ in range(2):
        d = pool.request(b"GET", b"/", [], None)
        d.addCallback(lambda r: r.deliverBody(Recorder()))
    for conn in endpoint.conns:
        conn.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert pool.idle_count == 2
    clock.advance(30)
    d = pool.request(b"GET", b"/", [], None)  # takes the newest; the oldest keeps waiting
    endpoint.conns[1].dataReceived(b"HTTP/1.1 204 No Content\r\n\r\n")
    assert pool.idle_count == 2
    clock.advance(20)  # the first has waited 50 s
    assert pool.idle_count == 1
    assert endpoint.conns[0].transport.disconnecting  # type: ignore[union-attr]
    clock.advance(30)
    assert pool.idle_count == 0
    assert not clock.getDelayedCalls()


def test_cancel_while_connecting_cancels_the_connect() -> None:
    endpoint = MemoryEndpoint(hold=True)
    pool, _, _ = make_pool(endpoint)
    d = pool.request(b"GET", b"/", [], None)
    d.cancel()
    failures: list[Failure] = []
    d.addErrback(failures.append)
    assert failures[0].check(CancelledError)
    assert endpoint.cancelled == 1


def test_a_drop_before_any_byte_and_after_some() -> None:
    pool, endpoint, _ = make_pool()
    d = pool.request(b"GET", b"/", [], None)
    endpoint.conns[0].connectionLost(Failure(ConnectionLost()))
    failures: list[Failure] = []
    d.addErrback(failures.append)
    assert failures[0].check(ResponseNeverReceived)
    d = pool.request(b"GET", b"/", [], None)
    endpoint.conns[1].dataReceived(b"HTTP/1.1 200 O")
    endpoint.conns[1].connectionLost(Failure(ConnectionDone()))
    d.addErrback(failures.append)
    assert failures[1].check(ResponseFailed)
    assert not failures[1].check(ResponseNeverReceived)


def test_bytes_nobody_asked_for_close_an_idle_connection() -> None:
    pool, endpoint, _ = make_pool()
    d = pool.request(b"GET", b"/", [], None)
    d.addCallback(lambda r: r.deliverBody(Recorder()))
    conn = endpoint.conns[0]
    conn.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert pool.idle_count == 1
    conn.dataReceived(b"HTTP/1.1 200 OK\r\n")
    assert pool.idle_count == 0
    assert conn.transport.disconnected  # type: ignore[union-attr]
    # and bytes beyond the announced length mean the connection is not trusted again
    d = pool.request(b"GET", b"/", [], None)
    d.addCallback(lambda r: r.deliverBody(Recorder()))
    endpoint.conns[1].dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA")
    assert pool.idle_count == 0


@pytest.mark.parametrize(
    ("head", "head_request", "keep", "framing", "length"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 12", False, True, BY_LENGTH, 12),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 12, 12\r\nContent-Length: 012", False, True,
         BY_LENGTH, 12),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 0", False, True, NO_BODY, 0),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 12", True, True, NO_BODY, 0),
        (b"HTTP/1.1 200\r\nTransfer-Encoding: chunked", False, True, CHUNKED, 0),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3", False, False,
         CHUNKED, 0),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip", False, False, UNTIL_CLOSE, 0),
        (b"HTTP/1.1 200 OK", False, False, UNTIL_CLOSE, 0),
        (b"HTTP/1.1 200 OK\r\nConnection: keep-alive, Close\r\nContent-Length: 1", False,
         False, BY_LENGTH, 1),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 1", False, False, BY_LENGTH, 1),
        (b"HTTP/1.0 200 OK\nConnection: keep-alive\nContent-Length: 1", False, True,
         BY_LENGTH, 1),
        (b"HTTP/1.1 304 Not Modified\r\nContent-Length: 99", False, True, NO_BODY, 0),
        (b"HTTP/1.1 100 Continue", False, True, NO_BODY, 0),
    ],
)  # fmt: skip
def test_framing_and_keep_alive_follow_the_head(
    head: bytes, head_request: bool, keep: bool, framing: int, length: int
) -> None:
    _, _, _, headers, got_keep, got_framing, got_length = parse_head(head, head_request)
    assert (got_keep, got_framing, got_length) == (keep, framing, length)
    assert headers.hasHeader(b"content-length") == head_request  # the GET's length, for HEAD


def test_folded_headers_are_joined_and_control_headers_left_out() -> None:
    version, code, phrase, headers, *_ = parse_head(
        b"HTTP/1.1 404 Not Found Here\r\nX-Long: a\r\n  b\r\n\tc\r\nKeep-Alive: 5\r\n"
        b"Set-Cookie: 1\r\nset-cookie: 2",
        False,
    )
    assert (version, code, phrase) == ((b"HTTP", 1, 1), 404, b"Not Found Here")
    assert headers.getRawHeaders(b"x-long") == [b"a b c"]
    assert headers.getRawHeaders(b"set-cookie") == [b"1", b"2"]
    assert not headers.hasHeader(b"keep-alive")


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/2 200 OK",
        b"HTTP/1.1 20 OK",
        b"HTTP/1.1 2000 OK",
        b"HTTP/1.1 099 Low",
        b"HTTP/1.1 abc OK",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1e3",
        b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999",
        b"HTTP/1.1 200 OK\r\nBad Name: x",
        b"HTTP/1.1 200 OK\r\nno colon",
        b"HTTP/1.1 200 OK\r\n" + b"X: 1\r\n" * 101,
        b"HTTP/1.1 200 OK\r\nX: " + b"a" * 65536,
    ],
)
def test_a_bad_head_is_refused(head: bytes) -> None:
    with pytest.raises(WireError):
        parse_head(head, False)
