"""Retry timing (pure): capped exponential backoff with jitter.

Jitter only ever shortens a delay (the delay is drawn from
``[ceiling * (1 - jitter), ceiling]``), so the cap is a hard upper bound and
the ceiling never decreases from one attempt to the next. Jitter spreads
retries of many jobs that failed together (target restarted) instead of
hammering the target in lockstep.
"""

from __future__ import annotations

import random

JOB_RETRY_BASE = 2.0
JOB_RETRY_CAP = 300.0
JOB_RETRY_JITTER = 0.5

PROBE_BASE = 0.5
PROBE_CAP = 30.0
PROBE_JITTER = 0.2

_shared_rng = random.Random()


def ceiling(n: int, base: float, cap: float) -> float:
    """Un-jittered delay for the ``n``-th consecutive failure (n <= 1 gives ``base``)."""
    exponent = max(n, 1) - 1
    if exponent >= 64:  # 2**64 * any sane base is far past any cap; avoid float overflow
        return cap
    return float(min(cap, base * 2.0**exponent))


def jittered(n: int, base: float, cap: float, jitter: float, rng: random.Random | None) -> float:
    """``ceiling(n)`` shortened by up to ``jitter`` (a fraction in [0, 1])."""
    if not 0.0 <= jitter <= 1.0:
        raise ValueError(f"jitter must be within [0, 1], got {jitter!r}")
    top = ceiling(n, base, cap)
    r = (rng or _shared_rng).random()
    return top * (1.0 - jitter * r)


def job_retry_delay(attempt: int, rng: random.Random | None = None) -> float:
    """Seconds before a job is dispatched again after its ``attempt``-th failure.

    2 s, 4 s, 8 s ... capped at 5 min, each shortened by up to half (jitter).
    """
    return jittered(attempt, JOB_RETRY_BASE, JOB_RETRY_CAP, JOB_RETRY_JITTER, rng)


def monitor_probe_delay(consecutive_failures: int, rng: random.Random | None = None) -> float:
    """Seconds before the monitor probes a target that failed that many times in a row.

    0.5 s, 1 s, 2 s ... capped at 30 s, shortened by up to 20 %: a target that
    wakes up is noticed quickly, a target asleep for hours costs one probe per
    ~30 s.
    """
    return jittered(consecutive_failures, PROBE_BASE, PROBE_CAP, PROBE_JITTER, rng)
