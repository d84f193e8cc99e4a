"""The lean front protocol (``foreman.web.front``, ADR 0020) in memory.

``tests/web/test_site.py`` runs the site's whole contract (auth, limits,
deadlines, reports, HEAD, 499, 500) over the front protocol; this file covers
what only it has: which requests it serves itself, the hand-over to
``twisted.web`` in the middle of a connection, pipelining, and the head parser.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from foreman.core.httphead import MAX_HEADERS, parse_head
from foreman.web.front import HEAD_LIMIT, LEAN_BODY_LIMIT, PIPELINE_LIMIT, LeanRequest
from foreman.web.proxy import _load_seconds
from foreman.web.site import IDLE_CONNECTION_TIMEOUT, ForemanRequest
from tests.web.test_site import (
    Harness,
    chunked,
    make_site,
    raw_request,
)


@pytest.fixture
def site() -> Harness:
    return make_site(max_body=4 * 1024 * 1024)


def served_by(harness: Harness) -> list[str]:
    return ["lean" if isinstance(r, LeanRequest) else "web" for r, _ in harness.reports]


# -- which requests the front protocol serves itself


def test_a_relayed_request_is_served_lean(site: Harness) -> None:
    conn = site.connect()
    conn.send(raw_request("POST", "/api/chat", b'{"model": "m"}'))
    [reply] = conn.replies("POST")
    assert (reply.status, reply.body) == (200, b"proxy")
    assert reply.header(b"date") is not None and reply.header(b"content-length") == b"5"
    assert conn.protocol.web is None
    assert served_by(site) == ["lean"] and site.statuses == [200]
    # header names are spelled as twisted.web spells them, whatever the resource wrote
    assert b"\r\nContent-Type: text/plain\r\n" in conn.transport.value()
    request = site.reports[0][0]
    assert request.route_class == "inference" and request.started > 0


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (raw_request("GET", "/jobs"), "foreman's own route"),
        (raw_request("POST", "/v1/files", b"x"), "an upload"),
        (raw_request("POST", "/api/chat", b"y" * (LEAN_BODY_LIMIT + 1)), "over 1 MiB"),
        (
            raw_request("POST", "/api/chat", chunked(b"{}"), {"Transfer-Encoding": "chunked"}),
            "a chunked body",
        ),
        (b"GET /api/tags HTTP/1.0\r\nHost: x\r\n\r\n", "HTTP/1.0"),
        (b"GET /api/tags HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n", "obsolete line folding"),
        (b"GET /api/tags HTTP/1.1\r\nBad Name: x\r\n\r\n", "a header name that is no token"),
        (
            b"GET /api/tags HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nz",
            "two lengths",
        ),
        (b"GET http://x/api/tags HTTP/1.1\r\nHost: x\r\n\r\n", "an absolute-form target"),
    ],
)
def test_anything_else_is_handed_to_twisted_web_whole(site: Harness, raw: bytes, why: str) -> None:
    conn = site.connect()
    conn.send(raw)
    assert conn.protocol.web is not None, why
    # twisted.web answers it (or holds it), exactly as it did without the front protocol
    assert all(isinstance(r, ForemanRequest) for r, _ in site.reports), why


def test_a_connection_is_handed_over_between_requests_and_keeps_order(site: Harness) -> None:
    conn = site.connect()
    conn.send(raw_request("POST", "/api/chat", b"{}"))
    conn.send(raw_request("GET", "/api/tags") + raw_request("GET", "/status"))
    conn.send(raw_request("POST", "/api/generate", b"{}"))
    replies = conn.replies("POST", "GET", "GET", "POST")
    assert [r.body for r in replies] == [b"proxy", b"proxy", b"own", b"proxy"]
    assert served_by(site) == ["lean", "lean", "web", "web"]
    assert [s.path for s in site.proxy.seen] == [b"/api/chat", b"/api/tags", b"/api/generate"]


def test_a_head_too_long_for_the_lean_path_gets_twisted_webs_answer(site: Harness) -> None:
    conn = site.connect()
    conn.send(b"GET /api/tags?" + b"q" * (HEAD_LIMIT + 10) + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert conn.protocol.web is not None
    answer = conn.transport.value()  # twisted.web closes on a line over its limit
    assert conn.transport.disconnecting
    assert answer == b"" or answer.split(b" ", 2)[1] in (b"400", b"414", b"431")
    assert site.proxy.seen == []


# -- HTTP/1.1 behaviour on the lean path


def test_byte_by_byte_is_the_same_as_all_at_once(site: Harness) -> None:
    raw = raw_request("POST", "/api/chat", b'{"model": "m"}', {"X-Foreman-Priority": "3"})
    conn = site.connect()
    for i in range(len(raw)):
        conn.send(raw[i : i + 1])
    [reply] = conn.replies("POST")
    assert reply.status == 200
    assert site.proxy.seen[0].body == b'{"model": "m"}'
    assert served_by(site) == ["lean"]


def test_pipelined_requests_are_served_one_at_a_time_in_order(site: Harness) -> None:
    conn = site.connect()
    conn.send(raw_request("POST", "/api/chat/hold", b"1") + raw_request("POST", "/api/chat", b"2"))
    assert [s.body for s in site.proxy.seen] == [b"1"]  # the second waits for the first
    [held] = site.proxy.held
    held.setHeader(b"content-type", b"text/plain")
    held.write(b"first")
    held.finish()
    replies = conn.replies("POST", "POST")
    assert [r.body for r in replies] == [b"first", b"proxy"]
    assert replies[0].header(b"transfer-encoding") == b"chunked"  # no length was set
    assert [s.body for s in site.proxy.seen] == [b"1", b"2"]


def test_reading_pauses_while_too_much_is_pipelined(site: Harness) -> None:
    conn = site.connect()
    conn.send(raw_request("POST", "/api/chat/hold", b"1"))
    more = raw_request("POST", "/api/chat", b"z" * 200_000)
    conn.send(more + more)
    assert len(more) * 2 > PIPELINE_LIMIT
    assert conn.transport.producerState == "paused"
    site.proxy.held[0].finish()
    assert conn.transport.producerState == "producing"
    assert len(conn.replies("POST", "POST", "POST")) == 3


def test_connection_close_is_honoured(site: Harness) -> None:
    conn = site.connect()
    conn.send(raw_request("GET", "/api/tags", headers={"Connection": "close"}))
    [reply] = conn.replies("GET")
    assert reply.header(b"connection") == b"close"
    assert conn.transport.disconnecting


def test_streamed_chunks_are_written_as_they_come(site: Harness) -> None:
    conn = site.connect()
    conn.send(raw_request("POST", "/api/chat/hold", b"{}"))
    [held] = site.proxy.held
    held.write(b'{"n": 1}\n')
    first = conn.transport.value()
    assert first.endswith(b'9\r\n{"n": 1}\n\r\n')  # on the wire before the next chunk exists
    held.write(b'{"n": 2}\n')
    held.finish()
    [reply] = conn.replies("POST")
    assert reply.body == b'{"n": 1}\n{"n": 2}\n'


def test_a_client_gone_before_the_answer_is_a_499_and_a_failed_notify(site: Harness) -> None:
    conn = site.connect()
    conn.send(raw_request("POST", "/api/chat/hold", b"{}"))
    [held] = site.proxy.held
    failures: list[Any] = []
    held.notifyFinish().addErrback(failures.append)
    conn.protocol.connectionLost(Exception("gone"))
    assert len(failures) == 1 and site.statuses == [499]
    held.write(b"late")  # the relay may still write once: nothing happens
    assert conn.transport.value() == b""


def test_an_idle_lean_connection_is_closed_but_not_one_in_progress(site: Harness) -> None:
    busy, idle = site.connect(), site.connect()
    busy.send(raw_request("POST", "/api/chat/hold", b"{}"))
    idle.send(raw_request("GET", "/api/tags"))
    site.clock.advance(IDLE_CONNECTION_TIMEOUT + 1)
    assert idle.transport.disconnecting
    assert not busy.transport.disconnecting
    site.proxy.held[0].finish()
    site.clock.advance(IDLE_CONNECTION_TIMEOUT + 1)
    assert busy.transport.disconnecting
    assert site.clock.getDelayedCalls() == [] or all(
        not c.active() for c in site.clock.getDelayedCalls()
    )


def test_an_unexpected_error_is_json_and_the_connection_goes_on(site: Harness) -> None:
    class Broken(Resource):
        isLeaf = True

        def render(self, request: Any) -> Any:
            raise RuntimeError("boom")

    site.site.proxy = Broken()  # type: ignore[no-untyped-call]
    conn = site.connect()
    conn.send(raw_request("POST", "/v1/chat/completions", b"{}"))
    site.site.proxy = site.proxy
    conn.send(raw_request("POST", "/api/chat", b"{}"))
    broken, fine = conn.replies("POST", "POST")
    assert broken.status == 500 and broken.json()["error"]["code"] == "internal_error"
    assert fine.status == 200
    assert site.statuses == [500, 200]


def test_head_keeps_the_length_and_sends_no_body(site: Harness) -> None:
    class Sized(Resource):
        isLeaf = True

        def render(self, request: Any) -> Any:
            request.setHeader(b"content-length", b"123")
            request.write(b"")
            request.finish()
            return NOT_DONE_YET

    site.site.proxy = Sized()  # type: ignore[no-untyped-call]
    conn = site.connect()
    conn.send(raw_request("HEAD", "/api/tags"))
    raw = conn.transport.value()
    assert raw.endswith(b"\r\n\r\n") and b"content-length: 123\r\n" in raw.lower()


# -- the head parser


_TOKEN = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-!#$%&'*+.^_`|~",
    min_size=1,
    max_size=20,
).filter(
    lambda n: (
        n.lower() not in {"transfer-encoding", "expect", "upgrade", "content-length", "connection"}
    )
)
_VALUE = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=40).map(
    lambda v: v.strip()
)


@given(
    method=st.sampled_from(["GET", "POST", "DELETE", "HEAD"]),
    path=st.text(alphabet="abcdefghijklmnopqrstuvwxyz/._-", max_size=30),
    headers=st.lists(st.tuples(_TOKEN, _VALUE), max_size=12),
    length=st.none() | st.integers(min_value=0, max_value=10**9),
    close=st.booleans(),
)
def test_parse_head_reads_back_what_was_written(
    method: str,
    path: str,
    headers: list[tuple[str, str]],
    length: int | None,
    close: bool,
) -> None:
    lines = [f"{method} /{path} HTTP/1.1"] + [f"{n}:  {v} " for n, v in headers]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    if close:
        lines.append("Connection: keep-alive, close")
    head = parse_head("\r\n".join(lines).encode())
    assert head is not None
    assert (head.method, head.target, head.path) == (
        method.encode(),
        b"/" + path.encode(),
        b"/" + path.encode(),
    )
    assert head.content_length == (length or 0)
    assert head.keep_alive is not close
    sent = [(n.encode(), v.encode()) for n, v in headers]
    assert [(n, v[0]) for n, v in head.getAllRawHeaders()][: len(sent)] == sent
    for name, value in sent:
        assert value in (head.getRawHeaders(name.upper()) or [])


@pytest.mark.parametrize(
    "head",
    [
        b"GET / HTTP/1.1\r\nHost: a\nb",  # a bare LF
        b"GET / HTTP/1.1\r\nHost: a\rb",  # a bare CR
        b"GET / HTTP/1.1\r\nHost: a\x00",
        b"GET /\x00 HTTP/1.1",
        b"get / HTTP/1.1",
        b"GET  / HTTP/1.1",
        b"GET / HTTP/2",
        b"GET / HTTP/1.1\r\nContent-Length: -1",
        b"GET / HTTP/1.1\r\nContent-Length: 1e3",
        b"GET / HTTP/1.1\r\nContent-Length: \xd9\xa1",  # a non-ASCII digit
        b"GET / HTTP/1.1\r\nExpect: 100-continue",
        b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade",
        b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked",
        b"GET / HTTP/1.1\r\n: empty name",
        b"GET / HTTP/1.1" + b"\r\nX: y" * (MAX_HEADERS + 1),
    ],
)
def test_parse_head_leaves_anything_unusual_to_twisted_web(head: bytes) -> None:
    assert parse_head(head) is None


# -- the relay's reading of load_duration, which no longer parses the final line


@pytest.mark.parametrize(
    ("chunk", "seconds"),
    [
        (b'{"model":"m","done":true,"load_duration":1500000000,"eval_count":3}', 1.5),
        (b'{"a":1}\n{"done":true,"load_duration": 2000000000 }\n', 2.0),
        (b'{"message":{"content":"\\"load_duration\\": 9"},"load_duration":0}', 0.0),
        (b'{"load_duration":5}\n{"done":true}\n', None),  # not in the final line
        (b'{"load_duration":-5}', None),
        (b'{"load_duration":1.5}', None),
        (b'{"load_duration":"7"}', None),
        (b'{"choices":[]}', None),
    ],
)
def test_load_seconds_is_read_from_the_final_line_only(chunk: bytes, seconds: float | None) -> None:
    assert _load_seconds(chunk) == seconds


# -- own routes the front protocol serves itself (``site.lean_routes``: POST /jobs)


def test_an_own_lean_route_answers_bytes_deferreds_and_bad_requests() -> None:
    from twisted.internet.defer import Deferred

    from foreman.web.httpjson import BadRequest
    from tests.web.test_site import TOKEN

    harness = make_site(tokens=(TOKEN,))
    later: list[Deferred[bytes]] = []

    def create(request: Any) -> Any:
        body = request.content.read()
        if body == b"bad":
            raise BadRequest("that is not a job", "invalid_job")
        if body == b"later":
            d: Deferred[bytes] = Deferred()
            later.append(d)
            return d
        request.setResponseCode(202)
        request.setHeader(b"location", b"/jobs/j1")
        return b'{"id": "j1"}'

    harness.site.lean_routes[(b"POST", b"/jobs")] = create
    conn = harness.connect()
    conn.send(raw_request("POST", "/jobs", b"{}", token=TOKEN))
    conn.send(raw_request("POST", "/jobs", b"bad", token=TOKEN))
    conn.send(raw_request("POST", "/jobs", b"later", token=TOKEN))
    later[0].callback(b'{"id": "j2"}')
    conn.send(raw_request("POST", "/jobs", b"{}"))  # no token
    ok, bad, deferred, refused = conn.replies("POST", "POST", "POST", "POST")
    assert (ok.status, ok.header(b"location"), ok.body) == (202, b"/jobs/j1", b'{"id": "j1"}')
    assert bad.status == 400 and bad.json()["error"]["code"] == "invalid_job"
    assert deferred.status == 200 and deferred.body == b'{"id": "j2"}'
    assert refused.status == 401 and refused.header(b"www-authenticate") is not None
    assert conn.protocol.web is None and served_by(harness) == ["lean"] * 4
    assert [r.route_class for r, _ in harness.reports] == ["foreman"] * 4
    assert harness.own.seen == []  # Klein never saw them
    # the same path with another method is still Klein's
    conn.send(raw_request("GET", "/jobs", token=TOKEN))
    assert conn.protocol.web is not None and harness.own.seen[0].path == b"/jobs"


def test_a_slow_head_then_a_slow_body_each_get_their_own_deadline(site: Harness) -> None:
    from foreman.web.site import BODY_DEADLINE, HEAD_DEADLINE

    conn = site.connect()
    head = raw_request("POST", "/api/chat", b"x" * 100).split(b"\r\n\r\n")[0] + b"\r\n\r\n"
    conn.send(head[:10])  # the head begins: its deadline runs
    site.clock.advance(HEAD_DEADLINE - 1)
    conn.send(head[10:] + b"x" * 10)  # the head is in; the body begins
    site.clock.advance(HEAD_DEADLINE)  # past the head's deadline, well inside the body's
    assert conn.transport.value() == b"" and not conn.transport.disconnecting
    site.clock.advance(BODY_DEADLINE - HEAD_DEADLINE + 1)
    reply = conn.transport.value()
    assert reply.startswith(b"HTTP/1.1 408") and b"body" in reply
    assert conn.transport.disconnecting and site.proxy.seen == []


def test_a_line_break_in_a_header_value_cannot_split_the_response() -> None:
    from foreman.web.front import ResponseHeaders

    headers = ResponseHeaders()
    headers.setRawHeaders(b"x-model", [b"m\r\nSet-Cookie: evil=1", b"ok"])
    headers.addRawHeader(b"X-Model", b"two\nlines")
    assert headers.lines() == [
        b"X-Model: m Set-Cookie: evil=1\r\n",
        b"X-Model: ok\r\n",
        b"X-Model: two lines\r\n",
    ]
