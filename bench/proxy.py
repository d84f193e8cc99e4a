"""Benchmark: what the proxy adds to a request, against direct and stock Twisted.

Run: ``.venv/bin/python bench/proxy.py`` (about 30-60 s; loopback only). It
prints a markdown table.

Every server is its own process: a canned "fast upstream" (a few µs per
answer, so the proxy's cost stands out), foreman (``twistd -n foreman``, the
real deployment path) in front of it, Twisted's stock
``ReverseProxyResource`` in front of it, and — when ``foreman.testing`` is
available — the Ollama simulator directly and behind a second foreman. The
client (this process) is a lean keep-alive socket client; rounds are
interleaved so drift on a busy machine spreads over all targets alike.

Measured: latency of a small non-streaming ``POST /api/chat`` (median, p99),
and for streaming, the delay from the upstream writing a chunk (it stamps
``time.monotonic_ns()`` into it) to this client receiving it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._util import (
    CHAT_BODY,
    RawClient,
    Server,
    machine_info,
    spawn_ready,
    summarize,
)

PY = sys.executable
TWISTD = [PY, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=", "foreman"]
HERE = Path(__file__).resolve()


def serve_stock(target: str) -> None:
    """Run Twisted's stock ReverseProxyResource in front of ``target``."""
    import warnings

    warnings.simplefilter("ignore", DeprecationWarning)
    from twisted.internet import reactor
    from twisted.web.proxy import ReverseProxyResource
    from twisted.web.server import Site

    host, _, port = target.split("://", 1)[1].partition(":")
    site = Site(ReverseProxyResource(host, int(port), b""))
    r: Any = reactor
    listening = r.listenTCP(0, site, interface="127.0.0.1")
    print(f"READY http://127.0.0.1:{listening.getHost().port}", flush=True)
    r.run()


def serve_simulator() -> None:
    """Run the Ollama simulator fast (no load time, high token rate)."""
    from twisted.internet import reactor
    from twisted.internet.defer import ensureDeferred

    from foreman.testing import OllamaSimulator

    sim = OllamaSimulator(token_rate=0.0, load_time=0.0)

    async def start() -> None:
        await sim.listen("tcp:0:interface=127.0.0.1")
        print(f"READY {sim.url}", flush=True)

    ensureDeferred(start())
    r: Any = reactor
    r.run()


def serve_foreman(target: str, data_dir: str) -> None:
    """Run foreman in-process (as twistd would, logging included) with ImmediateAdmission.

    The twistd row measures the whole product; this row isolates the proxy
    from the queue and the worker behind the admission point.
    """
    from twisted.internet import reactor
    from twisted.internet.defer import ensureDeferred
    from twisted.logger import globalLogBeginner

    from foreman.app.config import Config, check_data_dir
    from foreman.app.daemon import Daemon
    from foreman.ops.logs import make_observer
    from foreman.store.database import open_sync
    from foreman.work.admission import ImmediateAdmission

    config = Config(listen="tcp:0:interface=127.0.0.1", target_url=target, data_dir=Path(data_dir))
    check_data_dir(config)
    open_sync(config.db_path).close()
    globalLogBeginner.beginLoggingTo([make_observer("text", ())], redirectStandardIO=False)

    async def start() -> None:
        daemon = await Daemon.start(config, reactor)
        assert daemon.proxy is not None
        daemon.proxy.admission = ImmediateAdmission()
        print(f"READY {daemon.url}", flush=True)

    ensureDeferred(start())
    r: Any = reactor
    r.run()


def have_simulator() -> bool:
    try:
        from foreman.testing import OllamaSimulator  # noqa: F401
    except ImportError:
        return False
    return True


def start_foreman(name: str, target: str, workdir: Path) -> Server:
    data = workdir / f"{name}-data"
    env = {
        "FOREMAN_TARGET_URL": target,
        "FOREMAN_LISTEN": "tcp:0:interface=127.0.0.1",
        "FOREMAN_DATA_DIR": str(data),
    }
    return spawn_ready(name, TWISTD, workdir, env, pattern="listening on ")


def latency(
    urls: dict[str, str], rounds: int, per_round: int, warmup: int
) -> dict[str, list[float]]:
    clients = {name: RawClient(url) for name, url in urls.items()}
    samples: dict[str, list[float]] = {name: [] for name in urls}
    try:
        for client in clients.values():
            for _ in range(warmup):
                status, _body = client.request("POST", "/api/chat", CHAT_BODY)
                assert status == 200, status
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


def stream_delays(urls: dict[str, str], streams: int, chunks: int) -> dict[str, list[float]]:
    delays: dict[str, list[float]] = {name: [] for name in urls}
    for _ in range(streams):
        for name, url in urls.items():
            client = RawClient(url)
            out = delays[name]
            got: list[int] = []

            def on_line(
                line: bytes, now: int, out: list[float] = out, got: list[int] = got
            ) -> None:
                doc = json.loads(line)
                got.append(doc["i"])
                out.append((now - doc["t"]) / 1e6)

            try:
                client.stream_lines(f"/stream?n={chunks}&gap_ms=2", on_line)
            finally:
                client.close()
            if got != list(range(chunks)):
                raise RuntimeError(f"{name}: stream lost or reordered chunks")
    return delays


def row(name: str, values: list[float], base: float | None) -> str:
    median, p99 = summarize(values)
    added = "" if base is None else f"{median - base:+.3f}"
    ratio = "" if base is None else f"{median / base:.2f}x"
    return f"| {name} | {len(values)} | {median:.3f} | {p99:.3f} | {added} | {ratio} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--per-round", type=int, default=400)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--streams", type=int, default=3)
    parser.add_argument("--chunks", type=int, default=300)
    parser.add_argument("--serve-stock", metavar="TARGET_URL", help=argparse.SUPPRESS)
    parser.add_argument("--serve-simulator", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--serve-foreman", nargs=2, metavar=("TARGET", "DIR"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.serve_stock:
        serve_stock(args.serve_stock)
        return
    if args.serve_simulator:
        serve_simulator()
        return
    if args.serve_foreman:
        serve_foreman(*args.serve_foreman)
        return

    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="foreman-bench-"))
    servers: list[Server] = []
    try:
        fast = spawn_ready(
            "fast-upstream", [PY, str(HERE.parent / "_util.py"), "fast-upstream"], workdir
        )
        servers.append(fast)
        foreman = start_foreman("foreman", fast.url, workdir)
        servers.append(foreman)
        bare = spawn_ready(
            "foreman-proxy-only",
            [PY, str(HERE), "--serve-foreman", fast.url, str(workdir / "bare-data")],
            workdir,
        )
        servers.append(bare)
        stock = spawn_ready("stock", [PY, str(HERE), "--serve-stock", fast.url], workdir)
        servers.append(stock)
        urls = {
            "direct (fast upstream)": fast.url,
            "foreman → fast upstream": foreman.url,
            "foreman, proxy only (no queue/worker) → fast upstream": bare.url,
            "stock ReverseProxyResource → fast upstream": stock.url,
        }
        sim_urls: dict[str, str] = {}
        if have_simulator():
            sim = spawn_ready("simulator", [PY, str(HERE), "--serve-simulator"], workdir)
            servers.append(sim)
            foreman_sim = start_foreman("foreman-sim", sim.url, workdir)
            servers.append(foreman_sim)
            sim_urls = {"direct (simulator)": sim.url, "foreman → simulator": foreman_sim.url}
        time.sleep(0.5)  # let the monitors do their first probes

        lat = latency({**urls, **sim_urls}, args.rounds, args.per_round, args.warmup)
        stream_urls = {
            k.replace("fast upstream", "fast upstream, stream"): v for k, v in urls.items()
        }
        delays = stream_delays(stream_urls, args.streams, args.chunks)
    finally:
        for server in reversed(servers):
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    print(f"Machine: {machine_info()}\n")
    print("Small non-streaming `POST /api/chat`, keep-alive client, latency in ms")
    print("(added / ratio: against the direct row of the same upstream)\n")
    print("| path | requests | median | p99 | added (median) | ratio |")
    print("|---|---|---|---|---|---|")
    names = list(urls)
    base = summarize(lat[names[0]])[0]
    for name in names:
        print(row(name, lat[name], None if name == names[0] else base))
    if sim_urls:
        sim_names = list(sim_urls)
        sim_base = summarize(lat[sim_names[0]])[0]
        for name in sim_names:
            print(row(name, lat[name], None if name == sim_names[0] else sim_base))
    print()
    print(
        f"Streaming: upstream chunk write → client receipt, ms ({args.chunks} chunks, 2 ms apart,"
        f" {args.streams} streams each)\n"
    )
    print("| path | chunks | median | p99 | added (median) | ratio |")
    print("|---|---|---|---|---|---|")
    snames = list(stream_urls)
    sbase = summarize(delays[snames[0]])[0]
    for name in snames:
        print(row(name, delays[name], None if name == snames[0] else sbase))
    print(f"\n(run took {time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    main()
