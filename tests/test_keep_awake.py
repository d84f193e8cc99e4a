"""``foreman keep-awake``: the loop on a fake clock, the inhibitor as a real child process, and
the real command as a subprocess against the real daemon with fake inhibitor programs on PATH.

The fakes (``systemd-inhibit``, ``caffeinate``) are small Python scripts that append
``hold <time> <argv>`` to a file when started and ``release <time>`` when they end
(SIGTERM; for ``systemd-inhibit`` also the end of its stdin, as its ``cat`` would;
for ``caffeinate -w PID`` also that process ending, as the real one does).
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import os
import signal
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import pytest
import pytest_twisted
from twisted.internet.defer import Deferred, succeed
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import Clock, deferLater
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from foreman.client import (
    AsyncForemanClient,
    BadRequest,
    ForemanConnectionError,
    NotFound,
    QueueActivity,
    ServiceUnavailable,
    Unauthorized,
)
from foreman.client.cli import run
from foreman.client.keepawake import (
    InhibitorProgram,
    KeepAwake,
    KeepAwakeError,
    NoInhibitor,
    ProcessInhibitor,
    find_inhibitor,
    parse_duration,
)
from foreman.core.backoff import Backoff
from tests.deferreds import failure_of
from tests.harness import chat, reactor, running_simulator, start_stack, until
from tests.proc import DaemonProcess, spawn, wait_ready_async

# -- fakes for the loop


def activity(busy: bool, queued: int | None = None, running: bool | None = None) -> QueueActivity:
    if queued is None:
        queued = 1 if busy else 0
    return QueueActivity(
        busy=busy,
        queued=queued,
        running=bool(running),
        paused=False,
        draining=False,
    )


class FakeClient:
    """``activity`` calls recorded with the clock time; the test answers each one."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.calls: list[tuple[float, float, bool | None]] = []
        self.pending: list[Deferred[QueueActivity]] = []

    def activity(self, wait: float = 0.0, busy: bool | None = None) -> Deferred[QueueActivity]:
        self.calls.append((self.clock.seconds(), wait, busy))
        d: Deferred[QueueActivity] = Deferred()
        self.pending.append(d)
        return d

    def answer(self, value: QueueActivity | BaseException) -> None:
        assert self.pending, "no request is waiting"
        d = self.pending.pop(0)
        if isinstance(value, BaseException):
            d.errback(Failure(value))
        else:
            d.callback(value)


class FakeInhibitor:
    name = "fake-inhibit"

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.events: list[tuple[str, float]] = []
        self.on_lost: Callable[[str], None] | None = None
        self._held = False

    @property
    def held(self) -> bool:
        return self._held

    def hold(self) -> None:
        assert not self._held
        self._held = True
        self.events.append(("hold", self.clock.seconds()))

    def release(self) -> Deferred[None]:
        if self._held:
            self._held = False
            self.events.append(("release", self.clock.seconds()))
        return succeed(None)

    def die(self, reason: str) -> None:
        self._held = False
        self.events.append(("died", self.clock.seconds()))
        assert self.on_lost is not None
        self.on_lost(reason)


NO_JITTER = Backoff.exponential(0.5, 30.0, 0.0)


@attrs.define
class Loop:
    clock: Clock
    client: FakeClient
    inhibitor: FakeInhibitor
    keep: KeepAwake
    lines: list[str]
    done: Deferred[None]


def start_loop(grace: float = 120.0) -> Loop:
    clock = Clock()
    client = FakeClient(clock)
    inhibitor = FakeInhibitor(clock)
    lines: list[str] = []
    keep = KeepAwake(
        client,
        inhibitor,
        clock,
        grace,
        lines.append,
        reconnect=NO_JITTER,
        rehold=Backoff.exponential(1.0, 60.0, 0.0),
    )
    done = Deferred.fromCoroutine(keep.run())
    return Loop(clock, client, inhibitor, keep, lines, done)


def events(loop: Loop) -> list[tuple[str, float]]:
    return list(loop.inhibitor.events)


# -- the loop


def test_it_long_polls_with_what_it_saw_last_and_never_busy_polls() -> None:
    loop = start_loop()
    assert loop.client.calls == [(0.0, 0.0, None)]  # the first look answers at once
    loop.client.answer(activity(False))
    assert loop.client.calls[-1] == (0.0, 55.0, False)
    loop.clock.advance(55)
    loop.client.answer(activity(False))  # unchanged after the wait: the same question again
    assert loop.client.calls[-1] == (55.0, 55.0, False)
    loop.client.answer(activity(True))
    assert loop.client.calls[-1] == (55.0, 55.0, True)
    assert len(loop.client.calls) == 4
    result = loop.keep.stop()
    assert result.called and loop.done.called


def test_it_holds_while_busy_and_releases_a_grace_period_after() -> None:
    loop = start_loop(grace=120)
    loop.client.answer(activity(False))
    assert events(loop) == []  # idle from the start: nothing to hold, nothing to wait for
    loop.clock.advance(10)
    loop.client.answer(activity(True, queued=3))
    assert events(loop) == [("hold", 10.0)]
    loop.clock.advance(30)
    loop.client.answer(activity(False))
    loop.clock.advance(119)
    assert events(loop) == [("hold", 10.0)]
    loop.clock.advance(1)
    assert events(loop) == [("hold", 10.0), ("release", 160.0)]
    text = "\n".join(loop.lines)
    assert "busy (3 queued, nothing running): holding the sleep inhibitor (fake-inhibit)" in text
    assert "idle: releasing the sleep inhibitor in 120 s" in text
    assert "released the sleep inhibitor (idle for 120 s)" in text
    loop.keep.stop()
    assert loop.done.called


def test_work_within_the_grace_period_keeps_the_same_hold() -> None:
    loop = start_loop(grace=60)
    loop.client.answer(activity(True))
    loop.client.answer(activity(False))
    loop.clock.advance(59)
    loop.client.answer(activity(True))
    loop.clock.advance(300)  # the timer of the first idle spell is gone
    assert events(loop) == [("hold", 0.0)]
    loop.client.answer(activity(False))
    loop.clock.advance(60)
    assert events(loop) == [("hold", 0.0), ("release", 419.0)]
    assert any("busy again" in line for line in loop.lines)
    loop.keep.stop()


def test_an_unreachable_foreman_releases_after_the_grace_period_and_retries_with_backoff() -> None:
    loop = start_loop(grace=10)
    loop.client.answer(activity(True))
    assert events(loop) == [("hold", 0.0)]
    refused = ForemanConnectionError("GET http://x/queue/activity failed: connection refused")
    for _ in range(8):
        loop.client.answer(refused)
        assert not loop.client.pending  # the next try is scheduled, not made at once
        while not loop.client.pending:
            loop.clock.advance(0.25)
    times = [t for t, _, _ in loop.client.calls[2:]]
    gaps = [round(b - a, 2) for a, b in itertools.pairwise(times)]
    assert gaps == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]  # doubling, capped: never a tight loop
    assert [w for _, w, _ in loop.client.calls[2:]] == [0.0] * 8  # each try asks at once
    assert events(loop)[:2] == [("hold", 0.0), ("release", 10.0)]
    assert "foreman unreachable: GET http://x/queue/activity failed: connection refused" in (
        "\n".join(loop.lines)
    )
    assert "released the sleep inhibitor (foreman unreachable for 10 s)" in loop.lines
    # foreman is back with work waiting: held again, and the backoff starts over
    loop.client.answer(activity(True))
    assert events(loop)[-1] == ("hold", loop.clock.seconds())
    assert any("foreman answers again" in line for line in loop.lines)
    loop.client.answer(refused)
    before = loop.clock.seconds()
    while not loop.client.pending:
        loop.clock.advance(0.25)
    assert loop.clock.seconds() - before == 0.5
    loop.keep.stop()


def test_a_short_outage_changes_nothing() -> None:
    loop = start_loop(grace=10)
    loop.client.answer(activity(True))
    loop.client.answer(ForemanConnectionError("connection lost"))  # foreman restarts
    loop.clock.advance(0.5)
    loop.client.answer(ServiceUnavailable("bad gateway", code="http_502", status=502))
    loop.clock.advance(1.0)
    loop.client.answer(activity(True))
    loop.clock.advance(100)
    assert events(loop) == [("hold", 0.0)]
    # after the restart it asks at once, then long-polls again
    assert [(w, b) for _, w, b in loop.client.calls] == [
        (0.0, None),
        (55.0, True),
        (0.0, None),
        (0.0, None),
        (55.0, True),
    ]
    loop.keep.stop()
    assert events(loop) == [("hold", 0.0), ("release", 101.5)]


def test_an_outage_while_idle_does_not_restart_the_grace_period() -> None:
    loop = start_loop(grace=10)
    loop.client.answer(activity(True))
    loop.client.answer(activity(False))  # grace from t=0
    loop.clock.advance(6)
    loop.client.answer(ForemanConnectionError("connection lost"))
    loop.clock.advance(0.5)
    loop.client.answer(activity(False))
    loop.clock.advance(3.5)
    assert events(loop) == [("hold", 0.0), ("release", 10.0)]
    assert loop.lines[-1].endswith("(idle for 10 s)")
    loop.keep.stop()


def test_unreachable_from_the_start_holds_nothing() -> None:
    loop = start_loop(grace=1)
    for _ in range(5):
        loop.client.answer(ForemanConnectionError("refused"))
        loop.clock.advance(60)
    assert events(loop) == []
    # said once (and every tenth failure), not on every try
    assert sum("unreachable" in line for line in loop.lines) == 1
    loop.keep.stop()
    assert loop.done.called


@pytest.mark.parametrize(
    ("error", "said"),
    [
        (Unauthorized("missing or wrong token", code="unauthorized", status=401), "token"),
        (BadRequest("wait must be 0-300", code="invalid_wait", status=400), "rejected"),
        (NotFound("no route", code="not_found", status=404), "older than keep-awake"),
    ],
)
def test_errors_a_retry_cannot_fix_end_it_and_release(error: Exception, said: str) -> None:
    loop = start_loop()
    loop.client.answer(activity(True))
    loop.client.answer(error)
    failure = failure_of(loop.done)
    assert isinstance(failure.value, KeepAwakeError)
    assert said in str(failure.value)
    loop.keep.stop()
    assert events(loop) == [("hold", 0.0), ("release", 0.0)]


def test_a_proxys_404_while_foreman_restarts_is_retried() -> None:
    loop = start_loop()
    loop.client.answer(NotFound("404 page not found", code="http_404", status=404))
    assert not loop.done.called
    loop.clock.advance(0.5)
    assert len(loop.client.calls) == 2
    loop.keep.stop()


def test_stop_while_waiting_releases_and_ends_the_loop() -> None:
    loop = start_loop()
    loop.client.answer(activity(True))
    pending = loop.client.pending[0]
    stopped = loop.keep.stop()
    assert stopped.called and loop.done.called
    assert pending.called  # the long-poll was cancelled
    assert events(loop) == [("hold", 0.0), ("release", 0.0)]
    assert "stopping: releasing the sleep inhibitor (fake-inhibit)" in loop.lines[-1]
    assert loop.clock.getDelayedCalls() == []


def test_stop_called_again_as_the_loop_ends_says_it_once() -> None:
    loop = start_loop()
    loop.client.answer(activity(True))
    again: list[Deferred[None]] = []
    loop.done.addBoth(lambda _: again.append(loop.keep.stop()))  # as the command does
    first = loop.keep.stop()
    assert first.called and again and again[0].called
    assert events(loop) == [("hold", 0.0), ("release", 0.0)]
    assert [line for line in loop.lines if line.startswith("stopping")] == [
        "stopping: releasing the sleep inhibitor (fake-inhibit)"
    ]


def test_stop_while_waiting_to_retry_ends_the_loop() -> None:
    loop = start_loop()
    loop.client.answer(ForemanConnectionError("refused"))
    loop.keep.stop()
    assert loop.done.called and loop.clock.getDelayedCalls() == []


def test_an_inhibitor_that_ends_on_its_own_is_taken_again_with_backoff() -> None:
    loop = start_loop(grace=5)
    loop.client.answer(activity(True))
    loop.inhibitor.die("fake-inhibit exited with status 1: Access denied")
    assert "holding it again in 1.0 s" in loop.lines[-1]
    loop.clock.advance(1)
    loop.inhibitor.die("fake-inhibit exited with status 1: Access denied")
    loop.clock.advance(2)
    assert [e for e, _ in events(loop)] == ["hold", "died", "hold", "died", "hold"]
    # idle (grace until t=8); it ends again at t=6, due back at t=10: no longer needed
    loop.client.answer(activity(False))
    loop.clock.advance(3)
    loop.inhibitor.die("again")
    assert "holding it again in 4.0 s" in loop.lines[-1]
    loop.clock.advance(2)
    assert [e for e, _ in events(loop)][-1] == "died"
    assert loop.clock.getDelayedCalls() == []  # the re-hold was called off
    loop.keep.stop()


# -- durations and finding the inhibitor


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("120", 120.0),
        ("120s", 120.0),
        ("2m", 120.0),
        ("1h", 3600.0),
        ("0.5s", 0.5),
        ("500ms", 0.5),
        (" 90 ", 90.0),
        ("0", 0.0),
        ("1.5m", 90.0),
    ],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "-1", "2 minutes", "1d", "m", "1e3", "nan"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


def make_fakes(bin_dir: Path, names: tuple[str, ...] = ("systemd-inhibit", "caffeinate")) -> Path:
    """Fake inhibitor programs in ``bin_dir``; they record into $FAKE_INHIBIT_LOG."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    script = textwrap.dedent(
        f"""\
        #!{sys.executable}
        import os, signal, sys, threading, time

        name = os.path.basename(sys.argv[0])
        log = os.environ["FAKE_INHIBIT_LOG"]
        lock = threading.Lock()
        ended = []

        def note(word, extra=""):
            with open(log, "a") as f:
                f.write(f"{{word}} {{time.time():.3f}} {{name}} {{extra}}\\n")

        def end(*_):
            with lock:
                if not ended:
                    ended.append(1)
                    note("release")
            os._exit(0)

        signal.signal(signal.SIGTERM, end)
        if os.environ.get("FAKE_INHIBIT_FAIL"):
            print("Failed to inhibit: Access denied", file=sys.stderr)
            sys.exit(1)
        note("hold", " ".join(sys.argv[1:]))
        if name == "caffeinate" and "-w" in sys.argv:
            pid = int(sys.argv[sys.argv.index("-w") + 1])
            while True:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    end()
                time.sleep(0.05)
        sys.stdin.buffer.read()  # systemd-inhibit's `cat`: until keep-awake's pipe ends
        end()
        """
    )
    for name in names:
        path = bin_dir / name
        path.write_text(script)
        path.chmod(0o755)
    return bin_dir


def records(log: Path) -> list[tuple[str, float, str]]:
    if not log.exists():
        return []
    out = []
    for line in log.read_text().splitlines():
        word, at, rest = line.split(" ", 2)
        out.append((word, float(at), rest))
    return out


def test_find_inhibitor_prefers_what_the_platform_has(tmp_path: Path) -> None:
    both = make_fakes(tmp_path / "both")
    only_caffeinate = make_fakes(tmp_path / "mac", ("caffeinate",))
    linux = find_inhibitor("auto", path=str(both), platform="linux")
    assert linux == InhibitorProgram("systemd", str(both / "systemd-inhibit"))
    mac = find_inhibitor("auto", path=str(both), platform="darwin")
    assert mac == InhibitorProgram("caffeinate", str(both / "caffeinate"))
    assert find_inhibitor("auto", path=str(only_caffeinate), platform="linux").kind == "caffeinate"
    assert find_inhibitor("caffeinate", path=str(both)).path == str(both / "caffeinate")

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(NoInhibitor) as none:
        find_inhibitor("auto", path=str(empty), platform="freebsd14")
    message = str(none.value)
    assert "systemd-inhibit" in message and "caffeinate" in message and "freebsd14" in message
    with pytest.raises(NoInhibitor, match="systemd-inhibit not found"):
        find_inhibitor("systemd", path=str(only_caffeinate))


def test_the_inhibitor_commands() -> None:
    systemd = InhibitorProgram("systemd", "/usr/bin/systemd-inhibit").argv(4242)
    assert systemd[0] == "/usr/bin/systemd-inhibit"
    assert "--what=idle:sleep" in systemd and "--mode=block" in systemd
    assert "--who=foreman" in systemd and systemd[-1] == "cat"
    assert InhibitorProgram("caffeinate", "/usr/bin/caffeinate").argv(4242) == [
        "/usr/bin/caffeinate",
        "-i",
        "-w",
        "4242",
    ]


# -- the inhibitor as a child process (fake programs)


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("kind", ["systemd", "caffeinate"])
async def test_the_process_inhibitor_holds_and_releases(tmp_path: Path, kind: str) -> None:
    bin_dir = make_fakes(tmp_path / "bin")
    log = tmp_path / "inhibit.log"
    program = find_inhibitor(kind, path=str(bin_dir))
    inhibitor = ProcessInhibitor(reactor, program, env={**os.environ, "FAKE_INHIBIT_LOG": str(log)})
    lost: list[str] = []
    inhibitor.on_lost = lost.append
    inhibitor.hold()
    assert inhibitor.held and inhibitor.pid is not None
    await until(lambda: len(records(log)) == 1)
    await inhibitor.release()
    assert not inhibitor.held
    seen = records(log)
    assert [r[0] for r in seen] == ["hold", "release"]
    args = seen[0][2].split()
    assert args[0] == program.name
    if kind == "systemd":
        assert "--what=idle:sleep" in args
    else:
        assert args[1:] == ["-i", "-w", str(os.getpid())]
    assert lost == []
    await inhibitor.release()  # twice: nothing more


@pytest_twisted.ensureDeferred
async def test_an_inhibitor_that_fails_is_reported_with_what_it_said(tmp_path: Path) -> None:
    bin_dir = make_fakes(tmp_path / "bin")
    program = find_inhibitor("systemd", path=str(bin_dir))
    env = {**os.environ, "FAKE_INHIBIT_LOG": str(tmp_path / "log"), "FAKE_INHIBIT_FAIL": "1"}
    inhibitor = ProcessInhibitor(reactor, program, env=env)
    lost: list[str] = []
    inhibitor.on_lost = lost.append
    inhibitor.hold()
    await until(lambda: bool(lost))
    assert lost == ["systemd-inhibit exited with status 1: Failed to inhibit: Access denied"]
    assert not inhibitor.held


# -- the real command as a process


class FakeForeman(Resource):
    """``GET /queue/activity`` with foreman's long-poll rule, busy set by the test."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.busy = False
        self.waiting: list[tuple[Request, Any]] = []
        self.requests = 0

    def _body(self) -> bytes:
        return json.dumps(
            {
                "object": "queue.activity",
                "busy": self.busy,
                "queued": 2 if self.busy else 0,
                "running": self.busy,
                "paused": False,
                "draining": False,
            }
        ).encode()

    def render_GET(self, request: Request) -> bytes | int:
        self.requests += 1
        assert request.path == b"/queue/activity", request.path
        seen = request.args.get(b"busy", [None])[0]
        wait = float(request.args.get(b"wait", [b"0"])[0])
        if seen is None or (seen == b"true") != self.busy:
            return self._body()
        timer = reactor.callLater(wait, self._answer, request)
        self.waiting.append((request, timer))
        request.notifyFinish().addErrback(lambda _: self._forget(request))
        return NOT_DONE_YET

    def _forget(self, request: Request) -> None:
        for entry in list(self.waiting):
            if entry[0] is request:
                self.waiting.remove(entry)
                if entry[1].active():
                    entry[1].cancel()

    def _answer(self, request: Request) -> None:
        self._forget(request)
        request.write(self._body())
        request.finish()

    def set_busy(self, busy: bool) -> None:
        self.busy = busy
        for request, _ in list(self.waiting):
            self._answer(request)

    def drop(self) -> None:
        """Cut every waiting long-poll, as a server going away does."""
        for request, timer in list(self.waiting):
            if timer.active():
                timer.cancel()
            request.channel.transport.abortConnection()  # type: ignore[union-attr]
        self.waiting.clear()


class KeepAwakeProcess(ProcessProtocol):
    def __init__(self) -> None:
        self.err = b""
        self.ended: Deferred[int] = Deferred()

    def errReceived(self, data: bytes) -> None:
        self.err += data

    def processEnded(self, reason: Failure) -> None:
        self.ended.callback(getattr(reason.value, "exitCode", None) or 0)

    @property
    def lines(self) -> list[str]:
        return self.err.decode().splitlines()


def spawn_keep_awake(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None
) -> tuple[KeepAwakeProcess, Any, Path]:
    """``python -m foreman.client.cli keep-awake ARGS`` with the fakes first on PATH."""
    bin_dir = make_fakes(tmp_path / "bin")
    log = tmp_path / "inhibit.log"
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("FOREMAN_")}
    full_env["PATH"] = f"{bin_dir}{os.pathsep}{full_env.get('PATH', '')}"
    full_env["FAKE_INHIBIT_LOG"] = str(log)
    full_env.update(env or {})
    proto = KeepAwakeProcess()
    argv = [sys.executable, "-m", "foreman.client.cli", "keep-awake", *args]
    process = reactor.spawnProcess(proto, sys.executable, argv, env=full_env, path=os.getcwd())
    return proto, process, log


async def ended(proto: KeepAwakeProcess, process: Any, timeout: float = 20.0) -> int:
    killer = reactor.callLater(timeout, process.signalProcess, "KILL")
    try:
        return await proto.ended
    finally:
        if killer.active():
            killer.cancel()


def holds(log: Path) -> list[str]:
    return [word for word, _, _ in records(log)]


@pytest_twisted.ensureDeferred
async def test_the_command_follows_a_server_through_an_outage(tmp_path: Path) -> None:
    fake = FakeForeman()
    port = reactor.listenTCP(0, Site(fake), interface="127.0.0.1")
    number = port.getHost().port
    url = f"http://127.0.0.1:{number}"
    proto, process, log = spawn_keep_awake(tmp_path, "--url", url, "--grace", "0.5s")
    try:
        await until(lambda: fake.waiting, timeout=20)  # started: long-polling, idle
        assert holds(log) == []
        fake.set_busy(True)
        await until(lambda: holds(log) == ["hold"])
        fake.set_busy(False)
        fake.set_busy(True)  # busy again at once: no release
        await deferLater(reactor, 0.8, lambda: None)
        assert holds(log) == ["hold"]
        fake.set_busy(False)
        idle_at = time.time()
        await until(lambda: holds(log) == ["hold", "release"])
        assert records(log)[1][1] - idle_at >= 0.45  # the grace period
        fake.set_busy(True)
        await until(lambda: holds(log) == ["hold", "release", "hold"])

        # the server goes away: released after the grace period, not kept forever
        gone_at = time.time()
        await port.stopListening()
        fake.drop()
        await until(lambda: holds(log)[-1] == "release", timeout=10)
        assert records(log)[-1][1] - gone_at >= 0.45
        assert any("foreman unreachable" in line for line in proto.lines)

        # back (same port), still busy: held again
        port = reactor.listenTCP(number, Site(fake), interface="127.0.0.1")
        await until(lambda: holds(log)[-1] == "hold", timeout=15)
        assert any("foreman answers again" in line for line in proto.lines)

        process.signalProcess("TERM")
        status = await ended(proto, process)
        assert status == 0, proto.err
        assert holds(log) == ["hold", "release", "hold", "release", "hold", "release"]
        assert "stopping: releasing the sleep inhibitor" in proto.lines[-1]
        assert "Traceback" not in proto.err.decode()
    finally:
        if proto.ended.called is False:
            process.signalProcess("KILL")
            await proto.ended
        await port.stopListening()
        fake.drop()


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("kind", ["systemd", "caffeinate"])
async def test_a_killed_keep_awake_leaves_no_inhibitor_behind(tmp_path: Path, kind: str) -> None:
    fake = FakeForeman()
    fake.busy = True
    port = reactor.listenTCP(0, Site(fake), interface="127.0.0.1")
    url = f"http://127.0.0.1:{port.getHost().port}"
    proto, process, log = spawn_keep_awake(tmp_path, "--url", url, "--inhibitor", kind)
    try:
        await until(lambda: holds(log) == ["hold"], timeout=20)
        assert records(log)[0][2].startswith(f"{'systemd-inhibit' if kind == 'systemd' else kind}")
        process.signalProcess("KILL")  # no chance to clean up
        await ended(proto, process)
        # systemd-inhibit's `cat` sees its pipe end; caffeinate -w sees the pid go
        await until(lambda: holds(log) == ["hold", "release"], timeout=10)
    finally:
        await port.stopListening()
        fake.drop()


@pytest_twisted.ensureDeferred
async def test_sigint_releases_and_exits_0(tmp_path: Path) -> None:
    fake = FakeForeman()
    fake.busy = True
    port = reactor.listenTCP(0, Site(fake), interface="127.0.0.1")
    url = f"http://127.0.0.1:{port.getHost().port}"
    proto, process, log = spawn_keep_awake(tmp_path, "--url", url)
    try:
        await until(lambda: holds(log) == ["hold"], timeout=20)
        process.signalProcess("INT")
        assert await ended(proto, process) == 0
        assert holds(log) == ["hold", "release"]  # released before it exited
    finally:
        await port.stopListening()
        fake.drop()


def keep_awake_here(*args: str) -> tuple[int, str]:
    """``foreman keep-awake ARGS`` in this process: what it exits with and prints on stderr."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        status = run(["keep-awake", *args], stdout=io.StringIO(), stderr=err)
    return status, err.getvalue()


def test_no_inhibitor_program_is_a_clear_error_naming_what_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    status, err = keep_awake_here("--url", "http://127.0.0.1:1")
    assert status == 2
    (line,) = err.splitlines()
    assert line.startswith("foreman: keep-awake: no sleep inhibitor found")
    assert "systemd-inhibit" in line and "caffeinate" in line
    status, err = keep_awake_here("--url", "http://127.0.0.1:1", "--inhibitor", "caffeinate")
    assert status == 2
    assert err == (
        "foreman: keep-awake: caffeinate not found on PATH; keep-awake --inhibitor caffeinate "
        "needs it (part of macOS)\n"
    )


def test_bad_arguments_are_usage_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(make_fakes(tmp_path / "bin")))
    for args, said in [
        (("--grace", "soon"), "not a duration"),
        (("--grace", "-1"), "not a duration"),
        (("--inhibitor", "wakelock"), "invalid choice"),
        (("--url", "ftp://x"), "unusable foreman URL"),
    ]:
        status, err = keep_awake_here(*args)
        assert status == 2, args
        assert said in err and "Traceback" not in err, err


@pytest_twisted.ensureDeferred
async def test_it_refuses_to_run_inside_a_program_with_a_running_reactor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(make_fakes(tmp_path / "bin")))
    status, err = keep_awake_here("--url", "http://127.0.0.1:1")
    assert status == 2
    assert "run it as a process of its own" in err


# -- the real command against the real daemon


def log_has(proto: KeepAwakeProcess, text: str) -> bool:
    return any(text in line for line in proto.lines)


async def stopped(daemon: DaemonProcess, timeout: float = 15.0) -> int:
    """SIGTERM to twistd; its exit status, once it exited (the reactor keeps running)."""
    daemon.signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while daemon.popen.poll() is None:
        assert time.monotonic() < deadline, f"twistd did not stop:\n{daemon.log()}"
        await deferLater(reactor, 0.05, lambda: None)
    return daemon.popen.returncode


@pytest_twisted.ensureDeferred
async def test_keep_awake_follows_the_daemon_through_work_and_a_restart(tmp_path: Path) -> None:
    """Both as processes: ``twistd foreman`` (stopped and started again) and keep-awake."""
    data = tmp_path / "foreman"
    async with running_simulator(models=("llama3.2",), token_rate=10.0) as sim:  # ~0.8 s a job
        env = {"FOREMAN_TARGET_URL": sim.url}
        daemon = spawn(data, env=env)
        url = await wait_ready_async(daemon)
        client = AsyncForemanClient(url, reactor=reactor)
        proto, process, log = spawn_keep_awake(tmp_path, "--grace", "1s", env={"FOREMAN_URL": url})
        try:
            await until(lambda: log_has(proto, "following"), timeout=20)
            await client.pause()  # work waits until we say so
            job = await client.submit(chat("llama3.2"))
            await until(lambda: holds(log) == ["hold"], timeout=10)
            assert "--what=idle:sleep" in records(log)[0][2]
            await client.resume()
            assert (await client.wait(job.id, timeout=20)).state.value == "done"
            done_at = time.time()
            await until(lambda: holds(log) == ["hold", "release"], timeout=10)
            # held for the grace period after (less the time our own answer took to come)
            assert records(log)[1][1] - done_at >= 0.6
            assert log_has(proto, "released the sleep inhibitor (idle for 1 s)")

            # work waits across a restart of foreman (paused is kept)
            await client.pause()
            queued = await client.submit(chat("llama3.2"))
            await until(lambda: holds(log) == ["hold", "release", "hold"], timeout=10)
            await client.close()
            down_at = time.time()  # keep-awake may see the connection go before twistd exits
            assert await stopped(daemon) == 0
            await until(lambda: holds(log)[-1] == "release", timeout=10)  # not kept awake forever
            assert records(log)[-1][1] - down_at >= 0.9
            assert log_has(proto, "foreman unreachable")

            port = url.rsplit(":", 1)[1]
            daemon = spawn(data, env=env, listen=f"tcp:{port}:interface=127.0.0.1")
            assert await wait_ready_async(daemon) == url
            client = AsyncForemanClient(url, reactor=reactor)
            await until(lambda: holds(log)[-1] == "hold", timeout=20)  # the queued job is back
            assert log_has(proto, "foreman answers again")
            await client.resume()
            assert (await client.wait(queued.id, timeout=20)).state.value == "done"
            await until(lambda: holds(log)[-1] == "release", timeout=10)

            process.signalProcess("TERM")
            assert await ended(proto, process) == 0, proto.err
            assert holds(log) == ["hold", "release"] * 3
            assert "Traceback" not in proto.err.decode()
        finally:
            if not proto.ended.called:
                process.signalProcess("KILL")
                await proto.ended
            await client.close()
            if daemon.popen.poll() is None:
                await stopped(daemon)


@pytest_twisted.ensureDeferred
async def test_keep_awake_with_the_daemons_token(tmp_path: Path) -> None:
    stack = await start_stack(tmp_path / "foreman", api_tokens=("s3cret",))
    try:
        proto, process, log = spawn_keep_awake(
            tmp_path, "--url", stack.url, "--token", "wrong", "--grace", "0"
        )
        assert await ended(proto, process) == 2
        assert proto.lines[-1].startswith(
            "foreman: keep-awake: foreman refused the token: HTTP 401"
        )
        assert holds(log) == []

        proto, process, log = spawn_keep_awake(
            tmp_path, "--url", stack.url, "--grace", "0", env={"FOREMAN_TOKEN": "s3cret"}
        )
        try:
            await until(lambda: log_has(proto, "following"), timeout=20)
            headers = {"Authorization": "Bearer s3cret"}
            paused = await stack.post("/queue/pause", headers=headers)
            assert paused.status == 200, paused.body
            await stack.post("/jobs", {"request": chat("llama3.2")}, headers=headers)
            await until(lambda: holds(log) == ["hold"], timeout=10)
            await stack.post("/queue/resume", headers=headers)
            await until(lambda: holds(log) == ["hold", "release"], timeout=10)
            process.signalProcess("TERM")
            assert await ended(proto, process) == 0
        finally:
            if not proto.ended.called:
                process.signalProcess("KILL")
                await proto.ended
    finally:
        await stack.stop()
