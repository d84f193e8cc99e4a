"""The running daemon: builds the parts, starts them in order, stops them in reverse.

``Daemon.start`` is what ``twistd foreman`` runs (through ``ForemanService``)
and what the integration tests run in-process, so both exercise the same
wiring.
"""

from __future__ import annotations

import time
from typing import Any

from attrs import define, field
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger

from foreman import __version__
from foreman.auth import TokenCheck
from foreman.config import Config
from foreman.routes import build_app
from foreman.site import ErrorResource, ForemanSite
from foreman.store import Store

__all__ = ["Daemon"]

_log = Logger()


@define
class Daemon:
    config: Config
    reactor: Any
    store: Store
    started_at: float = field(factory=time.monotonic)
    accepting: bool = False
    port: IListeningPort | None = None
    site: ForemanSite | None = None
    parts: list[Any] = field(factory=list)

    @classmethod
    async def start(cls, config: Config, reactor: Any | None = None) -> Daemon:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        store = Store(config.db_path)
        store.start()
        daemon = cls(config=config, reactor=reactor, store=store)
        try:
            await daemon._start()
        except BaseException:
            await daemon.stop()
            raise
        return daemon

    async def _start(self) -> None:
        own = build_app(self).resource()
        proxy = ErrorResource(501, "not_implemented", "the proxy is not built yet")
        self.site = ForemanSite(
            own, proxy, TokenCheck(self.config.api_tokens), self.config.max_body
        )
        endpoint = serverFromString(self.reactor, self.config.listen)
        self.port = await endpoint.listen(self.site)
        self.accepting = True
        _log.info(
            "foreman {version} listening on {url}, target {target}",
            version=__version__,
            url=self.url,
            target=self.config.target_url,
        )

    @property
    def url(self) -> str:
        assert self.port is not None
        host = self.port.getHost()
        address = getattr(host, "host", "127.0.0.1")
        if address in ("0.0.0.0", "::", ""):
            address = "127.0.0.1"
        if ":" in address:
            address = f"[{address}]"
        return f"http://{address}:{host.port}"  # type: ignore[attr-defined]

    def target_state(self) -> str:
        return "unknown"

    def status(self) -> dict[str, Any]:
        return {
            "version": __version__,
            "uptime_s": round(time.monotonic() - self.started_at, 3),
            "database": str(self.config.db_path),
            "target": {"url": self.config.target_url, "state": self.target_state()},
        }

    async def stop(self) -> None:
        """Stop listening, let running work finish (bounded), close the database."""
        self.accepting = False
        if self.port is not None:
            port, self.port = self.port, None
            stopping = port.stopListening()
            if stopping is not None:
                await stopping
        for part in reversed(self.parts):
            stopped = part.stop()
            if isinstance(stopped, Deferred):
                await stopped
        self.parts.clear()
        self.store.close()
