"""Pure decisions for webhook delivery: when to retry, what an answer means,
and which failures are worth a log line.

No I/O and no reactor here: the delivery loop asks these functions what to do
and keeps the clock, the randomness (passed in, so tests are deterministic)
and the database to itself.

Attempts: the first delivery goes out at once; after each failure the next
one waits ``RETRY_SCHEDULE[n]`` (jittered), so an event gets at most
``MAX_ATTEMPTS`` = 1 + len(RETRY_SCHEDULE) tries over about 42 hours before
it is marked failed.
"""

from __future__ import annotations

import enum
import random
import re
from datetime import UTC
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit, urlunsplit

from attrs import define, field, frozen

from foreman.core.backoff import WEBHOOK_RETRY, WEBHOOK_RETRY_JITTER, WEBHOOK_RETRY_SCHEDULE

__all__ = [
    "JITTER",
    "MAX_ATTEMPTS",
    "RETRY_AFTER_CAP",
    "RETRY_SCHEDULE",
    "TRACKED_RECEIVERS",
    "WARN_INTERVAL",
    "Alert",
    "FailureAlerts",
    "Outcome",
    "Recovery",
    "classify",
    "describe_delay",
    "loggable_url",
    "next_delay",
    "parse_retry_after",
]

RETRY_SCHEDULE: tuple[int, ...] = WEBHOOK_RETRY_SCHEDULE
"""Seconds to wait after the 1st, 2nd, ... failed attempt (5 s, 5 min, 30 min,
2 h, 5 h, 10 h, 24 h); the timing itself is ``backoff.WEBHOOK_RETRY``."""

MAX_ATTEMPTS = len(RETRY_SCHEDULE) + 1
"""Total delivery attempts per event, the immediate one included."""

JITTER = WEBHOOK_RETRY_JITTER
"""Each scheduled delay is spread by +/- this fraction, so receivers that were
down together are not hit by every sender at the same instant."""

RETRY_AFTER_CAP = 86400.0
"""A receiver's ``Retry-After`` is honoured up to 24 h, never beyond: a
hostile or buggy value must not park an event forever."""

WARN_INTERVAL = 600.0
"""At most one failure warning per receiver per this many seconds (10 min): a
receiver that is down fails every pending event of every job, and one line
per attempt would bury the rest of the log."""

TRACKED_RECEIVERS = 1024
"""Failing receivers remembered for rate limiting; beyond this the one that
failed least recently is forgotten (its next failure warns at once)."""

_DELTA_SECONDS = re.compile(r"[0-9]+")


class Outcome(enum.Enum):
    """What one delivery attempt means for the event and the URL."""

    DELIVERED = "delivered"
    """Any 2xx: done."""
    GONE = "gone"
    """410: the receiver asks us to stop; no further deliveries to this URL."""
    RETRY = "retry"
    """Anything else: other status codes (3xx too, redirects are not followed),
    timeouts, connection and TLS errors, refused addresses."""


def classify(status: int | None, error: str | None) -> Outcome:
    """Classify one attempt from its HTTP status (None if no response arrived)
    and its transport error (None if there was none).

    A status, once received, decides: a receiver that answered 2xx has the
    event even if reading the rest of its answer then failed. ``error`` only
    matters without a status, and then always means retry.
    """
    del error  # every transport failure is retried; kept for the caller's log line
    if status is not None:
        if 200 <= status <= 299:
            return Outcome.DELIVERED
        if status == 410:
            return Outcome.GONE
    return Outcome.RETRY


def next_delay(
    attempts_made: int, rng: random.Random, retry_after: float | None = None
) -> float | None:
    """Seconds to wait before the next attempt, or None when the event has had
    all its attempts and must be marked failed.

    ``attempts_made`` counts attempts already made for the event (0: none yet,
    deliver now). ``retry_after`` is the receiver's parsed ``Retry-After``: it
    wins when it asks for longer than the schedule, capped at 24 h; it never
    extends the number of attempts.
    """
    if attempts_made < 0:
        raise ValueError(f"attempts_made must be >= 0, got {attempts_made}")
    if attempts_made == 0:
        return 0.0
    if attempts_made > len(RETRY_SCHEDULE):
        return None
    delay = WEBHOOK_RETRY.delay(attempts_made, rng)
    if retry_after is not None:
        delay = max(delay, min(float(retry_after), RETRY_AFTER_CAP))
    return delay


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds from ``now`` (Unix time) that a ``Retry-After`` header asks for.

    Accepts delay-seconds and HTTP-date (RFC 9110: IMF-fixdate, RFC 850 and
    asctime forms). A date in the past gives 0. Anything unparseable gives
    None, i.e. the header is ignored.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    if _DELTA_SECONDS.fullmatch(text):
        # Huge values would overflow float(); anything past the cap is the cap.
        if len(text) > 12:
            return RETRY_AFTER_CAP
        return float(int(text))
    try:
        when = parsedate_to_datetime(text)
    except (ValueError, TypeError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # asctime carries no zone; HTTP dates are GMT
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now)


def loggable_url(url: str) -> str:
    """``url`` as a log line may show it: no user info, query or fragment.

    Receivers often carry a token there (``?token=…``); the log is read by
    more people than the job's submitter.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def describe_delay(seconds: float) -> str:
    """A retry delay for a reader: ``5 s``, ``30 min``, ``2 h``, ``28.8 h``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{round(seconds / 3600, 1):g} h"


@frozen
class Alert:
    """Log a warning for this failure."""

    suppressed: int
    """Failures to this receiver since the last warning that were not logged."""
    failures: int
    """Failed attempts to this receiver since it last worked, this one included."""
    since: float
    """When the first of them happened."""


@frozen
class Recovery:
    """A receiver that had failed has taken a delivery again: log one line."""

    failures: int
    since: float


@define
class _Outage:
    since: float
    failures: int
    warned_at: float
    suppressed: int = 0


@define
class FailureAlerts:
    """Which failed deliveries deserve a warning, per receiver.

    The first failure of a receiver warns at once (an operator learns of a
    dead receiver in seconds, not after the 42 h schedule); later ones at
    most every ``interval`` seconds, counting those left out. The caller
    chooses the receiver key: the delivery loop uses ``loggable_url``, so
    jobs that put their own token in the query share one budget.
    """

    interval: float = WARN_INTERVAL
    tracked: int = TRACKED_RECEIVERS
    _outages: dict[str, _Outage] = field(factory=dict, init=False)

    def failed(self, receiver: str, now: float) -> Alert | None:
        """A delivery to ``receiver`` failed at ``now``: an ``Alert`` to log, or None."""
        outage = self._outages.pop(receiver, None)
        if outage is None:
            while len(self._outages) >= max(1, self.tracked):
                del self._outages[next(iter(self._outages))]  # least recently failing
            self._outages[receiver] = _Outage(since=now, failures=1, warned_at=now)
            return Alert(suppressed=0, failures=1, since=now)
        self._outages[receiver] = outage  # now the most recently failing
        outage.failures += 1
        # a clock stepping back must not silence warnings until it catches up
        if outage.warned_at <= now < outage.warned_at + self.interval:
            outage.suppressed += 1
            return None
        alert = Alert(suppressed=outage.suppressed, failures=outage.failures, since=outage.since)
        outage.warned_at = now
        outage.suppressed = 0
        return alert

    def delivered(self, receiver: str) -> Recovery | None:
        """A delivery to ``receiver`` succeeded: the ``Recovery`` to log if it had failed."""
        outage = self._outages.pop(receiver, None)
        if outage is None:
            return None
        return Recovery(failures=outage.failures, since=outage.since)

    def tracked_count(self) -> int:
        """Receivers currently remembered as failing."""
        return len(self._outages)
