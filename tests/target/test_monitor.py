"""The target monitor over an in-memory IAgent, on a task.Clock.

The fake agent answers ``GET /api/version``, ``/api/ps`` and ``/api/tags``
from a table, refuses, or hangs (headers or body) as a test needs; responses
deliver their bodies synchronously through ``deliverBody``, which is how
``treq.content`` (used by the monitor) reads them. No reactor runs.
"""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.logger import LogEvent
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IAgent, IBodyProducer
from zope.interface import implementer

from foreman.target.monitor import CachedBody, TargetMonitor, TargetSnapshot
from tests.deferreds import failure_of, result_of

BASE = "http://target.test:11434"
VERSION = {"version": "0.5.7"}
PS = {
    "models": [
        {"name": "llama3:latest", "size": 1},
        {"model": "qwen2:7b"},
        {"name": ""},  # nameless: skipped
        "junk",  # not an object: skipped
    ]
}
TAGS = {"models": [{"name": "llama3:latest"}, {"name": "qwen2:7b"}]}
JSON_UTF8 = b"application/json; charset=utf-8"


# -- helpers ---------------------------------------------------------------


class FixedRandom(random.Random):
    """Every draw is ``r``: the jitter is known."""

    def __init__(self, r: float) -> None:
        super().__init__(0)
        self.r = r

    def random(self) -> float:
        return self.r


class FakeTransport:
    def __init__(self) -> None:
        self.closed = False

    def loseConnection(self) -> None:
        self.closed = True

    def stopProducing(self) -> None:
        self.closed = True


class FakeResponse:
    def __init__(
        self, code: int, body: bytes, content_type: bytes | None, *, hang_body: bool = False
    ) -> None:
        self.code = code
        self.phrase = b"X"
        self.version = (b"HTTP", 1, 1)
        self.headers = Headers()
        if content_type is not None:
            self.headers.setRawHeaders(b"content-type", [content_type])
        self.length: int | object = UNKNOWN_LENGTH if hang_body else len(body)
        self.body = body
        self.hang_body = hang_body
        self.transport = FakeTransport()
        self.protocol: Protocol | None = None

    def deliverBody(self, protocol: Protocol) -> None:
        self.protocol = protocol
        protocol.makeConnection(self.transport)
        if self.hang_body:
            return
        protocol.dataReceived(self.body)
        protocol.connectionLost(Failure(ResponseDone()))


class Request:
    def __init__(self, method: bytes, uri: bytes, headers: Headers | None, at: float) -> None:
        self.method = method
        self.uri = uri
        self.headers = headers
        self.at = at
        self.cancelled = False
        self.deferred: Deferred[Any] | None = None
        self.response: FakeResponse | None = None

    @property
    def path(self) -> bytes:
        return self.uri.removeprefix(BASE.encode())


@implementer(IAgent)
class FakeAgent:
    """Answers from ``answers`` (path -> (code, body, content type)) unless told otherwise.

    ``mode``: "answer", "refuse" (connection refused at once), "hang" (no
    response until the test fires ``request.deferred``), "hang_body"
    (headers, then a body that never ends).
    """

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.mode = "answer"
        self.requests: list[Request] = []
        self.answers: dict[bytes, tuple[int, bytes, bytes | None]] = {}
        self.set(b"/api/version", VERSION)
        self.set(b"/api/ps", PS)
        self.set(b"/api/tags", TAGS, JSON_UTF8)

    def set(self, path: bytes, body: Any, content_type: bytes | None = b"application/json") -> None:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.answers[path] = (200, raw, content_type)

    def answer(self, request: Request) -> FakeResponse:
        code, body, content_type = self.answers.get(request.path, (404, b"{}", None))
        return FakeResponse(code, body, content_type, hang_body=self.mode == "hang_body")

    def request(
        self,
        method: bytes,
        uri: bytes,
        headers: Headers | None = None,
        bodyProducer: IBodyProducer | None = None,
    ) -> Deferred[Any]:
        req = Request(method, uri, headers, self.clock.seconds())
        self.requests.append(req)
        if self.mode == "refuse":
            return fail(ConnectionRefusedError("refused"))
        if self.mode == "hang":

            def cancel(_: Deferred[Any]) -> None:
                req.cancelled = True

            req.deferred = Deferred(cancel)
            return req.deferred
        req.response = self.answer(req)
        return succeed(req.response)

    @property
    def paths(self) -> list[bytes]:
        return [r.path for r in self.requests]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def agent(clock: Clock) -> FakeAgent:
    return FakeAgent(clock)


def make(
    clock: Clock, agent: FakeAgent, token: str | None = "s3cret", *, r: float = 0.0, **kw: Any
) -> TargetMonitor:
    return TargetMonitor(clock, BASE + "/", token, agent, rng=FixedRandom(r), **kw)


def timers(clock: Clock) -> list[float]:
    return sorted(c.getTime() for c in clock.getDelayedCalls())


ONE_PROBE = [b"/api/version", b"/api/ps", b"/api/tags"]


# -- start and a good probe ------------------------------------------------------


def test_nothing_happens_before_start_and_the_first_probe_goes_out_at_start(
    clock: Clock, agent: FakeAgent
) -> None:
    agent.mode = "hang"
    monitor = make(clock, agent)
    assert agent.requests == []
    assert clock.getDelayedCalls() == []
    assert monitor.state == "unknown"

    monitor.start()
    assert [(r.method, r.uri) for r in agent.requests] == [
        (b"GET", BASE.encode() + b"/api/version")
    ]
    assert monitor.probes == 1
    assert monitor.state == "unknown"
    assert timers(clock) == [3.0]  # the probe timeout
    monitor.start()  # idempotent
    assert len(agent.requests) == 1
    monitor.stop()


def test_the_probe_carries_the_token_and_a_user_agent(clock: Clock, agent: FakeAgent) -> None:
    make(clock, agent, "s3cret").start()
    for req in agent.requests:
        assert req.headers is not None
        assert req.headers.getRawHeaders(b"authorization") == [b"Bearer s3cret"]
        assert req.headers.getRawHeaders(b"user-agent") == [b"foreman-monitor"]


@pytest.mark.parametrize("token", [None, ""])
def test_no_token_no_authorization_header(
    clock: Clock, agent: FakeAgent, token: str | None
) -> None:
    make(clock, agent, token).start()
    assert agent.requests
    for req in agent.requests:
        assert req.headers is not None
        assert not req.headers.hasHeader(b"authorization")


def test_a_good_probe_reads_version_loaded_models_and_caches_metadata(
    clock: Clock, agent: FakeAgent
) -> None:
    monitor = make(clock, agent)
    seen: list[TargetSnapshot] = []
    monitor.subscribe(seen.append)
    monitor.start()

    assert agent.paths == ONE_PROBE
    assert {r.method for r in agent.requests} == {b"GET"}
    assert monitor.state == "up"
    assert monitor.version == "0.5.7"
    assert monitor.loaded_models == ("llama3:latest", "qwen2:7b")
    assert monitor.last_seen is not None
    assert monitor.consecutive_failures == 0
    assert monitor.cached == {
        b"/api/version": CachedBody(json.dumps(VERSION).encode(), b"application/json"),
        b"/api/tags": CachedBody(json.dumps(TAGS).encode(), JSON_UTF8),
    }
    snap = TargetSnapshot("up", ("llama3:latest", "qwen2:7b"), "0.5.7", monitor.last_seen)
    assert monitor.snapshot() == snap
    assert seen == [snap]
    result_of(monitor.when_up())
    monitor.stop()


def test_probes_every_interval_while_up_and_publishes_only_changes(
    clock: Clock, agent: FakeAgent
) -> None:
    monitor = make(clock, agent, interval=5.0)
    seen: list[TargetSnapshot] = []
    monitor.subscribe(seen.append)
    monitor.start()
    assert timers(clock) == [5.0]

    clock.advance(4.9)
    assert len(agent.requests) == 3
    clock.advance(0.1)
    assert agent.paths == ONE_PROBE * 2
    assert [r.at for r in agent.requests[3:]] == [5.0] * 3
    assert monitor.probes == 2
    assert len(seen) == 1, "nothing changed: no notification"
    assert timers(clock) == [10.0]

    agent.set(b"/api/ps", {"models": [{"name": "phi3:mini"}]})
    clock.advance(5.0)
    assert monitor.loaded_models == ("phi3:mini",)
    assert [s.loaded_models for s in seen] == [("llama3:latest", "qwen2:7b"), ("phi3:mini",)]
    monitor.stop()


def test_non_200_answers_keep_what_was_known(clock: Clock, agent: FakeAgent) -> None:
    monitor = make(clock, agent, interval=5.0)
    monitor.start()
    before = dict(monitor.cached)
    for path in ONE_PROBE:
        agent.answers[path] = (500, b'{"version": "9.9", "models": []}', None)

    clock.advance(5.0)
    assert monitor.state == "up", "an answering target is up, whatever it answers"
    assert monitor.version == "0.5.7"
    assert monitor.loaded_models == ("llama3:latest", "qwen2:7b")
    assert monitor.cached == before
    monitor.stop()


@pytest.mark.parametrize(
    ("version_body", "ps_body"),
    [
        (b"not json", b"not json"),
        (b"[1, 2]", b"[1, 2]"),
        (b'{"version": 7}', b'{"models": "none"}'),
        (b"\xff\xfe", b"{}"),
    ],
)
def test_malformed_bodies_are_ignored(
    clock: Clock, agent: FakeAgent, version_body: bytes, ps_body: bytes
) -> None:
    agent.set(b"/api/version", version_body)
    agent.set(b"/api/ps", ps_body)
    agent.answers.pop(b"/api/tags")  # 404
    monitor = make(clock, agent)
    monitor.start()
    assert monitor.state == "up"
    assert monitor.version is None
    assert monitor.loaded_models == ()
    assert set(monitor.cached) == {b"/api/version"}
    monitor.stop()


def test_content_type_defaults_to_json(clock: Clock, agent: FakeAgent) -> None:
    agent.set(b"/api/tags", TAGS, content_type=None)
    monitor = make(clock, agent)
    monitor.start()
    assert monitor.cached[b"/api/tags"].content_type == b"application/json"
    monitor.stop()


# -- failures, backoff, timeouts -------------------------------------------------


@pytest.mark.parametrize("r", [0.0, 0.5, 0.999])
def test_failures_go_down_and_back_off_exponentially_with_jitter(
    clock: Clock, agent: FakeAgent, r: float
) -> None:
    agent.mode = "refuse"
    monitor = make(clock, agent, r=r)
    seen: list[str] = []
    monitor.subscribe(lambda s: seen.append(s.state))
    monitor.start()
    assert monitor.state == "down"
    assert monitor.consecutive_failures == 1

    ceilings = [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    for n, top in enumerate(ceilings, start=1):
        expected = top * (1 - 0.2 * r)  # MONITOR_PROBE: shortened by up to 20 %
        [at] = timers(clock)
        assert at - clock.seconds() == pytest.approx(expected)
        clock.advance(expected)
        assert len(agent.requests) == n + 1, "one probe (its first request) per attempt"
        assert monitor.consecutive_failures == n + 1
    assert monitor.state == "down"
    assert seen == ["down"], "subscribers hear of the change once"
    monitor.stop()


def test_a_custom_delay_gets_the_failure_count_and_the_rng(clock: Clock, agent: FakeAgent) -> None:
    agent.mode = "refuse"
    rng = FixedRandom(0.3)
    calls: list[tuple[int, random.Random]] = []

    def delay(n: int, given: random.Random) -> float:
        calls.append((n, given))
        return 7.0

    monitor = TargetMonitor(clock, BASE, None, agent, rng=rng, delay=delay)
    monitor.start()
    clock.advance(7.0)
    clock.advance(7.0)
    assert calls == [(1, rng), (2, rng), (3, rng)]
    assert [r.at for r in agent.requests] == [0.0, 7.0, 14.0]
    monitor.stop()


def test_a_failing_later_request_fails_the_whole_probe(clock: Clock, agent: FakeAgent) -> None:
    monitor = make(clock, agent)
    monitor.start()  # up, version 0.5.7
    clock.advance(5.0)
    agent.mode = "hang"
    clock.advance(5.0)
    req = agent.requests[-1]
    assert req.path == b"/api/version"
    assert req.deferred is not None
    req.deferred.callback(FakeResponse(200, b'{"version": "0.6.0"}', None))
    assert agent.requests[-1].path == b"/api/ps"
    assert agent.requests[-1].deferred is not None
    agent.requests[-1].deferred.errback(ConnectionRefusedError("gone"))

    assert monitor.state == "down"
    assert monitor.version == "0.5.7", "a failed probe publishes nothing it read"
    assert monitor.consecutive_failures == 1
    monitor.stop()


def test_a_probe_that_never_answers_times_out(
    clock: Clock, agent: FakeAgent, logged: list[LogEvent]
) -> None:
    agent.mode = "hang"
    monitor = make(clock, agent, probe_timeout=3.0)
    monitor.start()
    clock.advance(2.99)
    assert monitor.state == "unknown"
    assert not agent.requests[0].cancelled
    clock.advance(0.01)

    assert agent.requests[0].cancelled, "the timed-out request must be cancelled"
    assert monitor.state == "down"
    assert monitor.consecutive_failures == 1
    assert timers(clock) == [pytest.approx(3.5)]  # backoff from the failure, r = 0
    assert any("unreachable" in e.get("log_format", "") for e in logged)
    clock.advance(0.5)
    assert len(agent.requests) == 2
    monitor.stop()


def test_a_body_that_never_ends_times_out(clock: Clock, agent: FakeAgent) -> None:
    agent.mode = "hang_body"
    monitor = make(clock, agent, probe_timeout=3.0)
    monitor.start()
    assert agent.paths == [b"/api/version"]
    clock.advance(2.99)
    assert monitor.state == "unknown"
    clock.advance(0.01)
    assert monitor.snapshot().state == "down"
    assert agent.paths == [b"/api/version"]
    monitor.stop()


def test_when_up_fires_on_recovery(clock: Clock, agent: FakeAgent) -> None:
    agent.mode = "refuse"
    monitor = make(clock, agent, interval=5.0)
    seen: list[str] = []
    monitor.subscribe(lambda s: seen.append(s.state))
    monitor.start()
    waiting = monitor.when_up()
    gave_up = monitor.when_up()
    assert not waiting.called
    gave_up.cancel()
    failure_of(gave_up).trap(CancelledError)

    clock.advance(0.5)
    assert not waiting.called
    agent.mode = "answer"
    clock.advance(1.0)

    result_of(waiting)
    assert monitor.state == "up"
    assert monitor.consecutive_failures == 0
    assert seen == ["down", "up"]
    assert timers(clock) == [6.5]  # back to the interval
    result_of(monitor.when_up())  # at once while up
    monitor.stop()


# -- poke and mark_down ----------------------------------------------------------


def test_poke_probes_early_but_not_more_often_than_min_poke_interval(
    clock: Clock, agent: FakeAgent
) -> None:
    agent.mode = "refuse"
    monitor = make(clock, agent, min_poke_interval=0.5, delay=lambda n, rng: 100.0)
    monitor.start()
    assert timers(clock) == [100.0]

    clock.advance(0.1)
    monitor.poke()
    assert len(agent.requests) == 1, "too soon after the last probe"
    assert timers(clock) == [pytest.approx(0.5)]
    monitor.poke()
    monitor.poke()
    assert timers(clock) == [pytest.approx(0.5)]

    clock.advance(0.4)
    assert [r.at for r in agent.requests] == [0.0, pytest.approx(0.5)]
    assert timers(clock) == [pytest.approx(100.5)]

    clock.advance(1.0)
    monitor.poke()  # long enough since the last probe: now
    assert [r.at for r in agent.requests][2:] == [pytest.approx(1.5)]
    assert timers(clock) == [pytest.approx(101.5)]
    monitor.stop()


def test_poke_keeps_an_earlier_timer(clock: Clock, agent: FakeAgent) -> None:
    agent.mode = "refuse"
    monitor = make(clock, agent, min_poke_interval=0.5, delay=lambda n, rng: 0.2)
    monitor.start()
    clock.advance(0.1)
    monitor.poke()
    assert timers(clock) == [pytest.approx(0.2)]
    monitor.stop()


def test_poke_does_nothing_while_probing_or_stopped(clock: Clock, agent: FakeAgent) -> None:
    agent.mode = "hang"
    monitor = make(clock, agent)
    monitor.poke()
    assert agent.requests == []
    assert clock.getDelayedCalls() == []

    monitor.start()
    clock.advance(1.0)
    monitor.poke()
    assert len(agent.requests) == 1
    monitor.stop()
    monitor.poke()
    assert len(agent.requests) == 1
    assert clock.getDelayedCalls() == []


def test_mark_down_publishes_down_and_probes_soon(clock: Clock, agent: FakeAgent) -> None:
    monitor = make(clock, agent, interval=5.0, min_poke_interval=0.5)
    seen: list[str] = []
    monitor.subscribe(lambda s: seen.append(s.state))
    monitor.start()
    assert monitor.state == "up"

    clock.advance(0.2)
    monitor.mark_down("connection refused")
    assert monitor.snapshot().state == "down"
    assert monitor.consecutive_failures == 1
    assert monitor.loaded_models == ("llama3:latest", "qwen2:7b"), "what was known is kept"
    assert seen == ["up", "down"]
    assert not monitor.when_up().called
    # the last probe was 0.2 s ago: the re-probe waits for min_poke_interval
    assert timers(clock) == [pytest.approx(0.5)]

    monitor.mark_down("again")  # already down: nothing more
    assert seen == ["up", "down"]
    assert timers(clock) == [pytest.approx(0.5)]

    clock.advance(0.3)
    assert len(agent.requests) == 6
    assert monitor.state == "up"
    assert seen == ["up", "down", "up"]
    monitor.stop()


def test_mark_down_long_after_a_probe_probes_at_once(clock: Clock, agent: FakeAgent) -> None:
    monitor = make(clock, agent, interval=5.0)
    monitor.start()
    clock.advance(2.0)
    agent.mode = "hang"
    monitor.mark_down("refused")
    assert len(agent.requests) == 4
    assert agent.requests[-1].at == 2.0
    monitor.stop()


# -- stop ------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["answer", "refuse", "hang", "hang_body"])
def test_stop_leaves_no_delayed_calls(clock: Clock, agent: FakeAgent, mode: str) -> None:
    agent.mode = mode
    monitor = make(clock, agent)
    monitor.start()
    state = monitor.state
    assert clock.getDelayedCalls() != []

    monitor.stop()
    assert clock.getDelayedCalls() == []
    assert monitor.state == state, "stopping is no verdict on the target"
    if mode == "hang":
        assert agent.requests[0].cancelled
    sent = len(agent.requests)
    clock.advance(1000.0)
    assert len(agent.requests) == sent

    monitor.start()  # and it can start again
    assert len(agent.requests) > sent
    monitor.stop()
    assert clock.getDelayedCalls() == []


def test_subscribers_can_leave_and_a_failing_one_does_not_stop_the_others(
    clock: Clock, agent: FakeAgent, logged: list[LogEvent]
) -> None:
    monitor = make(clock, agent)
    seen: list[str] = []
    left: list[str] = []

    def broken(_: TargetSnapshot) -> None:
        raise RuntimeError("subscriber bug")

    monitor.subscribe(broken)
    monitor.subscribe(lambda s: seen.append(s.state))
    unsubscribe = monitor.subscribe(lambda s: left.append(s.state))
    unsubscribe()
    unsubscribe()  # twice is harmless

    monitor.start()
    assert seen == ["up"]
    assert left == []
    assert [e["log_failure"].type for e in logged if "log_failure" in e] == [RuntimeError]
    monitor.stop()


def test_mark_down_while_down_does_not_probe(clock: Clock, agent: FakeAgent) -> None:
    agent.mode = "refuse"
    monitor = make(clock, agent, delay=lambda n, rng: 100.0)
    monitor.start()
    clock.advance(10.0)
    monitor.mark_down("refused again")
    assert len(agent.requests) == 1, "already down: the backoff decides the next probe"
    assert timers(clock) == [100.0]
    monitor.stop()
