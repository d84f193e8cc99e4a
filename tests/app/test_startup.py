"""Start-up failures a new user meets first: a port in use, a misspelt variable.

In process, so each case costs milliseconds; ``tests/test_twistd.py`` runs the
real ``twistd`` for the port-in-use case once.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.logger import capturedLogs
from twisted.web.resource import Resource
from twisted.web.server import Site

from foreman.app.config import Config
from foreman.app.daemon import Daemon
from foreman.app.service import ForemanService, exit_failed
from foreman.app.services import ListenError, ListenService, check_listen
from foreman.app.tap import Options, configure


@pytest.fixture
def busy() -> Iterator[str]:
    """An endpoint string whose port another socket is listening on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield f"tcp:{s.getsockname()[1]}:interface=127.0.0.1"


def _options(*args: str) -> Options:
    options = Options()  # type: ignore[no-untyped-call]
    options.parseOptions(list(args))  # type: ignore[no-untyped-call]
    return options


def test_a_port_in_use_stops_start_up_before_the_data_dir_is_made(
    tmp_path: Path, busy: str, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    with pytest.raises(SystemExit) as info:
        configure(_options("--listen", busy, "--data-dir", str(data)), env={})
    assert info.value.code == 2
    assert capsys.readouterr().err == (
        f"foreman: cannot listen on {busy}: address already in use;"
        " choose another port with --listen or FOREMAN_LISTEN\n"
    )
    assert not data.exists()


def test_a_good_start_warns_about_unknown_variables_and_prepares_the_data_dir(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    env = {"FOREMAN_TARGET_ULR": "http://gpu:11434", "FOREMAN_URL": "http://foreman"}
    config = configure(_options("--listen", "0", "--data-dir", str(data)), env=env)
    assert config.listen == "tcp:0:interface=127.0.0.1"
    assert capsys.readouterr().err == (
        "foreman: warning: unknown environment variable FOREMAN_TARGET_ULR is ignored"
        " (did you mean FOREMAN_TARGET_URL?)\n"
    )
    assert config.db_path.exists()


def test_check_listen_binds_nothing_it_cannot_probe(tmp_path: Path, busy: str) -> None:
    check_listen("tcp:0:interface=127.0.0.1")
    sock = tmp_path / "foreman.sock"
    check_listen(f"unix:{sock}")
    assert not sock.exists()
    with pytest.raises(ListenError, match="address already in use"):
        check_listen(busy)
    with pytest.raises(ListenError, match="port must be 0-65535"):
        check_listen("tcp:99999")


@pytest_twisted.ensureDeferred
async def test_losing_the_port_after_the_probe_is_one_line_too(busy: str) -> None:
    listen = ListenService(reactor, busy, Site(Resource()))
    with pytest.raises(ListenError) as info:
        await listen.startService()
    assert str(info.value).startswith(f"cannot listen on {busy}: address already in use")
    assert not listen.accepting
    await listen.stopService()


class _Reactor:
    """Records what the service asks of the reactor when its start fails."""

    def __init__(self) -> None:
        self.stopped = False
        self.triggers: list[tuple[str, str, Any]] = []

    def stop(self) -> None:
        self.stopped = True

    def addSystemEventTrigger(self, phase: str, event: str, f: Any, *args: Any) -> None:
        self.triggers.append((phase, event, f))


def test_a_failed_start_logs_one_line_and_exits_nonzero(
    monkeypatch: pytest.MonkeyPatch, busy: str
) -> None:
    async def start(config: Config, reactor: Any = None) -> Any:
        raise ListenError(busy, "address already in use")

    monkeypatch.setattr(Daemon, "start", start)
    fake = _Reactor()
    with capturedLogs() as events:
        ForemanService(Config(), fake, handle_signals=False).startService()
    errors = [e for e in events if e.get("log_namespace") == "foreman.app.service"]
    assert len(errors) == 1
    assert "log_failure" not in errors[0]  # no traceback
    assert errors[0]["problem"] == f"cannot listen on {busy}: address already in use"
    assert fake.stopped
    assert fake.triggers == [("after", "shutdown", exit_failed)]
