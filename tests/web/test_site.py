"""``ForemanSite`` in memory: routing by first path segment, auth, body limit, reports.

``treq.testing.StubTreq`` wraps the resource it is given in a plain
``twisted.web.server.Site`` (see ``treq.testing.RequestTraversalAgent``), so
it would bypass ``ForemanSite.getResourceFor`` and ``ForemanRequest`` — the
very code under test here. These tests therefore drive the real site over an
in-memory transport: ``site.buildProtocol(None)`` + ``StringTransport``, raw
HTTP/1.1 bytes in, raw bytes out, with a ``task.Clock`` as the site's reactor
(no listening port, no real reactor, no threads).
"""

from __future__ import annotations

import io
import json
import re
from typing import Any

import attrs
import pytest
from twisted.internet.error import ConnectionLost
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport, StringTransportWithDisconnection
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from foreman.web.auth import TokenCheck
from foreman.web.site import (
    BODY_DEADLINE,
    HEAD_DEADLINE,
    IDLE_CONNECTION_TIMEOUT,
    ForemanRequest,
    ForemanSite,
)

MAX_BODY = 1000
TOKEN = "s3cret-token"
OTHER_TOKEN = "second-token"
NOW = 1_767_225_600.0  # 2026-01-01T00:00:00Z
AUTH_MESSAGE = "missing or wrong Bearer token"
WWW_AUTHENTICATE = b'Bearer realm="foreman"'


# -- the stand-ins for foreman's own app and the proxy


@attrs.frozen
class Seen:
    method: bytes
    path: bytes
    body: bytes
    authorization: bytes | None


class Recorder(Resource):
    """A leaf resource that records every request and answers 200 with its name.

    A path ending in ``/hold`` is kept open (``NOT_DONE_YET``) in ``held``.
    """

    isLeaf = True

    def __init__(self, name: str) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.name = name
        self.seen: list[Seen] = []
        self.held: list[Any] = []

    def render(self, request: Any) -> Any:
        request.content.seek(0)
        self.seen.append(
            Seen(
                request.method,
                request.path,
                request.content.read(),
                request.getHeader(b"authorization"),
            )
        )
        if request.path.endswith(b"/hold"):
            self.held.append(request)
            return NOT_DONE_YET
        request.setResponseCode(200)
        request.setHeader(b"content-type", b"text/plain")
        return self.name.encode()


# -- HTTP/1.1 on the wire


@attrs.frozen
class Reply:
    status: int
    headers: dict[bytes, list[bytes]]  # lower-case names
    body: bytes

    def header(self, name: bytes) -> bytes | None:
        values = self.headers.get(name.lower())
        return values[-1] if values else None

    def json(self) -> Any:
        return json.loads(self.body)


def _dechunk(data: bytes) -> tuple[bytes, bytes]:
    body = b""
    while True:
        size_line, data = data.split(b"\r\n", 1)
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            _, data = data.split(b"\r\n", 1)  # no trailers are sent
            return body, data
        body += data[:size]
        data = data[size + 2 :]


def parse_replies(raw: bytes, methods: list[bytes]) -> list[Reply]:
    """Split what the server wrote into replies (one per request method given)."""
    replies = []
    for method in methods:
        head, raw = raw.split(b"\r\n\r\n", 1)
        status_line, *lines = head.split(b"\r\n")
        version, status, _ = status_line.split(b" ", 2)
        assert version == b"HTTP/1.1"
        headers: dict[bytes, list[bytes]] = {}
        for line in lines:
            name, _, value = line.partition(b":")
            headers.setdefault(name.strip().lower(), []).append(value.strip())
        if method == b"HEAD":
            body = b""
        elif headers.get(b"transfer-encoding") == [b"chunked"]:
            body, raw = _dechunk(raw)
        else:
            length = int(headers.get(b"content-length", [b"0"])[0])
            body, raw = raw[:length], raw[length:]
        replies.append(Reply(int(status), headers, body))
    assert raw == b"", f"unexpected bytes after the replies: {raw[:200]!r}"
    return replies


def raw_request(
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    token: str | None = None,
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: foreman.test"]
    if token is not None:
        lines.append(f"Authorization: Bearer {token}")
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    if body is not None and "Transfer-Encoding" not in (headers or {}):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")


def chunked(*chunks: bytes, end: bool = True) -> bytes:
    out = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks)
    return out + (b"0\r\n\r\n" if end else b"")


@attrs.define
class Connection:
    protocol: Any
    transport: StringTransport

    def send(self, data: bytes) -> None:
        self.protocol.dataReceived(data)

    def replies(self, *methods: str) -> list[Reply]:
        return parse_replies(self.transport.value(), [m.encode() for m in methods])

    @property
    def request(self) -> ForemanRequest:
        """The request currently being received or processed on this connection."""
        channel = self.protocol.web  # the front protocol handed the connection over
        requests: list[ForemanRequest] = channel.requests
        assert len(requests) == 1
        return requests[0]


@attrs.define
class Harness:
    site: ForemanSite
    own: Recorder
    proxy: Recorder
    clock: Clock
    reports: list[tuple[ForemanRequest, int]]
    #: the body each request had buffered when the site picked its resource
    buffered: list[bytes]

    @property
    def statuses(self) -> list[int]:
        return [status for _, status in self.reports]

    def connect(self, transport: StringTransport | None = None) -> Connection:
        protocol: Any = self.site.buildProtocol(None)
        transport = transport if transport is not None else StringTransport()
        if isinstance(transport, StringTransportWithDisconnection):
            transport.protocol = protocol
        protocol.makeConnection(transport)
        return Connection(protocol, transport)

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        token: str | None = None,
    ) -> Reply:
        """One request on a fresh connection; exactly one reply expected."""
        conn = self.connect()
        conn.send(raw_request(method, path, body, headers, token))
        [reply] = conn.replies(method)
        return reply


def make_site(tokens: tuple[str, ...] | None = None, max_body: int = MAX_BODY) -> Harness:
    clock = Clock()
    clock.advance(NOW)
    own, proxy = Recorder("own"), Recorder("proxy")
    site = ForemanSite(
        own, proxy, TokenCheck(tokens), max_body, parsePOSTFormSubmission=False, reactor=clock
    )
    reports: list[tuple[ForemanRequest, int]] = []
    site.report = lambda request, status: reports.append((request, status))
    buffered: list[bytes] = []
    pick = site.getResourceFor

    def spy(request: Any) -> Any:
        buffered.append(read_buffered(request))
        return pick(request)

    site.getResourceFor = spy  # type: ignore[method-assign]
    serve = site.serve_lean

    def lean_spy(request: Any) -> None:
        buffered.append(read_buffered(request))
        serve(request)

    site.serve_lean = lean_spy  # type: ignore[method-assign]
    return Harness(site, own, proxy, clock, reports, buffered)


def read_buffered(request: Any) -> bytes:
    """What the request holds of its body so far (its read position unchanged)."""
    content = request.content
    position = content.tell()
    content.seek(0)
    data: bytes = content.read()
    content.seek(position)
    return data


@pytest.fixture
def open_site() -> Harness:
    return make_site()


@pytest.fixture
def locked_site() -> Harness:
    return make_site((TOKEN, OTHER_TOKEN))


def expected_error(family: str, status: int, code: str, message: str) -> Any:
    if family == "ollama":
        return {"error": message}
    if family == "openai":
        types = {401: "authentication_error", 413: "invalid_request_error"}
        return {"error": {"message": message, "type": types[status], "code": code}}
    return {"error": {"code": code, "message": message}}


OWN_PATHS = [
    "/jobs",
    "/jobs/job_01KDM0000000000000000000AB",
    "/jobs/job_01KDM0000000000000000000AB/cancel",
    "/jobs?state=queued&limit=5",
    "/queue",
    "/status",
    "/healthz",
    "/readyz",
    "/metrics",
    "/openapi.json",
]
PROXY_PATHS = [
    "/",
    "/api/chat",
    "/api/generate",
    "/api/tags",
    "/api/version",
    "/v1/chat/completions",
    "/v1/models",
    "/v1",
    "/jobsx",  # only an exact first segment is foreman's
    "/favicon.ico",
]
METHODS = ["GET", "POST", "PUT", "DELETE"]


# -- routing


@pytest.mark.parametrize("method", ["GET", "POST"])
@pytest.mark.parametrize("path", OWN_PATHS)
def test_foreman_paths_go_to_own(open_site: Harness, path: str, method: str) -> None:
    body = b"{}" if method == "POST" else None
    reply = open_site.request(method, path, body)
    assert (reply.status, reply.body) == (200, b"own")
    assert [(s.method, s.path) for s in open_site.own.seen] == [
        (method.encode(), path.split("?")[0].encode())
    ]
    assert open_site.proxy.seen == []
    [(request, status)] = open_site.reports
    assert (request.route_class, status) == ("foreman", 200)


@pytest.mark.parametrize("method", ["GET", "POST"])
@pytest.mark.parametrize("path", PROXY_PATHS)
def test_other_paths_go_to_proxy(open_site: Harness, path: str, method: str) -> None:
    body = b'{"model": "m"}' if method == "POST" else None
    reply = open_site.request(method, path, body)
    assert (reply.status, reply.body) == (200, b"proxy")
    assert [(s.method, s.path, s.body) for s in open_site.proxy.seen] == [
        (method.encode(), path.encode(), body or b"")
    ]
    assert open_site.own.seen == []


@pytest.mark.parametrize(
    ("method", "path", "route_class"),
    [
        ("GET", "/", "root"),
        ("HEAD", "/", "root"),
        ("POST", "/", "other"),
        ("POST", "/api/chat", "inference"),
        ("POST", "/v1/chat/completions", "inference"),
        ("GET", "/api/tags", "metadata"),
        ("GET", "/v1/models", "metadata"),
        ("POST", "/api/pull", "management"),
        ("GET", "/jobs", "foreman"),
        ("POST", "/jobs", "foreman"),
    ],
)
def test_route_class_is_set_before_the_resource_runs(
    open_site: Harness, method: str, path: str, route_class: str
) -> None:
    reply = open_site.request(method, path, b"{}" if method == "POST" else None)
    assert reply.status == 200
    [(request, _)] = open_site.reports
    assert request.route_class == route_class


def test_head_is_answered_without_a_body(open_site: Harness) -> None:
    reply = open_site.request("HEAD", "/")
    assert reply.status == 200
    assert reply.header(b"content-length") == b"5"  # the length of "proxy", body left off
    assert reply.body == b""


# -- auth


def _assert_unauthorized(site: Harness, reply: Reply, family: str) -> None:
    assert reply.status == 401, reply
    assert reply.header(b"www-authenticate") == WWW_AUTHENTICATE
    assert reply.header(b"content-type") == b"application/json"
    assert reply.json() == expected_error(family, 401, "unauthorized", AUTH_MESSAGE)
    assert site.own.seen == []
    assert site.proxy.seen == []
    assert site.statuses == [401]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(
    ("path", "family"),
    [
        ("/api/chat", "ollama"),
        ("/api/tags", "ollama"),
        ("/api/pull", "ollama"),
        ("/v1/chat/completions", "openai"),
        ("/v1/models", "openai"),
        ("/jobs", "foreman"),
        ("/jobs/job_01KDM0000000000000000000AB", "foreman"),
        ("/queue", "foreman"),
        ("/status", "foreman"),
        ("/metrics", "foreman"),
        ("/openapi.json", "foreman"),
    ],
)
def test_missing_token_is_401_in_the_route_familys_shape(
    locked_site: Harness, method: str, path: str, family: str
) -> None:
    body = b'{"model": "m"}' if method in ("POST", "PUT") else None
    reply = locked_site.request(method, path, body)
    _assert_unauthorized(locked_site, reply, family)


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
def test_root_needs_a_token_for_anything_but_get_and_head(
    locked_site: Harness, method: str
) -> None:
    """``/`` is open only as Ollama's liveness probe (GET/HEAD); any other method
    is relayed to the target, so it must not bypass the token check.

    Fails today: ``TokenCheck`` treats ``/`` as open for every method and
    ``ForemanSite`` relays e.g. ``POST /`` to the proxy without a token.
    """
    reply = locked_site.request(method, "/", b'{"model": "m"}')
    _assert_unauthorized(locked_site, reply, "ollama")


@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.parametrize("path", ["/", "/healthz", "/readyz", "/healthz?probe=1"])
def test_open_paths_need_no_token(locked_site: Harness, method: str, path: str) -> None:
    reply = locked_site.request(method, path)
    assert reply.status == 200
    target = locked_site.proxy if path == "/" else locked_site.own
    assert [s.path for s in target.seen] == [path.split("?")[0].encode()]
    assert locked_site.statuses == [200]


@pytest.mark.parametrize(
    ("path", "family"),
    [
        ("/healthz/extra", "foreman"),
        ("/readyz/", "foreman"),
        ("//healthz", "foreman"),
        ("/HEALTHZ", "ollama"),
        ("/api/", "ollama"),
    ],
)
def test_open_paths_are_exact(locked_site: Harness, path: str, family: str) -> None:
    _assert_unauthorized(locked_site, locked_site.request("GET", path), family)


@pytest.mark.parametrize(
    "authorization",
    [
        "Bearer wrong",
        f"Bearer {TOKEN}x",
        f"Bearer {TOKEN[:-1]}",
        f"Basic {TOKEN}",
        f"Token {TOKEN}",
        TOKEN,
        "Bearer",
        "Bearer ",
        f"Bearer {TOKEN.upper()}",
        f"Bearer {TOKEN},{OTHER_TOKEN}",
    ],
)
@pytest.mark.parametrize(("path", "family"), [("/api/chat", "ollama"), ("/jobs", "foreman")])
def test_wrong_token_is_401(
    locked_site: Harness, authorization: str, path: str, family: str
) -> None:
    reply = locked_site.request("POST", path, b"{}", headers={"Authorization": authorization})
    _assert_unauthorized(locked_site, reply, family)


@pytest.mark.parametrize(
    "authorization",
    [
        f"Bearer {TOKEN}",
        f"Bearer {OTHER_TOKEN}",
        f"bearer {TOKEN}",
        f"BEARER {TOKEN}",
        f"Bearer   {TOKEN}  ",
    ],
)
@pytest.mark.parametrize("method", METHODS)
def test_valid_token_passes(locked_site: Harness, authorization: str, method: str) -> None:
    headers = {"Authorization": authorization}
    body = b"{}" if method in ("POST", "PUT") else None
    assert locked_site.request(method, "/api/chat", body, headers).body == b"proxy"
    assert locked_site.request(method, "/jobs", body, headers).body == b"own"
    assert locked_site.request(method, "/", body, headers).body == b"proxy"
    assert locked_site.statuses == [200, 200, 200]


def test_head_without_token_is_401_without_a_body(locked_site: Harness) -> None:
    reply = locked_site.request("HEAD", "/jobs")
    assert reply.status == 401
    assert reply.header(b"www-authenticate") == WWW_AUTHENTICATE
    assert reply.body == b""
    assert locked_site.own.seen == []


@pytest.mark.parametrize("tokens", [None, ()])
def test_no_tokens_configured_means_open(tokens: tuple[str, ...] | None) -> None:
    site = make_site(tokens)
    assert not site.site.tokens.enabled
    for method in METHODS:
        for path in ["/", "/api/chat", "/v1/models", "/jobs", "/metrics"]:
            reply = site.request(method, path, b"{}" if method == "POST" else None)
            assert reply.status == 200, (method, path)
    assert set(site.statuses) == {200}


def test_token_check_enabled_flag() -> None:
    assert TokenCheck((TOKEN,)).enabled
    assert not TokenCheck(None).enabled


# -- body limit


@pytest.mark.parametrize(
    ("path", "family"),
    [
        ("/api/chat", "ollama"),
        ("/v1/chat/completions", "openai"),
        ("/jobs", "foreman"),
        ("/", "ollama"),
    ],
)
def test_body_over_the_limit_is_413_in_the_route_familys_shape(
    locked_site: Harness, path: str, family: str
) -> None:
    reply = locked_site.request("POST", path, b"x" * (MAX_BODY + 1), token=TOKEN)
    assert reply.status == 413
    assert reply.header(b"content-type") == b"application/json"
    assert reply.json() == expected_error(
        family, 413, "body_too_large", f"request body is over the limit of {MAX_BODY} bytes"
    )
    assert locked_site.own.seen == locked_site.proxy.seen == []
    [(request, status)] = locked_site.reports
    assert status == 413
    assert request.too_large
    assert locked_site.buffered == [b""]


def test_body_at_the_limit_passes(open_site: Harness) -> None:
    body = b"y" * MAX_BODY
    reply = open_site.request("POST", "/api/chat", body)
    assert reply.status == 200
    assert open_site.proxy.seen[0].body == body
    assert open_site.buffered == [body]


def test_declared_oversized_body_is_not_buffered(open_site: Harness) -> None:
    """A Content-Length over the limit: the body is read and dropped, never stored."""
    declared = 50 * 1024 * 1024  # would be a temporary file if it were buffered
    conn = open_site.connect()
    conn.send(raw_request("POST", "/api/chat", headers={"Content-Length": str(declared)}))
    request = conn.request
    assert request.too_large
    sent = 0
    for _ in range(16):
        conn.send(b"z" * 65536)
        sent += 65536
    assert isinstance(request.content, io.BytesIO)  # not a temporary file
    assert read_buffered(request) == b""
    assert conn.transport.value() == b""  # no answer until the body has been read
    conn.send(b"z" * (declared - sent))
    [reply] = conn.replies("POST")
    assert reply.status == 413
    assert open_site.proxy.seen == []
    assert open_site.statuses == [413]
    assert open_site.buffered == [b""]


def test_chunked_body_over_the_limit_is_dropped_and_413(open_site: Harness) -> None:
    conn = open_site.connect()
    conn.send(raw_request("POST", "/jobs", headers={"Transfer-Encoding": "chunked"}))
    conn.send(chunked(b"a" * 600, end=False))
    request = conn.request
    assert not request.too_large
    assert read_buffered(request) == b"a" * 600
    conn.send(chunked(b"b" * 600, b"c" * 600, end=False))
    assert request.too_large
    assert read_buffered(request) == b""  # what was buffered is dropped too
    conn.send(chunked())
    [reply] = conn.replies("POST")
    assert reply.status == 413
    assert reply.json()["error"]["code"] == "body_too_large"
    assert open_site.own.seen == []
    assert open_site.statuses == [413]
    assert open_site.buffered == [b""]


def test_chunked_body_under_the_limit_passes(open_site: Harness) -> None:
    conn = open_site.connect()
    conn.send(raw_request("POST", "/api/chat", headers={"Transfer-Encoding": "chunked"}))
    conn.send(chunked(b"a" * 500, b"b" * 500))
    [reply] = conn.replies("POST")
    assert reply.status == 200
    assert open_site.proxy.seen[0].body == b"a" * 500 + b"b" * 500


def test_connection_stays_usable_after_a_413(open_site: Harness) -> None:
    conn = open_site.connect()
    conn.send(raw_request("POST", "/api/chat", b"x" * (MAX_BODY * 3)))
    conn.send(raw_request("GET", "/api/tags"))
    first, second = conn.replies("POST", "GET")
    assert (first.status, second.status, second.body) == (413, 200, b"proxy")
    assert [s.path for s in open_site.proxy.seen] == [b"/api/tags"]


def test_the_limit_is_per_request_on_a_kept_alive_connection(open_site: Harness) -> None:
    conn = open_site.connect()
    for _ in range(3):
        conn.send(raw_request("POST", "/api/chat", b"w" * MAX_BODY))
    assert [r.status for r in conn.replies("POST", "POST", "POST")] == [200, 200, 200]


# -- the report hook


def test_report_is_called_once_per_request_with_its_status(locked_site: Harness) -> None:
    conn = locked_site.connect()
    conn.send(raw_request("GET", "/jobs", token=TOKEN))
    conn.send(raw_request("POST", "/api/chat", b"x" * (MAX_BODY + 1), token=TOKEN))
    conn.send(raw_request("GET", "/status"))
    conn.send(raw_request("GET", "/healthz"))
    replies = conn.replies("GET", "POST", "GET", "GET")
    assert [r.status for r in replies] == [200, 413, 401, 200]
    assert locked_site.statuses == [200, 413, 401, 200]
    assert len({id(request) for request, _ in locked_site.reports}) == 4
    assert [r.path for r, _ in locked_site.reports] == [
        b"/jobs",
        b"/api/chat",
        b"/status",
        b"/healthz",
    ]


def test_report_carries_the_start_time_from_the_sites_reactor(open_site: Harness) -> None:
    conn = open_site.connect()
    open_site.clock.advance(2.5)
    conn.send(raw_request("GET", "/api/chat/hold"))
    [request] = open_site.proxy.held
    open_site.clock.advance(7.0)
    request.write(b"late")
    request.finish()
    [reply] = conn.replies("GET")
    assert (reply.status, reply.body) == (200, b"late")
    [(reported, status)] = open_site.reports
    assert reported is request
    assert status == 200
    assert reported.started == NOW + 2.5


@pytest.mark.parametrize("path", ["/api/chat/hold", "/jobs/hold"])
def test_client_disconnect_mid_request_reports_499(open_site: Harness, path: str) -> None:
    conn = open_site.connect(StringTransportWithDisconnection())
    conn.send(raw_request("POST", path, b"{}"))
    held = open_site.proxy.held + open_site.own.held
    assert len(held) == 1
    assert open_site.reports == []
    conn.transport.loseConnection()  # calls protocol.connectionLost
    assert [(r is held[0], s) for r, s in open_site.reports] == [(True, 499)]


def test_connection_lost_after_the_answer_reports_nothing_more(open_site: Harness) -> None:
    conn = open_site.connect()
    conn.send(raw_request("GET", "/api/chat/hold"))
    [request] = open_site.proxy.held
    request.finish()
    conn.protocol.connectionLost(Failure(ConnectionLost()))
    request.connectionLost(Failure(ConnectionLost()))  # even if told twice
    assert open_site.statuses == [200]


def test_an_error_in_a_resource_is_reported_as_500(open_site: Harness) -> None:
    class Broken(Resource):
        isLeaf = True

        def render(self, request: Any) -> bytes:
            raise RuntimeError("boom")

    open_site.site.proxy = Broken()  # type: ignore[no-untyped-call]
    reply = open_site.request("GET", "/api/tags")
    assert reply.status == 500
    assert b"boom" not in reply.body  # displayTracebacks is off
    assert open_site.statuses == [500]


def test_no_report_hook_is_fine(open_site: Harness) -> None:
    open_site.site.report = None
    assert open_site.request("GET", "/jobs").status == 200
    conn = open_site.connect(StringTransportWithDisconnection())
    conn.send(raw_request("GET", "/api/chat/hold"))
    conn.transport.loseConnection()
    assert open_site.reports == []


# -- the connection


def test_idle_connection_is_closed_after_the_idle_timeout(open_site: Harness) -> None:
    conn = open_site.connect()
    open_site.clock.advance(IDLE_CONNECTION_TIMEOUT - 1)
    assert not conn.transport.disconnecting
    open_site.clock.advance(1)
    assert conn.transport.disconnecting


def test_a_request_in_progress_has_no_timeout(open_site: Harness) -> None:
    conn = open_site.connect()
    conn.send(raw_request("POST", "/api/chat/hold", b"{}"))
    open_site.clock.advance(IDLE_CONNECTION_TIMEOUT * 10)
    assert not conn.transport.disconnecting
    [request] = open_site.proxy.held
    request.finish()
    assert [r.status for r in conn.replies("POST")] == [200]


def test_nagle_is_turned_off_on_tcp_transports(open_site: Harness) -> None:
    class TcpTransport(StringTransport):
        def __init__(self) -> None:
            super().__init__()  # type: ignore[no-untyped-call]
            self.no_delay: list[bool] = []

        def setTcpNoDelay(self, enabled: bool) -> None:
            self.no_delay.append(enabled)

    transport = TcpTransport()
    open_site.connect(transport)
    assert transport.no_delay == [True]


def test_tokenless_body_is_refused_before_it_is_buffered(locked_site: Harness) -> None:
    """The token is checked when the headers are in: 401, and the body is never kept."""
    conn = locked_site.connect()
    body = b"q" * (MAX_BODY - 1)  # under the limit: would be buffered with a token
    conn.send(raw_request("POST", "/jobs", headers={"Content-Length": str(len(body))}))
    request = conn.request
    assert request.refused and not request.too_large
    conn.send(body[: len(body) // 2])
    assert read_buffered(request) == b""
    conn.send(body[len(body) // 2 :])
    [reply] = conn.replies("POST")
    assert reply.status == 401
    assert reply.json()["error"]["code"] == "unauthorized"
    assert locked_site.own.seen == []


def test_tokenless_oversized_body_is_401_not_413(locked_site: Harness) -> None:
    conn = locked_site.connect()
    conn.send(raw_request("POST", "/api/chat", b"z" * (MAX_BODY + 10)))
    [reply] = conn.replies("POST")
    assert reply.status == 401


def test_a_token_lets_the_body_through_as_before(locked_site: Harness) -> None:
    conn = locked_site.connect()
    conn.send(raw_request("POST", "/api/chat", b'{"x": 1}', token=TOKEN))
    [reply] = conn.replies("POST")
    assert reply.status == 200
    assert locked_site.proxy.seen[0].body == b'{"x": 1}'
    assert locked_site.statuses == [200]


def _timed_out(conn: Connection) -> Reply:
    [reply] = parse_replies(conn.transport.value(), [b"POST"])
    assert conn.transport.disconnecting
    return reply


def test_a_head_trickled_past_its_deadline_gets_408_and_the_connection_ends(
    open_site: Harness,
) -> None:
    conn = open_site.connect()
    conn.send(b"POST /api/chat HTTP/1.1\r\nHost: foreman.test\r\n")
    for _ in range(int(HEAD_DEADLINE) - 1):  # a byte a second resets Twisted's idle timer
        open_site.clock.advance(1)
        conn.send(b"X")
    assert conn.transport.value() == b""
    open_site.clock.advance(1)
    reply = _timed_out(conn)
    assert reply.status == 408
    assert reply.json()["error"]["code"] == "request_timeout"
    assert "head" in reply.json()["error"]["message"]
    assert open_site.proxy.seen == []


def test_a_body_trickled_past_its_deadline_gets_408(open_site: Harness) -> None:
    conn = open_site.connect()
    conn.send(raw_request("POST", "/jobs", headers={"Content-Length": "1000"}))
    open_site.clock.advance(HEAD_DEADLINE + 1)  # the head arrived in time: only the body counts
    assert conn.transport.value() == b""
    conn.send(b"{" * 10)
    open_site.clock.advance(BODY_DEADLINE - HEAD_DEADLINE - 1)
    reply = _timed_out(conn)
    assert reply.status == 408 and "body" in reply.json()["error"]["message"]
    assert open_site.own.seen == []


def test_requests_in_time_leave_no_deadline_behind(open_site: Harness) -> None:
    conn = open_site.connect()
    conn.send(raw_request("POST", "/api/chat", b'{"x": 1}'))
    conn.send(raw_request("GET", "/jobs"))
    assert [r.status for r in conn.replies("POST", "GET")] == [200, 200]
    now = open_site.clock.seconds()
    # only Twisted's idle-connection timer is left, no request deadline
    left = [c.getTime() - now for c in open_site.clock.getDelayedCalls()]
    assert left == [IDLE_CONNECTION_TIMEOUT]
    open_site.clock.advance(BODY_DEADLINE + 1)  # an idle keep-alive connection is not cut
    assert not conn.transport.disconnecting


def _every_route() -> list[str]:
    """foreman's own routes (from its OpenAPI document) and every route it relays."""
    from foreman.core.routeclass import INFERENCE_ROUTES
    from foreman.web.openapi import openapi_document

    own = [
        re.sub(r"\{[^}]+\}", "response.json", p.replace("{job_id}", "job_" + "0" * 26))
        for p in openapi_document("http://foreman.test")["paths"]
    ]
    relayed = [p.decode() for p in sorted(INFERENCE_ROUTES)]
    return [*own, *relayed, "/", "/api/tags", "/api/ps", "/v1/models", "/api/nope"]


_OPEN = {("GET", "/"), ("HEAD", "/"), ("GET", "/healthz"), ("HEAD", "/healthz")}
_OPEN |= {("GET", "/readyz"), ("HEAD", "/readyz")}


@pytest.mark.parametrize("token", [None, "wrong-token", TOKEN], ids=["none", "wrong", "right"])
def test_every_route_and_method_by_token(locked_site: Harness, token: str | None) -> None:
    """The walk: only GET/HEAD of /, /healthz and /readyz go without the token."""
    seen = []
    for path in _every_route():
        for method in ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"):
            body = b'{"model": "m"}' if method in ("POST", "PUT", "PATCH") else None
            reply = locked_site.request(method, path, body, token=token)
            allowed = token == TOKEN or (method, path) in _OPEN
            seen.append((method, path, reply.status))
            assert (reply.status != 401) == allowed, (method, path, token, reply)
    assert len(seen) >= 7 * 20
