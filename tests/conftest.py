"""Shared fixtures: the reactor-leak guard every test runs under.

pytest-twisted does not fail a test that leaves a listening port, a
connection or a pending ``callLater`` behind; such a leak passes quietly and
breaks some later test. The autouse ``reactor_leak_guard`` fixture snapshots
the reactor before each test and, after it, gives the reactor a short while to
finish closing what the test closed, then fails the test naming what is left.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any, cast

import pytest
import pytest_twisted
from hypothesis import settings
from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.logger import ILogObserver, LogEvent, globalLogPublisher

from tests.budget import examples

reactor: Any = _reactor

# tests without their own count draw Hypothesis' 100, scaled like the rest
settings.register_profile("foreman", max_examples=examples(100))
settings.load_profile("foreman")

_SETTLE_SECONDS = 3.0


def _selectables() -> set[Any]:
    found = set(reactor.getReaders()) | set(reactor.getWriters())
    # the reactor's own wakers appear once it runs; they are not the test's
    return {s for s in found if not type(s).__name__.endswith("Waker")}


def _describe(thing: Any) -> str:
    try:
        return repr(thing)
    except Exception:  # repr of a half-closed transport may fail
        return object.__repr__(thing)


def _leftovers(before_sel: set[Any], before_calls: set[Any]) -> tuple[list[Any], list[Any]]:
    sel = [s for s in _selectables() - before_sel]
    calls = [c for c in reactor.getDelayedCalls() if c not in before_calls and c.active()]
    return sel, calls


def _settle() -> Deferred[None]:
    return deferLater(reactor, 0.02, lambda: None)


@pytest.fixture(autouse=True)
def reactor_leak_guard(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail the test if it leaves reactor state (ports, connections, timers)."""
    before_sel = _selectables()
    before_calls = set(reactor.getDelayedCalls())
    yield
    deadline = time.monotonic() + _SETTLE_SECONDS
    sel, calls = _leftovers(before_sel, before_calls)
    while (sel or calls) and time.monotonic() < deadline:
        pytest_twisted.blockon(_settle())
        sel, calls = _leftovers(before_sel, before_calls)
    if sel or calls:
        for call in calls:
            call.cancel()
        for s in sel:
            try:
                s.loseConnection()
            except Exception:
                s.stopListening() if hasattr(s, "stopListening") else None
        lines = [f"  selectable: {_describe(s)}" for s in sel]
        lines += [f"  delayed call: {_describe(c)}" for c in calls]
        pytest.fail("test leaked reactor state:\n" + "\n".join(lines), pytrace=False)


@pytest.fixture
def logged() -> Iterator[list[LogEvent]]:
    """Every log event emitted during the test, in order."""
    events: list[LogEvent] = []
    observer = cast(ILogObserver, events.append)
    globalLogPublisher.addObserver(observer)
    try:
        yield events
    finally:
        globalLogPublisher.removeObserver(observer)
