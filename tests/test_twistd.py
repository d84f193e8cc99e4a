"""The real ``twistd -n foreman`` process: start, serve, stop, refuse bad settings."""

from __future__ import annotations

import json
import signal
import socket
import sqlite3
import subprocess
import time
import urllib.request
from pathlib import Path

from tests.proc import TWISTD, spawn, wait_ready


def _get(url: str) -> tuple[int, dict[str, object]]:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.status, json.loads(response.read())


def test_serves_health_and_status_then_exits_cleanly_on_sigterm(tmp_path: Path) -> None:
    proc = spawn(tmp_path / "data", env={"FOREMAN_TARGET_URL": "http://127.0.0.1:9"})
    try:
        url = wait_ready(proc)
        status, body = _get(url + "/healthz")
        assert status == 200
        assert body["status"] == "ok"
        status, body = _get(url + "/status")
        assert status == 200
        assert body["target"]["url"] == "http://127.0.0.1:9"  # type: ignore[index]
        started = time.monotonic()
        proc.signal(signal.SIGTERM)
        assert proc.popen.wait(5) == 0
        assert time.monotonic() - started < 5
    finally:
        proc.kill()
    db = tmp_path / "data" / "foreman.sqlite3"
    assert db.exists()
    conn = sqlite3.connect(str(db))
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_a_second_stop_signal_during_shutdown_is_logged_not_raised(tmp_path: Path) -> None:
    """A supervisor's SIGTERM and a user's Ctrl-C, or one signal sent twice: the shutdown
    runs once, exits 0, and logs no traceback."""
    proc = spawn(tmp_path / "data", env={"FOREMAN_TARGET_URL": "http://127.0.0.1:9"})
    try:
        wait_ready(proc)
        proc.signal(signal.SIGTERM)
        proc.signal(signal.SIGINT)  # two kinds: pending signals of one kind merge
        assert proc.popen.wait(5) == 0
    finally:
        proc.kill()
    log = proc.log()
    assert log.count("shutting down") == 2, log
    assert "again: already shutting down" in log
    assert "Traceback" not in log and "ReactorNotRunning" not in log, log
    assert "foreman stopped" in log


def _run_bad(tmp_path: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    full_env = {"PATH": "/usr/bin:/bin", "FOREMAN_DATA_DIR": str(tmp_path / "d"), **env}
    return subprocess.run(
        [*TWISTD, "-n", "--pidfile=", "foreman", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=30,
    )


def test_bad_setting_gives_one_line_and_nonzero_exit(tmp_path: Path) -> None:
    result = _run_bad(tmp_path, {"FOREMAN_LISTEN": "nonsense:1"})
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "FOREMAN_LISTEN" in lines[0]
    assert "Traceback" not in result.stderr + result.stdout


def test_port_in_use_gives_one_line_nonzero_exit_and_writes_nothing(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        listen = f"tcp:{busy.getsockname()[1]}:interface=127.0.0.1"
        result = _run_bad(tmp_path, {"FOREMAN_LISTEN": listen})
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"foreman: cannot listen on {listen}: address already in use")
    assert "Traceback" not in result.stderr + result.stdout
    # no data dir, webhook secret or database left behind
    assert not (tmp_path / "d").exists()


def test_misspelt_variable_is_warned_about_and_a_bad_number_is_named(tmp_path: Path) -> None:
    env = {"FOREMAN_MAX_ATEMPTS": "5", "FOREMAN_MAX_QUEUE": "lots"}
    result = _run_bad(tmp_path, env)
    assert result.returncode == 2
    assert [line for line in result.stderr.splitlines() if line.strip()] == [
        "foreman: warning: unknown environment variable FOREMAN_MAX_ATEMPTS is ignored"
        " (did you mean FOREMAN_MAX_ATTEMPTS?)",
        "foreman: FOREMAN_MAX_QUEUE: expected a whole number, got 'lots'",
    ]
    assert not (tmp_path / "d").exists()


def test_bad_option_value_names_the_option(tmp_path: Path) -> None:
    result = _run_bad(tmp_path, {}, "--target", "gopher://x")
    assert result.returncode != 0
    assert "--target" in result.stderr
    assert "Traceback" not in result.stderr


def test_unwritable_data_dir_is_refused(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    result = _run_bad(tmp_path, {"FOREMAN_DATA_DIR": str(blocker / "sub")})
    assert result.returncode != 0
    assert "FOREMAN_DATA_DIR" in result.stderr
    assert "Traceback" not in result.stderr


def test_help_lists_every_option() -> None:
    result = subprocess.run(
        [*TWISTD, "foreman", "--help"], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0
    for option in ("--listen", "--target", "--data-dir", "--config", "--simulate"):
        assert option in result.stdout
    assert "FOREMAN_API_TOKENS" in result.stdout
