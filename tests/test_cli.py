"""The ``foreman`` command against the real daemon and simulator (one test runs it as a process)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import sys
from pathlib import Path

import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.threads import deferToThread
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from foreman import __version__
from foreman.client.cli import Live, run
from foreman.testing import OllamaSimulator, reply_text
from tests.harness import chat, reactor, start_stack


class _Collect(ProcessProtocol):
    def __init__(self, stdin: bytes | None) -> None:
        self.stdin = stdin
        self.out: list[bytes] = []
        self.err: list[bytes] = []
        self.ended: Deferred[int] = Deferred()

    def connectionMade(self) -> None:
        if self.stdin is not None:
            self.transport.write(self.stdin)  # type: ignore[union-attr]
        self.transport.closeStdin()  # type: ignore[union-attr]

    def outReceived(self, data: bytes) -> None:
        self.out.append(data)

    def errReceived(self, data: bytes) -> None:
        self.err.append(data)

    def processEnded(self, reason: Failure) -> None:
        self.ended.callback(getattr(reason.value, "exitCode", -1))


class Result:
    def __init__(self, out: bytes, err: bytes, status: int) -> None:
        self.raw = out
        self.out = out.decode()
        self.err = err.decode()
        self.status = status

    def json(self) -> object:
        return json.loads(self.out)


async def foreman_process(*args: str, url: str, stdin: bytes | None = None) -> Result:
    """``python -m foreman.client.cli args…`` as a real process (stdout/stderr are pipes)."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("FOREMAN_")}
    full_env["FOREMAN_URL"] = url
    argv = [sys.executable, "-m", "foreman.client.cli", *args]
    proto = _Collect(stdin)
    process = reactor.spawnProcess(proto, sys.executable, argv, env=full_env, path=os.getcwd())
    killer = reactor.callLater(60, process.signalProcess, "KILL")
    try:
        status = await proto.ended
    finally:
        if killer.active():
            killer.cancel()
    return Result(b"".join(proto.out), b"".join(proto.err), status)


def _run_here(
    args: tuple[str, ...], env: dict[str, str], stdin: bytes | None
) -> tuple[bytes, bytes, int]:
    """What ``foreman args…`` prints and exits with, run on this (non-reactor) thread.

    The CLI's blocking client hands its calls to the reactor the test runs, as
    it would in any program that already has one. A process of its own per
    command would cost a second of imports each; one test still runs the
    command as a process (``foreman_process``).
    """
    out = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", write_through=True)
    err = io.StringIO()
    saved_env = {k: v for k, v in os.environ.items() if k.startswith("FOREMAN_")}
    for k in saved_env:
        del os.environ[k]
    os.environ.update(env)
    saved_stdin = sys.stdin
    sys.stdin = io.TextIOWrapper(io.BytesIO(stdin or b""), encoding="utf-8")
    try:
        with contextlib.redirect_stderr(err):  # argparse writes usage errors there
            try:
                status = run(list(args), stdout=out, stderr=err)
            except SystemExit as e:
                status = e.code if isinstance(e.code, int) else 2
    finally:
        sys.stdin = saved_stdin
        for k in [k for k in os.environ if k.startswith("FOREMAN_")]:
            del os.environ[k]
        os.environ.update(saved_env)
    buffer = out.buffer
    assert isinstance(buffer, io.BytesIO)
    return buffer.getvalue(), err.getvalue().encode(), status


async def foreman(
    *args: str,
    url: str | None = None,
    stdin: bytes | None = None,
    env: dict[str, str] | None = None,
) -> Result:
    """``foreman args…`` in this process, on a thread, with ``FOREMAN_URL`` set to ``url``."""
    full_env = dict(env or {})
    if url is not None:
        full_env["FOREMAN_URL"] = url
    out, err, status = await deferToThread(_run_here, args, full_env, stdin)
    return Result(out, err, status)


def slow_sim() -> OllamaSimulator:
    return OllamaSimulator(models=("llama3.2",), token_rate=10.0, load_time=0.05)


@pytest_twisted.ensureDeferred
async def test_submit_wait_shows_progress_and_prints_the_answer(tmp_path: Path) -> None:
    stack = await start_stack(tmp_path)
    try:
        run = await foreman_process(
            "submit", "--model", "llama3.2", "--prompt", "hi", "--wait", url=stack.url
        )
        assert run.status == 0, run.err
        assert run.out == reply_text("llama3.2", "hi", 8) + "\n"
        lines = run.err.splitlines()  # not a TTY: plain lines, one per state
        job_id = lines[0].split()[0]
        assert job_id.startswith("job_")
        states = [line.split()[1] for line in lines]
        assert states[0] == "queued" and states[-1] == "done"
        assert {"loading", "working"} <= set(states)
        assert "8 tokens" in lines[-1]

        as_json = await foreman_process(
            "submit",
            "--model",
            "llama3.2",
            "--prompt",
            "json please",
            "--wait",
            "--json",
            url=stack.url,
        )
        assert as_json.status == 0, as_json.err
        job = as_json.json()
        assert isinstance(job, dict) and job["state"] == "done"
        assert job["result"]["message"]["content"] == reply_text("llama3.2", "json please", 8)
    finally:
        await stack.stop()


@pytest_twisted.ensureDeferred
async def test_job_commands_and_json_output(tmp_path: Path) -> None:
    stack = await start_stack(tmp_path)
    try:
        request = tmp_path / "request.json"
        request.write_text(json.dumps({"model": "qwen3", "prompt": "from a file", "stream": False}))
        submitted = await foreman(
            "submit",
            str(request),
            "--endpoint",
            "/api/generate",
            "--priority",
            "5",
            "--metadata",
            '{"batch": 3}',
            url=stack.url,
        )
        assert submitted.status == 0, submitted.err
        job_id = submitted.out.strip()
        assert job_id.startswith("job_") and "\n" not in job_id

        waited = await foreman("wait", job_id, "--json", url=stack.url)
        assert waited.status == 0, waited.err
        job = waited.json()
        assert isinstance(job, dict)
        assert (job["state"], job["priority"], job["metadata"]) == ("done", 5, {"batch": 3})
        assert job["result"]["response"] == reply_text("qwen3", "from a file", 8)

        shown = await foreman("get", job_id, url=stack.url)
        assert shown.status == 0, shown.err
        fields = dict(line.split(None, 1) for line in shown.out.splitlines() if " " in line)
        assert fields["id"] == job_id and fields["state"] == "done"
        assert fields["endpoint"] == "/api/generate"
        got = await foreman("--json", "get", job_id, url=stack.url)  # global option first
        assert got.json() == job

        piped = await foreman(
            "submit",
            "-",
            "--json",
            url=stack.url,
            stdin=json.dumps(chat("llama3.2", "from stdin")).encode(),
        )
        assert piped.status == 0, piped.err
        second = piped.json()
        assert isinstance(second, dict) and second["state"] == "queued"
        assert (await foreman("wait", second["id"], url=stack.url)).status == 0

        listed = await foreman("list", "--json", url=stack.url)
        assert listed.status == 0, listed.err
        jobs = listed.json()
        assert isinstance(jobs, list)
        assert [j["id"] for j in jobs] == [second["id"], job_id]
        table = await foreman("list", "--model", "qwen3", url=stack.url)
        rows = table.out.splitlines()
        assert rows[0].split() == ["ID", "STATE", "MODEL", "TOKENS", "CREATED"]
        assert [r.split()[:3] for r in rows[1:]] == [[job_id, "done", "qwen3"]]
        only_failed = await foreman("list", "--state", "failed", "--json", url=stack.url)
        assert only_failed.json() == []

        artifact = await foreman("artifact", job_id, "response.json", url=stack.url)
        assert artifact.status == 0, artifact.err
        assert json.loads(artifact.raw) == job["result"]
        saved = tmp_path / "req.json"
        written = await foreman("artifact", job_id, "request.json", "-o", str(saved), url=stack.url)
        assert written.status == 0 and written.out == ""
        assert json.loads(saved.read_text()) == json.loads(request.read_text())

        deleted = await foreman("delete", job_id, url=stack.url)
        assert (deleted.status, deleted.out.strip()) == (0, f"{job_id} deleted")
        gone = await foreman("get", job_id, url=stack.url)
        assert gone.status == 2
        assert "job_not_found" in gone.err
        missing_artifact = await foreman("artifact", second["id"], "nope.json", url=stack.url)
        assert missing_artifact.status == 2 and "artifact_not_found" in missing_artifact.err
    finally:
        await stack.stop()


@pytest_twisted.ensureDeferred
async def test_cancel_and_failed_jobs_exit_1(tmp_path: Path) -> None:
    stack = await start_stack(tmp_path, sim=slow_sim())
    try:
        # 50 tokens at 10/s: still working while the CLI starts and gives up after 0.2 s
        job = await stack.submit(chat("llama3.2", "long", options={"num_predict": 50}))
        unfinished = await foreman("wait", job["id"], "--timeout", "0.2", url=stack.url)
        assert unfinished.status == 1
        assert "still" in unfinished.err
        cancelled = await foreman("cancel", job["id"], url=stack.url)
        assert cancelled.status == 0, cancelled.err
        assert cancelled.out.strip() == f"{job['id']} cancelled"
        waited = await foreman("wait", job["id"], url=stack.url)
        assert waited.status == 1
        assert waited.out.strip() == f"{job['id']} cancelled"
        again = await foreman("cancel", job["id"], url=stack.url)
        assert again.status == 2 and "not_cancellable" in again.err

        failed = await foreman(
            "submit", "--model", "no-such-model", "--prompt", "hi", "--wait", url=stack.url
        )
        assert failed.status == 1
        assert failed.out == ""
        assert "failed" in failed.err and "not found" in failed.err
    finally:
        await stack.stop()


@pytest_twisted.ensureDeferred
async def test_usage_and_auth_errors_exit_2(tmp_path: Path) -> None:
    stack = await start_stack(tmp_path, api_tokens=("s3cret",))
    try:
        denied = await foreman("list", url=stack.url)
        assert denied.status == 2
        assert "401" in denied.err and "unauthorized" in denied.err
        allowed = await foreman("list", "--json", "--token", "s3cret", url=stack.url)
        assert allowed.status == 0 and allowed.json() == []
        from_env = await foreman("list", "--json", url=stack.url, env={"FOREMAN_TOKEN": "s3cret"})
        assert from_env.status == 0 and from_env.json() == []

        no_request = await foreman("submit", url=stack.url)
        assert no_request.status == 2 and "usage" in no_request.err
        bad_metadata = await foreman(
            "submit", "--model", "m", "--prompt", "p", "--metadata", "{nope", url=stack.url
        )
        assert bad_metadata.status == 2 and "--metadata" in bad_metadata.err
        unknown = await foreman("frobnicate", url=stack.url)
        assert unknown.status == 2
        bad_request = await foreman(
            "submit", "-", "--token", "s3cret", url=stack.url, stdin=b'{"messages": []}'
        )
        assert bad_request.status == 2 and "missing_field" in bad_request.err
    finally:
        await stack.stop()


def one_line(text: str) -> str:
    """The single line a failed command printed (no traceback, no usage dump)."""
    lines = text.splitlines()
    assert len(lines) == 1, text
    assert "Traceback" not in text
    return lines[0]


@pytest_twisted.ensureDeferred
async def test_url_without_a_scheme_means_http(tmp_path: Path) -> None:
    stack = await start_stack(tmp_path)
    try:
        port = stack.url.rsplit(":", 1)[1]
        submitted = await foreman(
            "--url", f"localhost:{port}", "submit", "--model", "qwen3", "--prompt", "bare"
        )
        assert submitted.status == 0, submitted.err
        job_id = submitted.out.strip()
        from_env = await foreman("wait", job_id, "--json", url=f"127.0.0.1:{port}/")
        assert from_env.status == 0, from_env.err
        job = from_env.json()
        assert isinstance(job, dict) and job["state"] == "done"
        assert job["result"]["message"]["content"] == reply_text("qwen3", "bare", 8)
    finally:
        await stack.stop()


@pytest_twisted.ensureDeferred
async def test_an_unusable_url_is_a_one_line_usage_error() -> None:
    for url in ("ftp://x", "http://", "http://exa mple:8080", "localhost:99999", "http:/x"):
        given = await foreman("--url", url, "list")
        assert given.status == 2, (url, given.err)
        line = one_line(given.err)
        assert line.startswith("foreman: --url: ") and repr(url) in line, line
    from_env = await foreman("get", "job_x", url="gopher://old.example")
    assert from_env.status == 2
    assert one_line(from_env.err).startswith("foreman: $FOREMAN_URL: ")
    assert "http://" in from_env.err  # says what would work


@pytest_twisted.ensureDeferred
async def test_no_command_lists_the_commands_and_version_prints_it() -> None:
    bare = await foreman()
    assert bare.status == 2 and bare.out == ""
    assert bare.err.startswith("usage: foreman ")
    for command in ("submit", "get", "list", "wait", "cancel", "delete", "artifact", "pull"):
        assert f"\n    {command} " in bare.err, command
    assert "Exit status" in bare.err
    options_only = await foreman("--json")
    assert (options_only.status, options_only.err) == (2, bare.err)

    version = await foreman("--version")
    assert (version.status, version.out, version.err) == (0, f"foreman {__version__}\n", "")

    helped = await foreman("list", "--help")
    assert helped.status == 0 and helped.out.startswith("usage: foreman list ")


@pytest_twisted.ensureDeferred
async def test_a_command_missing_an_argument_shows_its_own_usage(tmp_path: Path) -> None:
    cases = [
        (("get",), "usage: foreman get ", "required: id"),
        (("artifact", "job_x"), "usage: foreman artifact ", "required: name"),
        (("submit",), "usage: foreman submit ", "request file"),
        (("submit", "--prompt", "hi"), "usage: foreman submit ", "--model"),
        (("list", "--limit", "-1"), "usage: foreman list ", "--limit"),
        (("wait", "job_x", "--timeout", "-1"), "usage: foreman wait ", "--timeout"),
    ]
    for args, usage, reason in cases:
        result = await foreman(*args, url="http://127.0.0.1:1")
        assert result.status == 2, (args, result.err)
        assert result.err.startswith(usage), result.err
        assert reason in result.err.splitlines()[-1], result.err

    binary = tmp_path / "request.bin"
    binary.write_bytes(b"\xff\xfe\x00")
    unreadable = await foreman("submit", str(binary), url="http://127.0.0.1:1")
    assert unreadable.status == 2
    assert "UTF-8" in unreadable.err and "Traceback" not in unreadable.err


@pytest_twisted.ensureDeferred
async def test_list_says_so_when_no_job_matches(tmp_path: Path) -> None:
    stack = await start_stack(tmp_path)
    try:
        empty = await foreman("list", url=stack.url)
        assert (empty.status, empty.out, empty.err) == (0, "", "no jobs\n")
        as_json = await foreman("list", "--json", url=stack.url)
        assert (as_json.status, as_json.json(), as_json.err) == (0, [], "")

        job = await stack.submit(chat("llama3.2", "one"))
        await foreman("wait", job["id"], url=stack.url)
        none_failed = await foreman("list", "--state", "failed", "--model", "m", url=stack.url)
        assert none_failed.status == 0 and none_failed.out == ""
        assert none_failed.err == "no jobs match --state failed --model m\n"
        listed = await foreman("list", url=stack.url)
        assert listed.err == "" and job["id"] in listed.out
    finally:
        await stack.stop()


@pytest_twisted.ensureDeferred
async def test_an_unreachable_server_exits_3_with_one_line_naming_the_url() -> None:
    # bound but not listening: refused, and no other test can take the port meanwhile
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{held.getsockname()[1]}"
        refused = await foreman("get", "job_00000000000000000000000000", "--url", closed)
        pulled = await foreman("pull", "gemma3", url=closed)
        waited = await foreman("wait", "job_00000000000000000000000000", url=closed)
    for result in (refused, pulled, waited):
        assert result.status == 3, result.err
        line = one_line(result.err)
        assert closed in line and "refused" in line, line

    unknown = await foreman("list", "--url", "no-such-host.invalid:8080")
    assert unknown.status == 3, unknown.err
    line = one_line(unknown.err)
    assert "http://no-such-host.invalid:8080/jobs" in line and "DNS" in line, line


class _NotForeman(Resource):
    """Some other web server: an HTML page at /jobs, an HTML 404 page elsewhere."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]

    def render(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"text/html")
        if request.path != b"/jobs":
            request.setResponseCode(404)
        return b"<html>\n<body>\n<h1>Welcome</h1>\n</body>\n</html>\n"


@pytest_twisted.ensureDeferred
async def test_a_url_that_is_not_foreman_gets_one_line_not_a_traceback() -> None:
    port = reactor.listenTCP(0, Site(_NotForeman()), interface="127.0.0.1")
    url = f"127.0.0.1:{port.getHost().port}"
    try:
        listed = await foreman("list", url=url)
        assert listed.status == 2
        line = one_line(listed.err)
        assert f"GET http://{url}/jobs" in line and "Welcome" in line and "not a foreman" in line
        missing = await foreman("get", "job_1", url=url)
        assert missing.status == 2
        assert "404" in one_line(missing.err) and "Welcome" in missing.err
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_pull_shows_each_step_and_fails_for_unknown_models(tmp_path: Path) -> None:
    sim = OllamaSimulator(models=("llama3.2",), pullable=("gemma3", "mistral"), pull_time=0.05)
    stack = await start_stack(tmp_path, sim=sim)
    try:
        pulled = await foreman("pull", "gemma3", url=stack.url)
        assert pulled.status == 0, pulled.err
        lines = pulled.err.splitlines()
        assert lines[0] == "gemma3: pulling manifest"
        assert lines[-1] == "gemma3: success"
        assert any(line.startswith("gemma3: pulling ") and "GB" in line for line in lines)
        assert len(lines) == len(set(lines))  # one line per step, no repeated progress

        mixed = await foreman("pull", "mistral", "no-such-model", "--json", url=stack.url)
        assert mixed.status == 1
        progress = [json.loads(line) for line in mixed.out.splitlines()]
        assert progress[-1] == {"model": "no-such-model", "status": "pulling manifest"}
        assert {"model": "mistral", "status": "success"} in progress
        assert "no-such-model" in mixed.err and "file does not exist" in mixed.err
        tags = (await stack.get("/api/tags")).json()["models"]
        assert {"gemma3:latest", "mistral:latest"} <= {m["name"] for m in tags}
    finally:
        await stack.stop()


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_live_rewrites_one_line_on_a_terminal_and_prints_lines_otherwise() -> None:
    terminal = _Terminal()
    live = Live(terminal)
    assert live.tty
    live.show("job_1  queued", important=True)
    live.show("job_1  working  3 tokens")
    live.done("job_1  done  8 tokens")
    text = terminal.getvalue()
    assert text.count("\r") == 3 and text.count("\x1b[K") == 3
    assert text.endswith("job_1  done  8 tokens\x1b[K\n")
    assert text.count("\n") == 1

    plain = io.StringIO()
    live = Live(plain, interval=3600)
    live.show("job_1  queued", important=True)
    live.show("job_1  working  3 tokens")  # progress within the interval: skipped
    live.show("job_1  working  4 tokens", important=True)
    live.done("job_1  working  4 tokens")  # same as the last line: not repeated
    assert plain.getvalue() == "job_1  queued\njob_1  working  4 tokens\n"
