"""Benchmark: estimated start of queued work against its real start, on the simulator.

Run: ``.venv/bin/python bench/eta.py`` (about 70 s on 2 cores; loopback only).
Prints markdown tables; ``--json PATH`` also writes them for ``bench/run_all.py``;
``--smoke`` is a tiny run (seconds) through every path; ``--dump PATH`` writes every
prediction and real start for a closer look, ``--keep`` keeps the logs.

SPEC: every queued job, batch line and waiting request gets an estimated start
and finish from what foreman learned per model; on a mixed workload the
median absolute error of the predicted start is below 20 % of the wait; an
estimate made before anything is learned says so (``known: false``).

Processes: the Ollama simulator (``python bench/eta.py simulator``: one load
time per model, ``--max-loaded`` models resident at once, tokens paced at
``--token-rate``), ``twistd -n foreman`` in front of it, and this process as
the clients. Each request asks for a number of tokens drawn around its
model's typical output length (uniform in 0.5x-1.5x), so service times vary
per request as they do on a real box.

Two runs, each on a fresh simulator and daemon, the same seeded workload:

* warm: first ``--warmup`` rounds of one job per model, one job at a time
  (load costs and service times learned; the chats already going, so the
  chat model is resident when the burst comes, as on a box in use), then the
  mixed workload;
* cold: the mixed workload straight away (nothing learned, nothing resident).

The mixed workload: a burst of ``--jobs`` durable ``POST /jobs`` over the
models (weighted, shuffled); after ``--batch-at`` s a batch of
``--batch-lines`` lines (``POST /v1/files`` + ``POST /v1/batches``); and,
from the start until the last job ends, an interactive ``POST /api/chat``
every 0.5-1.5x ``--chat-every`` s from other connections (``--chat-models``
alternating), each held in the queue until it is dispatched (those sent
before the burst are not measured).

Predictions sampled: a job's ``eta`` in its ``POST /jobs`` answer (or ``GET
/jobs/{id}`` right after when the answer had none); a batch line's in a
``GET /queue`` right after the batch is ``in_progress``; a chat's in a ``GET
/queue`` right after it was sent (matched by model and time waited); and,
every ``--snapshot-every`` s, every waiting job's and line's ``eta`` in
``GET /queue`` ("later"). When everything is done each predicted start is
compared with the real one: a job's ``started_at`` (dispatch, the load
included after it), a chat's send time plus its ``X-Foreman-Queue-Wait-Ms``.
Error = predicted - real (positive: predicted later than it happened); the
wait = real start - the moment the prediction was read; relative error =
|error| / max(wait, 0.1 s). A last column adds back to each error the time
chats held the target during that wait: what an estimate that cannot know
future chats, but is otherwise right, would still miss.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs
from attrs import define, field

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
    start_foreman,
)
from bench._util import RawClient, Server, parse_args, spawn_ready, stop_all
from bench.batches import ENDPOINT, create_batch, upload

HERE = Path(__file__).resolve()
DEADLINE = 150.0  # seconds for one run's work; a hang fails instead of waiting forever
TERMINAL = ("done", "failed", "cancelled")
GOAL_REL = 0.20
REL_FLOOR = 0.1  # seconds: the relative error of a prediction is |error| / max(wait, this)
SEED = 20261205
SMOKE = {
    "models": "llama3.2=0.05,qwen3=0.08,gemma3=0.1",
    "tokens": "llama3.2=8,qwen3=16,gemma3=24",
    "token_rate": 800.0,
    "warmup": 1,
    "jobs": 12,
    "batch_lines": 4,
    "batch_at": 0.3,
    "chat_every": 0.3,
    "snapshot_every": 0.5,
}


# -- the simulator ----------------------------------------------------------------------


def serve_simulator(models: str, token_rate: float, max_loaded: int) -> None:
    """The Ollama simulator with one load time per model; prints ``READY <url>``."""
    from twisted.internet import reactor
    from twisted.internet.defer import ensureDeferred

    from foreman.testing import ModelSpec, OllamaSimulator

    specs = [ModelSpec(name, load_time=seconds) for name, seconds in pairs(models).items()]
    sim = OllamaSimulator(
        models=specs,
        token_rate=token_rate,
        load_time=0.0,
        reply_tokens=8,
        record_limit=1000,
        max_loaded=max_loaded,
    )

    async def start() -> None:
        await sim.listen("tcp:0:interface=127.0.0.1")
        print(f"READY {sim.url}", flush=True)

    ensureDeferred(start())
    r: Any = reactor
    r.run()


def start_simulator(name: str, workdir: Path, load: Load) -> Server:
    spec = ",".join(f"{m}={t:g}" for m, t in load.models.items())
    argv = [PY, str(HERE), "simulator", spec, str(load.token_rate), str(load.max_loaded)]
    return spawn_ready(name, argv, workdir)


def pairs(text: str) -> dict[str, float]:
    """``a=1,b=2`` → ``{"a": 1.0, "b": 2.0}``."""
    out: dict[str, float] = {}
    for part in text.split(","):
        name, _, value = part.partition("=")
        out[name.strip()] = float(value)
    return out


# -- the workload -----------------------------------------------------------------------


@define
class Load:
    models: dict[str, float]  # load seconds
    tokens: dict[str, float]  # typical output length
    weights: dict[str, float]  # share of the burst
    chat_models: list[str]
    token_rate: float
    max_loaded: int
    warmup: int
    jobs: int
    batch_lines: int
    batch_model: str
    batch_at: float
    chat_every: float
    snapshot_every: float


@define
class Prediction:
    kind: str  # job | line | chat
    key: str  # job id, or chat-<n>
    model: str
    phase: str  # submission | later
    at: float  # when it was read (epoch s)
    start: float  # predicted start (epoch s)
    known: bool


@define
class Outcome:
    predictions: list[Prediction] = field(factory=list)
    starts: dict[str, float] = field(factory=dict)  # real starts by key
    ends: dict[str, float] = field(factory=dict)  # chats: when the answer arrived
    kinds: dict[str, str] = field(factory=dict)  # job id -> job | line
    models: dict[str, str] = field(factory=dict)  # key -> model
    jobs: list[dict[str, Any]] = field(factory=list)
    batch: dict[str, Any] = field(factory=dict)
    batch_eta: dict[str, Any] | None = None
    batch_eta_at: float = 0.0
    chats: int = 0  # sent from the burst on
    chats_at_once: int = 0  # dispatched before the probe saw them waiting
    jobs_at_once: int = 0  # POST /jobs answered already running: no estimate
    learned: dict[str, Any] = field(factory=dict)
    loads_before: int = 0  # model loads by the simulator before the burst
    sim_state: dict[str, Any] = field(factory=dict)
    began: float = 0.0
    ended: float = 0.0


def tokens_for(load: Load, model: str, rng: random.Random) -> int:
    return max(1, round(load.tokens[model] * rng.uniform(0.5, 1.5)))


def job_body(load: Load, model: str, i: int, rng: random.Random) -> dict[str, Any]:
    options = {"num_predict": tokens_for(load, model, rng)}
    return {"request": chat_body(model, f"job {i}", options=options), "metadata": {"i": i}}


def batch_file(path: Path, load: Load, rng: random.Random) -> None:
    with open(path, "w") as f:
        for i in range(load.batch_lines):
            body = {
                "model": load.batch_model,
                "messages": [{"role": "user", "content": f"line {i}"}],
                "max_tokens": tokens_for(load, load.batch_model, rng),
            }
            line = {"custom_id": f"line-{i}", "method": "POST", "url": ENDPOINT, "body": body}
            f.write(json.dumps(line) + "\n")


def eta_start(eta: dict[str, Any]) -> float:
    return parse_rfc3339(eta["start_at"])


async def post_job(conn: AioHTTP, body: dict[str, Any], out: Outcome) -> str:
    status, doc = await conn.json("POST", "/jobs", body)
    if status != 202:
        raise RuntimeError(f"POST /jobs answered {status}: {doc}")
    job_id: str = doc["id"]
    model = body["request"]["model"]
    out.models[job_id] = model
    eta = doc.get("eta")
    if eta is None and doc["state"] == "queued":
        _, doc = await conn.json("GET", f"/jobs/{job_id}")
        eta = doc.get("eta")
    at = time.time()
    if eta is None:
        out.jobs_at_once += 1
    else:
        out.predictions.append(
            Prediction("job", job_id, model, "submission", at, eta_start(eta), eta["known"])
        )
    return job_id


async def queue_items(conn: AioHTTP) -> tuple[list[dict[str, Any]], float]:
    status, doc = await conn.json("GET", "/queue?limit=10000")
    if status != 200:
        raise RuntimeError(f"GET /queue answered {status}: {doc}")
    items: list[dict[str, Any]] = doc["data"]
    return items, time.time()


def record_snapshot(
    items: list[dict[str, Any]], at: float, out: Outcome, phase: Callable[[str], str | None]
) -> None:
    """Predictions of the waiting jobs and lines in a ``/queue`` answer read at ``at``."""
    for item in items:
        if item["kind"] == "interactive" or item.get("eta") is None:
            continue
        job_id = item["id"]
        which = phase(job_id)
        if which is None:
            continue
        eta = item["eta"]
        out.predictions.append(
            Prediction("job", job_id, item["model"], which, at, eta_start(eta), eta["known"])
        )


async def chat(
    url: str, probe: AioHTTP, lock: asyncio.Lock, load: Load, model: str, i: int, out: Outcome
) -> None:
    """One interactive chat; its estimate read from ``/queue`` while it waits."""
    rng = random.Random(SEED + 7919 * i)
    body = chat_body(model, f"chat {i}", options={"num_predict": tokens_for(load, model, rng)})
    conn = await AioHTTP.open(url)
    key = f"chat-{i}"
    try:
        sent = time.time()
        conn.send("POST", "/api/chat", json.dumps(body).encode())
        await conn.writer.drain()
        async with lock:
            items, at = await queue_items(probe)
        waiting = [
            item
            for item in items
            if item["kind"] == "interactive" and item["model"] == model and item.get("eta")
        ]
        status, head = await conn.head()
        await conn.body(head)
        if status != 200:
            raise RuntimeError(f"chat {i} answered {status}")
        out.ends[key] = time.time()
        wait_ms = head.get(b"x-foreman-queue-wait-ms")
        if wait_ms is None:
            raise RuntimeError(f"chat {i}: no X-Foreman-Queue-Wait-Ms in the answer")
        out.starts[key] = sent + float(wait_ms) / 1000
        out.models[key] = model
        if not out.began or sent < out.began:  # during the warm-up: not measured
            return
        out.chats += 1
        if not waiting:
            out.chats_at_once += 1
            return
        waited = (at - sent) * 1000
        item = min(waiting, key=lambda it: abs(it["waited_ms"] - waited))
        eta = item["eta"]
        out.predictions.append(
            Prediction("chat", key, model, "submission", at, eta_start(eta), eta["known"])
        )
    finally:
        conn.close()


async def all_jobs(conn: AioHTTP) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    after = ""
    while True:
        _, page = await conn.json("GET", f"/jobs?limit=1000{after}")
        found += page["data"]
        if not page["has_more"]:
            return found
        after = f"&after={page['next_after']}"


async def wait_jobs(conn: AioHTTP, ids: Sequence[str]) -> None:
    """Until every job in ``ids`` has ended."""
    deadline = time.monotonic() + DEADLINE
    for job_id in ids:
        while True:
            _, job = await conn.json("GET", f"/jobs/{job_id}?wait=5")
            if job["state"] in TERMINAL:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"job {job_id} not finished after {DEADLINE:g} s: {job}")


def run_batch(url: str, path: Path) -> tuple[dict[str, Any], float]:
    """Upload ``path``, create its batch, wait until ``in_progress`` (blocking, in a thread)."""
    _, doc = upload(url, path)
    client = RawClient(url, timeout=60)
    try:
        batch, _ = create_batch(client, doc["id"])
        while batch["status"] == "validating":
            status, data = client.request(
                "GET", f"/v1/batches/{batch['id']}?wait=10&status=validating"
            )
            if status != 200:
                raise RuntimeError(f"GET /v1/batches answered {status}: {data[:300]!r}")
            batch = json.loads(data)
        at = time.time()
        if batch["status"] != "in_progress":
            raise RuntimeError(f"the batch is {batch['status']}: {batch}")
        return batch, at
    finally:
        client.close()


async def drive(url: str, sim_url: str, load: Load, warm: bool, workdir: Path) -> Outcome:
    out = Outcome()
    rng = random.Random(SEED)
    conn = await AioHTTP.open(url)
    models = list(load.models)

    stop = asyncio.Event()
    posted: set[str] = set()
    chats: list[asyncio.Task[None]] = []
    probe = await AioHTTP.open(url)
    lock = asyncio.Lock()
    gaps = random.Random(SEED + 2)

    async def chatter() -> None:
        i = 0
        while not stop.is_set():
            model = load.chat_models[i % len(load.chat_models)]
            chats.append(asyncio.create_task(chat(url, probe, lock, load, model, i, out)))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), load.chat_every * gaps.uniform(0.5, 1.5))
            i += 1

    chatting = asyncio.create_task(chatter())
    if warm:  # every model learned (load cost and service), one at a time, chats going on
        for k in range(load.warmup):
            for m, model in enumerate(models):
                body = job_body(load, model, -1 - k * len(models) - m, rng)
                status, doc = await conn.json("POST", "/jobs", body)
                if status != 202:
                    raise RuntimeError(f"POST /jobs answered {status}: {doc}")
                await wait_jobs(conn, [doc["id"]])
                _, job = await conn.json("GET", f"/jobs/{doc['id']}")
                out.starts[job["id"]] = parse_rfc3339(job["started_at"])  # a first request
                out.models[job["id"]] = job["model"]

    rng = random.Random(SEED + 1)  # the same mixed workload warm or cold
    weights = [load.weights.get(m, 1.0) for m in models]
    burst = rng.choices(models, weights, k=load.jobs)
    bodies = [job_body(load, model, i, rng) for i, model in enumerate(burst)]
    path = workdir / f"batch-{'warm' if warm else 'cold'}.jsonl"
    batch_file(path, load, rng)

    async def snapshots() -> None:
        snap = await AioHTTP.open(url)
        try:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), load.snapshot_every)
                if stop.is_set():
                    return
                items, at = await queue_items(snap)
                record_snapshot(items, at, out, lambda job_id: "later")
        finally:
            snap.close()

    async def batch() -> None:
        await asyncio.sleep(load.batch_at)
        out.batch, at = await asyncio.to_thread(run_batch, url, path)
        out.batch_eta, out.batch_eta_at = out.batch.get("eta"), at
        snap = await AioHTTP.open(url)
        try:
            items, at = await queue_items(snap)
        finally:
            snap.close()
        # the lines (not posted here) read now are "at submission"; the jobs "later"
        record_snapshot(
            items, at, out, lambda job_id: "later" if job_id in posted else "submission"
        )

    sim = await AioHTTP.open(sim_url)
    _, state = await sim.json("GET", "/_simulator/state")
    out.loads_before = state["loads"]
    out.began = time.time()
    batching = asyncio.create_task(batch() if load.batch_lines else asyncio.sleep(0))
    snapping = asyncio.create_task(snapshots())
    ids = []
    for body in bodies:
        job_id = await post_job(conn, body, out)
        posted.add(job_id)
        ids.append(job_id)
    await batching
    line_ids = []
    if load.batch_lines:
        _, page = await conn.json("GET", "/jobs?limit=1000")
        line_ids = [j["id"] for j in page["data"] if (j.get("batch") or {}).get("id")]
    await wait_jobs(conn, ids + line_ids)
    stop.set()
    await asyncio.gather(chatting, snapping)
    await asyncio.gather(*chats)
    probe.close()
    out.ended = time.time()

    out.jobs = [j for j in await all_jobs(conn) if j["id"] in posted or j.get("batch")]
    for job in out.jobs:
        if job["state"] != "done" or job["attempts"] != 0:
            raise RuntimeError(f"a job did not run once and succeed: {job}")
        out.starts[job["id"]] = parse_rfc3339(job["started_at"])
        out.kinds[job["id"]] = "line" if job.get("batch") else "job"
        out.models[job["id"]] = job["model"]
    for p in out.predictions:
        if p.kind == "job":
            p.kind = out.kinds.get(p.key, "job")
    if load.batch_lines:
        _, out.batch = await conn.json("GET", f"/v1/batches/{out.batch['id']}")
    _, status = await conn.json("GET", "/status")
    out.learned = status.get("learned") or {}
    conn.close()
    _, out.sim_state = await sim.json("GET", "/_simulator/state")
    sim.close()
    return out


def run(tag: str, load: Load, warm: bool, workdir: Path) -> Outcome:
    """One fresh simulator and daemon, driven until every job is done."""
    servers: list[Server] = []
    try:
        sim = start_simulator(f"sim-{tag}", workdir, load)
        servers.append(sim)
        daemon = start_foreman(tag, workdir, sim.url)
        servers.append(daemon)
        asyncio.run(wait_target_up(daemon.url))
        return asyncio.run(drive(daemon.url, sim.url, load, warm, workdir))
    finally:
        stop_all(servers)


async def wait_target_up(url: str) -> None:
    conn = await AioHTTP.open(url)
    try:
        for _ in range(400):
            _, body = await conn.json("GET", "/readyz")
            if body.get("target") == "up":
                return
            await asyncio.sleep(0.05)
    finally:
        conn.close()
    raise RuntimeError("the daemon never saw the simulator up")


# -- figures ----------------------------------------------------------------------------


@define
class Stats:
    n: int
    unknown: int
    wait50: float
    abs50: float
    abs90: float
    rel50: float
    rel90: float
    bias50: float  # median signed error
    rel50_chats: float  # median relative error with the chats' time during the wait removed


def chat_time(o: Outcome, begin: float, end: float) -> float:
    """Seconds of ``[begin, end]`` during which a chat held the target (start to answer)."""
    held = 0.0
    for key, done in o.ends.items():
        start = o.starts.get(key)
        if start is not None and start < end and done > begin:
            held += min(done, end) - max(start, begin)
    return held


def stats(preds: Sequence[Prediction], o: Outcome) -> Stats | None:
    errors, waits, rels, rels_chats = [], [], [], []
    for p in preds:
        real = o.starts[p.key]
        error = p.start - real
        wait = real - p.at
        errors.append(error)
        waits.append(wait)
        rels.append(abs(error) / max(wait, REL_FLOOR))
        if p.kind != "chat":  # a chat is not held back by the chats after it
            error += chat_time(o, p.at, real)
        rels_chats.append(abs(error) / max(wait, REL_FLOOR))
    if not errors:
        return None
    abs50, abs90 = pcts([abs(e) for e in errors], 50, 90)
    rel50, rel90 = pcts(rels, 50, 90)
    return Stats(
        n=len(errors),
        unknown=sum(not p.known for p in preds),
        wait50=statistics.median(waits),
        abs50=abs50,
        abs90=abs90,
        rel50=rel50,
        rel90=rel90,
        bias50=statistics.median(errors),
        rel50_chats=statistics.median(rels_chats),
    )


HEADS = ["run", "predictions", "n", "known: false", "real wait p50", "abs error p50",
         "abs error p90", "relative p50", "relative p90", "error p50 (bias)",
         "relative p50, chats' time removed"]  # fmt: skip


def row(run_name: str, label: str, s: Stats | None) -> list[object]:
    if s is None:
        return [run_name, label, 0, *["-"] * (len(HEADS) - 3)]
    return [
        run_name, label, s.n, s.unknown, f"{s.wait50:.2f}", f"{s.abs50:.2f}", f"{s.abs90:.2f}",
        f"{s.rel50:.0%}", f"{s.rel90:.0%}", f"{s.bias50:+.2f}", f"{s.rel50_chats:.0%}",
    ]  # fmt: skip


def select(
    preds: Sequence[Prediction],
    kinds: Sequence[str] = ("job", "line", "chat"),
    phase: str | None = "submission",
    known: bool | None = None,
) -> list[Prediction]:
    return [
        p
        for p in preds
        if p.kind in kinds
        and (phase is None or p.phase == phase)
        and (known is None or p.known == known)
    ]


def rows_for(run_name: str, o: Outcome, split_known: bool) -> list[list[object]]:
    ps = o.predictions
    later = select(ps, ["job", "line"], "later")
    rows = [
        row(run_name, "jobs, in the `POST /jobs` answer", stats(select(ps, ["job"]), o)),
        row(run_name, "batch lines, once `in_progress`", stats(select(ps, ["line"]), o)),
        row(run_name, "chats, while waiting", stats(select(ps, ["chat"]), o)),
        row(run_name, "**all, at submission**", stats(select(ps), o)),
    ]
    if split_known:
        rows += [
            row(run_name, "… of which `known: false`", stats(select(ps, known=False), o)),
            row(run_name, "… of which `known: true`", stats(select(ps, known=True), o)),
        ]
    rows.append(row(run_name, "jobs and lines, later (`/queue` snapshots)", stats(later, o)))
    if split_known:
        unknown = select(later, phase=None, known=False)
        rows.append(row(run_name, "… of which `known: false`", stats(unknown, o)))
    return rows


def first_starts(o: Outcome) -> dict[str, float]:
    """The real start of each model's first request (jobs, lines and chats)."""
    first: dict[str, float] = {}
    for key, start in o.starts.items():
        model = canonical(o.models[key])
        first[model] = min(first.get(model, start), start)
    return first


def canonical(model: str) -> str:
    return model if ":" in model.rsplit("/", 1)[-1] else f"{model}:latest"


def promises_without_data(o: Outcome) -> list[Prediction]:
    """Predictions read ``known: true`` before any request of their model had even started."""
    first = first_starts(o)
    return [
        p for p in o.predictions if p.known and p.at < first.get(canonical(p.model), float("inf"))
    ]


def main() -> None:
    if sys.argv[1:2] == ["simulator"]:
        models, rate, max_loaded = sys.argv[2:5]
        serve_simulator(models, float(rate), int(max_loaded))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--models", default="llama3.2=0.4,qwen3=0.7,gemma3=1.0", help="name=load seconds,..."
    )
    parser.add_argument(
        "--tokens", default="llama3.2=20,qwen3=40,gemma3=60", help="typical reply tokens per model"
    )
    parser.add_argument(
        "--weights", default="llama3.2=3,qwen3=2,gemma3=1", help="share of the burst per model"
    )
    parser.add_argument("--chat-models", default="llama3.2", help="comma-separated, alternating")
    parser.add_argument("--token-rate", type=float, default=300.0)
    parser.add_argument("--max-loaded", type=int, default=2)
    parser.add_argument(
        "--warmup", type=int, default=3, help="rounds of one job per model first (warm)"
    )
    parser.add_argument("--jobs", type=int, default=120, help="durable jobs in the burst")
    parser.add_argument("--batch-lines", type=int, default=20)
    parser.add_argument("--batch-model", default="qwen3")
    parser.add_argument("--batch-at", type=float, default=3.0, help="s after the burst began")
    parser.add_argument("--chat-every", type=float, default=1.0, help="mean s between chats")
    parser.add_argument("--snapshot-every", type=float, default=2.0)
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs)")
    parser.add_argument("--dump", help="write every prediction and real start here (JSON)")
    parser.add_argument("--json", help="also write the results here (for run_all)")
    args = parse_args(parser, SMOKE)
    load = Load(
        models=pairs(args.models),
        tokens=pairs(args.tokens),
        weights=pairs(args.weights),
        chat_models=args.chat_models.split(","),
        token_rate=args.token_rate,
        max_loaded=args.max_loaded,
        warmup=args.warmup,
        jobs=args.jobs,
        batch_lines=args.batch_lines,
        batch_model=args.batch_model,
        batch_at=args.batch_at,
        chat_every=args.chat_every,
        snapshot_every=args.snapshot_every,
    )
    began = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="foreman-bench-eta-"))
    try:
        warm = run("warm", load, True, workdir)
        cold = run("cold", load, False, workdir)
    finally:
        if args.keep:
            print(f"work dir kept: {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    if args.dump:
        Path(args.dump).write_text(json.dumps({"warm": dump(warm), "cold": dump(cold)}))
    report(args, load, warm, cold, time.monotonic() - began)


def dump(o: Outcome) -> dict[str, Any]:
    """The raw data of a run, for a closer look (``--dump``)."""
    return {
        "predictions": [attrs.asdict(p) for p in o.predictions],
        "starts": o.starts,
        "models": o.models,
        "ends": o.ends,
        "learned": o.learned,
    }


def when(value: str | float) -> float:
    """An RFC 3339 time or epoch seconds (a batch's ``eta`` is in OpenAI's epoch seconds)."""
    return parse_rfc3339(value) if isinstance(value, str) else float(value)


def run_notes(name: str, o: Outcome) -> str:
    learned = ", ".join(
        f"{m.split(':')[0]} {v['service_s']:.3f} s ({v['samples']})" for m, v in o.learned.items()
    )
    batch = ""
    if o.batch_eta is not None:
        predicted = when(o.batch_eta["finish_at"])
        real = max(parse_rfc3339(j["finished_at"]) for j in o.jobs if j.get("batch"))
        batch = (
            f"; the batch's `eta.finish_at` once `in_progress`: {predicted - real:+.1f} s "
            f"against its last line's end ({real - o.batch_eta_at:.1f} s ahead)"
        )
    return (
        f"* {name}: {len(o.jobs)} jobs and lines, {o.chats} chats ({o.chats_at_once} "
        f"dispatched before the probe saw them wait), "
        f"{o.sim_state.get('loads', 0) - o.loads_before} model loads and "
        f"{o.ended - o.began:.1f} s from the burst to the last job's end; "
        f"{o.jobs_at_once} jobs already running in their `POST` answer; learned service per "
        f"model (samples): {learned}{batch}."
    )


def report(args: argparse.Namespace, load: Load, warm: Outcome, cold: Outcome, took: float) -> None:
    results = Results("Estimates: predicted start against the real start")
    desc = ", ".join(
        f"{m} (load {t:g} s, ~{load.tokens[m]:g} tokens = "
        f"{load.tokens[m] / load.token_rate * 1000:.0f} ms)"
        for m, t in load.models.items()
    )
    chats = " and ".join(load.chat_models)
    lines = [
        header_lines(),
        "",
        f"Simulator: {desc}; {load.token_rate:g} tokens/s, reply lengths uniform in 0.5-1.5x "
        f"the typical, {load.max_loaded} models resident at once. Mixed workload: {load.jobs} "
        f"`POST /jobs` at once (weights {args.weights}), a {load.batch_lines}-line batch of "
        f"{load.batch_model} {load.batch_at:g} s later, a chat ({chats}) every "
        f"{load.chat_every / 2:g}-{load.chat_every * 1.5:g} s from the start until the last "
        f"job ends; warm: first {load.warmup} rounds of one job per model, one at a time; "
        "cold: nothing learned or resident. Error = "
        "predicted start - real start (+: predicted later; a job's real start is its "
        "`started_at`); wait = real start - when the prediction was read; relative = "
        f'abs(error) / max(wait, {REL_FLOOR:g} s); "chats\' time removed": the error '
        "plus the time chats held the target during the wait (what a perfect estimate "
        "that cannot know future chats would miss). Seconds.\n",
        md_table(
            HEADS,
            rows_for("warm", warm, split_known=False) + rows_for("cold", cold, split_known=True),
        ),
        "",
        run_notes("warm", warm),
        run_notes("cold", cold),
    ]
    violations = promises_without_data(cold) + promises_without_data(warm)
    for v in violations:
        print(f"known: true without data: {v}", file=sys.stderr)
    lines.append(
        "* estimates read `known: true` before any request of their model had started: "
        f"{len(violations)}."
    )
    lines.append(f"\n(run took {took:.0f} s)")
    results.markdown = "\n".join(lines)

    w = stats(select(warm.predictions), warm)
    if w is None:
        raise RuntimeError("no prediction at submission in the warm run")
    results.goals.append(
        Goal(
            f"estimated start: median error < {GOAL_REL:.0%} of the wait (mixed workload on the "
            "simulator after a warm-up: every job, batch line and chat, read at submission)",
            f"median {w.rel50:.0%}, p90 {w.rel90:.0%} of the wait; abs error {w.abs50:.2f} s / "
            f"{w.abs90:.2f} s (p50 / p90) for a median wait of {w.wait50:.1f} s, bias "
            f"{w.bias50:+.2f} s; {w.n} predictions ({w.rel50_chats:.0%} with the chats' time "
            "removed)",
            w.rel50 < GOAL_REL,
        )
    )
    at_submission = select(cold.predictions)
    c = stats(select(at_submission, known=False), cold)
    unknown = sum(not p.known for p in at_submission)
    results.goals.append(
        Goal(
            "an estimate made before anything is learned says so (cold start: `known: false`, "
            "never `known: true` before a request of its model started)",
            f"{unknown} of {len(at_submission)} cold predictions at submission `known: false`"
            + (f" (abs error p50 {c.abs50:.1f} s, p90 {c.abs90:.1f} s)" if c else "")
            + f"; {len(violations)} `known: true` without data",
            unknown > 0 and not violations,
        )
    )
    print(results.markdown)
    results.write(args.json)


if __name__ == "__main__":
    main()
