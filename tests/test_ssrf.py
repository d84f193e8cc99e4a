"""The webhook address guard: policy table, submission check, guarded Agent."""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import pytest
import pytest_twisted  # type: ignore[import-untyped,unused-ignore]
import treq
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import TimeoutError as DeferTimeoutError
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import IOpenSSLContextFactory
from twisted.web.error import SchemeNotSupported
from twisted.web.resource import Resource
from twisted.web.server import Request, Site
from zope.interface import implementer  # type: ignore[import-untyped,unused-ignore]

from foreman.outbox.ssrf import (
    ForbiddenAddress,
    InvalidWebhookURL,
    UnresolvableHost,
    check_url,
    guarded_agent,
    is_forbidden,
    resolve_and_check,
)

_F = TypeVar("_F", bound=Callable[..., Any])
# pytest_twisted is untyped: give the decorator a type here.
ensure_deferred: Callable[[_F], _F] = pytest_twisted.ensureDeferred


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


# --- is_forbidden ---------------------------------------------------------------

FORBIDDEN = [
    "127.0.0.1",
    "127.255.255.254",
    "10.0.0.1",
    "172.16.0.1",
    "172.31.255.255",
    "192.168.1.1",
    "169.254.169.254",  # cloud metadata
    "100.64.0.1",
    "100.127.255.255",
    "0.0.0.0",
    "0.1.2.3",
    "255.255.255.255",
    "224.0.0.1",
    "239.255.255.250",
    "240.0.0.1",
    "192.0.0.8",
    "192.0.2.10",
    "198.18.0.1",
    "198.51.100.7",
    "203.0.113.9",
    "::",
    "::1",
    "fe80::1",
    "fe80::1%1",
    "fc00::1",
    "fd12:3456:789a::1",
    "fec0::1",
    "ff02::1",
    "2001:db8::1",
    "100::1",
    "::ffff:127.0.0.1",
    "::ffff:10.0.0.1",
    "::ffff:169.254.169.254",
    "::127.0.0.1",  # deprecated IPv4-compatible form
    "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
    "64:ff9b::a00:1",  # NAT64 of 10.0.0.1
    "64:ff9b:1::1",
    "2002:7f00:1::1",  # 6to4 of 127.0.0.1
    "2002:c0a8:101::1",  # 6to4 of 192.168.1.1
    "2001::1",  # Teredo
]

ALLOWED = [
    "8.8.8.8",
    "1.1.1.1",
    "93.184.216.34",
    "140.82.112.3",
    "100.63.255.255",  # just below CGNAT
    "100.128.0.0",  # just above CGNAT
    "172.15.255.255",
    "172.32.0.0",
    "2606:4700:4700::1111",
    "2001:4860:4860::8888",
    "2a00:1450:4001:80b::200e",
    "::ffff:8.8.8.8",
    "64:ff9b::808:808",
    "2002:808:808::1",
]


@pytest.mark.parametrize("address", FORBIDDEN)
def test_forbidden_addresses(address: str) -> None:
    assert is_forbidden(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ALLOWED)
def test_public_addresses(address: str) -> None:
    assert not is_forbidden(ipaddress.ip_address(address))


FORBIDDEN_NETWORKS = [
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "224.0.0.0/4",
    "240.0.0.0/4",
    "::1/128",
    "fc00::/7",
    "fe80::/10",
    "ff00::/8",
]
PUBLIC_NETWORKS = ["8.8.0.0/16", "1.0.0.0/8", "93.184.0.0/16", "2606:4700::/32", "2a00:1450::/32"]


@settings(deadline=None)
@given(data=st.data(), network=st.sampled_from(FORBIDDEN_NETWORKS))
def test_every_address_in_forbidden_ranges(data: st.DataObject, network: str) -> None:
    ip = data.draw(st.ip_addresses(network=network))
    assert is_forbidden(ip)


@settings(deadline=None)
@given(data=st.data(), network=st.sampled_from(PUBLIC_NETWORKS))
def test_every_address_in_public_ranges(data: st.DataObject, network: str) -> None:
    ip = data.draw(st.ip_addresses(network=network))
    assert not is_forbidden(ip)


@settings(deadline=None)
@given(ip=st.ip_addresses(v=4))
def test_ipv6_embeddings_judged_by_their_ipv4(ip: ipaddress.IPv4Address) -> None:
    mapped = ipaddress.IPv6Address(f"::ffff:{ip}")
    nat64 = ipaddress.IPv6Address((0x64FF9B << 96) | int(ip))
    sixtofour = ipaddress.IPv6Address((0x2002 << 112) | (int(ip) << 80) | 1)
    expected = is_forbidden(ip)
    assert is_forbidden(mapped) == expected
    assert is_forbidden(nat64) == expected
    assert is_forbidden(sixtofour) == expected


# --- check_url ------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "https://example.com/hooks/foreman",
        "http://example.com",
        "HTTPS://Example.COM:8443/a?b=c#frag",
        "http://127.0.0.1:8080/x",  # syntax is fine; the address check is separate
        "http://[2001:db8::1]:8080/x",
        "http://my_host.internal./",
    ],
)
def test_check_url_accepts(url: str) -> None:
    assert check_url(url) is None


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("ftp://example.com/", "http or https"),
        ("file:///etc/passwd", "http or https"),
        ("gopher://example.com/", "http or https"),
        ("example.com/hooks", "http or https"),
        ("http:///path", "no host"),
        ("http://", "no host"),
        ("https://user:pw@example.com/", "user info"),
        ("https://user@example.com/", "user info"),
        ("http://127.0.0.1:80@evil.example/", "user info"),
        ("http://example.com:0/", "port 0"),
        ("http://example.com:70000/", "malformed"),
        ("http://example.com:abc/", "malformed"),
        ("http://exa mple.com/", "whitespace"),
        ("http://example.com/\r\nX-Injected: 1", "whitespace"),
        ("http://ex\x00ample.com/", "control"),
        ("http://bücher.example/", "ASCII"),
        ("http://[::1/", "malformed"),
        ("http://[zz::q]/", "malformed"),
        ("http://a..b/", "host name"),
        ("http://-bad/", "host name"),
        ("http://ex%41mple.com/", "host name"),
        ("https://example.com/" + "a" * 3000, "longer"),
    ],
)
def test_check_url_refuses(url: str, fragment: str) -> None:
    problem = check_url(url)
    assert problem is not None
    assert fragment in problem


# --- name resolution stand-ins ----------------------------------------------------


class _Resolution:
    def __init__(self, name: str) -> None:
        self.name = name

    def cancel(self) -> None:
        pass


class FakeResolver:
    """An IHostnameResolver with a fixed table; answers ``None`` never come."""

    def __init__(self, table: dict[str, Sequence[str] | None]) -> None:
        self.table = table
        self.queries: list[str] = []

    def resolveHostName(
        self,
        resolutionReceiver: Any,
        hostName: str,
        portNumber: int = 0,
        addressTypes: Any = None,
        transportSemantics: str = "TCP",
    ) -> _Resolution:
        self.queries.append(hostName)
        resolution = _Resolution(hostName)
        resolutionReceiver.resolutionBegan(resolution)
        answers = self.table.get(hostName, [])
        if answers is None:
            return resolution  # never completes
        for answer in answers:
            if ":" in answer:
                resolutionReceiver.addressResolved(IPv6Address("TCP", answer, portNumber))
            else:
                resolutionReceiver.addressResolved(IPv4Address("TCP", answer, portNumber))
        resolutionReceiver.resolutionComplete()
        return resolution


class RebindingResolver(FakeResolver):
    """Answers a public address first, loopback afterwards (DNS rebinding)."""

    def resolveHostName(
        self,
        resolutionReceiver: Any,
        hostName: str,
        portNumber: int = 0,
        addressTypes: Any = None,
        transportSemantics: str = "TCP",
    ) -> _Resolution:
        self.table[hostName] = ["93.184.216.34"] if not self.queries else ["127.0.0.1"]
        return super().resolveHostName(resolutionReceiver, hostName, portNumber)


# --- resolve_and_check (submission time) ------------------------------------------


@ensure_deferred
async def test_submission_refuses_loopback_literal_without_dns() -> None:
    resolver = FakeResolver({})
    for url in ("http://127.0.0.1:9/x", "http://[::1]/", "http://[::ffff:10.0.0.1]/"):
        with pytest.raises(ForbiddenAddress):
            await resolve_and_check(_reactor(), url, False, resolver=resolver)
    await resolve_and_check(_reactor(), "https://93.184.216.34/", False, resolver=resolver)
    assert resolver.queries == []


@ensure_deferred
async def test_submission_refuses_localhost_with_the_real_resolver() -> None:
    with pytest.raises(ForbiddenAddress) as info:
        await resolve_and_check(_reactor(), "http://localhost:8080/hook", False)
    assert info.value.host == "localhost"
    assert is_forbidden(ipaddress.ip_address(info.value.address))


@ensure_deferred
async def test_submission_allow_private_checks_syntax_only() -> None:
    resolver = FakeResolver({})
    await resolve_and_check(_reactor(), "http://localhost:8080/", True, resolver=resolver)
    await resolve_and_check(_reactor(), "http://127.0.0.1/", True, resolver=resolver)
    assert resolver.queries == []
    with pytest.raises(InvalidWebhookURL):
        await resolve_and_check(_reactor(), "ftp://localhost/", True, resolver=resolver)


@ensure_deferred
async def test_submission_resolution_outcomes() -> None:
    resolver = FakeResolver(
        {
            "public.test": ["93.184.216.34", "2606:4700::1"],
            "mixed.test": ["93.184.216.34", "10.0.0.5"],
            "private6.test": ["fd00::1"],
            "empty.test": [],
            "hang.test": None,
        }
    )
    reactor = _reactor()
    await resolve_and_check(reactor, "https://public.test/h", False, resolver=resolver)
    with pytest.raises(ForbiddenAddress, match=r"10\.0\.0\.5"):
        await resolve_and_check(reactor, "https://mixed.test/h", False, resolver=resolver)
    with pytest.raises(ForbiddenAddress):
        await resolve_and_check(reactor, "https://private6.test/h", False, resolver=resolver)
    with pytest.raises(UnresolvableHost):
        await resolve_and_check(reactor, "https://empty.test/h", False, resolver=resolver)
    with pytest.raises(UnresolvableHost, match="timed out"):
        await resolve_and_check(
            reactor, "https://hang.test/h", False, resolve_timeout=0.1, resolver=resolver
        )
    with pytest.raises(InvalidWebhookURL, match="user info"):
        await resolve_and_check(reactor, "https://a@public.test/", False, resolver=resolver)


def test_error_hierarchy() -> None:
    assert issubclass(ForbiddenAddress, InvalidWebhookURL)
    assert issubclass(UnresolvableHost, InvalidWebhookURL)
    assert issubclass(InvalidWebhookURL, ValueError)


# --- guarded Agent against a real loopback server -----------------------------------


class _Hello(Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call,unused-ignore]
        self.hosts: list[bytes] = []
        self.server_names: list[bytes | None] = []

    def render_GET(self, request: Request) -> bytes:
        req: Any = request
        self.hosts.append(req.getHeader(b"host"))
        handle = getattr(req.channel.transport, "getHandle", None)
        if handle is not None and hasattr(handle(), "get_servername"):
            self.server_names.append(handle().get_servername())
        if request.path == b"/redirect":
            req.setResponseCode(302)
            req.setHeader(b"location", b"http://127.0.0.1:1/elsewhere")
            return b""
        return b"hello"


class _CountingSite(Site):
    """A Site that counts TCP connections, to prove refusals happen before connecting."""

    connections = 0

    def buildProtocol(self, addr: Any) -> Any:
        self.connections += 1
        return super().buildProtocol(addr)  # type: ignore[no-untyped-call,unused-ignore]


class _Server:
    def __init__(self, port: int, resource: _Hello, site: _CountingSite) -> None:
        self.port = port
        self.resource = resource
        self.site = site


@asynccontextmanager
async def serving(tls: Any = None) -> AsyncIterator[_Server]:
    reactor = _reactor()
    resource = _Hello()
    site_factory: Any = _CountingSite
    site = site_factory(resource)
    if tls is None:
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
    else:
        port = reactor.listenSSL(0, site, tls, interface="127.0.0.1")
    try:
        yield _Server(port.getHost().port, resource, site)
    finally:
        await port.stopListening()


async def get(agent: Any, url: str) -> tuple[int, bytes]:
    response = await agent.request(b"GET", url.encode())
    body: bytes = await treq.content(response)
    return response.code, body


@ensure_deferred
async def test_guarded_agent_refuses_loopback() -> None:
    reactor = _reactor()
    async with serving() as server:
        agent = guarded_agent(reactor, allow_private=False)
        for host in ("localhost", "127.0.0.1", "[::1]", "[::ffff:127.0.0.1]"):
            with pytest.raises(ForbiddenAddress):
                await get(agent, f"http://{host}:{server.port}/")
        assert server.site.connections == 0
        assert server.resource.hosts == []


@ensure_deferred
async def test_guarded_agent_allows_loopback_when_private_allowed() -> None:
    reactor = _reactor()
    async with serving() as server:
        agent = guarded_agent(reactor, allow_private=True)
        for host in ("localhost", "127.0.0.1"):
            assert await get(agent, f"http://{host}:{server.port}/") == (200, b"hello")
        assert server.resource.hosts == [
            f"localhost:{server.port}".encode(),
            f"127.0.0.1:{server.port}".encode(),
        ]


@ensure_deferred
async def test_guarded_agent_defeats_dns_rebinding() -> None:
    reactor = _reactor()
    resolver = RebindingResolver({})
    async with serving() as server:
        url = f"http://rebind.test:{server.port}/"
        await resolve_and_check(reactor, url, False, resolver=resolver)  # looks public
        agent = guarded_agent(reactor, allow_private=False, resolver=resolver)
        with pytest.raises(ForbiddenAddress, match=r"127\.0\.0\.1"):
            await get(agent, url)  # ...but at connect time it is loopback
        assert server.site.connections == 0


@ensure_deferred
async def test_guarded_agent_refuses_mixed_answers_before_connecting() -> None:
    reactor = _reactor()
    resolver = FakeResolver({"mixed.test": ["93.184.216.34", "127.0.0.1"]})
    async with serving() as server:
        agent = guarded_agent(reactor, allow_private=False, resolver=resolver)
        with pytest.raises(ForbiddenAddress):
            await get(agent, f"http://mixed.test:{server.port}/")
        assert server.site.connections == 0


@ensure_deferred
async def test_guarded_agent_connects_to_the_resolved_ip_and_falls_back() -> None:
    reactor = _reactor()
    # 127.0.0.2 is loopback too but nothing listens there: refused, then the next address
    resolver = FakeResolver(
        {"service.test": ["127.0.0.2", "127.0.0.1"], "down.test": ["127.0.0.2"]}
    )
    async with serving() as server:
        agent = guarded_agent(reactor, allow_private=True, resolver=resolver)
        assert await get(agent, f"http://service.test:{server.port}/") == (200, b"hello")
        assert server.resource.hosts == [f"service.test:{server.port}".encode()]
        with pytest.raises(ConnectionRefusedError):
            await get(agent, f"http://down.test:{server.port}/")


@ensure_deferred
async def test_guarded_agent_does_not_follow_redirects() -> None:
    reactor = _reactor()
    async with serving() as server:
        agent = guarded_agent(reactor, allow_private=True)
        code, _ = await get(agent, f"http://127.0.0.1:{server.port}/redirect")
        assert code == 302
        assert len(server.resource.hosts) == 1


@ensure_deferred
async def test_guarded_agent_connect_timeout_covers_resolution() -> None:
    reactor = _reactor()
    agent = guarded_agent(
        reactor,
        allow_private=False,
        connect_timeout=0.2,
        resolver=FakeResolver({"hang.test": None}),
    )
    start = reactor.seconds()
    with pytest.raises(DeferTimeoutError):
        await get(agent, "http://hang.test/")
    assert reactor.seconds() - start < 5


@ensure_deferred
async def test_guarded_agent_refuses_other_schemes() -> None:
    agent = guarded_agent(_reactor(), allow_private=True)
    with pytest.raises(SchemeNotSupported):
        await get(agent, "ftp://127.0.0.1/")


# --- https: SNI and certificate checks use the URL's host name ----------------------


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
    """A server context factory built from cryptography objects (PEM in, no pyOpenSSL
    X509/PKey wrappers, which pyOpenSSL deprecates)."""

    def __init__(self, cert_pem: bytes, key_pem: bytes) -> None:
        from OpenSSL import SSL

        self._context = SSL.Context(SSL.TLS_SERVER_METHOD)
        self._context.use_certificate(x509.load_pem_x509_certificate(cert_pem))
        key: Any = serialization.load_pem_private_key(key_pem, password=None)
        self._context.use_privatekey(key)

    def getContext(self) -> Any:
        return self._context


@ensure_deferred
async def test_https_uses_the_url_host_for_sni_and_verification() -> None:
    from service_identity import VerificationError
    from twisted.internet import ssl
    from twisted.web.client import BrowserLikePolicyForHTTPS, ResponseNeverReceived

    reactor = _reactor()
    cert_pem, key_pem = _self_signed("localhost")
    policy_factory: Any = BrowserLikePolicyForHTTPS
    policy = policy_factory(trustRoot=ssl.Certificate.loadPEM(cert_pem))
    resolver = FakeResolver({"localhost": ["127.0.0.1"], "other.test": ["127.0.0.1"]})
    async with serving(tls=_ServerTLS(cert_pem, key_pem)) as server:
        agent = guarded_agent(reactor, allow_private=True, tls_policy=policy, resolver=resolver)
        assert await get(agent, f"https://localhost:{server.port}/") == (200, b"hello")
        assert server.resource.server_names == [b"localhost"]
        # same IP, but the certificate does not name other.test: refused
        with pytest.raises(ResponseNeverReceived) as info:
            await get(agent, f"https://other.test:{server.port}/")
        assert any(f.check(VerificationError) for f in info.value.reasons)
        # and the guard still applies under TLS
        strict = guarded_agent(reactor, allow_private=False, tls_policy=policy, resolver=resolver)
        with pytest.raises(ForbiddenAddress):
            await get(strict, f"https://localhost:{server.port}/")
