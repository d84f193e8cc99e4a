"""The lean target client (``foreman.target.wire``) against real loopback servers.

Two kinds of server: ``twisted.web``'s ``Site`` (a real HTTP/1.1 server), and
``ScriptServer``, a raw protocol that answers each request with the next
script of byte pieces, pauses, closes and resets, so framing split across
writes, stale keep-alive connections and broken answers can be produced on
purpose. Every test goes through ``Upstream.relay`` as the proxy does, and
closes everything it opened (the leak guard checks).
"""

from __future__ import annotations

import datetime
import io
import socket
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, cast

import pytest
import pytest_twisted
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import (
    SSL4ServerEndpoint,
    TCP4ClientEndpoint,
    TCP4ServerEndpoint,
    wrapClientTLS,
)
from twisted.internet.error import ConnectError, ConnectionRefusedError
from twisted.internet.interfaces import IOpenSSLContextFactory
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.web.client import (
    FileBodyProducer,
    ResponseDone,
    ResponseFailed,
    ResponseNeverReceived,
)
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import UNKNOWN_LENGTH, IResponse
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from zope.interface import implementer

from foreman.target.exchange import WireError
from foreman.target.upstream import Upstream, build_upstream
from foreman.target.wirehead import MAX_LINE
from foreman.target.wirepool import WirePool
from tests.harness import reactor

# -- servers ------------------------------------------------------------------------

Step = bytes | float | str  # bytes to write, seconds to wait, "close", "reset" or "hang"


class _Scripted(Protocol):
    def __init__(self, server: ScriptServer) -> None:
        self.server = server
        self.buf = b""

    def connectionMade(self) -> None:
        self.server.accepted += 1
        self.server.open.append(self)
        cast(Any, self.transport).setTcpNoDelay(True)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.server.open.remove(self)
        self.server.closed += 1

    def dataReceived(self, data: bytes) -> None:
        self.buf += data
        while b"\r\n\r\n" in self.buf:
            head, _, rest = self.buf.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if len(rest) < length:
                return
            self.buf = rest[length:]
            self.server.requests.append((head, rest[:length]))
            script = self.server.scripts.popleft() if self.server.scripts else [b"hang"]
            self.play(list(script))

    def play(self, steps: list[Step]) -> None:
        transport: Any = self.transport
        while steps:
            step = steps.pop(0)
            if isinstance(step, float):
                self.server.timers.append(reactor.callLater(step, self.play, steps))
                return
            if isinstance(step, bytes):
                if step != b"hang":
                    transport.write(step)
            elif step == "close":
                transport.loseConnection()
            elif step == "reset":
                transport.abortConnection()
            elif step == "hang":
                return


class ScriptServer:
    """A raw server: each request it reads gets the next script."""

    def __init__(self) -> None:
        self.scripts: deque[list[Step]] = deque()
        self.requests: list[tuple[bytes, bytes]] = []
        self.open: list[_Scripted] = []
        self.timers: list[Any] = []
        self.accepted = 0
        self.closed = 0

    def answer(self, *steps: Step) -> None:
        self.scripts.append(list(steps))


class _Echo(Resource):
    """``twisted.web``: GET /n/<size> a body of that size, POST echoes, /stream chunks."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.timers: list[Any] = []
        self.gone = 0  # streams whose client left

    def render_GET(self, request: Request) -> bytes | int:
        request.setHeader(b"x-seen", request.getHeader(b"x-test") or b"-")
        request.responseHeaders.addRawHeader(b"set-cookie", b"a=1")
        request.responseHeaders.addRawHeader(b"set-cookie", b"b=2")
        if request.path == b"/stream":
            return self._stream(request)
        size = int(request.path.rsplit(b"/", 1)[-1] or b"5")
        return b"x" * size

    def render_POST(self, request: Request) -> bytes:
        content: Any = request.content
        content.seek(0)
        data = content.read()
        return b"got %d:%s" % (len(data), data[:20])

    def _stream(self, request: Request) -> int:
        """Chunks forever, 10 ms apart, until the client leaves."""

        def left(_: object) -> None:
            self.gone += 1

        request.notifyFinish().addErrback(left)

        def more() -> None:
            if request.finished or request.channel is None:
                return
            request.write(b"tick\n")
            self.timers.append(reactor.callLater(0.01, more))

        more()
        return NOT_DONE_YET


class Body(Protocol):
    """Collects a response body; ``done`` fires with the reason it ended."""

    def __init__(self, pause: bool = False) -> None:
        self.chunks: list[bytes] = []
        self.done: Deferred[None] = Deferred()
        self.ended: Failure | None = None
        self.pause = pause

    def connectionMade(self) -> None:
        if self.pause:
            cast(Any, self.transport).pauseProducing()

    def dataReceived(self, data: bytes) -> None:
        self.chunks.append(data)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.ended = reason
        self.done.callback(None)

    @property
    def reason(self) -> Failure:
        assert self.ended is not None, "the body has not ended"
        return self.ended

    @property
    def data(self) -> bytes:
        return b"".join(self.chunks)


@asynccontextmanager
async def scripted(prefix: str = "") -> AsyncIterator[tuple[ScriptServer, Upstream]]:
    server = ScriptServer()
    factory = Factory.forProtocol(lambda: _Scripted(server))
    port: Any = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
    upstream = build_upstream(reactor, f"http://127.0.0.1:{port.getHost().port}{prefix}")
    try:
        yield server, upstream
    finally:
        await upstream.close()
        for timer in server.timers:
            if timer.active():
                timer.cancel()
        for conn in list(server.open):
            cast(Any, conn.transport).abortConnection()
        await port.stopListening()
        await until(lambda: not server.open)


@asynccontextmanager
async def site() -> AsyncIterator[tuple[_Echo, Upstream, Any]]:
    resource = _Echo()
    factory = Site(resource)
    port: Any = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
    upstream = build_upstream(reactor, f"http://127.0.0.1:{port.getHost().port}")
    try:
        yield resource, upstream, factory
    finally:
        await upstream.close()
        for timer in resource.timers:
            if timer.active():
                timer.cancel()
        await port.stopListening()


async def until(predicate: Any, timeout: float = 5.0) -> None:
    deadline = reactor.seconds() + timeout
    while not predicate():
        assert reactor.seconds() < deadline, "condition not met in time"
        await deferLater(reactor, 0.01, lambda: None)


async def fetch(
    upstream: Upstream,
    method: bytes = b"GET",
    path: bytes = b"/",
    head: list[bytes] | None = None,
    body: Any = None,
) -> tuple[IResponse, Body]:
    response = await upstream.relay(method, path, head or [], body)
    collected = Body()
    response.deliverBody(collected)
    await collected.done
    return response, collected


OK_5 = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"


# -- a real server -------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_site_answers_keep_one_connection_and_their_headers() -> None:
    async with site() as (_, upstream, _factory):
        response, body = await fetch(upstream, path=b"/n/1000", head=[b"X-Test: yes\r\n"])
        assert response.code == 200
        assert response.phrase == b"OK"
        assert response.length == 1000
        assert body.data == b"x" * 1000
        assert body.reason.check(ResponseDone)
        headers = response.headers
        assert headers.getRawHeaders(b"x-seen") == [b"yes"]
        assert headers.getRawHeaders(b"set-cookie") == [b"a=1", b"b=2"]  # repeats kept
        assert not headers.hasHeader(b"content-length")  # a connection header, as with Agent
        for _ in range(5):
            response, body = await fetch(upstream, b"POST", b"/", body=b"abc")
            assert body.data == b"got 3:abc"
        assert upstream.wire.connects == 1
        assert upstream.wire.idle_count == 1


@pytest_twisted.ensureDeferred
async def test_chunked_stream_arrives_piece_by_piece_and_stop_aborts_it() -> None:
    async with site() as (resource, upstream, _f):
        response = await upstream.relay(b"GET", b"/stream", [], None)
        assert response.length is UNKNOWN_LENGTH

        class Stopper(Body):
            def dataReceived(self, data: bytes) -> None:
                super().dataReceived(data)
                if len(self.chunks) == 3:
                    cast(Any, self.transport).stopProducing()

        body = Stopper()
        response.deliverBody(body)
        await body.done
        reason = body.reason
        assert reason.check(ResponseFailed)
        assert body.chunks == [b"tick\n"] * 3  # each write of the server, as it came
        assert upstream.wire.idle_count == 0
        await until(lambda: resource.gone == 1, 1.0)  # the server sees it go at once


@pytest_twisted.ensureDeferred
async def test_head_has_no_body_but_keeps_the_length_header() -> None:
    async with site() as (_, upstream, _f):
        response, body = await fetch(upstream, b"HEAD", b"/n/42")
        assert response.length == 0
        assert body.data == b""
        assert response.headers.getRawHeaders(b"content-length") == [b"42"]
        _, again = await fetch(upstream, b"GET", b"/n/3")
        assert again.data == b"xxx"
        assert upstream.wire.connects == 1


@pytest_twisted.ensureDeferred
async def test_a_large_upload_streams_from_a_producer() -> None:
    async with site() as (_, upstream, _f):
        data = bytes(range(256)) * 4096  # 1 MiB
        producer = FileBodyProducer(io.BytesIO(data), readSize=65536)
        response, body = await fetch(upstream, b"POST", b"/", body=producer)
        assert body.data == b"got %d:%s" % (len(data), data[:20])
        assert response.code == 200
        _, again = await fetch(upstream, b"POST", b"/", body=b"x")
        assert again.data == b"got 1:x"
        assert upstream.wire.connects == 1


# -- scripted answers: framing -----------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_head_split_at_awkward_places_and_chunks_with_extensions_and_trailers() -> None:
    async with scripted() as (server, upstream):
        server.answer(
            b"HTT", 0.01, b"P/1.1 2", 0.01, b"00 Fine\r", 0.01, b"\nX-A: 1\r\nTransfer-Enc",
            0.01, b"oding: chunked\r\n\r", 0.01, b"\n5;name=value\r\nhello\r\n", 0.01,
            b"1", 0.01, b"0\r\n0123456789abcdef\r\n", 0.01, b"0\r\nX-Trailer: t\r\n", 0.01,
            b"\r\n",
        )  # fmt: skip
        response, body = await fetch(upstream)
        assert (response.code, response.phrase) == (200, b"Fine")
        assert response.headers.getRawHeaders(b"x-a") == [b"1"]
        assert body.data == b"hello0123456789abcdef"
        assert body.reason.check(ResponseDone)
        assert upstream.wire.idle_count == 1


@pytest_twisted.ensureDeferred
async def test_each_write_of_the_server_reaches_the_body_protocol_as_it_comes() -> None:
    async with scripted() as (server, upstream):
        server.answer(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            0.02, b"3\r\nabc\r\n", 0.02, b"3\r\ndef\r\n", 0.02, b"0\r\n\r\n",
        )  # fmt: skip
        response = await upstream.relay(b"GET", b"/", [], None)
        body = Body()
        response.deliverBody(body)
        await body.done
        assert body.chunks == [b"abc", b"def"]


@pytest_twisted.ensureDeferred
async def test_close_delimited_body_ends_with_potential_data_loss() -> None:
    async with scripted() as (server, upstream):
        server.answer(b"HTTP/1.1 200 OK\r\n\r\nhel", 0.01, b"lo", "close")
        response, body = await fetch(upstream)
        assert response.length is UNKNOWN_LENGTH
        assert body.data == b"hello"
        assert body.reason.check(PotentialDataLoss)
        assert upstream.wire.idle_count == 0


@pytest_twisted.ensureDeferred
async def test_interim_answers_are_skipped_and_no_body_codes_have_none() -> None:
    async with scripted() as (server, upstream):
        server.answer(b"HTTP/1.1 100 Continue\r\n\r\n", 0.01, OK_5)
        server.answer(b"HTTP/1.1 204 No Content\r\nContent-Length: 7\r\n\r\n")
        server.answer(b"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n")
        server.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        response, body = await fetch(upstream)
        assert (response.code, body.data) == (200, b"hello")
        for code in (204, 304, 200):
            response, body = await fetch(upstream)
            assert (response.code, response.length, body.data) == (code, 0, b"")
            assert body.reason.check(ResponseDone)
        assert server.accepted == 1


# -- keep-alive -----------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_consecutive_requests_share_one_connection_handed_back_before_the_end() -> None:
    async with scripted() as (server, upstream):
        for _ in range(4):
            server.answer(OK_5)
        seen: list[int] = []

        class Watch(Body):
            def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
                seen.append(upstream.wire.idle_count)  # already back in the pool
                super().connectionLost(reason)

        for _ in range(4):
            response = await upstream.relay(b"GET", b"/", [], None)
            body = Watch()
            response.deliverBody(body)
            await body.done
            assert body.data == b"hello"
        assert seen == [1, 1, 1, 1]
        assert server.accepted == 1


@pytest_twisted.ensureDeferred
async def test_a_prepared_request_is_the_bytes_relay_sends_on_the_same_connection() -> None:
    """``prepare`` + ``send`` (a staged job, ADR 0024) put the same bytes on the wire as
    ``relay``, under the target URL's path prefix, and reuse the kept connection."""
    async with scripted("/ollama/") as (server, upstream):
        server.answer(OK_5)
        server.answer(OK_5)
        head = [b"Content-Type: application/json\r\n", b"Authorization: Bearer t\r\n"]
        body = b'{"model": "m", "stream": true}'
        response = await upstream.relay(b"POST", b"/api/chat", head, body)
        got = Body()
        response.deliverBody(got)
        await got.done
        prepared = upstream.prepare(b"POST", b"/api/chat", head, body)
        assert prepared.method == b"POST"
        response = await upstream.send(prepared)
        again = Body()
        response.deliverBody(again)
        await again.done
        assert got.data == again.data == b"hello"
        assert server.requests[0] == server.requests[1]
        first_line = server.requests[1][0].split(b"\r\n")[0]
        assert first_line == b"POST /ollama/api/chat HTTP/1.1"
        assert server.requests[1][1] == body
        assert server.accepted == 1


@pytest_twisted.ensureDeferred
async def test_connection_close_and_http10_are_not_reused() -> None:
    async with scripted() as (server, upstream):
        server.answer(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok")
        server.answer(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")
        server.answer(b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 2\r\n\r\nok")
        server.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        for _ in range(4):
            _, body = await fetch(upstream)
            assert body.data == b"ok"
        assert server.accepted == 3  # the HTTP/1.0 keep-alive one carried the last request
        assert upstream.wire.idle_count == 1


@pytest_twisted.ensureDeferred
async def test_a_connection_closed_while_idle_never_carries_the_next_request() -> None:
    async with scripted() as (server, upstream):
        server.answer(OK_5)
        server.answer(OK_5)
        await fetch(upstream)
        assert upstream.wire.idle_count == 1
        # the target closes the idle connection; the reactor has not seen it yet
        cast(Any, server.open[0].transport).getHandle().shutdown(socket.SHUT_RDWR)
        time.sleep(0.05)  # noqa: ASYNC251 - the kernel delivers the FIN, the reactor must not run
        _, body = await fetch(upstream, b"POST", b"/api/chat", body=b"{}")
        assert body.data == b"hello"
        assert server.accepted == 2
        assert [r[1] for r in server.requests] == [b"", b"{}"]  # sent once, on the new one


@pytest_twisted.ensureDeferred
async def test_a_kept_connection_dropped_as_the_request_went_out_is_retried_if_idempotent() -> None:
    async with scripted() as (server, upstream):
        server.answer(OK_5)
        server.answer("close")  # the request crossed the server's idle close
        server.answer(OK_5)
        await fetch(upstream)
        _, body = await fetch(upstream, b"GET", b"/api/tags")
        assert body.data == b"hello"
        assert server.accepted == 2
        # a POST that reached the target may have started work: it is not sent again
        server.answer("close")
        with pytest.raises(ResponseNeverReceived):
            await upstream.relay(b"POST", b"/api/chat", [], b"{}")
        assert server.accepted == 2
        assert [r[1] for r in server.requests] == [b"", b"", b"", b"{}"]


@pytest_twisted.ensureDeferred
async def test_retry_happens_once_and_never_for_a_new_connection() -> None:
    async with scripted() as (server, upstream):
        server.answer(OK_5)
        server.answer("close")
        server.answer("close")
        await fetch(upstream)
        with pytest.raises(ResponseNeverReceived):
            await upstream.relay(b"GET", b"/", [], None)
        assert server.accepted == 2
        server.answer("reset")
        with pytest.raises(ResponseNeverReceived):
            await upstream.relay(b"GET", b"/", [], None)  # a new connection: not retried
        assert server.accepted == 3
        assert len(server.requests) == 4


@pytest_twisted.ensureDeferred
async def test_a_streamed_body_is_never_sent_twice() -> None:
    async with scripted() as (server, upstream):
        server.answer(OK_5)
        server.answer("close")
        await fetch(upstream)
        producer = FileBodyProducer(io.BytesIO(b"p" * 1000))
        with pytest.raises(ResponseNeverReceived):
            await upstream.relay(b"PUT", b"/", [], producer)
        assert server.accepted == 1
        assert [len(r[1]) for r in server.requests] == [0, 1000]


@pytest_twisted.ensureDeferred
async def test_at_most_four_connections_wait_and_close_closes_them() -> None:
    async with scripted() as (server, upstream):
        for _ in range(6):
            server.answer(0.05, OK_5)
        pending = [upstream.relay(b"GET", b"/", [], None) for _ in range(6)]
        bodies = []
        for d in pending:
            response = await d
            body = Body()
            response.deliverBody(body)
            bodies.append(body.done)
        for done in bodies:
            await done
        assert server.accepted == 6
        assert upstream.wire.idle_count == 4
        await until(lambda: server.closed == 2)
        await upstream.close()
        assert upstream.wire.idle_count == 0
        await until(lambda: server.closed == 6)


# -- failures --------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_reset_mid_body_fails_the_body() -> None:
    async with scripted() as (server, upstream):
        server.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789", 0.02, "reset")
        server.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789", 0.02, "close")
        for _ in range(2):
            _, body = await fetch(upstream)
            assert body.data == b"0123456789"
            assert body.reason.check(ResponseFailed)
        assert upstream.wire.idle_count == 0


@pytest_twisted.ensureDeferred
async def test_pause_holds_the_reads_and_resume_lets_them_flow() -> None:
    size = 16 * 1024 * 1024
    async with scripted() as (server, upstream):
        server.answer(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size, b"z" * size)
        response = await upstream.relay(b"GET", b"/", [], None)
        body = Body(pause=True)
        response.deliverBody(body)
        await deferLater(reactor, 0.2, lambda: None)
        held = len(body.data)
        assert held < size  # the rest waits in the socket buffers and the server
        await deferLater(reactor, 0.1, lambda: None)
        assert len(body.data) == held  # paused: nothing more was read
        cast(Any, body.transport).resumeProducing()
        await body.done
        reason = body.reason
        assert reason.check(ResponseDone)
        assert len(body.data) == size


@pytest_twisted.ensureDeferred
async def test_cancel_before_the_head_aborts_the_request() -> None:
    async with scripted() as (server, upstream):
        server.answer(b"hang")
        d = upstream.relay(b"POST", b"/api/chat", [], b"{}")
        await until(lambda: len(server.requests) == 1)
        d.cancel()
        with pytest.raises(CancelledError):
            await d
        await until(lambda: server.closed == 1)
        assert upstream.wire.idle_count == 0


@pytest_twisted.ensureDeferred
async def test_an_oversized_or_broken_head_is_a_clear_failure() -> None:
    async with scripted() as (server, upstream):
        huge = b"X-Big: " + b"a" * (MAX_LINE + 10)
        server.answer(
            b"HTTP/1.1 200 OK\r\n", *[huge[i : i + 8192] for i in range(0, len(huge), 8192)]
        )
        server.answer(b"HTTP/1.1 200 OK\r\n" + b"X-Many: 1\r\n" * 101 + b"\r\n")
        server.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok")
        server.answer(b"SPDY/3 200 OK\r\n\r\n")
        server.answer(b"HTTP/1.1 200 OK\r\nNo colon here\r\n\r\n")
        messages = []
        for _ in range(5):
            with pytest.raises(ResponseFailed) as info:
                await upstream.relay(b"GET", b"/", [], None)
            assert info.value.reasons[0].check(WireError)
            messages.append(info.value.reasons[0].getErrorMessage())
        assert "longer than 65536 bytes" in messages[0]
        assert "more than 100 headers" in messages[1]
        assert "conflicting Content-Length" in messages[2]
        assert upstream.wire.idle_count == 0


@pytest_twisted.ensureDeferred
async def test_a_bad_chunk_fails_the_body() -> None:
    async with scripted() as (server, upstream):
        server.answer(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\nzz\r\n")
        _, body = await fetch(upstream)
        reason = body.reason
        assert reason.check(ResponseFailed)
        assert cast(ResponseFailed, reason.value).reasons[0].check(WireError)
        assert body.data == b"abc"


@pytest_twisted.ensureDeferred
async def test_a_refused_connection_is_a_connect_error() -> None:
    port: Any = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Factory())
    number = port.getHost().port
    await port.stopListening()
    upstream = build_upstream(reactor, f"http://127.0.0.1:{number}")
    try:
        with pytest.raises(ConnectionRefusedError) as info:
            await upstream.relay(b"GET", b"/", [], None)
        assert isinstance(info.value, ConnectError)
    finally:
        await upstream.close()


@pytest_twisted.ensureDeferred
async def test_a_body_read_later_is_kept_and_the_connection_already_back() -> None:
    async with scripted() as (server, upstream):
        server.answer(OK_5)
        server.answer(OK_5)
        response = await upstream.relay(b"GET", b"/", [], None)
        await deferLater(reactor, 0.05, lambda: None)
        assert upstream.wire.idle_count == 1  # the whole answer came in one read
        body = Body()
        response.deliverBody(body)
        assert body.data == b"hello"
        assert body.done.called
        with pytest.raises(RuntimeError):
            response.deliverBody(Body())
        _, again = await fetch(upstream)
        assert again.data == b"hello"
        assert server.accepted == 1


class _Early(Protocol):
    """Answers 413 on the first bytes of a request and reads (drops) the rest."""

    answered = False

    def dataReceived(self, data: bytes) -> None:
        if not self.answered:
            self.answered = True
            cast(Any, self.transport).write(
                b"HTTP/1.1 413 Too Large\r\nContent-Length: 3\r\n\r\nbig"
            )

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.factory.gone += 1  # type: ignore[attr-defined]


@pytest_twisted.ensureDeferred
async def test_an_early_answer_during_an_upload_stops_it_and_closes_the_connection() -> None:
    factory = Factory.forProtocol(_Early)
    factory.gone = 0  # type: ignore[attr-defined]
    port: Any = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
    upstream = build_upstream(reactor, f"http://127.0.0.1:{port.getHost().port}")
    try:
        producer = FileBodyProducer(io.BytesIO(b"u" * (32 * 1024 * 1024)), readSize=65536)
        response, body = await fetch(upstream, b"POST", b"/", body=producer)
        assert (response.code, body.data) == (413, b"big")
        assert body.reason.check(ResponseDone)
        assert upstream.wire.idle_count == 0
        await until(lambda: factory.gone == 1)  # type: ignore[attr-defined]
    finally:
        await upstream.close()
        await port.stopListening()


# -- TLS ---------------------------------------------------------------------------------


def _self_signed(name: str) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


@implementer(IOpenSSLContextFactory)
class _ServerTLS:
    def __init__(self, cert_pem: bytes, key_pem: bytes) -> None:
        from OpenSSL import SSL

        self._context = SSL.Context(SSL.TLS_SERVER_METHOD)
        self._context.use_certificate(x509.load_pem_x509_certificate(cert_pem))
        key: Any = serialization.load_pem_private_key(key_pem, password=None)
        self._context.use_privatekey(key)

    def getContext(self) -> Any:
        return self._context


@pytest_twisted.ensureDeferred
async def test_over_tls_keep_alive_backpressure_and_abort_work_the_same() -> None:
    cert_pem, key_pem = _self_signed("localhost")
    resource = _Echo()
    endpoint = SSL4ServerEndpoint(reactor, 0, _ServerTLS(cert_pem, key_pem), interface="127.0.0.1")
    port: Any = await endpoint.listen(Site(resource))
    tls = optionsForClientTLS("localhost", trustRoot=Certificate.loadPEM(cert_pem))
    client = wrapClientTLS(tls, TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port))
    pool = WirePool(reactor, client, b"Host: localhost\r\n")
    try:
        for size in (10, 300_000):
            d = pool.request(b"GET", b"/n/%d" % size, [], None)
            response = await d
            body = Body(pause=True)
            response.deliverBody(body)
            await deferLater(reactor, 0.05, lambda: None)
            cast(Any, body.transport).resumeProducing()
            await body.done
            assert body.reason.check(ResponseDone)
            assert body.data == b"x" * size
        response = await pool.request(b"POST", b"/", [], b"secret")
        echoed = Body()
        response.deliverBody(echoed)
        await echoed.done
        assert echoed.data == b"got 6:secret"
        assert pool.connects == 1
        response = await pool.request(b"GET", b"/stream", [], None)

        class Stopper(Body):
            def dataReceived(self, data: bytes) -> None:
                super().dataReceived(data)
                cast(Any, self.transport).stopProducing()

        stopped = Stopper()
        response.deliverBody(stopped)
        await stopped.done
        assert stopped.reason.check(ResponseFailed)
        await until(lambda: resource.gone == 1, 2.0)
    finally:
        await pool.close()
        for timer in resource.timers:
            if timer.active():
                timer.cancel()
        await port.stopListening()
