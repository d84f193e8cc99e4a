"""Malformed and oversized HTTP against a real ``twistd -n foreman --simulate``.

Raw sockets send what no well-behaved client would: garbage request lines,
huge and countless headers, lying or contradictory framing, bodies over
``FOREMAN_MAX_BODY`` (declared and chunked), JSON nested deeper than the
parser can go. Every case must get a 4xx or a closed connection (never a
5xx, never a traceback in the log), and afterwards the daemon must still be
running and answer ``/healthz`` on a new connection.

The daemon runs as a subprocess so that a crash is a real process exit, and
these tests are plain blocking socket code (no reactor in the test).
"""

from __future__ import annotations

import contextlib
import socket
import struct
import time
from collections.abc import Iterator

import pytest
from attrs import define, frozen

from tests.proc import DaemonProcess, spawn, wait_ready

MAX_BODY = 64 * 1024
CLOSED = None  # the daemon closed the connection without answering


@frozen
class Reply:
    data: bytes
    timed_out: bool

    @property
    def status(self) -> int | None:
        if not self.data.startswith(b"HTTP/1."):
            return None
        return int(self.data.split(b" ", 2)[1])

    def statuses(self) -> list[int]:
        """Every response status in the bytes read (pipelining)."""
        found = []
        for part in self.data.split(b"HTTP/1.1 ")[1:]:
            head = part[:3]
            if head.isdigit():
                found.append(int(head))
        return found


@define
class Daemon:
    proc: DaemonProcess
    address: tuple[str, int]
    log_start: int = 0

    def connect(self, timeout: float = 10.0) -> socket.socket:
        return socket.create_connection(self.address, timeout=timeout)

    def exchange(self, raw: bytes, timeout: float = 10.0) -> Reply:
        """Send ``raw``, read until the daemon closes (or ``timeout`` of silence)."""
        with self.connect(timeout) as sock:
            # closed on us mid-send: what it answered is still readable
            with contextlib.suppress(OSError):
                sock.sendall(raw)
            return _read_all(sock)

    def healthy(self) -> bool:
        reply = self.exchange(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        return reply.status == 200 and b'"status":"ok"' in reply.data

    def mark(self) -> None:
        self.log_start = len(self.proc.log())

    def assert_survived(self) -> None:
        """Running, healthy, and nothing went wrong in the log since ``mark()``."""
        assert self.proc.popen.poll() is None, self.proc.log()[self.log_start :]
        assert self.healthy()  # a round trip: whatever the case logged is written by now
        logged = self.proc.log()[self.log_start :]
        assert "Traceback" not in logged and "Unhandled" not in logged, logged


def _read_all(sock: socket.socket) -> Reply:
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            return Reply(data, True)
        except OSError:  # reset
            return Reply(data, False)
        if not chunk:
            return Reply(data, False)
        data += chunk


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    data = tmp_path_factory.mktemp("malformed") / "data"
    proc = spawn(data, env={"FOREMAN_MAX_BODY": str(MAX_BODY)}, args=("--simulate",))
    try:
        url = wait_ready(proc)
        host, port = url.removeprefix("http://").rsplit(":", 1)
        yield Daemon(proc, (host, int(port)))
        assert proc.stop() == 0, proc.log()
    finally:
        proc.kill()


@pytest.fixture
def survives(daemon: Daemon) -> Iterator[Daemon]:
    """After the test: still running and healthy (the test body checks the log)."""
    daemon.mark()
    yield daemon
    assert daemon.proc.popen.poll() is None, daemon.proc.log()
    assert daemon.healthy()


def _post(path: str, body: bytes, *headers: str) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: x", "Connection: close", *headers]
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def _chunked(path: str, total: int, chunk: int = 8192) -> bytes:
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
    head += "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    body = b"".join(b"%x\r\n%s\r\n" % (chunk, b"x" * chunk) for _ in range(total // chunk + 1))
    return head.encode() + body + b"0\r\n\r\n"


def _get(target: bytes, *headers: bytes) -> bytes:
    lines = [b"GET " + target + b" HTTP/1.1", b"Host: x", b"Connection: close", *headers]
    return b"\r\n".join(lines) + b"\r\n\r\n"


_RESET_ON_CLOSE = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST
OVER = b"x" * (MAX_BODY + 1)
_DEEP = b"[" * 20_000 + b"]" * 20_000  # valid JSON, well under MAX_BODY

# (raw request, statuses allowed; CLOSED = connection closed without a response)
CASES = [
    pytest.param(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", {400, CLOSED}, id="tls"),
    pytest.param(b"GARBAGE\r\n\r\n", {400, CLOSED}, id="garbage-line"),
    pytest.param(b"\x00\xff\xfe\r\n\r\n", {400, CLOSED}, id="binary-line"),
    pytest.param(b"GET /healthz HTTP/9.9\r\nHost: x\r\n\r\n", {400, 505, CLOSED}, id="http-9.9"),
    pytest.param(b"G\x01T /api/tags HTTP/1.1\r\nHost: x\r\n\r\n", {400, CLOSED}, id="ctl-method"),
    pytest.param(_get(b"/" + b"a" * 100_000), {400, 414, CLOSED}, id="uri-100k"),
    pytest.param(
        _get(b"/healthz", b"X-Big: " + b"a" * 70_000), {400, 431, CLOSED}, id="header-70k"
    ),
    pytest.param(
        _get(b"/healthz", *(b"X-H%d: v" % i for i in range(10_000))),
        {400, 431, CLOSED},
        id="10000-headers",
    ),
    pytest.param(_get(b"/healthz", b"NoColonHere"), {400, CLOSED}, id="header-no-colon"),
    pytest.param(_get(b"/healthz", b"X-A: a\x00b"), {400, CLOSED}, id="header-nul"),
    pytest.param(b"\r\n" * 1000 + _get(b"/healthz"), {400, CLOSED}, id="1000-empty-lines"),
    pytest.param(_get(b"/jobs/\xff\xfe"), {400, 404}, id="non-utf8-path"),
    pytest.param(_get(b"/jobs/../../etc/passwd"), {400, 404}, id="traversal"),
    pytest.param(_get(b"http://example.com/api/tags"), {400}, id="absolute-form"),
    pytest.param(
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\nConnection: close\r\n\r\n",
        {400, 405},
        id="connect",
    ),
    pytest.param(
        b"POST /jobs HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n{}",
        {400, CLOSED},
        id="content-length-abc",
    ),
    pytest.param(
        b"POST /jobs HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n{}",
        {400, CLOSED},
        id="content-length-negative",
    ),
    pytest.param(
        b"POST /jobs HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}x",
        {400, CLOSED},
        id="content-length-twice",
    ),
    pytest.param(
        b"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
        {400, CLOSED},
        id="content-length-and-chunked",
    ),
    pytest.param(
        b"POST /jobs HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"zz\r\n{}\r\n0\r\n\r\n",
        {400, CLOSED},
        id="bad-chunk-size",
    ),
    pytest.param(_post("/jobs", OVER), {413}, id="over-limit-jobs"),
    pytest.param(_post("/api/chat", OVER), {413}, id="over-limit-chat"),
    pytest.param(_post("/v1/chat/completions", OVER), {413}, id="over-limit-v1"),
    pytest.param(_post("/api/blobs/sha256:00", OVER), {413}, id="over-limit-relayed"),
    pytest.param(_chunked("/jobs", MAX_BODY + 1), {413}, id="over-limit-chunked-jobs"),
    pytest.param(_chunked("/api/chat", MAX_BODY + 1), {413}, id="over-limit-chunked-chat"),
    pytest.param(_chunked("/api/chat", 16 * MAX_BODY), {413}, id="16x-limit-chunked"),
    pytest.param(
        _post("/jobs", b'{"request": {"model": "x"}, "priority": ' + b"9" * 5000 + b"}"),
        {400},
        id="5000-digit-int",
    ),
    pytest.param(_post("/jobs", b'{"request": {"model": "\xff\xfe"}}'), {400}, id="invalid-utf8"),
    pytest.param(
        _post("/api/chat", b'{"model": "x"}', "X-Foreman-Priority: 1e999"), {400}, id="bad-priority"
    ),
    pytest.param(_get(b"/jobs?limit=99999999999999999999999"), {400}, id="huge-limit"),
    pytest.param(_get(b"/jobs/job_01M8AHEYXY2N9C5G4RYK7XNPRW?wait=nan"), {400, 404}, id="wait-nan"),
    pytest.param(_post("/jobs", _DEEP), {400}, id="deep-json-jobs"),
    pytest.param(_post("/api/chat", _DEEP), {400}, id="deep-json-chat"),
    pytest.param(_post("/v1/chat/completions", _DEEP), {400}, id="deep-json-v1"),
]


@pytest.mark.parametrize(("raw", "allowed"), CASES)
def test_malformed_request_gets_4xx_or_close(
    survives: Daemon, raw: bytes, allowed: set[int | None]
) -> None:
    reply = survives.exchange(raw)
    assert not reply.timed_out, reply.data[:300]
    assert reply.status in allowed, reply.data[:300]
    survives.assert_survived()


def test_expect_100_continue_over_the_limit(survives: Daemon) -> None:
    """Refused at once with 413, or told to continue and refused after the body."""
    head = (
        "POST /jobs HTTP/1.1\r\nHost: x\r\nConnection: close\r\nExpect: 100-continue\r\n"
        f"Content-Length: {len(OVER)}\r\n\r\n"
    ).encode()
    with survives.connect() as sock:
        sock.sendall(head)
        first = sock.recv(65536)
        if first.startswith(b"HTTP/1.1 100"):
            sock.sendall(OVER)
            first = first.split(b"\r\n\r\n", 1)[1] + _read_all(sock).data
        reply = Reply(first + _read_all(sock).data, False)
    assert reply.status == 413, reply.data[:300]
    survives.assert_survived()


def test_pipelined_requests_are_all_answered(survives: Daemon) -> None:
    one = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    reply = survives.exchange(one * 200 + _get(b"/healthz"))
    assert reply.statuses() == [200] * 201
    survives.assert_survived()


def test_clients_that_vanish_mid_request(survives: Daemon) -> None:
    """Half a request line, half the headers, half a body, then gone: nothing breaks."""
    partials = [
        b"GET /heal",
        b"POST /jobs HTTP/1.1\r\nHost: x\r\nContent-Le",
        b'POST /jobs HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{"request":',
        b'POST /api/chat HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n{"mo',
        b"POST /jobs HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000000\r\n\r\n" + b"x" * 4096,
    ]
    for raw in partials:
        with survives.connect() as sock:
            sock.sendall(raw)
        with survives.connect() as sock:  # and once more with a reset instead of a FIN
            sock.sendall(raw)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET_ON_CLOSE)
    survives.assert_survived()


def test_many_idle_connections_do_not_block_others(survives: Daemon) -> None:
    idle: list[socket.socket] = []
    try:
        for i in range(200):
            sock = survives.connect()
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n" if i % 2 else b"")
            idle.append(sock)
        started = time.monotonic()
        assert survives.healthy()
        assert time.monotonic() - started < 5.0
    finally:
        for sock in idle:
            sock.close()
    survives.assert_survived()


def test_bare_lf_request_does_not_wedge_the_daemon(survives: Daemon) -> None:
    """LF-only line ends: answered or left waiting, but other clients are served."""
    with survives.connect(timeout=2.0) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\nHost: x\nConnection: close\n\n")
        reply = _read_all(sock)
        assert reply.timed_out or reply.status in (200, 400, CLOSED), reply.data[:300]
        survives.assert_survived()
