"""An in-process stack for integration tests: the simulator, the real daemon, an HTTP client.

``async with`` is not available to pytest-twisted tests in a fixture-friendly
way, so tests call ``stack = await start_stack(tmp_path, ...)`` and
``await stack.stop()`` in a ``finally``. Everything is on loopback and
everything is closed by ``stop()``, so the leak guard stays quiet.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import treq
from attrs import define
from twisted.internet import reactor as _reactor
from twisted.internet.task import deferLater
from twisted.web.client import HTTPConnectionPool

from foreman.app.config import Config
from foreman.app.daemon import Daemon
from foreman.testing import OllamaSimulator

reactor: Any = _reactor

TERMINAL = ("done", "failed", "cancelled")


@define
class Response:
    status: int
    headers: Any
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@define
class Stack:
    sim: OllamaSimulator
    daemon: Daemon
    pool: HTTPConnectionPool

    @property
    def url(self) -> str:
        return self.daemon.url

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
        raw: bytes | None = None,
    ) -> Response:
        hdrs: dict[bytes | str, list[bytes | str]] = {k: [v] for k, v in (headers or {}).items()}
        data = raw
        if body is not None:
            data = json.dumps(body).encode()
            hdrs.setdefault("Content-Type", ["application/json"])
        response = await treq.request(
            method, self.url + path, data=data, headers=hdrs, pool=self.pool
        )
        content = await treq.content(response)
        return Response(response.code, response.headers, content)

    async def get(self, path: str, **kw: Any) -> Response:
        return await self.request("GET", path, **kw)

    async def post(self, path: str, body: Any = None, **kw: Any) -> Response:
        return await self.request("POST", path, body, **kw)

    async def submit(self, request: dict[str, Any], **fields: Any) -> dict[str, Any]:
        response = await self.post("/jobs", {"request": request, **fields})
        assert response.status == 202, response.body
        job: dict[str, Any] = response.json()
        return job

    async def wait_job(self, job_id: str, timeout: float = 30.0) -> dict[str, Any]:
        """Long-poll until the job is terminal."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            assert left > 0, f"job {job_id} not finished in {timeout}s"
            response = await self.get(f"/jobs/{job_id}?wait={min(left, 10):.2f}")
            assert response.status == 200, response.body
            job: dict[str, Any] = response.json()
            if job["state"] in TERMINAL:
                return job

    async def stop(self) -> None:
        await self.pool.closeCachedConnections()
        await self.daemon.stop()
        await self.sim.close()


async def start_stack(tmp_path: Path, sim: OllamaSimulator | None = None, **config: Any) -> Stack:
    sim = sim or OllamaSimulator(
        models=("llama3.2", "qwen3", "nomic-embed-text"), token_rate=200.0, load_time=0.05
    )
    if sim.port is None:
        await sim.listen("tcp:0:interface=127.0.0.1")
    cfg = Config(
        listen="tcp:0:interface=127.0.0.1",
        target_url=sim.url,
        data_dir=tmp_path / "data",
        webhook_allow_private=True,
    )
    cfg = attrs.evolve(cfg, **config)
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    cfg.artifacts_dir.mkdir(exist_ok=True)
    try:
        daemon = await Daemon.start(cfg, reactor)
    except BaseException:
        await sim.close()
        raise
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = 32
    stack = Stack(sim, daemon, pool)
    await until(lambda: daemon.monitor is not None and daemon.monitor.state == "up")
    return stack


async def until(predicate: Any, timeout: float = 10.0, interval: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await deferLater(reactor, interval, lambda: None)


@asynccontextmanager
async def running_simulator(**kwargs: Any) -> AsyncIterator[OllamaSimulator]:
    """``async with``: a simulator listening on loopback, closed afterwards."""
    options: dict[str, Any] = {"load_time": 0.05, **kwargs}
    sim = OllamaSimulator(**options)
    await sim.listen("tcp:0:interface=127.0.0.1")
    try:
        yield sim
    finally:
        await sim.close()


def chat(model: str, content: str = "hello", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}
