"""Every benchmark ``bench/run_all.py`` runs still runs: ``--smoke``, exit 0, markdown tables.

Nothing here is timed (figures from a shared test machine mean nothing); this keeps
the benchmarks working between full runs. Each runs as a subprocess in its own
process group on loopback, takes seconds, and must leave no process behind.
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

import pytest

from bench import proxy
from bench.dispatch import gaps
from bench.run_all import BENCHES, ROOT, run_script

TIMEOUT = 120.0  # a hang guard, far above any smoke run's few seconds
TABLE = re.compile(r"^\|.*\|\n\|(---\|)+$", re.M)


@pytest.mark.parametrize("name", BENCHES)
def test_smoke_run(name: str, tmp_path: Path) -> None:
    results = tmp_path / "results.json"
    script = ROOT / "bench" / f"{name}.py"
    done = run_script([sys.executable, str(script), "--smoke", "--json", str(results)], TIMEOUT)
    assert done.returncode is not None, f"timed out after {TIMEOUT:g} s:\n{done.output}"
    assert done.returncode == 0, done.output
    assert TABLE.search(done.output), done.output
    assert not done.left_behind, f"bench/{name}.py left processes behind"
    doc = json.loads(results.read_text())
    assert doc["title"]
    assert TABLE.search(doc["markdown"])
    assert doc["goals"]
    assert all(set(g) == {"goal", "measured", "met"} for g in doc["goals"])
    if name == "proxy":
        if proxy.find_nginx() is None:
            assert proxy.NGINX_ABSENT in done.output
            assert proxy.NGINX not in done.output
        else:  # a row, or a note saying why not
            assert f"| {proxy.NGINX} |" in done.output or "nginx: " in done.output


def test_nginx_absent_is_found_absent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(proxy, "NGINX_PATHS", (str(tmp_path / "sbin" / "nginx"),))
    assert proxy.find_nginx() is None
    assert proxy.find_nginx("/opt/nginx/sbin/nginx") == "/opt/nginx/sbin/nginx"


def test_nginx_that_does_not_start_raises_for_the_note(tmp_path: Path) -> None:
    exits, missing = tmp_path / "exits", tmp_path / "missing"
    exits.mkdir()
    missing.mkdir()
    with pytest.raises(RuntimeError, match="not listening"):
        proxy.start_nginx("/bin/false", "http://127.0.0.1:9", exits)
    with pytest.raises(RuntimeError, match="No such file"):
        proxy.start_nginx(str(tmp_path / "no-nginx"), "http://127.0.0.1:9", missing)


def test_nginx_config_proxies_with_keepalive_and_no_buffering(tmp_path: Path) -> None:
    conf = proxy.nginx_config("http://127.0.0.1:4321", 5678, tmp_path)
    for directive in (
        "daemon off;",
        "master_process off;",
        "worker_processes 1;",
        f"error_log {tmp_path}/error.log;",
        f"pid {tmp_path}/nginx.pid;",
        "access_log off;",
        "server 127.0.0.1:4321;",
        "keepalive 16;",
        "proxy_http_version 1.1;",
        'proxy_set_header Connection "";',
        "proxy_buffering off;",
        "listen 127.0.0.1:5678;",
    ):
        assert directive in conf
    assert conf.count("{") == conf.count("}")


def test_dispatch_gaps_count_only_idle_time_between_requests() -> None:
    ms = 1_000_000
    events = [[0, 1], [5 * ms, -1], [6 * ms, 1], [7 * ms, 1], [8 * ms, -1], [10 * ms, -1]]
    events += [[13 * ms, 1], [14 * ms, -1]]
    found, most, count = gaps(events[::-1])  # any order: sorted by time
    assert found == [1.0, 3.0]  # the overlapping request had no gap before it
    assert (most, count) == (2, 4)


def test_run_script_kills_what_a_benchmark_leaves_behind(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    leaver = (
        "import subprocess, sys; "
        f"p = subprocess.Popen(['sleep', '60']); open({str(pid_file)!r}, 'w').write(str(p.pid))"
    )
    done = run_script([sys.executable, "-c", leaver], TIMEOUT)
    assert (done.returncode, done.left_behind) == (0, True)
    child = int(pid_file.read_text())
    assert _gone(child)
    hung = run_script([sys.executable, "-c", "import time; time.sleep(60)"], 0.5)
    assert hung.returncode is None


def _gone(pid: int, timeout: float = 5.0) -> bool:
    """The process has exited (a zombie waiting for init to reap it counts as gone)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return True
        if state == "Z":
            return True
        time.sleep(0.02)
    return False
