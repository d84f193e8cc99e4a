"""Benchmark: the durable job queue — create throughput, dispatch cost, restart, memory.

Run: ``.venv/bin/python bench/jobs.py`` (about 20-30 s; loopback only).
Prints markdown tables; ``--json PATH`` also writes them for ``bench/run_all.py``;
``--smoke`` is a tiny run (seconds) through every path.

foreman runs as ``twistd -n foreman`` in its own process; the load comes from
this process (asyncio keep-alive clients). The target is a closed port
(``http://127.0.0.1:9``): the monitor sees it ``down``, so the worker picks
nothing and every job stays queued, which is exactly the state measured.

(a) ``POST /jobs`` throughput with 1, 16 and 64 concurrent clients, each
    level on a fresh daemon (``synchronous=FULL``; concurrent creations share
    one commit), and once more with 100 000 jobs already queued.
(b) dispatch cost with 10 / 10 000 / 100 000 queued: ``Scheduler.pick`` (and
    ``add``, ``order(10)``, ``position``) in-process, then the daemon's view
    (``GET /queue?limit=10``, ``GET /jobs/{id}``, ``GET /status``, one
    ``POST /jobs``) against a database seeded directly through SQLite.
(c) restart with 100 000 queued: process start to the log line ``job queue
    ready`` and to ``/readyz`` 200 (median of three starts).
(d) daemon RSS with 100 000 queued (psutil), after the requests of (b).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._proc import (
    TWISTD,
    AioHTTP,
    Goal,
    Results,
    chat_body,
    fs_type,
    header_lines,
    md_table,
    pcts,
    rss_mib,
    start_foreman,
    wait_http_ok,
)
from bench._util import RawClient, Server, parse_args

CLOSED_TARGET = "http://127.0.0.1:9"
MODELS = ("llama3.2", "qwen3", "gemma3", "mistral")
GOAL_RATE = 1000.0
GOAL_RESTART_S = 5.0
GOAL_RSS_MIB = 150.0
FLAT_SLACK_US = 10.0
PER_KIND_BUDGET = 3.0
WARMUP = 20
FLAT_FACTOR = 3.0
SMOKE = {"sizes": "10,300", "picks": 300, "rounds": 5, "restarts": 1, "creates": 40}


# -- (a) create throughput ------------------------------------------------------------


def job_body(i: int) -> bytes:
    request = chat_body(MODELS[i % len(MODELS)], f"item {i}: summarise the attached text")
    return json.dumps({"request": request, "metadata": {"i": i}}).encode()


async def create_load(url: str, clients: int, total: int) -> tuple[float, list[float]]:
    """``total`` creations from ``clients`` keep-alive connections: (creations/s, latencies).

    The connections are opened one by one before the clock starts: opened all at
    once they would overflow the daemon's listen backlog (50) and the kernel's
    SYN retransmit (1 s) would land in the measurement.
    """
    latencies: list[float] = []
    issued = 0

    async def client(conn: AioHTTP) -> None:
        nonlocal issued
        while issued < total:
            issued += 1
            body = job_body(issued)
            t0 = time.perf_counter()
            status, _, data = await conn.request("POST", "/jobs", body)
            latencies.append(time.perf_counter() - t0)
            if status != 202:
                raise RuntimeError(f"POST /jobs answered {status}: {data[:200]!r}")

    conns = [await AioHTTP.open(url) for _ in range(clients)]
    try:
        # warm up the daemon's code paths, not counted
        for i in range(WARMUP):
            await conns[0].request("POST", "/jobs", job_body(-i - 1))
        started = time.perf_counter()
        await asyncio.gather(*(client(c) for c in conns))
        elapsed = time.perf_counter() - started
    finally:
        for conn in conns:
            conn.close()
    return total / elapsed, latencies


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU seconds of ``pid`` (None: this process), all threads."""
    import psutil

    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def check_depth(url: str, expected: int) -> None:
    """Every 202 must be a queued job (nothing lost, nothing run: the target is closed)."""
    client = RawClient(url)
    try:
        _, body = client.request("GET", "/status")
    finally:
        client.close()
    depth = json.loads(body)["queue"]["depth"]
    if depth != expected:
        raise RuntimeError(f"expected {expected} queued jobs, the daemon has {depth}")


def throughput(
    workdir: Path, levels: Sequence[tuple[int, int]], seeded: Path | None, seeded_count: int
) -> tuple[list[list[object]], dict[str, float]]:
    rows: list[list[object]] = []
    rates: dict[str, float] = {}
    cases: list[tuple[str, int, int, Path | None]] = [
        (f"{c} client{'s' if c > 1 else ''}, empty queue", c, n, None) for c, n in levels
    ]
    if seeded is not None:
        c, n = levels[-1]
        queued = seeded_count
        cases.append((f"{c} clients, {queued:,} already queued", c, min(n, 1000), seeded))
    for label, clients, total, db in cases:
        data = workdir / f"create-{len(rows)}"
        if db is not None:
            data.mkdir()
            shutil.copy(db, data / "foreman.sqlite3")
        server = start_foreman(f"create-{len(rows)}", workdir, CLOSED_TARGET, data_dir=data)
        try:
            daemon_cpu, load_cpu = cpu_seconds(server.popen.pid), cpu_seconds(None)
            rate, lat = asyncio.run(create_load(server.url, clients, total))
            daemon_cpu = cpu_seconds(server.popen.pid) - daemon_cpu
            load_cpu = cpu_seconds(None) - load_cpu
            rss = rss_mib(server.popen.pid)
            check_depth(server.url, total + WARMUP + (seeded_count if db is not None else 0))
        finally:
            server.stop()
        p50, p99 = pcts(lat, 50, 99)
        rates[label] = rate
        wall = total / rate  # the warm-up is in the CPU figures, a slight overstatement
        rows.append(
            [label, total, f"{rate:,.0f}", f"{p50 * 1000:.2f}", f"{p99 * 1000:.2f}",
             f"{daemon_cpu / wall * 100:.0f}", f"{load_cpu / wall * 100:.0f}", f"{rss:.0f}"]
        )  # fmt: skip
    return rows, rates


def fsync_ms(directory: Path, rounds: int = 200) -> float:
    """Median cost of a 4 KiB write + fsync here: what one durable commit costs at least."""
    path = directory / "fsync-probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    times = []
    try:
        for _ in range(rounds):
            os.write(fd, b"x" * 4096)
            t0 = time.perf_counter()
            os.fsync(fd)
            times.append((time.perf_counter() - t0) * 1000)
    finally:
        os.close(fd)
        path.unlink()
    return statistics.median(times)


# -- seeding a queue directly in SQLite ------------------------------------------------


def seed(db: Path, count: int) -> list[str]:
    """``count`` queued jobs (rows + their ``job.queued`` events) as POST /jobs writes them."""
    from foreman.core.ids import new_job_id
    from foreman.core.jobview import job_object
    from foreman.store.database import open_sync
    from foreman.store.jobs import JobRow, request_hash

    conn = open_sync(db)
    conn.execute("PRAGMA synchronous = OFF")  # seeding only; the daemon runs FULL
    base = time.time() - 3600.0
    base_url = "http://127.0.0.1:8080"
    jobs: list[tuple[Any, ...]] = []
    events: list[tuple[Any, ...]] = []
    ids: list[str] = []
    for i in range(count):
        created = base + i * 0.001
        model = MODELS[i % len(MODELS)]
        request = chat_body(model, f"item {i}: summarise the attached text")
        request.pop("stream")
        text = json.dumps(request, separators=(",", ":"))
        job_id = new_job_id(created)
        ids.append(job_id)
        jobs.append(
            (job_id, "/api/chat", model, 0, text, created, request_hash({"request": request}))
        )
        row = JobRow(
            job_id, "queued", "/api/chat", model, 0, text, None, None, 0, None, None,
            created, None, None, None, None, 0, None, None, None, base_url,
        )  # fmt: skip
        data = json.dumps(job_object(row, base_url, position=i, seq=1), separators=(",", ":"))
        events.append((job_id, 1, "job.queued", created, data))
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO jobs (id, state, endpoint, model, priority, request, created_at, "
        f"request_hash, base_url) VALUES (?, 'queued', ?, ?, ?, ?, ?, ?, '{base_url}')",
        jobs,
    )
    conn.executemany(
        "INSERT INTO job_events (job_id, seq, type, at, data) VALUES (?, ?, ?, ?, ?)", events
    )
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return ids


# -- (b) the pure scheduler ------------------------------------------------------------


def scheduler_costs(sizes: Sequence[int], picks: int) -> dict[int, dict[str, list[float]]]:
    """µs per call with ``n`` waiting, ``n`` held constant (each pick is replaced)."""
    from foreman.core.scheduler import JOB, Scheduler, Waiting

    out: dict[int, dict[str, list[float]]] = {}
    clock = time.perf_counter_ns
    for n in sizes:
        sched = Scheduler(600.0)
        for i in range(n):
            sched.add(Waiting(f"j{i}", MODELS[i % len(MODELS)], 0, float(i), i, JOB))
        seq = n
        loaded: str | None = MODELS[0]
        now = float(n)
        samples: dict[str, list[float]] = {"pick": [], "add": [], "order10": [], "position": []}
        for k in range(picks):
            t0 = clock()
            item = sched.pick(now, loaded)
            t1 = clock()
            assert item is not None
            loaded = item.model
            seq += 1
            new = Waiting(f"j{seq}", MODELS[seq % len(MODELS)], 0, float(seq), seq, JOB)
            t2 = clock()
            sched.add(new)
            t3 = clock()
            samples["pick"].append((t1 - t0) / 1000)
            samples["add"].append((t3 - t2) / 1000)
            now += 1.0
            if k % 20 == 0:
                t4 = clock()
                sched.order(now, loaded, 10)
                t5 = clock()
                sched.position(new.key, now, loaded)
                t6 = clock()
                samples["order10"].append((t5 - t4) / 1000)
                samples["position"].append((t6 - t5) / 1000)
        out[n] = samples
    return out


# -- (b, c, d) the daemon with n queued --------------------------------------------------


def timed_start(name: str, workdir: Path, data: Path) -> tuple[Server, float, float, float, float]:
    """Start twistd on ``data``: (server, s to 'job queue ready', s to /readyz 200, s the
    daemon itself reports for loading the queue, RSS MiB right after ready)."""
    log_path = workdir / f"{name}.log"
    log = open(log_path, "w+b")  # noqa: SIM115 - closed by Server.stop
    env = {k: v for k, v in os.environ.items() if not k.startswith("FOREMAN_")}
    env.update(
        {
            "FOREMAN_TARGET_URL": CLOSED_TARGET,
            "FOREMAN_LISTEN": "tcp:0:interface=127.0.0.1",
            "FOREMAN_DATA_DIR": str(data),
        }
    )
    started = time.monotonic()
    popen = subprocess.Popen(TWISTD, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=workdir)
    queue_ready = None
    url = None
    reported = float("nan")
    while time.monotonic() - started < 120:
        text = log_path.read_text(errors="replace")
        if queue_ready is None and "job queue ready" in text:
            queue_ready = time.monotonic() - started
            found = re.search(r"job queue ready: .* in ([0-9.]+) s", text)
            if found:
                reported = float(found.group(1))
        found_url = re.search(r"listening on (http://[0-9.]+:\d+)", text)
        if found_url:
            url = found_url.group(1)
            break
        if popen.poll() is not None:
            raise RuntimeError(f"{name} exited:\n{text}")
        time.sleep(0.002)
    if url is None or queue_ready is None:
        popen.kill()
        raise RuntimeError(f"{name} did not start:\n{log_path.read_text(errors='replace')}")
    ready = wait_http_ok(url, "/readyz") - started
    server = Server(name, popen, url, log)
    return server, queue_ready, ready, reported, rss_mib(popen.pid)


def request_costs(url: str, job_id: str, rounds: int) -> dict[str, list[float]]:
    """Latency (ms) of the daemon's queue views, one keep-alive client, interleaved.

    Each request kind gets ``rounds`` samples or PER_KIND_BUDGET seconds, whichever
    comes first (at least 10), so a slow view cannot stretch the run.
    """
    client = RawClient(url)
    paths = {
        "GET /queue?limit=10": ("GET", "/queue?limit=10"),
        "GET /status": ("GET", "/status"),
        "GET /jobs/{id}": ("GET", f"/jobs/{job_id}"),
        "GET /jobs?limit=20": ("GET", "/jobs?limit=20&state=queued"),
        "POST /jobs": ("POST", ""),
    }
    samples: dict[str, list[float]] = {name: [] for name in paths}
    spent: dict[str, float] = dict.fromkeys(paths, 0.0)
    try:
        for i in range(rounds):
            for name, (method, path) in paths.items():
                if spent[name] > PER_KIND_BUDGET and len(samples[name]) >= 10:
                    continue
                body = job_body(10_000_000 + i) if method == "POST" else b""
                t0 = time.perf_counter()
                status, _ = client.request(method, path or "/jobs", body)
                elapsed = time.perf_counter() - t0
                if status not in (200, 202):
                    raise RuntimeError(f"{name} answered {status}")
                if i > 0:  # the first round warms up
                    samples[name].append(elapsed * 1000)
                spent[name] += elapsed
    finally:
        client.close()
    return samples


def profile_creates(workdir: Path, db: Path, clients: int, total: int) -> str:
    """cProfile the daemon (twistd --profile) while it takes ``total`` creations on ``db``."""
    import io
    import pstats

    data = workdir / "profile"
    data.mkdir()
    shutil.copy(db, data / "foreman.sqlite3")
    stats_path = workdir / "daemon.prof"
    argv = [*TWISTD[:-1], f"--profile={stats_path}", "--savestats", TWISTD[-1]]
    env = {
        "FOREMAN_TARGET_URL": CLOSED_TARGET,
        "FOREMAN_LISTEN": "tcp:0:interface=127.0.0.1",
        "FOREMAN_DATA_DIR": str(data),
    }
    from bench._util import spawn_ready

    server = spawn_ready("profiled", argv, workdir, env, pattern="listening on ", timeout=120)
    try:
        rate, _ = asyncio.run(create_load(server.url, clients, total))
    finally:
        server.stop()
    buf = io.StringIO()
    stats = pstats.Stats(str(stats_path), stream=buf)
    stats.sort_stats("cumulative").print_stats(30)
    stats.sort_stats("tottime").print_stats(20)
    return f"{rate:,.0f} creations/s under the profiler\n" + buf.getvalue()


def only_create(creates: int) -> str:
    """(a) alone, empty queue only: the table and the goal's line."""
    workdir = Path(tempfile.mkdtemp(prefix="foreman-bench-create-"))
    try:
        levels = [(1, max(10, creates // 4)), (16, creates), (64, creates)]
        rows, rates = throughput(workdir, levels, None, 0)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    header = ["clients", "creations", "creations/s", "p50 ms", "p99 ms", "daemon CPU %",
              "load CPU %", "daemon RSS MiB"]  # fmt: skip
    best = max(v for k, v in rates.items() if not k.startswith("1 "))
    verdict = "met" if best >= GOAL_RATE else "NOT MET"
    return (
        f"{md_table(header, rows)}\n\nbest of 16/64 clients: {best:,.0f} creations/s "
        f"(goal {GOAL_RATE:,.0f}/s: {verdict})"
    )


def fmt_us(values: list[float]) -> str:
    p50, p99 = pcts(values, 50, 99)
    return f"{p50:.1f} / {p99:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10,10000,100000", help="queue sizes for (b)")
    parser.add_argument("--picks", type=int, default=20000, help="scheduler picks per size")
    parser.add_argument("--rounds", type=int, default=200, help="daemon requests per size")
    parser.add_argument("--restarts", type=int, default=3, help="timed starts with the most")
    parser.add_argument("--creates", type=int, default=3000, help="creations per level in (a)")
    parser.add_argument("--json", help="also write the results here (for run_all)")
    parser.add_argument(
        "--profile",
        type=int,
        metavar="QUEUED",
        help="only cProfile the daemon taking 64-client creations with QUEUED already queued",
    )
    parser.add_argument(
        "--only-create",
        action="store_true",
        help="only (a) on an empty queue: creations/s with 1, 16 and 64 clients",
    )
    args = parse_args(parser, SMOKE)
    sizes = [int(s) for s in args.sizes.split(",")]
    biggest = max(sizes)
    if args.only_create:
        print(only_create(args.creates))
        return
    if args.profile is not None:
        workdir = Path(tempfile.mkdtemp(prefix="foreman-bench-prof-"))
        try:
            seed(workdir / "seed.sqlite3", args.profile)
            print(profile_creates(workdir, workdir / "seed.sqlite3", 64, args.creates))
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        return

    began = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="foreman-bench-jobs-"))
    results = Results("Durable jobs: create throughput, dispatch cost, restart, memory")
    out: list[str] = [header_lines(), ""]
    try:
        # seeded databases first: (a) also runs against the biggest
        seeded: dict[int, tuple[Path, list[str]]] = {}
        seed_times: dict[int, float] = {}
        for n in sizes:
            db = workdir / f"seed-{n}.sqlite3"
            t0 = time.monotonic()
            seeded[n] = (db, seed(db, n))
            seed_times[n] = time.monotonic() - t0

        # (a)
        levels = [(1, max(10, args.creates // 4)), (16, args.creates), (64, args.creates)]
        rows, rates = throughput(workdir, levels, seeded[biggest][0], biggest)
        out.append(
            f"### (a) `POST /jobs` throughput, durable (`synchronous=FULL`, WAL; data dir on "
            f"{fs_type(workdir)}, where one 4 KiB write + fsync takes {fsync_ms(workdir):.2f} ms "
            "at the median)\n"
        )
        out.append(
            md_table(
                [
                    "clients",
                    "creations",
                    "creations/s",
                    "p50 ms",
                    "p99 ms",
                    "daemon CPU %",
                    "load CPU %",
                    "daemon RSS MiB",
                ],
                rows,
            )
        )
        best_empty = max(v for k, v in rates.items() if "empty" in k and not k.startswith("1 "))
        full_key = next((k for k in rates if "already queued" in k), None)
        results.goals.append(
            Goal(
                "`POST /jobs` >= 1 000 durable creations/s (best of 16/64 clients, empty queue)",
                f"{best_empty:,.0f}/s",
                best_empty >= GOAL_RATE,
            )
        )
        if full_key is not None:
            results.goals.append(
                Goal(
                    f"`POST /jobs` >= 1 000/s with {biggest:,} already queued (extra check)",
                    f"{rates[full_key]:,.0f}/s",
                    rates[full_key] >= GOAL_RATE,
                )
            )

        # (b) pure scheduler
        costs = scheduler_costs(sizes, args.picks)
        out.append(
            f"\n### (b) dispatch cost: `Scheduler` in-process, µs p50 / p99 "
            f"({args.picks} picks per size, queue size held constant, {len(MODELS)} models)\n"
        )
        srows = []
        for n in sizes:
            c = costs[n]
            srows.append(
                [f"{n:,}", fmt_us(c["pick"]), fmt_us(c["add"]), fmt_us(c["order10"]),
                 fmt_us(c["position"])]
            )  # fmt: skip
        out.append(
            md_table(["queued", "pick()", "add()", "order(limit=10)", "position(key)"], srows)
        )
        small, large = (
            statistics.median(costs[min(sizes)]["pick"]),
            statistics.median(costs[biggest]["pick"]),
        )
        results.goals.append(
            Goal(
                f"dispatch cost flat from {min(sizes)} to {biggest:,} queued "
                f"(`Scheduler.pick` p50 grows < {FLAT_SLACK_US:g} µs)",
                f"{small:.1f} µs -> {large:.1f} µs (+{large - small:.1f} µs, {large / small:.1f}x)",
                large - small < FLAT_SLACK_US,
            )
        )

        # (b, c, d) daemon with n queued
        drows = []
        restart_rows = []
        rss_rows = []
        daemon_costs: dict[int, dict[str, list[float]]] = {}
        restarts: dict[int, list[tuple[float, float, float, float]]] = {}
        for n in sizes:
            db, ids = seeded[n]
            data = workdir / f"daemon-{n}"
            data.mkdir()
            shutil.copy(db, data / "foreman.sqlite3")
            trials = args.restarts if n == biggest else 1
            for t in range(trials):
                server, queue_ready, ready, reported, rss_ready = timed_start(
                    f"daemon-{n}-{t}", workdir, data
                )
                try:
                    restarts.setdefault(n, []).append((queue_ready, ready, reported, rss_ready))
                    if t == 0:
                        daemon_costs[n] = request_costs(server.url, ids[len(ids) // 2], args.rounds)
                        rss_after = rss_mib(server.popen.pid)
                        rss_rows.append([f"{n:,}", f"{rss_ready:.1f}", f"{rss_after:.1f}"])
                finally:
                    server.stop()
        names = list(daemon_costs[sizes[0]])
        for n in sizes:
            drows.append([f"{n:,}"] + [fmt_us(daemon_costs[n][name]) for name in names])
        out.append(
            f"\n### (b) dispatch cost, daemon view: latency in ms p50 / p99 with n queued "
            f"(one keep-alive client, up to {args.rounds} rounds or "
            f"{PER_KIND_BUDGET:g} s per kind)\n"
        )
        out.append(md_table(["queued", *names], drows))
        for name in names:
            lo = statistics.median(daemon_costs[min(sizes)][name])
            hi = statistics.median(daemon_costs[biggest][name])
            results.goals.append(
                Goal(
                    f"daemon `{name}` flat from {min(sizes)} to {biggest:,} queued "
                    f"(p50 <= {FLAT_FACTOR:g}x; extra check)",
                    f"{lo:.2f} ms -> {hi:.2f} ms ({hi / lo:.1f}x)",
                    hi <= FLAT_FACTOR * lo,
                )
            )
        for n in sizes:
            trials_n = restarts[n]
            qr = statistics.median(t[0] for t in trials_n)
            rz = statistics.median(t[1] for t in trials_n)
            rep = statistics.median(t[2] for t in trials_n)
            restart_rows.append(
                [f"{n:,}", len(trials_n), f"{qr:.2f}", f"{rz:.2f}", f"{rep:.2f}",
                 f"{seed_times[n]:.1f}"]
            )  # fmt: skip
        out.append("\n### (c) restart: seconds from process start (median of the starts)\n")
        out.append(
            md_table(
                ["queued", "starts", "to 'job queue ready'", "to /readyz 200",
                 "queue load (daemon's own log)", "(seeding SQLite took)"],
                restart_rows,
            )
        )  # fmt: skip
        big_ready = statistics.median(t[1] for t in restarts[biggest])
        results.goals.append(
            Goal(
                f"restart with {biggest:,} queued ready to serve in < {GOAL_RESTART_S:g} s",
                f"{big_ready:.2f} s to /readyz 200",
                big_ready < GOAL_RESTART_S,
            )
        )
        out.append("\n### (d) daemon RSS (MiB) with n queued\n")
        out.append(md_table(["queued", "right after ready", "after the requests of (b)"], rss_rows))
        big_rss = max(float(r[1]) for r in rss_rows if r[0] == f"{biggest:,}")
        big_rss = max(big_rss, max(float(r[2]) for r in rss_rows if r[0] == f"{biggest:,}"))
        results.goals.append(
            Goal(
                f"RSS with {biggest:,} queued jobs < {GOAL_RSS_MIB:g} MiB",
                f"{big_rss:.0f} MiB",
                big_rss < GOAL_RSS_MIB,
            )
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    out.append(f"\n(run took {time.monotonic() - began:.0f} s)")
    results.markdown = "\n".join(out)
    print(results.markdown)
    results.write(args.json)


if __name__ == "__main__":
    main()
