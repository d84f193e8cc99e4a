"""Benchmark: drain-by-model against FIFO on the simulator, same daemon, same load.

Run: ``.venv/bin/python bench/scheduling.py`` (about 1.5 minutes; loopback only).
Prints a markdown table; ``--json PATH`` also writes it for ``bench/run_all.py``;
``--smoke`` is a tiny run (seconds) through every path.

The target is the Ollama simulator in its own process: four models, one
resident at a time, times scaled down about 10x from a real GPU box running
short batch tasks (classification, extraction): loads of 0.2-0.5 s instead of
2-5 s, replies of 16 tokens at 400 tokens/s (40 ms instead of ~0.4 s).
foreman runs as ``twistd -n foreman``; the load comes from this process.
Two scenarios:

* batch only: jobs submitted at once, models interleaved ``ABCDABCD…`` (the
  worst case for FIFO: every job needs another model), then more jobs
  arriving over time, still interleaved;
* batch + interactive: the same, plus an interactive ``POST /api/chat``
  (priority 10, above jobs) every ``--interactive-every`` seconds,
  alternating between two models, until the last job is done. Each such
  request pulls the resident model to its own, so it shows how much of
  drain-by-model survives a mixed load.

FIFO is the same daemon with ``FOREMAN_MAX_WAIT`` tiny: the starvation bound
then fires on every pick, and every pick is the oldest request at the top
priority. Drain-by-model is the default (600 s). Each run gets a fresh
simulator and a fresh daemon; the runs go one after the other.

Reported per mode: model loads and swaps (counted by the simulator), the
worker's model switches, makespan (first job submitted to last job
finished), job wait (``started_at - created_at``) and the interactive
requests' queue wait (``X-Foreman-Queue-Wait-Ms``) and end-to-end latency.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import attrs
from attrs import define, field

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
    start_foreman,
    start_simulator,
)
from bench._util import Server, parse_args, stop_all

DEADLINE = 180.0  # seconds for one run's jobs; a hang fails instead of waiting forever
TERMINAL = ("done", "failed", "cancelled")
MODES = {"FIFO (FOREMAN_MAX_WAIT=0.001)": "0.001", "drain-by-model (default, 600 s)": "600"}
SMOKE = {
    "models": "llama3.2=0.02,qwen3=0.03,gemma3=0.04,mistral=0.05",
    "batch": 8,
    "arrivals": 2,
    "arrival_gap": 0.1,
    "interactive_every": 0.3,
    "token_rate": 2000.0,
    "reply_tokens": 4,
    "at_once": 4,
}


@define
class Load:
    models: dict[str, float]
    interactive_models: list[str]
    batch: int
    arrivals: int
    arrival_gap: float
    interactive_every: float
    token_rate: float
    reply_tokens: int


@define
class Outcome:
    jobs: list[dict[str, Any]] = field(factory=list)
    first_submit: float = 0.0
    interactive_wait_ms: list[float] = field(factory=list)
    interactive_e2e_ms: list[float] = field(factory=list)
    interactive_failed: int = 0
    sim_state: dict[str, Any] = field(factory=dict)
    status: dict[str, Any] = field(factory=dict)


async def submit(conn: AioHTTP, model: str, i: int) -> str:
    body = {"request": chat_body(model, f"batch item {i}"), "metadata": {"i": i}}
    status, doc = await conn.json("POST", "/jobs", body)
    if status != 202:
        raise RuntimeError(f"POST /jobs answered {status}: {doc}")
    job_id: str = doc["id"]
    return job_id


async def interactive(url: str, model: str, i: int, out: Outcome) -> None:
    conn = await AioHTTP.open(url)
    try:
        body = json.dumps(chat_body(model, f"interactive question {i}")).encode()
        t0 = time.perf_counter()
        status, head, _ = await conn.request("POST", "/api/chat", body)
        elapsed = (time.perf_counter() - t0) * 1000
        if status != 200:
            out.interactive_failed += 1
            return
        out.interactive_e2e_ms.append(elapsed)
        out.interactive_wait_ms.append(float(head.get(b"x-foreman-queue-wait-ms", b"nan")))
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


async def drive(url: str, sim_url: str, load: Load) -> Outcome:
    out = Outcome()
    models = list(load.models)
    conn = await AioHTTP.open(url)
    stop = asyncio.Event()
    chats: list[asyncio.Task[None]] = []

    async def chatter() -> None:
        i = 0
        while not stop.is_set():
            model = load.interactive_models[i % len(load.interactive_models)]
            chats.append(asyncio.create_task(interactive(url, model, i, out)))
            i += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), load.interactive_every)

    ids: set[str] = set()
    out.first_submit = time.time()
    for i in range(load.batch):
        ids.add(await submit(conn, models[i % len(models)], i))
    chatting = asyncio.create_task(chatter() if load.interactive_every > 0 else stop.wait())
    for k in range(load.arrivals):
        await asyncio.sleep(load.arrival_gap)
        i = load.batch + k
        ids.add(await submit(conn, models[i % len(models)], i))
    deadline = time.monotonic() + DEADLINE
    while True:
        await asyncio.sleep(0.25)
        _, status = await conn.json("GET", "/status")
        if time.monotonic() > deadline:
            raise RuntimeError(f"jobs not finished after {DEADLINE:g} s: {status}")
        current = status["worker"]["current"] or {}
        if status["queue"]["by_kind"].get("job", 0) or current.get("kind") == "job":
            continue
        jobs = [j for j in await all_jobs(conn) if j["id"] in ids]
        if len(jobs) == len(ids) and all(j["state"] in TERMINAL for j in jobs):
            break
    stop.set()
    await chatting
    await asyncio.gather(*chats)
    out.jobs = jobs
    _, out.status = await conn.json("GET", "/status")
    conn.close()
    sim = await AioHTTP.open(sim_url)
    _, out.sim_state = await sim.json("GET", "/_simulator/state")
    sim.close()
    return out


def run_mode(tag: str, max_wait: str, load: Load, workdir: Path) -> Outcome:
    """One fresh simulator and daemon (named ``tag``), driven until every job is done."""
    servers: list[Server] = []
    try:
        sim = start_simulator(
            f"sim-{tag}", workdir, load.models, load.token_rate, load.reply_tokens
        )
        servers.append(sim)
        daemon = start_foreman(tag, workdir, sim.url, env={"FOREMAN_MAX_WAIT": max_wait})
        servers.append(daemon)
        asyncio.run(wait_target_up(daemon.url))
        return asyncio.run(drive(daemon.url, sim.url, load))
    finally:
        stop_all(servers)


async def wait_target_up(url: str) -> None:
    conn = await AioHTTP.open(url)
    try:
        for _ in range(200):
            _, body = await conn.json("GET", "/readyz")
            if body.get("target") == "up":
                return
            await asyncio.sleep(0.05)
    finally:
        conn.close()
    raise RuntimeError("the daemon never saw the simulator up")


def summarize(scenario: str, name: str, o: Outcome) -> list[object]:
    done = [j for j in o.jobs if j["state"] == "done"]
    waits = [parse_rfc3339(j["started_at"]) - parse_rfc3339(j["created_at"]) for j in done]
    last = max(parse_rfc3339(j["finished_at"]) for j in done)
    makespan = last - o.first_submit
    jw50, jw95 = pcts(waits, 50, 95)
    iw50, iw95 = pcts(o.interactive_wait_ms, 50, 95)
    ie50, ie95 = pcts(o.interactive_e2e_ms, 50, 95)
    chats = o.interactive_wait_ms or o.interactive_failed
    return [
        scenario,
        name,
        f"{len(done)}/{len(o.jobs)}",
        o.sim_state["loads"],
        o.sim_state["swaps"],
        o.status["worker"]["model_switches"],
        o.sim_state["max_in_flight"],
        f"{makespan:.1f}",
        f"{jw50:.1f} / {jw95:.1f}",
        f"{len(o.interactive_wait_ms)}"
        + (f" ({o.interactive_failed} failed)" if o.interactive_failed else ""),
        f"{iw50:.0f} / {iw95:.0f}" if chats else "-",
        f"{ie50:.0f} / {ie95:.0f}" if chats else "-",
    ]


def makespan(o: Outcome) -> float:
    return max(parse_rfc3339(j["finished_at"]) for j in o.jobs) - o.first_submit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--models",
        default="llama3.2=0.2,qwen3=0.3,gemma3=0.4,mistral=0.5",
        help="name=load seconds, comma-separated",
    )
    parser.add_argument("--interactive-models", default="llama3.2,gemma3")
    parser.add_argument("--batch", type=int, default=48, help="jobs submitted at once")
    parser.add_argument("--arrivals", type=int, default=12, help="jobs arriving afterwards")
    parser.add_argument("--arrival-gap", type=float, default=0.5, help="seconds between them")
    parser.add_argument("--interactive-every", type=float, default=1.0)
    parser.add_argument("--token-rate", type=float, default=400.0)
    parser.add_argument("--reply-tokens", type=int, default=16)
    parser.add_argument(
        "--at-once", type=int, default=1, help="runs at the same time (they compete for the cores)"
    )
    parser.add_argument("--json", help="also write the results here (for run_all)")
    args = parse_args(parser, SMOKE)
    models = {}
    for part in args.models.split(","):
        name, _, seconds = part.partition("=")
        models[name] = float(seconds)
    load = Load(
        models=models,
        interactive_models=args.interactive_models.split(","),
        batch=args.batch,
        arrivals=args.arrivals,
        arrival_gap=args.arrival_gap,
        interactive_every=args.interactive_every,
        token_rate=args.token_rate,
        reply_tokens=args.reply_tokens,
    )

    scenarios = {
        "batch only": attrs.evolve(load, interactive_every=0.0),
        "batch + interactive": load,
    }
    began = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="foreman-bench-sched-"))
    try:
        # one after the other unless --at-once: runs at the same time compete for the cores
        with ThreadPoolExecutor(args.at_once) as pool:
            futures = {
                (scenario, name): pool.submit(
                    run_mode,
                    f"{'fifo' if max_wait != '600' else 'drain'}-{k}",
                    max_wait,
                    scenario_load,
                    workdir,
                )
                for k, (scenario, scenario_load) in enumerate(scenarios.items())
                for name, max_wait in MODES.items()
            }
        outcomes = {key: future.result() for key, future in futures.items()}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    results = Results("Scheduling: drain-by-model against FIFO")
    loads_desc = ", ".join(f"{m} {t:g} s" for m, t in models.items())
    lines = [
        header_lines(),
        "",
        f"Simulator: {len(models)} models (load {loads_desc}), one resident at a time, "
        f"{args.reply_tokens} tokens at {args.token_rate:g} tokens/s per reply. Jobs: "
        f"{args.batch} at once (models interleaved), {args.arrivals} more every "
        f"{args.arrival_gap:g} s (still interleaved). Interactive: a chat every "
        f"{args.interactive_every:g} s ({', '.join(load.interactive_models)} alternating, "
        "priority 10 above the jobs) until the last job is done. Times in s unless marked "
        "ms; pairs are p50 / p95.\n",
        md_table(
            ["scenario", "mode", "jobs done", "model loads", "swaps", "worker switches",
             "max in flight", "makespan s", "job wait s", "interactive",
             "interactive queue wait ms", "interactive end-to-end ms"],
            [summarize(sc, name, o) for (sc, name), o in outcomes.items()],
        ),
        "",
    ]  # fmt: skip
    fifo_name, drain_name = MODES
    measured = []
    ok = True
    for scenario in scenarios:
        fifo, drain = outcomes[(scenario, fifo_name)], outcomes[(scenario, drain_name)]
        lf, ld = fifo.sim_state["loads"], drain.sim_state["loads"]
        mf, md = makespan(fifo), makespan(drain)
        lines.append(
            f"* {scenario}: drain-by-model loads models {lf / max(1, ld):.1f}x less often "
            f"({ld} against {lf}) and finishes in {md / mf:.2f}x the time of FIFO "
            f"({md:.1f} s against {mf:.1f} s)."
        )
        measured.append(f"{scenario}: loads {ld} vs {lf}, makespan {md:.1f} s vs {mf:.1f} s")
        ok = ok and ld < lf and all(o.sim_state["max_in_flight"] == 1 for o in (fifo, drain))
    lines.append(f"\n(run took {time.monotonic() - began:.0f} s)")
    results.markdown = "\n".join(lines)
    results.goals.append(
        Goal(
            "drain-by-model against FIFO on the simulator: model loads and makespan side by "
            "side (drain vs FIFO)",
            "; ".join(measured),
            ok,
        )
    )
    print(results.markdown)
    results.write(args.json)


if __name__ == "__main__":
    main()
