"""Jobs recovered at start are transitions like any other: logged, counted, evented.

Before the redesign the observers were hooked in after recovery ran, so a job
that a crash left ``working`` went back to ``queued`` with no log line and no
metric. The job is planted in the database as a crash would leave it, then a
real daemon starts on it (its target unreachable, so nothing is dispatched).
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any, cast

import pytest_twisted
from twisted.internet import reactor
from twisted.logger import ILogObserver, LogEvent, globalLogPublisher

from foreman.app.config import Config, check_data_dir
from foreman.app.daemon import Daemon
from foreman.core import jobstate
from foreman.core.records import NewJob, request_hash
from foreman.store.database import open_sync
from foreman.store.jobs import change_state, events_after, get_job, insert_job


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def _plant_working_job(config: Config) -> str:
    conn = open_sync(config.db_path)
    try:
        with conn:
            request = '{"model":"llama3.2","messages":[]}'
            new = NewJob(
                id="job_01J0000000000000000000000A",
                endpoint="/api/chat",
                model="llama3.2",
                priority=0,
                request=request,
                metadata=None,
                webhook_url=None,
                created_at=1000.0,
                idempotency_key=None,
                request_hash=request_hash({"request": request}),
                base_url="http://127.0.0.1",
            )
            insert_job(conn, new, lambda row, seq: {"id": row.id})
            for step in (
                jobstate.start_loading(new.id, 1001.0),
                jobstate.start_working(new.id, 1002.0),
            ):
                row, _ = change_state(conn, step, lambda row, seq: {"id": row.id})
                assert row is not None
        return new.id
    finally:
        conn.close()


@pytest_twisted.ensureDeferred
async def test_a_recovered_job_is_logged_counted_and_evented(tmp_path: Path) -> None:
    config = Config(
        listen="tcp:0:interface=127.0.0.1",
        target_url=f"http://127.0.0.1:{_closed_port()}",
        data_dir=tmp_path,
    )
    check_data_dir(config)
    job_id = _plant_working_job(config)
    events: list[LogEvent] = []
    observer = cast(ILogObserver, events.append)
    globalLogPublisher.addObserver(observer)
    daemon = await Daemon.start(config, reactor)
    try:
        lines = [
            (e["job_id"], e["state"], e["attempts"])
            for e in events
            if e.get("log_namespace") == "foreman.jobs"
        ]
        assert lines == [(job_id, "queued", 1)]
        metrics = daemon.metrics.render().decode()
        assert 'foreman_job_transitions_total{state="queued"} 1.0' in metrics
        row = await daemon.store.read(get_job, job_id)
        assert row is not None and row.state == "queued" and row.error_code == "interrupted"
        stored: list[Any] = await daemon.store.read(events_after, job_id, 0)
        assert [e.type for e in stored] == [
            "job.queued",
            "job.loading",
            "job.working",
            "job.queued",
        ]
        assert daemon.queue.scheduler.depth_by_model() == {"llama3.2": 1}
    finally:
        globalLogPublisher.removeObserver(observer)
        await daemon.stop()
