"""Client Bearer-token check, in constant time."""

from __future__ import annotations

import hmac

__all__ = ["TokenCheck"]

# Open without a token: liveness checks and Ollama's "is it running" probe, and
# only for reading; any other method on them is relayed and must be authorised.
_OPEN_PATHS = frozenset({b"/", b"/healthz", b"/readyz"})
_OPEN_METHODS = frozenset({b"GET", b"HEAD"})


class TokenCheck:
    """Accepts any of the configured tokens; no tokens configured means open."""

    def __init__(self, tokens: tuple[str, ...] | None) -> None:
        self._tokens = tuple(t.encode() for t in tokens or ())

    @property
    def enabled(self) -> bool:
        return bool(self._tokens)

    def allows(self, method: bytes, path: bytes, authorization: bytes | None) -> bool:
        if not self._tokens or (path in _OPEN_PATHS and method in _OPEN_METHODS):
            return True
        if not authorization:
            return False
        scheme, _, presented = authorization.strip().partition(b" ")
        if scheme.lower() != b"bearer":
            return False
        presented = presented.strip()
        ok = False
        for token in self._tokens:
            # compare against every token so the time does not tell which matched
            ok |= hmac.compare_digest(presented, token)
        return ok
