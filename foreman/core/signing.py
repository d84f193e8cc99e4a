"""Standard Webhooks (standardwebhooks.com) signing and verification (pure).

The daemon signs deliveries with this and receivers verify with it, so it sits
in the core: no Twisted, and no clock. Verification takes ``now`` from the
caller; the public ``foreman.webhooks`` fills it in from the wall clock.

* headers ``webhook-id``, ``webhook-timestamp`` (integer Unix seconds) and
  ``webhook-signature``: ``v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">``,
  several space-separated entries while keys rotate;
* the key is the base64 text after ``whsec_`` in the secret;
* the timestamp must be within ``tolerance`` seconds of ``now`` (default
  5 minutes, both directions), which bounds replays.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, TypeAlias, runtime_checkable

__all__ = [
    "DEFAULT_TOLERANCE",
    "SECRET_PREFIX",
    "HeadersLike",
    "InvalidHeaders",
    "InvalidSecret",
    "InvalidSignature",
    "MalformedPayload",
    "MissingHeaders",
    "RawHeaders",
    "TimestampOutOfTolerance",
    "WebhookVerificationError",
    "generate_secret",
    "headers_for",
    "parse_event",
    "secret_bytes",
    "sign",
    "verify",
    "verify_signature",
]

SECRET_PREFIX = "whsec_"
DEFAULT_TOLERANCE = 300
_SECRET_BYTES = 24  # Standard Webhooks asks for 24 to 64 bytes of key


@runtime_checkable
class RawHeaders(Protocol):
    """What verification needs of Twisted's ``Headers``, named without importing Twisted."""

    def getRawHeaders(self, name: bytes) -> Sequence[bytes] | None: ...


HeadersLike: TypeAlias = RawHeaders | Mapping[Any, Any]
"""Twisted ``Headers`` or any mapping with str/bytes keys and str/bytes (or
lists of them) values; names are matched case-insensitively."""


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
    if isinstance(headers, RawHeaders):
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
    *,
    now: float,
    tolerance: float = DEFAULT_TOLERANCE,
) -> str:
    """Check headers and signature of ``body`` at Unix time ``now``; return the ``webhook-id``.

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
    if abs(now - timestamp) > tolerance:
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
    *,
    now: float,
    tolerance: float = DEFAULT_TOLERANCE,
) -> dict[str, Any]:
    """Verify a delivery at Unix time ``now`` and return its JSON event (a dict).

    Raises ``MissingHeaders``/``InvalidHeaders``, ``TimestampOutOfTolerance``,
    ``InvalidSignature`` or ``MalformedPayload`` (all ``WebhookVerificationError``).
    """
    verify_signature(secret, headers, body, now=now, tolerance=tolerance)
    return parse_event(body)


def parse_event(body: bytes) -> dict[str, Any]:
    """The event in a verified body; ``MalformedPayload`` unless a UTF-8 JSON object."""
    try:
        event = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise MalformedPayload("body is not UTF-8 JSON") from e
    if not isinstance(event, dict):
        raise MalformedPayload("body is not a JSON object")
    return event
