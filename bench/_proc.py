"""Helpers for the daemon-level benchmarks: processes, an asyncio load client, results.

Every benchmark runs foreman as ``twistd -n foreman`` in its own process (the
real deployment path) and generates load from the benchmark's own process, so
on 2 cores the daemon has one core and the load the other. The load client
here is a hand-rolled HTTP/1.1 keep-alive client on asyncio streams (one
``write`` per request, TCP_NODELAY): hundreds of concurrent connections cost
it far less than they cost the server, so the server is what is measured.

``python bench/_proc.py simulator --models a=0.3,b=0.5 ...`` serves the Ollama
simulator with per-model load times (``python -m foreman.testing`` has one
load time for all) and prints ``READY <url>``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import resource
import socket
import sys
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from attrs import define, field

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._util import Server, machine_info, percentile, request_bytes, spawn_ready

__all__ = [
    "PY",
    "TWISTD",
    "AioHTTP",
    "Goal",
    "Results",
    "chat_body",
    "fs_type",
    "header_lines",
    "md_table",
    "parse_rfc3339",
    "raise_fd_limit",
    "rss_mib",
    "start_foreman",
    "start_simulator",
]

PY = sys.executable
HERE = Path(__file__).resolve()
TWISTD = [PY, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=", "foreman"]


# -- processes -------------------------------------------------------------------


def start_foreman(
    name: str,
    workdir: Path,
    target: str,
    env: dict[str, str] | None = None,
    data_dir: Path | None = None,
    timeout: float = 60.0,
) -> Server:
    """``twistd -n foreman`` on an ephemeral loopback port; returns once it logs its URL."""
    data = data_dir or workdir / f"{name}-data"
    full = {
        "FOREMAN_TARGET_URL": target,
        "FOREMAN_LISTEN": "tcp:0:interface=127.0.0.1",
        "FOREMAN_DATA_DIR": str(data),
    }
    full.update(env or {})
    return spawn_ready(name, TWISTD, workdir, full, pattern="listening on ", timeout=timeout)


def start_simulator(
    name: str,
    workdir: Path,
    models: dict[str, float],
    token_rate: float,
    reply_tokens: int = 8,
) -> Server:
    """The Ollama simulator in its own process, one load time per model."""
    spec = ",".join(f"{m}={t}" for m, t in models.items())
    argv = [
        PY,
        str(HERE),
        "simulator",
        "--models",
        spec,
        "--token-rate",
        str(token_rate),
        "--reply-tokens",
        str(reply_tokens),
    ]
    return spawn_ready(name, argv, workdir)


def _serve_simulator(models: str, token_rate: float, reply_tokens: int) -> None:
    from twisted.internet import reactor
    from twisted.internet.defer import ensureDeferred

    from foreman.testing import ModelSpec, OllamaSimulator

    specs = []
    for part in models.split(","):
        name, _, load = part.partition("=")
        specs.append(ModelSpec(name, load_time=float(load) if load else None))
    sim = OllamaSimulator(
        models=specs,
        token_rate=token_rate,
        load_time=0.0,
        reply_tokens=reply_tokens,
        record_limit=1000,
    )

    async def start() -> None:
        await sim.listen("tcp:0:interface=127.0.0.1")
        print(f"READY {sim.url}", flush=True)

    ensureDeferred(start())
    r: Any = reactor
    r.run()


def raise_fd_limit(want: int) -> int:
    """Raise this process's (and so its children's) open-file limit towards ``want``."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


def rss_mib(pid: int) -> float:
    import psutil

    return float(psutil.Process(pid).memory_info().rss) / (1024 * 1024)


def fs_type(path: Path) -> str:
    """File system type of ``path`` (from /proc/mounts), for the durability caveat."""
    best, kind = "", "unknown"
    try:
        resolved = str(path.resolve())
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            mount, fstype = parts[1], parts[2]
            inside = resolved == mount or resolved.startswith(mount.rstrip("/") + "/")
            if inside and len(mount) > len(best):
                best, kind = mount, fstype
    except OSError:
        pass
    return kind


# -- asyncio HTTP/1.1 client -----------------------------------------------------------


class AioHTTP:
    """One keep-alive HTTP/1.1 connection on asyncio streams."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str):
        self.reader = reader
        self.writer = writer
        self.host = host

    @classmethod
    async def open(cls, url: str) -> AioHTTP:
        host, _, port = url.split("://", 1)[1].rstrip("/").partition(":")
        reader, writer = await asyncio.open_connection(host, int(port), limit=1 << 20)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(reader, writer, f"{host}:{port}")

    def close(self) -> None:
        self.writer.close()

    def send(
        self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> None:
        self.writer.write(request_bytes(method, path, self.host, body, headers))

    async def head(self) -> tuple[int, dict[bytes, bytes]]:
        status_line = await self.reader.readuntil(b"\r\n")
        if not status_line:
            raise ConnectionError("server closed the connection")
        status = int(status_line.split(b" ", 2)[1])
        headers: dict[bytes, bytes] = {}
        while True:
            line = await self.reader.readuntil(b"\r\n")
            if line == b"\r\n":
                return status, headers
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()

    async def chunks(self) -> AsyncIterator[bytes]:
        """The chunks of a chunked body, each as it arrives."""
        while True:
            size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await self.reader.readuntil(b"\r\n")
                return
            data = await self.reader.readexactly(size + 2)
            yield data[:-2]

    async def body(self, headers: dict[bytes, bytes]) -> bytes:
        if b"content-length" in headers:
            return await self.reader.readexactly(int(headers[b"content-length"]))
        if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
            return b"".join([c async for c in self.chunks()])
        return await self.reader.read()

    async def request(
        self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> tuple[int, dict[bytes, bytes], bytes]:
        self.send(method, path, body, headers)
        status, head = await self.head()
        return status, head, await self.body(head)

    async def json(self, method: str, path: str, doc: Any = None) -> tuple[int, Any]:
        body = b"" if doc is None else json.dumps(doc).encode()
        status, _, data = await self.request(method, path, body)
        return status, json.loads(data) if data else None


def chat_body(model: str, content: str, stream: bool = False, **extra: Any) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": content}],
        "stream": stream,
        **extra,
    }


def parse_rfc3339(text: str) -> float:
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


# -- reporting ------------------------------------------------------------------------


def header_lines() -> str:
    """Machine, Python and Twisted version, date, and how busy the machine already was
    (other work on 2 cores skews every figure)."""
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    busy = os.getloadavg()[0]
    return f"Machine: {machine_info()}; run {date}; load average before: {busy:.2f}"


def md_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def pcts(values: Sequence[float], *qs: float) -> list[float]:
    return [percentile(values, q) for q in qs]


@define
class Goal:
    """One SPEC performance goal as measured: ``met`` None means "reported, no threshold"."""

    goal: str
    measured: str
    met: bool | None


@define
class Results:
    """What a benchmark hands to ``bench/run_all.py`` (``--json PATH``)."""

    title: str
    markdown: str = ""
    goals: list[Goal] = field(factory=list)

    def write(self, path: str | None) -> None:
        if not path:
            return
        doc = {
            "title": self.title,
            "markdown": self.markdown,
            "goals": [{"goal": g.goal, "measured": g.measured, "met": g.met} for g in self.goals],
        }
        Path(path).write_text(json.dumps(doc, indent=1))


def wait_http_ok(url: str, path: str, timeout: float = 30.0) -> float:
    """Poll ``GET path`` until it answers 200; return the monotonic time it did."""
    from bench._util import RawClient

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            client = RawClient(url, timeout=5)
            try:
                status, _ = client.request("GET", path)
            finally:
                client.close()
            if status == 200:
                return time.monotonic()
        except OSError:
            pass
        time.sleep(0.005)
    raise TimeoutError(f"{url}{path} did not answer 200 in {timeout}s")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench/_proc.py")
    sub = parser.add_subparsers(dest="cmd", required=True)
    sim = sub.add_parser("simulator", help="serve the Ollama simulator; print READY <url>")
    sim.add_argument("--models", required=True, help="name=load_seconds,...")
    sim.add_argument("--token-rate", type=float, default=200.0)
    sim.add_argument("--reply-tokens", type=int, default=8)
    args = parser.parse_args(argv)
    if args.cmd == "simulator":
        _serve_simulator(args.models, args.token_rate, args.reply_tokens)


if __name__ == "__main__":
    main()
