"""The HTTP client foreman uses to reach the target: one Agent, one persistent pool.

Connections to the target are HTTP/1.1 keep-alive (an Ollama round trip is
cheap; a new TCP connection per request is not) and have TCP_NODELAY (set by
``HTTP11ClientProtocol`` itself) so small writes do not wait for a delayed
ACK. Endpoints are built once per target rather than per request, and an IP
literal connects directly, without a resolver thread. Only connecting has a
timeout here: a generation may legitimately take minutes, so callers add a
header timeout where one makes sense (metadata).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from attrs import define
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    wrapClientTLS,
)
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.web._newclient import Request
from twisted.web.client import (
    URI,
    Agent,
    BrowserLikePolicyForHTTPS,
    HTTPConnectionPool,
    _HTTP11ClientFactory,
)
from twisted.web.iweb import IAgentEndpointFactory, IBodyProducer, IResponse
from zope.interface import implementer

__all__ = ["Upstream", "build_upstream"]


@implementer(IAgentEndpointFactory)
class _Endpoints:
    """Endpoint per (scheme, host, port), made once and reused."""

    def __init__(self, reactor: Any, connect_timeout: float) -> None:
        self._reactor = reactor
        self._timeout = connect_timeout
        self._cache: dict[tuple[bytes, bytes, int], IStreamClientEndpoint] = {}
        self._tls = BrowserLikePolicyForHTTPS()

    def endpointForURI(self, uri: URI) -> IStreamClientEndpoint:
        key = (uri.scheme, uri.host, uri.port)
        endpoint = self._cache.get(key)
        if endpoint is None:
            endpoint = self._make(uri)
            self._cache[key] = endpoint
        return endpoint

    def _make(self, uri: URI) -> IStreamClientEndpoint:
        host = uri.host.decode("ascii")
        endpoint: IStreamClientEndpoint
        if isIPAddress(host):
            endpoint = TCP4ClientEndpoint(self._reactor, host, uri.port, timeout=self._timeout)
        elif isIPv6Address(host):
            endpoint = TCP6ClientEndpoint(self._reactor, host, uri.port, timeout=self._timeout)
        else:
            endpoint = HostnameEndpoint(self._reactor, host, uri.port, timeout=self._timeout)
        if uri.scheme == b"https":
            endpoint = wrapClientTLS(self._tls.creatorForNetloc(uri.host, uri.port), endpoint)
        return endpoint


class _QuietFactory(_HTTP11ClientFactory):
    noisy = False  # no "Starting factory" log lines for every new upstream connection


class _Pool(HTTPConnectionPool):
    _factory = _QuietFactory


@define
class Upstream:
    """The target, and the pool of keep-alive connections that reach it.

    ``relay`` is the proxy's hot path: it takes a pooled connection and
    hands ``HTTP11ClientProtocol`` a request that writes itself in one
    ``writeSequence`` (request line, headers, body), skipping the per-request
    URI parsing, header copying and body-producer Deferreds of
    ``Agent.request``. ``agent`` shares the same pool for everything else
    (the monitor's probes).
    """

    base_url: bytes
    agent: Agent
    pool: HTTPConnectionPool
    key: tuple[bytes, bytes, int]
    endpoint: IStreamClientEndpoint
    host_line: bytes
    path: bytes

    def relay(
        self, method: bytes, uri: bytes, head: list[bytes], body: bytes | IBodyProducer | None
    ) -> Deferred[IResponse]:
        """Send one request to the target; fires with the response once its headers arrive.

        ``uri`` is the client's request target (path and query, origin form);
        ``head`` holds complete header lines (``b"Name: value\\r\\n"``)
        without Host and Content-Length, which are added here. A body may be
        bytes (written with the headers) or a producer with a known length
        (large uploads). Cancelling the Deferred aborts the request.
        """
        request = _Relayed(method, self.path + uri, self.host_line, head, body)
        d = self.pool.getConnection(self.key, self.endpoint)
        return d.addCallback(_issue, request)

    def url(self, uri: bytes) -> bytes:
        """Absolute target URL for a request URI."""
        return self.base_url + uri

    def close(self) -> Deferred[None]:
        """Close the cached keep-alive connections; fires when they are closed."""
        d: Deferred[None] = self.pool.closeCachedConnections()
        return d

    def stop(self) -> Deferred[None]:
        return self.close()


def build_upstream(
    reactor: Any,
    target_url: str,
    *,
    connect_timeout: float = 10.0,
    max_persistent: int = 4,
    idle_timeout: int = 50,
) -> Upstream:
    """An Upstream for ``target_url`` (``http(s)://host[:port][/prefix]``).

    ``idle_timeout`` keeps a cached connection for less time than common
    servers keep an idle one (Twisted 60 s), so foreman rarely sends a POST
    on a connection the server is closing at that moment.
    """
    parts = urlsplit(target_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{target_url!r} is not an http(s) URL")
    pool = _Pool(reactor, persistent=True)  # type: ignore[no-untyped-call]
    pool.maxPersistentPerHost = max_persistent
    pool.cachedConnectionTimeout = idle_timeout
    endpoints = _Endpoints(reactor, connect_timeout)
    agent = Agent.usingEndpointFactory(reactor, endpoints, pool=pool)
    base = target_url.rstrip("/").encode("ascii")
    uri = URI.fromBytes(base)
    host = b"[" + uri.host + b"]" if isIPv6Address(uri.host.decode("ascii")) else uri.host
    default_port = (uri.scheme, uri.port) in ((b"http", 80), (b"https", 443))
    host_value = host if default_port else b"%b:%d" % (host, uri.port)
    return Upstream(
        base_url=base,
        agent=agent,
        pool=pool,
        key=(uri.scheme, uri.host, uri.port),
        endpoint=endpoints.endpointForURI(uri),
        host_line=b"Host: " + host_value + b"\r\n",
        path=uri.path.rstrip(b"/"),
    )


def _issue(protocol: Any, request: Request) -> Deferred[IResponse]:
    result: Deferred[IResponse] = protocol.request(request)
    return result


class _Relayed(Request):
    """A request that writes itself in one go.

    ``HTTP11ClientProtocol`` only needs ``writeTo``/``stopWriting`` and the
    ``method``, ``persistent`` and ``bodyProducer`` attributes (the pool's
    retry of idempotent requests on a stale connection reads the latter).
    """

    def __init__(
        self,
        method: bytes,
        uri: bytes,
        host_line: bytes,
        head: list[bytes],
        body: bytes | IBodyProducer | None,
    ) -> None:
        # Request.__init__ is skipped on purpose: it re-validates what the
        # server side already validated and wants a Headers object.
        self.method = method
        self.uri = uri
        self.headers = None
        self.persistent = True
        self._parsedURI = None
        self._host_line = host_line
        self._head = head
        self._body = body
        self.bodyProducer = body if body is not None and not isinstance(body, bytes) else None

    def writeTo(self, transport: Any) -> Deferred[None]:
        body = self._body
        out = [b"%s %s HTTP/1.1\r\n" % (self.method, self.uri), self._host_line, *self._head]
        if body is None:
            if self.method in (b"POST", b"PUT", b"PATCH"):
                out.append(b"Content-Length: 0\r\n")
            out.append(b"\r\n")
            transport.writeSequence(out)
            return succeed(None)
        if isinstance(body, bytes):
            out.append(b"Content-Length: %d\r\n\r\n" % len(body))
            out.append(body)
            transport.writeSequence(out)
            return succeed(None)
        out.append(b"Content-Length: %d\r\n\r\n" % body.length)
        transport.writeSequence(out)
        transport.registerProducer(body, True)

        def written(result: object) -> object:
            transport.unregisterProducer()
            return result

        producing: Deferred[None] = body.startProducing(transport)
        producing.addBoth(written)
        return producing

    def stopWriting(self) -> None:
        if self.bodyProducer is not None:
            self.bodyProducer.stopProducing()
