"""Benchmark: the proxy's added latency against queue depth and finished jobs in the database.

Run: ``.venv/bin/python bench/latency_depth.py`` (about 1-1.5 min; loopback only).
Prints markdown tables; ``--json PATH`` also writes them for ``bench/run_all.py``;
``--smoke`` is a tiny run (seconds) through every path.

SPEC (issue #16): no added latency that grows with queue depth or with the number
of finished jobs in the database. Measured: a small non-streaming interactive
``POST /api/chat`` (c=1, keep-alive, the canned fast upstream of
``bench/dispatch.py``, which answers ``/api/ps`` with the model resident) through
daemons that differ only in what their database holds; all run at once and the
rounds are interleaved, so drift on a busy machine spreads over all alike.

The queued jobs must wait without being run while the worker serves the
interactive requests, and foreman has no state for that: its one worker runs a
job whenever no interactive request waits, which with one client is between any
two of its requests (a pause stops interactive requests too). So:

* ``gated`` daemons: ``foreman.app.daemon.Daemon`` in its own process, exactly as
  ``twistd foreman`` starts it, except for one bench-only change: the worker's
  wake-up (``WorkQueue.wait_for_work``) fires only while an interactive request
  is held. Everything an interactive request goes through is the product's: the
  scheduler holding the n jobs (``add``, then ``pick`` choosing the interactive
  request by priority over them), admission, relay, the worker's bookkeeping,
  metrics and the access log. The jobs are never picked: the state is that of
  a worker that is never idle. A gated daemon with no jobs shows what the gate
  and the in-process start cost against plain ``twistd``.
* ``twistd`` daemons, unmodified: empty; 100 000 finished (``done``) jobs; and
  100 000 queued jobs whose retry backoff (``not_before``) ends in an hour, a
  real product state in which the worker leaves them alone (they wait in
  reactor timers, not in the scheduler).

The jobs are cloned through SQLite from a job that a real daemon created and ran
(row and events, ids and times renewed; models rotate over four names), so
their rows and events are what foreman writes. After the rounds every daemon's
``/status`` must show its jobs still waiting and exactly the interactive
requests dispatched.

Garbage collection: a full collection walks every tracked object, so it is the
one pause that must grow with what the daemon holds. Every daemon loads a
``sitecustomize`` (``PYTHONPATH``, bench-only) whose ``gc.callbacks`` entry notes
each oldest-generation collection, and each gated daemon times full collections
(CPU time of its thread) once started.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import shutil
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
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
    rss_mib,
    start_foreman,
)
from bench._util import (
    CHAT_BODY,
    RawClient,
    Server,
    parse_args,
    run_fast_upstream,
    spawn_ready,
    start_all,
    stop_all,
)
from bench.dispatch import GapHandler, until, wait_target_up

HERE = Path(__file__).resolve()
MODEL = "llama3.2"
MODELS = ("llama3.2", "qwen3", "gemma3", "mistral")
FLAT_P50 = 1.10  # p50 with the most jobs / p50 with none
FLAT_P99 = 1.50  # p99 likewise (a tail from 2 000 samples on a shared machine is noisy)
BACKOFF_S = 3600.0
SMOKE = {"queued": "300", "done": 300, "rounds": 5, "per_round": 10, "warmup": 20}


# -- the gated daemon (runs in its own process) ------------------------------------------


def serve_gated(target: str, data_dir: str) -> None:
    """foreman in-process as twistd starts it; the worker wakes only for interactive work."""
    from twisted.internet import reactor
    from twisted.internet.defer import Deferred, ensureDeferred
    from twisted.logger import globalLogBeginner

    from foreman.app.config import Config, check_data_dir
    from foreman.app.daemon import Daemon
    from foreman.ops.logs import make_observer
    from foreman.store.database import open_sync
    from foreman.work.queue import WorkQueue
    from foreman.work.worker import Worker

    def wait_for_interactive(self: WorkQueue) -> Deferred[None]:
        """``wait_for_work``, but jobs alone never wake the worker (re-armed on each wake)."""
        ready: Deferred[None] = Deferred()

        def check(_: object = None) -> None:
            if ready.called:
                return
            if self.interactive_waiting:
                ready.callback(None)
                return
            again: Deferred[None] = Deferred()
            again.addCallbacks(check, lambda _: None)
            self._waiter = again

        check()
        return ready

    WorkQueue.wait_for_work = wait_for_interactive  # type: ignore[method-assign]
    hand_on = Worker._hand_on

    def hand_on_interactive(self: Worker, launch: Any) -> None:
        """The hand-on at an answer's last byte (ADR 0021) under the same gate."""
        if self._queue.interactive_waiting:
            hand_on(self, launch)
        else:
            self._changed()

    Worker._hand_on = hand_on_interactive  # type: ignore[method-assign]

    def queued_interactive(self: Worker) -> int:
        """What waits for the target under the gate (a slot's ``waiting``, ADR 0023)."""
        return int(self._queue.interactive_waiting)

    Worker._queued = queued_interactive  # type: ignore[method-assign]
    config = Config(listen="tcp:0:interface=127.0.0.1", target_url=target, data_dir=Path(data_dir))
    check_data_dir(config)
    open_sync(config.db_path).close()
    globalLogBeginner.beginLoggingTo([make_observer("text", ())], redirectStandardIO=False)

    async def start() -> None:
        daemon = await Daemon.start(config, reactor)
        note_full_gc()
        print(f"READY {daemon.url}", flush=True)

    ensureDeferred(start())
    r: Any = reactor
    r.run()


def note_full_gc(repeat: int = 3) -> None:
    """Time full collections (every tracked object walked: what a gen-2 collection costs
    the daemon with this queue, a pause for every request) into ``BENCH_GC_LOG``: CPU
    time of this thread, so that other processes on the machine do not count; the
    fastest of ``repeat`` after a first one that clears the start-up garbage."""
    gc.collect()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.thread_time()
        gc.collect()
        best = min(best, time.thread_time() - t0)
    log = os.environ.get("BENCH_GC_LOG")
    if log:
        with open(log, "a") as out:
            out.write(f"GCFULL {best * 1000:.2f} {len(gc.get_objects())}\n")


#: Loaded into every daemon (``PYTHONPATH``): a ``gc.callbacks`` entry noting each
#: collection of the oldest generation (the kind that walks every live object).
GC_PROBE = """\
import gc, os, time
_path = os.environ.get("BENCH_GC_LOG")
if _path:
    _out = open(_path, "a", buffering=1)
    _began = [0]
    def _observe(phase, info):
        if info.get("generation") != 2:
            return
        if phase == "start":
            _began[0] = time.monotonic_ns()
        else:
            _out.write(f"GC2 {_began[0]} {(time.monotonic_ns() - _began[0]) / 1e6:.2f}\\n")
    gc.callbacks.append(_observe)
"""


def gc_seen(log: Path, since: int, until: int) -> tuple[float | None, int, list[float]]:
    """From a daemon's GC log: (ms of the full collection after start, objects tracked
    then: gated daemons only; ms of each gen-2 collection between ``since`` and
    ``until`` monotonic ns)."""
    full: float | None = None
    objects = 0
    seen: list[float] = []
    text = log.read_text() if log.exists() else ""
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "GCFULL":
            full, objects = float(parts[1]), int(parts[2])
        elif len(parts) == 3 and parts[0] == "GC2" and since <= int(parts[1]) <= until:
            seen.append(float(parts[2]))
    return full, objects, seen


# -- jobs written by a real daemon, then cloned -------------------------------------------


class Template:
    """One job's ``jobs`` row and ``job_events`` rows, read from a daemon's database."""

    def __init__(self, db: Path, job_id: str) -> None:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            cur = conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,))
            self.columns = [d[0] for d in cur.description]
            found = cur.fetchone()
            if found is None:
                raise RuntimeError(f"{job_id} not in {db}")
            self.row: dict[str, Any] = dict(zip(self.columns, found, strict=True))
            self.events: list[tuple[int, str, float, str]] = conn.execute(
                "SELECT seq, type, at, data FROM job_events WHERE job_id = ? ORDER BY seq",
                (job_id,),
            ).fetchall()
            self.outbox = conn.execute(
                "SELECT count(*) FROM outbox WHERE job_id = ?", (job_id,)
            ).fetchone()[0]
        finally:
            conn.close()
        self.id = job_id
        self.state = str(self.row["state"])


def clone(db: Path, template: Template, count: int, not_before: float | None = None) -> float:
    """``count`` copies of ``template`` (new ids, times moved, models rotating) in a fresh
    database at ``db``; seconds it took."""
    from foreman.core.ids import new_job_id
    from foreman.store.database import open_sync

    t0 = time.monotonic()
    conn = open_sync(db)
    conn.execute("PRAGMA synchronous = OFF")  # seeding only; the daemons run FULL
    row, tid = template.row, template.id
    created0 = float(row["created_at"])
    times = ("created_at", "started_at", "working_at", "finished_at")
    offsets = {k: None if row[k] is None else float(row[k]) - created0 for k in times}
    request = str(row["request"])
    requests = {m: request.replace(f'"{MODEL}"', f'"{m}"') for m in MODELS}
    base = time.time() - 3600.0  # well within the default retention (7 days)
    names = list(template.columns)
    jobs: list[list[Any]] = []
    events: list[tuple[Any, ...]] = []
    for i in range(count):
        created = base + i * 0.001
        job_id = new_job_id(created)
        model = MODELS[i % len(MODELS)]
        values = dict(row)
        values.update(id=job_id, model=model, request=requests[model], not_before=not_before)
        for k in times:
            offset = offsets[k]
            values[k] = None if offset is None else created + offset
        jobs.append([values[n] for n in names])
        for seq, kind, at, data in template.events:
            events.append((job_id, seq, kind, created + (at - created0), data.replace(tid, job_id)))
    conn.execute("BEGIN")
    marks = ",".join("?" * len(names))
    conn.executemany(f"INSERT INTO jobs ({','.join(names)}) VALUES ({marks})", jobs)
    conn.executemany(
        "INSERT INTO job_events (job_id, seq, type, at, data) VALUES (?, ?, ?, ?, ?)", events
    )
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return time.monotonic() - t0


async def templates(url: str, db: Path) -> tuple[Template, str]:
    """Have the daemon at ``url`` create one job while its queue is paused, read it as
    the queued template, then let it run; (queued template, the job's id)."""
    conn = await AioHTTP.open(url)
    try:
        status, doc = await conn.json("POST", "/queue/pause")
        if status != 200:
            raise RuntimeError(f"POST /queue/pause answered {status}: {doc}")
        body = {"request": chat_body(MODEL, "item 0: summarise the attached text"),
                "metadata": {"i": 0}}  # fmt: skip
        status, doc = await conn.json("POST", "/jobs", body)
        if status != 202:
            raise RuntimeError(f"POST /jobs answered {status}: {doc}")
        job_id = str(doc["id"])
        queued = Template(db, job_id)  # committed before the 202
        await conn.json("POST", "/queue/resume")

        async def done() -> bool:
            _, job = await conn.json("GET", f"/jobs/{job_id}")
            if job["state"] in ("failed", "cancelled"):
                raise RuntimeError(f"the template job ended {job['state']}: {job}")
            return bool(job["state"] == "done")

        await until("the template job to finish", done, 0.02)
    finally:
        conn.close()
    return queued, job_id


# -- measuring ----------------------------------------------------------------------------


def latency(
    urls: dict[str, str], rounds: int, per_round: int, warmup: int
) -> dict[str, list[float]]:
    """c=1 keep-alive ``POST /api/chat`` per target, rounds interleaved; ms."""
    clients = {name: RawClient(url) for name, url in urls.items()}
    samples: dict[str, list[float]] = {name: [] for name in urls}
    try:
        for name, client in clients.items():
            for _ in range(warmup):
                status, _body = client.request("POST", "/api/chat", CHAT_BODY)
                if status != 200:
                    raise RuntimeError(f"{name}: warm-up answered {status}")
        for _ in range(rounds):
            for name, client in clients.items():
                out = samples[name]
                for _ in range(per_round):
                    t0 = time.perf_counter_ns()
                    status, body = client.request("POST", "/api/chat", CHAT_BODY)
                    out.append((time.perf_counter_ns() - t0) / 1e6)
                    if status != 200 or not body:
                        raise RuntimeError(f"{name}: status {status}")
    finally:
        for client in clients.values():
            client.close()
    return samples


def status_of(url: str) -> dict[str, Any]:
    client = RawClient(url)
    try:
        status, body = client.request("GET", "/status")
    finally:
        client.close()
    if status != 200:
        raise RuntimeError(f"GET /status answered {status}")
    doc: dict[str, Any] = json.loads(body)
    return doc


class Case:
    """One daemon: what its database holds and what its /status must say afterwards."""

    def __init__(
        self, name: str, family: str, jobs: str, queued: int, retrying: int, db: Path | None
    ) -> None:
        self.name, self.family, self.jobs = name, family, jobs
        self.queued, self.retrying, self.db = queued, retrying, db
        self.server: Server | None = None
        self.rss = 0.0
        self.gc_log = Path()
        self.gc: tuple[float | None, int, list[float]] = (None, 0, [])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queued", default="10000,100000", help="queue depths besides 0")
    parser.add_argument("--done", type=int, default=100_000, help="finished jobs in the DB")
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--per-round", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--json", help="also write the results here (for run_all)")
    parser.add_argument("--serve-upstream", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--serve-gated", nargs=2, metavar=("TARGET", "DIR"), help=argparse.SUPPRESS)
    args = parse_args(parser, SMOKE)
    if args.serve_upstream:
        run_fast_upstream(GapHandler)
        return
    if args.serve_gated:
        serve_gated(*args.serve_gated)
        return
    depths = [int(s) for s in args.queued.split(",") if s]
    sent = args.warmup + args.rounds * args.per_round
    most = max(depths)

    began = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="foreman-bench-depth-"))
    servers: list[Server] = []
    seed_times: dict[str, float] = {}
    phases: dict[str, float] = {}
    try:
        upstream = spawn_ready("upstream", [PY, str(HERE), "--serve-upstream"], workdir)
        servers.append(upstream)
        tdir = workdir / "template-data"
        maker = start_foreman("template", workdir, upstream.url, data_dir=tdir)
        servers.append(maker)
        asyncio.run(wait_target_up(maker.url))
        queued_t, job_id = asyncio.run(templates(maker.url, tdir / "foreman.sqlite3"))
        maker.stop()  # every write of the finished job is in the database now
        done_t = Template(tdir / "foreman.sqlite3", job_id)
        if queued_t.state != "queued" or done_t.state != "done" or done_t.outbox:
            raise RuntimeError(f"unexpected templates: {queued_t.row}, {done_t.row}")

        cases = [
            Case("twistd, empty database", "twistd", "none", 0, 0, None),
            Case(f"twistd, {args.done:,} done", "twistd", f"{args.done:,} done", 0, 0,
                 workdir / "done.sqlite3"),
            Case(f"twistd, {most:,} queued in retry backoff", "twistd",
                 f"{most:,} queued, not_before +1 h", 0, most, workdir / "backoff.sqlite3"),
            Case("gated, empty database", "gated", "none", 0, 0, None),
        ]  # fmt: skip
        for n in depths:
            cases.append(
                Case(f"gated, {n:,} queued", "gated", f"{n:,} queued", n, 0,
                     workdir / f"queued-{n}.sqlite3")
            )  # fmt: skip
        phases["template job"] = time.monotonic() - began
        seeded: dict[int, Path] = {}  # queued databases by depth, copied for the backoff case
        for case in sorted(cases, key=lambda c: c.family != "gated"):
            t0 = time.monotonic()
            if case.db is None:
                continue
            if case.queued:
                clone(case.db, queued_t, case.queued)
                seeded[case.queued] = case.db
            elif case.retrying and case.retrying in seeded:
                shutil.copy(seeded[case.retrying], case.db)
                conn = sqlite3.connect(case.db)
                with conn:
                    conn.execute("UPDATE jobs SET not_before = ?", (time.time() + BACKOFF_S,))
                conn.close()
            elif case.retrying:
                clone(case.db, queued_t, case.retrying, time.time() + BACKOFF_S)
            else:
                clone(case.db, done_t, args.done)
            seed_times[case.name] = time.monotonic() - t0
        phases["seeding"] = sum(seed_times.values())

        probe = workdir / "gcprobe"
        probe.mkdir()
        (probe / "sitecustomize.py").write_text(GC_PROBE)

        def starter(i: int, case: Case) -> Callable[[], Server]:
            data = workdir / f"data-{i}"
            data.mkdir()
            if case.db is not None:
                shutil.move(str(case.db), data / "foreman.sqlite3")
            case.gc_log = workdir / f"gc-{i}.log"
            env = {"PYTHONPATH": str(probe), "BENCH_GC_LOG": str(case.gc_log)}
            if case.family == "twistd":
                return lambda: start_foreman(f"d{i}", workdir, upstream.url, env, data, 120)
            argv = [PY, str(HERE), "--serve-gated", upstream.url, str(data)]
            return lambda: spawn_ready(f"d{i}", argv, workdir, env, timeout=120)

        started = start_all([starter(i, c) for i, c in enumerate(cases)], servers)
        for case, server in zip(cases, started, strict=True):
            case.server = server
            asyncio.run(wait_target_up(server.url))
        phases["starting the daemons"] = time.monotonic() - began - sum(phases.values())
        time.sleep(0.5)  # let the monitors settle

        urls = {"direct (fast upstream)": upstream.url}
        urls.update({c.name: c.server.url for c in cases if c.server is not None})
        t0, since = time.monotonic(), time.monotonic_ns()
        lat = latency(urls, args.rounds, args.per_round, args.warmup)
        ended = time.monotonic_ns()
        phases["rounds"] = time.monotonic() - t0
        for case in cases:
            assert case.server is not None
            case.rss = rss_mib(case.server.popen.pid)
            case.gc = gc_seen(case.gc_log, since, ended)
            st = status_of(case.server.url)
            queue, worker = st["queue"], st["worker"]
            got = (queue["depth"], queue["retrying"], worker["dispatched"])
            if got != (case.queued, case.retrying, sent):
                raise RuntimeError(
                    f"{case.name}: /status says depth {got[0]}, retrying {got[1]}, "
                    f"dispatched {got[2]}; expected {case.queued}, {case.retrying}, {sent}"
                )
    finally:
        stop_all(servers)
        shutil.rmtree(workdir, ignore_errors=True)

    direct = "direct (fast upstream)"
    d50, d99 = pcts(lat[direct], 50, 99)
    base = {c.family: pcts(lat[c.name], 50, 99) for c in cases if c.jobs == "none"}
    rows: list[list[object]] = [[direct, "", len(lat[direct]), f"{d50:.3f}", f"{d99:.3f}",
                                 *(f"{v:.3f}" for v in pcts(lat[direct], 99.9, 100)),
                                 "", "", "", "", "", "", ""]]  # fmt: skip
    found: dict[str, tuple[float, float, float, float]] = {}
    for case in cases:
        p50, p99, p999, top = pcts(lat[case.name], 50, 99, 99.9, 100)
        b50, b99 = base[case.family]
        found[case.name] = (p50 / b50, p99 / b99, p50, p99)
        full, objects, seen = case.gc
        full_text = "" if full is None else f"{full:.0f} ({objects / 1e6:.2f} M objects)"
        seen_text = f"{len(seen)}" + (f" (longest {max(seen):.0f})" if seen else "")
        rows.append(
            [case.name, case.jobs, len(lat[case.name]), f"{p50:.3f}", f"{p99:.3f}",
             f"{p999:.3f}", f"{top:.3f}", f"{p50 - d50:+.3f}", f"{p99 - d99:+.3f}",
             f"{p50 / b50:.2f}x", f"{p99 / b99:.2f}x", f"{case.rss:.0f}", full_text, seen_text]
        )  # fmt: skip
    gated0 = next(c for c in cases if c.family == "gated" and c.jobs == "none")
    twistd0 = cases[0]
    g50, g99 = pcts(lat[gated0.name], 50, 99)
    t50, t99 = base["twistd"]
    lines = [
        header_lines(),
        "",
        "Small non-streaming `POST /api/chat` (interactive, priority 10), one keep-alive "
        f"client per daemon, {args.rounds} interleaved rounds of {args.per_round} after "
        f"{args.warmup} warm-up requests; latency in ms. Added: minus the direct row at the "
        "same percentile. Ratio: against the empty daemon of the same kind (gated or "
        "twistd). RSS after the rounds. Every daemon's `/status` afterwards: its queued "
        f"jobs all still waiting, exactly {args.warmup + args.rounds * args.per_round:,} "
        "requests dispatched.\n",
        md_table(
            ["daemon", "jobs in its database", "requests", "p50", "p99", "p99.9", "max",
             "added p50", "added p99", "p50 ratio", "p99 ratio", "RSS MiB",
             "one full GC, CPU ms (gated, after start)", "gen-2 GCs during the requests (ms)"],
            rows,
        ),
        "",
        f"Gated (worker wakes only for interactive work) against plain twistd, both empty: "
        f"p50 {g50:.3f} vs {t50:.3f} ms, p99 {g99:.3f} vs {t99:.3f} ms. Seeding (SQLite, "
        "cloned from a job a daemon ran): "
        + ", ".join(f"{name} {s:.1f} s" for name, s in seed_times.items()),
    ]  # fmt: skip
    results = Results("Interactive latency against queue depth and finished jobs")
    deepest = next(c for c in cases if c.family == "gated" and c.queued == most)
    done_case = cases[1]
    for case, what in (
        (deepest, f"with {most:,} jobs queued (in the scheduler) vs none"),
        (done_case, f"with {args.done:,} finished jobs in the database vs none"),
    ):
        r50, r99, p50, p99 = found[case.name]
        zero = gated0 if case.family == "gated" else twistd0
        z50, z99 = pcts(lat[zero.name], 50, 99)
        results.goals.append(
            Goal(
                f"interactive latency flat {what} (c=1, fast upstream; p50 <= {FLAT_P50:g}x, "
                f"p99 <= {FLAT_P99:g}x)",
                f"p50 {z50:.3f} -> {p50:.3f} ms ({r50:.2f}x), p99 {z99:.3f} -> {p99:.3f} ms "
                f"({r99:.2f}x)",
                r50 <= FLAT_P50 and r99 <= FLAT_P99,
            )
        )
    full0, objects0, _ = gated0.gc
    fullmost, objectsmost, seen = deepest.gc
    if full0 is not None and fullmost is not None:
        results.goals.append(
            Goal(
                f"one full (gen-2) garbage collection, a pause for every request, with {most:,} "
                "queued vs none (gated daemons; reported)",
                f"{full0:.0f} ms ({objects0 / 1e6:.2f} M objects) -> {fullmost:.0f} ms "
                f"({objectsmost / 1e6:.2f} M objects); {len(seen)} gen-2 collections during "
                f"the {sent:,} requests",
                None,
            )
        )
    backoff = cases[2]
    r50, r99, p50, p99 = found[backoff.name]
    results.goals.append(
        Goal(
            f"interactive latency flat with {most:,} queued jobs waiting out a retry backoff "
            f"(unmodified twistd; p50 <= {FLAT_P50:g}x, p99 <= {FLAT_P99:g}x; extra check)",
            f"p50 {t50:.3f} -> {p50:.3f} ms ({r50:.2f}x), p99 {t99:.3f} -> {p99:.3f} ms "
            f"({r99:.2f}x)",
            r50 <= FLAT_P50 and r99 <= FLAT_P99,
        )
    )
    spent = ", ".join(f"{k} {v:.1f} s" for k, v in phases.items())
    took = f"(run took {time.monotonic() - began:.0f} s: {spent})"
    goal_table = md_table(
        ["goal", "measured", "met"],
        [
            [g.goal, g.measured, {True: "yes", False: "no", None: "reported"}[g.met]]
            for g in results.goals
        ],
    )
    print(*lines, "", "Goals (SPEC, Performance, this run)\n", goal_table, "", took, sep="\n")
    results.markdown = "\n".join([*lines, "", took])
    results.write(args.json)


if __name__ == "__main__":
    main()
