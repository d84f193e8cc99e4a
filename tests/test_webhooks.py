"""Standard Webhooks signing/verification and the receiver resource."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any, TypeVar, cast

import pytest
import pytest_twisted  # type: ignore[import-untyped,unused-ignore]
import standardwebhooks
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

import foreman.webhooks
from foreman.core import signing
from foreman.webhooks import (
    InvalidHeaders,
    InvalidSecret,
    InvalidSignature,
    MalformedPayload,
    MissingHeaders,
    TimestampOutOfTolerance,
    WebhookReceiver,
    WebhookVerificationError,
    generate_secret,
    headers_for,
    secret_bytes,
    sign,
    verify,
    verify_signature,
)
from tests.budget import examples

VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VECTOR_TS = 1614265330
VECTOR_BODY = b'{"test": 2432232314}'
VECTOR_SIG = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="

_F = TypeVar("_F", bound=Callable[..., Any])
# pytest_twisted is untyped: give the decorator a type here.
ensure_deferred: Callable[[_F], _F] = pytest_twisted.ensureDeferred

SECRET = "whsec_" + base64.b64encode(bytes(range(24))).decode()

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
json_objects = st.dictionaries(st.text(max_size=8), json_values, max_size=5)
msg_ids = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=40
)


def vector_headers() -> dict[str, str]:
    return {
        "webhook-id": VECTOR_ID,
        "webhook-timestamp": str(VECTOR_TS),
        "webhook-signature": VECTOR_SIG,
    }


# --- signing -----------------------------------------------------------------


def test_published_test_vector() -> None:
    assert sign(VECTOR_SECRET, VECTOR_ID, VECTOR_TS, VECTOR_BODY) == VECTOR_SIG


def test_verify_published_test_vector() -> None:
    event = verify(VECTOR_SECRET, vector_headers(), VECTOR_BODY, now=VECTOR_TS + 10)
    assert event == {"test": 2432232314}


def test_headers_for() -> None:
    headers = headers_for(VECTOR_SECRET, VECTOR_ID, VECTOR_TS, VECTOR_BODY)
    assert headers == {
        "webhook-id": VECTOR_ID,
        "webhook-timestamp": "1614265330",
        "webhook-signature": VECTOR_SIG,
        "content-type": "application/json",
    }


def test_generate_secret() -> None:
    a, b = generate_secret(), generate_secret()
    assert a != b
    assert a.startswith("whsec_")
    assert len(secret_bytes(a)) == 24
    assert base64.b64decode(a[len("whsec_") :], validate=True) == secret_bytes(a)


def test_secret_bytes_forms() -> None:
    raw = secret_bytes(VECTOR_SECRET)
    assert secret_bytes(VECTOR_SECRET[len("whsec_") :]) == raw  # prefix optional
    unpadded = "whsec_" + base64.b64encode(b"\x01" * 25).decode().rstrip("=")
    assert secret_bytes(unpadded) == b"\x01" * 25


@pytest.mark.parametrize("bad", ["", "whsec_", "whsec_not base64!", "whsec_@@@@", "whsec_a"])
def test_malformed_secret(bad: str) -> None:
    with pytest.raises(InvalidSecret):
        secret_bytes(bad)
    with pytest.raises(InvalidSecret):
        sign(bad, "id", 1, b"{}")


# --- cross-checks with the reference Python library -----------------------------


def test_reference_library_accepts_our_signature() -> None:
    secret = generate_secret()
    body = json.dumps({"type": "job.done", "data": {"id": "j1", "seq": 3}}).encode()
    headers = headers_for(secret, "msg_1", int(time.time()), body)
    assert standardwebhooks.Webhook(secret).verify(body, headers) == json.loads(body)


def test_we_accept_the_reference_library_signature() -> None:
    secret = generate_secret()
    body = '{"type": "job.queued", "data": {"seq": 1}}'
    now = datetime.now(tz=UTC).replace(microsecond=0)
    sig = standardwebhooks.Webhook(secret).sign("msg_2", now, body)
    headers = {
        "webhook-id": "msg_2",
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": sig,
    }
    assert verify(secret, headers, body.encode()) == {"type": "job.queued", "data": {"seq": 1}}


@settings(deadline=None, max_examples=examples(50))
@given(event=json_objects, msg_id=msg_ids, key=st.binary(min_size=24, max_size=64))
def test_cross_check_both_ways(event: dict[str, Any], msg_id: str, key: bytes) -> None:
    secret = "whsec_" + base64.b64encode(key).decode()
    body = json.dumps(event).encode()
    ts = int(time.time())
    ours = headers_for(secret, msg_id, ts, body)
    assert standardwebhooks.Webhook(secret).verify(body, ours) == event
    ref_sig = standardwebhooks.Webhook(secret).sign(
        msg_id, datetime.fromtimestamp(ts, tz=UTC), body.decode()
    )
    assert ref_sig == ours["webhook-signature"]
    assert verify(secret, {**ours, "webhook-signature": ref_sig}, body) == event


# --- verification properties ----------------------------------------------------


@settings(deadline=None)
@given(body=st.binary(max_size=300), msg_id=msg_ids, ts=st.integers(0, 2**40))
def test_any_body_round_trips(body: bytes, msg_id: str, ts: int) -> None:
    headers = headers_for(SECRET, msg_id, ts, body)
    assert verify_signature(SECRET, headers, body, now=ts) == msg_id


@settings(deadline=None)
@given(event=json_objects, msg_id=msg_ids, ts=st.integers(0, 2**40))
def test_any_event_round_trips(event: dict[str, Any], msg_id: str, ts: int) -> None:
    body = json.dumps(event).encode()
    assert verify(SECRET, headers_for(SECRET, msg_id, ts, body), body, now=ts) == event


@settings(deadline=None)
@given(data=st.data(), body=st.binary(min_size=1, max_size=300), msg_id=msg_ids)
def test_any_single_byte_tamper_fails(data: st.DataObject, body: bytes, msg_id: str) -> None:
    ts = 1_700_000_000
    headers = headers_for(SECRET, msg_id, ts, body)
    index = data.draw(st.integers(0, len(body) - 1))
    flip = data.draw(st.integers(1, 255))
    tampered = body[:index] + bytes([body[index] ^ flip]) + body[index + 1 :]
    with pytest.raises(InvalidSignature):
        verify_signature(SECRET, headers, tampered, now=ts)


@settings(deadline=None)
@given(body=st.binary(max_size=100), msg_id=msg_ids, other=msg_ids)
def test_signature_binds_id_and_timestamp(body: bytes, msg_id: str, other: str) -> None:
    ts = 1_700_000_000
    headers = headers_for(SECRET, msg_id, ts, body)
    if other != msg_id:
        with pytest.raises(InvalidSignature):
            verify_signature(SECRET, {**headers, "webhook-id": other}, body, now=ts)
    with pytest.raises(InvalidSignature):
        verify_signature(SECRET, {**headers, "webhook-timestamp": str(ts + 1)}, body, now=ts)


def test_wrong_secret_fails() -> None:
    with pytest.raises(InvalidSignature):
        verify(generate_secret(), vector_headers(), VECTOR_BODY, now=VECTOR_TS)


@pytest.mark.parametrize("offset", [-301, 301, -10_000, 10_000])
def test_timestamp_outside_tolerance(offset: int) -> None:
    with pytest.raises(TimestampOutOfTolerance):
        verify(VECTOR_SECRET, vector_headers(), VECTOR_BODY, now=VECTOR_TS + offset)


@pytest.mark.parametrize("offset", [-300, 0, 300])
def test_timestamp_at_tolerance_edges(offset: int) -> None:
    verify(VECTOR_SECRET, vector_headers(), VECTOR_BODY, now=VECTOR_TS + offset)


def test_custom_tolerance() -> None:
    with pytest.raises(TimestampOutOfTolerance):
        verify(VECTOR_SECRET, vector_headers(), VECTOR_BODY, tolerance=5, now=VECTOR_TS + 6)


def test_default_now_is_the_clock() -> None:
    # the vector is from 2021: far outside five minutes of today
    with pytest.raises(TimestampOutOfTolerance):
        verify(VECTOR_SECRET, vector_headers(), VECTOR_BODY)


# --- the public module over the pure core ----------------------------------------

# verify/verify_signature are the public wrappers that read the clock; everything
# else in foreman.webhooks is foreman.core.signing's own object.
_WRAPPERS = {"WebhookReceiver", "verify", "verify_signature"}
_REEXPORTED = [*sorted(set(foreman.webhooks.__all__) - _WRAPPERS), "DEFAULT_TOLERANCE"]


@pytest.mark.parametrize("name", _REEXPORTED)
def test_public_names_are_the_core_objects(name: str) -> None:
    assert getattr(foreman.webhooks, name) is getattr(signing, name)


def test_every_public_name_is_importable() -> None:
    for name in foreman.webhooks.__all__:
        assert getattr(foreman.webhooks, name) is not None


def test_wrappers_pass_now_and_tolerance_to_the_core() -> None:
    headers = vector_headers()
    assert foreman.webhooks.verify_signature(
        VECTOR_SECRET, headers, VECTOR_BODY, 5, VECTOR_TS + 5
    ) == signing.verify_signature(
        VECTOR_SECRET, headers, VECTOR_BODY, now=VECTOR_TS + 5, tolerance=5
    )
    assert foreman.webhooks.verify(VECTOR_SECRET, headers, VECTOR_BODY, now=VECTOR_TS) == (
        signing.verify(VECTOR_SECRET, headers, VECTOR_BODY, now=VECTOR_TS)
    )
    with pytest.raises(TimestampOutOfTolerance):
        signing.verify(VECTOR_SECRET, headers, VECTOR_BODY, now=VECTOR_TS + 6, tolerance=5)


def test_verify_with_the_clock_accepts_a_fresh_delivery() -> None:
    ts = int(time.time())
    headers = headers_for(SECRET, "msg_now", ts, b"{}")
    assert verify(SECRET, headers, b"{}") == {}
    assert verify_signature(SECRET, headers, b"{}") == "msg_now"


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_missing_headers(missing: str) -> None:
    headers = vector_headers()
    del headers[missing]
    with pytest.raises(MissingHeaders):
        verify(VECTOR_SECRET, headers, VECTOR_BODY, now=VECTOR_TS)
    headers[missing] = ""
    with pytest.raises(MissingHeaders):
        verify(VECTOR_SECRET, headers, VECTOR_BODY, now=VECTOR_TS)


@pytest.mark.parametrize("ts", ["abc", "1614265330.5", "-1614265330", "\uff11\uff16\uff11\uff14"])
def test_unparseable_timestamp(ts: str) -> None:
    with pytest.raises(InvalidHeaders):
        verify(
            VECTOR_SECRET, {**vector_headers(), "webhook-timestamp": ts}, VECTOR_BODY, now=VECTOR_TS
        )


def test_every_signature_is_tried() -> None:
    other = sign(generate_secret(), VECTOR_ID, VECTOR_TS, VECTOR_BODY)
    for sig in (
        f"{other} {VECTOR_SIG}",
        f"{VECTOR_SIG} {other}",
        f"v1,!!notbase64 nocomma v2,xyz {VECTOR_SIG}",
        f"  {other}   {VECTOR_SIG}  ",
    ):
        headers = {**vector_headers(), "webhook-signature": sig}
        assert verify(VECTOR_SECRET, headers, VECTOR_BODY, now=VECTOR_TS) == {"test": 2432232314}


def test_only_v1_signatures_count() -> None:
    v2 = "v2," + VECTOR_SIG.split(",", 1)[1]
    with pytest.raises(InvalidSignature):
        verify(
            VECTOR_SECRET,
            {**vector_headers(), "webhook-signature": f"{v2} v1a,x"},
            VECTOR_BODY,
            now=VECTOR_TS,
        )


@pytest.mark.parametrize(
    "headers",
    [
        {
            "Webhook-Id": VECTOR_ID,
            "WEBHOOK-TIMESTAMP": str(VECTOR_TS),
            "webhook-Signature": VECTOR_SIG,
        },
        {
            b"webhook-id": VECTOR_ID.encode(),
            b"Webhook-Timestamp": str(VECTOR_TS).encode(),
            b"webhook-signature": VECTOR_SIG.encode(),
        },
        {
            b"webhook-id": [VECTOR_ID.encode()],
            b"webhook-timestamp": [str(VECTOR_TS).encode()],
            b"webhook-signature": [b"v1,AAAA", VECTOR_SIG.encode()],
        },
        Headers(
            {
                b"Webhook-Id": [VECTOR_ID.encode()],
                b"Webhook-Timestamp": [str(VECTOR_TS).encode()],
                b"Webhook-Signature": [VECTOR_SIG.encode()],
            }
        ),
        Headers(
            {
                "webhook-id": [VECTOR_ID],
                "webhook-timestamp": [str(VECTOR_TS)],
                "webhook-signature": ["v1,AAAA", VECTOR_SIG],
            }
        ),
    ],
)
def test_header_containers(headers: Any) -> None:
    assert verify(VECTOR_SECRET, headers, VECTOR_BODY, now=VECTOR_TS) == {"test": 2432232314}


def test_conflicting_ids_are_refused() -> None:
    headers = Headers(
        {
            b"webhook-id": [VECTOR_ID.encode(), b"msg_other"],
            b"webhook-timestamp": [str(VECTOR_TS).encode()],
            b"webhook-signature": [VECTOR_SIG.encode()],
        }
    )
    with pytest.raises(InvalidHeaders):
        verify(VECTOR_SECRET, headers, VECTOR_BODY, now=VECTOR_TS)


@pytest.mark.parametrize("body", [b"not json", b"[1, 2]", b'"text"', b"\xff\xfe{}", b""])
def test_malformed_payload_after_good_signature(body: bytes) -> None:
    headers = headers_for(SECRET, "msg_x", 1000, body)
    with pytest.raises(MalformedPayload):
        verify(SECRET, headers, body, now=1000)


def test_bad_signature_is_reported_before_payload() -> None:
    # an attacker must not learn anything about parsing without a valid signature
    headers = headers_for(SECRET, "msg_x", 1000, b"not json")
    with pytest.raises(InvalidSignature):
        verify(SECRET, headers, b"not jsoN", now=1000)


def test_errors_share_a_base() -> None:
    for exc in (
        MissingHeaders,
        InvalidHeaders,
        TimestampOutOfTolerance,
        InvalidSignature,
        MalformedPayload,
    ):
        assert issubclass(exc, WebhookVerificationError)


# --- receiver resource over a real loopback port --------------------------------


class _Counting(Resource):
    """Counts requests that reached the receiver (test instrumentation only)."""

    isLeaf = True

    def __init__(self, inner: Resource) -> None:
        super().__init__()  # type: ignore[no-untyped-call,unused-ignore]
        self.inner = inner
        self.count = 0

    def render(self, request: Request) -> Any:
        self.count += 1
        return self.inner.render(request)


class _Server:
    def __init__(self, url: str, counter: _Counting, http: Any) -> None:
        self.url = url
        self.counter = counter
        self.http = http

    async def post(
        self, body: bytes, msg_id: str = "msg_1", secret: str = SECRET, ts: int | None = None
    ) -> tuple[int, Any, bytes]:
        stamp = int(time.time()) if ts is None else ts
        headers = headers_for(secret, msg_id, stamp, body)
        response = await self.http.post(self.url, data=body, headers=headers)
        content: bytes = await response.content()
        return response.code, response.headers, content


@asynccontextmanager
async def serving(receiver: WebhookReceiver) -> AsyncIterator[_Server]:
    from treq.client import HTTPClient
    from twisted.internet import reactor as _reactor
    from twisted.web.client import Agent, HTTPConnectionPool

    reactor: Any = _reactor
    counter = _Counting(receiver)
    site: Any = Site  # twisted.web.server is only partly annotated
    port: Any = reactor.listenTCP(0, site(counter), interface="127.0.0.1")
    pool: Any = HTTPConnectionPool
    pool = pool(reactor, persistent=False)
    http = HTTPClient(Agent(reactor, pool=pool))
    try:
        yield _Server(f"http://127.0.0.1:{port.getHost().port}/hooks", counter, http)
    finally:
        await pool.closeCachedConnections()
        await port.stopListening()


async def until(predicate: Callable[[], bool], limit: float = 10.0) -> None:
    from twisted.internet import reactor

    deadline = time.monotonic() + limit
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await deferLater(cast(Any, reactor), 0.01, lambda: None)


EVENT = {"type": "job.done", "timestamp": "2026-01-01T00:00:00Z", "data": {"id": "j", "seq": 4}}
EVENT_BODY = json.dumps(EVENT).encode()


@ensure_deferred
async def test_receiver_accepts_and_dedupes() -> None:
    seen: list[dict[str, Any]] = []
    async with serving(WebhookReceiver(SECRET, seen.append)) as server:
        code, _, body = await server.post(EVENT_BODY, "msg_a")
        assert (code, body) == (204, b"")
        assert seen == [EVENT]
        code, _, _ = await server.post(EVENT_BODY, "msg_a")  # redelivery
        assert code == 204
        assert seen == [EVENT]
        code, _, _ = await server.post(EVENT_BODY, "msg_b")
        assert code == 204
        assert len(seen) == 2


@ensure_deferred
async def test_receiver_refuses_bad_signature() -> None:
    seen: list[dict[str, Any]] = []
    async with serving(WebhookReceiver(SECRET, seen.append)) as server:
        code, headers, body = await server.post(EVENT_BODY, secret=generate_secret())
        assert code == 401
        assert headers.getRawHeaders(b"content-type") == [b"application/json"]
        assert "signature" in json.loads(body)["error"]
        code, _, body = await server.post(EVENT_BODY, ts=int(time.time()) - 3600)
        assert code == 401
        assert "error" in json.loads(body)
        response = await server.http.post(server.url, data=EVENT_BODY)  # no headers at all
        assert response.code == 401
        await response.content()
        assert seen == []


@ensure_deferred
async def test_receiver_answers_400_for_malformed_body() -> None:
    seen: list[dict[str, Any]] = []
    async with serving(WebhookReceiver(SECRET, seen.append)) as server:
        code, _, body = await server.post(b"[1,2,3]")
        assert code == 400
        assert "error" in json.loads(body)
        assert seen == []


@ensure_deferred
async def test_receiver_is_post_only() -> None:
    async with serving(WebhookReceiver(SECRET, lambda e: None)) as server:
        for method in ("get", "put", "delete"):
            response = await getattr(server.http, method)(server.url)
            assert response.code == 405
            assert response.headers.getRawHeaders(b"allow") == [b"POST"]
            await response.content()


@ensure_deferred
async def test_receiver_handler_failure_is_500_and_not_remembered() -> None:
    calls: list[dict[str, Any]] = []

    def flaky(event: dict[str, Any]) -> None:
        calls.append(event)
        if len(calls) == 1:
            raise RuntimeError("database down")

    async with serving(WebhookReceiver(SECRET, flaky)) as server:
        code, _, body = await server.post(EVENT_BODY, "msg_f")
        assert code == 500
        assert "error" in json.loads(body)
        code, _, _ = await server.post(EVENT_BODY, "msg_f")  # the sender retries
        assert code == 204
        assert len(calls) == 2


@ensure_deferred
async def test_receiver_waits_for_async_handler_and_joins_inflight_duplicates() -> None:
    gate: Deferred[None] = Deferred()
    calls: list[dict[str, Any]] = []

    def slow(event: dict[str, Any]) -> Deferred[None]:
        calls.append(event)
        return gate

    async with serving(WebhookReceiver(SECRET, slow)) as server:
        first = Deferred.fromCoroutine(server.post(EVENT_BODY, "msg_s"))
        await until(lambda: server.counter.count == 1)
        second = Deferred.fromCoroutine(server.post(EVENT_BODY, "msg_s"))
        await until(lambda: server.counter.count == 2)
        assert not first.called and not second.called  # both wait for the handler
        assert len(calls) == 1
        gate.callback(None)
        assert (await first)[0] == 204
        assert (await second)[0] == 204
        assert len(calls) == 1


@ensure_deferred
async def test_receiver_accepts_coroutine_handler() -> None:
    from twisted.internet import reactor

    seen: list[dict[str, Any]] = []

    async def handler(event: dict[str, Any]) -> None:
        await deferLater(cast(Any, reactor), 0.01, lambda: None)
        seen.append(event)

    async with serving(WebhookReceiver(SECRET, handler)) as server:
        code, _, _ = await server.post(EVENT_BODY, "msg_c")
        assert code == 204
        assert seen == [EVENT]


@ensure_deferred
async def test_receiver_forgets_oldest_ids_beyond_its_bound() -> None:
    seen: list[dict[str, Any]] = []
    async with serving(WebhookReceiver(SECRET, seen.append, remember=2)) as server:
        for msg_id in ("m1", "m2", "m3", "m3", "m2", "m1"):
            code, _, _ = await server.post(EVENT_BODY, msg_id)
            assert code == 204
        # m1 was evicted by m3, so its redelivery is handled again; m2, m3 were remembered
        assert len(seen) == 4


def test_receiver_refuses_malformed_secret_at_construction() -> None:
    with pytest.raises(InvalidSecret):
        WebhookReceiver("whsec_???", lambda e: None)
