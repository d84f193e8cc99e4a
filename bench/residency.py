"""Benchmark: scheduling against a target that holds several models (``max_loaded``).

Run: ``.venv/bin/python bench/residency.py`` (a few seconds; no network).
Prints markdown tables; ``--json PATH`` also writes them for ``bench/run_all.py``.

What it compares, side by side on the same arrivals:

* **FIFO**: priority, then arrival order (the scheduler with nothing counted
  as resident, so every pick is the oldest);
* **drain-by-model (one model)**: the scheduler as it was before the
  resident set, told only the model of its last dispatch;
* **residency-aware**: the scheduler told the target's resident set, as the
  worker knows it (``/api/ps`` after each load, minus models expiring
  within 5 s).

The target is the simulator's own residency state machine
(``foreman.testing._residency``: up to ``max_loaded`` models, Ollama's
eviction order, ``keep_alive`` expiry) driven in virtual time, one request
at a time as foreman's worker sends them. Virtual time makes the runs
exact, repeatable and fast at realistic sizes: three models that load in
12 s, 6 s and 3 s (14B, 7B and 3B models from a SATA SSD), 120 batch jobs
of about 4 s each submitted at once in model order ``ABCABC...`` plus one
every 3 s after, and a chat (priority 10, about 1.5 s) every 8 s on a model
drawn at random, for ``--seeds`` different random draws. The daemon-level
path (proxy, worker, ``/api/ps`` refresh) is covered by
``tests/reliability/test_residency_e2e.py`` against the real simulator.

Reported per ``max_loaded`` and policy: model loads, makespan (first job to
last job done), and chat latency p50/p95 (arrival to answer), each the mean
over the seeds.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
from pathlib import Path

from attrs import define, field, frozen

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._proc import Goal, Results, md_table, pcts
from bench._util import parse_args
from foreman.core.residency import canonical_model as sched_name
from foreman.core.scheduler import INTERACTIVE, JOB, Scheduler, Waiting
from foreman.testing._residency import Grant, Residency, Slot, StartLoad

LOAD_SECONDS = {"A": 12.0, "B": 6.0, "C": 3.0}
KEEP_ALIVE = 300.0
ABOUT_TO_EXPIRE = 5.0
MAX_WAIT = 600.0
POLICIES = ("FIFO", "drain-by-model (one model)", "residency-aware")


@frozen
class Arrival:
    at: float
    key: str
    model: str
    kind: str
    run: float


@define
class Outcome:
    loads: int = 0
    makespan: float = 0.0
    chats: list[float] = field(factory=list)


def workload(seed: int, batch: int, trickle: int, chat_every: float) -> list[Arrival]:
    rng = random.Random(seed)
    models = sorted(LOAD_SECONDS)
    out = [Arrival(0.0, f"job{i}", models[i % 3], JOB, rng.uniform(2.0, 6.0)) for i in range(batch)]
    out += [
        Arrival(3.0 * (i + 1), f"late{i}", rng.choice(models), JOB, rng.uniform(2.0, 6.0))
        for i in range(trickle)
    ]
    horizon = 3.0 * trickle + sum(a.run for a in out)
    t, n = chat_every, 0
    while t < horizon:
        out.append(Arrival(t, f"chat{n}", rng.choice(models), INTERACTIVE, rng.uniform(1.0, 2.0)))
        t += chat_every
        n += 1
    return sorted(out, key=lambda a: (a.at, a.key))


def simulate(arrivals: list[Arrival], policy: str, max_loaded: int) -> Outcome:
    """One run in virtual time: the worker picks, the target loads and answers."""
    sched = Scheduler(0.0 if policy == "FIFO" else MAX_WAIT, capacity=max_loaded)
    target = Residency(max_loaded=max_loaded)
    by_key = {a.key: a for a in arrivals}
    pending = list(reversed(arrivals))
    outcome = Outcome()
    now, seq, last = 0.0, 0, None
    while pending or len(sched):
        while pending and pending[-1].at <= now:
            a = pending.pop()
            seq += 1
            sched.add(
                Waiting(a.key, a.model, 10 if a.kind == INTERACTIVE else 0, a.at, seq, a.kind)
            )
        if not len(sched):
            now = pending[-1].at
            continue
        target.expire(now)
        if policy == "FIFO":
            resident: tuple[str, ...] = ()
        elif policy == "drain-by-model (one model)":
            resident = () if last is None else (last,)
        else:
            resident = tuple(
                e.slot.model
                for e in target.residents
                if target.expires_at(e, now) - now >= ABOUT_TO_EXPIRE
            )
        item = sched.pick(now, resident)
        assert item is not None
        a = by_key[item.key]
        slot = Slot(a.model, 4096)
        target.enqueue(item.key, slot, KEEP_ALIVE)
        step = target.step()
        if isinstance(step, StartLoad):
            now += LOAD_SECONDS[a.model]
            target.finish_load(now)
            outcome.loads += 1
            if policy == "residency-aware":  # learned from load_duration
                sched.load_costs[sched_name(a.model)] = LOAD_SECONDS[a.model]
            step = target.step()
        assert isinstance(step, Grant)
        now += a.run
        target.release(slot, now)
        last = a.model
        if a.kind == INTERACTIVE:
            outcome.chats.append(now - a.at)
        else:
            outcome.makespan = now
    return outcome


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=120)
    parser.add_argument("--trickle", type=int, default=60)
    parser.add_argument("--chat-every", type=float, default=8.0)
    parser.add_argument("--json", help="also write the results here (for bench/run_all.py)")
    args = parse_args(parser, {"seeds": 1, "batch": 12, "trickle": 4})

    rows = []
    goals: list[Goal] = []
    for max_loaded in (1, 2, 3):
        means: dict[str, tuple[float, float, float, float]] = {}
        for policy in POLICIES:
            runs = [
                simulate(
                    workload(seed, args.batch, args.trickle, args.chat_every), policy, max_loaded
                )
                for seed in range(args.seeds)
            ]
            p50s, p95s = zip(*(pcts(r.chats, 50, 95) for r in runs), strict=True)
            means[policy] = (
                statistics.fmean(r.loads for r in runs),
                statistics.fmean(r.makespan for r in runs),
                statistics.fmean(p50s),
                statistics.fmean(p95s),
            )
            loads, makespan, p50, p95 = means[policy]
            rows.append(
                [max_loaded, policy, f"{loads:.1f}", f"{makespan:.0f}", f"{p50:.2f}", f"{p95:.2f}"]
            )
        fifo, drain, aware = (means[p] for p in POLICIES)
        if max_loaded < len(LOAD_SECONDS):
            goals.append(
                Goal(
                    f"max_loaded {max_loaded}: fewer loads than FIFO",
                    f"{aware[0]:.1f} vs {fifo[0]:.1f}",
                    aware[0] < fifo[0],
                )
            )
        else:
            # FIFO pays no extra load either here; p95 within 2 %: the first
            # minutes differ (A's jobs drain before B and C are loaded)
            goals.append(
                Goal(
                    f"max_loaded {max_loaded} (every model fits): no extra loads,"
                    " chat p95 no worse than FIFO (2 %)",
                    f"{aware[0]:.1f} loads (FIFO {fifo[0]:.1f}); p95 {aware[3]:.2f} s"
                    f" vs FIFO {fifo[3]:.2f} s",
                    aware[0] <= len(LOAD_SECONDS) and aware[3] <= fifo[3] * 1.02,
                )
            )
        if max_loaded == 1:
            goals.append(
                Goal(
                    "max_loaded 1: loads no more than one-model drain-by-model",
                    f"{aware[0]:.1f} vs {drain[0]:.1f}",
                    aware[0] <= drain[0],
                )
            )
    headers = ["max_loaded", "policy", "loads", "makespan s", "chat p50 s", "chat p95 s"]
    table = md_table(headers, rows)
    intro = (
        f"Virtual time, {args.seeds} seeds (means): loads {LOAD_SECONDS} s, "
        f"{args.batch} jobs at once + {args.trickle} trickling, a chat every "
        f"{args.chat_every:g} s, keep_alive {KEEP_ALIVE:g} s, FOREMAN_MAX_WAIT {MAX_WAIT:g} s."
    )
    goal_table = md_table(
        ["goal", "measured", "met"],
        [[g.goal, g.measured, "yes" if g.met else "NO"] for g in goals],
    )
    print(intro, "", table, "", goal_table, sep="\n")
    Results(
        "Scheduling over resident models (bench/residency.py)",
        intro + "\n\n" + table,
        goals,
    ).write(args.json)


if __name__ == "__main__":
    main()
