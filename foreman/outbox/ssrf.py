"""Keep webhook deliveries away from loopback, private and link-local hosts.

A webhook URL is chosen by whoever submits a job, and foreman POSTs to it
from inside the network it runs in: without a guard, a job could make
foreman talk to its own admin port, to Ollama, to a cloud metadata service
(169.254.169.254) or to anything else on the private network (SSRF).

Two checks, because DNS answers can change between them (DNS rebinding):

* at submission, ``resolve_and_check`` refuses a URL early with a clear
  error (the API answers 400);
* at delivery, ``GuardedEndpointFactory`` resolves the name itself, refuses
  if any resolved address is forbidden, and connects to the exact IP it has
  just checked, so nothing can swap the address between check and connect.
  TLS still uses the URL's host name for SNI and certificate checks.

Policy (an ADR records it): a host is refused when ANY of its addresses is
forbidden, not just the one that would be tried first; a name that mixes
public and private addresses is either misconfigured or an attack.
``allow_private=True`` (``FOREMAN_WEBHOOK_ALLOW_PRIVATE``) turns the address
check off; URL syntax is still checked.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from typing import Any, TypeAlias, cast
from urllib.parse import urlsplit

from twisted.internet import defer
from twisted.internet.address import IPv4Address as TwistedIPv4Address
from twisted.internet.address import IPv6Address as TwistedIPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, wrapClientTLS
from twisted.internet.error import ConnectError, DNSLookupError
from twisted.internet.interfaces import (
    IAddress,
    IHostResolution,
    IProtocol,
    IProtocolFactory,
    IResolutionReceiver,
    IStreamClientEndpoint,
)
from twisted.web.client import URI, Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool
from twisted.web.error import SchemeNotSupported
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer  # type: ignore[import-untyped,unused-ignore]

from foreman.outbox.quietpool import QuietPool

__all__ = [
    "ForbiddenAddress",
    "GuardedEndpointFactory",
    "IPAddress",
    "InvalidWebhookURL",
    "UnresolvableHost",
    "check_url",
    "guarded_agent",
    "is_forbidden",
    "resolve_and_check",
]

IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address

MAX_URL_LENGTH = 2048

_V4_FORBIDDEN = tuple(
    ipaddress.IPv4Network(n)
    for n in (
        "0.0.0.0/8",  # "this network"
        "10.0.0.0/8",
        "100.64.0.0/10",  # carrier-grade NAT, often reaches provider internals
        "127.0.0.0/8",
        "169.254.0.0/16",  # link-local, cloud metadata services
        "172.16.0.0/12",
        "192.0.0.0/24",  # IETF protocol assignments
        "192.0.2.0/24",  # documentation
        "192.88.99.0/24",  # 6to4 relay anycast (deprecated)
        "192.168.0.0/16",
        "198.18.0.0/15",  # benchmarking
        "198.51.100.0/24",  # documentation
        "203.0.113.0/24",  # documentation
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, includes broadcast
    )
)

_V6_FORBIDDEN = tuple(
    ipaddress.IPv6Network(n)
    for n in (
        "::/96",  # unspecified, loopback, deprecated IPv4-compatible
        "64:ff9b:1::/48",  # local-use NAT64
        "100::/64",  # discard-only
        "2001::/23",  # IETF protocol assignments (Teredo, ORCHID, ...)
        "2001:db8::/32",  # documentation
        "3fff::/20",  # documentation
        "5f00::/16",  # SRv6 SIDs
        "fc00::/7",  # unique local
        "fe80::/10",  # link-local
        "fec0::/10",  # site-local (deprecated)
        "ff00::/8",  # multicast
    )
)

_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_HOSTNAME = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_.])?")


class InvalidWebhookURL(ValueError):
    """A webhook URL that foreman will not deliver to (the API answers 400)."""


class UnresolvableHost(InvalidWebhookURL):
    """The URL's host name did not resolve to any address."""


class ForbiddenAddress(InvalidWebhookURL):
    """The URL's host is, or resolves to, a forbidden address."""

    def __init__(self, host: str, address: str) -> None:
        self.host = host
        self.address = address
        if host == address:
            text = f"webhook address {address} is loopback, private or otherwise not public"
        else:
            text = (
                f"webhook host {host!r} resolves to {address}, "
                "a loopback, private or otherwise not public address"
            )
        super().__init__(text)


def is_forbidden(ip: IPAddress) -> bool:
    """True if foreman must not connect to ``ip`` on a user's behalf.

    Anything that is not a plain public unicast address is refused, IPv6
    forms that embed an IPv4 address (mapped, NAT64, 6to4) are judged by
    that IPv4 address.
    """
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            return is_forbidden(embedded)
        networks: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network] = _V6_FORBIDDEN
    else:
        networks = _V4_FORBIDDEN
    if ip.is_multicast or ip.is_reserved or ip.is_loopback or ip.is_link_local:
        return True
    if ip.is_private or not ip.is_global:
        return True
    return any(ip in net for net in networks)


def check_url(url: str) -> str | None:
    """Why ``url`` cannot be a webhook URL, or None if its syntax is fine.

    Syntax only, no DNS: http(s) scheme, a host, no user info (credentials
    would end up in logs, and ``user@host`` forms are a classic way to fool
    URL checks), a valid port, ASCII without spaces or control characters.
    """
    if len(url) > MAX_URL_LENGTH:
        return f"webhook URL is longer than {MAX_URL_LENGTH} characters"
    if not url.isascii():
        return "webhook URL must be ASCII (punycode the host, percent-encode the path)"
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in url):
        return "webhook URL contains whitespace or control characters"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        return f"webhook URL is malformed: {e}"
    if parts.scheme.lower() not in ("http", "https"):
        return "webhook URL must use http or https"
    if not parts.netloc or not parts.hostname:
        return "webhook URL has no host"
    if "@" in parts.netloc:
        return "webhook URL must not contain user info (user:password@)"
    if port == 0:
        return "webhook URL has port 0"
    host = parts.hostname
    if parts.netloc.startswith("[") or ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return "webhook URL has an invalid IPv6 address"
    elif not _HOSTNAME.fullmatch(host) or ".." in host:
        return "webhook URL has an invalid host name"
    return None


def _ip_literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


@implementer(IResolutionReceiver)
class _Collector:
    """Gathers one name resolution's addresses into a Deferred."""

    def __init__(self) -> None:
        self.addresses: list[IAddress] = []
        self.done: Deferred[list[IAddress]] = Deferred()

    def resolutionBegan(self, resolutionInProgress: IHostResolution) -> None:
        pass

    def addressResolved(self, address: IAddress) -> None:
        self.addresses.append(address)

    def resolutionComplete(self) -> None:
        if not self.done.called:  # it was cancelled (timed out) meanwhile
            self.done.callback(self.addresses)


async def _resolve(resolver: Any, host: str, port: int) -> list[IPAddress]:
    """Every address ``host`` resolves to; IP literals skip DNS entirely."""
    literal = _ip_literal(host)
    if literal is not None:
        return [literal]
    collector = _Collector()
    resolver.resolveHostName(collector, host, port)
    found = await collector.done
    result: list[IPAddress] = []
    for address in found:
        if isinstance(address, TwistedIPv4Address | TwistedIPv6Address):
            ip = _ip_literal(address.host)
            if ip is not None and ip not in result:
                result.append(ip)
    if not result:
        raise UnresolvableHost(f"webhook host {host!r} does not resolve")
    return result


def _refuse_forbidden(host: str, addresses: Sequence[IPAddress]) -> None:
    for ip in addresses:
        if is_forbidden(ip):
            raise ForbiddenAddress(host, str(ip))


async def resolve_and_check(
    reactor: Any,
    url: str,
    allow_private: bool,
    *,
    resolve_timeout: float = 10.0,
    resolver: Any = None,
) -> None:
    """Refuse ``url`` at submission time.

    Raises ``InvalidWebhookURL`` for bad syntax, ``UnresolvableHost`` when
    the name does not resolve within ``resolve_timeout`` seconds, and
    ``ForbiddenAddress`` when any address is forbidden. With
    ``allow_private`` only the syntax is checked (no DNS: nothing would be
    refused). ``resolver`` defaults to the reactor's ``nameResolver``.
    """
    problem = check_url(url)
    if problem is not None:
        raise InvalidWebhookURL(problem)
    if allow_private:
        return
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
    d = Deferred.fromCoroutine(_resolve(resolver or reactor.nameResolver, host, port))
    d.addTimeout(resolve_timeout, reactor)
    try:
        addresses = await d
    except defer.TimeoutError as e:
        raise UnresolvableHost(f"resolving webhook host {host!r} timed out") from e
    _refuse_forbidden(host, addresses)


@implementer(IStreamClientEndpoint)
class _GuardedTCPEndpoint:
    """Resolve, check every address, then connect TCP to a checked IP."""

    def __init__(
        self,
        reactor: Any,
        resolver: Any,
        host: str,
        port: int,
        allow_private: bool,
        timeout: float,
    ) -> None:
        self._reactor = reactor
        self._resolver = resolver
        self._host = host
        self._port = port
        self._allow_private = allow_private
        self._timeout = timeout

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        d = Deferred.fromCoroutine(self._connect(protocolFactory))
        # One bound for resolution and all connection attempts together.
        d.addTimeout(self._timeout, self._reactor)
        return d

    async def _connect(self, factory: IProtocolFactory) -> IProtocol:
        try:
            addresses = await _resolve(self._resolver, self._host, self._port)
        except UnresolvableHost as e:
            raise DNSLookupError(str(e)) from e
        if not self._allow_private:
            _refuse_forbidden(self._host, addresses)
        deadline = self._reactor.seconds() + self._timeout
        last: Exception | None = None
        for index, ip in enumerate(addresses):
            # Share what is left of the budget, so one black-holed address
            # cannot use it all up before the others are tried.
            budget = max(0.5, (deadline - self._reactor.seconds()) / (len(addresses) - index))
            endpoint: Any
            if isinstance(ip, ipaddress.IPv6Address):
                endpoint = TCP6ClientEndpoint(  # type: ignore[no-untyped-call,unused-ignore]
                    self._reactor, str(ip), self._port, budget
                )
            else:
                endpoint = TCP4ClientEndpoint(self._reactor, str(ip), self._port, budget)
            try:
                protocol: IProtocol = await endpoint.connect(factory)
                return protocol
            except ConnectError as e:  # refused, unreachable, timed out: try the next one
                last = e
        assert last is not None
        raise last


@implementer(IAgentEndpointFactory)
class GuardedEndpointFactory:
    """An ``IAgentEndpointFactory`` whose endpoints refuse forbidden addresses.

    Use through ``guarded_agent``. ``tls_policy`` decides certificate checks
    for https (default: ``BrowserLikePolicyForHTTPS``, system trust roots);
    ``resolver`` defaults to the reactor's ``nameResolver``.
    ``connect_timeout`` bounds resolution plus TCP connection; the caller
    bounds the whole request.
    """

    def __init__(
        self,
        reactor: Any,
        allow_private: bool,
        connect_timeout: float = 15,
        *,
        tls_policy: Any = None,
        resolver: Any = None,
    ) -> None:
        self._reactor = reactor
        self._allow_private = allow_private
        self._connect_timeout = connect_timeout
        self._tls_policy: Any = tls_policy or BrowserLikePolicyForHTTPS()  # type: ignore[no-untyped-call,unused-ignore]
        self._resolver = resolver

    def endpointForURI(self, uri: URI) -> Any:
        """An ``IStreamClientEndpoint`` for ``uri`` (http or https)."""
        scheme = uri.scheme.lower()
        if scheme not in (b"http", b"https"):
            raise SchemeNotSupported(f"unsupported scheme: {scheme!r}")
        try:
            host = uri.host.decode("ascii")
        except UnicodeDecodeError as e:
            raise SchemeNotSupported("non-ASCII host") from e
        tcp = _GuardedTCPEndpoint(
            self._reactor,
            self._resolver or self._reactor.nameResolver,
            host,
            uri.port,
            self._allow_private,
            self._connect_timeout,
        )
        if scheme == b"http":
            return tcp
        creator = self._tls_policy.creatorForNetloc(uri.host, uri.port)
        return wrapClientTLS(creator, cast(Any, tcp))


def guarded_agent(
    reactor: Any,
    allow_private: bool,
    pool: HTTPConnectionPool | None = None,
    connect_timeout: float = 15,
    *,
    tls_policy: Any = None,
    resolver: Any = None,
) -> Agent:
    """An ``Agent`` for webhook deliveries: guarded connections, no redirects
    followed (a plain ``Agent`` returns 3xx as is). Without ``pool`` each
    request gets its own connection (as with Agent's default pool, but
    without its two log lines per connection)."""
    factory = GuardedEndpointFactory(
        reactor, allow_private, connect_timeout, tls_policy=tls_policy, resolver=resolver
    )
    if pool is None:
        pool = QuietPool(reactor, persistent=False)
    agent: Agent = Agent.usingEndpointFactory(reactor, factory, pool)  # type: ignore[no-untyped-call,unused-ignore]
    return agent
