"""Streaming through the proxy: chunks as they come, and backpressure instead of memory."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

import psutil
import pytest_twisted
import treq
from twisted.internet import reactor as _reactor
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThread

from foreman.testing import OllamaSimulator
from tests.test_proxy_support import EchoUpstream, Http, running

reactor: Any = _reactor

MiB = 1024 * 1024


@pytest_twisted.ensureDeferred
async def test_go_style_client_streams_ndjson_incrementally(tmp_path: Path) -> None:
    """A plain HTTP client with a Bearer token, parsing NDJSON as bytes arrive."""
    rate, tokens = 20.0, 12
    sim = OllamaSimulator(token_rate=rate, load_time=0.0, reply_tokens=tokens)
    http = Http()
    try:
        async with running(tmp_path, sim=sim, api_tokens=("go-client-token",)) as (daemon, _):
            body = {
                "model": "llama3.2",
                "messages": [{"role": "user", "content": "stream please"}],
                "stream": True,
            }
            headers: dict[bytes | str, bytes | str] = {
                b"Authorization": b"Bearer go-client-token",
                b"Content-Type": b"application/json",
            }
            response = await http.client.post(
                daemon.url + "/api/chat",
                data=json.dumps(body).encode(),
                headers=headers,
            )
            assert response.code == 200
            assert response.headers.getRawHeaders(b"x-accel-buffering") == [b"no"]
            buffer = b""
            chunks: list[tuple[float, dict[str, Any]]] = []

            def collect(data: bytes) -> None:
                nonlocal buffer
                buffer += data
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    chunks.append((time.monotonic(), json.loads(line)))

            await treq.collect(response, collect)
            assert buffer == b""
            assert chunks[-1][1]["done"] is True
            text = "".join(c["message"]["content"] for _, c in chunks)
            assert len(text.split()) == tokens
            # arrival spread as the simulator sends them, not one burst at the end
            span = chunks[-2][0] - chunks[0][0]
            assert span >= (tokens - 1) / rate * 0.5, span
            (seen,) = [r for r in sim.requests if r.path == "/api/chat"]
            assert seen.authorization is None  # the client's token never reaches the target
    finally:
        await http.close()


@pytest_twisted.ensureDeferred
async def test_slow_reader_pauses_the_target_instead_of_growing_memory(tmp_path: Path) -> None:
    """200 MiB from a fast target to a stalled, then slow, reader: RSS stays flat."""
    total = 200 * MiB
    echo = EchoUpstream()
    await echo.listen()
    process = psutil.Process()
    peak = [0]

    def sample() -> None:
        peak[0] = max(peak[0], process.memory_info().rss)

    sampler = LoopingCall(sample)
    try:
        async with running(tmp_path, target_url=echo.url) as (daemon, _):
            host, port = daemon.url.split("://", 1)[1].split(":")
            baseline = process.memory_info().rss
            sampler.start(0.02)

            def read_slowly() -> tuple[int, bool]:
                sock = socket.create_connection((host, int(port)), timeout=30)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 256 * 1024)
                try:
                    sock.sendall(
                        b"GET /big?bytes=%d HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                        % total
                    )
                    received = 0
                    while received < MiB:  # read a little, then stall
                        received += len(sock.recv(65536))
                    time.sleep(1.5)
                    flood = echo.floods[0]  # the target, held back while we stall:
                    stalled_pauses = flood.paused and flood.left > total // 2
                    while True:
                        data = sock.recv(65536)
                        if not data:
                            return received, stalled_pauses
                        received += len(data)
                finally:
                    sock.close()

            received, paused = await deferToThread(read_slowly)
            sampler.stop()
            sample()
            head_size = received - total
            assert 0 < head_size < 2000, head_size  # all the body, plus the response head
            assert paused, "the target was never paused"
            growth = (peak[0] - baseline) / MiB
            assert growth < 60, f"RSS grew {growth:.0f} MiB while {total // MiB} MiB flowed"
    finally:
        if sampler.running:
            sampler.stop()
        await echo.close()
