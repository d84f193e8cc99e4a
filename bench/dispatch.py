"""Benchmark: the dispatch gap — how long the target idles between two inference requests.

Run: ``.venv/bin/python bench/dispatch.py`` (about 10-20 s; loopback only).
Prints markdown tables; ``--json PATH`` also writes them for ``bench/run_all.py``;
``--smoke`` is a tiny run (seconds) through every path.

SPEC: measured at the target, the idle time between the end of one inference
request and the start of the next with clients waiting is under 0.2 ms at the
median; bookkeeping never sits between two dispatches. Only the target can
see that gap, so the target measures it.

Processes: a variant of the fast upstream (``bench/_util.py``, a thread per
connection) that stamps ``time.monotonic_ns()`` when an inference request's
(``POST /api/chat`` or ``/api/generate``) first bytes arrive and when it has
written the whole answer, and answers ``/api/ps``, ``/api/tags`` and
``/api/version`` like Ollama with one resident model; ``twistd -n foreman``
in front of it (its real queue and worker); this process as the load.

1. Floor: one lean blocking client sends back to back to the upstream
   directly. A proxy with one request in flight must also read the end of one
   answer and write the next request, so it cannot do much better than this.
2. Interactive: a held request occupies the worker (the upstream keeps its
   answer until released) while ``--clients`` clients each send
   ``POST /api/chat`` and wait in foreman's queue; then the hold is released.
   Each client sends its next request as soon as it has its answer, so the
   queue never runs dry until the last ``--clients`` requests.
3. Jobs: a held request again, ``--jobs`` durable jobs queued behind it, then
   released: the worker runs them back to back.
4. The same with ``--slow-jobs`` jobs the upstream takes 20 ms over each (a
   short real answer), so each job's bookkeeping can finish while the next
   one runs: what remains is the dispatch path itself.

A gap is the first byte of one inference request minus the end of the
previous answer, counted only when nothing else is in flight at the target
(the table shows the most ever in flight: it must be 1).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
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
    pcts,
    start_foreman,
)
from bench._util import (
    CHAT_BODY,
    CHAT_REPLY,
    FastHandler,
    RawClient,
    Server,
    parse_args,
    run_fast_upstream,
    spawn_ready,
    stop_all,
)

HERE = Path(__file__).resolve()
MODEL = "llama3.2"
GOAL_GAP_MS = 0.2
HOLD = b"hold the worker"
HOLD_TIMEOUT = 120.0  # the upstream gives up holding: a broken run ends instead of hanging
DEADLINE = 120.0  # seconds for one scenario
SMOKE = {
    "requests": 60,
    "slow_requests": 16,
    "jobs": 15,
    "slow_jobs": 10,
    "floor": 100,
    "slow_floor": 20,
    "warmup": 10,
}
SLOW_TARGET_MS = 20  # the upstream's time per job in the slow-jobs row


# -- the recording upstream (runs in its own process) ---------------------------------------


def _json_answer(doc: Any) -> bytes:
    body = json.dumps(doc).encode()
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf-8\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )


def _stream_answer() -> bytes:
    """An Ollama chat stream (one token line, the final line) in one write."""
    created = "2026-01-01T00:00:00.000000Z"
    final = json.loads(CHAT_REPLY)
    lines = [
        {
            "model": MODEL,
            "created_at": created,
            "message": {"role": "assistant", "content": final["message"]["content"]},
            "done": False,
        },
        {**final, "message": {"role": "assistant", "content": ""}},
    ]
    body = b""
    for doc in lines:
        line = json.dumps(doc).encode() + b"\n"
        body += b"%x\r\n%s\r\n" % (len(line), line)
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n" + body + b"0\r\n\r\n"
    )


_RESIDENT = {
    "name": f"{MODEL}:latest",
    "model": f"{MODEL}:latest",
    "size": 3_000_000_000,
    "digest": "a80c4f17acd55265feec403c7aef86be0c25983ab279d83f3bcd3abbcb5b8b72",
    "details": {"family": "llama", "parameter_size": "3.2B", "quantization_level": "Q4_K_M"},
}
_ANSWERS = {
    b"/api/ps": _json_answer(
        {"models": [{**_RESIDENT, "expires_at": "2099-01-01T00:00:00Z", "size_vram": 3 * 10**9}]}
    ),
    b"/api/tags": _json_answer({"models": [{**_RESIDENT, "modified_at": "2026-01-01T00:00:00Z"}]}),
    b"/api/version": _json_answer({"version": "0.12.0"}),
}
_CHAT_JSON = _json_answer(json.loads(CHAT_REPLY))
_CHAT_STREAM = _stream_answer()
_INFERENCE = (b"/api/chat", b"/api/generate")


class _Record:
    """Inference starts (+1) and ends (-1) with their monotonic ns, and the hold gate."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.events: list[tuple[int, int]] = []
        self.holding = 0
        self.gate = threading.Event()

    def reset(self) -> None:
        with self.lock:
            self.events = []
            self.holding = 0
            self.gate.clear()


_RECORD = _Record()


class GapHandler(FastHandler):
    """The fast upstream, recording inference requests; ``/_state``, ``/_events``,
    ``/_reset`` and ``/_release`` are this benchmark's controls."""

    def respond(
        self,
        sock: socket.socket,
        method: bytes,
        target: bytes,
        body: bytes,
        old: bool,
        started: int,
    ) -> None:
        path = target.split(b"?", 1)[0]
        rec = _RECORD
        if method == b"POST" and path in _INFERENCE:
            with rec.lock:
                rec.events.append((started, 1))
                held = HOLD in body
                rec.holding += held
            if held:
                rec.gate.wait(HOLD_TIMEOUT)
            try:
                doc = json.loads(body)
                stream = doc.get("stream", True) is not False
                delay_ms = (doc.get("options") or {}).get("bench_delay_ms", 0)
            except ValueError:
                stream, delay_ms = False, 0
            if delay_ms:  # a target that takes this long to generate (a short real answer)
                time.sleep(delay_ms / 1000)
            # stamped before the write: after it, this thread may wait for the GIL
            # while another one already stamps the next request's start
            ended = time.monotonic_ns()
            sock.sendall(_CHAT_STREAM if stream else _CHAT_JSON)
            with rec.lock:
                rec.events.append((ended, -1))
        elif path in _ANSWERS:
            sock.sendall(_ANSWERS[path])
        elif path == b"/_state":  # cheap: polled while foreman works
            with rec.lock:
                starts = sum(1 for _, d in rec.events if d > 0)
                doc = {"holding": rec.holding, "requests": starts}
            sock.sendall(_json_answer(doc))
        elif path == b"/_events":
            with rec.lock:
                events = list(rec.events)
            sock.sendall(_json_answer(events))
        elif path == b"/_reset":
            rec.reset()
            sock.sendall(_json_answer({}))
        elif path == b"/_release":
            rec.gate.set()
            sock.sendall(_json_answer({}))
        else:
            super().respond(sock, method, target, body, old, started)


# -- measuring ----------------------------------------------------------------------------


def gaps(events: list[list[int]]) -> tuple[list[float], int, int]:
    """(gaps in ms while nothing was in flight, the most in flight at once, requests)."""
    out: list[float] = []
    in_flight = most = count = 0
    last_end: int | None = None
    for t, d in sorted((int(t), int(d)) for t, d in events):
        if d > 0:
            if in_flight == 0 and last_end is not None:
                out.append((t - last_end) / 1e6)
            in_flight += 1
            count += 1
            most = max(most, in_flight)
        else:
            in_flight -= 1
            last_end = t
    return out, most, count


def control(upstream: str, path: str) -> Any:
    """Ask the recording upstream (a fresh connection: never one foreman could see)."""
    client = RawClient(upstream)
    try:
        status, body = client.request("GET" if path in ("/_state", "/_events") else "POST", path)
    finally:
        client.close()
    if status != 200:
        raise RuntimeError(f"{path} answered {status}")
    return json.loads(body)


async def until(what: str, check: Callable[[], Awaitable[bool]], interval: float = 0.01) -> None:
    deadline = time.monotonic() + DEADLINE
    while not await check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        await asyncio.sleep(interval)


async def queued(conn: AioHTTP, kind: str) -> int:
    _, status = await conn.json("GET", "/status")
    depth: int = status["queue"]["by_kind"].get(kind, 0)
    return depth


async def hold(daemon: str, upstream: str) -> asyncio.Task[tuple[int, dict[bytes, bytes], bytes]]:
    """A request that holds the worker until ``/_release``; its answer as a task."""
    conn = await AioHTTP.open(daemon)
    body = json.dumps(chat_body(MODEL, HOLD.decode())).encode()

    async def held() -> tuple[int, dict[bytes, bytes], bytes]:
        try:
            return await conn.request("POST", "/api/chat", body)
        finally:
            conn.close()

    task = asyncio.create_task(held())

    async def holding() -> bool:
        return int(control(upstream, "/_state")["holding"]) >= 1

    await until("the held request to reach the upstream", holding)
    return task


async def wait_target_up(url: str) -> None:
    conn = await AioHTTP.open(url)
    try:

        async def up() -> bool:
            _, body = await conn.json("GET", "/readyz")
            return bool(body.get("target") == "up")

        await until("foreman to see the upstream up", up, 0.05)
    finally:
        conn.close()


def floor(upstream: str, count: int, delay_ms: int = 0) -> list[list[int]]:
    """One lean blocking client back to back, straight to the upstream."""
    control(upstream, "/_reset")
    client = RawClient(upstream)
    try:
        for _ in range(count):
            status, _ = client.request("POST", "/api/chat", _chat_body(delay_ms))
            if status != 200:
                raise RuntimeError(f"the upstream answered {status}")
    finally:
        client.close()
    return control(upstream, "/_events")  # type: ignore[no-any-return]


def _chat_body(delay_ms: int) -> bytes:
    """The benchmark's chat; with ``delay_ms`` the upstream takes that long over it."""
    if not delay_ms:
        return CHAT_BODY
    doc = json.loads(CHAT_BODY)
    doc["options"] = {"bench_delay_ms": delay_ms}
    return json.dumps(doc).encode()


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process so far (``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def interactive(
    daemon: str, upstream: str, clients: int, total: int, warmup: int, delay_ms: int = 0
) -> list[list[int]]:
    """``total`` chats from ``clients`` keep-alive clients that all start queued.

    With ``delay_ms`` the upstream takes that long over each chat (see ``jobs``).
    """
    body = _chat_body(delay_ms)
    warm = await AioHTTP.open(daemon)
    try:
        for _ in range(warmup):
            status, _, _ = await warm.request("POST", "/api/chat", CHAT_BODY)
            if status != 200:
                raise RuntimeError(f"warm-up answered {status}")
    finally:
        warm.close()
    control(upstream, "/_reset")
    holder = await hold(daemon, upstream)
    conns = [await AioHTTP.open(daemon) for _ in range(clients)]
    probe = await AioHTTP.open(daemon)
    try:
        for conn in conns:
            conn.send("POST", "/api/chat", body)
        await until("every client to wait in the queue", lambda: _at_least(probe, clients))
        issued = clients

        async def client(conn: AioHTTP) -> None:
            nonlocal issued
            while True:
                status, head = await conn.head()
                await conn.body(head)
                if status != 200:
                    raise RuntimeError(f"a chat answered {status}")
                if issued >= total:
                    return
                issued += 1
                conn.send("POST", "/api/chat", body)

        running = asyncio.gather(*(client(c) for c in conns))
        control(upstream, "/_release")
        status, _, _ = await holder
        await asyncio.wait_for(running, DEADLINE)
        if status != 200:
            raise RuntimeError(f"the held request answered {status}")
    finally:
        for conn in [*conns, probe]:
            conn.close()
    return control(upstream, "/_events")  # type: ignore[no-any-return]


async def _at_least(conn: AioHTTP, count: int, kind: str = "interactive") -> bool:
    return await queued(conn, kind) >= count


async def jobs(daemon: str, upstream: str, count: int, delay_ms: int = 0) -> list[list[int]]:
    """``count`` durable jobs queued behind a held request, then run back to back.

    With ``delay_ms`` the upstream takes that long over each job, as a short
    real generation does: each job's bookkeeping then has the time to finish
    while the next one runs, and the gap shows only what lies between two
    dispatches. Without it (answers in about 0.1 ms) the bookkeeping of earlier
    jobs is still running on the reactor when an answer arrives.
    """
    control(upstream, "/_reset")
    holder = await hold(daemon, upstream)
    conn = await AioHTTP.open(daemon)
    try:
        for i in range(count):
            request = chat_body(MODEL, f"job {i}")
            if delay_ms:
                request["options"] = {"bench_delay_ms": delay_ms}
            body = {"request": request, "metadata": {"i": i}}
            status, doc = await conn.json("POST", "/jobs", body)
            if status != 202:
                raise RuntimeError(f"POST /jobs answered {status}: {doc}")
        await until("the jobs to wait in the queue", lambda: _at_least(conn, count, "job"))
        control(upstream, "/_release")
        await holder

        async def answered() -> bool:  # asks the upstream: polling foreman would add work
            return int(control(upstream, "/_state")["requests"]) >= count + 1

        await until("the jobs to reach the upstream", answered, 0.05)

        async def idle() -> bool:
            _, status = await conn.json("GET", "/status")
            return not status["queue"]["by_kind"].get("job") and not status["worker"]["current"]

        await until("the worker to finish the jobs", idle)

        async def recorded() -> bool:  # each job's done is written after the target is free
            _, page = await conn.json("GET", f"/jobs?state=done&limit={count}")
            return len(page["data"]) == count

        try:
            await until("the jobs to be recorded done", recorded)
        except RuntimeError:
            _, page = await conn.json("GET", f"/jobs?state=done&limit={count}")
            _, everything = await conn.json("GET", f"/jobs?limit={count}")
            states = sorted({j["state"] for j in everything["data"]})
            raise RuntimeError(
                f"{len(page['data'])}/{count} jobs done (states: {states})"
            ) from None
    finally:
        conn.close()
    return control(upstream, "/_events")  # type: ignore[no-any-return]


# -- report ---------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=8, help="interactive clients")
    parser.add_argument("--requests", type=int, default=2000, help="interactive requests")
    parser.add_argument(
        "--slow-requests",
        type=int,
        default=400,
        help=f"interactive requests on a {SLOW_TARGET_MS} ms target",
    )
    parser.add_argument("--jobs", type=int, default=300, help="queued jobs")
    parser.add_argument(
        "--slow-jobs", type=int, default=150, help=f"queued jobs on a {SLOW_TARGET_MS} ms target"
    )
    parser.add_argument("--floor", type=int, default=2000, help="direct back-to-back requests")
    parser.add_argument(
        "--slow-floor",
        type=int,
        default=200,
        help=f"direct back-to-back requests on a {SLOW_TARGET_MS} ms target",
    )
    parser.add_argument("--warmup", type=int, default=200, help="chats through foreman first")
    parser.add_argument("--json", help="also write the results here (for run_all)")
    parser.add_argument("--serve-upstream", action="store_true", help=argparse.SUPPRESS)
    args = parse_args(parser, SMOKE)
    if args.serve_upstream:
        run_fast_upstream(GapHandler)
        return
    if args.jobs > 1000:
        parser.error("--jobs: at most 1000 (one page of GET /jobs checks them)")

    began = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="foreman-bench-dispatch-"))
    servers: list[Server] = []
    found: dict[str, list[list[int]]] = {}
    try:
        upstream = spawn_ready("upstream", [PY, str(HERE), "--serve-upstream"], workdir)
        servers.append(upstream)
        daemon = start_foreman("foreman", workdir, upstream.url)
        servers.append(daemon)
        asyncio.run(wait_target_up(daemon.url))
        found["floor"] = floor(upstream.url, args.floor)
        cpu_before = cpu_seconds(daemon.popen.pid)
        found["interactive"] = asyncio.run(
            interactive(daemon.url, upstream.url, args.clients, args.requests, args.warmup)
        )
        cpu_per_chat = (cpu_seconds(daemon.popen.pid) - cpu_before) / (
            args.requests + args.warmup + 1
        )
        found["slow_floor"] = floor(upstream.url, args.slow_floor, SLOW_TARGET_MS)
        found["slow_interactive"] = asyncio.run(
            interactive(
                daemon.url, upstream.url, args.clients, args.slow_requests, 0, SLOW_TARGET_MS
            )
        )
        found["jobs"] = asyncio.run(jobs(daemon.url, upstream.url, args.jobs))
        found["slow_jobs"] = asyncio.run(
            jobs(daemon.url, upstream.url, args.slow_jobs, SLOW_TARGET_MS)
        )
    finally:
        stop_all(servers)
        shutil.rmtree(workdir, ignore_errors=True)

    slow = f"the target taking {SLOW_TARGET_MS} ms over each"
    labels = {
        "floor": ("direct: one lean client back to back (the floor)", "none", "floor"),
        "interactive": (
            f"foreman: {args.clients} interactive clients, {args.requests} chats",
            f"up to {args.clients}",
            "floor",
        ),
        "jobs": (f"foreman: {args.jobs} queued durable jobs", f"{args.jobs - 1} → 0", "floor"),
        "slow_floor": (f"direct: one lean client back to back, {slow}", "none", "slow_floor"),
        "slow_interactive": (
            f"foreman: {args.clients} interactive clients, {args.slow_requests} chats, {slow}",
            f"up to {args.clients}",
            "slow_floor",
        ),
        "slow_jobs": (
            f"foreman: {args.slow_jobs} queued durable jobs, {slow}",
            f"{args.slow_jobs - 1} → 0",
            "slow_floor",
        ),
    }
    measured: dict[str, tuple[float, float, float, int]] = {}  # p50, p99, mean, most
    rows: list[list[object]] = []
    for key, (label, waiting, base) in labels.items():
        values, most, count = gaps(found[key])
        p50, p99 = pcts(values, 50, 99)
        measured[key] = (p50, p99, statistics.fmean(values), most)
        base_p50 = measured[base][0]
        rows.append(
            [label, waiting, count, len(values), f"{p50:.3f}", f"{p99:.3f}",
             f"{max(values):.3f}", f"{p50 - base_p50:+.3f}", most]
        )  # fmt: skip
    results = Results("Dispatch gap: target idle time between inference requests")
    lines = [
        header_lines(),
        "",
        "Idle time at the target (a canned upstream stamping monotonic ns) between the end of "
        "one inference answer (stamped as its write begins) and the first byte of the next, "
        "ms; foreman is `twistd -n foreman` with its queue and worker. The held request that "
        "lined the clients up is counted. \"over its floor\" is the p50 less the p50 of a "
        "lean client sending straight to the same target. Against the instant target the gap "
        "is foreman's throughput, not its dispatch path (ADR 0021): foreman's CPU per relayed "
        f"chat in that run was {cpu_per_chat * 1e6:.0f} µs, the target busy for about "
        f"{measured['floor'][0]:.2f} ms of it.\n",
        md_table(
            ["path", "waiting in foreman's queue", "inference requests", "gaps", "p50",
             "p99", "max", "p50 over its floor", "most in flight"],
            rows,
        ),
    ]  # fmt: skip
    for key, what in (
        ("slow_interactive", f"{args.clients} interactive clients, {slow}"),
        ("slow_jobs", f"queued durable jobs, {slow}: bookkeeping never between two dispatches"),
        ("interactive", f"{args.clients} interactive clients, the instant target"),
        ("jobs", "queued durable jobs, the instant target"),
    ):
        p50, p99, mean, most = measured[key]
        base = labels[key][2]
        over = p50 - measured[base][0]
        results.goals.append(
            Goal(
                f"dispatch gap p50 < {GOAL_GAP_MS:g} ms over the floor ({what})",
                f"p50 {p50:.3f} ms, {over:+.3f} ms over the floor's {measured[base][0]:.3f}; "
                f"p99 {p99:.3f} ms, mean {mean:.3f} ms; at most {most} in flight",
                over < GOAL_GAP_MS and most == 1,
            )
        )
    took = f"(run took {time.monotonic() - began:.0f} s)"
    goal_table = md_table(
        ["goal", "measured", "met"],
        [[g.goal, g.measured, "yes" if g.met else "no"] for g in results.goals],
    )
    print(*lines, "", "Goals (SPEC, Performance, this run)\n", goal_table, "", took, sep="\n")
    results.markdown = "\n".join([*lines, "", took])
    results.write(args.json)


if __name__ == "__main__":
    main()
