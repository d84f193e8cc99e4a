"""The queue as a whole: ``foreman queue show|pause|resume|drain`` and the library calls behind it
(``queue_state``, ``pause``, ``resume``, ``drain``, ``activity``) on both clients, against the
real daemon; the text they print (pure).
"""

from __future__ import annotations

import datetime
import json
import socket
import time
from pathlib import Path
from typing import Any

import attrs
import pytest_twisted
from twisted.internet.threads import deferToThread

from foreman.client import (
    AsyncForemanClient,
    ForemanClient,
    NotFound,
    QueueActivity,
    QueueItem,
    QueueState,
)
from foreman.client._render import queue_line, queue_summary
from foreman.testing import OllamaSimulator
from tests.harness import Stack, chat, reactor, start_stack, until
from tests.test_cli import foreman, one_line

SINCE = datetime.datetime(2026, 11, 26, 0, 5, 13, tzinfo=datetime.UTC)


def state(**kw: Any) -> QueueState:
    fields: dict[str, Any] = {
        "paused": False,
        "draining": False,
        "drained": False,
        "since": None,
        "running": False,
        "queued": 0,
    }
    fields.update(kw)
    return QueueState(**fields)


def slow_sim(tokens: int = 8) -> OllamaSimulator:
    """``tokens`` at 10/s: a job runs long enough to pause or drain around it."""
    return OllamaSimulator(
        models=("llama3.2", "qwen3"), token_rate=10.0, load_time=0.05, reply_tokens=tokens
    )


# -- text (pure)


def test_the_state_in_one_line() -> None:
    assert queue_line(state(queued=3)) == "running: 3 queued, nothing running"
    paused = state(paused=True, since=SINCE, queued=1234, running=True)
    assert queue_line(paused) == "paused since 2026-11-26T00:05:13Z: 1 234 queued, 1 running"
    draining = state(paused=True, draining=True, since=SINCE, running=True)
    assert queue_line(draining).startswith("draining since 2026-11-26T00:05:13Z: ")
    drained = state(paused=True, draining=True, drained=True, since=SINCE)
    assert drained.status == "drained"
    assert queue_line(drained) == "drained since 2026-11-26T00:05:13Z: 0 queued, nothing running"


def test_the_summary_lists_what_waits_in_dispatch_order() -> None:
    items = (
        QueueItem(0, "job", "llama3.2", 5, 2.4, id="job_01"),
        QueueItem(1, "interactive", "qwen3", 0, 0.3, path="/api/chat"),
    )
    text = queue_summary(
        state(paused=True, since=SINCE, queued=3, items=items, loaded_model="llama3.2")
    )
    assert text.splitlines() == [
        "state    paused",
        "since    2026-11-26T00:05:13Z",
        "queued   3",
        "running  no",
        "loaded   llama3.2",
        "",
        "POS  KIND         MODEL     PRIORITY  WAITED  STARTS  ID",
        "0    job          llama3.2  5         2s      -       job_01",
        "1    interactive  qwen3     0         0s      -       /api/chat",
        "… and 1 more",
    ]
    assert queue_summary(state()).splitlines()[0] == "state    running"


def test_values_parse_the_wire_shapes() -> None:
    wire = {
        "object": "queue.state",
        "paused": True,
        "draining": False,
        "drained": True,
        "since": "2026-11-26T00:05:13Z",
        "running": False,
        "queued": 2,
    }
    parsed = QueueState.from_dict(wire)
    assert parsed == state(paused=True, drained=True, since=SINCE, queued=2)
    assert parsed.raw is wire and parsed.status == "paused"
    view = {
        "object": "queue",
        "data": [
            {"position": 0, "kind": "job", "model": "m", "priority": 0, "waited_ms": 1500.0}
            | {"id": "job_1"}
        ],
        "loaded_model": None,
        "state": {k: v for k, v in wire.items() if k != "object"},
    }
    from_view = QueueState.from_dict(view)
    assert from_view.items == (QueueItem(0, "job", "m", 0, 1.5, id="job_1"),)
    assert attrs.evolve(from_view, items=()) == parsed
    active = {
        "object": "queue.activity",
        "busy": True,
        "queued": 0,
        "running": True,
        "paused": False,
        "draining": False,
    }
    assert QueueActivity.from_dict(active) == QueueActivity(True, 0, True, False, False)


# -- the library against the daemon


async def restart(stack: Stack, tmp_path: Path) -> Stack:
    """Stop the daemon (not the simulator) and start it again on the same data."""
    await stack.pool.closeCachedConnections()
    await stack.daemon.stop()
    return await start_stack(tmp_path, sim=stack.sim)


@pytest_twisted.ensureDeferred
async def test_pause_resume_drain_and_activity_with_the_async_client(tmp_path: Path) -> None:
    stack = await start_stack(tmp_path, sim=slow_sim())
    client = AsyncForemanClient(stack.url, reactor=reactor)
    try:
        idle = await client.queue_state()
        assert (idle.status, idle.queued, idle.running, idle.since) == ("running", 0, False, None)
        assert idle.raw["object"] == "queue"
        assert await client.activity() == QueueActivity(False, 0, False, False, False)

        paused = await client.pause()
        assert paused.paused and paused.drained and not paused.draining
        assert paused.since is not None and paused.since.tzinfo is not None
        assert paused.raw["object"] == "queue.state"
        assert (await client.pause()).since == paused.since  # idempotent

        job = await stack.submit(chat("llama3.2"))
        shown = await client.queue_state()
        assert shown.paused and shown.queued == 1
        assert [(i.kind, i.id) for i in shown.items] == [("job", job["id"])]
        busy = await client.activity(wait=5, busy=False)  # differs: at once
        assert busy.busy and busy.paused and busy.queued == 1

        await client.resume()
        assert (await stack.wait_job(job["id"]))["state"] == "done"
        quiet = await client.activity(wait=30, busy=True)  # differs: at once
        assert not quiet.busy and not quiet.paused
        unchanged = await client.activity(wait=0.2, busy=False)
        assert unchanged == quiet  # after the wait: the same answer

        # a long-poll is answered by the change, not by its timeout
        started = time.monotonic()
        waiting = client.activity(wait=30, busy=False)
        running = await stack.submit(chat("llama3.2"))
        assert (await waiting).busy and time.monotonic() - started < 10

        await until(lambda: stack.daemon.control.running, timeout=10)
        at_once = await client.drain()
        assert at_once.paused and at_once.draining
        drained = await client.drain(wait=30)
        assert drained.drained and drained.draining and not drained.running
        assert (await stack.wait_job(running["id"]))["state"] == "done"
        resumed = await client.resume()
        assert resumed.status == "running" and resumed.since is None
        assert (await client.resume()).status == "running"  # not paused: nothing happens
    finally:
        await client.close()
        await stack.stop()


@pytest_twisted.ensureDeferred
async def test_drain_gives_up_after_its_wait_with_the_work_still_running(tmp_path: Path) -> None:
    stack = await start_stack(tmp_path, sim=slow_sim(tokens=40))  # a job of ~4 s
    client = AsyncForemanClient(stack.url, reactor=reactor)
    try:
        job = await stack.submit(chat("llama3.2"))
        await until(lambda: stack.daemon.control.running, timeout=10)
        started = time.monotonic()
        unfinished = await client.drain(wait=0.5)
        assert 0.4 < time.monotonic() - started < 5
        assert unfinished.running and not unfinished.drained and unfinished.draining
        assert (await stack.wait_job(job["id"]))["state"] == "done"
        assert (await client.drain(wait=5)).drained
        await client.resume()
    finally:
        await client.close()
        await stack.stop()


@pytest_twisted.ensureDeferred
async def test_the_blocking_client_has_the_same_calls(tmp_path: Path) -> None:
    stack = await start_stack(tmp_path)

    def calls() -> list[Any]:
        with ForemanClient(stack.url) as client:
            return [
                client.pause().status,
                client.queue_state(limit=5).status,
                client.activity(wait=0).busy,
                client.activity(wait=0.2, busy=False).busy,  # the timeout: unchanged
                client.drain(wait=1).drained,
                client.resume().status,
            ]

    try:
        assert await deferToThread(calls) == ["paused", "paused", False, False, True, "running"]
    finally:
        await stack.stop()


@pytest_twisted.ensureDeferred
async def test_unknown_queue_actions_are_not_found(tmp_path: Path) -> None:
    stack = await start_stack(tmp_path)
    try:
        response = await stack.post("/queue/sleep")
        assert response.status == 404
        assert response.json()["error"]["code"] == "unknown_queue_action"
        client = AsyncForemanClient(stack.url, reactor=reactor)
        try:
            # the library's calls name only real actions; any other is foreman's 404
            reply = await client._transport.call("POST", "/queue/sleep", retry=False)
        except NotFound as e:
            assert e.code == "unknown_queue_action"
        else:
            raise AssertionError(f"answered {reply}")
        finally:
            await client.close()
    finally:
        await stack.stop()


# -- the command line


@pytest_twisted.ensureDeferred
async def test_queue_commands(tmp_path: Path) -> None:
    stack = await start_stack(tmp_path)
    try:
        shown = await foreman("queue", "show", url=stack.url)
        assert shown.status == 0, shown.err
        assert shown.out.splitlines()[:3] == ["state    running", "queued   0", "running  no"]

        paused = await foreman("queue", "pause", url=stack.url)
        assert paused.status == 0 and paused.err == ""
        assert paused.out.startswith("paused since ") and "0 queued, nothing running" in paused.out
        job = await stack.submit(chat("llama3.2"))
        shown = await foreman("queue", "show", url=stack.url)
        lines = shown.out.splitlines()
        assert lines[0] == "state    paused" and lines[1].startswith("since    ")
        assert "queued   1" in lines
        assert any(line.startswith("0    job ") and job["id"] in line for line in lines)
        as_json = await foreman("queue", "show", "--json", url=stack.url)
        view = json.loads(as_json.out)
        assert view["object"] == "queue" and view["state"]["paused"] is True
        assert view["data"][0]["id"] == job["id"]

        drained = await foreman("queue", "drain", "--wait", url=stack.url)
        assert drained.status == 0, drained.err
        assert drained.out.startswith("drained since ")  # nothing was running

        resumed = await foreman("queue", "resume", "--json", url=stack.url)
        assert resumed.status == 0
        assert json.loads(resumed.out)["paused"] is False
        assert (await stack.wait_job(job["id"]))["state"] == "done"
        again = await foreman("queue", "resume", url=stack.url)
        assert again.out == "running: 0 queued, nothing running\n"
    finally:
        await stack.stop()


@pytest_twisted.ensureDeferred
async def test_drain_wait_waits_for_the_running_job_and_times_out_with_exit_1(
    tmp_path: Path,
) -> None:
    stack = await start_stack(tmp_path, sim=slow_sim(tokens=20))  # ~2 s
    try:
        first = await stack.submit(chat("llama3.2"))
        await until(lambda: stack.daemon.control.running, timeout=10)
        timed_out = await foreman("queue", "drain", "--wait", "--timeout", "0.3", url=stack.url)
        assert timed_out.status == 1
        assert timed_out.out.startswith("draining since ")
        assert timed_out.err.splitlines()[-1] == (
            "foreman: still running after 0.3 s; the queue stays paused "
            "(foreman queue resume to dispatch again)"
        )
        second = await stack.submit(chat("llama3.2"))
        started = time.monotonic()
        drained = await foreman("queue", "drain", "--wait", url=stack.url)
        assert drained.status == 0, drained.err
        assert "waiting for the running work to end" in drained.err
        assert drained.out.startswith("drained since ") and "1 queued" in drained.out
        assert time.monotonic() - started < 10
        first_job = await stack.get(f"/jobs/{first['id']}")
        assert first_job.json()["state"] == "done"
        second_job = await stack.get(f"/jobs/{second['id']}")
        assert second_job.json()["state"] == "queued"  # drained: nothing new started
        await foreman("queue", "resume", url=stack.url)
        assert (await stack.wait_job(second["id"]))["state"] == "done"
    finally:
        await stack.stop()


@pytest_twisted.ensureDeferred
async def test_paused_survives_a_restart(tmp_path: Path) -> None:
    stack = await start_stack(tmp_path)
    try:
        assert (await foreman("queue", "pause", url=stack.url)).status == 0
        stack = await restart(stack, tmp_path)
        shown = await foreman("queue", "show", url=stack.url)
        assert shown.out.splitlines()[0] == "state    paused"
        await foreman("queue", "resume", url=stack.url)
    finally:
        await stack.stop()


@pytest_twisted.ensureDeferred
async def test_queue_usage_and_reach_errors() -> None:
    listed = await foreman()
    assert "\n    queue " in listed.err and "\n    keep-awake " in listed.err
    bare = await foreman("queue", url="http://127.0.0.1:1")
    assert bare.status == 2 and "show" in bare.err and "drain" in bare.err
    no_wait = await foreman("queue", "drain", "--timeout", "5", url="http://127.0.0.1:1")
    assert no_wait.status == 2 and "--timeout needs --wait" in no_wait.err
    unknown = await foreman("queue", "sleep", url="http://127.0.0.1:1")
    assert unknown.status == 2 and "invalid choice" in unknown.err
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{held.getsockname()[1]}"
        for command in ("show", "drain"):
            refused = await foreman("queue", command, url=closed)
            assert refused.status == 3, (command, refused.err)
            assert closed in one_line(refused.err)
