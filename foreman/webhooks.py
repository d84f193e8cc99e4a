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

import inspect
import json
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, TypeAlias

from twisted.internet.defer import Deferred, ensureDeferred, fail
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from foreman.core import signing

# The pure part lives in foreman.core.signing (the daemon signs with it); these
# are the same objects, re-exported so this public module keeps every name.
from foreman.core.signing import (
    DEFAULT_TOLERANCE,
    SECRET_PREFIX,
    HeadersLike,
    InvalidHeaders,
    InvalidSecret,
    InvalidSignature,
    MalformedPayload,
    MissingHeaders,
    TimestampOutOfTolerance,
    WebhookVerificationError,
    generate_secret,
    headers_for,
    secret_bytes,
    sign,
)

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

EventHandler: TypeAlias = Callable[[dict[str, Any]], Deferred[Any] | Awaitable[Any] | None]

_log = Logger()


def verify_signature(
    secret: str,
    headers: HeadersLike,
    body: bytes,
    tolerance: float = DEFAULT_TOLERANCE,
    now: float | None = None,
) -> str:
    """Check headers and signature of ``body``; return the ``webhook-id``.

    ``now`` (Unix seconds) defaults to the wall clock. Raises a
    ``WebhookVerificationError`` subclass. Every ``v1`` entry of the signature
    header is tried (key rotation), each in constant time.
    """
    current = time.time() if now is None else now
    return signing.verify_signature(secret, headers, body, now=current, tolerance=tolerance)


def verify(
    secret: str,
    headers: HeadersLike,
    body: bytes,
    tolerance: float = DEFAULT_TOLERANCE,
    now: float | None = None,
) -> dict[str, Any]:
    """Verify a delivery and return its JSON event (a dict).

    ``now`` (Unix seconds) defaults to the wall clock. Raises
    ``MissingHeaders``/``InvalidHeaders``, ``TimestampOutOfTolerance``,
    ``InvalidSignature`` or ``MalformedPayload`` (all ``WebhookVerificationError``).
    """
    current = time.time() if now is None else now
    return signing.verify(secret, headers, body, now=current, tolerance=tolerance)


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
            event = signing.parse_event(body)
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
