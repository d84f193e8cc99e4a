"""Run ``twistd -n foreman`` as a real subprocess for tests and benchmarks.

The daemon listens on ``tcp:0`` and its URL is read from its own log line, so
parallel runs never race for a port. Output goes to a file in the data dir so
a failing test can show it.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from attrs import define

TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]
_URL = re.compile(r"listening on (http://[0-9.]+:\d+)")


@define
class DaemonProcess:
    popen: subprocess.Popen[bytes]
    log_path: Path
    url: str = ""

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, signum: int) -> None:
        self.popen.send_signal(signum)

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait(10)

    def stop(self, timeout: float = 10) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
        return self.popen.wait(timeout)


def spawn(
    data_dir: Path,
    env: dict[str, str] | None = None,
    args: tuple[str, ...] = (),
    listen: str = "tcp:0:interface=127.0.0.1",
) -> DaemonProcess:
    """Start twistd; call ``wait_ready`` (blocking) or poll ``url`` yourself."""
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir / f"twistd-{time.monotonic_ns()}.log"
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("FOREMAN_")}
    full_env.update({"FOREMAN_LISTEN": listen, "FOREMAN_DATA_DIR": str(data_dir)})
    full_env.update(env or {})
    with open(log_path, "wb") as out:
        popen = subprocess.Popen(
            [*TWISTD, "-n", "--pidfile=", "foreman", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=full_env,
            cwd=str(data_dir),
        )
    return DaemonProcess(popen, log_path)


def find_url(proc: DaemonProcess) -> str | None:
    match = _URL.search(proc.log())
    if match:
        proc.url = match.group(1)
        return proc.url
    return None


def wait_ready(proc: DaemonProcess, timeout: float = 20) -> str:
    """Block until the daemon logs its URL (or fail with its log)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if find_url(proc):
            return proc.url
        if proc.popen.poll() is not None:
            raise AssertionError(f"twistd exited {proc.popen.returncode}:\n{proc.log()}")
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"twistd did not start in {timeout}s:\n{proc.log()}")


async def wait_ready_async(proc: DaemonProcess, timeout: float = 20) -> str:
    """Like ``wait_ready`` but lets the reactor run (an in-process simulator needs it)."""
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    r: Any = reactor
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if find_url(proc):
            return proc.url
        if proc.popen.poll() is not None:
            raise AssertionError(f"twistd exited {proc.popen.returncode}:\n{proc.log()}")
        await deferLater(r, 0.05, lambda: None)
    proc.kill()
    raise AssertionError(f"twistd did not start in {timeout}s:\n{proc.log()}")
