"""A target whose stream ends cleanly but before its final chunk: not a finished job."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import attrs
import pytest_twisted
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.web.resource import Resource
from twisted.web.server import Site

from foreman.app.config import Config
from foreman.app.daemon import Daemon
from tests.harness import Stack, chat, reactor, until


class _CutTarget(Resource):
    """Answers like Ollama, except that chats stop after two chunks, without ``done``."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.chats = 0

    def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        if request.path == b"/api/version":
            return b'{"version": "0.0.0"}'
        return b'{"models": []}'

    def render_POST(self, request: Any) -> bytes:
        body = json.loads(request.content.read())
        request.setHeader(b"content-type", b"application/x-ndjson")
        if not body.get("messages"):
            return json.dumps(
                {"model": body["model"], "done": True, "done_reason": "load"}
            ).encode()
        self.chats += 1
        chunk = {"model": body["model"], "message": {"role": "assistant", "content": "a"}}
        return (json.dumps({**chunk, "done": False}) + "\n").encode() * 2


@pytest_twisted.ensureDeferred
async def test_a_stream_cut_short_is_retried_then_failed(tmp_path: Path) -> None:
    target = _CutTarget()
    site = Site(target)
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(site)
    url = f"http://127.0.0.1:{port.getHost().port}"  # type: ignore[attr-defined]
    config = attrs.evolve(
        Config(listen="tcp:0:interface=127.0.0.1", target_url=url, data_dir=tmp_path / "d"),
        max_attempts=2,
    )
    config.data_dir.mkdir()
    config.artifacts_dir.mkdir()
    daemon = await Daemon.start(config, reactor)
    from twisted.web.client import HTTPConnectionPool

    stack = Stack(sim=None, daemon=daemon, pool=HTTPConnectionPool(reactor))  # type: ignore[arg-type]
    try:
        monitor = daemon.monitor
        assert monitor is not None
        await until(lambda: monitor.state == "up")
        job = await stack.submit(chat("any"))
        final = await stack.wait_job(job["id"], timeout=30)
        assert final["state"] == "failed"
        assert final["error"]["code"] == "too_many_attempts"
        assert "final chunk" in final["error"]["message"]
        assert final["attempts"] == 2
        assert target.chats == 2
        assert not (config.artifacts_dir / job["id"] / "response.json").exists()
    finally:
        await stack.pool.closeCachedConnections()
        await daemon.stop()
        await port.stopListening()
