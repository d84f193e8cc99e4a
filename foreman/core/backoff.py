"""Retry timing (pure): the one place where a delay after the n-th failure is computed.

A :class:`Backoff` is a value: a ceiling per failure count (doubling up to a
cap, or a fixed schedule) plus a jitter rule. Job retries, monitor probes,
webhook redeliveries and the public client all use one, so the formulas exist
once and the named instances below are the whole policy.

Jitter spreads retries of many callers that failed together (target
restarted, receiver down) instead of hammering in lockstep. With
``JitterMode.SHORTEN`` (the daemon's own retries) jitter only ever shortens a
delay: it is drawn from ``[ceiling * (1 - jitter), ceiling]``, so the cap is a
hard upper bound and the ceiling never decreases from one attempt to the next.
``JitterMode.SPREAD`` draws from ``[ceiling * (1 - jitter), ceiling * (1 +
jitter)]`` (webhook schedule, client retries), keeping the mean on the
ceiling.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Sequence

from attrs import field, frozen

__all__ = [
    "JOB_RETRY",
    "MONITOR_PROBE",
    "WEBHOOK_RETRY",
    "Backoff",
    "JitterMode",
    "ceiling",
    "jittered",
    "job_retry_delay",
    "monitor_probe_delay",
]

_shared_rng = random.Random()


class JitterMode(enum.Enum):
    SHORTEN = "shorten"
    """Delay in ``[ceiling * (1 - jitter), ceiling]``."""
    SPREAD = "spread"
    """Delay in ``[ceiling * (1 - jitter), ceiling * (1 + jitter)]``."""


def _check_jitter(_: object, __: object, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"jitter must be within [0, 1], got {value!r}")


def _check_steps(_: object, __: object, value: tuple[float, ...]) -> None:
    if any(step < 0 for step in value):
        raise ValueError(f"schedule steps must be >= 0, got {value!r}")


@frozen
class Backoff:
    """Delay before the next try after ``n`` consecutive failures.

    Build one with :meth:`exponential` or :meth:`schedule`. ``steps`` empty
    means exponential: ``base``, ``2 * base``, … up to ``cap``. Otherwise the
    n-th delay is ``steps[n - 1]`` and the last step repeats.
    """

    jitter: float = field(validator=_check_jitter)
    mode: JitterMode = JitterMode.SHORTEN
    base: float = 0.0
    cap: float = 0.0
    steps: tuple[float, ...] = field(default=(), validator=_check_steps)

    @classmethod
    def exponential(
        cls, base: float, cap: float, jitter: float, mode: JitterMode = JitterMode.SHORTEN
    ) -> Backoff:
        """``base`` after the first failure, doubling with each one, never above ``cap``."""
        return cls(jitter=jitter, mode=mode, base=base, cap=cap)

    @classmethod
    def schedule(
        cls, steps: Sequence[float], jitter: float, mode: JitterMode = JitterMode.SHORTEN
    ) -> Backoff:
        """``steps[n - 1]`` after the n-th failure; past the end, the last step."""
        if not steps:
            raise ValueError("a schedule needs at least one step")
        return cls(jitter=jitter, mode=mode, steps=tuple(float(s) for s in steps))

    def ceiling(self, n: int) -> float:
        """Un-jittered delay for the ``n``-th consecutive failure (n <= 1: the first delay)."""
        if self.steps:
            return self.steps[min(max(n, 1), len(self.steps)) - 1]
        exponent = max(n, 1) - 1
        if exponent >= 64:  # 2**64 * any sane base is far past any cap; avoid float overflow
            return self.cap
        return float(min(self.cap, self.base * 2.0**exponent))

    def delay(
        self, n: int, rng: random.Random | None = None, *, draw: float | None = None
    ) -> float:
        """Jittered delay for the ``n``-th consecutive failure.

        The jitter uses ``draw`` (uniform in [0, 1)) when given, for callers
        that own their randomness; otherwise one draw from ``rng`` (a shared
        generator when None).
        """
        top = self.ceiling(n)
        r = (rng or _shared_rng).random() if draw is None else draw
        if self.mode is JitterMode.SHORTEN:
            return top * (1.0 - self.jitter * r)
        low, high = 1.0 - self.jitter, 1.0 + self.jitter
        return top * (low + (high - low) * r)  # exactly random.uniform(low, high)


JOB_RETRY_BASE = 2.0
JOB_RETRY_CAP = 300.0
JOB_RETRY_JITTER = 0.5

PROBE_BASE = 0.5
PROBE_CAP = 30.0
PROBE_JITTER = 0.2

WEBHOOK_RETRY_SCHEDULE: tuple[int, ...] = (5, 300, 1800, 7200, 18000, 36000, 86400)
"""Seconds after the 1st, 2nd, ... failed delivery (5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 24 h)."""
WEBHOOK_RETRY_JITTER = 0.2

JOB_RETRY = Backoff.exponential(JOB_RETRY_BASE, JOB_RETRY_CAP, JOB_RETRY_JITTER)
"""A failed job attempt: 2 s, 4 s, 8 s ... capped at 5 min, each shortened by up to half."""

MONITOR_PROBE = Backoff.exponential(PROBE_BASE, PROBE_CAP, PROBE_JITTER)
"""A target that failed that many probes in a row: 0.5 s, 1 s, 2 s ... capped at
30 s, shortened by up to 20 %: a target that wakes up is noticed quickly, a
target asleep for hours costs one probe per ~30 s."""

RECORD_RETRY = Backoff.exponential(0.5, 30.0, 0.2)
"""foreman could not write a job's state (database locked, disk full): 0.5 s,
1 s, 2 s ... capped at 30 s, until it can."""

WEBHOOK_RETRY = Backoff.schedule(WEBHOOK_RETRY_SCHEDULE, WEBHOOK_RETRY_JITTER, JitterMode.SPREAD)
"""A failed webhook delivery: the schedule, each spread by +/- 20 % so receivers
that were down together are not hit by every sender at the same instant."""


def ceiling(n: int, base: float, cap: float) -> float:
    """Un-jittered exponential delay for the ``n``-th consecutive failure."""
    return Backoff.exponential(base, cap, 0.0).ceiling(n)


def jittered(n: int, base: float, cap: float, jitter: float, rng: random.Random | None) -> float:
    """``ceiling(n)`` shortened by up to ``jitter`` (a fraction in [0, 1])."""
    return Backoff.exponential(base, cap, jitter).delay(n, rng)


def job_retry_delay(attempt: int, rng: random.Random | None = None) -> float:
    """Seconds before a job is dispatched again after its ``attempt``-th failure."""
    return JOB_RETRY.delay(attempt, rng)


def monitor_probe_delay(consecutive_failures: int, rng: random.Random | None = None) -> float:
    """Seconds before the monitor probes a target that failed that many times in a row."""
    return MONITOR_PROBE.delay(consecutive_failures, rng)
