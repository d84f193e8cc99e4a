"""The Date header's text is reused within a second and right at every second."""

from __future__ import annotations

import time
from typing import Any

from twisted.web import http, server

from foreman.web import datecache


def test_the_date_is_twisteds_text_for_the_current_second() -> None:
    datecache.install()
    stamp: Any = vars(server)["datetimeToString"]  # what Request.process calls
    original: Any = vars(http)["datetimeToString"]
    assert stamp is not original
    before = int(time.time())
    text = stamp()
    after = int(time.time())
    assert text in {original(s) for s in range(before, after + 1)}
    assert stamp() is stamp() or before != after  # one text per second, reused
    # a given time is formatted as Twisted does, not from the cache
    assert stamp(0) == original(0) == b"Thu, 01 Jan 1970 00:00:00 GMT"
