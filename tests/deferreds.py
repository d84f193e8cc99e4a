"""Synchronous checks on Deferreds for tests driven by ``task.Clock`` (no trial)."""

from __future__ import annotations

from typing import Any, TypeVar

import pytest
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

T = TypeVar("T")


def result_of(d: Deferred[T]) -> T:
    """The value a fired Deferred succeeded with; fails the test otherwise."""
    box: list[T | Failure] = []
    d.addBoth(box.append)
    assert box, "the Deferred has not fired"
    result = box[0]
    if isinstance(result, Failure):
        pytest.fail(f"the Deferred failed: {result.getTraceback()}")
    return result


def failure_of(d: Deferred[Any]) -> Failure:
    """The Failure a fired Deferred failed with; fails the test otherwise."""
    box: list[Any] = []
    d.addBoth(box.append)
    assert box, "the Deferred has not fired"
    assert isinstance(box[0], Failure), f"the Deferred succeeded with {box[0]!r}"
    return box[0]
