"""Helpers for the proxy, monitor and client tests (no tests here).

``running`` starts the Ollama simulator and a Daemon in front of it and stops
both afterwards; ``Http`` is a treq client on its own non-persistent pool (so
no connection outlives a test); ``EchoUpstream`` is a tiny target of our own
for what the simulator does not do (repeated headers, echoing headers back,
huge fast streams, a body cut short); ``RawStream`` is a raw TCP client that
can stop reading or vanish at a chosen moment.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, cast

import treq
from treq.client import HTTPClient
from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from foreman.app.config import Config, check_data_dir
from foreman.app.daemon import Daemon
from foreman.store.database import open_sync
from foreman.testing import OllamaSimulator

reactor: Any = _reactor

__all__ = [
    "EchoUpstream",
    "Http",
    "RawStream",
    "post_bytes",
    "raw_request",
    "running",
    "wait_until",
]


async def wait_until(predicate: Any, timeout: float = 5.0, step: float = 0.02) -> None:
    """Poll ``predicate`` while the reactor runs; fail after ``timeout`` seconds."""
    from twisted.internet.task import deferLater

    deadline = reactor.seconds() + timeout
    while not predicate():
        if reactor.seconds() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await deferLater(reactor, step, lambda: None)


@asynccontextmanager
async def running(
    tmp_path: Path,
    sim: OllamaSimulator | None = None,
    target_url: str | None = None,
    **config: Any,
) -> AsyncIterator[tuple[Daemon, OllamaSimulator | None]]:
    """A listening simulator (unless ``target_url`` is given) and a Daemon in front."""
    if sim is None and target_url is None:
        sim = OllamaSimulator(token_rate=200.0, load_time=0.01)
    if sim is not None and sim.port is None:
        await sim.listen("tcp:0:interface=127.0.0.1")
    url = target_url or (sim.url if sim is not None else "")
    cfg = Config(
        listen="tcp:0:interface=127.0.0.1", target_url=url, data_dir=tmp_path / "data", **config
    )
    check_data_dir(cfg)  # what twistd's option parsing does before the reactor runs
    open_sync(cfg.db_path).close()
    try:
        daemon = await Daemon.start(cfg, reactor)
    except BaseException:
        if sim is not None:
            await sim.close()
        raise
    try:
        yield daemon, sim
    finally:
        await daemon.stop()
        if sim is not None:
            await sim.close()


class Http:
    """A treq client whose connections all close when the response is done."""

    def __init__(self) -> None:
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self.client = HTTPClient(Agent(reactor, pool=self.pool))

    async def request(
        self,
        method: str,
        url: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[Any, bytes]:
        data: bytes | None
        if body is None:
            data = None
        elif isinstance(body, bytes):
            data = body
        else:
            data = json.dumps(body).encode()
        response = await self.client.request(method, url, data=data, headers=cast(Any, headers))
        content = await treq.content(response)
        return response, content

    async def close(self) -> None:
        await self.pool.closeCachedConnections()


# -- a target of our own -------------------------------------------------------------


class _Echo(Resource):
    """Answers with what it received, plus repeated and hop-by-hop response headers."""

    isLeaf = True

    def render(self, request: Any) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        request.responseHeaders.setRawHeaders(b"set-cookie", [b"a=1", b"b=2"])
        request.responseHeaders.setRawHeaders(b"x-multi", [b"one", b"two"])
        request.responseHeaders.setRawHeaders(b"keep-alive", [b"timeout=5"])
        body = request.content.read()
        headers = {
            name.decode().lower(): [v.decode() for v in values]
            for name, values in request.requestHeaders.getAllRawHeaders()
        }
        return json.dumps(
            {
                "method": request.method.decode(),
                "uri": request.uri.decode(),
                "headers": headers,
                "body_length": len(body),
                "body_sha": hashlib.sha256(body).hexdigest(),
            }
        ).encode()


class _Flood:
    """Pushes ``total`` bytes as fast as the consumer takes them (a push producer)."""

    def __init__(self, request: Any, total: int, chunk: int) -> None:
        self.request = request
        self.left = total
        self.block = b"x" * chunk
        self.paused = False
        self.stopped = False
        self.pauses = 0

    def pauseProducing(self) -> None:
        self.paused = True
        self.pauses += 1

    def resumeProducing(self) -> None:
        self.paused = False
        while not self.paused and not self.stopped and self.left > 0:
            n = min(self.left, len(self.block))
            self.left -= n
            self.request.write(self.block if n == len(self.block) else self.block[:n])
        if self.left == 0 and not self.stopped:
            self.stopped = True
            self.request.unregisterProducer()
            self.request.finish()

    def stopProducing(self) -> None:
        self.stopped = True


class _Big(Resource):
    isLeaf = True

    def __init__(self, owner: EchoUpstream) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.owner = owner

    def render(self, request: Any) -> int:
        total = int(request.args.get(b"bytes", [b"1048576"])[0])
        request.setHeader(b"content-type", b"application/octet-stream")
        request.setHeader(b"content-length", b"%d" % total)
        flood = _Flood(request, total, 256 * 1024)
        self.owner.floods.append(flood)
        request.registerProducer(flood, True)
        reactor.callLater(0, flood.resumeProducing)
        return NOT_DONE_YET


class _Cut(Resource):
    """Starts a chunked NDJSON stream, then drops the connection mid-way."""

    isLeaf = True

    def render(self, request: Any) -> int:
        request.setHeader(b"content-type", b"application/x-ndjson")
        request.write(b'{"n": 1}\n')
        request.write(b'{"n": 2}\n')
        reactor.callLater(0.05, request.channel.transport.abortConnection)
        return NOT_DONE_YET


class EchoUpstream:
    """A twisted.web target: ``/echo…``, ``/big?bytes=N``, ``/cut``."""

    def __init__(self) -> None:
        root = Resource()
        root.putChild(b"big", _Big(self))
        root.putChild(b"cut", _Cut())  # type: ignore[no-untyped-call]
        echo = _Echo()  # type: ignore[no-untyped-call]
        root.putChild(b"echo", echo)
        root.putChild(b"api", echo)
        root.putChild(b"v1", echo)
        self.floods: list[_Flood] = []
        self.site = Site(root)
        self.port: IListeningPort | None = None

    async def listen(self) -> str:
        endpoint = TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
        self.port = await endpoint.listen(self.site)
        return self.url

    @property
    def url(self) -> str:
        assert self.port is not None
        return f"http://127.0.0.1:{self.port.getHost().port}"  # type: ignore[attr-defined]

    async def close(self) -> None:
        for flood in self.floods:
            flood.stopProducing()
        if self.port is not None:
            stopping = self.port.stopListening()
            if stopping is not None:
                await stopping


# -- raw client ----------------------------------------------------------------------


class RawStream(Protocol):
    """Sends one request and collects the raw response bytes; can abort at any time."""

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.data = b""
        self.closed: Deferred[None] = Deferred()
        self.reason: Failure | None = None
        self._waiters: list[tuple[bytes, Deferred[None]]] = []

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.setTcpNoDelay(True)  # type: ignore[attr-defined]
        self.transport.write(self.request)

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        for marker, d in list(self._waiters):
            if marker in self.data:
                self._waiters.remove((marker, d))
                d.callback(None)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        for _, d in self._waiters:
            d.errback(reason)
        self._waiters = []
        self.reason = reason
        self.closed.callback(None)

    def seen(self, marker: bytes) -> Deferred[None]:
        """Fires once ``marker`` has appeared in the response bytes."""
        d: Deferred[None] = Deferred()
        if marker in self.data:
            d.callback(None)
        else:
            self._waiters.append((marker, d))
        return d

    def abort(self) -> None:
        assert self.transport is not None
        self.transport.abortConnection()  # type: ignore[attr-defined]

    @classmethod
    async def open(cls, url: str, request: bytes) -> RawStream:
        rest = url.split("://", 1)[1]
        host, _, port = rest.partition(":")
        proto = cls(request)
        await connectProtocol(TCP4ClientEndpoint(reactor, host, int(port)), proto)
        return proto


async def raw_request(
    url: str,
    method: str,
    path: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    raw: bytes | None = None,
) -> tuple[int, dict[bytes, bytes], bytes]:
    """One request on a fresh blocking socket (in a thread): exact bytes, exact headers.

    ``raw`` sends those bytes instead of building the request.
    """
    from twisted.internet.threads import deferToThread

    from bench._util import RawClient

    def run() -> tuple[int, dict[bytes, bytes], bytes]:
        client = RawClient(url, timeout=10)
        try:
            if raw is not None:
                client.sock.sendall(raw)
            else:
                client.send(method, path, body, headers)
            status, head = client.head()
            if method == "HEAD" and raw is None:
                return status, head, b""
            if b"content-length" in head:
                return status, head, client.read_exactly(int(head[b"content-length"]))
            return status, head, b"".join(client.chunks())
        finally:
            client.close()

    result: tuple[int, dict[bytes, bytes], bytes] = await deferToThread(run)
    return result


def post_bytes(path: str, body: Any, headers: dict[str, str] | None = None) -> bytes:
    """A complete HTTP/1.1 POST request (JSON body), closing the connection after."""
    data = json.dumps(body).encode()
    lines = [
        f"POST {path} HTTP/1.1",
        "Host: foreman",
        "Content-Type: application/json",
        f"Content-Length: {len(data)}",
        "Connection: close",
    ]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + data
