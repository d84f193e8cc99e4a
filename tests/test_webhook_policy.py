"""Retry schedule, Retry-After parsing, outcome classification and failure warnings."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from foreman.core.webhook_policy import (
    JITTER,
    MAX_ATTEMPTS,
    RETRY_AFTER_CAP,
    RETRY_SCHEDULE,
    WARN_INTERVAL,
    Alert,
    FailureAlerts,
    Outcome,
    Recovery,
    classify,
    describe_delay,
    loggable_url,
    next_delay,
    parse_retry_after,
)

NOW = 1_700_000_000.0


def test_schedule_is_the_documented_one() -> None:
    assert RETRY_SCHEDULE == (5, 300, 1800, 7200, 18000, 36000, 86400)
    assert MAX_ATTEMPTS == 8


def test_first_attempt_is_immediate() -> None:
    assert next_delay(0, random.Random(1), None) == 0.0


def test_negative_attempts_are_a_bug() -> None:
    with pytest.raises(ValueError):
        next_delay(-1, random.Random(1), None)


@settings(deadline=None)
@given(attempts=st.integers(1, len(RETRY_SCHEDULE)), seed=st.integers(0, 2**32))
def test_delay_is_the_schedule_with_bounded_jitter(attempts: int, seed: int) -> None:
    base = RETRY_SCHEDULE[attempts - 1]
    delay = next_delay(attempts, random.Random(seed), None)
    assert delay is not None
    assert base * (1 - JITTER) <= delay <= base * (1 + JITTER)


def test_jitter_actually_spreads() -> None:
    rng = random.Random(42)
    delays = {next_delay(3, rng, None) for _ in range(50)}
    assert len(delays) > 40
    mean = sum(d for d in delays if d is not None) / len(delays)
    assert 1700 < mean < 1900


def test_same_seed_same_delay() -> None:
    assert next_delay(4, random.Random(7), None) == next_delay(4, random.Random(7), None)


@given(attempts=st.integers(len(RETRY_SCHEDULE) + 1, 10_000), ra=st.none() | st.floats(0, 1e6))
def test_schedule_exhausted_means_failed(attempts: int, ra: float | None) -> None:
    assert next_delay(attempts, random.Random(0), ra) is None


def test_longer_retry_after_wins() -> None:
    assert next_delay(1, random.Random(0), 120.0) == 120.0


def test_shorter_retry_after_does_not_shorten_the_schedule() -> None:
    delay = next_delay(2, random.Random(0), 1.0)
    assert delay is not None and delay >= 300 * (1 - JITTER)


def test_retry_after_is_capped_at_a_day() -> None:
    assert next_delay(1, random.Random(0), 10 * 86400.0) == RETRY_AFTER_CAP
    assert next_delay(1, random.Random(0), float("inf")) == RETRY_AFTER_CAP


@settings(deadline=None)
@given(
    attempts=st.integers(1, len(RETRY_SCHEDULE)),
    seed=st.integers(0, 2**32),
    ra=st.floats(allow_nan=False, min_value=-1e9, max_value=1e12),
)
def test_retry_after_never_shortens_nor_exceeds_bounds(attempts: int, seed: int, ra: float) -> None:
    plain = next_delay(attempts, random.Random(seed), None)
    with_ra = next_delay(attempts, random.Random(seed), ra)
    assert plain is not None and with_ra is not None
    assert with_ra >= plain
    assert with_ra <= max(plain, RETRY_AFTER_CAP)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("120", 120.0),
        ("  0 ", 0.0),
        ("3600", 3600.0),
        ("99999999999999999999", RETRY_AFTER_CAP),
        ("9" * 5000, RETRY_AFTER_CAP),
        (None, None),
        ("", None),
        ("-5", None),
        ("1.5", None),
        ("soon", None),
        ("Wed, 32 Oct 2015 07:28:00 GMT", None),
    ],
)
def test_parse_retry_after_values(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, NOW) == expected


def test_parse_retry_after_http_date_forms() -> None:
    now = datetime(2015, 10, 21, 7, 0, 0, tzinfo=UTC).timestamp()
    expected = 28 * 60.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now) == expected
    assert parse_retry_after("Wednesday, 21-Oct-15 07:28:00 GMT", now) == expected
    assert parse_retry_after("Wed Oct 21 07:28:00 2015", now) == expected


def test_parse_retry_after_date_in_the_past_is_zero() -> None:
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", NOW) == 0.0


@given(delta=st.integers(0, 10**6))
def test_parse_retry_after_round_trips_dates(delta: int) -> None:
    text = format_datetime(datetime.fromtimestamp(NOW + delta, tz=UTC), usegmt=True)
    assert parse_retry_after(text, NOW) == pytest.approx(delta)
    assert parse_retry_after(str(delta), NOW) == float(delta)


@pytest.mark.parametrize("status", [200, 201, 202, 204, 226, 299])
def test_2xx_is_delivered(status: int) -> None:
    assert classify(status, None) is Outcome.DELIVERED


def test_410_is_gone() -> None:
    assert classify(410, None) is Outcome.GONE


@pytest.mark.parametrize(
    "status", [100, 199, 300, 301, 302, 304, 307, 308, 400, 401, 404, 408, 409, 429, 500, 503, 599]
)
def test_other_statuses_retry(status: int) -> None:
    assert classify(status, None) is Outcome.RETRY


@pytest.mark.parametrize(
    "error",
    [
        "TimeoutError: connecting took too long",
        "ConnectionRefusedError",
        "DNSLookupError: no such host",
        "ForbiddenAddress: resolves to 127.0.0.1",
        "SSL certificate verify failed",
    ],
)
def test_transport_errors_retry(error: str) -> None:
    assert classify(None, error) is Outcome.RETRY


def test_status_decides_when_present() -> None:
    # e.g. a 2xx whose body was then cut off: the receiver has accepted the event
    assert classify(204, "response body truncated") is Outcome.DELIVERED
    assert classify(410, "response body truncated") is Outcome.GONE
    assert classify(503, "response body truncated") is Outcome.RETRY
    assert classify(None, None) is Outcome.RETRY


# --- which delivery failures are logged --------------------------------------------

RECEIVER = "https://hooks.example.com/foreman"


def test_first_failure_of_a_receiver_warns_at_once() -> None:
    alerts = FailureAlerts()
    alert = alerts.failed(RECEIVER, NOW)
    assert alert == Alert(suppressed=0, failures=1, since=NOW)


def test_failures_within_the_window_stay_quiet() -> None:
    alerts = FailureAlerts()
    alerts.failed(RECEIVER, NOW)
    for offset in (1.0, 60.0, WARN_INTERVAL - 1):
        assert alerts.failed(RECEIVER, NOW + offset) is None


def test_after_the_window_one_warning_counts_the_quiet_ones() -> None:
    alerts = FailureAlerts()
    alerts.failed(RECEIVER, NOW)
    for offset in (1.0, 2.0, 3.0):
        assert alerts.failed(RECEIVER, NOW + offset) is None
    alert = alerts.failed(RECEIVER, NOW + WARN_INTERVAL)
    assert alert == Alert(suppressed=3, failures=5, since=NOW)
    assert alerts.failed(RECEIVER, NOW + WARN_INTERVAL + 1) is None
    later = alerts.failed(RECEIVER, NOW + 2 * WARN_INTERVAL)
    assert later == Alert(suppressed=1, failures=7, since=NOW)


def test_the_window_is_per_receiver() -> None:
    alerts = FailureAlerts()
    assert alerts.failed(RECEIVER, NOW) is not None
    assert alerts.failed("https://other.example.com/hook", NOW + 1) is not None
    assert alerts.failed(RECEIVER, NOW + 2) is None


def test_recovery_is_reported_once_and_starts_a_new_outage() -> None:
    alerts = FailureAlerts()
    assert alerts.delivered(RECEIVER) is None  # never failed: nothing to say
    alerts.failed(RECEIVER, NOW)
    alerts.failed(RECEIVER, NOW + 5)
    assert alerts.delivered(RECEIVER) == Recovery(failures=2, since=NOW)
    assert alerts.delivered(RECEIVER) is None
    # the next failure is the first of a new outage: warned at once
    assert alerts.failed(RECEIVER, NOW + 10) == Alert(suppressed=0, failures=1, since=NOW + 10)


def test_a_clock_stepping_back_does_not_silence_warnings() -> None:
    alerts = FailureAlerts()
    alerts.failed(RECEIVER, NOW)
    assert alerts.failed(RECEIVER, NOW - 3600) == Alert(suppressed=0, failures=2, since=NOW)


def test_tracked_receivers_are_bounded() -> None:
    alerts = FailureAlerts(tracked=3)
    for n in range(10):
        alerts.failed(f"https://r{n}.example.com/", NOW + n)
    assert alerts.tracked_count() == 3
    # the least recently failing were forgotten; the latest are still within their window
    assert alerts.failed("https://r9.example.com/", NOW + 11) is None
    assert alerts.failed("https://r0.example.com/", NOW + 12) is not None


def test_custom_interval() -> None:
    alerts = FailureAlerts(interval=1.0)
    alerts.failed(RECEIVER, NOW)
    assert alerts.failed(RECEIVER, NOW + 0.5) is None
    assert alerts.failed(RECEIVER, NOW + 1.0) == Alert(suppressed=1, failures=3, since=NOW)


def test_warn_interval_is_ten_minutes() -> None:
    assert WARN_INTERVAL == 600.0


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://hooks.example.com/foreman", "https://hooks.example.com/foreman"),
        ("https://hooks.example.com/foreman?token=s3cret", "https://hooks.example.com/foreman"),
        ("http://user:s3cret@10.0.0.1:8080/h?a=1#frag", "http://10.0.0.1:8080/h"),
        ("http://[::1]:9000/hook?x=y", "http://[::1]:9000/hook"),
        ("https://Example.COM", "https://Example.COM"),
    ],
)
def test_loggable_url_drops_user_info_query_and_fragment(url: str, shown: str) -> None:
    assert loggable_url(url) == shown


def test_loggable_url_of_garbage_shows_nothing_of_it() -> None:
    assert loggable_url("http://[::1/s3cret?token=x") == "<unparseable URL>"


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.05, "0 s"),
        (5.2, "5 s"),
        (89, "89 s"),
        (300, "5 min"),
        (1800, "30 min"),
        (7200, "2 h"),
        (18000, "5 h"),
        (86400 * 1.2, "28.8 h"),
    ],
)
def test_describe_delay(seconds: float, text: str) -> None:
    assert describe_delay(seconds) == text
