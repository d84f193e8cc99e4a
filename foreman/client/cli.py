"""The ``foreman`` command: submit and follow jobs and batches, fetch artifacts, pull models,
pause and drain the queue, keep the Ollama box awake while there is work.

Exit status, distinct so scripts can tell "fix the command" from "the job
failed" from "try again later": 0 success; 1 the job failed or was cancelled
(or did not finish in ``--timeout``), a batch ended failed, expired or
cancelled (or has no such output file yet), a pull failed, or a drain did not
finish in ``--timeout``; 2 a usage or
configuration error (bad arguments, an unusable URL, an unreadable request
file) or foreman refused the request (HTTP 401, 404, 409 …); 3 foreman could
not be reached (connection refused, DNS failure, timeout, connection lost);
130 interrupted. Every failure is one line on stderr, never a traceback.
``keep-awake`` runs until stopped: 0 after SIGTERM/SIGINT (the inhibitor
released), 2 when it cannot work (no inhibitor program, the token refused);
an unreachable foreman is retried, never an exit.
Progress goes to stderr — one updating line on a terminal, plain lines
otherwise — so stdout stays clean for results and ``--json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

from foreman import __version__
from foreman.client._async import DEFAULT_BATCH_ENDPOINT
from foreman.client._blocking import ForemanClient
from foreman.client._errors import (
    ForemanConnectionError,
    ForemanError,
    InvalidURL,
    JobCancelled,
    JobFailed,
    PullFailed,
    WaitTimeout,
)
from foreman.client._models import Batch, BatchStatus, Job, JobState, QueueState
from foreman.client._render import (
    RateMeter,
    answer_text,
    batch_line,
    batch_summary,
    batch_table,
    build_request,
    grouped,
    job_line,
    job_summary,
    job_table,
    pull_bar,
    pull_line,
    queue_line,
    queue_summary,
    starts_in,
)
from foreman.client.keepawake import (
    DEFAULT_GRACE,
    INHIBITOR_KINDS,
    KeepAwakeError,
    find_inhibitor,
    parse_duration,
    run_keep_awake,
)

__all__ = ["main", "run"]

DEFAULT_URL = "http://127.0.0.1:8080"
EXIT_OK = 0
EXIT_JOB = 1  # the job (batch) failed, was cancelled or did not finish in time; a pull failed;
# a drain did not finish in time
EXIT_USAGE = 2  # fix the command: arguments, URL, request file; or foreman said no (HTTP 4xx/5xx)
EXIT_UNREACHABLE = 3  # no reply from foreman: refused, DNS, timeout, connection lost
EXIT_INTERRUPTED = 130
EXIT_STATUS = (
    "Exit status: 0 ok; 1 job or batch failed, cancelled or unfinished, a pull failed, "
    "or a drain unfinished; "
    "2 usage or configuration error, or foreman refused the request (HTTP 4xx/5xx); "
    "3 foreman unreachable (connection refused, DNS, timeout); 130 interrupted."
)
KEEP_AWAKE_STATUS = (
    "Runs until stopped. Exit status: 0 stopped by SIGTERM or SIGINT (the inhibitor released "
    "first); 2 usage error, no inhibitor program, or foreman refused the token. An unreachable "
    "foreman is retried (the inhibitor released after --grace), never an exit."
)
_STATES = [s.value for s in JobState]
# off a terminal, a batch's progress line at most this often (a status change always)
BATCH_PLAIN_INTERVAL = 5.0
BATCH_PAGE = 100  # the most one GET /v1/batches returns


class Live:
    """Progress on stderr: a line rewritten in place on a terminal, plain lines otherwise.

    Off a terminal, every ``important`` line (a state change) is printed and
    progress lines at most once per ``interval`` seconds, so logs stay short.
    """

    def __init__(self, stream: TextIO, tty: bool | None = None, interval: float = 1.0) -> None:
        self._stream = stream
        self._tty = stream.isatty() if tty is None else tty
        self._interval = interval
        self._last = 0.0
        self._open = False  # a TTY line not yet ended with a newline
        self._printed = ""

    @property
    def tty(self) -> bool:
        return self._tty

    def show(self, line: str, *, important: bool = False) -> None:
        if self._tty:
            width = shutil.get_terminal_size((100, 24)).columns - 1
            self._stream.write("\r" + line[:width] + "\x1b[K")
            self._open = True
        else:
            now = time.monotonic()
            if not important and now - self._last < self._interval:
                return
            self._last = now
            self._write_line(line)
        self._stream.flush()

    def _write_line(self, line: str) -> None:
        if line != self._printed:  # a final line may repeat the last event's
            self._stream.write(line + "\n")
            self._printed = line

    def done(self, line: str | None = None) -> None:
        """End the live line (printing ``line`` as its final form, if given)."""
        if line is not None:
            if self._tty:
                self.show(line)
            else:
                self._write_line(line)
        if self._open:
            self._stream.write("\n")
            self._open = False
        self._stream.flush()


class Cli:
    def __init__(
        self, args: argparse.Namespace, client: ForemanClient, stdout: TextIO, stderr: TextIO
    ) -> None:
        self.args = args
        self.stdout = stdout
        self.stderr = stderr
        self.client = client

    def print(self, text: str) -> None:
        self.stdout.write(text + "\n")
        self.stdout.flush()

    def print_json(self, value: Any) -> None:
        self.print(json.dumps(value, indent=2))

    def show_job(self, job: Job) -> None:
        if self.args.json:
            self.print_json(job.raw)
        else:
            self.print(job_summary(job))

    def follow(self, job_id: str, timeout: float | None) -> Job:
        """Show the job's state and token count live until it ends; return the final job."""
        live = Live(self.stderr)
        start = time.monotonic()
        state, tokens = "", None
        waiting: str | None = None
        stream = self.client.events(job_id)
        timer = threading.Timer(timeout, stream.close) if timeout is not None else None
        if timer is not None:
            timer.daemon = True
            timer.start()
        try:
            with stream:
                for event in stream:
                    if event.job is not None:
                        state = event.job.state.value
                    if event.type == "job.eta":
                        waiting = starts_in(event.eta)
                        if event.position is not None and waiting is not None:
                            waiting += f" (position {event.position})"
                    tokens = event.tokens if event.tokens is not None else tokens
                    elapsed = time.monotonic() - start
                    line = job_line(job_id, state, tokens, elapsed, waiting)
                    live.show(line, important=event.job is not None)
        finally:
            if timer is not None:
                timer.cancel()
        job = self.client.get(job_id)
        live.done(job_line(job.id, job.state.value, job.tokens, time.monotonic() - start))
        if not job.terminal:
            raise _NotFinished(f"job {job.id} still {job.state.value} after {timeout:g} s")
        return job

    def follow_batch(self, batch_id: str, timeout: float | None) -> Batch:
        """Show the batch's progress live (done/total, rate, ETA) until it ends; return it."""
        live = Live(self.stderr, interval=BATCH_PLAIN_INTERVAL)
        meter = RateMeter()
        start = time.monotonic()
        last: list[BatchStatus] = []  # the status shown last (a change is always printed)

        def show(batch: Batch) -> None:
            if batch.terminal:  # the final line, with how long it took, comes below
                return
            counts = batch.request_counts
            meter.add(time.monotonic(), counts.done)
            changed = last != [batch.status]
            last[:] = [batch.status]
            left = meter.eta(counts.total, counts.done)
            estimate = batch.raw.get("eta")  # foreman's own, learned per model
            if isinstance(estimate, dict) and estimate.get("known"):
                finish = estimate.get("finish_at")
                if isinstance(finish, (int, float)):
                    left = max(0.0, finish - time.time())
            line = batch_line(batch, meter.rate, left)
            live.show(line, important=changed)

        try:
            final = self.client.wait_batch(batch_id, timeout, on_progress=show)
        except WaitTimeout as e:
            live.done()
            raise _NotFinished(e.message) from None
        live.done(batch_line(final, elapsed=time.monotonic() - start))
        return final


class _NotFinished(Exception):
    pass


# -- commands


def cmd_submit(cli: Cli) -> int:
    args = cli.args
    body = _create_body(args)
    job = cli.client.submit(
        body["request"],
        endpoint=body.get("endpoint", "/api/chat"),
        webhook_url=body.get("webhook_url"),
        priority=body.get("priority", 0),
        metadata=body.get("metadata"),
        idempotency_key=args.idempotency_key,
    )
    if not args.wait:
        if args.json:
            cli.print_json(job.raw)
        else:
            cli.print(job.id)
        return EXIT_OK
    final = cli.follow(job.id, args.timeout)
    if final.state is not JobState.DONE:
        return _job_ended(cli, final)
    result = cli.client.result(final)
    if args.json:
        cli.print_json({**final.raw, "result": result})
        return EXIT_OK
    text = answer_text(result)
    cli.print(text if text is not None else json.dumps(result, indent=2))
    return EXIT_OK


def _create_body(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if args.file is not None:
        try:
            raw = sys.stdin.read() if args.file == "-" else Path(args.file).read_text("utf-8")
        except UnicodeDecodeError:
            raise _Usage(f"{args.file}: not UTF-8 text (expected a JSON request)") from None
        try:
            loaded = json.loads(raw)
        except ValueError as e:
            raise _Usage(f"{args.file}: not valid JSON: {e}") from None
        if not isinstance(loaded, dict):
            raise _Usage(f"{args.file}: expected a JSON object")
        if isinstance(loaded.get("request"), dict) and "model" not in loaded:
            body = loaded  # a whole POST /jobs body
        else:
            body = {"request": loaded}
    endpoint = args.endpoint or body.get("endpoint") or "/api/chat"
    body["endpoint"] = endpoint
    if args.prompt is not None:
        model = args.model or (body.get("request") or {}).get("model")
        if not model:
            raise _Usage("--prompt needs --model (or a request file naming the model)")
        body["request"] = {
            **(body.get("request") or {}),
            **build_request(endpoint, model, args.prompt),
        }
    elif args.model is not None and "request" in body:
        body["request"] = {**body["request"], "model": args.model}
    if "request" not in body:
        raise _Usage("give a request file (or - for stdin), or --model and --prompt")
    if args.webhook is not None:
        body["webhook_url"] = args.webhook
    if args.priority is not None:
        body["priority"] = args.priority
    if args.metadata is not None:
        try:
            body["metadata"] = json.loads(args.metadata)
        except ValueError as e:
            raise _Usage(f"--metadata is not valid JSON: {e}") from None
    return body


def cmd_get(cli: Cli) -> int:
    cli.show_job(cli.client.get(cli.args.id))
    return EXIT_OK


def cmd_list(cli: Cli) -> int:
    limit = cli.args.limit or None
    jobs = list(cli.client.list(state=cli.args.state, model=cli.args.model, limit=limit))
    if cli.args.json:
        cli.print_json([j.raw for j in jobs])
    elif jobs:
        cli.print(job_table(jobs))
    else:  # say so (silence reads as "did it work?"), on stderr so a pipe still gets nothing
        given = (("state", cli.args.state), ("model", cli.args.model))
        filters = " ".join(f"--{name} {value}" for name, value in given if value)
        cli.stderr.write(f"no jobs match {filters}\n" if filters else "no jobs\n")
    return EXIT_OK


def cmd_wait(cli: Cli) -> int:
    job = cli.follow(cli.args.id, cli.args.timeout)
    if cli.args.json:
        cli.print_json(job.raw)
    else:
        cli.print(f"{job.id} {job.state.value}")
    return EXIT_OK if job.state is JobState.DONE else _job_ended(cli, job, quiet=True)


def cmd_cancel(cli: Cli) -> int:
    job = cli.client.cancel(cli.args.id)
    if cli.args.json:
        cli.print_json(job.raw)
    else:
        cli.print(f"{job.id} {job.state.value}")
    return EXIT_OK


def cmd_delete(cli: Cli) -> int:
    cli.client.delete(cli.args.id)
    if cli.args.json:
        cli.print_json({"id": cli.args.id, "deleted": True})
    else:
        cli.print(f"{cli.args.id} deleted")
    return EXIT_OK


def cmd_artifact(cli: Cli) -> int:
    data = cli.client.artifact(cli.args.id, cli.args.name)
    if cli.args.output and cli.args.output != "-":
        Path(cli.args.output).write_bytes(data)
    else:
        out = getattr(cli.stdout, "buffer", None)
        if out is not None:
            out.write(data)
            out.flush()
        else:
            cli.stdout.write(data.decode("utf-8", "replace"))
    return EXIT_OK


def cmd_pull(cli: Cli) -> int:
    failed = []
    for model in cli.args.models:
        live = Live(cli.stderr)
        last = ""
        try:
            with cli.client.pull(model, insecure=cli.args.insecure) as progress:
                for item in progress:
                    if cli.args.json:
                        cli.print(json.dumps({"model": model, **item}))
                    status = str(item.get("status", ""))
                    if live.tty:
                        width = shutil.get_terminal_size((100, 24)).columns - 1
                        live.show(pull_bar(model, item, width))
                    elif status != last:  # plain output: one line per step
                        live.show(pull_line(model, item), important=True)
                    last = status
            live.done()
        except PullFailed as e:
            live.done()
            cli.stderr.write(f"foreman: {e.message}\n")
            failed.append(model)
    if failed:
        cli.stderr.write(f"foreman: {len(failed)} pull(s) failed: {', '.join(failed)}\n")
        return EXIT_JOB
    return EXIT_OK


def _job_ended(cli: Cli, job: Job, quiet: bool = False) -> int:
    error = JobFailed(job) if job.state is JobState.FAILED else JobCancelled(job)
    cli.stderr.write(f"foreman: {error}\n")
    if not quiet and cli.args.json:
        cli.print_json(job.raw)
    return EXIT_JOB


# -- batches


def cmd_batch(cli: Cli) -> int:
    """``foreman batch`` alone: its commands."""
    cli.args.command_parser.print_help(cli.stderr)
    return EXIT_USAGE


def cmd_batch_submit(cli: Cli) -> int:
    args = cli.args
    metadata = dict(args.metadata) if args.metadata else None
    if args.file == "-":  # a pipe: spooled to a temporary file (the length goes first)
        uploaded = cli.client.upload_file(sys.stdin.buffer, filename="stdin.jsonl")
        batch = cli.client.create_batch(
            uploaded.id, args.endpoint, metadata=metadata, webhook_url=args.webhook_url
        )
    else:
        batch = cli.client.submit_batch(
            args.file, args.endpoint, metadata=metadata, webhook_url=args.webhook_url
        )
    if not args.wait:
        if args.json:
            cli.print_json(batch.raw)
        else:
            cli.print(batch.id)
        return EXIT_OK
    return _batch_ended(cli, cli.follow_batch(batch.id, args.timeout))


def cmd_batch_wait(cli: Cli) -> int:
    return _batch_ended(cli, cli.follow_batch(cli.args.id, cli.args.timeout))


def cmd_batch_get(cli: Cli) -> int:
    batch = cli.client.get_batch(cli.args.id)
    if cli.args.json:
        cli.print_json(batch.raw)
    else:
        cli.print(batch_summary(batch))
    return EXIT_OK


def cmd_batch_list(cli: Cli) -> int:
    wanted = cli.args.limit or None  # 0: all
    batches: list[Batch] = []
    after = cli.args.after
    while wanted is None or len(batches) < wanted:
        size = BATCH_PAGE if wanted is None else min(BATCH_PAGE, wanted - len(batches))
        page = cli.client.list_batches(after=after, limit=size)
        batches.extend(page.batches)
        if page.next_after is None or not page.batches:
            break
        after = page.next_after
    if wanted is not None:
        batches = batches[:wanted]
    if cli.args.json:
        cli.print_json([b.raw for b in batches])
    elif batches:
        cli.print(batch_table(batches))
    else:
        cli.stderr.write("no batches\n")
    return EXIT_OK


def cmd_batch_cancel(cli: Cli) -> int:
    batch = cli.client.cancel_batch(cli.args.id)
    if cli.args.json:
        cli.print_json(batch.raw)
    else:
        cli.print(f"{batch.id} {batch.status.value}")
    return EXIT_OK


def cmd_batch_output(cli: Cli) -> int:
    args = cli.args
    batch = cli.client.get_batch(args.id)
    kind = "error" if args.errors else "output"
    file_id = batch.error_file_id if args.errors else batch.output_file_id
    if file_id is None:
        status = batch.status.value
        if not batch.terminal:
            why = f"it is still {status}"
        elif args.errors:
            why = f"it is {status} and no line failed"
        else:
            why = f"it is {status} and no line completed"
        cli.stderr.write(f"foreman: batch {batch.id} has no {kind} file: {why}\n")
        return EXIT_JOB
    if args.output and args.output != "-":
        cli.client.download_file(file_id, args.output)
        return EXIT_OK
    out = getattr(cli.stdout, "buffer", None)
    if out is not None:
        cli.stdout.flush()
        cli.client.download_file(file_id, out)
        out.flush()
    else:
        cli.stdout.write(cli.client.file_content(file_id).decode("utf-8", "replace"))
    return EXIT_OK


def _batch_ended(cli: Cli, batch: Batch) -> int:
    """Print the final batch; 0 when it completed (failed lines are counted), else 1."""
    if cli.args.json:
        cli.print_json(batch.raw)
    else:
        cli.print(batch_summary(batch))
    counts = batch.request_counts
    if batch.status is BatchStatus.COMPLETED:
        if counts.failed:
            cli.stderr.write(
                f"foreman: {grouped(counts.failed)} of {grouped(counts.total)} lines failed; "
                f"see foreman batch output {batch.id} --errors\n"
            )
        return EXIT_OK
    cli.stderr.write(f"foreman: batch {batch.id} {batch.status.value}\n")
    for error in batch.errors[:_ERRORS_SHOWN]:
        cli.stderr.write(f"foreman: {error}\n")
    if len(batch.errors) > _ERRORS_SHOWN:
        cli.stderr.write(f"foreman: … and {len(batch.errors) - _ERRORS_SHOWN} more errors\n")
    return EXIT_JOB


_ERRORS_SHOWN = 5


# -- the queue as a whole


def cmd_queue(cli: Cli) -> int:
    """``foreman queue`` alone: its commands."""
    cli.args.command_parser.print_help(cli.stderr)
    return EXIT_USAGE


def _show_state(cli: Cli, state: QueueState) -> None:
    if cli.args.json:
        cli.print_json(state.raw)
    else:
        cli.print(queue_line(state))


def cmd_queue_show(cli: Cli) -> int:
    state = cli.client.queue_state(limit=cli.args.limit or None)
    if cli.args.json:
        cli.print_json(state.raw)
    else:
        cli.print(queue_summary(state))
    return EXIT_OK


def cmd_queue_pause(cli: Cli) -> int:
    _show_state(cli, cli.client.pause())
    return EXIT_OK


def cmd_queue_resume(cli: Cli) -> int:
    _show_state(cli, cli.client.resume())
    return EXIT_OK


def cmd_queue_drain(cli: Cli) -> int:
    args = cli.args
    if args.timeout is not None and not args.wait:
        raise _Usage("--timeout needs --wait")
    if not args.wait:
        _show_state(cli, cli.client.drain())
        return EXIT_OK
    state = cli.client.drain()  # at once: the queue is paused before we wait
    if not state.drained:
        live = Live(cli.stderr)
        live.show(f"{queue_line(state)}: waiting for the running work to end", important=True)
        state = cli.client.drain(math.inf if args.timeout is None else args.timeout)
        live.done()
    _show_state(cli, state)
    if not state.drained:
        cli.stderr.write(
            f"foreman: still running after {args.timeout:g} s; the queue stays paused "
            "(foreman queue resume to dispatch again)\n"
        )
        return EXIT_JOB
    return EXIT_OK


# -- keep-awake


def cmd_keep_awake(cli: Cli) -> int:
    args = cli.args
    try:
        program = find_inhibitor(args.inhibitor)
        return run_keep_awake(args.url, args.token, args.grace, program, cli.stderr)
    except KeepAwakeError as e:
        cli.stderr.write(f"foreman: keep-awake: {e}\n")
        return EXIT_USAGE


class _Usage(Exception):
    pass


def _usage_error(parser: argparse.ArgumentParser, message: str, stderr: TextIO) -> int:
    """What argparse prints for a usage error, for ones found after parsing; returns 2."""
    parser.print_usage(stderr)
    stderr.write(f"{parser.prog}: error: {message}\n")
    return EXIT_USAGE


# -- arguments


def _count(text: str) -> int:
    """argparse type: a whole number, 0 or more."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {value}")
    return value


def _seconds(text: str) -> float:
    """argparse type: a finite number of seconds, 0 or more."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be 0 or more seconds, not {text}")
    return value


def _duration(text: str) -> float:
    """argparse type: ``120``, ``120s``, ``2m``, ``0.5s`` …"""
    try:
        return parse_duration(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _pair(text: str) -> tuple[str, str]:
    """argparse type: ``key=value``."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected key=value, not {text!r}")
    return key, value


def _common() -> argparse.ArgumentParser:
    """Options accepted before and after the command (``foreman list --json``)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--url",
        default=argparse.SUPPRESS,
        help="foreman's base URL; host:port means http:// "
        "(default: $FOREMAN_URL or http://127.0.0.1:8080)",
    )
    common.add_argument(
        "--token", default=argparse.SUPPRESS, help="Bearer token (default: $FOREMAN_TOKEN)"
    )
    common.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output"
    )
    return common


def build_parser() -> argparse.ArgumentParser:
    common = _common()
    parser = argparse.ArgumentParser(
        prog="foreman",
        parents=[common],
        description="Submit and follow foreman jobs and batches, fetch their results, pull models, "
        "pause the queue, keep the Ollama box awake.",
        epilog=EXIT_STATUS,
    )
    parser.add_argument("--version", action="version", version=f"foreman {__version__}")
    # not required: `foreman` alone prints the whole help (the commands), not one error line
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(
        name: str, handler: Callable[[Cli], int], help: str, epilog: str = EXIT_STATUS
    ) -> argparse.ArgumentParser:
        sub = commands.add_parser(
            name, parents=[common], help=help, description=help, epilog=epilog
        )
        sub.set_defaults(handler=handler, command_parser=sub)
        return sub

    submit = command("submit", cmd_submit, "create a job (and optionally wait for its answer)")
    submit.add_argument(
        "file", nargs="?", help="request JSON (the body Ollama would get); - reads stdin"
    )
    submit.add_argument("--model", help="the model (builds a request with --prompt)")
    submit.add_argument("--prompt", help="the user message / prompt")
    submit.add_argument("--endpoint", help="inference route (default /api/chat)")
    submit.add_argument("--webhook", help="webhook URL for state changes")
    submit.add_argument("--priority", type=int, help="higher runs first (default 0)")
    submit.add_argument("--metadata", help="JSON echoed back on the job")
    submit.add_argument("--idempotency-key", help="reuse to make the submit idempotent")
    submit.add_argument("--wait", action="store_true", help="wait, show progress, print answer")
    submit.add_argument("--timeout", type=_seconds, help="with --wait: give up after N seconds")

    get = command("get", cmd_get, "show a job")
    get.add_argument("id")

    lister = command("list", cmd_list, "list jobs, newest first")
    lister.add_argument("--state", choices=_STATES)
    lister.add_argument("--model")
    lister.add_argument("--limit", type=_count, default=20, help="at most N jobs (0: all)")

    wait = command("wait", cmd_wait, "follow a job live until it ends")
    wait.add_argument("id")
    wait.add_argument("--timeout", type=_seconds, help="give up after N seconds")

    cancel = command("cancel", cmd_cancel, "cancel a queued or running job")
    cancel.add_argument("id")

    delete = command("delete", cmd_delete, "delete a finished job and its artifacts")
    delete.add_argument("id")

    artifact = command("artifact", cmd_artifact, "write a job's artifact to stdout or a file")
    artifact.add_argument("id")
    artifact.add_argument("name", help="request.json, response.json or stream.ndjson")
    artifact.add_argument("-o", "--output", help="write to this file instead of stdout")

    pull = command("pull", cmd_pull, "pull models onto the target through foreman")
    pull.add_argument("models", nargs="+", metavar="MODEL")
    pull.add_argument("--insecure", action="store_true", help="allow an insecure registry")

    _batch_parsers(command("batch", cmd_batch, "OpenAI batches: submit a JSONL file, follow it"))
    _queue_parsers(command("queue", cmd_queue, "show, pause, resume or drain the queue"))

    keep = command(
        "keep-awake",
        cmd_keep_awake,
        "run on the Ollama box: keep it from sleeping while foreman has work",
        KEEP_AWAKE_STATUS,
    )
    keep.add_argument(
        "--grace",
        type=_duration,
        default=DEFAULT_GRACE,
        metavar="DURATION",
        help="hold on this long after the work ends or foreman stops answering "
        "(120, 120s, 2m; default 2m)",
    )
    keep.add_argument(
        "--inhibitor",
        choices=INHIBITOR_KINDS,
        default="auto",
        help="systemd (systemd-inhibit) or caffeinate (macOS); auto picks what this system has",
    )
    return parser


def _queue_parsers(queue: argparse.ArgumentParser) -> None:
    common = _common()
    commands = queue.add_subparsers(dest="queue_command", metavar="COMMAND")

    def command(name: str, handler: Callable[[Cli], int], help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(
            name, parents=[common], help=help, description=help, epilog=EXIT_STATUS
        )
        sub.set_defaults(handler=handler, command_parser=sub)
        return sub

    show = command("show", cmd_queue_show, "the queue's state and what waits, in dispatch order")
    show.add_argument("--limit", type=_count, default=20, help="at most N items (0: foreman's 100)")
    command("pause", cmd_queue_pause, "stop dispatching (running work goes on; kept on restart)")
    command("resume", cmd_queue_resume, "dispatch again after pause or drain")
    drain = command(
        "drain", cmd_queue_drain, "pause and let the running work end (before maintenance)"
    )
    drain.add_argument("--wait", action="store_true", help="wait until nothing runs")
    drain.add_argument("--timeout", type=_seconds, help="with --wait: give up after N seconds")


def _batch_parsers(batch: argparse.ArgumentParser) -> None:
    common = _common()
    commands = batch.add_subparsers(dest="batch_command", metavar="COMMAND")

    def command(name: str, handler: Callable[[Cli], int], help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(
            name, parents=[common], help=help, description=help, epilog=EXIT_STATUS
        )
        sub.set_defaults(handler=handler, command_parser=sub)
        return sub

    submit = command(
        "submit", cmd_batch_submit, "upload a JSONL file and start a batch (optionally wait)"
    )
    submit.add_argument("file", help="the input: one request per line (- reads stdin)")
    submit.add_argument(
        "--endpoint",
        default=DEFAULT_BATCH_ENDPOINT,
        help=f"the route every line goes to (default {DEFAULT_BATCH_ENDPOINT})",
    )
    submit.add_argument(
        "--metadata",
        type=_pair,
        action="append",
        metavar="KEY=VALUE",
        help="metadata kept with the batch (repeat for more)",
    )
    submit.add_argument("--webhook-url", help="send batch.* webhooks to this URL")
    submit.add_argument(
        "--wait", action="store_true", help="follow it live and print a summary at the end"
    )
    submit.add_argument("--timeout", type=_seconds, help="with --wait: give up after N seconds")

    get = command("get", cmd_batch_get, "show a batch")
    get.add_argument("id")

    lister = command("list", cmd_batch_list, "list batches, newest first")
    lister.add_argument("--limit", type=_count, default=20, help="at most N batches (0: all)")
    lister.add_argument("--after", help="start after this batch id (the next page)")

    wait = command("wait", cmd_batch_wait, "follow a batch live until it ends")
    wait.add_argument("id")
    wait.add_argument("--timeout", type=_seconds, help="give up after N seconds")

    cancel = command("cancel", cmd_batch_cancel, "cancel a batch (its finished lines are kept)")
    cancel.add_argument("id")

    output = command(
        "output", cmd_batch_output, "write a batch's output (or error) file to stdout or a file"
    )
    output.add_argument("id")
    output.add_argument("--errors", action="store_true", help="the error file instead")
    output.add_argument("-o", "--output", help="write to this file instead of stdout")


def run(
    argv: Sequence[str] | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """Run one command; returns the exit status (argparse's exits included, so never raises)."""
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    parser = build_parser()
    try:
        # --help, --version and argparse's usage errors print to sys.stdout / sys.stderr
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            args = parser.parse_args(argv)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    if args.command is None:  # `foreman` alone (or with options only): list the commands
        parser.print_help(stderr)
        return EXIT_USAGE
    url, source = _url_setting(args)
    args.url = url
    args.token = getattr(args, "token", None) or os.environ.get("FOREMAN_TOKEN") or None
    args.json = getattr(args, "json", False)
    try:
        client = ForemanClient(url, args.token)
    except InvalidURL as e:
        stderr.write(f"foreman: {source}: {e.message}\n")
        return EXIT_USAGE
    cli = Cli(args, client, stdout, stderr)
    try:
        code: int = args.handler(cli)
        return code
    except _Usage as e:
        return _usage_error(args.command_parser, str(e), stderr)
    except (_NotFinished, JobFailed, JobCancelled) as e:
        stderr.write(f"foreman: {e}\n")
        return EXIT_JOB
    except ForemanConnectionError as e:  # names the URL and the reason
        stderr.write(f"foreman: {e}\n")
        return EXIT_UNREACHABLE
    except ForemanError as e:
        stderr.write(f"foreman: {e}\n")
        return EXIT_USAGE
    except OSError as e:  # a request file or output file
        stderr.write(f"foreman: {e}\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        stderr.write("\n")
        return EXIT_INTERRUPTED
    finally:
        with contextlib.suppress(Exception):  # exiting anyway
            client.close()


def _url_setting(args: argparse.Namespace) -> tuple[str, str]:
    """The base URL and where it came from (named when it is unusable)."""
    if hasattr(args, "url"):
        return str(args.url), "--url"
    from_env = os.environ.get("FOREMAN_URL", "").strip()
    if from_env:
        return from_env, "$FOREMAN_URL"
    return DEFAULT_URL, "default URL"


def main(argv: Sequence[str] | None = None) -> None:
    sys.exit(run(argv))


if __name__ == "__main__":
    main()
