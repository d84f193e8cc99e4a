"""Standard Webhooks (standardwebhooks.com) signing and verification.

foreman signs every delivery the way the Standard Webhooks libraries expect,
so a receiver may verify with this module, with the ``standardwebhooks``
package, or by hand:

* headers ``webhook-id``, ``webhook-timestamp`` (integer Unix seconds) and
  ``webhook-signature``: ``v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">``,
  several space-separated entries while keys rotate;
* the key is the base64 text after ``whsec_`` in the secret;
* the timestamp must be within ``tolerance`` seconds of the receiver's clock
  (default 5 minutes, both directions), which bounds replays.

Verify inside a handler of your own::

    from foreman.webhooks import WebhookVerificationError, verify

    try:
        event = verify(secret, request.requestHeaders, raw_body)
    except WebhookVerificationError:
        ...  # answer 401

Or mount the ready ``twisted.web`` resource, which also deduplicates
redeliveries (delivery is at-least-once) by ``webhook-id``::

    from twisted.internet import reactor
    from twisted.web.resource import Resource
    from twisted.web.server import Site
    from foreman.webhooks import WebhookReceiver

    def on_event(event: dict) -> None:  # may also return a Deferred/coroutine
        print(event["type"], event["data"]["id"])

    root = Resource()
    root.putChild(b"hooks", WebhookReceiver("whsec_...", on_event))
    reactor.listenTCP(8080, Site(root))
    reactor.run()

The receiver answers 204 once ``on_event`` has succeeded (or for an id it has
already handled), 401 for a bad signature/timestamp/headers, 400 for a body
that is not a JSON object, 500 if ``on_event`` fails (foreman then retries),
405 for anything but POST.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import inspect
import json
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeAlias

from twisted.internet.defer import Deferred, ensureDeferred, fail
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

__all__ = [
    "SECRET_PREFIX",
    "HeadersLike",
    "InvalidHeaders",
    "InvalidSecret",
    "InvalidSignature",
    "MalformedPayload",
    "MissingHeaders",
    "TimestampOutOfTolerance",
    "WebhookReceiver",
    "WebhookVerificationError",
    "generate_secret",
    "headers_for",
    "secret_bytes",
    "sign",
    "verify",
    "verify_signature",
]

SECRET_PREFIX = "whsec_"
DEFAULT_TOLERANCE = 300
_SECRET_BYTES = 24  # Standard Webhooks asks for 24 to 64 bytes of key

HeadersLike: TypeAlias = Headers | Mapping[Any, Any]
"""Twisted ``Headers`` or any mapping with str/bytes keys and str/bytes (or
lists of them) values; names are matched case-insensitively."""

EventHandler: TypeAlias = Callable[[dict[str, Any]], Deferred[Any] | Awaitable[Any] | None]

_log = Logger()


class InvalidSecret(ValueError):
    """The secret is not ``whsec_`` followed by non-empty base64."""


class WebhookVerificationError(Exception):
    """A delivery failed verification; do not trust it."""


class InvalidHeaders(WebhookVerificationError):
    """A required header is missing or unparseable."""


class MissingHeaders(InvalidHeaders):
    """``webhook-id``, ``webhook-timestamp`` or ``webhook-signature`` is absent."""


class TimestampOutOfTolerance(WebhookVerificationError):
    """The timestamp is too old or too far in the future (replay protection)."""


class InvalidSignature(WebhookVerificationError):
    """No ``v1`` signature in the header matches."""


class MalformedPayload(WebhookVerificationError):
    """The signature is good but the body is not a UTF-8 JSON object."""


def generate_secret() -> str:
    """A fresh random secret, ``whsec_`` + base64 of 24 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(_SECRET_BYTES)).decode("ascii")


def secret_bytes(secret: str) -> bytes:
    """The HMAC key inside a ``whsec_`` secret (the prefix is optional; padding
    may be omitted, as some senders do)."""
    text = secret.strip()
    if text.startswith(SECRET_PREFIX):
        text = text[len(SECRET_PREFIX) :]
    text += "=" * (-len(text) % 4)
    try:
        key = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise InvalidSecret("webhook secret must be 'whsec_' followed by base64") from e
    if not key:
        raise InvalidSecret("webhook secret is empty")
    return key


def _signature(key: bytes, msg_id: str, timestamp: int, body: bytes) -> bytes:
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return hmac.new(key, signed, hashlib.sha256).digest()


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value: ``v1,<base64 HMAC-SHA256>``."""
    digest = _signature(secret_bytes(secret), msg_id, int(timestamp), body)
    return "v1," + base64.b64encode(digest).decode("ascii")


def headers_for(secret: str, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """All headers a delivery of ``body`` carries."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(timestamp)),
        "webhook-signature": sign(secret, msg_id, timestamp, body),
        "content-type": "application/json",
    }


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("latin-1")
    return str(value)


def _header_values(headers: HeadersLike, name: str) -> list[str]:
    """Every value of header ``name`` (lower case), whatever the container."""
    if isinstance(headers, Headers):
        raw = headers.getRawHeaders(name.encode("ascii")) or []
        return [_text(v) for v in raw]
    values: list[str] = []
    for key, value in headers.items():
        if _text(key).lower() != name:
            continue
        if isinstance(value, list | tuple):
            values.extend(_text(v) for v in value)
        else:
            values.append(_text(value))
    return values


def _single_header(headers: HeadersLike, name: str) -> str:
    values = {v.strip() for v in _header_values(headers, name)}
    values.discard("")
    if not values:
        raise MissingHeaders(f"missing {name} header")
    if len(values) > 1:
        raise InvalidHeaders(f"conflicting {name} headers")
    return values.pop()


def verify_signature(
    secret: str,
    headers: HeadersLike,
    body: bytes,
    tolerance: float = DEFAULT_TOLERANCE,
    now: float | None = None,
) -> str:
    """Check headers and signature of ``body``; return the ``webhook-id``.

    Raises a ``WebhookVerificationError`` subclass. Every ``v1`` entry of the
    signature header is tried (key rotation), each in constant time.
    """
    msg_id = _single_header(headers, "webhook-id")
    ts_text = _single_header(headers, "webhook-timestamp")
    sig_text = " ".join(_header_values(headers, "webhook-signature")).strip()
    if not sig_text:
        raise MissingHeaders("missing webhook-signature header")
    if not ts_text.isascii() or not ts_text.isdigit():
        raise InvalidHeaders("webhook-timestamp is not integer Unix seconds")
    timestamp = int(ts_text)
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance:
        raise TimestampOutOfTolerance(
            f"webhook-timestamp {timestamp} is more than {tolerance:g} s from now"
        )
    expected = _signature(secret_bytes(secret), msg_id, timestamp, body)
    matched = False
    for entry in sig_text.split():
        version, _, encoded = entry.partition(",")
        if version != "v1":
            continue
        try:
            candidate = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            continue
        # No early exit: the time taken does not depend on which entry matches.
        matched |= hmac.compare_digest(expected, candidate)
    if not matched:
        raise InvalidSignature("no matching v1 signature")
    return msg_id


def verify(
    secret: str,
    headers: HeadersLike,
    body: bytes,
    tolerance: float = DEFAULT_TOLERANCE,
    now: float | None = None,
) -> dict[str, Any]:
    """Verify a delivery and return its JSON event (a dict).

    Raises ``MissingHeaders``/``InvalidHeaders``, ``TimestampOutOfTolerance``,
    ``InvalidSignature`` or ``MalformedPayload`` (all ``WebhookVerificationError``).
    """
    verify_signature(secret, headers, body, tolerance, now)
    return _parse_event(body)


def _parse_event(body: bytes) -> dict[str, Any]:
    try:
        event = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise MalformedPayload("body is not UTF-8 JSON") from e
    if not isinstance(event, dict):
        raise MalformedPayload("body is not a JSON object")
    return event


class WebhookReceiver(Resource):
    """A ``twisted.web`` resource that receives foreman webhooks.

    Verifies each POST, hands the event to ``on_event`` and answers 204 once
    it has succeeded. Deliveries are at-least-once, so the ids of the last
    ``remember`` handled events are kept and a redelivery is answered 204
    without calling ``on_event`` again; a redelivery that arrives while the
    first copy is still being handled waits for that outcome.
    """

    isLeaf = True

    def __init__(
        self,
        secret: str,
        on_event: EventHandler,
        tolerance: float = DEFAULT_TOLERANCE,
        remember: int = 10_000,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call,unused-ignore]
        secret_bytes(secret)  # fail at construction, not on the first delivery
        if remember < 1:
            raise ValueError("remember must be >= 1")
        self._secret = secret
        self._on_event = on_event
        self._tolerance = tolerance
        self._remember = remember
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._inflight: dict[str, list[Deferred[None]]] = {}

    def render(self, request: Request) -> bytes | int:
        req: Any = request  # twisted.web's Request is only partly annotated
        if request.method != b"POST":
            req.setHeader(b"allow", b"POST")
            return _json_error(request, 405, "method not allowed")
        body = request.content.read() if request.content is not None else b""
        try:
            msg_id = verify_signature(self._secret, request.requestHeaders, body, self._tolerance)
            event = _parse_event(body)
        except MalformedPayload as e:
            return _json_error(request, 400, str(e))
        except WebhookVerificationError as e:
            return _json_error(request, 401, str(e))

        if msg_id in self._seen:
            self._seen.move_to_end(msg_id)
            request.setResponseCode(204)
            return b""
        gone = _track_finish(request)
        done: Deferred[None] = Deferred()
        done.addCallbacks(
            lambda _: _finish(request, gone, 204, b""),
            lambda _: _finish(request, gone, 500, _error_body("event handler failed")),
        )
        first = msg_id not in self._inflight
        self._inflight.setdefault(msg_id, []).append(done)
        if first:
            self._handle(msg_id, event)
        return NOT_DONE_YET

    def _handle(self, msg_id: str, event: dict[str, Any]) -> None:
        try:
            result = self._on_event(event)
            if isinstance(result, Deferred):
                d: Deferred[Any] = result
            elif inspect.isawaitable(result):
                d = ensureDeferred(_await(result))
            else:
                d = Deferred()
                d.callback(result)
        except Exception:
            d = fail()
        d.addCallbacks(lambda _: self._settle(msg_id, None), lambda f: self._settle(msg_id, f))

    def _settle(self, msg_id: str, failure: Failure | None) -> None:
        waiters = self._inflight.pop(msg_id, [])
        if failure is None:
            self._seen[msg_id] = None
            while len(self._seen) > self._remember:
                self._seen.popitem(last=False)
        else:
            _log.failure("webhook handler failed for {msg_id}", failure, msg_id=msg_id)
        for waiter in waiters:
            if failure is None:
                waiter.callback(None)
            else:
                waiter.errback(failure)


async def _await(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


def _track_finish(request: Request) -> list[bool]:
    """A flag that turns True if the client goes away before we answer."""
    gone = [False]

    def _lost(_: object) -> None:
        gone[0] = True

    request.notifyFinish().addErrback(_lost)
    return gone


def _finish(request: Request, gone: list[bool], code: int, body: bytes) -> None:
    req: Any = request
    if gone[0]:
        return
    request.setResponseCode(code)
    if body:
        req.setHeader(b"content-type", b"application/json")
        req.write(body)
    req.finish()


def _error_body(message: str) -> bytes:
    return json.dumps({"error": message}).encode()


def _json_error(request: Request, code: int, message: str) -> bytes:
    req: Any = request
    req.setResponseCode(code)
    req.setHeader(b"content-type", b"application/json")
    return _error_body(message)
