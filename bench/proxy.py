"""Benchmark: what the proxy adds to a request, against direct and stock Twisted.

Run: ``.venv/bin/python bench/proxy.py`` (about 30-60 s; loopback only). It
prints markdown tables and the SPEC goals; ``--json PATH`` also writes them for
``bench/run_all.py``; ``--smoke`` is a tiny run (seconds) through every path.

Every server is its own process: a canned "fast upstream" (a few µs per
answer, so the proxy's cost stands out), foreman (``twistd -n foreman``, the
real deployment path) in front of it, Twisted's stock
``ReverseProxyResource`` in front of it, nginx in front of it when an
``nginx`` binary is on this machine (the reference for what a proxy can
cost; the row is skipped with a note otherwise), and — when
``foreman.testing`` is available — the Ollama simulator directly and behind
a second foreman. The client (this process) is a lean keep-alive socket
client; rounds are interleaved so drift on a busy machine spreads over all
targets alike.

Measured: latency of a small non-streaming ``POST /api/chat`` (median, p99),
and for streaming, the delay from the upstream writing a chunk (it stamps
``time.monotonic_ns()`` into it) to this client receiving it. The SPEC goals
are ratios within this run: foreman's added median at most half of what the
stock ``ReverseProxyResource`` adds, and foreman's p99 at most twice its p50.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._proc import Goal, Results, header_lines, md_table
from bench._util import (
    CHAT_BODY,
    RawClient,
    Server,
    free_port,
    parse_args,
    spawn_ready,
    start_all,
    stop_all,
    summarize,
)

PY = sys.executable
TWISTD = [PY, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=", "foreman"]
HERE = Path(__file__).resolve()

FOREMAN = "foreman → fast upstream"
STOCK = "stock ReverseProxyResource → fast upstream"
NGINX = "nginx → fast upstream"
NGINX_PATHS = ("/usr/sbin/nginx",)
NGINX_ABSENT = "nginx: not installed on this machine, row skipped"
GOAL_ADDED_MS = 0.5  # small request, median added
GOAL_STREAM_MS = 1.0  # streaming chunk, median added
GOAL_VS_STOCK = 0.5  # foreman's added median / stock's added median
GOAL_TAIL = 2.0  # foreman's p99 / its p50
SMOKE = {"rounds": 2, "per_round": 25, "warmup": 20, "streams": 1, "chunks": 20}


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


def find_nginx(explicit: str | None = None) -> str | None:
    """The nginx binary to run: ``explicit``, else on PATH, else a usual place; or None."""
    if explicit:
        return explicit
    found = shutil.which("nginx")
    if found:
        return found
    return next((p for p in NGINX_PATHS if Path(p).is_file()), None)


def nginx_config(upstream: str, port: int, tmp: Path) -> str:
    """A minimal reverse proxy in front of ``upstream``: one process, keep-alive both ways,
    nothing buffered (streaming) and nothing written outside ``tmp``."""
    host_port = upstream.split("://", 1)[1].rstrip("/")
    temps = "\n".join(
        f"    {kind}_temp_path {tmp}/{kind}_temp;"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""daemon off;
master_process off;
worker_processes 1;
error_log {tmp}/error.log;
pid {tmp}/nginx.pid;
events {{
    worker_connections 1024;
}}
http {{
    access_log off;
{temps}
    keepalive_requests 1000000;
    upstream fast {{
        server {host_port};
        keepalive 16;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://fast;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }}
    }}
}}
"""


def wait_listening(server: Server, port: int, timeout: float = 10.0) -> None:
    """Until ``port`` accepts a connection; RuntimeError (with the log) if the server dies."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.popen.poll() is not None:
            break
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1.0).close()
            return
        except OSError:
            time.sleep(0.05)
    server.stop()
    log = (Path(server.log.name).read_text(errors="replace").strip() or "no output").splitlines()
    raise RuntimeError(f"{server.name} not listening on {port}: {log[-1]}")


def start_nginx(binary: str, upstream: str, workdir: Path) -> Server:
    """nginx in front of ``upstream`` on a port picked by binding port 0 first."""
    tmp = workdir / "nginx"
    tmp.mkdir()
    port = free_port()
    conf = tmp / "nginx.conf"
    conf.write_text(nginx_config(upstream, port, tmp))
    log = open(workdir / "nginx.log", "w+b")  # noqa: SIM115 - closed by Server.stop
    try:
        popen = subprocess.Popen(
            [binary, "-p", f"{tmp}/", "-c", str(conf)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=str(tmp),
        )
    except OSError as e:
        log.close()
        raise RuntimeError(str(e)) from None
    server = Server("nginx", popen, f"http://127.0.0.1:{port}", log)
    wait_listening(server, port)
    return server


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


def rows(
    samples: dict[str, list[float]], names: list[str], stock: float | None
) -> list[list[object]]:
    """Table rows; "added" against the first name (the direct path), "vs stock" against
    the stock proxy's added median."""
    base = summarize(samples[names[0]])[0]
    out: list[list[object]] = []
    for name in names:
        median, p99 = summarize(samples[name])
        direct = name == names[0]
        added = median - base
        vs_stock = "" if direct or not stock or stock <= 0 else f"{added / stock:.2f}"
        out.append(
            [name, len(samples[name]), f"{median:.3f}", f"{p99:.3f}",
             "" if direct else f"{added:+.3f}", "" if direct else f"{median / base:.2f}x",
             vs_stock]
        )  # fmt: skip
    return out


def goals(
    lat: dict[str, list[float]],
    delays: dict[str, list[float]],
    direct: str,
    sim_names: list[str],
    stream_names: list[str],
) -> list[Goal]:
    """The SPEC's proxy goals as measured in this run."""
    base = summarize(lat[direct])[0]
    p50, p99 = summarize(lat[FOREMAN])
    added = p50 - base
    stock = summarize(lat[STOCK])[0] - base
    out = [
        Goal(
            f"passthrough adds < {GOAL_ADDED_MS:g} ms at the median (small non-streaming "
            "request, keep-alive, fast local target)",
            f"{added:+.3f} ms",
            added < GOAL_ADDED_MS,
        ),
        Goal(
            f"foreman's added median <= {GOAL_VS_STOCK:g}x the stock ReverseProxyResource's "
            "(same run, fast upstream)",
            f"{added:+.3f} ms vs {stock:+.3f} ms: "
            + (f"{added / stock:.2f}x" if stock > 0 else "stock added nothing"),
            stock > 0 and added <= GOAL_VS_STOCK * stock,
        ),
        Goal(
            f"foreman's p99 <= {GOAL_TAIL:g}x its p50 (fast upstream)",
            f"p50 {p50:.3f} ms, p99 {p99:.3f} ms: {p99 / p50:.2f}x",
            p99 <= GOAL_TAIL * p50,
        ),
    ]
    if sim_names:
        sim_added = summarize(lat[sim_names[1]])[0] - summarize(lat[sim_names[0]])[0]
        out.append(
            Goal(
                f"passthrough adds < {GOAL_ADDED_MS:g} ms at the median "
                "(same, Ollama simulator as target)",
                f"{sim_added:+.3f} ms",
                sim_added < GOAL_ADDED_MS,
            )
        )
    stream = summarize(delays[stream_names[1]])[0] - summarize(delays[stream_names[0]])[0]
    out.append(
        Goal(
            f"streaming chunks leave foreman within {GOAL_STREAM_MS:g} ms of arriving "
            "(fast upstream, median added)",
            f"{stream:+.3f} ms",
            stream < GOAL_STREAM_MS,
        )
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--per-round", type=int, default=400)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--streams", type=int, default=3)
    parser.add_argument("--chunks", type=int, default=300)
    parser.add_argument("--nginx", metavar="BINARY", help="nginx to run (default: found on PATH)")
    parser.add_argument("--json", help="also write the results here (for run_all)")
    parser.add_argument("--serve-stock", metavar="TARGET_URL", help=argparse.SUPPRESS)
    parser.add_argument("--serve-simulator", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--serve-foreman", nargs=2, metavar=("TARGET", "DIR"), help=argparse.SUPPRESS
    )
    args = parse_args(parser, SMOKE)
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
    notes: list[str] = []
    try:
        fast = spawn_ready(
            "fast-upstream", [PY, str(HERE.parent / "_util.py"), "fast-upstream"], workdir
        )
        servers.append(fast)
        binary = find_nginx(args.nginx)
        starts: list[Callable[[], Server]] = [
            lambda: start_foreman("foreman", fast.url, workdir),
            lambda: spawn_ready(
                "foreman-proxy-only",
                [PY, str(HERE), "--serve-foreman", fast.url, str(workdir / "bare-data")],
                workdir,
            ),
            lambda: spawn_ready("stock", [PY, str(HERE), "--serve-stock", fast.url], workdir),
        ]
        if have_simulator():
            starts.append(
                lambda: spawn_ready("simulator", [PY, str(HERE), "--serve-simulator"], workdir)
            )
        foreman, bare, stock, *sim = start_all(starts, servers)
        urls = {
            "direct (fast upstream)": fast.url,
            FOREMAN: foreman.url,
            "foreman, proxy only (no queue/worker) → fast upstream": bare.url,
            STOCK: stock.url,
        }
        if binary is None:
            notes.append(NGINX_ABSENT)
        else:
            try:
                nginx = start_nginx(binary, fast.url, workdir)
            except RuntimeError as e:
                notes.append(f"nginx: {binary} did not start ({e}), row skipped")
            else:
                servers.append(nginx)
                urls[NGINX] = nginx.url
        sim_urls: dict[str, str] = {}
        if sim:
            foreman_sim = start_foreman("foreman-sim", sim[0].url, workdir)
            servers.append(foreman_sim)
            sim_urls = {"direct (simulator)": sim[0].url, "foreman → simulator": foreman_sim.url}
        time.sleep(0.5)  # let the monitors do their first probes

        lat = latency({**urls, **sim_urls}, args.rounds, args.per_round, args.warmup)
        stream_urls = {
            k.replace("fast upstream", "fast upstream, stream"): v for k, v in urls.items()
        }
        delays = stream_delays(stream_urls, args.streams, args.chunks)
    finally:
        stop_all(servers)
        shutil.rmtree(workdir, ignore_errors=True)

    names, snames, sim_names = list(urls), list(stream_urls), list(sim_urls)
    stock_added = summarize(lat[STOCK])[0] - summarize(lat[names[0]])[0]
    stream_stock = STOCK.replace("fast upstream", "fast upstream, stream")
    sstock_added = summarize(delays[stream_stock])[0] - summarize(delays[snames[0]])[0]
    headers = ["path", "requests", "median", "p99", "added (median)", "ratio", "added vs stock"]
    table = rows(lat, names, stock_added)
    if sim_names:
        table += rows(lat, sim_names, None)
    note_lines = ["", *notes] if notes else []
    lines = [
        header_lines(),
        "",
        "Small non-streaming `POST /api/chat`, keep-alive client, latency in ms",
        "(added / ratio: against the direct row of the same upstream; added vs stock: "
        "added median / the stock ReverseProxyResource's)\n",
        md_table(headers, table),
        *note_lines,
        "",
        f"Streaming: upstream chunk write → client receipt, ms ({args.chunks} chunks, 2 ms "
        f"apart, {args.streams} streams each)\n",
        md_table(["path", "chunks", *headers[2:]], rows(delays, snames, sstock_added)),
        *note_lines,
    ]
    found = goals(lat, delays, names[0], sim_names, snames)
    goal_table = md_table(
        ["goal", "measured", "met"], [[g.goal, g.measured, "yes" if g.met else "no"] for g in found]
    )
    took = f"(run took {time.monotonic() - started:.0f} s)"
    print(*lines, "", "Goals (SPEC, Performance, this run)\n", goal_table, "", took, sep="\n")
    Results("Proxy overhead", "\n".join([*lines, "", took]), found).write(args.json)


if __name__ == "__main__":
    main()
