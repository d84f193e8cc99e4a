"""What a new user meets first: the README's promises, the test command's needs."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from twisted.scripts import twistd as twistd_script

from foreman.app.tap import Options

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
DEPLOY = (ROOT / "docs" / "deploy.md").read_text()


def _anchor(heading: str) -> str:
    return re.sub(r"[^a-z0-9 -]", "", heading.lower()).replace(" ", "-")


def test_readme_says_how_to_change_the_port_and_where_data_and_the_pid_go() -> None:
    assert "--listen 9000" in README and "FOREMAN_LISTEN" in README
    assert "./foreman-data/" in README and "FOREMAN_DATA_DIR" in README
    assert "twistd.pid" in README
    ignored = (ROOT / ".gitignore").read_text().split()
    assert "foreman-data/" in ignored and "twistd.pid" in ignored


def test_readme_links_resolve_to_headings_of_deploy_md() -> None:
    anchors = {_anchor(h) for h in re.findall(r"^#+ (.+)$", DEPLOY, re.M)}
    linked = re.findall(r"\(docs/deploy\.md#([a-z0-9-]+)\)", README)
    assert {"troubleshooting", "without-containers-systemd"} <= set(linked)
    assert set(linked) <= anchors


def test_the_systemd_unit_runs_a_command_twistd_and_foreman_accept() -> None:
    units = [u for u in re.findall(r"```ini\n(.*?)```", DEPLOY, re.S) if "ExecStart=" in u]
    assert len(units) == 1
    [exec_start] = re.findall(r"^ExecStart=(.+)$", units[0], re.M)
    argv = shlex.split(exec_start)
    assert argv[0].endswith("/twistd")
    split = argv.index("foreman")
    twistd = twistd_script.ServerOptions()  # type: ignore[attr-defined,no-untyped-call]
    twistd.parseOptions(argv[1:split])  # type: ignore[no-untyped-call]  # raises on an unknown twistd option
    assert twistd["nodaemon"] and twistd["pidfile"] == ""
    options = Options()  # type: ignore[no-untyped-call]
    options.parseOptions(argv[split + 1 :])  # type: ignore[no-untyped-call]  # raises on an unknown foreman option


def _fake_repo(tmp_path: Path) -> tuple[Path, Path]:
    """A copy of scripts/test in an empty tree, and a PATH with python but no Node."""
    (tmp_path / "repo" / "scripts").mkdir(parents=True)
    script = tmp_path / "repo" / "scripts" / "test"
    shutil.copy(ROOT / "scripts" / "test", script)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("dirname", "nproc"):
        found = shutil.which(tool)
        assert found is not None
        (bin_dir / tool).symlink_to(found)
    (bin_dir / "python3").symlink_to(sys.executable)
    return script, bin_dir


def _run(script: Path, path: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": str(path)}
    env.pop("PYTHON", None)
    bash = shutil.which("bash")
    assert bash is not None
    return subprocess.run(
        [bash, str(script)], env=env, capture_output=True, text=True, timeout=30, check=False
    )


def test_the_test_command_says_in_one_line_that_npm_is_missing(tmp_path: Path) -> None:
    script, bin_dir = _fake_repo(tmp_path)
    done = _run(script, bin_dir)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "scripts/test: npm not found: install Node.js 18+ with npm (the JS client test needs it)"
    ]
    assert not (script.parent.parent / ".venv").exists(), "it installed before checking"


def test_the_test_command_says_in_one_line_that_node_is_missing(tmp_path: Path) -> None:
    script, bin_dir = _fake_repo(tmp_path)
    (script.parent.parent / "tests" / "js" / "node_modules" / "ollama").mkdir(parents=True)
    done = _run(script, bin_dir)
    assert done.returncode == 2
    assert "node not found" in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
