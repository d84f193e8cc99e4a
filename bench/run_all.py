"""Run every benchmark and rewrite ``docs/performance.md`` with the figures.

Run: ``.venv/bin/python bench/run_all.py`` (about 2.5-4 minutes on 2 cores;
loopback only). The benchmarks run one after the other, each in its own
process (which starts its own servers), so they never compete for the cores.

The page gets the machine and date, one line per SPEC performance goal
(met / not met, with the number) and every benchmark's tables. A section
between ``<!-- analysis -->`` and ``<!-- /analysis -->`` in the existing page
is kept as it is: that is where people write what the figures mean.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._proc import header_lines, md_table

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "performance.md"
BENCHES = ("proxy", "scheduling", "residency", "jobs", "streaming")
TIMEOUT = 300.0
ADDED_GOAL_MS = {"latency": 0.5, "stream": 1.0}
ANALYSIS = re.compile(r"<!-- analysis -->.*?<!-- /analysis -->", re.S)
DEFAULT_ANALYSIS = "<!-- analysis -->\n(no analysis written yet)\n<!-- /analysis -->"


def run(name: str) -> tuple[dict[str, Any], float]:
    """Run ``bench/<name>.py``; its results as ``{"title", "markdown", "goals"}``."""
    script = ROOT / "bench" / f"{name}.py"
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as tmp:
        out = Path(tmp.name)
    argv = [sys.executable, str(script)]
    if name != "proxy":
        argv += ["--json", str(out)]
    print(f"== {name} ...", flush=True)
    started = time.monotonic()
    try:
        proc = subprocess.run(
            argv, capture_output=True, text=True, timeout=TIMEOUT, cwd=str(ROOT), check=False
        )
        elapsed = time.monotonic() - started
        if proc.returncode != 0:
            return failed(
                name, f"exit status {proc.returncode}", proc.stdout + proc.stderr
            ), elapsed
        if name == "proxy":
            return proxy_results(proc.stdout), elapsed
        doc: dict[str, Any] = json.loads(out.read_text())
        return doc, elapsed
    except subprocess.TimeoutExpired as e:
        output = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        return failed(name, f"timed out after {TIMEOUT:g} s", output), time.monotonic() - started
    finally:
        out.unlink(missing_ok=True)


def failed(name: str, why: str, output: str) -> dict[str, Any]:
    tail = "\n".join(output.strip().splitlines()[-30:])
    return {
        "title": f"{name}: FAILED ({why})",
        "markdown": f"```\n{tail}\n```",
        "goals": [{"goal": f"bench/{name}.py ran", "measured": why, "met": False}],
    }


def proxy_results(stdout: str) -> dict[str, Any]:
    """Goals from ``bench/proxy.py``'s tables (it prints markdown only)."""
    goals: list[dict[str, Any]] = []
    body = stdout.split("\n", 1)[1] if stdout.startswith("Machine:") else stdout

    def added(row_name: str) -> float | None:
        for line in stdout.splitlines():
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if cells and cells[0] == row_name and len(cells) >= 5 and cells[4]:
                return float(cells[4])
        return None

    lat = added("foreman → fast upstream")
    if lat is not None:
        goal = ADDED_GOAL_MS["latency"]
        goals.append(
            {
                "goal": f"passthrough adds < {goal:g} ms at the median (small non-streaming "
                "request, keep-alive, fast local target)",
                "measured": f"{lat:+.3f} ms",
                "met": lat < goal,
            }
        )
    sim = added("foreman → simulator")
    if sim is not None:
        goals.append(
            {
                "goal": f"passthrough adds < {ADDED_GOAL_MS['latency']:g} ms at the median "
                "(same, Ollama simulator as target)",
                "measured": f"{sim:+.3f} ms",
                "met": sim < ADDED_GOAL_MS["latency"],
            }
        )
    stream = added("foreman → fast upstream, stream")
    if stream is not None:
        goal = ADDED_GOAL_MS["stream"]
        goals.append(
            {
                "goal": f"streaming chunks leave foreman within {goal:g} ms of arriving "
                "(fast upstream, median added)",
                "measured": f"{stream:+.3f} ms",
                "met": stream < goal,
            }
        )
    if not goals:
        goals.append({"goal": "bench/proxy.py tables parsed", "measured": "no", "met": False})
    return {"title": "Proxy overhead", "markdown": body.strip(), "goals": goals}


def mark(met: bool | None) -> str:
    return {True: "met", False: "**NOT MET**", None: "reported"}[met]


def page(
    header: str, results: dict[str, dict[str, Any]], times: dict[str, float], total: float
) -> str:
    rows = []
    for name in BENCHES:
        for g in results[name]["goals"]:
            rows.append([g["goal"], g["measured"], mark(g["met"]), f"`bench/{name}.py`"])
    old = PAGE.read_text() if PAGE.exists() else ""
    found = ANALYSIS.search(old)
    analysis = found.group(0) if found else DEFAULT_ANALYSIS
    parts = [
        "# Performance",
        "",
        "Generated by `.venv/bin/python bench/run_all.py` — do not edit by hand except the "
        "analysis section, which the script keeps. Every figure comes from one run on one "
        "machine; comparisons (foreman against direct, FIFO against drain-by-model, 10 "
        "against 100 000 queued) are measured side by side in that run.",
        "",
        header + f"; all benchmarks took {total / 60:.1f} min",
        "",
        "Method: foreman always runs as `twistd -n foreman` in its own process; the load "
        "comes from another process (lean keep-alive HTTP/1.1 clients: blocking sockets in "
        "`bench/proxy.py`, asyncio in the others), so on 2 cores the daemon has one core and "
        "the load the other. Everything is on loopback. The Ollama target is either a canned "
        "fast upstream or the simulator (`foreman.testing`) in a third process.",
        "",
        "## Goals (SPEC, Performance)",
        "",
        md_table(["goal", "measured", "status", "by"], rows),
        "",
        "## Analysis",
        "",
        analysis,
    ]
    for name in BENCHES:
        r = results[name]
        parts += [
            "",
            f"## {r['title']} (`bench/{name}.py`, {times[name]:.0f} s)",
            "",
            r["markdown"],
        ]
    return "\n".join(parts) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--only", default=",".join(BENCHES), help="comma-separated subset (others: FAILED)"
    )
    parser.add_argument("--no-write", action="store_true", help="print the page instead")
    args = parser.parse_args()
    wanted = set(args.only.split(","))
    header = header_lines()
    started = time.monotonic()
    results: dict[str, dict[str, Any]] = {}
    times: dict[str, float] = {}
    for name in BENCHES:
        if name in wanted:
            results[name], times[name] = run(name)
        else:
            results[name] = failed(name, "not run (--only)", "")
            times[name] = 0.0
        print(f"   {name}: {times[name]:.0f} s", flush=True)
    text = page(header, results, times, time.monotonic() - started)
    if args.no_write:
        print(text)
    else:
        PAGE.write_text(text)
        print(f"wrote {PAGE.relative_to(ROOT)} ({time.monotonic() - started:.0f} s)")
    missed = [g["goal"] for r in results.values() for g in r["goals"] if g["met"] is False]
    for goal in missed:
        print(f"NOT MET: {goal}")


if __name__ == "__main__":
    main()
