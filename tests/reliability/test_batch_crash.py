"""SIGKILL of a real ``twistd -n foreman`` in the middle of an OpenAI batch, then restart.

The issue's promise (SPEC "Batches", ADR 0018): kill the daemon at any moment
of a batch, restart it on the same data dir, and the batch completes; every
line's result appears exactly once in its output, and the counts are right.

As in ``tests/test_crash_recovery.py`` the simulator runs in the test's
reactor and the daemon is a subprocess, so a kill is a real process death
with a real database and real files left behind. The test reads the database
itself (WAL: a reader never blocks the daemon) to see what a kill interrupted.

Two tuning constants are shrunk in the daemon (``_DAEMON``) so that moments
that last a few milliseconds with a few dozen lines are long enough to kill
in: the lines are enqueued 8 to a transaction (``INSERT_CHUNK``; a batch is
otherwise enqueued 2 000 lines at a time) and the output is read 2 lines at a
time (``OUTPUT_CHUNK``, otherwise 1 000). The code paths are the ones a big batch takes.

The kill storm is seeded: the seed is printed and ``RELIABILITY_SEED=<n>``
replays a run; ``RELIABILITY_KILLS=<n>`` kills more often (default 3).
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import sys
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, closing
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import treq
from attrs import define, field, frozen
from twisted.internet.task import deferLater
from twisted.web.client import HTTPConnectionPool

from foreman.core.routeclass import INFERENCE_ROUTES
from foreman.testing import OllamaSimulator, reply_text
from tests import proc as daemon_proc
from tests.harness import reactor
from tests.proc import DaemonProcess, spawn, wait_ready_async

KILLS = int(os.environ.get("RELIABILITY_KILLS", "3"))
MODELS = ("llama3.2", "qwen3", "gemma3")
REPLY_TOKENS = 2
SLOW_RATE = 80.0  # tokens/s: a line generates for 25 ms (and foreman spends about as long)
FAST_RATE = 5000.0
ENDPOINT = "/v1/chat/completions"
TERMINAL = ("completed", "failed", "expired", "cancelled")
INFERENCE = frozenset(route.decode() for route in INFERENCE_ROUTES) | {ENDPOINT}
BOUNDARY = "foremanBatchCrash42"

# twistd with the batch service's chunk sizes shrunk (see the module docstring)
_DAEMON = [
    sys.executable,
    "-c",
    "import foreman.jobs.batches as b, foreman.jobs.batch_output as o; "
    "assert b.INSERT_CHUNK and o.OUTPUT_CHUNK; b.INSERT_CHUNK = 8; o.OUTPUT_CHUNK = 2; "
    "from twisted.scripts.twistd import run; run()",
]


async def _sleep(seconds: float) -> None:
    await deferLater(reactor, seconds, lambda: None)


async def poll(predicate: Callable[[], bool], timeout: float = 20.0, every: float = 0.002) -> None:
    deadline = reactor.seconds() + timeout
    while not predicate():
        assert reactor.seconds() < deadline, "condition not met in time"
        await _sleep(every)


def _seed() -> int:
    raw = os.environ.get("RELIABILITY_SEED")
    return int(raw) if raw else random.SystemRandom().randrange(2**32)


# -- the input


@frozen
class Line:
    custom_id: str
    model: str
    prompt: str

    def json(self) -> dict[str, Any]:
        return {
            "custom_id": self.custom_id,
            "method": "POST",
            "url": ENDPOINT,
            "body": {"model": self.model, "messages": [{"role": "user", "content": self.prompt}]},
        }

    @property
    def reply(self) -> str:
        return reply_text(self.model, self.prompt, REPLY_TOKENS)


def make_lines(count: int) -> list[Line]:
    # models interleaved: the scheduler drains one, then swaps (the simulator holds one)
    return [
        Line(f"req-{i}", MODELS[i % len(MODELS)], f"prompt {i} of the batch") for i in range(count)
    ]


def jsonl(lines: list[Line]) -> bytes:
    return b"".join(json.dumps(line.json()).encode() + b"\n" for line in lines)


def multipart(content: bytes, filename: str = "input.jsonl") -> bytes:
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
        f"--{BOUNDARY}\r\nContent-Disposition: form-data; "
        f'name="file"; filename="{filename}"\r\nContent-Type: application/jsonl\r\n\r\n'
    )
    return head.encode() + content + f"\r\n--{BOUNDARY}--\r\n".encode()


# -- what the database says


@frozen
class Snap:
    """The batch and its lines as the database has them (at a kill, say)."""

    status: str | None
    lines: dict[str, int]  # job state -> how many lines

    @property
    def total(self) -> int:
        return sum(self.lines.values())

    @property
    def running(self) -> int:
        return self.lines.get("loading", 0) + self.lines.get("working", 0)

    @property
    def done(self) -> int:
        return self.lines.get("done", 0)

    @property
    def ending(self) -> bool:
        """All lines ended: the batch is finalizing or has ended."""
        return self.status in (*TERMINAL, "finalizing")


def _connect(db: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(str(db), timeout=10, isolation_level=None)
    conn.row_factory = sqlite3.Row
    return conn


def snap(db: Path, batch_id: str) -> Snap:
    with closing(_connect(db)) as conn:
        row = conn.execute("SELECT status FROM batches WHERE id = ?", (batch_id,)).fetchone()
        states = conn.execute(
            "SELECT state, count(*) FROM jobs WHERE batch_id = ? GROUP BY state", (batch_id,)
        ).fetchall()
    return Snap(row[0] if row is not None else None, {s: int(n) for s, n in states})


def worker_requests(sim: OllamaSimulator, since: int = 0) -> list[Any]:
    """Inference requests foreman's worker sent the simulator (batch lines, model preloads)."""
    return [
        r
        for r in sim.requests[since:]
        if r.path in INFERENCE and r.headers.get("user-agent") == "foreman-worker"
    ]


def line_requests(sim: OllamaSimulator, since: int = 0) -> list[Any]:
    """The requests that asked the target to answer a batch line (not to load a model)."""
    return [
        r
        for r in worker_requests(sim, since)
        if isinstance(r.json, dict) and r.json.get("messages")
    ]


def lines_sent(sim: OllamaSimulator, since: int = 0) -> list[str]:
    """The prompts of the batch lines the target was asked to answer."""
    return [r.json["messages"][-1]["content"] for r in line_requests(sim, since)]


# -- the daemon under test, killed and restarted on one data dir


@define
class Bench:
    sim: OllamaSimulator
    data: Path
    pool: HTTPConnectionPool
    env: dict[str, str]
    proc: DaemonProcess | None = None
    url: str = ""
    since: int = 0  # the first simulator request of the running daemon
    kills: list[tuple[str, bool, Snap | None]] = field(factory=list)  # moment, generating, state

    @property
    def db(self) -> Path:
        return self.data / "foreman.sqlite3"

    @property
    def files_dir(self) -> Path:
        return self.data / "files"

    async def start(self) -> str:
        self.spawn()
        assert self.proc is not None
        self.url = await wait_ready_async(self.proc)
        return self.url

    def spawn(self) -> None:
        assert self.proc is None or self.proc.popen.poll() is not None
        self.since = len(self.sim.requests)
        self.proc = spawn(self.data, env=self.env)

    def generating(self) -> bool:
        """A batch line of the running daemon is being answered by the target right now."""
        return any(r.finished_at is None for r in line_requests(self.sim, self.since))

    def kill(self, moment: str, batch_id: str) -> Snap | None:
        """SIGKILL; the state the daemon left the batch in (None before it was created)."""
        assert self.proc is not None
        busy = self.generating()
        self.proc.kill()
        self.url = ""
        at = snap(self.db, batch_id) if batch_id and self.db.exists() else None
        self.kills.append((f"{moment} @{reactor.seconds():.2f}", busy, at))
        return at

    async def quiet(self) -> int:
        """After a kill: let the simulator see what the dead daemon sent; where its log stands."""
        await _sleep(0.2)
        return len(self.sim.requests)

    async def until(
        self, batch_id: str, ready: Callable[[Snap], bool], timeout: float = 30.0
    ) -> Snap:
        """Poll the database every 2 ms until ``ready(snapshot)`` holds."""
        deadline = reactor.seconds() + timeout
        while True:
            now = snap(self.db, batch_id)
            if ready(now):
                return now
            assert reactor.seconds() < deadline, f"condition not met in {timeout}s: {now}"
            await _sleep(0.002)

    async def kill_when(self, moment: str, batch_id: str, ready: Callable[[Snap], bool]) -> Snap:
        """SIGKILL as soon as ``ready(snapshot)`` holds; the state it left."""
        await self.until(batch_id, ready)
        at = self.kill(moment, batch_id)
        assert at is not None
        return at

    def stop(self) -> None:
        assert self.proc is not None
        assert self.proc.stop() == 0, self.proc.log()[-4000:]
        self.proc = None

    # -- HTTP

    async def call(
        self, method: str, path: str, body: Any = None, raw: bytes | None = None, ctype: str = ""
    ) -> tuple[int, bytes]:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        headers: dict[bytes | str, list[bytes | str]] = {
            b"Content-Type": [ctype or "application/json"]
        }
        response = await treq.request(
            method, self.url + path, data=data, headers=headers, pool=self.pool, timeout=60
        )
        return response.code, await treq.content(response)

    async def json(self, method: str, path: str, body: Any = None) -> Any:
        code, content = await self.call(method, path, body)
        assert code == 200, (method, path, code, content)
        return json.loads(content)

    async def upload(self, content: bytes) -> str:
        code, reply = await self.call(
            "POST",
            "/v1/files",
            raw=multipart(content),
            ctype=f"multipart/form-data; boundary={BOUNDARY}",
        )
        assert code == 200, reply
        file_id: str = json.loads(reply)["id"]
        return file_id

    async def create(self, file_id: str) -> dict[str, Any]:
        batch: dict[str, Any] = await self.json(
            "POST",
            "/v1/batches",
            {"input_file_id": file_id, "endpoint": ENDPOINT, "completion_window": "24h"},
        )
        assert batch["status"] == "validating", batch
        return batch

    async def settle(self, batch_id: str, timeout: float = 40.0) -> dict[str, Any]:
        """The batch once it has ended, by the long-poll extension (no busy polling)."""
        deadline = reactor.seconds() + timeout
        batch: dict[str, Any] = await self.json("GET", f"/v1/batches/{batch_id}")
        while batch["status"] not in TERMINAL:
            assert reactor.seconds() < deadline, f"batch did not end: {batch}"
            counts = batch["request_counts"]
            done = counts["completed"] + counts["failed"]
            batch = await self.json(
                "GET", f"/v1/batches/{batch_id}?wait=10&status={batch['status']}&done={done}"
            )
        return batch

    async def content(self, file_id: str) -> list[dict[str, Any]]:
        code, body = await self.call("GET", f"/v1/files/{file_id}/content")
        assert code == 200, body
        return [json.loads(line) for line in body.splitlines()]


@asynccontextmanager
async def bench(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Bench]:
    monkeypatch.setattr(daemon_proc, "TWISTD", _DAEMON)
    sim = OllamaSimulator(
        models=MODELS, token_rate=SLOW_RATE, reply_tokens=REPLY_TOKENS, load_time=0.02
    )
    await sim.listen("tcp:0:interface=127.0.0.1")
    pool = HTTPConnectionPool(reactor, persistent=False)
    env = {
        "FOREMAN_TARGET_URL": sim.url,
        "FOREMAN_MAX_ATTEMPTS": "50",  # a kill uses the attempt it interrupts; none may fail here
        "FOREMAN_SHUTDOWN_GRACE": "2",
    }
    b = Bench(sim, tmp_path / "data", pool, env)
    try:
        yield b
    finally:
        if b.proc is not None:
            b.proc.kill()
        print("kills (moment, a line generating, state left):", *b.kills, sep="\n  ")
        await pool.closeCachedConnections()
        await sim.close()


# -- what must hold at the end


def line_rows(db: Path, batch_id: str) -> dict[str, sqlite3.Row]:
    """The batch's jobs rows by custom_id; a duplicate custom_id fails."""
    with closing(_connect(db)) as conn:
        rows = conn.execute(
            "SELECT id, custom_id, line, state, attempts, error_code FROM jobs WHERE batch_id = ?",
            (batch_id,),
        ).fetchall()
    twice = [c for c, n in Counter(r["custom_id"] for r in rows).items() if n > 1]
    assert twice == [], f"lines enqueued twice: {twice}"
    return {r["custom_id"]: r for r in rows}


def orphans(b: Bench) -> list[str]:
    """Files on disk that no ``files`` row names (what no client can ever see or delete)."""
    with closing(_connect(b.db)) as conn:
        known = {r[0] for r in conn.execute("SELECT id FROM files")}
    return sorted(p.name for p in b.files_dir.iterdir() if p.name not in known)


async def check_files(b: Bench, batch: dict[str, Any]) -> None:
    """The batch's output files: listed once each, on disk, nothing half-written left."""
    expected = {f for f in (batch["output_file_id"], batch["error_file_id"]) if f is not None}
    listed = await b.json("GET", "/v1/files?purpose=batch_output&limit=10000")
    mine = [f for f in listed["data"] if f["filename"].startswith(batch["id"] + "_")]
    # one output (and one error) file, however many finalizations a kill interrupted
    assert sorted(f["id"] for f in mine) == sorted(expected), mine
    assert len({f["filename"] for f in mine}) == len(mine), mine
    with closing(_connect(b.db)) as conn:
        rows = [
            r[0] for r in conn.execute("SELECT id FROM files WHERE batch_id = ?", (batch["id"],))
        ]
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert sorted(rows) == sorted(expected)
    for file_id in expected:
        assert (b.files_dir / file_id).is_file()
    leftovers = [p.name for p in b.files_dir.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == [], leftovers
    stray = orphans(b)
    if stray:  # asserted by the test made for it (test_no_output_file_is_orphaned_...)
        print(f"files on disk without a files row: {stray}")


async def check_completed(b: Bench, batch_id: str, lines: list[Line]) -> dict[str, Any]:
    """Completed, every line's result exactly once and right, the counts and usage right."""
    batch = await b.settle(batch_id)
    total = len(lines)
    assert batch["status"] == "completed", batch
    assert batch["request_counts"] == {"total": total, "completed": total, "failed": 0}, batch
    assert batch["error_file_id"] is None, batch
    assert batch["in_progress_at"] is not None and batch["finalizing_at"] is not None
    assert batch["completed_at"] is not None
    by_id = {line.custom_id: line for line in lines}
    rows = line_rows(b.db, batch_id)
    assert set(rows) == set(by_id)
    assert {r["state"] for r in rows.values()} == {"done"}
    out = await b.content(batch["output_file_id"])
    seen = Counter(o["custom_id"] for o in out)
    assert seen == Counter(list(by_id)), [c for c, n in seen.items() if n != 1]
    for o in out:
        line, row = by_id[o["custom_id"]], rows[o["custom_id"]]
        assert o["error"] is None, o
        assert o["response"]["status_code"] == 200, o
        assert o["response"]["request_id"] == row["id"]
        assert o["id"] == "batch_req_" + row["id"].removeprefix("job_")
        body = o["response"]["body"]
        assert body["object"] == "chat.completion", o
        assert body["choices"][0]["message"]["content"] == line.reply, o
    assert batch["usage"]["output_tokens"] == total * REPLY_TOKENS, batch["usage"]
    await check_files(b, batch)
    return batch


# -- the tests


@pytest_twisted.ensureDeferred
async def test_sigkill_while_validating_running_and_finalizing_then_the_batch_completes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One batch, killed at each stage of its life in turn, restarted each time."""
    lines = make_lines(72)
    async with bench(tmp_path, monkeypatch) as b:
        b.sim.token_rate = FAST_RATE
        await b.start()
        batch_id = (await b.create(await b.upload(jsonl(lines))))["id"]

        # 1. validating: some chunks of lines are in the database, not all
        at = await b.kill_when("validating", batch_id, lambda s: s.total > 0)
        assert at.status == "validating" and 0 < at.total < len(lines), at

        # 2. in progress: lines done, one generating (the target is slow now)
        b.sim.token_rate = SLOW_RATE
        await b.start()
        progress = await b.json("GET", f"/v1/batches/{batch_id}")
        assert progress["status"] in ("validating", "in_progress"), progress
        at = await b.kill_when("in_progress", batch_id, lambda s: s.done >= 20 and b.generating())
        assert at.status == "in_progress" and at.total == len(lines), at
        assert 20 <= at.done < len(lines), at

        # 3. finalizing: every line ended, the output is being written
        b.sim.token_rate = FAST_RATE
        await b.start()
        progress = await b.json("GET", f"/v1/batches/{batch_id}")
        assert progress["status"] == "in_progress", progress
        assert progress["request_counts"]["total"] == len(lines), progress
        assert progress["request_counts"]["completed"] >= at.done, (progress, at)
        at = await b.kill_when("finalizing", batch_id, lambda s: s.status != "in_progress")
        assert at.status == "finalizing" and at.done == len(lines), at

        # 4. the last start finishes the batch
        await b.start()
        await check_completed(b, batch_id, lines)
        b.stop()


@pytest_twisted.ensureDeferred
async def test_kill_storm_during_a_batch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``RELIABILITY_KILLS`` kills at random moments of one batch (start-up included)."""
    seed = _seed()
    print(f"batch kill storm seed: {seed} (replay with RELIABILITY_SEED={seed})")
    rng = random.Random(seed)
    lines = make_lines(60)
    moments = ("startup", "generating", "anytime", "anytime", "finalizing")  # anytime: 2 in 5
    async with bench(tmp_path, monkeypatch) as b:
        batch_id = ""
        for round_no in range(KILLS):
            # the first kill lands soon after the batch is created, the second while
            # a line generates; the others anywhere
            moment = ("created", "generating")[round_no] if round_no < 2 else rng.choice(moments)
            delay = 0.0
            if moment == "startup":  # before, during or just after start-up
                b.spawn()
                assert b.proc is not None
                delay = rng.uniform(0.0, 1.2)
                await _sleep(delay)
                assert b.proc.popen.poll() is None, b.proc.log()
            else:
                await b.start()
                if moment == "created":
                    batch_id = (await b.create(await b.upload(jsonl(lines))))["id"]
                    delay = rng.uniform(0.0, 0.3)
                elif moment == "generating":
                    await b.until(batch_id, lambda s: b.generating() or s.ending)
                    delay = rng.uniform(0.0, 0.02)
                elif moment == "finalizing":
                    await b.until(batch_id, lambda s: s.ending)
                else:
                    delay = rng.uniform(0.0, 1.5)
                await _sleep(delay)
            b.kill(f"{moment} +{delay:.3f}s", batch_id)
        if KILLS >= 2:  # the second kill found a line half done (unless the batch had ended)
            assert any(busy for _, busy, _ in b.kills[1:]) or snap(b.db, batch_id).ending, b.kills

        await b.start()
        if not batch_id:  # RELIABILITY_KILLS=0
            batch_id = (await b.create(await b.upload(jsonl(lines))))["id"]
        batch = await check_completed(b, batch_id, lines)
        for row in line_rows(b.db, batch_id).values():
            assert row["attempts"] <= KILLS, (seed, dict(row))
        print(f"request_counts {batch['request_counts']}")
        b.stop()


@pytest_twisted.ensureDeferred
async def test_cancel_survives_a_sigkill(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Killed right after a cancel (lines done, one generating): the restart ends it cancelled.

    The lines done before stay in the output once each; nothing queued at the
    cancel runs after the restart; the rest are ``batch_cancelled`` errors.
    """
    lines = make_lines(60)
    async with bench(tmp_path, monkeypatch) as b:
        await b.start()
        batch_id = (await b.create(await b.upload(jsonl(lines))))["id"]
        while True:  # some lines done, one generating: cancel, and kill right after
            progress = await b.json("GET", f"/v1/batches/{batch_id}")
            if progress["request_counts"]["completed"] >= 10 and b.generating():
                break
            await _sleep(0.005)
        done_before = progress["request_counts"]["completed"]
        cancelling = await b.json("POST", f"/v1/batches/{batch_id}/cancel")
        at = b.kill("right after the cancel", batch_id)
        assert cancelling["status"] == "cancelling", cancelling
        assert at is not None and at.status == "cancelling", at
        assert at.total == len(lines) and at.done >= done_before, at
        done_at_kill = {c for c, r in line_rows(b.db, batch_id).items() if r["state"] == "done"}

        since = await b.quiet()
        await b.start()
        batch = await b.settle(batch_id)
        assert batch["status"] == "cancelled", batch
        assert batch["cancelling_at"] is not None and batch["cancelled_at"] is not None
        rows = line_rows(b.db, batch_id)
        done = {c for c, r in rows.items() if r["state"] == "done"}
        rest = set(rows) - done
        # nothing ran after the restart: what was not done at the kill ends cancelled
        assert done == done_at_kill, sorted(done ^ done_at_kill)
        assert {rows[c]["state"] for c in rest} == {"cancelled"}, {
            c: rows[c]["state"] for c in rest
        }
        total = len(lines)
        assert batch["request_counts"] == {
            "total": total,
            "completed": len(done),
            "failed": total - len(done),
        }, batch

        by_id = {line.custom_id: line for line in lines}
        out = await b.content(batch["output_file_id"])
        assert Counter(o["custom_id"] for o in out) == Counter(done)
        for o in out:
            assert o["response"]["status_code"] == 200 and o["error"] is None, o
            body = o["response"]["body"]
            assert body["choices"][0]["message"]["content"] == by_id[o["custom_id"]].reply
        errors = await b.content(batch["error_file_id"])
        assert Counter(e["custom_id"] for e in errors) == Counter(rest)
        for e in errors:
            assert e["response"] is None and e["error"]["code"] == "batch_cancelled", e
        await check_files(b, batch)
        b.stop()
        # and the target never saw one of them after the restart
        assert lines_sent(b.sim, since) == []


@pytest_twisted.ensureDeferred
async def test_cancel_while_validating_ends_the_same_with_or_without_a_sigkill(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch cancelled before it was enqueued whole runs nothing; a kill changes nothing.

    Without a kill the lines enqueued so far are dropped (``_enqueue`` sees the
    cancel) and the batch ends cancelled with no lines and no files. Killed
    right after the cancel, the restart must end it the same way.
    """
    lines = make_lines(90)
    async with bench(tmp_path, monkeypatch) as b:
        await b.start()
        file_id = await b.upload(jsonl(lines))

        async def cancelled_while_validating() -> str:
            batch_id: str = (await b.create(file_id))["id"]
            await b.until(batch_id, lambda s: s.total > 0)  # partly enqueued
            cancelling = await b.json("POST", f"/v1/batches/{batch_id}/cancel")
            assert cancelling["status"] == "cancelling", cancelling
            return batch_id

        async def outcome(batch_id: str) -> tuple[Any, ...]:
            batch = await b.settle(batch_id)
            await check_files(b, batch)
            return (
                batch["status"],
                batch["request_counts"],
                batch["output_file_id"],
                batch["error_file_id"] is not None,
                snap(b.db, batch_id).lines,
            )

        without = await outcome(await cancelled_while_validating())
        assert without == ("cancelled", {"total": 0, "completed": 0, "failed": 0}, None, False, {})
        for _ in range(4):  # a kill that lands once the cancel has finished proves nothing
            batch_id = await cancelled_while_validating()
            at = b.kill("cancelled while validating", batch_id)
            since = await b.quiet()
            await b.start()
            if at is not None and at.status == "cancelling" and at.total > 0:
                break
        assert at is not None and at.status == "cancelling" and 0 < at.total < len(lines), at
        with_kill = await outcome(batch_id)
        print("outcomes (without, with a kill):", without, with_kill, sep="\n  ")
        # the kill must not change how the batch ends: same counts, no files, no lines
        assert with_kill == without
        b.stop()
        assert lines_sent(b.sim) == []  # not one line of any of the batches ran
        assert worker_requests(b.sim, since) == []  # nor was a model loaded for one


@pytest_twisted.ensureDeferred
async def test_no_output_file_is_orphaned_by_a_sigkill_while_finalizing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A kill after the output file is renamed into place, before its row is committed.

    The test holds SQLite's write lock from the moment the batch is
    finalizing, which only stretches the few milliseconds between the rename
    and the commit (an fsync) that a kill or a power cut can land in anyway.
    The restart writes the output again under a new file id; the first copy
    must not stay on disk where no ``files`` row names it (no client can see,
    download or delete it, and nothing ever removes it).
    """
    lines = make_lines(24)
    async with bench(tmp_path, monkeypatch) as b:
        b.sim.token_rate = FAST_RATE
        await b.start()
        input_id = await b.upload(jsonl(lines))
        batch_id = (await b.create(input_id))["id"]
        await b.until(batch_id, lambda s: s.ending)

        def published() -> list[str]:
            return [
                p.name
                for p in b.files_dir.iterdir()
                if p.name != input_id and not p.name.startswith(".")
            ]

        with closing(_connect(b.db)) as lock:
            lock.execute("BEGIN IMMEDIATE")  # the daemon's closing commit waits behind it
            try:
                await poll(lambda: bool(published()), timeout=4, every=0.001)
                at = b.kill("output renamed, its row not committed", batch_id)
                assert at is not None and at.status == "finalizing", at
            finally:
                lock.execute("ROLLBACK")
        left = published()
        await b.start()
        await check_completed(b, batch_id, lines)
        b.stop()
        stray = orphans(b)
        assert stray == [], (
            f"output files of an interrupted finalization left on disk in no files row: {stray} "
            f"(written before the kill: {left})"
        )
