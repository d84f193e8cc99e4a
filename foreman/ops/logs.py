"""Log observers: text or one JSON object per line, secrets scrubbed.

twistd asks the application for an ``ILogObserver`` component before it falls
back to its own file observer; the foreman service sets one built here, so the
format setting and the secret scrubbing apply to every line, Twisted's own
included.
"""

from __future__ import annotations

import datetime
import json
import sys
import time
from collections.abc import Iterable
from typing import IO, Any

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogEvent,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    eventAsText,
    formatEvent,
)
from zope.interface import implementer

from foreman.core.logtext import escape_for_log

__all__ = ["LINE_KEY", "TEXT_FIELD_LIMIT", "emit_rendered", "make_observer", "scrub"]

_REDACTED = "[redacted]"
TEXT_FIELD_LIMIT = 1024  # characters of one field in a text log line
#: An event may carry its message already rendered, every outside value in it
#: escaped (``escape_for_log``): the observers write it as it is instead of
#: formatting ``log_format`` (the access line, once per request, does this).
LINE_KEY = "log_foreman_line"


def emit_rendered(
    logger: Logger, level: LogLevel, fmt: str, line: str | None, fields: dict[str, Any]
) -> None:
    """Log ``fields`` as one event whose text is ``line``, rendered and escaped already.

    For the lines written once per request or transition: the event goes
    straight to the logger's observer (``Logger.emit`` re-checks the level
    against every ``LogLevel`` first) and the observers write ``line`` as it
    is (``LINE_KEY``) instead of parsing ``fmt``. ``fmt`` renders the same
    words from the fields for any other observer; with ``line`` None (a value
    that needs escaping) the observers format ``fmt`` as usual.
    """
    fields.update(
        log_logger=logger,
        log_level=level,
        log_namespace=logger.namespace,
        log_source=None,
        log_format=fmt,
        log_time=time.time(),
    )
    if line is not None:
        fields[LINE_KEY] = line
    logger.observer(fields)


def scrub(text: str, secrets: Iterable[str]) -> str:
    """Replace every occurrence of a secret (tokens, webhook secret) in ``text``."""
    for secret in secrets:
        if secret and secret in text:
            text = text.replace(secret, _REDACTED)
    return text


@implementer(ILogObserver)
class _TextObserver:
    def __init__(self, out: IO[str], secrets: tuple[str, ...]) -> None:
        self._out = out
        self._secrets = secrets

    def __call__(self, event: LogEvent) -> None:
        line = event.get(LINE_KEY)
        if line is not None and "log_system" not in event and "log_failure" not in event:
            level = event["log_level"].name
            text = f"{_iso_time(event.get('log_time'))} [{event['log_namespace']}#{level}] {line}"
        else:
            text = eventAsText(_escaped(event), includeSystem=True, formatTime=_iso_time)
        if not text:
            return
        self._out.write(scrub(text, self._secrets) + "\n")
        self._out.flush()


def _escaped(event: LogEvent) -> LogEvent:
    """The event with every text field one bounded, printable line (``foreman.core.logtext``).

    Model names, paths and target messages reach log events as fields; a CR or
    LF in one would forge a line of the text log. ``log_*`` keys (the format,
    the failure's traceback) are foreman's own and stay as they are.
    """
    out = dict(event)
    for key, value in event.items():
        if isinstance(value, str) and not key.startswith("log_"):
            out[key] = escape_for_log(value, TEXT_FIELD_LIMIT)
    return out


_second: list[Any] = [None, ""]  # the last whole second formatted, and its text


def _iso_time(when: float | None) -> str:
    """``2026-12-05T08:45:12.345Z``; the date and time part is formatted once a second."""
    if when is None:
        return "-"
    second = int(when)
    if second != _second[0]:
        dt = datetime.datetime.fromtimestamp(second, tz=datetime.UTC)
        _second[0], _second[1] = second, dt.strftime("%Y-%m-%dT%H:%M:%S")
    millis = int((when - second) * 1000)
    return f"{_second[1]}.{millis:03d}Z"


_SKIP_KEYS = {"log_logger", "log_source", "log_format", "log_io", "log_trace", "log_flattened"}


def _jsonable(value: Any) -> Any:
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return repr(value)


@implementer(ILogObserver)
class _JSONObserver:
    def __init__(self, out: IO[str], secrets: tuple[str, ...]) -> None:
        self._out = out
        self._secrets = secrets

    def __call__(self, event: LogEvent) -> None:
        record: dict[str, Any] = {
            "time": _iso_time(event.get("log_time")),
            "level": getattr(event.get("log_level"), "name", "info"),
            "namespace": event.get("log_namespace", ""),
            "message": event.get(LINE_KEY) or formatEvent(event),
        }
        failure = event.get("log_failure")
        if failure is not None:
            record["traceback"] = failure.getTraceback()
        for key, value in event.items():
            if key.startswith("log_") or key in _SKIP_KEYS or key in record:
                continue
            record[key] = _jsonable(value)
        line = json.dumps(record, default=repr, separators=(",", ":"))
        self._out.write(scrub(line, self._secrets) + "\n")
        self._out.flush()


def make_observer(fmt: str, secrets: tuple[str, ...], out: IO[str] | None = None) -> ILogObserver:
    """The observer for ``FOREMAN_LOG_FORMAT``; debug events are dropped."""
    stream = sys.stdout if out is None else out
    inner: ILogObserver = (
        _JSONObserver(stream, secrets) if fmt == "json" else _TextObserver(stream, secrets)
    )
    predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)
    return FilteringLogObserver(inner, [predicate])
