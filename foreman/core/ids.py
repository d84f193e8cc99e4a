"""Sortable unique ids: ``job_`` + 26 Crockford base32 characters (ULID layout).

48 bits of milliseconds then 80 random bits: ids sort by creation time, so
``GET /jobs`` pages newest-first by id alone, and they are unguessable enough
that one job's id says nothing about another's.

The caller passes the time (the core never reads the clock), and ids are made
on both the reactor thread and the database thread, so the "last id" state
sits behind a lock: without it two threads could read the same last value and
hand out the same id.
"""

from __future__ import annotations

import os
import re
import threading

from attrs import define, field

__all__ = [
    "BATCH_ID",
    "FILE_ID",
    "JOB_ID",
    "IdGenerator",
    "batch_request_id",
    "new_batch_id",
    "new_file_id",
    "new_job_id",
    "new_message_id",
]

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
JOB_ID = re.compile(r"^job_[0-9A-HJKMNP-TV-Z]{26}$")
# OpenAI's spellings: ``file-…`` with a hyphen, ``batch_…`` with an underscore
FILE_ID = re.compile(r"^file-[0-9A-HJKMNP-TV-Z]{26}$")
BATCH_ID = re.compile(r"^batch_[0-9A-HJKMNP-TV-Z]{26}$")


_RAND_SPACE = 1 << 80


def _fresh() -> int:
    """A random part with room above it for 2**39 same-millisecond steps."""
    return int.from_bytes(os.urandom(10), "big") >> 1


def _encode(value: int, length: int) -> str:
    out = []
    for _ in range(length):
        out.append(_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(out))


@define
class IdGenerator:
    """Makes ULIDs that are strictly increasing across every thread using it.

    Within one millisecond (or when ``now`` goes backwards) the random part of
    the last id grows by a random step of up to 2**40 instead of being drawn
    anew, so ids still sort in the order they were made and the next id is not
    the last one plus one.
    """

    _lock: threading.Lock = field(factory=threading.Lock, init=False, repr=False)
    _last_ms: int = field(default=0, init=False)
    _last_rand: int = field(default=0, init=False)

    def ulid(self, now: float) -> str:
        """The next 26-character ULID for Unix time ``now`` (seconds)."""
        ms = int(now * 1000)
        with self._lock:
            if ms <= self._last_ms:
                ms = self._last_ms
                rand = self._last_rand + 1 + int.from_bytes(os.urandom(5), "big")
                if rand >= _RAND_SPACE:  # the millisecond is used up: borrow the next
                    ms += 1
                    rand = _fresh()
            else:
                rand = _fresh()
            self._last_ms, self._last_rand = ms, rand
        return _encode(ms, 10) + _encode(rand, 16)

    def job_id(self, now: float) -> str:
        return "job_" + self.ulid(now)

    def message_id(self, now: float) -> str:
        return "msg_" + self.ulid(now)


_shared = IdGenerator()


def new_job_id(now: float) -> str:
    """A job id for a job created at ``now`` (Unix seconds)."""
    return _shared.job_id(now)


def new_message_id(now: float) -> str:
    """A Standard Webhooks message id (``msg_…``), stable across retries of one event."""
    return _shared.message_id(now)


def new_file_id(now: float) -> str:
    """An OpenAI-style file id (``file-…``) for a file stored at ``now``."""
    return "file-" + _shared.ulid(now)


def new_batch_id(now: float) -> str:
    """An OpenAI-style batch id (``batch_…``)."""
    return "batch_" + _shared.ulid(now)


def batch_request_id(job_id: str) -> str:
    """The ``batch_req_…`` id of the output line of the batch line run as ``job_id``."""
    return "batch_req_" + job_id.removeprefix("job_")
