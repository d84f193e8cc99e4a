"""Sortable unique ids: ``job_`` + 26 Crockford base32 characters (ULID layout).

48 bits of milliseconds then 80 random bits: ids sort by creation time, so
``GET /jobs`` pages newest-first by id alone, and they are unguessable enough
that one job's id says nothing about another's.
"""

from __future__ import annotations

import os
import re
import time

__all__ = ["JOB_ID", "new_job_id", "new_message_id"]

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
JOB_ID = re.compile(r"^job_[0-9A-HJKMNP-TV-Z]{26}$")

_last_ms = 0
_last_rand = 0


def _encode(value: int, length: int) -> str:
    out = []
    for _ in range(length):
        out.append(_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(out))


def _ulid(now: float | None = None) -> str:
    """Monotonic within one process: ids made in the same millisecond still sort."""
    global _last_ms, _last_rand
    ms = int((time.time() if now is None else now) * 1000)
    if ms <= _last_ms:
        ms = _last_ms
        rand = _last_rand + 1
    else:
        rand = int.from_bytes(os.urandom(10), "big") >> 1  # leave room to increment
    _last_ms, _last_rand = ms, rand
    return _encode(ms, 10) + _encode(rand, 16)


def new_job_id(now: float | None = None) -> str:
    return "job_" + _ulid(now)


def new_message_id() -> str:
    """A Standard Webhooks message id (``msg_…``), stable across retries of one event."""
    return "msg_" + _ulid()
