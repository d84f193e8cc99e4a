"""Benchmark: OpenAI batches — upload, validation, and a batch against the same work as /jobs.

Run: ``.venv/bin/python bench/batches.py`` (about 2-3 minutes on 2 cores; loopback only).
Prints markdown tables; ``--json PATH`` also writes them for ``bench/run_all.py``;
``--smoke`` is a tiny run (seconds) through every path.

SPEC: a 10 000-line batch validates in seconds; per-line overhead against the
same work as individual jobs; memory flat during upload.

Processes: the Ollama simulator (``bench/_proc.py simulator``: one model, no
load time, unpaced tokens, so foreman's own work dominates), a
``twistd -n foreman`` in front of it, and this process as the client. The
daemon's RSS is sampled (psutil) every 50 ms throughout, its CPU time read
before and after each phase.

(a) Upload: ``POST /v1/files`` (multipart, the file sent with ``sendfile``)
    of a file of ``--big-mb`` MB of padded chat lines, then of the
    ``--lines``-line chat batch: seconds, MB/s, and the daemon's RSS before
    (baseline), at its peak during the upload, and the difference.
(b) Validation: a batch of the ``--lines``-line file: ``POST /v1/batches``,
    then ``GET /v1/batches/{id}?wait=60&status=validating`` (the long-poll
    answers on the move to ``in_progress``): seconds, the daemon's own figure
    from its log line, RSS; then it is cancelled at once (its queued lines
    cancelled, an error file written). Last (a big batch leaves the daemon's
    RSS raised), the same for a batch of the padded file: validation memory
    against the file's size.
(c) Run: ``--run-lines`` chat requests go through batches and, the same
    bodies, through individual ``POST /jobs`` (``--submitters`` concurrent
    keep-alive connections; the worker runs them as they arrive), in rounds
    of half of them alternating batch, jobs, jobs, batch, each round on a
    fresh daemon, so that a machine getting busier or quieter weighs on both
    alike. A batch round uploads its file, creates the batch, polls ``GET
    /v1/batches/{id}`` every 100 ms (long-polls each of the last 20 lines, so
    the last line's end is seen at once), long-polls ``?status=finalizing``
    until ``completed``, then downloads the output and checks it (every
    ``custom_id`` once, each a 200). A jobs round polls the last job every 100
    ms until it is finished, then ``/metrics`` until every job has ended. A
    wall runs from the first byte sent (the upload, the first ``POST /jobs``)
    to the last result available (the batch ``completed``, its output file
    written; the last job finished) and is compared per line.
    ``--run-lines`` (3 000) is below ``--lines`` to keep the run near three
    minutes on 2 cores: a line costs the daemon about 10 ms of CPU there, as
    a job does; ``--run-lines 10000`` runs the whole 10 000 both ways.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._proc import (
    AioHTTP,
    Goal,
    Results,
    chat_body,
    fs_type,
    header_lines,
    md_table,
    start_foreman,
    start_simulator,
)
from bench._util import RawClient, Server, parse_args, stop_all

MODEL = "llama3.2"
ENDPOINT = "/v1/chat/completions"
SMOKE = {"lines": 40, "run_lines": 40, "rounds": 2, "big_mb": 2, "submitters": 4, "settle": 0.1}
GOAL_VALIDATE_S = 10.0
GOAL_VALIDATE_LINES = 10_000
GOAL_RSS_DELTA_MIB = 50.0
GOAL_BIG_MB = 100
GOAL_RATIO = 1.5
SAMPLE_S = 0.05  # RSS sampling period
POLL_S = 0.1  # completion polling period (both paths alike)
TAIL_LINES = 20  # a batch's last lines: long-polled one by one (finalization from the last)
SETTLE_S = 0.5  # idle time before each phase, its RSS median the baseline (--settle)
PAD_BYTES = 16 * 1024  # padding per line of the big upload
MB = 1_000_000
MIB = 1024 * 1024


# -- input ---------------------------------------------------------------------------


def request_body(i: int, pad: str = "") -> dict[str, Any]:
    body = chat_body(MODEL, f"item {i}: summarise the attached text{pad}")
    body.pop("stream")  # OpenAI's default (false), as a batch line would have it
    return body


def batch_line(i: int, pad: str = "") -> bytes:
    line = {
        "custom_id": f"req-{i}",
        "method": "POST",
        "url": ENDPOINT,
        "body": request_body(i, pad),
    }
    return json.dumps(line, separators=(",", ":")).encode() + b"\n"


def write_lines(path: Path, count: int, first: int = 0) -> int:
    with open(path, "wb") as f:
        for i in range(first, first + count):
            f.write(batch_line(i))
    return path.stat().st_size


def write_padded(path: Path, size: int) -> tuple[int, int]:
    """Chat lines padded to ``PAD_BYTES`` each until the file holds ``size`` bytes."""
    pad = " " + "lorem ipsum " * (PAD_BYTES // 12)
    written = lines = 0
    with open(path, "wb") as f:
        while written < size:
            data = batch_line(lines, pad)
            f.write(data)
            written += len(data)
            lines += 1
    return written, lines


# -- the daemon's RSS and CPU -----------------------------------------------------------


class RssSampler:
    """Samples a process's RSS (MiB) every ``interval`` seconds in a thread."""

    def __init__(self, pid: int, interval: float = SAMPLE_S) -> None:
        import psutil

        self.proc = psutil.Process(pid)
        self.interval = interval
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> RssSampler:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                rss = self.proc.memory_info().rss / MIB
            except Exception:  # the process is gone: nothing more to sample
                return
            self.samples.append((time.monotonic(), rss))
            self._stop.wait(self.interval)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def now(self) -> float:
        return float(self.proc.memory_info().rss / MIB)

    def between(self, t0: float, t1: float) -> list[float]:
        return [rss for t, rss in list(self.samples) if t0 <= t <= t1]

    def baseline(self) -> float:
        """Median RSS over the next ``SETTLE_S`` seconds (the process idle)."""
        t0 = time.monotonic()
        time.sleep(SETTLE_S)
        values = self.between(t0, time.monotonic()) or [self.now()]
        return statistics.median(values)


def cpu_seconds(pid: int) -> float:
    import psutil

    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


# -- HTTP ------------------------------------------------------------------------------


def get_json(client: RawClient, path: str) -> Any:
    status, body = client.request("GET", path)
    if status != 200:
        raise RuntimeError(f"GET {path} answered {status}: {body[:300]!r}")
    return json.loads(body)


def upload(url: str, path: Path, purpose: str = "batch") -> tuple[float, dict[str, Any]]:
    """``POST /v1/files`` of ``path`` as multipart, the file by ``sendfile``: (s, file)."""
    boundary = "foremanbench7c1f0e"
    pre = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\n{purpose}\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
        f'filename="{path.name}"\r\nContent-Type: application/jsonl\r\n\r\n'
    ).encode()
    post = f"\r\n--{boundary}--\r\n".encode()
    length = len(pre) + path.stat().st_size + len(post)
    client = RawClient(url, timeout=600)
    head = (
        f"POST /v1/files HTTP/1.1\r\nHost: {client.host.decode()}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()
    try:
        t0 = time.perf_counter()
        client.sock.sendall(head + pre)
        with open(path, "rb") as f:
            client.sock.sendfile(f)
        client.sock.sendall(post)
        status, headers = client.head()
        if b"content-length" in headers:
            body = client.read_exactly(int(headers[b"content-length"]))
        else:
            body = b"".join(client.chunks())
        elapsed = time.perf_counter() - t0
    finally:
        client.close()
    if status != 200:
        raise RuntimeError(f"upload of {path.name} answered {status}: {body[:300]!r}")
    doc: dict[str, Any] = json.loads(body)
    if doc["bytes"] != path.stat().st_size:
        raise RuntimeError(f"uploaded {path.stat().st_size} bytes, the file says {doc['bytes']}")
    return elapsed, doc


def download(url: str, file_id: str, dest: Path) -> tuple[float, int]:
    """``GET /v1/files/{id}/content`` into ``dest``: (s, bytes)."""
    client = RawClient(url, timeout=120)
    try:
        t0 = time.perf_counter()
        client.send("GET", f"/v1/files/{file_id}/content")
        status, headers = client.head()
        if status != 200:
            raise RuntimeError(f"download of {file_id} answered {status}")
        left = int(headers[b"content-length"])
        with open(dest, "wb") as f:
            f.write(client.buf[:left])
            left -= len(client.buf[:left])
            client.buf = b""
            while left > 0:
                data = client.sock.recv(min(left, 1 << 20))
                if not data:
                    raise ConnectionError("the download ended early")
                f.write(data)
                left -= len(data)
        return time.perf_counter() - t0, dest.stat().st_size
    finally:
        client.close()


def check_output(path: Path, count: int) -> tuple[int, int]:
    """Every ``custom_id`` once, each a 200 answer: (lines, completion tokens)."""
    seen: set[str] = set()
    tokens = 0
    with open(path, "rb") as f:
        for raw in f:
            line = json.loads(raw)
            if line["custom_id"] in seen:
                raise RuntimeError(f"{line['custom_id']} twice in the output")
            seen.add(line["custom_id"])
            response = line["response"]
            if response["status_code"] != 200:
                raise RuntimeError(f"line {line['custom_id']} answered {response}")
            tokens += int(response["body"].get("usage", {}).get("completion_tokens", 0))
    if len(seen) != count:
        raise RuntimeError(f"the output has {len(seen)} lines, expected {count}")
    return len(seen), tokens


# -- (a) uploads ---------------------------------------------------------------------------


def measure_upload(
    url: str, sampler: RssSampler, path: Path, label: str, lines: int
) -> tuple[list[object], dict[str, Any], float]:
    base = sampler.baseline()
    t0 = time.monotonic()
    elapsed, doc = upload(url, path)
    t1 = time.monotonic()
    peak = max([base, *sampler.between(t0, t1)])
    after = sampler.now()
    size = path.stat().st_size
    row: list[object] = [
        label, f"{lines:,}", f"{size / MB:.2f}", f"{elapsed:.2f}", f"{size / MB / elapsed:.0f}",
        f"{base:.1f}", f"{peak:.1f}", f"{peak - base:+.1f}", f"{after:.1f}",
        len(sampler.between(t0, t1)),
    ]  # fmt: skip
    return row, doc, peak - base


# -- (b, c) the batch ------------------------------------------------------------------------


def batch_log_seconds(log: Path, batch_id: str) -> float:
    """The daemon's own figure: 'batch … in progress: N lines checked and queued in S s'."""
    found = re.search(
        rf"batch {batch_id} in progress: \d+ lines checked and queued in ([0-9.]+) s",
        log.read_text(errors="replace"),
    )
    return float(found.group(1)) if found else float("nan")


def create_batch(client: RawClient, file_id: str) -> tuple[dict[str, Any], float]:
    """``POST /v1/batches`` for ``file_id``: (the batch, monotonic time it answered)."""
    body = {"input_file_id": file_id, "endpoint": ENDPOINT, "completion_window": "24h"}
    status, data = client.request("POST", "/v1/batches", json.dumps(body).encode())
    answered = time.monotonic()
    if status != 200:
        raise RuntimeError(f"POST /v1/batches answered {status}: {data[:300]!r}")
    batch: dict[str, Any] = json.loads(data)
    return batch, answered


def wait_while(client: RawClient, batch: dict[str, Any], status: str) -> dict[str, Any]:
    """Long-poll until the batch is no longer ``status`` (it answers on the move)."""
    while batch["status"] == status:
        batch = get_json(client, f"/v1/batches/{batch['id']}?wait=60&status={status}")
    return batch


def validate_and_cancel(
    server: Server, sampler: RssSampler, file_id: str, label: str, lines: int, size: int
) -> list[object]:
    """Validate a batch of ``file_id`` (RSS throughout), then cancel it as soon as it is
    ``in_progress``: a row of table (b)."""
    client = RawClient(server.url, timeout=300)
    try:
        base = sampler.baseline()
        cpu0 = cpu_seconds(server.popen.pid)
        t0 = time.monotonic()
        batch, answered = create_batch(client, file_id)
        batch = wait_while(client, batch, "validating")
        t1 = time.monotonic()
        cpu1 = cpu_seconds(server.popen.pid)
        after = sampler.now()
        if batch["status"] != "in_progress":
            raise RuntimeError(f"the batch of {label} is {batch['status']}: {batch}")
        status, data = client.request("POST", f"/v1/batches/{batch['id']}/cancel", b"")
        if status != 200:
            raise RuntimeError(f"cancel answered {status}: {data[:300]!r}")
        batch = wait_while(client, json.loads(data), "cancelling")
        t2 = time.monotonic()
        if batch["status"] != "cancelled":
            raise RuntimeError(f"the cancelled batch ended {batch['status']}")
        # no error file when every line had finished before the cancel came (a small,
        # fast batch on a busy machine): nothing was left to cancel
        error_file = batch["error_file_id"]
        errors = 0 if error_file is None else get_json(client, f"/v1/files/{error_file}")["bytes"]
    finally:
        client.close()
    peak = max([base, *sampler.between(t0, t1)])
    log_s = batch_log_seconds(Path(server.log.name), batch["id"])
    return [
        label, f"{lines:,}", f"{size / MB:.2f}", f"{(answered - t0) * 1000:.1f}",
        f"{t1 - t0:.2f}", f"{log_s:.2f}", f"{lines / (t1 - t0):,.0f}", f"{cpu1 - cpu0:.2f}",
        f"{base:.1f}", f"{peak:.1f}", f"{peak - base:+.1f}", f"{after:.1f}",
        f"{t2 - t1:.2f} ({errors / MB:.1f} MB error file)",
    ]  # fmt: skip


def run_batch(
    server: Server, sampler: RssSampler, path: Path, lines: int, workdir: Path
) -> dict[str, Any]:
    url, pid = server.url, server.popen.pid
    client = RawClient(url, timeout=120)
    try:
        base = sampler.baseline()
        cpu0 = cpu_seconds(pid)
        t_start = time.monotonic()
        upload_s, file_doc = upload(url, path)
        t_uploaded = time.monotonic()
        batch, t_created = create_batch(client, file_doc["id"])
        batch_id = batch["id"]
        batch = wait_while(client, batch, "validating")
        t_valid = time.monotonic()
        cpu_valid = cpu_seconds(pid)
        rss_valid = sampler.now()
        if batch["status"] != "in_progress":
            raise RuntimeError(f"the batch is {batch['status']} after validation: {batch}")
        polls = 0
        t_last_line = None
        while batch["status"] == "in_progress":
            counts = batch["request_counts"]
            done = counts["completed"] + counts["failed"]
            if done >= lines:
                t_last_line = t_last_line or time.monotonic()
            if lines - done > TAIL_LINES:
                time.sleep(POLL_S)
                query = ""
            else:  # the tail: long-poll each line's end, to see the last one end at once
                query = f"?wait=60&status=in_progress&done={done}"
            batch = get_json(client, f"/v1/batches/{batch_id}{query}")
            polls += 1
        t_finalizing = t_last_line or time.monotonic()
        batch = wait_while(client, batch, "finalizing")
        t_done = time.monotonic()
        cpu_done = cpu_seconds(pid)
        if batch["status"] != "completed":
            raise RuntimeError(f"the batch ended {batch['status']}: {batch}")
        counts = batch["request_counts"]
        if counts != {"total": lines, "completed": lines, "failed": 0}:
            raise RuntimeError(f"unexpected request counts {counts}")
        down_s, out_bytes = download(url, batch["output_file_id"], workdir / "output.jsonl")
        check_output(workdir / "output.jsonl", lines)
    finally:
        client.close()
    return {
        "upload": upload_s,
        "create_ms": (t_created - t_uploaded) * 1000,
        "validate": t_valid - t_uploaded,
        "validate_log": batch_log_seconds(Path(server.log.name), batch_id),
        "run": t_finalizing - t_valid,
        "finalize": t_done - t_finalizing,
        "total": t_done - t_start,
        "submit": t_valid - t_start,
        "cpu_validate": cpu_valid - cpu0,
        "cpu": cpu_done - cpu0,
        "rss_base": base,
        "rss_validate": max([base, *sampler.between(t_uploaded, t_valid)]),
        "rss_validated": rss_valid,
        "rss_run": max([base, *sampler.between(t_start, t_done)]),
        "out_bytes": out_bytes,
        "download": down_s,
        "polls": polls,
        "in_file_bytes": path.stat().st_size,
    }


# -- (c) the same work as /jobs ---------------------------------------------------------------


async def submit_jobs(url: str, first: int, count: int, submitters: int) -> tuple[float, list[str]]:
    """Requests ``first`` … as ``count`` ``POST /jobs`` from ``submitters`` keep-alive
    connections: (s, ids)."""
    ids: list[str] = []
    issued = 0

    async def submitter(conn: AioHTTP) -> None:
        nonlocal issued
        while issued < count:
            i = first + issued
            issued += 1
            body = json.dumps({"endpoint": ENDPOINT, "request": request_body(i)}).encode()
            status, _, data = await conn.request("POST", "/jobs", body)
            if status != 202:
                raise RuntimeError(f"POST /jobs answered {status}: {data[:200]!r}")
            ids.append(json.loads(data)["id"])

    conns = [await AioHTTP.open(url) for _ in range(submitters)]  # one by one: listen backlog
    try:
        t0 = time.monotonic()
        await asyncio.gather(*(submitter(c) for c in conns))
        elapsed = time.monotonic() - t0
    finally:
        for conn in conns:
            conn.close()
    return elapsed, ids


def job_counts(client: RawClient) -> dict[str, float]:
    status, body = client.request("GET", "/metrics")
    if status != 200:
        raise RuntimeError(f"GET /metrics answered {status}")
    counts: dict[str, float] = {}
    for line in body.decode().splitlines():
        found = re.match(r'foreman_job_transitions_total\{state="(\w+)"\} ([0-9.e+]+)', line)
        if found:
            counts[found.group(1)] = float(found.group(2))
    return counts


def run_jobs(
    server: Server, sampler: RssSampler, first: int, lines: int, submitters: int
) -> dict[str, Any]:
    url, pid = server.url, server.popen.pid
    base = sampler.baseline()
    cpu0 = cpu_seconds(pid)
    t_start = time.monotonic()
    submit_s, ids = asyncio.run(submit_jobs(url, first, lines, submitters))
    t_submitted = time.monotonic()
    cpu_submitted = cpu_seconds(pid)
    last = max(ids)  # ids sort by creation: the last one queued runs last
    client = RawClient(url, timeout=120)
    polls = 0
    try:
        while True:
            job = get_json(client, f"/jobs/{last}")
            polls += 1
            if job["state"] in ("done", "failed", "cancelled"):
                break
            time.sleep(POLL_S)
        while True:
            counts = job_counts(client)
            ended = counts.get("done", 0) + counts.get("failed", 0) + counts.get("cancelled", 0)
            if ended >= lines:
                break
            time.sleep(POLL_S)
        t_done = time.monotonic()
        cpu_done = cpu_seconds(pid)
    finally:
        client.close()
    if counts.get("done", 0) != lines:
        raise RuntimeError(f"expected {lines} jobs done, the daemon counts {counts}")
    return {
        "submit": submit_s,
        "submit_rate": lines / submit_s,
        "after_submit": t_done - t_submitted,
        "total": t_done - t_start,
        "cpu_submit": cpu_submitted - cpu0,
        "cpu": cpu_done - cpu0,
        "rss_base": base,
        "rss_run": max([base, *sampler.between(t_start, t_done)]),
        "polls": polls,
    }


# -- main ----------------------------------------------------------------------------------


def with_daemon(
    name: str,
    workdir: Path,
    target: str,
    env: dict[str, str],
    work: Callable[[Server, RssSampler], Any],
) -> Any:
    server = start_foreman(name, workdir, target, env=env)
    sampler = RssSampler(server.popen.pid).start()
    try:
        # the first requests warm the daemon's code paths up (not counted)
        client = RawClient(server.url)
        try:
            get_json(client, "/status")
            get_json(client, "/v1/batches?limit=1")
        finally:
            client.close()
        return work(server, sampler)
    finally:
        sampler.stop()
        server.stop()


def fmt_round(kind: str, number: int, lines: int, r: dict[str, Any]) -> list[object]:
    if kind == "batch":
        getting_in = (
            f"{r['submit']:.2f} (upload {r['upload']:.2f} + validation {r['validate']:.2f})"
        )
        after, finalizing = r["run"], f"{r['finalize']:.2f}"
    else:
        getting_in = f"{r['submit']:.2f} ({r['submit_rate']:,.0f} POST/s, running meanwhile)"
        after, finalizing = r["after_submit"], "-"
    return [
        number, kind, f"{lines:,}", getting_in, f"{after:.2f}", finalizing, f"{r['total']:.2f}",
        f"{r['total'] / lines * 1000:.2f}", f"{r['cpu']:.1f}", f"{r['cpu'] / lines * 1000:.2f}",
        f"{r['rss_base']:.1f} / {r['rss_run']:.1f}",
    ]  # fmt: skip


def main() -> None:
    global SETTLE_S
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--lines", type=int, default=10_000, help="lines of the batch validated in (b)"
    )
    parser.add_argument("--big-mb", type=int, default=150, help="MB of the padded upload")
    parser.add_argument(
        "--run-lines",
        type=int,
        default=3000,
        help="requests run in (c), through batches and through POST /jobs each",
    )
    parser.add_argument(
        "--rounds", type=int, choices=(2, 4), default=4, help="4: batch, jobs, jobs, batch"
    )
    parser.add_argument(
        "--submitters", type=int, default=16, help="concurrent POST /jobs connections"
    )
    parser.add_argument(
        "--settle", type=float, default=SETTLE_S, help="idle seconds before each phase"
    )
    parser.add_argument("--json", help="also write the results here (for run_all)")
    args = parse_args(parser, SMOKE)
    SETTLE_S = args.settle
    began = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="foreman-bench-batches-"))
    results = Results("Batches: upload, validation, a batch against the same work as /jobs")
    out: list[str] = [header_lines(), ""]
    servers: list[Server] = []
    env = {"FOREMAN_BATCH_MAX_BYTES": str(max(200 * MB, 2 * args.big_mb * MB))}
    n = args.lines
    order = ("batch", "jobs", "jobs", "batch")[: args.rounds]
    per_round = max(1, args.run_lines // (args.rounds // 2))
    try:
        chat = workdir / "chat.jsonl"
        chat_size = write_lines(chat, n)
        big = workdir / "padded.jsonl"
        big_size, big_lines = write_padded(big, args.big_mb * MB)
        sim = start_simulator("simulator", workdir, {MODEL: 0.0}, token_rate=0.0, reply_tokens=8)
        servers.append(sim)

        def files_side(server: Server, sampler: RssSampler) -> tuple[Any, Any]:
            url = server.url
            uploads = [
                measure_upload(url, sampler, big, "padded lines", big_lines),
                measure_upload(url, sampler, chat, "chat batch", n),
            ]
            (big_row, big_doc, _), (chat_row, chat_doc, _) = uploads
            validations = [
                validate_and_cancel(server, sampler, chat_doc["id"], "chat batch", n, chat_size),
                # last: a big batch leaves the daemon's RSS raised
                validate_and_cancel(
                    server, sampler, big_doc["id"],
                    f"padded lines ({big_size / big_lines / 1024:.0f} KiB each)",
                    big_lines, big_size,
                ),
            ]  # fmt: skip
            return [big_row, chat_row], validations

        upload_rows, validation_rows = with_daemon(
            "foreman-files", workdir, sim.url, env, files_side
        )

        # (c) alternating rounds on fresh daemons, so that a machine getting busier or
        # quieter meanwhile weighs on both paths alike
        rounds: list[tuple[str, int, dict[str, Any]]] = []
        offsets = {"batch": 0, "jobs": 0}
        for number, kind in enumerate(order, 1):
            first = offsets[kind]
            offsets[kind] += per_round
            if kind == "batch":
                path = workdir / f"round-{number}.jsonl"
                write_lines(path, per_round, first)
                work: Callable[[Server, RssSampler], Any] = functools.partial(
                    run_batch, path=path, lines=per_round, workdir=workdir
                )
            else:
                work = functools.partial(
                    run_jobs, first=first, lines=per_round, submitters=args.submitters
                )
            rounds.append(
                (kind, per_round, with_daemon(f"round-{number}", workdir, sim.url, env, work))
            )

        # -- tables
        out.append(
            f"Simulator: one model ({MODEL}), no load time, unpaced, 8 tokens per reply. "
            f"Requests: `{ENDPOINT}` chats. Data dir on {fs_type(workdir)}. "
            f"Daemon RSS sampled every {SAMPLE_S * 1000:.0f} ms.\n"
        )
        out.append(
            "### (a) `POST /v1/files`: multipart upload streamed to disk "
            f"(daemon RSS in MiB: median of {SETTLE_S:g} s idle before, peak during, "
            "right after)\n"
        )
        heads = ["file", "lines", "MB", "upload s", "MB/s", "RSS before", "RSS peak", "delta",
                 "RSS after", "RSS samples"]  # fmt: skip
        out.append(md_table(heads, upload_rows))
        big_delta = float(str(upload_rows[0][7]))
        results.goals.append(
            Goal(
                f"daemon RSS flat during a {GOAL_BIG_MB} MB+ upload "
                f"(peak - before < {GOAL_RSS_DELTA_MIB:g} MiB)",
                f"{args.big_mb} MB in {upload_rows[0][3]} s: {big_delta:+.1f} MiB "
                f"({upload_rows[0][5]} -> {upload_rows[0][6]} MiB)",
                big_delta < GOAL_RSS_DELTA_MIB if args.big_mb >= GOAL_BIG_MB else None,
            )
        )

        out.append(
            "\n### (b) validation: `POST /v1/batches` → `in_progress` (every line checked, "
            "then inserted as jobs in chunks of 2 000), then cancelled at once (its lines "
            "cancelled, an error file written); RSS in MiB: before, peak while validating, "
            "right after\n"
        )
        heads = ["batch", "lines", "MB", "POST /v1/batches ms", "to in_progress s",
                 "daemon's log s", "lines/s", "daemon CPU s", "RSS before", "RSS peak", "delta",
                 "RSS after", "cancel → cancelled s"]  # fmt: skip
        out.append(md_table(heads, validation_rows))
        chat_valid = float(str(validation_rows[0][4]))
        results.goals.append(
            Goal(
                f"a {GOAL_VALIDATE_LINES:,}-line batch validates in < {GOAL_VALIDATE_S:g} s "
                "(POST /v1/batches → in_progress)",
                f"{n:,} lines in {chat_valid:.2f} s",
                chat_valid < GOAL_VALIDATE_S if n >= GOAL_VALIDATE_LINES else None,
            )
        )
        padded = validation_rows[1]
        padded_delta = float(str(padded[10]))
        results.goals.append(
            Goal(
                f"daemon RSS flat while a {GOAL_BIG_MB} MB+ batch validates (ADR 0018: the input "
                f"is never held whole; peak - before < {GOAL_RSS_DELTA_MIB:g} MiB; extra check)",
                f"{args.big_mb} MB, {big_lines:,} lines: {padded_delta:+.1f} MiB "
                f"({padded[8]} -> {padded[9]} MiB, {padded[11]} MiB after)",
                padded_delta < GOAL_RSS_DELTA_MIB if args.big_mb >= GOAL_BIG_MB else None,
            )
        )

        total = {
            kind: (
                sum(r["total"] for k, _, r in rounds if k == kind),
                sum(lines for k, lines, _ in rounds if k == kind),
                sum(r["cpu"] for k, _, r in rounds if k == kind),
            )
            for kind in ("batch", "jobs")
        }
        per = {kind: wall / lines * 1000 for kind, (wall, lines, _) in total.items()}
        cpu = {kind: c / lines * 1000 for kind, (_, lines, c) in total.items()}
        ratio = per["batch"] / per["jobs"]
        out.append(
            f"\n### (c) run: the same {per_round * args.rounds // 2:,} chat requests through "
            f"batches and as `POST /jobs` ({args.submitters} concurrent submitters), in rounds "
            f"of {per_round:,} alternating {', '.join(order)}, each on a fresh daemon; wall from "
            "the first byte sent to the last result available; seconds\n"
        )
        rows = [fmt_round(kind, i, lines, r) for i, (kind, lines, r) in enumerate(rounds, 1)]
        for kind in ("batch", "jobs"):
            wall, lines, c = total[kind]
            rows.append(
                ["all", f"**{kind}**", f"{lines:,}", "", "", "", f"{wall:.2f}",
                 f"**{per[kind]:.2f}**", f"{c:.1f}", f"**{cpu[kind]:.2f}**", ""]
            )  # fmt: skip
        heads = ["round", "path", "lines", "getting the requests in", "running (after that)",
                 "finalizing", "wall", "per line ms", "daemon CPU s", "CPU per line ms",
                 "RSS before / peak MiB"]  # fmt: skip
        out.append(md_table(heads, rows))
        overhead = per["batch"] - per["jobs"]
        batches = [r for k, _, r in rounds if k == "batch"]
        out.append(
            f"\n* per-line overhead of a batch: {per['batch']:.2f} ms - {per['jobs']:.2f} ms = "
            f"{overhead:+.2f} ms ({overhead * n / 1000:+.1f} s for {n:,} lines); batch / jobs "
            f"per-line wall = {ratio:.2f}x; daemon CPU per line {cpu['batch']:.2f} ms against "
            f"{cpu['jobs']:.2f} ms ({cpu['batch'] / cpu['jobs']:.2f}x)."
        )
        out.append(
            "* finalization (the last line's end → `completed`): "
            + ", ".join(f"{r['finalize']:.2f} s" for r in batches)
            + f" for {per_round:,} lines; output file "
            + ", ".join(f"{r['out_bytes'] / MB:.2f} MB" for r in batches)
            + f" ({batches[0]['out_bytes'] / per_round:.0f} B per line), downloaded in "
            + ", ".join(f"{r['download']:.2f} s" for r in batches)
            + "; every `custom_id` once, each a 200."
        )
        out.append(
            f"* progress polled every {POLL_S * 1000:.0f} ms (`GET /v1/batches/{{id}}`, "
            f"`GET /jobs/{{last}}`); a batch's last {TAIL_LINES} lines and its end are "
            "long-polled (`?wait=&status=&done=`), so a jobs wall may be up to one poll late."
        )
        results.goals.append(
            Goal(
                f"per-line cost through a batch <= {GOAL_RATIO:g}x that of individual "
                "`POST /jobs` (chats on the simulator, wall per line)",
                f"{per['batch']:.2f} ms vs {per['jobs']:.2f} ms per line: {ratio:.2f}x "
                f"({overhead:+.2f} ms per line; daemon CPU {cpu['batch']:.2f} vs "
                f"{cpu['jobs']:.2f} ms)",
                ratio <= GOAL_RATIO,
            )
        )
    finally:
        stop_all(servers)
        shutil.rmtree(workdir, ignore_errors=True)
    out.append(f"\n(run took {time.monotonic() - began:.0f} s)")
    results.markdown = "\n".join(out)
    print(results.markdown)
    results.write(args.json)


if __name__ == "__main__":
    main()
