"""``foreman keep-awake``: hold the OS sleep inhibitor while foreman has work, on the target box.

Runs on the box that runs Ollama and needs only this client library. It
follows foreman with ``GET /queue/activity`` long-polls (one request per
change, and one per 55 s while nothing changes: no busy polling), holds the
operating system's sleep inhibitor while work is queued or running, and
releases it a grace period after foreman went idle:

* Linux: ``systemd-inhibit --what=idle:sleep --mode=block``;
* macOS: ``caffeinate -i``.

The inhibitor is a child process, held until it is told to end. It also
ends on its own when keep-awake dies (even by SIGKILL): ``systemd-inhibit``
runs ``cat`` on a pipe from keep-awake, which ends at that pipe's end, and
``caffeinate -w PID`` watches keep-awake's pid. A stale inhibitor never
outlives keep-awake.

When foreman cannot be reached (a restart, the network, a dead server), the
same grace period applies: a short outage changes nothing, a long one
releases the inhibitor, so a dead server never keeps a box awake. It retries
with backoff (0.5 s doubling to 30 s) and picks up where it was when foreman
answers again.

:class:`KeepAwake` is the loop; it is given the client, the inhibitor and a
clock, so tests drive it with fakes and ``twisted.internet.task.Clock``.
See ``docs/keep-awake.md``.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import re
import shutil
import signal
import sys
from collections.abc import Callable
from typing import Any, Protocol, TextIO

from attrs import frozen
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater
from twisted.python.failure import Failure

from foreman.client._async import AsyncForemanClient
from foreman.client._errors import BadRequest, ForemanError, NotFound, Unauthorized
from foreman.client._models import QueueActivity
from foreman.client._retry import RetryPolicy
from foreman.core.backoff import Backoff

__all__ = [
    "DEFAULT_GRACE",
    "INHIBITOR_KINDS",
    "POLL_SECONDS",
    "RECONNECT",
    "Inhibitor",
    "InhibitorProgram",
    "KeepAwake",
    "KeepAwakeError",
    "NoInhibitor",
    "ProcessInhibitor",
    "find_inhibitor",
    "parse_duration",
    "run_keep_awake",
    "stderr_log",
]

DEFAULT_GRACE = 120.0
# one long-poll; proxies in front often cut idle requests at 60-100 s
POLL_SECONDS = 55.0
RECONNECT = Backoff.exponential(0.5, 30.0, 0.2)
"""foreman could not be reached that many times in a row: 0.5 s, 1 s, 2 s … 30 s."""
REHOLD = Backoff.exponential(1.0, 60.0, 0.2)
"""The inhibitor program ended on its own that many times in a row: 1 s, 2 s … 60 s."""
RELEASE_TIMEOUT = 5.0  # an inhibitor that ignores SIGTERM this long is killed
WHY = "foreman has work queued or running"
INHIBITOR_KINDS = ("auto", "systemd", "caffeinate")


class KeepAwakeError(Exception):
    """keep-awake cannot go on (no inhibitor, foreman refused the token …): exit 2."""


class NoInhibitor(KeepAwakeError):
    """No sleep inhibitor program on this system."""


# -- durations


_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h)?")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(text: str) -> float:
    """Seconds from ``120``, ``120s``, ``2m``, ``1h``, ``500ms``, ``0.5s``; ValueError otherwise."""
    match = _DURATION.fullmatch(text.strip().lower())
    if match is None:
        raise ValueError(f"not a duration: {text!r} (try 120, 120s, 2m or 1h)")
    return float(match.group(1)) * _UNIT[match.group(2)]


# -- the inhibitor program


@frozen
class InhibitorProgram:
    """A sleep inhibitor this system has: ``kind`` (``systemd`` or ``caffeinate``) at ``path``."""

    kind: str
    path: str

    @property
    def name(self) -> str:
        return "systemd-inhibit" if self.kind == "systemd" else "caffeinate"

    def argv(self, pid: int, why: str = WHY) -> list[str]:
        """The command that holds the inhibitor until it is terminated or ``pid`` dies."""
        if self.kind == "systemd":
            # `cat` reads the pipe keep-awake holds open: it ends (and the lock with it)
            # when keep-awake ends, however it ends
            return [
                self.path,
                "--what=idle:sleep",
                "--who=foreman",
                f"--why={why}",
                "--mode=block",
                "cat",
            ]
        # -i: no idle sleep; -w: release when keep-awake's process ends
        return [self.path, "-i", "-w", str(pid)]


_PROGRAMS = {"systemd": "systemd-inhibit", "caffeinate": "caffeinate"}


def find_inhibitor(
    kind: str = "auto", path: str | None = None, platform: str = sys.platform
) -> InhibitorProgram:
    """The inhibitor program to use; NoInhibitor (saying what is missing) when there is none.

    ``auto``: ``caffeinate`` on macOS, else ``systemd-inhibit``, else
    ``caffeinate``. ``path`` is the search path (``$PATH`` by default).
    """
    if kind not in INHIBITOR_KINDS:
        raise NoInhibitor(f"unknown inhibitor {kind!r}: use one of {', '.join(INHIBITOR_KINDS)}")
    order = [kind] if kind != "auto" else ["systemd", "caffeinate"]
    if kind == "auto" and platform == "darwin":
        order.reverse()
    for candidate in order:
        found = shutil.which(_PROGRAMS[candidate], path=path)
        if found is not None:
            return InhibitorProgram(candidate, os.path.abspath(found))
    if kind != "auto":
        name = _PROGRAMS[kind]
        raise NoInhibitor(
            f"{name} not found on PATH; keep-awake --inhibitor {kind} needs it "
            f"({'part of systemd' if kind == 'systemd' else 'part of macOS'})"
        )
    raise NoInhibitor(
        "no sleep inhibitor found: keep-awake needs systemd-inhibit (Linux with systemd) "
        f"or caffeinate (macOS), and neither is on PATH on this {platform} system"
    )


class Inhibitor(Protocol):
    """What KeepAwake holds: ``hold()`` takes it, ``release()`` lets it go (fires when gone).

    ``on_lost`` is called with a reason when it ends without ``release()``.
    """

    on_lost: Callable[[str], None] | None

    @property
    def held(self) -> bool: ...

    @property
    def name(self) -> str: ...

    def hold(self) -> None: ...

    def release(self) -> Deferred[None]: ...


class _Child(ProcessProtocol):
    def __init__(self, owner: ProcessInhibitor) -> None:
        self.owner = owner
        self.err = b""
        self.ended: Deferred[None] = Deferred()

    def errReceived(self, data: bytes) -> None:
        self.err = (self.err + data)[-2000:]

    def processEnded(self, reason: Failure) -> None:
        self.owner._ended(self, reason)
        self.ended.callback(None)


class ProcessInhibitor:
    """The inhibitor as a child process (``systemd-inhibit … cat`` or ``caffeinate -i -w PID``)."""

    def __init__(
        self,
        reactor: Any,
        program: InhibitorProgram,
        env: dict[str, str] | None = None,
    ) -> None:
        self._reactor = reactor
        self.program = program
        self._env = dict(os.environ if env is None else env)
        self._child: _Child | None = None
        self._process: Any = None
        self._releasing: set[_Child] = set()
        self.on_lost: Callable[[str], None] | None = None

    @property
    def held(self) -> bool:
        return self._child is not None

    @property
    def name(self) -> str:
        return self.program.name

    @property
    def pid(self) -> int | None:
        return getattr(self._process, "pid", None) if self._child is not None else None

    def hold(self) -> None:
        if self._child is not None:
            return
        child = _Child(self)
        argv = self.program.argv(os.getpid())
        self._process = self._reactor.spawnProcess(
            child, argv[0], argv, env=self._env, childFDs={0: "w", 1: "r", 2: "r"}
        )
        self._child = child

    def release(self) -> Deferred[None]:
        """End the child (stdin closed, then SIGTERM; SIGKILL after 5 s); fires once it is gone.

        Also waits for a release already under way, so ``stop()`` returns only
        when no inhibitor process is left.
        """
        child, process = self._child, self._process
        if child is not None:
            self._child = self._process = None
            self._releasing.add(child)
            for step in (process.closeStdin, lambda: process.signalProcess("TERM")):
                try:
                    step()
                except Exception:  # already gone: processEnded follows
                    continue
            killer = self._reactor.callLater(RELEASE_TIMEOUT, _kill, process)
            child.ended.addCallback(lambda _: killer.cancel() if killer.active() else None)
        return _all_ended([c.ended for c in self._releasing])

    def _ended(self, child: _Child, reason: Failure) -> None:
        if child in self._releasing:
            self._releasing.discard(child)
            return
        if child is not self._child:
            return
        self._child = self._process = None
        value = reason.value
        if isinstance(value, ProcessDone):
            how = "exited with status 0"
        elif isinstance(value, ProcessTerminated):
            if value.signal is not None:
                how = f"was killed by signal {_signal_name(value.signal)}"
            else:
                how = f"exited with status {value.exitCode}"
        else:
            how = f"ended: {value}"
        said = " ".join(child.err.decode("utf-8", "replace").split())
        if self.on_lost is not None:
            self.on_lost(f"{self.program.name} {how}" + (f": {said}" if said else ""))


def _kill(process: Any) -> None:
    try:
        process.signalProcess("KILL")
    except Exception:  # already gone
        return


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)


def _chained(d: Deferred[None]) -> Deferred[None]:
    """A Deferred that fires after ``d`` without taking its result away from others."""
    out: Deferred[None] = Deferred()

    def fire(result: object) -> object:
        out.callback(None)
        return result

    d.addBoth(fire)
    return out


def _all_ended(waits: list[Deferred[None]]) -> Deferred[None]:
    """Fires once every one of ``waits`` has (at once when there are none)."""
    if not waits:
        return succeed(None)
    done: Deferred[None] = Deferred()
    left = [len(waits)]

    def one(result: object) -> object:
        left[0] -= 1
        if left[0] == 0:
            done.callback(None)
        return result

    for d in waits:
        d.addBoth(one)
    return done


# -- the loop


class ActivitySource(Protocol):
    """What KeepAwake asks: AsyncForemanClient's ``activity``."""

    def activity(self, wait: float = 0.0, busy: bool | None = None) -> Deferred[QueueActivity]: ...


def _fatal(error: BaseException) -> str | None:
    """Why an error ends keep-awake (retrying cannot help), or None when it is worth a retry."""
    if isinstance(error, Unauthorized):
        return f"foreman refused the token: {error}"
    if isinstance(error, BadRequest):
        return f"foreman rejected the request: {error}"
    # foreman's own 404 (a JSON error code): a foreman without GET /queue/activity. A
    # proxy's 404 page while foreman restarts behind it is worth retrying.
    if isinstance(error, NotFound) and not error.code.startswith("http_"):
        return f"{error} (is foreman older than keep-awake? it needs GET /queue/activity)"
    return None


def _counts(activity: QueueActivity) -> str:
    parts = [f"{activity.queued} queued", "running" if activity.running else "nothing running"]
    if activity.draining:
        parts.append("draining")
    elif activity.paused:
        parts.append("paused")
    return ", ".join(parts)


class KeepAwake:
    """Follows foreman's activity and holds ``inhibitor`` while busy and ``grace`` s after.

    ``await run()`` goes on until ``stop()`` (then returns) or an error that a
    retry cannot fix (raises KeepAwakeError). ``log`` gets one line per hold,
    release and connection trouble.
    """

    def __init__(
        self,
        client: ActivitySource,
        inhibitor: Inhibitor,
        clock: IReactorTime,
        grace: float = DEFAULT_GRACE,
        log: Callable[[str], None] = lambda line: None,
        *,
        poll: float = POLL_SECONDS,
        reconnect: Backoff = RECONNECT,
        rehold: Backoff = REHOLD,
    ) -> None:
        self._client = client
        self._inhibitor = inhibitor
        self._clock = clock
        self.grace = grace
        self._log = log
        self._poll = poll
        self._reconnect = reconnect
        self._rehold = rehold
        self._pending: Deferred[Any] | None = None
        self._grace_timer: IDelayedCall | None = None
        self._rehold_timer: IDelayedCall | None = None
        self._losses = 0
        self._held_at = 0.0
        self._grace_why = ""
        self._wanted = False  # busy, or within the grace period after
        self._stopping = False
        self._stopped: Deferred[None] | None = None
        inhibitor.on_lost = self._lost

    @property
    def holding(self) -> bool:
        """Whether keep-awake wants the inhibitor held (busy, or within the grace period)."""
        return self._wanted

    async def run(self) -> None:
        last: bool | None = None
        failures = 0
        while not self._stopping:
            try:
                self._pending = self._client.activity(self._poll if last is not None else 0.0, last)
                activity: QueueActivity = await self._pending
            except Exception as e:
                self._pending = None
                if self._stopping:
                    break
                why = _fatal(e)
                if why is not None:
                    raise KeepAwakeError(why) from e
                failures += 1
                last = None  # ask at once when foreman answers again
                delay = self._reconnect.delay(failures)
                self._unreachable(e, delay, failures)
                try:
                    self._pending = deferLater(self._clock, delay, lambda: None)
                    await self._pending
                except CancelledError:
                    break
                finally:
                    self._pending = None
                continue
            self._pending = None
            if failures:
                self._log(f"foreman answers again ({_counts(activity)})")
                failures = 0
            if activity.busy:
                self._busy(activity)
            else:
                self._idle(activity)
            last = activity.busy

    def stop(self) -> Deferred[None]:
        """Stop following and release the inhibitor; fires once it is released."""
        if self._stopped is None:
            self._stopping = True
            self._cancel_timers()
            self._wanted = False
            if self._inhibitor.held:
                self._log(f"stopping: releasing the sleep inhibitor ({self._inhibitor.name})")
            else:
                self._log("stopping")
            self._stopped = self._inhibitor.release()
            # last: cancelling ends run() at once, and its caller may call stop() again
            pending, self._pending = self._pending, None
            if pending is not None:
                pending.addErrback(lambda _: None)
                pending.cancel()
        return _chained(self._stopped)

    # -- transitions

    def _busy(self, activity: QueueActivity) -> None:
        if self._grace_timer is not None:
            self._cancel(self._grace_timer)
            self._grace_timer = None
            if self._inhibitor.held:
                self._log(f"busy again ({_counts(activity)}): keeping the sleep inhibitor")
        self._wanted = True
        if not self._inhibitor.held and self._rehold_timer is None:
            self._hold(f"busy ({_counts(activity)})")

    def _idle(self, activity: QueueActivity) -> None:
        if self._wanted and self._grace_timer is None:
            self._log(f"idle: releasing the sleep inhibitor in {self.grace:g} s unless busy again")
            self._start_grace("idle")
        self._grace_why = "idle"  # (foreman answers again and is idle: the grace goes on)

    def _unreachable(self, error: BaseException, delay: float, failures: int) -> None:
        reason = (error.message if isinstance(error, ForemanError) else str(error)).rstrip(".")
        if failures == 1 or failures % 10 == 0:
            self._log(f"foreman unreachable: {reason}; retrying in {delay:.1f} s")
        if self._wanted and self._grace_timer is None:
            self._log(f"releasing the sleep inhibitor in {self.grace:g} s unless foreman answers")
            self._start_grace("foreman unreachable")

    def _start_grace(self, why: str) -> None:
        self._grace_why = why
        self._grace_timer = self._clock.callLater(self.grace, self._grace_over)

    def _grace_over(self) -> None:
        why = self._grace_why
        self._grace_timer = None
        self._wanted = False
        if self._rehold_timer is not None:
            self._cancel(self._rehold_timer)
            self._rehold_timer = None
        if self._inhibitor.held:
            self._log(f"released the sleep inhibitor ({why} for {self.grace:g} s)")
            self._inhibitor.release()

    def _hold(self, why: str) -> None:
        self._held_at = self._clock.seconds()
        try:
            self._inhibitor.hold()
        except OSError as e:
            self._lost(f"{self._inhibitor.name} could not start: {e}")
            return
        self._log(f"{why}: holding the sleep inhibitor ({self._describe()})")

    def _describe(self) -> str:
        pid = getattr(self._inhibitor, "pid", None)
        return f"{self._inhibitor.name} pid {pid}" if pid is not None else self._inhibitor.name

    def _lost(self, reason: str) -> None:
        """The inhibitor ended on its own: say so, and take it again (with backoff) if wanted."""
        # backoff only for an inhibitor that keeps ending soon after it was taken
        self._losses = 1 if self._clock.seconds() - self._held_at > 60 else self._losses + 1
        if not self._wanted or self._stopping:
            self._log(f"the sleep inhibitor ended: {reason}")
            return
        delay = self._rehold.delay(self._losses)
        self._log(f"the sleep inhibitor ended: {reason}; holding it again in {delay:.1f} s")
        self._rehold_timer = self._clock.callLater(delay, self._again)

    def _again(self) -> None:
        self._rehold_timer = None
        if self._wanted and not self._stopping and not self._inhibitor.held:
            self._hold("still needed")

    # -- timers

    def _cancel(self, call: IDelayedCall) -> None:
        if call.active():
            call.cancel()

    def _cancel_timers(self) -> None:
        for call in (self._grace_timer, self._rehold_timer):
            if call is not None:
                self._cancel(call)
        self._grace_timer = self._rehold_timer = None


# -- the command


def stderr_log(stream: TextIO, environ: dict[str, str] | None = None) -> Callable[[str], None]:
    """One line per event on ``stream``, with a UTC time unless the journal adds its own."""
    stamped = "JOURNAL_STREAM" not in (os.environ if environ is None else environ)

    def log(line: str) -> None:
        stamp = ""
        if stamped:
            now = datetime.datetime.now(datetime.UTC)
            stamp = now.isoformat(timespec="seconds").replace("+00:00", "Z") + " "
        stream.write(f"{stamp}keep-awake: {line}\n")
        stream.flush()

    return log


def run_keep_awake(
    url: str,
    token: str | None,
    grace: float,
    program: InhibitorProgram,
    stderr: TextIO,
) -> int:
    """``foreman keep-awake``: run the reactor on this thread until SIGTERM/SIGINT; exit status.

    0 once stopped by a signal (the inhibitor released first); 2 when it
    cannot work (raised as KeepAwakeError before the reactor starts, or
    foreman refused the token); 1 on an unexpected error.
    """
    from twisted.internet import reactor as global_reactor
    from twisted.internet.error import ReactorNotRunning

    reactor: Any = global_reactor
    if reactor.running or getattr(reactor, "_startedBefore", False):
        raise KeepAwakeError(
            "keep-awake runs the Twisted reactor itself: run it as a process of its own "
            "(foreman keep-awake), not from a program that already runs one"
        )
    log = stderr_log(stderr)
    # keep-awake retries on its own schedule (and applies the grace period meanwhile)
    client = AsyncForemanClient(url, token, reactor=reactor, retry=RetryPolicy(attempts=1))
    inhibitor = ProcessInhibitor(reactor, program)
    keep = KeepAwake(client, inhibitor, reactor, grace, log)
    status = [0]

    async def main() -> None:
        log(f"following {client.base_url} (grace {grace:g} s, inhibitor {program.path})")
        error = None
        try:
            await keep.run()
        except KeepAwakeError as e:
            error, status[0] = str(e), 2
        except Exception as e:  # one line, never a traceback
            error, status[0] = f"unexpected error: {e!r}", 1
        finally:
            await keep.stop()
            await client.close()
        if error is not None:  # the last line says why it ended
            stderr.write(f"foreman: keep-awake: {error}\n")
            stderr.flush()
        with contextlib.suppress(ReactorNotRunning):  # a signal stopped it already
            reactor.stop()

    # SIGTERM/SIGINT stop the reactor (Twisted's handlers); the inhibitor goes first
    reactor.addSystemEventTrigger("before", "shutdown", keep.stop)
    reactor.callWhenRunning(lambda: Deferred.fromCoroutine(main()))
    reactor.run()
    return status[0]
