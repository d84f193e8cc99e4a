"""Webhooks from the durable outbox, end to end, verified with the standardwebhooks package."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest_twisted
from standardwebhooks import Webhook
from twisted.logger import LogEvent, LogLevel, formatEvent

from foreman.core.webhook_policy import FailureAlerts
from tests.harness import Stack, chat, start_stack, until
from tests.receiver import Receiver

STATES = ["job.queued", "job.loading", "job.working", "job.done"]


def _fast(attempts: int, rng: random.Random, retry_after: float | None) -> float | None:
    """The real schedule's shape (give up after 8 attempts), 50 ms apart."""
    if attempts >= 8:
        return None
    return max(0.05, min(retry_after or 0.0, 5.0))


def _secret(stack: Stack) -> str:
    return (stack.daemon.config.data_dir / "webhook-secret").read_text().strip()


@pytest_twisted.ensureDeferred
async def test_job_events_arrive_in_order_and_verify(tmp_path: Path) -> None:
    receiver = Receiver()
    await receiver.listen()
    stack = await start_stack(tmp_path)
    try:
        job = await stack.submit(chat("llama3.2"), webhook_url=receiver.url)
        await stack.wait_job(job["id"])
        await until(lambda: len(receiver.ok()) == 4)
        assert receiver.types() == STATES
        verifier = Webhook(_secret(stack))
        seqs = []
        for delivery in receiver.ok():
            event = verifier.verify(delivery.body, delivery.headers)
            assert event["data"]["id"] == job["id"]
            seqs.append(event["data"]["seq"])
            assert delivery.headers["webhook-id"].startswith("msg_")
        assert seqs == [1, 2, 3, 4]
        done = receiver.ok()[-1].event()["data"]
        assert done["state"] == "done"
        assert done["result"]["message"]["content"]
        assert any(a["name"] == "response.json" for a in done["artifacts"])
        shown = (await stack.get(f"/jobs/{job['id']}")).json()
        await until(lambda: True)
        assert shown["webhook"]["delivered"] >= 3
    finally:
        await stack.stop()
        await receiver.close()


@pytest_twisted.ensureDeferred
async def test_receiver_down_then_500_then_ok(tmp_path: Path) -> None:
    answers: Any = iter([(500, {}), (500, {})])
    receiver = Receiver(answer=lambda n: next(answers, (200, {})))
    await receiver.listen()
    url = receiver.url
    port = receiver.port_number
    await receiver.close()  # down at first: connection refused
    stack = await start_stack(tmp_path)
    stack.daemon.delivery.next_delay = _fast
    try:
        job = await stack.submit(chat("llama3.2"), webhook_url=url)
        await stack.wait_job(job["id"])
        await until(lambda: stack.daemon.delivery.attempts >= 3)
        await receiver.listen(port)
        await until(lambda: len(receiver.ok()) == 4, timeout=20)
        assert receiver.types() == STATES
        by_type: dict[str, set[str]] = {}
        for delivery in receiver.deliveries:
            by_type.setdefault(delivery.event()["type"], set()).add(delivery.headers["webhook-id"])
        assert all(len(ids) == 1 for ids in by_type.values()), by_type
        assert receiver.deliveries[0].status == 500
        verifier = Webhook(_secret(stack))
        for delivery in receiver.deliveries:
            verifier.verify(delivery.body, delivery.headers)
    finally:
        await stack.stop()
        await receiver.close()


@pytest_twisted.ensureDeferred
async def test_gone_stops_deliveries_to_the_url(tmp_path: Path) -> None:
    receiver = Receiver(answer=lambda n: (410, {}))
    await receiver.listen()
    stack = await start_stack(tmp_path)
    stack.daemon.delivery.next_delay = _fast
    try:
        job = await stack.submit(chat("llama3.2"), webhook_url=receiver.url)
        await stack.wait_job(job["id"])
        await until(lambda: len(receiver.deliveries) >= 1)
        second = await stack.submit(chat("llama3.2"), webhook_url=receiver.url)
        await stack.wait_job(second["id"])
        shown = (await stack.get(f"/jobs/{job['id']}")).json()
        await until(lambda: len(receiver.deliveries) >= 1)
        assert len(receiver.deliveries) == 1
        statuses = {d["status"] for d in shown["webhook"]["deliveries"]}
        assert statuses == {"gone"}
    finally:
        await stack.stop()
        await receiver.close()


@pytest_twisted.ensureDeferred
async def test_retry_after_is_honoured_and_redirects_are_not_followed(tmp_path: Path) -> None:
    answers = [(503, {"Retry-After": "1"}), (302, {"Location": "http://127.0.0.1:9/"})]
    receiver = Receiver(answer=lambda n: answers[n] if n < len(answers) else (204, {}))
    await receiver.listen()
    stack = await start_stack(tmp_path)
    stack.daemon.delivery.next_delay = _fast
    try:
        job = await stack.submit(chat("llama3.2"), webhook_url=receiver.url)
        await stack.wait_job(job["id"])
        await until(lambda: len(receiver.ok()) == 4, timeout=20)
        first, second = receiver.deliveries[0], receiver.deliveries[1]
        assert first.status == 503
        assert second.at - first.at >= 0.9  # waited for Retry-After, not the 50 ms schedule
        assert second.status == 302
        assert receiver.deliveries[2].headers["webhook-id"] == first.headers["webhook-id"]
        assert receiver.types() == STATES
    finally:
        await stack.stop()
        await receiver.close()


@pytest_twisted.ensureDeferred
async def test_private_webhook_urls_refused_unless_allowed(tmp_path: Path) -> None:
    stack = await start_stack(tmp_path, webhook_allow_private=False)
    try:
        for url in ("http://127.0.0.1:9/x", "http://localhost/x", "http://10.1.2.3/x"):
            response = await stack.post("/jobs", {"request": chat("m"), "webhook_url": url})
            assert response.status == 400, url
            assert response.json()["error"]["code"] == "invalid_webhook_url"
        assert (await stack.get("/jobs")).json()["data"] == []
    finally:
        await stack.stop()


@pytest_twisted.ensureDeferred
async def test_sse_mid_job_and_resume(tmp_path: Path) -> None:
    import treq

    from foreman.core.framing import SSEDecoder
    from foreman.testing import OllamaSimulator

    sim = OllamaSimulator(models=("llama3.2",), token_rate=40.0, load_time=0.2)
    stack = await start_stack(tmp_path, sim=sim)
    try:
        job = await stack.submit(chat("llama3.2", options={"num_predict": 20}))
        await until(lambda: stack.daemon.runner.phase == "working")

        async def read_events(headers: dict[bytes | str, list[bytes | str]]) -> list[Any]:
            response = await treq.get(
                f"{stack.url}/jobs/{job['id']}/events", headers=headers, pool=stack.pool
            )
            assert response.code == 200
            assert response.headers.getRawHeaders(b"content-type")[0].startswith(
                b"text/event-stream"
            )
            decoder = SSEDecoder()
            events: list[Any] = []
            await treq.collect(response, lambda data: events.extend(decoder.feed(data)))
            return events

        live = await read_events({})
        state_events = [e for e in live if e.event != "job.progress"]
        assert [e.event for e in state_events] == STATES
        assert [int(e.id) for e in state_events] == [1, 2, 3, 4]
        assert any(e.event == "job.progress" for e in live)

        resumed = await read_events({"Last-Event-ID": ["2"]})
        assert [e.event for e in resumed] == ["job.working", "job.done"]
        after_end = await read_events({"Last-Event-ID": ["4"]})
        assert after_end == []
    finally:
        await stack.stop()


def _texts(logged: list[LogEvent], level: LogLevel | None = None) -> list[str]:
    return [formatEvent(e) for e in logged if level is None or e.get("log_level") is level]


def _retry_warnings(logged: list[LogEvent]) -> list[LogEvent]:
    """Warnings about a failed attempt that will be retried (not the final give-up)."""
    return [
        e
        for e in logged
        if e.get("log_level") is LogLevel.warn and "next attempt" in formatEvent(e)
    ]


def _every(seconds: float, attempts: int) -> Any:
    def delay(made: int, rng: random.Random, retry_after: float | None) -> float | None:
        return None if made >= attempts else seconds

    return delay


@pytest_twisted.ensureDeferred
async def test_deliveries_log_no_connection_factory_noise(
    tmp_path: Path, logged: list[LogEvent]
) -> None:
    receiver = Receiver()
    await receiver.listen()
    stack = await start_stack(tmp_path)
    own_client = f"<HostnameEndpoint 127.0.0.1:{stack.url.rsplit(':', 1)[1]}>"
    try:
        job = await stack.submit(chat("llama3.2"), webhook_url=receiver.url)
        await stack.wait_job(job["id"])
        await until(lambda: len(receiver.ok()) == 4)
        await until(lambda: stack.daemon.delivery.delivered == 4)
    finally:
        await stack.stop()
        await receiver.close()
    noise = [
        t
        for t in _texts(logged)
        if ("Starting factory" in t or "Stopping factory" in t) and own_client not in t
    ]
    assert noise == []


@pytest_twisted.ensureDeferred
async def test_refusing_receiver_warns_once_naming_job_and_url(
    tmp_path: Path, logged: list[LogEvent]
) -> None:
    receiver = Receiver()
    await receiver.listen()
    port = receiver.port_number
    url = receiver.url + "?token=s3cret-token"
    await receiver.close()  # connection refused from now on
    stack = await start_stack(tmp_path)
    delivery = stack.daemon.delivery
    delivery.next_delay = _fast
    try:
        job = await stack.submit(chat("llama3.2"), webhook_url=url)
        await stack.wait_job(job["id"])
        await until(lambda: delivery.attempts >= 4)
        warnings = _texts(_retry_warnings(logged))
        assert len(warnings) == 1, warnings
        (warning,) = warnings
        assert job["id"] in warning
        assert "job.queued" in warning
        assert f"http://127.0.0.1:{port}/hook" in warning
        assert "refused" in warning.lower()
        assert "next attempt" in warning
        assert all("s3cret-token" not in t for t in _texts(logged))
        assert all("s3cret-token" not in repr(e) for e in logged)
    finally:
        await stack.stop()


@pytest_twisted.ensureDeferred
async def test_failing_receiver_warns_again_after_the_window_with_a_count(
    tmp_path: Path, logged: list[LogEvent]
) -> None:
    receiver = Receiver(answer=lambda n: (503, {}))
    await receiver.listen()
    stack = await start_stack(tmp_path)
    delivery = stack.daemon.delivery
    delivery.next_delay = _every(0.1, attempts=30)
    delivery.alerts = FailureAlerts(interval=0.45)
    try:
        job = await stack.submit(chat("llama3.2"), webhook_url=receiver.url)
        await until(lambda: len(_retry_warnings(logged)) >= 2, timeout=10)
        first, second = _retry_warnings(logged)[:2]
        assert "HTTP 503" in formatEvent(first) and job["id"] in formatEvent(first)
        assert "suppressed" not in formatEvent(first)
        # 100 ms apart in a 450 ms window: attempts went unlogged (three on an idle
        # machine; a loaded one spaces the attempts out, so fewer)
        assert second["suppressed"] >= 1
        assert second["suppressed"] <= len(receiver.deliveries) - 2
        assert f"{second['suppressed']} more failures" in formatEvent(second)
        assert "suppressed" in formatEvent(second)
        assert second["log_time"] - first["log_time"] >= 0.4
    finally:
        await stack.stop()
        await receiver.close()


@pytest_twisted.ensureDeferred
async def test_receiver_recovery_is_logged_once(tmp_path: Path, logged: list[LogEvent]) -> None:
    answers: Any = iter([(500, {}), (500, {})])
    receiver = Receiver(answer=lambda n: next(answers, (204, {})))
    await receiver.listen()
    stack = await start_stack(tmp_path)
    stack.daemon.delivery.next_delay = _fast
    try:
        job = await stack.submit(chat("llama3.2"), webhook_url=receiver.url)
        await stack.wait_job(job["id"])
        await until(lambda: len(receiver.ok()) == 4, timeout=20)
        recovered = [t for t in _texts(logged, LogLevel.info) if "reachable again" in t]
        assert len(recovered) == 1, recovered
        assert receiver.url in recovered[0]
        assert "2 failed attempts" in recovered[0]
        assert len(_retry_warnings(logged)) == 1
    finally:
        await stack.stop()
        await receiver.close()


@pytest_twisted.ensureDeferred
async def test_generated_secret_is_never_logged(tmp_path: Path, logged: list[LogEvent]) -> None:
    receiver = Receiver()
    await receiver.listen()
    stack = await start_stack(tmp_path)
    try:
        job = await stack.submit(chat("llama3.2"), webhook_url=receiver.url)
        await stack.wait_job(job["id"])
        await until(lambda: len(receiver.ok()) == 4)
        secret = _secret(stack)
        path = str(stack.daemon.config.data_dir / "webhook-secret")
    finally:
        await stack.stop()
        await receiver.close()
    assert secret.startswith("whsec_")
    assert all(secret not in repr(e) for e in logged)
    assert all(secret not in t for t in _texts(logged))
    # the key alone (without whsec_) is just as secret
    assert all(secret.removeprefix("whsec_") not in repr(e) for e in logged)
    assert any(path in t for t in _texts(logged))
