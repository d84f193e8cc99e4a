"""The package installs both ways and twistd finds the plugin each time (ADR 0005)."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _fresh_venv(where: Path) -> Path:
    """A new virtualenv that sees this one's dependencies but not foreman itself.

    It has no pip of its own (``ensurepip`` alone takes ten seconds): this
    venv's pip installs into it with ``--python``.
    """
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True)
    python = where / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    # dependencies (and the build backend) come from the test venv; foreman must
    # come from the install under test
    deps = sysconfig.get_paths()["purelib"]
    (Path(site) / "zz_test_deps.pth").write_text(deps + "\n")
    return python


def _install(python: Path, *args: str) -> None:
    pip = [sys.executable, "-m", "pip", "--python", str(python), "install", "-q"]
    subprocess.run(
        [*pip, "--no-deps", "--no-build-isolation", *args],
        check=True,
        timeout=300,
        cwd=str(ROOT),
    )


def _plugins_listed(python: Path, cwd: Path) -> str:
    result = subprocess.run(
        [str(python), "-c", "from twisted.scripts.twistd import run; run()", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=str(cwd),  # not the source tree, so only the installed copy can be found
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_regular_install_registers_the_plugin(tmp_path: Path) -> None:
    python = _fresh_venv(tmp_path / "venv")
    _install(python, str(ROOT))
    out = _plugins_listed(python, tmp_path)
    assert "foreman" in out
    where = subprocess.run(
        [str(python), "-c", "import foreman; print(foreman.__file__)"],
        capture_output=True,
        text=True,
        cwd=str(tmp_path),
        check=True,
    ).stdout
    assert str(tmp_path) in where  # the installed copy, not the source tree


def test_editable_install_registers_the_plugin(tmp_path: Path) -> None:
    python = _fresh_venv(tmp_path / "venv")
    _install(python, "-e", str(ROOT))
    out = _plugins_listed(python, tmp_path)
    assert "foreman" in out
