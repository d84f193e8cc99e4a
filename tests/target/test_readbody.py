"""Bounded body reads over loopback: a flood or a trickle closes the connection."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from foreman.target.readbody import (
    BodyTimeout,
    BodyTooLarge,
    HeadersTimeout,
    read_body,
    request_with_deadline,
)
from tests.harness import reactor


class Sender(Resource):
    """``/flood`` writes 64 KiB pieces forever, ``/trickle`` a byte a second, ``/ok`` a body."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.gone: list[Deferred[None]] = []
        self.timers: list[Any] = []

    def render_GET(self, request: Request) -> bytes | int:
        if request.path == b"/ok":
            return b"x" * 1000
        if request.path == b"/hang":
            self.gone.append(request.notifyFinish())
            request.notifyFinish().addErrback(lambda _: None)
            return NOT_DONE_YET
        gone = request.notifyFinish()
        self.gone.append(gone)
        gone.addErrback(lambda _: None)
        piece = b"y" * 65536 if request.path == b"/flood" else b"z"
        every = 0.0 if request.path == b"/flood" else 1.0

        def more() -> None:
            if request.finished or request.channel is None:
                return
            request.write(piece)
            self.timers.append(reactor.callLater(every, more))

        more()
        return NOT_DONE_YET


@asynccontextmanager
async def serving() -> AsyncIterator[tuple[Sender, Agent, str]]:
    """A Sender on loopback and an Agent for it; everything closed afterwards."""
    sender = Sender()
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Site(sender))
    pool = HTTPConnectionPool(reactor, persistent=False)
    try:
        yield sender, Agent(reactor, pool=pool), f"http://127.0.0.1:{port.getHost().port}"
    finally:
        for timer in sender.timers:
            if timer.active():
                timer.cancel()
        await pool.closeCachedConnections()
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_flood_past_the_limit_is_refused_and_the_connection_closed() -> None:
    async with serving() as (sender, agent, url):
        response = await agent.request(b"GET", (url + "/flood").encode())
        with pytest.raises(BodyTooLarge):
            await read_body(response, limit=1_000_000, timeout=10, clock=reactor)
        await sender.gone[0]  # the sender saw the connection close
        ok = await agent.request(b"GET", (url + "/ok").encode())
        assert await read_body(ok, limit=1000, timeout=10, clock=reactor) == b"x" * 1000


@pytest_twisted.ensureDeferred
async def test_a_trickle_past_the_deadline_is_cut_off() -> None:
    async with serving() as (sender, agent, url):
        response = await agent.request(b"GET", (url + "/trickle").encode())
        with pytest.raises(BodyTimeout):
            await read_body(response, limit=1_000_000, timeout=0.3, clock=reactor, keep=False)
        await sender.gone[0]


@pytest_twisted.ensureDeferred
async def test_headers_that_never_come_time_out() -> None:
    async with serving() as (_, agent, url):
        with pytest.raises(HeadersTimeout):
            await request_with_deadline(
                agent, b"GET", (url + "/hang").encode(), None, timeout=0.3, clock=reactor
            )
