"""The reverse proxy, end to end: Daemon in front of the simulator (or a target of our own)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest_twisted
from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred, fail, succeed

from foreman.testing import Fault, OllamaSimulator
from foreman.work.admission import ImmediateAdmission, InferenceCall, QueueFull, Slot
from tests.test_proxy_support import (
    EchoUpstream,
    Http,
    RawStream,
    post_bytes,
    raw_request,
    running,
    wait_until,
)

reactor: Any = _reactor

CHAT = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}], "stream": False}


def _json(body: bytes) -> Any:
    return json.loads(body)


def seen_by_target(sim: OllamaSimulator, path: str | None = None) -> list[Any]:
    """Requests the simulator got from clients through foreman (not the monitor's probes)."""
    return [
        r
        for r in sim.requests
        if r.headers.get("user-agent") != "foreman-monitor" and path in (None, r.path)
    ]


class _Slot:
    def __init__(self, wait_ms: float) -> None:
        self.queue_wait_ms = wait_ms
        self.target_wait_ms = 0.0
        self.waiting = False
        self.released = 0
        self.outcomes: list[tuple[int, float | None]] = []
        self.on_lost: Any = None

    def outcome(self, code: int, load_seconds: float | None) -> None:
        self.outcomes.append((code, load_seconds))

    def release(self) -> None:
        self.released += 1


class RecordingAdmission:
    """Admits at once with a slot that counts releases; remembers every call."""

    def __init__(self, wait_ms: float = 0.0) -> None:
        self.calls: list[InferenceCall] = []
        self.slots: list[_Slot] = []
        self.wait_ms = wait_ms

    def admit(self, call: InferenceCall) -> Deferred[Slot]:
        self.calls.append(call)
        slot = _Slot(self.wait_ms)
        self.slots.append(slot)
        return succeed(slot)


class NeverAdmission:
    """Keeps every call waiting; records cancellations."""

    def __init__(self) -> None:
        self.calls: list[InferenceCall] = []
        self.cancelled = 0

    def admit(self, call: InferenceCall) -> Deferred[Slot]:
        self.calls.append(call)

        def cancel(_: Deferred[Slot]) -> None:
            self.cancelled += 1

        return Deferred(cancel)


class FullAdmission:
    def admit(self, call: InferenceCall) -> Deferred[Slot]:
        return fail(QueueFull(7))


# -- foreman's own answers -----------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_root_is_answered_by_foreman(tmp_path: Path) -> None:
    async with running(tmp_path) as (daemon, sim):
        assert sim is not None
        status, head, body = await raw_request(daemon.url, "GET", "/")
        assert (status, body) == (200, b"Ollama is running")
        assert head[b"content-type"].startswith(b"text/plain")
        status, head, body = await raw_request(daemon.url, "HEAD", "/")
        assert status == 200 and body == b""
        assert head[b"content-length"] == b"17"
        assert seen_by_target(sim) == []


@pytest_twisted.ensureDeferred
async def test_inference_input_errors_use_each_family_shape(tmp_path: Path) -> None:
    async with running(tmp_path) as (daemon, sim):
        assert sim is not None
        status, _, body = await raw_request(daemon.url, "POST", "/api/chat", b"{not json")
        assert status == 400 and isinstance(_json(body)["error"], str)
        status, _, body = await raw_request(
            daemon.url, "POST", "/v1/chat/completions", b'{"messages": []}'
        )
        assert status == 400
        assert "model" in _json(body)["error"]["message"]
        assert _json(body)["error"]["type"] == "invalid_request_error"
        status, _, body = await raw_request(
            daemon.url,
            "POST",
            "/api/generate",
            json.dumps({"model": "llama3.2"}).encode(),
            {"X-Foreman-Priority": "high"},
        )
        assert status == 400 and "X-Foreman-Priority" in _json(body)["error"]
        assert seen_by_target(sim) == []


@pytest_twisted.ensureDeferred
async def test_body_over_limit_is_413_on_inference_route(tmp_path: Path) -> None:
    async with running(tmp_path, max_body=2048) as (daemon, sim):
        assert sim is not None
        big = dict(CHAT, messages=[{"role": "user", "content": "x" * 4096}])
        status, _, body = await raw_request(
            daemon.url, "POST", "/api/chat", json.dumps(big).encode()
        )
        assert status == 413 and isinstance(_json(body)["error"], str)
        assert seen_by_target(sim, "/api/chat") == []


# -- relaying --------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_non_streaming_chat_keeps_length_and_reports_queue_wait(tmp_path: Path) -> None:
    async with running(tmp_path) as (daemon, sim):
        assert sim is not None
        status, head, body = await raw_request(
            daemon.url, "POST", "/api/chat", json.dumps(CHAT).encode()
        )
        assert status == 200, body
        reply = _json(body)
        assert reply["done"] is True and reply["message"]["role"] == "assistant"
        assert head[b"content-length"] == str(len(body)).encode()
        assert b"x-accel-buffering" not in head
        assert b"server" not in head  # the target's headers, not twisted.web's
        assert int(head[b"x-foreman-queue-wait-ms"]) >= 0

        # metadata: HEAD gets the GET's length and no body
        _, get_head, tags = await raw_request(daemon.url, "GET", "/api/tags")
        status, head, body = await raw_request(daemon.url, "HEAD", "/api/tags")
        assert (status, body) == (200, b"")
        assert head[b"content-length"] == get_head[b"content-length"] == str(len(tags)).encode()


@pytest_twisted.ensureDeferred
async def test_streaming_chat_is_chunked_and_unbuffered(tmp_path: Path) -> None:
    async with running(tmp_path) as (daemon, sim):
        assert sim is not None
        status, head, body = await raw_request(
            daemon.url, "POST", "/api/chat", json.dumps(dict(CHAT, stream=True)).encode()
        )
        assert status == 200
        assert head[b"transfer-encoding"] == b"chunked"
        assert head[b"x-accel-buffering"] == b"no"
        assert head[b"content-type"] == b"application/x-ndjson"
        lines = [_json(line) for line in body.splitlines()]
        assert len(lines) == sim.reply_tokens + 1 and lines[-1]["done"] is True
        assert b"\n\n" not in body  # no blank keep-alive lines


@pytest_twisted.ensureDeferred
async def test_hop_by_hop_headers_dropped_host_rewritten_body_exact(tmp_path: Path) -> None:
    async with running(tmp_path) as (daemon, sim):
        assert sim is not None
        body = json.dumps(CHAT).encode()
        status, _, _ = await raw_request(
            daemon.url,
            "POST",
            "/api/chat?trace=1&x=%20y",
            body,
            {
                "Connection": "keep-alive, X-Drop-Me",
                "X-Drop-Me": "1",
                "Keep-Alive": "timeout=5",
                "Proxy-Authorization": "Basic eA==",
                "TE": "trailers",
                "Authorization": "Bearer client-token",
                "X-Foreman-Priority": "3",
                "X-Keep": "yes",
                "User-Agent": "ollama-python/0.4",
            },
        )
        assert status == 200
        (seen,) = seen_by_target(sim, "/api/chat")
        headers = seen.headers
        for gone in (
            "connection",
            "x-drop-me",
            "keep-alive",
            "proxy-authorization",
            "te",
            "authorization",
            "x-foreman-priority",
            "transfer-encoding",
        ):
            assert gone not in headers, gone
        assert headers["x-keep"] == "yes"
        assert headers["user-agent"] == "ollama-python/0.4"
        assert headers["host"] == sim.url.split("://", 1)[1]
        assert headers["content-length"] == str(len(body))
        assert seen.body == body
        assert seen.query == "trace=1&x=%20y"


@pytest_twisted.ensureDeferred
async def test_repeated_response_headers_and_bodies_pass_unchanged(tmp_path: Path) -> None:
    echo = EchoUpstream()
    await echo.listen()
    http = Http()
    try:
        async with running(tmp_path, target_url=echo.url) as (daemon, _):
            response, body = await http.request("GET", daemon.url + "/echo/x?a=1&a=2&b=%2F")
            assert response.code == 200
            assert response.headers.getRawHeaders(b"set-cookie") == [b"a=1", b"b=2"]
            assert response.headers.getRawHeaders(b"x-multi") == [b"one", b"two"]
            assert response.headers.getRawHeaders(b"keep-alive") is None
            seen = _json(body)
            assert seen["uri"] == "/echo/x?a=1&a=2&b=%2F"
            assert seen["method"] == "GET"

            # bodies: small (one write), large (streamed from the spool file)
            for size in (10_000, 3 * 1024 * 1024):
                payload = bytes(range(256)) * (size // 256)
                response, body = await http.request(
                    "PUT", daemon.url + "/api/blobs/sha256:abc", payload
                )
                seen = _json(body)
                assert seen["method"] == "PUT"
                assert seen["body_length"] == len(payload)
                assert seen["headers"]["content-length"] == [str(len(payload))]
                import hashlib

                assert seen["body_sha"] == hashlib.sha256(payload).hexdigest()

            # a chunked request body reaches the target with a Content-Length
            chunked = (
                b"POST /api/show HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                b"Content-Type: application/json\r\n\r\n"
                b'5\r\n{"a":\r\n3\r\n 1}\r\n0\r\n\r\n'
            )
            status, _, body = await raw_request(daemon.url, "POST", "", raw=chunked)
            seen = _json(body)
            assert status == 200
            assert seen["body_length"] == 8
            assert seen["headers"]["content-length"] == ["8"]
            assert "transfer-encoding" not in seen["headers"]
    finally:
        await http.close()
        await echo.close()


@pytest_twisted.ensureDeferred
async def test_unknown_model_gets_the_targets_own_404(tmp_path: Path) -> None:
    async with running(tmp_path) as (daemon, sim):
        assert sim is not None
        daemon.proxy.admission = ImmediateAdmission()  # type: ignore[union-attr]
        status, _, body = await raw_request(
            daemon.url, "POST", "/api/chat", json.dumps(dict(CHAT, model="nope")).encode()
        )
        assert status == 404
        assert "not found" in _json(body)["error"]
        assert [r.model for r in seen_by_target(sim, "/api/chat")] == ["nope"]


@pytest_twisted.ensureDeferred
async def test_target_errors_are_relayed_as_they_are(tmp_path: Path) -> None:
    async with running(tmp_path) as (daemon, sim):
        assert sim is not None
        daemon.proxy.admission = ImmediateAdmission()  # type: ignore[union-attr]
        sim.inject(Fault.HTTP_500)
        status, _, body = await raw_request(
            daemon.url, "POST", "/api/chat", json.dumps(CHAT).encode()
        )
        assert status == 500 and "error" in _json(body)
        sim.inject(Fault.ERROR_MID_STREAM)
        status, _, body = await raw_request(
            daemon.url, "POST", "/api/chat", json.dumps(dict(CHAT, stream=True)).encode()
        )
        assert status == 200
        lines = [_json(line) for line in body.splitlines()]
        assert "error" in lines[-1] and len(lines) > 1


# -- admission -------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_every_inference_request_goes_through_admission(tmp_path: Path) -> None:
    async with running(tmp_path) as (daemon, sim):
        assert sim is not None
        admission = RecordingAdmission(wait_ms=12.4)
        daemon.proxy.admission = admission  # type: ignore[union-attr]
        status, head, _ = await raw_request(
            daemon.url,
            "POST",
            "/v1/chat/completions",
            json.dumps(dict(CHAT, stream=True)).encode(),
            {"X-Foreman-Priority": "-3"},
        )
        assert status == 200
        assert head[b"x-foreman-queue-wait-ms"] == b"12"
        await raw_request(daemon.url, "POST", "/api/embed", b'{"model": "m", "input": "x"}')
        await raw_request(daemon.url, "GET", "/api/tags")  # metadata: not admitted
        first, second = admission.calls
        assert (first.model, first.priority, first.path, first.stream) == (
            "llama3.2",
            -3,
            "/v1/chat/completions",
            True,
        )
        assert (second.model, second.priority, second.stream) == ("m", 10, False)
        await wait_until(lambda: all(s.released == 1 for s in admission.slots))


@pytest_twisted.ensureDeferred
async def test_queue_full_is_503_with_retry_after(tmp_path: Path) -> None:
    async with running(tmp_path) as (daemon, sim):
        assert sim is not None
        daemon.proxy.admission = FullAdmission()  # type: ignore[union-attr]
        status, head, body = await raw_request(
            daemon.url, "POST", "/api/chat", json.dumps(CHAT).encode()
        )
        assert status == 503 and head[b"retry-after"] == b"7"
        assert isinstance(_json(body)["error"], str)
        status, head, body = await raw_request(
            daemon.url, "POST", "/v1/embeddings", b'{"model": "m", "input": "x"}'
        )
        assert status == 503 and _json(body)["error"]["type"] == "server_error"
        assert seen_by_target(sim) == []


@pytest_twisted.ensureDeferred
async def test_client_leaving_while_queued_cancels_its_admission(tmp_path: Path) -> None:
    async with running(tmp_path) as (daemon, sim):
        assert sim is not None
        admission = NeverAdmission()
        daemon.proxy.admission = admission  # type: ignore[union-attr]
        client = await RawStream.open(daemon.url, post_bytes("/api/chat", CHAT))
        await wait_until(lambda: len(admission.calls) == 1)
        assert client.data == b""  # no headers while queued
        client.abort()
        await wait_until(lambda: admission.cancelled == 1, timeout=1.0)
        assert seen_by_target(sim, "/api/chat") == []


@pytest_twisted.ensureDeferred
async def test_client_leaving_before_headers_cancels_upstream_request(tmp_path: Path) -> None:
    sim = OllamaSimulator(token_rate=50.0, load_time=3.0)
    async with running(tmp_path, sim=sim) as (daemon, _):
        admission = RecordingAdmission()
        daemon.proxy.admission = admission  # type: ignore[union-attr]
        client = await RawStream.open(daemon.url, post_bytes("/api/chat", CHAT))
        await sim.wait_for(lambda: sim.loading is not None, timeout=5)
        client.abort()
        started = reactor.seconds()
        await sim.wait_for(lambda: len(sim.disconnects) == 1, timeout=1.0)
        assert sim.disconnects[0].phase == "waiting"
        assert reactor.seconds() - started < 1.0
        await wait_until(lambda: admission.slots[0].released == 1, timeout=1.0)


@pytest_twisted.ensureDeferred
async def test_client_leaving_mid_stream_closes_upstream_within_a_second(tmp_path: Path) -> None:
    sim = OllamaSimulator(token_rate=20.0, load_time=0.0, reply_tokens=200)
    async with running(tmp_path, sim=sim) as (daemon, _):
        admission = RecordingAdmission()
        daemon.proxy.admission = admission  # type: ignore[union-attr]
        client = await RawStream.open(daemon.url, post_bytes("/api/chat", dict(CHAT, stream=True)))
        await client.seen(b'"done":false')
        client.abort()
        started = reactor.seconds()
        await sim.wait_for(lambda: len(sim.disconnects) == 1, timeout=1.0)
        assert reactor.seconds() - started < 1.0
        assert sim.disconnects[0].phase == "streaming"
        await wait_until(lambda: admission.slots[0].released == 1, timeout=1.0)
        assert sim.completed == 0


@pytest_twisted.ensureDeferred
async def test_target_cutting_a_stream_drops_the_client_connection(tmp_path: Path) -> None:
    echo = EchoUpstream()
    await echo.listen()
    try:
        async with running(tmp_path, target_url=echo.url) as (daemon, _):
            request = b"GET /cut HTTP/1.1\r\nHost: x\r\n\r\n"  # keep-alive: only a cut ends it
            client = await RawStream.open(daemon.url, request)
            await wait_until(lambda: client.closed.called, timeout=5)
            head, _, body = client.data.partition(b"\r\n\r\n")
            assert b"200 OK" in head and b"chunked" in head.lower()
            assert b'{"n": 2}' in body
            assert not body.endswith(b"0\r\n\r\n")  # never finished as if complete
    finally:
        await echo.close()


@pytest_twisted.ensureDeferred
async def test_target_reset_mid_stream_is_not_reported_complete(tmp_path: Path) -> None:
    sim = OllamaSimulator(token_rate=100.0, load_time=0.0, reply_tokens=50)
    async with running(tmp_path, sim=sim) as (daemon, _):
        daemon.proxy.admission = ImmediateAdmission()  # type: ignore[union-attr]
        sim.inject(Fault.RESET)
        client = await RawStream.open(
            daemon.url,
            post_bytes("/api/chat", dict(CHAT, stream=True)).replace(b"Connection: close\r\n", b""),
        )
        await wait_until(lambda: client.closed.called, timeout=5)
        head, _, body = client.data.partition(b"\r\n\r\n")
        assert b"200 OK" in head and b'"done":false' in body
        assert not body.endswith(b"0\r\n\r\n")
        assert b'"done":true' not in body


# -- target down -----------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_target_down_stale_metadata_and_clear_errors(tmp_path: Path) -> None:
    async with running(tmp_path) as (daemon, sim):
        assert sim is not None and daemon.monitor is not None
        monitor = daemon.monitor
        await wait_until(
            lambda: b"/api/tags" in monitor.cached and b"/api/version" in monitor.cached
        )
        daemon.proxy.admission = ImmediateAdmission()  # type: ignore[union-attr]
        _, _, fresh_tags = await raw_request(daemon.url, "GET", "/api/tags")
        await sim.sleep(refuse=True)

        status, head, body = await raw_request(daemon.url, "GET", "/api/tags")
        assert (status, head.get(b"x-foreman-stale")) == (200, b"1")
        assert _json(body)["models"] == _json(fresh_tags)["models"]
        status, head, body = await raw_request(daemon.url, "GET", "/api/version")
        assert (status, head.get(b"x-foreman-stale")) == (200, b"1")
        assert "version" in _json(body)

        status, _, body = await raw_request(daemon.url, "GET", "/api/ps")
        assert status == 502 and "unreachable" in _json(body)["error"]
        status, _, body = await raw_request(daemon.url, "GET", "/v1/models")
        assert status == 502 and "unreachable" in _json(body)["error"]["message"]
        status, _, body = await raw_request(
            daemon.url, "POST", "/api/chat", json.dumps(CHAT).encode()
        )
        assert status == 502 and "unreachable" in _json(body)["error"]
        await wait_until(lambda: monitor.state == "down")

        await sim.wake()
        await wait_until(lambda: monitor.state == "up", timeout=10)
        status, head, _ = await raw_request(daemon.url, "GET", "/api/tags")
        assert status == 200 and b"x-foreman-stale" not in head


@pytest_twisted.ensureDeferred
async def test_status_reports_what_the_monitor_sees(tmp_path: Path) -> None:
    http = Http()
    try:
        async with running(tmp_path) as (daemon, sim):
            assert sim is not None and daemon.monitor is not None
            await raw_request(daemon.url, "POST", "/api/chat", json.dumps(CHAT).encode())
            daemon.monitor.poke()
            await wait_until(
                lambda: daemon.monitor is not None and bool(daemon.monitor.loaded_models)
            )
            _, body = await http.request("GET", daemon.url + "/status")
            target = _json(body)["target"]
            assert target["state"] == "up"
            assert target["loaded_models"] == ["llama3.2:latest"]
            assert target["version"] and target["last_seen"].endswith("Z")
    finally:
        await http.close()


class _OrderSlot(_Slot):
    """A slot that notes, at its release, whether the client's answer had started out."""

    def __init__(self, waiting: bool) -> None:
        self.exchange: Any = None
        super().__init__(0.0)
        self.waiting = waiting
        self.answered_first: bool | None = None

    @property  # type: ignore[override]
    def on_lost(self) -> Any:
        return self._on_lost

    @on_lost.setter
    def on_lost(self, value: Any) -> None:
        self._on_lost = value
        if value is not None:
            self.exchange = value.__self__  # the relay registers its bound method

    def release(self) -> None:
        self.answered_first = bool(self.exchange.request.startedWriting)
        assert self.on_lost is None  # dropped first: no cycle left behind
        super().release()


@pytest_twisted.ensureDeferred
async def test_a_small_answer_goes_out_before_the_release_only_when_nothing_waits(
    tmp_path: Path,
) -> None:
    """ADR 0021 releases the worker before a small answer's bytes so the next request
    leaves first; with nothing waiting there is no next request, and the client's bytes
    go first (the worker's bookkeeping follows them)."""
    sim = OllamaSimulator(load_time=0.0)
    http = Http()
    try:
        async with running(tmp_path, sim=sim) as (daemon, _):
            for waiting in (False, True):
                slot = _OrderSlot(waiting)
                admission: Any = RecordingAdmission()
                admission.admit = lambda call, slot=slot: succeed(slot)
                daemon.proxy.admission = admission  # type: ignore[union-attr]
                response, body = await http.request(
                    "POST", daemon.url + "/api/chat", json.dumps(CHAT).encode()
                )
                assert response.code == 200
                assert _json(body)["done"] is True
                assert slot.released == 1
                assert slot.outcomes and slot.outcomes[0][0] == 200
                assert slot.answered_first is (not waiting)
    finally:
        await http.close()
