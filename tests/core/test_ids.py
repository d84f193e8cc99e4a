"""Job and message ids: format, order, and uniqueness across threads."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from foreman.core.ids import JOB_ID, IdGenerator, new_job_id, new_message_id

NOW = 1_700_000_000.123
THREADS = 8
PER_THREAD = 5_000

# Unix seconds from 1970 to about 2096: the 48-bit millisecond field holds them all.
times = st.floats(min_value=0.0, max_value=4e9, allow_nan=False, allow_infinity=False)


@pytest.fixture
def busy_switching() -> Iterator[None]:
    """Switch threads as often as possible, so a missing lock shows up as duplicates."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(old)


@pytest.mark.usefixtures("busy_switching")
def test_threads_sharing_one_millisecond_never_collide() -> None:
    start = threading.Barrier(THREADS)
    made: list[list[str]] = [[] for _ in range(THREADS)]

    def work(out: list[str]) -> None:
        start.wait()
        for _ in range(PER_THREAD):
            out.append(new_job_id(NOW))

    threads = [threading.Thread(target=work, args=(out,)) for out in made]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    every = [i for out in made for i in out]
    assert len(every) == THREADS * PER_THREAD
    assert len(set(every)) == len(every)
    for out in made:
        assert all(a < b for a, b in pairwise(out))
    assert all(JOB_ID.match(i) for i in every)


def test_same_millisecond_ids_increase() -> None:
    gen = IdGenerator()
    ids = [gen.job_id(NOW) for _ in range(1000)]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    # the time part stays that millisecond; only the random part counts up
    assert len({i[4:14] for i in ids}) == 1


def test_clock_going_back_still_increases() -> None:
    gen = IdGenerator()
    first = gen.job_id(NOW)
    assert gen.job_id(NOW - 60) > first


def test_message_ids() -> None:
    msg = new_message_id(NOW)
    assert msg.startswith("msg_")
    assert JOB_ID.match("job_" + msg[4:])


@given(nows=st.lists(times, min_size=1, max_size=50))
@settings(deadline=None)
def test_ids_sort_by_now(nows: list[float]) -> None:
    gen = IdGenerator()
    ids = [gen.job_id(t) for t in sorted(nows)]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)


@given(a=times, b=times)
def test_ids_from_different_milliseconds_sort_by_time(a: float, b: float) -> None:
    ms_a, ms_b = int(a * 1000), int(b * 1000)
    first, second = IdGenerator().job_id(a), IdGenerator().job_id(b)
    assert JOB_ID.match(first) and JOB_ID.match(second)
    if ms_a != ms_b:
        assert (first < second) == (ms_a < ms_b)


def test_the_next_id_in_a_millisecond_is_not_guessable() -> None:
    gen = IdGenerator()
    ids = [gen.job_id(NOW) for _ in range(200)]
    values = [_decode(i[14:]) for i in ids]
    steps = [b - a for a, b in pairwise(values)]
    assert all(s >= 1 for s in steps)
    assert len(set(steps)) > 190  # random steps, not +1 each time
    assert sum(1 for s in steps if s > 2**20) > 150


def _decode(text: str) -> int:
    alphabet = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
    value = 0
    for ch in text:
        value = value * 32 + alphabet.index(ch)
    return value
