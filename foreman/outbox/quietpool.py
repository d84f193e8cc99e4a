"""An HTTP connection pool whose connections do not log their factory's start and stop.

Twisted's ``HTTPConnectionPool`` makes one ``_HTTP11ClientFactory`` per new
connection, and each logs "Starting factory …" and "Stopping factory …" at
info level. Webhook deliveries do not keep connections, so that was two lines
of noise per delivery. ``foreman.target.upstream`` quiets the target's pool
the same way (its copy is private to that layer).
"""

from __future__ import annotations

from typing import Any

from twisted.web.client import HTTPConnectionPool, _HTTP11ClientFactory

__all__ = ["QuietPool"]


class _QuietFactory(_HTTP11ClientFactory):
    noisy = False


class QuietPool(HTTPConnectionPool):
    """``HTTPConnectionPool`` without the per-connection factory log lines."""

    _factory = _QuietFactory

    def __init__(self, reactor: Any, persistent: bool = True) -> None:
        # named rather than super(): mypy exempts calls into untyped Twisted only by name
        HTTPConnectionPool.__init__(self, reactor, persistent)
