"""Benchmark: streaming through foreman — 1 000 waiting clients, chunk latency, tokens/s,
1 000 concurrent relayed streams.

Run: ``.venv/bin/python bench/streaming.py`` (about 1.5 min; loopback only).
Prints markdown tables; ``--json PATH`` also writes them for ``bench/run_all.py``;
``--smoke`` is a tiny run (seconds) through every path.

Processes: a paced Ollama simulator (``--token-rate`` tokens/s), an unpaced
one (as fast as it can) and a canned pull upstream (4.), a ``twistd -n
foreman`` in front of each, and this process as the load (asyncio clients).

1. Memory: one long generation holds the worker; then ``--waiting`` clients
   each open a connection and send a streaming ``POST /api/chat``. They all
   wait in foreman's queue (no response headers yet). The daemon's RSS is
   sampled while they wait; then the long generation's client leaves (which
   cancels it upstream), the worker dispatches the waiting requests one by one
   and every client must receive its whole stream. RSS is sampled throughout.
2. Chunk latency: the simulator stamps each chunk's ``created_at`` (wall
   clock, µs) just before writing it; this process notes the wall clock when
   the chunk arrives. Direct and through-foreman streams alternate.
3. Throughput: one long unpaced stream, tokens/s direct and through foreman.
4. Many concurrent streams: foreman runs one inference request at a time, so
   1 000 concurrent streams cannot go through its inference routes (they would
   wait in the queue, as in 1.). What it does relay concurrently is every
   route it does not queue (``/api/pull`` and the other management routes,
   ``/api/tags``…, anything unknown): the same ``_Exchange`` relay and upstream
   client as inference, without admission and the worker. So
   ``--relay-streams`` clients each open a connection and send ``POST
   /api/pull``; a canned upstream (asyncio, one process) answers each with
   Ollama's chunked NDJSON progress stream: a manifest line at once, then,
   once every stream is open, ``rate x --relay-seconds`` progress lines per
   stream, spread evenly (stream j's chunk k is due at k/rate + j/(rate x
   streams)), each stamped with ``time.monotonic_ns()`` just before its write,
   then a final line. This process notes when each chunk arrives (the read
   that completed it) and afterwards checks that every stream got every chunk
   as a chunk of its own (chunks received == chunks sent, one line each: no
   coalescing). Direct and through-foreman rounds alternate; foreman's RSS is
   sampled and its CPU time read while it streams.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import shutil
import socket
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._proc import (
    PY,
    AioHTTP,
    Goal,
    Results,
    chat_body,
    header_lines,
    md_table,
    parse_rfc3339,
    pcts,
    raise_fd_limit,
    rss_mib,
    start_foreman,
    start_simulator,
)
from bench._util import Server, parse_args, request_bytes, spawn_ready, start_all, stop_all

HERE = Path(__file__).resolve()

MODEL = "llama3.2"
GOAL_RSS_MIB = 150.0
GOAL_ADDED_MS = 1.0
GOAL_RELAY_P99_MS = 0.3
WAVE = 25  # connections opened at once: stay under the listen backlog (50)
SMOKE = {
    "waiting": 30,
    "waiting_tokens": 2,
    "hold_tokens": 20_000,
    "token_rate": 2000.0,
    "streams": 1,
    "tokens": 20,
    "fast_tokens": 300,
    "fast_rounds": 1,
    "relay_streams": 50,
    "relay_rates": "10",
    "relay_seconds": 0.5,
    "relay_rounds": 1,
}


def stream_body(tokens: int, prompt: str) -> bytes:
    return json.dumps(
        chat_body(MODEL, prompt, stream=True, options={"num_predict": tokens})
    ).encode()


async def read_stream(conn: AioHTTP) -> tuple[int, list[tuple[bytes, float]]]:
    """Status and every NDJSON line with the wall-clock time its chunk arrived."""
    status, head = await conn.head()
    lines: list[tuple[bytes, float]] = []
    if status != 200:
        await conn.body(head)
        return status, lines
    pending = b""
    async for chunk in conn.chunks():
        now = time.time()
        pending += chunk
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            lines.append((line, now))
    return status, lines


# -- 1. memory with many waiting streams -------------------------------------------------


class Sampler:
    """Samples a process's RSS every ``interval`` seconds in the event loop."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        self.pid = pid
        self.interval = interval
        self.samples: list[float] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            self.samples.append(rss_mib(self.pid))
            await asyncio.sleep(self.interval)

    async def stop(self) -> float:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self.samples.append(rss_mib(self.pid))
        return max(self.samples)


async def queue_depth(conn: AioHTTP) -> int:
    _, status = await conn.json("GET", "/status")
    depth: int = status["queue"]["by_kind"].get("interactive", 0)
    return depth


async def many_waiting(
    url: str, pid: int, count: int, tokens: int, hold_tokens: int
) -> dict[str, Any]:
    control = await AioHTTP.open(url)
    idle = rss_mib(pid)
    # the long generation that holds the worker
    holder = await AioHTTP.open(url)
    holder.send("POST", "/api/chat", stream_body(hold_tokens, "hold the worker"))
    status, _ = await holder.head()
    if status != 200:
        raise RuntimeError(f"holder answered {status}")
    # Connect and send in waves, each admitted before the next: a connect completes
    # before the daemon accept()s it, so racing ahead overflows the listen backlog
    # (50) and the kernel drops SYNs (a 1 s retransmit each).
    conns: list[AioHTTP] = []
    t0 = time.monotonic()
    for start in range(0, count, WAVE):
        wave = await asyncio.gather(
            *(AioHTTP.open(url) for _ in range(start, min(count, start + WAVE)))
        )
        for i, conn in enumerate(wave, start):
            conn.send("POST", "/api/chat", stream_body(tokens, f"waiting client {i}"))
        conns += wave
        while await queue_depth(control) < len(conns):
            await asyncio.sleep(0.002)
            if time.monotonic() - t0 > 60:
                raise RuntimeError("the waiting requests never all reached the queue")
    queued_in = time.monotonic() - t0
    sampler = Sampler(pid, 0.05)
    sampler.start()
    await asyncio.sleep(1.0)  # settle: RSS while everyone waits
    waiting_peak = max(sampler.samples)
    # release: the holder leaves, its generation is cancelled, the queue drains
    readers = [asyncio.create_task(read_stream(c)) for c in conns]
    holder.close()
    t1 = time.monotonic()
    outcomes = await asyncio.gather(*readers)
    drained_in = time.monotonic() - t1
    overall_peak = await sampler.stop()
    complete = 0
    for status, lines in outcomes:
        if status == 200 and lines and json.loads(lines[-1][0]).get("done") is True:
            complete += 1
    for conn in conns:
        conn.close()
    after = rss_mib(pid)
    control.close()
    return {
        "idle": idle,
        "waiting": waiting_peak,
        "peak": overall_peak,
        "after": after,
        "queued_in": queued_in,
        "drained_in": drained_in,
        "complete": complete,
        "count": count,
    }


# -- 2. chunk latency, 3. throughput ---------------------------------------------------------


async def one_stream(url: str, tokens: int, prompt: str) -> list[tuple[float, float]]:
    """(created_at, received) for every token chunk of one streaming chat."""
    conn = await AioHTTP.open(url)
    try:
        conn.send("POST", "/api/chat", stream_body(tokens, prompt))
        status, lines = await read_stream(conn)
    finally:
        conn.close()
    if status != 200:
        raise RuntimeError(f"stream answered {status}")
    out = []
    for line, received in lines:
        doc = json.loads(line)
        if doc.get("done"):
            continue
        out.append((parse_rfc3339(doc["created_at"]), received))
    if len(out) != tokens:
        raise RuntimeError(f"expected {tokens} chunks, got {len(out)}")
    return out


async def chunk_latency(
    urls: dict[str, str], streams: int, tokens: int
) -> dict[str, dict[str, list[float]]]:
    found: dict[str, dict[str, list[float]]] = {name: {"delay": [], "gap": []} for name in urls}
    for url in urls.values():  # warm-up (loads the model, fills pools)
        await one_stream(url, 5, "warm up")
    for i in range(streams):
        for name, url in urls.items():
            chunks = await one_stream(url, tokens, f"latency stream {i}")
            found[name]["delay"] += [(r - c) * 1000 for c, r in chunks]
            found[name]["gap"] += [(b[1] - a[1]) * 1000 for a, b in itertools.pairwise(chunks)]
    return found


async def count_stream(url: str, tokens: int, prompt: str) -> tuple[int, float]:
    """Lines of one streaming chat and the CPU seconds this process spent reading them.

    Only newlines are counted (no JSON parsing), so the reader stays far below the
    rate the servers can produce.
    """
    conn = await AioHTTP.open(url)
    cpu = time.process_time()
    try:
        conn.send("POST", "/api/chat", stream_body(tokens, prompt))
        status, _ = await conn.head()
        if status != 200:
            raise RuntimeError(f"stream answered {status}")
        lines = 0
        last = b""
        async for chunk in conn.chunks():
            lines += chunk.count(b"\n")
            last = chunk
    finally:
        conn.close()
    if lines != tokens + 1 or b'"done":true' not in last.replace(b" ", b""):
        raise RuntimeError(f"expected {tokens} tokens and a final line, got {lines} lines")
    return lines, time.process_time() - cpu


async def throughput(
    urls: dict[str, str], tokens: int, rounds: int
) -> dict[str, list[tuple[float, float]]]:
    """Per path: (tokens/s, share of one core this reader used) for each round."""
    found: dict[str, list[tuple[float, float]]] = {name: [] for name in urls}
    for url in urls.values():
        await count_stream(url, 5, "warm up")
    for i in range(rounds):
        for name, url in urls.items():
            t0 = time.perf_counter()
            _, cpu = await count_stream(url, tokens, f"throughput {i}")
            elapsed = time.perf_counter() - t0
            found[name].append((tokens / elapsed, cpu / elapsed))
    return found


# -- 4. many concurrent streams, relayed without the queue ----------------------------------

PULL_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n"
)
PULL_LINE = (
    b'{"status":"pulling 8eeb52dfb3bb","digest":"sha256:8eeb52dfb3bb","total":2019377376,'
    b'"completed":%d,"s":%d,"i":%d,"t":%d}\n'
)
MANIFEST = b'{"status":"pulling manifest"}\n'
SUCCESS = b'{"status":"success"}\n'
_VERSION = b'{"version":"0.12.0"}'
_NO_MODELS = b'{"models":[]}'


def _frame(line: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(line), line)


def _json_reply(body: bytes) -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf-8\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )


class _PullState:
    def __init__(self) -> None:
        self.streams: list[asyncio.Transport] = []
        self.sent = 0
        self.pacing: asyncio.Task[None] | None = None


class _PullConn(asyncio.Protocol):
    """One connection to the canned pull upstream: requests parsed as they come."""

    def __init__(self, state: _PullState) -> None:
        self.state = state
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport in self.state.streams:
            self.state.streams.remove(self.transport)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            lines = self.buf[:end].split(b"\r\n")
            length = 0
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if len(self.buf) < end + 4 + length:
                return
            self.buf = self.buf[end + 4 + length :]
            method, target, _ = lines[0].split(b" ", 2)
            self.respond(method, target)

    def respond(self, method: bytes, target: bytes) -> None:
        transport = self.transport
        assert transport is not None
        path, _, query = target.partition(b"?")
        if method == b"POST" and path == b"/api/pull":
            transport.write(PULL_HEAD + _frame(MANIFEST))
            self.state.streams.append(transport)
        elif path == b"/_state":
            doc = {"streams": len(self.state.streams), "sent": self.state.sent}
            transport.write(_json_reply(json.dumps(doc).encode()))
        elif path == b"/_go":
            params = dict(p.split(b"=", 1) for p in query.split(b"&") if b"=" in p)
            streams, self.state.streams = list(self.state.streams), []
            self.state.sent = 0
            self.state.pacing = asyncio.ensure_future(
                _pace(self.state, streams, int(params[b"chunks"]), float(params[b"gap_ms"]))
            )
            transport.write(_json_reply(b"{}"))
        elif path == b"/api/version":
            transport.write(_json_reply(_VERSION))
        else:  # /api/ps, /api/tags and anything else: no models
            transport.write(_json_reply(_NO_MODELS))


async def _pace(
    state: _PullState, streams: list[asyncio.Transport], chunks: int, gap_ms: float
) -> None:
    """Chunk k of stream j is due at start + (k + j/n) x gap: the streams' chunks are spread
    evenly over each gap. Every chunk is stamped (monotonic ns) just before its write;
    chunks due in the same turn of the loop (its timers have ~1 ms resolution) go out
    one after another, each with its own stamp."""
    n = len(streams)
    gap = gap_ms / 1000.0
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.05
    total = chunks * n
    idx = 0
    while idx < total:
        now = loop.time()
        while idx < total:
            k, j = divmod(idx, n)
            if start + (k + j / n) * gap > now:
                break
            transport = streams[j]
            if not transport.is_closing():
                line = PULL_LINE % (k * 1000, j, k, time.monotonic_ns())
                transport.write(_frame(line))
            idx += 1
        state.sent = idx
        if idx < total:
            k, j = divmod(idx, n)
            await asyncio.sleep(max(0.0, start + (k + j / n) * gap - loop.time()))
    for transport in streams:
        if not transport.is_closing():
            transport.write(_frame(SUCCESS) + b"0\r\n\r\n")


def serve_pull_upstream() -> None:
    """A canned Ollama that answers ``POST /api/pull`` with a progress stream, for many
    clients at once; ``/_go?chunks=&gap_ms=`` paces every open stream, ``/_state``."""

    async def run() -> None:
        state = _PullState()
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: _PullConn(state), "127.0.0.1", 0, backlog=4096)
        port = server.sockets[0].getsockname()[1]
        print(f"READY http://127.0.0.1:{port}", flush=True)
        await server.serve_forever()

    asyncio.run(run())


class _StreamClient(asyncio.Protocol):
    """Reads one streaming answer; keeps every read with its arrival time (monotonic ns)
    and parses nothing until the run is over, so reading costs as little as possible."""

    def __init__(self, done: asyncio.Future[None]) -> None:
        self.done = done
        self.pieces: list[tuple[int, bytes]] = []
        self.tail = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.pieces.append((time.monotonic_ns(), data))
        self.tail = (self.tail + data)[-7:]
        if self.tail == b"\r\n0\r\n\r\n" and not self.done.done():
            self.done.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(ConnectionError(f"closed before the end: {exc}"))


def parse_frames(pieces: list[tuple[int, bytes]]) -> tuple[int, list[tuple[int, bytes]]]:
    """(status, [(arrival ns, chunk data)]) of a chunked response read in ``pieces``;
    a chunk arrived with the read that completed it."""
    buf = b""
    status = 0
    frames: list[tuple[int, bytes]] = []
    for ns, data in pieces:
        buf += data
        pos = 0
        if not status:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                continue
            status = int(buf.split(b" ", 2)[1])
            pos = end + 4
        while True:
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                break
            size = int(buf[pos:eol].split(b";")[0], 16)
            if size == 0:
                return status, frames
            if len(buf) < eol + 2 + size + 2:
                break
            frames.append((ns, buf[eol + 2 : eol + 2 + size]))
            pos = eol + 2 + size + 2
        buf = buf[pos:]
    return status, frames


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far."""
    import psutil

    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def run_delay(pid: int) -> float:
    """Seconds the process's main thread (the reactor) has spent runnable but waiting for
    a CPU (``/proc/<pid>/schedstat``): on a shared machine, what stretches the tail."""
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return float("nan")


async def _upstream_state(control: AioHTTP) -> dict[str, int]:
    _, doc = await control.json("GET", "/_state")
    return dict(doc)


async def relay_round(
    url: str, upstream: str, count: int, chunks: int, gap_ms: float, pid: int | None
) -> dict[str, Any]:
    """``count`` concurrent ``POST /api/pull`` streams through ``url``; each then gets
    ``chunks`` paced progress lines (plus the manifest line first and a final one)."""
    loop = asyncio.get_running_loop()
    control = await AioHTTP.open(upstream)
    idle = rss_mib(pid) if pid is not None else 0.0
    host, _, port = url.split("://", 1)[1].rstrip("/").partition(":")
    clients: list[_StreamClient] = []
    done: list[asyncio.Future[None]] = []
    try:
        t0 = time.monotonic()
        for start in range(0, count, WAVE):  # the listen backlog is 50: see many_waiting
            wave = []
            for _ in range(start, min(count, start + WAVE)):
                fut: asyncio.Future[None] = loop.create_future()
                wave.append(loop.create_connection(partial(_StreamClient, fut), host, int(port)))
                done.append(fut)
            for i, (transport, client) in enumerate(await asyncio.gather(*wave), start):
                body = json.dumps({"model": f"bench/pull-{i}", "stream": True}).encode()
                transport.write(request_bytes("POST", "/api/pull", f"{host}:{port}", body))
                clients.append(client)
            while (await _upstream_state(control))["streams"] < len(clients):
                await asyncio.sleep(0.002)
                if time.monotonic() - t0 > 60:
                    raise RuntimeError("the streams never all reached the upstream")
        opened_in = time.monotonic() - t0
        sampler = Sampler(pid, 0.05) if pid is not None else None
        with_open = rss_mib(pid) if pid is not None else 0.0
        if sampler is not None:
            sampler.start()
        cpu = cpu_seconds(pid) if pid is not None else 0.0
        waited = run_delay(pid) if pid is not None else 0.0
        t1 = time.monotonic()
        await control.json("POST", f"/_go?chunks={chunks}&gap_ms={gap_ms:g}")
        await asyncio.wait_for(asyncio.gather(*done), chunks * gap_ms / 1000 + 60)
        streamed_in = time.monotonic() - t1
        cpu = cpu_seconds(pid) - cpu if pid is not None else 0.0
        waited = run_delay(pid) - waited if pid is not None else 0.0
        peak = await sampler.stop() if sampler is not None else 0.0
    finally:
        for client in clients:
            if client.transport is not None:
                client.transport.close()
        control.close()
    delays: list[float] = []
    complete = exact = 0
    merged = split = 0
    for client in clients:
        status, frames = parse_frames(client.pieces)
        lines = 0
        progress = 0
        for ns, data in frames:
            n = data.count(b"\n")
            lines += n
            merged += n > 1
            split += not data.endswith(b"\n")
            if n == 1 and data.startswith(b'{"status":"pulling 8'):
                delays.append((ns - json.loads(data)["t"]) / 1e6)
                progress += 1
        complete += status == 200 and progress == chunks
        exact += status == 200 and len(frames) == chunks + 2 and lines == chunks + 2
    return {
        "delays": delays,
        "complete": complete,
        "exact": exact,
        "merged": merged,
        "split": split,
        "opened_in": opened_in,
        "rss": (idle, with_open, peak),
        "cpu": cpu,
        "waited": waited,
        "streamed_in": streamed_in,
    }


async def many_streams(
    paths: dict[str, tuple[str, int | None]],
    upstream: str,
    count: int,
    rates: list[float],
    seconds: float,
    rounds: int,
) -> dict[float, dict[str, list[dict[str, Any]]]]:
    """Every rate, ``rounds`` rounds per path, paths alternating (and the order flipped
    each round)."""
    found: dict[float, dict[str, list[dict[str, Any]]]] = {}
    names = list(paths)
    for rate in rates:
        found[rate] = {name: [] for name in names}
        chunks = max(2, round(rate * seconds))
        for r in range(rounds):
            for name in names if r % 2 == 0 else names[::-1]:
                url, pid = paths[name]
                found[rate][name].append(
                    await relay_round(url, upstream, count, chunks, 1000.0 / rate, pid)
                )
    return found


def relay_report(
    found: dict[float, dict[str, list[dict[str, Any]]]], count: int, seconds: float
) -> tuple[list[str], list[Goal]]:
    rows: list[list[object]] = []
    goals: list[Goal] = []
    rss_rows: list[list[object]] = []
    most = 0.0
    first_round = next(iter(found.values()))
    pristine = min(r["rss"][0] for r in first_round[list(first_round)[1]])
    for rate, by_path in found.items():
        direct, via = list(by_path)
        pooled = {name: [d for r in runs for d in r["delays"]] for name, runs in by_path.items()}
        b50, b99 = pcts(pooled[direct], 50, 99)
        for name, runs in by_path.items():
            p50, p99, p999 = pcts(pooled[name], 50, 99, 99.9)
            exact = sum(r["exact"] for r in runs)
            merged = sum(r["merged"] for r in runs)
            split = sum(r["split"] for r in runs)
            first = name == direct
            used = sum(r["cpu"] for r in runs)
            share = used / sum(r["streamed_in"] for r in runs) * 100
            wait = sum(r["waited"] for r in runs) / sum(r["streamed_in"] for r in runs) * 100
            cpu = "" if first else f"{share:.0f}"
            waiting = "" if first else f"{wait:.0f}"
            per_chunk = "" if first else f"{used / len(pooled[name]) * 1e6:.0f}"
            rows.append(
                [f"{rate:g}/s x {count:,} = {rate * count:,.0f}/s", name, len(pooled[name]),
                 f"{p50:.3f}", f"{p99:.3f}", f"{p999:.3f}",
                 "" if first else f"{p50 - b50:+.3f}", "" if first else f"{p99 - b99:+.3f}",
                 f"{exact}/{count * len(runs)}", merged, split, cpu, per_chunk, waiting,
                 f"{statistics.median(r['opened_in'] for r in runs):.1f}"]
            )  # fmt: skip
        v50, v99 = pcts(pooled[via], 50, 99)
        runs = by_path[via]
        total = count * len(runs)
        exact = sum(r["exact"] for r in runs)
        merged = sum(r["merged"] for r in runs)
        complete = sum(r["complete"] for r in runs)
        before = min(r["rss"][0] for r in runs)
        opened = max(r["rss"][1] for r in runs)
        peak = max(r["rss"][2] for r in runs)
        most = max(most, opened, peak)
        rss_rows.append(
            [f"{rate:g}/s", f"{before:.1f}", f"{opened:.1f}", f"{peak:.1f}"]
        )  # fmt: skip
        goals.append(
            Goal(
                f"streaming: per-chunk added delay p99 < {GOAL_RELAY_P99_MS:g} ms and no "
                f"coalescing with {count:,} concurrent streams, RSS reported ({rate:g} chunks/s "
                f"per stream, {rate * count:,.0f}/s in all; relayed `POST /api/pull`, which "
                "foreman does not queue)",
                f"added p99 {v99 - b99:+.3f} ms (p99 {v99:.3f} vs direct {b99:.3f} ms; added "
                f"p50 {v50 - b50:+.3f} ms); {exact}/{total} streams chunk for chunk, {merged} "
                f"merged chunks, {complete}/{total} complete; foreman RSS {peak:.0f} MiB peak "
                f"({pristine:.0f} MiB before the first round)",
                v99 - b99 < GOAL_RELAY_P99_MS and exact == total and complete == total,
            )
        )
    lines = [
        f"\n### 4. {count:,} concurrent streams relayed: ms from a canned `POST /api/pull` "
        "upstream writing a chunk (it stamps `time.monotonic_ns()` into it) to its arrival in "
        f"this process ({seconds:g} s of chunks per round, rounds alternating direct / through "
        "foreman; foreman relays `/api/pull` at once, without the queue or the worker)\n",
        md_table(
            ["chunks/s per stream x streams", "path", "chunks", "p50", "p99", "p99.9",
             "added p50", "added p99", "streams chunk for chunk", "merged chunks",
             "split chunks", "foreman CPU %", "foreman CPU µs per chunk",
             "foreman waiting for a CPU %", "opened in s"],
            rows,
        ),
        f"\nforeman's RSS (MiB) in those rounds; {pristine:.1f} MiB before the first, so "
        f"{(most - pristine) * 1024 / count:.1f} KiB per open stream at most\n",
        md_table(["rate", "before the round", f"{count:,} streams open", "peak while streaming"],
                 rss_rows),
    ]  # fmt: skip
    return lines, goals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--waiting", type=int, default=1000, help="waiting streaming clients")
    parser.add_argument("--waiting-tokens", type=int, default=4, help="tokens each then gets")
    parser.add_argument("--token-rate", type=float, default=500.0, help="paced simulator")
    parser.add_argument(
        "--hold-tokens",
        type=int,
        default=1_000_000,
        help="the generation that holds the worker while the clients line up (the simulator"
        " prepares it before its first chunk: about 4.5 s per million tokens)",
    )
    parser.add_argument("--streams", type=int, default=4, help="latency streams per path")
    parser.add_argument("--tokens", type=int, default=500, help="tokens per latency stream")
    parser.add_argument("--fast-tokens", type=int, default=20000, help="tokens per fast stream")
    parser.add_argument("--fast-rounds", type=int, default=3)
    parser.add_argument(
        "--relay-streams", type=int, default=1000, help="concurrent relayed streams (4.)"
    )
    parser.add_argument(
        "--relay-rates", default="1,5", help="chunks/s per relayed stream, one level each"
    )
    parser.add_argument("--relay-seconds", type=float, default=4.0, help="of chunks per round")
    parser.add_argument("--relay-rounds", type=int, default=2, help="rounds per path and rate")
    parser.add_argument("--json", help="also write the results here (for run_all)")
    parser.add_argument("--serve-pull-upstream", action="store_true", help=argparse.SUPPRESS)
    args = parse_args(parser, SMOKE)
    if args.serve_pull_upstream:
        serve_pull_upstream()
        return
    # inherited by the daemons too
    fd_limit = raise_fd_limit(max(args.waiting, args.relay_streams) * 3 + 1024)

    began = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="foreman-bench-stream-"))
    servers: list[Server] = []
    try:
        paced, fast, pull = start_all(
            [
                lambda: start_simulator("sim-paced", workdir, {MODEL: 0.0}, args.token_rate),
                lambda: start_simulator("sim-fast", workdir, {MODEL: 0.0}, 0.0),
                lambda: spawn_ready("pull-upstream", [PY, str(HERE), "--serve-pull-upstream"],
                                    workdir),
            ],
            servers,
        )  # fmt: skip
        foreman, foreman_fast, foreman_pull = start_all(
            [
                lambda: start_foreman("foreman", workdir, paced.url),
                lambda: start_foreman("foreman-fast", workdir, fast.url),
                lambda: start_foreman("foreman-pull", workdir, pull.url),
            ],
            servers,
        )
        time.sleep(0.5)  # first monitor probes

        memory = asyncio.run(
            many_waiting(
                foreman.url, foreman.popen.pid, args.waiting, args.waiting_tokens, args.hold_tokens
            )
        )
        latency = asyncio.run(
            chunk_latency(
                {"direct (simulator)": paced.url, "through foreman": foreman.url},
                args.streams,
                args.tokens,
            )
        )
        speed = asyncio.run(
            throughput(
                {"direct (simulator)": fast.url, "through foreman": foreman_fast.url},
                args.fast_tokens,
                args.fast_rounds,
            )
        )
        relayed = asyncio.run(
            many_streams(
                {
                    "direct (canned upstream)": (pull.url, None),
                    "through foreman": (foreman_pull.url, foreman_pull.popen.pid),
                },
                pull.url,
                args.relay_streams,
                [float(r) for r in args.relay_rates.split(",")],
                args.relay_seconds,
                args.relay_rounds,
            )
        )
    finally:
        stop_all(servers)
        shutil.rmtree(workdir, ignore_errors=True)

    results = Results(
        "Streaming: 1 000 waiting clients, chunk latency, throughput, 1 000 relayed streams"
    )
    m = memory
    per_client_kib = (m["waiting"] - m["idle"]) * 1024 / m["count"]
    lines = [
        header_lines(),
        "",
        f"### 1. {m['count']} streaming `POST /api/chat` clients waiting in the queue "
        f"(fd limit {fd_limit})\n",
        md_table(
            ["daemon RSS idle MiB", "while all wait MiB", "peak incl. draining MiB",
             "per waiting client KiB", "all queued in s", "drained in s", "complete streams"],
            [[f"{m['idle']:.1f}", f"{m['waiting']:.1f}", f"{m['peak']:.1f}",
              f"{per_client_kib:.1f}", f"{m['queued_in']:.2f}", f"{m['drained_in']:.1f}",
              f"{m['complete']}/{m['count']}"]],
        ),
    ]  # fmt: skip
    names = list(latency)
    base = statistics.median(latency[names[0]]["delay"])
    rows = []
    for name in names:
        d50, d99 = pcts(latency[name]["delay"], 50, 99)
        g50, g99 = pcts(latency[name]["gap"], 50, 99)
        added = "" if name == names[0] else f"{d50 - base:+.3f}"
        rows.append(
            [name, len(latency[name]["delay"]), f"{d50:.3f}", f"{d99:.3f}", added,
             f"{g50:.2f} / {g99:.2f}"]
        )  # fmt: skip
    lines += [
        f"\n### 2. Chunk latency: simulator writes a chunk → this process receives it, ms "
        f"({args.streams} streams x {args.tokens} tokens at {args.token_rate:g} tokens/s "
        "per path, interleaved)\n",
        md_table(
            ["path", "chunks", "median", "p99", "added (median)", "inter-chunk gap p50 / p99"],
            rows,
        ),
    ]
    snames = list(speed)
    sbase = statistics.median(r for r, _ in speed[snames[0]])
    srows = []
    for name in snames:
        value = statistics.median(r for r, _ in speed[name])
        reader = statistics.median(c for _, c in speed[name]) * 100
        srows.append(
            [name, len(speed[name]), f"{value:,.0f}", f"{value / sbase:.2f}x", f"{reader:.0f}"]
        )
    lines += [
        f"\n### 3. Throughput: one unpaced stream of {args.fast_tokens:,} tokens "
        f"(the simulator writes one chunk per token), median of {args.fast_rounds}\n",
        md_table(["path", "streams", "tokens/s", "ratio", "reader CPU %"], srows),
    ]
    relay_lines, relay_goals = relay_report(relayed, args.relay_streams, args.relay_seconds)
    lines += [*relay_lines, f"\n(run took {time.monotonic() - began:.0f} s)"]
    added_ms = statistics.median(latency[names[1]]["delay"]) - base
    peak = m["peak"]
    results.goals += [
        Goal(
            f"{m['count']} waiting streaming clients < {GOAL_RSS_MIB:g} MiB RSS",
            f"{m['waiting']:.0f} MiB waiting, {peak:.0f} MiB peak while draining; "
            f"{m['complete']}/{m['count']} streams complete",
            peak < GOAL_RSS_MIB and m["complete"] == m["count"],
        ),
        Goal(
            f"streaming chunks leave foreman within {GOAL_ADDED_MS:g} ms (simulator, median added)",
            f"{added_ms:+.3f} ms",
            added_ms < GOAL_ADDED_MS,
        ),
        *relay_goals,
    ]
    results.markdown = "\n".join(lines)
    print(results.markdown)
    results.write(args.json)


if __name__ == "__main__":
    main()
