"""Benchmark: streaming through foreman — 1 000 waiting clients, chunk latency, tokens/s.

Run: ``.venv/bin/python bench/streaming.py`` (about 30 s; loopback only).
Prints markdown tables; ``--json PATH`` also writes them for ``bench/run_all.py``;
``--smoke`` is a tiny run (seconds) through every path.

Processes: a paced Ollama simulator (``--token-rate`` tokens/s) and an
unpaced one (as fast as it can), a ``twistd -n foreman`` in front of each, and
this process as the load (asyncio keep-alive clients).

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
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._proc import (
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
from bench._util import Server, parse_args, start_all, stop_all

MODEL = "llama3.2"
GOAL_RSS_MIB = 150.0
GOAL_ADDED_MS = 1.0
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
    parser.add_argument("--json", help="also write the results here (for run_all)")
    args = parse_args(parser, SMOKE)
    fd_limit = raise_fd_limit(args.waiting * 3 + 1024)  # inherited by the daemon too

    began = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="foreman-bench-stream-"))
    servers: list[Server] = []
    try:
        paced, fast = start_all(
            [
                lambda: start_simulator("sim-paced", workdir, {MODEL: 0.0}, args.token_rate),
                lambda: start_simulator("sim-fast", workdir, {MODEL: 0.0}, 0.0),
            ],
            servers,
        )
        foreman, foreman_fast = start_all(
            [
                lambda: start_foreman("foreman", workdir, paced.url),
                lambda: start_foreman("foreman-fast", workdir, fast.url),
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
    finally:
        stop_all(servers)
        shutil.rmtree(workdir, ignore_errors=True)

    results = Results("Streaming: 1 000 waiting clients, chunk latency, throughput")
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
        f"\n(run took {time.monotonic() - began:.0f} s)",
    ]
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
    ]
    results.markdown = "\n".join(lines)
    print(results.markdown)
    results.write(args.json)


if __name__ == "__main__":
    main()
