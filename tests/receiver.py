"""A scriptable webhook receiver on loopback, recording what foreman sends."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from attrs import define, field
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.interfaces import IListeningPort
from twisted.web.resource import Resource
from twisted.web.server import Site

from tests.harness import reactor


@define
class Delivery:
    headers: dict[str, str]
    body: bytes
    at: float
    status: int

    def event(self) -> dict[str, Any]:
        found: dict[str, Any] = json.loads(self.body)
        return found


@define
class Receiver:
    """Answers each POST with ``answer(n)`` → (status, extra headers); records everything."""

    answer: Callable[[int], tuple[int, dict[str, str]]] = lambda n: (204, {})
    deliveries: list[Delivery] = field(factory=list)
    port: IListeningPort | None = None
    port_number: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port_number}/hook"

    async def listen(self, port: int = 0) -> None:
        receiver = self

        class Hook(Resource):
            isLeaf = True

            def render_POST(self, request: Any) -> bytes:
                status, extra = receiver.answer(len(receiver.deliveries))
                headers = {
                    k.decode().lower(): v[-1].decode()
                    for k, v in request.requestHeaders.getAllRawHeaders()
                }
                receiver.deliveries.append(
                    Delivery(headers, request.content.read(), time.monotonic(), status)
                )
                request.setResponseCode(status)
                for name, value in extra.items():
                    request.setHeader(name.encode(), value.encode())
                return b""

        site = Site(Hook())  # type: ignore[no-untyped-call]
        site.noisy = False
        self.port = await TCP4ServerEndpoint(reactor, port, interface="127.0.0.1").listen(site)
        self.port_number = self.port.getHost().port  # type: ignore[union-attr]

    async def close(self) -> None:
        if self.port is not None:
            port, self.port = self.port, None
            stopping = port.stopListening()
            if stopping is not None:
                await stopping

    def ok(self) -> list[Delivery]:
        return [d for d in self.deliveries if 200 <= d.status < 300]

    def types(self) -> list[str]:
        return [d.event()["type"] for d in self.ok()]
