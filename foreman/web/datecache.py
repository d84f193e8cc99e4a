"""The ``Date`` header, formatted once a second instead of once a response.

``twisted.web.server.Request.process`` stamps every response with
``datetimeToString()``, which formats the time afresh each call: about 3 % of
the daemon's busy time on small proxied requests (docs/performance.md). The
header has one-second resolution, so the text of the current second is kept
and reused. Installed once, by the site module; any other call (with a time
given) goes to Twisted's own function.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from twisted.web import server

__all__ = ["install", "now_text"]

_original: Callable[..., bytes] = vars(server)["datetimeToString"]
_cached: tuple[int, bytes] = (-1, b"")


def _now_text(msSinceEpoch: float | None = None) -> bytes:
    global _cached
    if msSinceEpoch is not None:
        return _original(msSinceEpoch)
    second = int(time.time())
    if _cached[0] != second:
        _cached = (second, _original(second))
    return _cached[1]


def now_text() -> bytes:
    """The ``Date`` header's value for now."""
    return _now_text()


def install() -> None:
    """Use the cached text for ``twisted.web.server``'s Date headers (idempotent)."""
    setattr(server, "datetimeToString", _now_text)  # noqa: B010 - a module global, on purpose
