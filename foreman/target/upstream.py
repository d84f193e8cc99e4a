"""The HTTP clients foreman uses to reach the target, and their keep-alive pools.

Requests that carry work (the proxy's relay, the worker's durable calls) go
through ``Upstream.relay``: foreman's own lean HTTP/1.1 client
(``foreman.target.wire``, ``foreman.target.wirepool``; ADR 0019). Everything
else (the monitor's probes, ``/api/ps``) uses ``Upstream.agent``, Twisted's
``Agent`` on an ``HTTPConnectionPool``. Both keep connections alive (an
Ollama round trip is cheap; a new TCP connection per request is not) and set
TCP_NODELAY so small writes do not wait for a delayed ACK. Endpoints are
built once per target rather than per request, and an IP literal connects
directly, without a resolver thread. Only connecting has a timeout here: a
generation may legitimately take minutes, so callers add a header timeout
where one makes sense (metadata).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from attrs import define
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    wrapClientTLS,
)
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.web.client import (
    URI,
    Agent,
    BrowserLikePolicyForHTTPS,
    HTTPConnectionPool,
    _HTTP11ClientFactory,
)
from twisted.web.iweb import IAgentEndpointFactory, IBodyProducer, IResponse
from zope.interface import implementer

from foreman.target.wirepool import Prepared, WirePool

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
    """The target, and the keep-alive connections that reach it.

    ``relay`` is the hot path (the proxy's relay and the worker's durable
    calls): a lean HTTP/1.1 client of our own (``foreman.target.wire``, ADR
    0019) with its own pool, which writes request line, headers and body in
    one ``writeSequence`` and parses the answer in place. ``agent`` is
    Twisted's ``Agent`` on its own ``HTTPConnectionPool``, for everything else
    (the monitor's probes, ``/api/ps``).
    """

    base_url: bytes
    agent: Agent
    pool: HTTPConnectionPool
    wire: WirePool
    path: bytes

    def relay(
        self, method: bytes, uri: bytes, head: list[bytes], body: bytes | IBodyProducer | None
    ) -> Deferred[IResponse]:
        """Send one request to the target; fires with the response once its headers arrive.

        ``uri`` is the request target (path and query, origin form);
        ``head`` holds complete header lines (``b"Name: value\\r\\n"``)
        without Host and Content-Length, which are added here. A body may be
        bytes (written with the headers) or a producer with a known length
        (large uploads). Cancelling the Deferred aborts the request.
        """
        return self.wire.request(method, self.path + uri, head, body)

    def prepare(self, method: bytes, uri: bytes, head: list[bytes], body: bytes) -> Prepared:
        """A request formatted now and sent later with ``send`` (``relay``'s rules)."""
        return self.wire.prepare(method, self.path + uri, head, body)

    def send(self, prepared: Prepared) -> Deferred[IResponse]:
        """Send a request ``prepare`` formatted; fires like ``relay``."""
        return self.wire.send(prepared)

    def url(self, uri: bytes) -> bytes:
        """Absolute target URL for a request URI."""
        return self.base_url + uri

    def close(self) -> Deferred[None]:
        """Close the idle keep-alive connections; fires when they are closed."""
        closing = [self.wire.close(), self.pool.closeCachedConnections()]
        d: Deferred[None] = DeferredList(closing).addCallback(lambda _: None)
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
    endpoint = endpoints.endpointForURI(uri)
    wire = WirePool(
        reactor,
        endpoint,
        b"Host: " + host_value + b"\r\n",
        max_idle=max_persistent,
        idle_timeout=idle_timeout,
    )
    return Upstream(
        base_url=base,
        agent=agent,
        pool=pool,
        wire=wire,
        path=uri.path.rstrip(b"/"),
    )
