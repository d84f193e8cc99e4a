"""A job's answer as it arrives from the target, turned into its result afterwards.

The bytes are kept as they come and decoded in batches: every
``DECODE_EVERY`` seconds from the first byte on (the progress events' pace),
or when ``DECODE_AT`` bytes wait. The last batch, the flush and the assembly of
the result (``finish``) run after the target call ended, when the worker has
already sent the next request: decoding the final lines of an answer no
longer sits between two dispatches (ADR 0021).
"""

from __future__ import annotations

import json
from collections.abc import Callable

from attrs import frozen

from foreman.core.assemble import Assembler
from foreman.core.framing import LineTooLong, NDJSONDecoder, SSEDecoder
from foreman.jobs.artifacts import StreamWriter
from foreman.target.call import RESET, TOO_LARGE, TargetError

__all__ = ["ASSEMBLED", "DECODE_AT", "DECODE_EVERY", "Answer", "Collector"]

#: endpoints whose stream foreman can assemble into the non-streaming response
ASSEMBLED = frozenset({"/api/chat", "/api/generate", "/v1/chat/completions", "/v1/completions"})
#: seconds between two decoded batches while an answer streams in (the progress pace)
DECODE_EVERY = 0.2
#: bytes that are decoded at once, whatever the time (a line limit is found early)
DECODE_AT = 256 * 1024

STREAM_ERROR = "stream_error"


@frozen
class Answer:
    """What the target answered, assembled, waiting to be recorded."""

    response: bytes
    tokens: int
    raw: StreamWriter | None


class Collector:
    """Takes one attempt's answer bytes (``feed``) and assembles its result (``finish``).

    ``on_tokens`` hears the token count after each decoded batch; a decoding
    fault while the answer streams raises ``TargetError`` from ``feed`` (the
    caller aborts the call), one in the last batch from ``finish``.
    """

    def __init__(
        self,
        endpoint: str,
        raw: StreamWriter | None,
        line_limit: int,
        clock: Callable[[], float],
        on_tokens: Callable[[int], None],
    ) -> None:
        self._endpoint = endpoint
        self._assembler = Assembler(endpoint)
        self._raw = raw
        self._sse = endpoint.startswith("/v1/")
        self._ndjson = NDJSONDecoder(line_limit)
        self._events = SSEDecoder()
        self._streamed = endpoint in ASSEMBLED or raw is not None
        self._clock = clock
        self._on_tokens = on_tokens
        self._pending: list[bytes] = []
        self._waiting = 0
        self._decoded_at: float | None = None

    @property
    def raw(self) -> StreamWriter | None:
        return self._raw

    @property
    def tokens(self) -> int:
        """Tokens of what is decoded so far."""
        return self._assembler.tokens

    def feed(self, data: bytes) -> None:
        self._pending.append(data)
        if not self._streamed:
            return  # one JSON document: parsed whole by ``finish``
        self._waiting += len(data)
        now = self._clock()
        decoded_at = self._decoded_at
        if decoded_at is None:  # the clock starts at the first byte: a short answer
            self._decoded_at = now  # is decoded whole by ``finish``
        elif now - decoded_at >= DECODE_EVERY or self._waiting >= DECODE_AT:
            self._decoded_at = now
            self._decode_pending()

    def finish(self) -> Answer:
        """The assembled result; ``TargetError`` when the answer is malformed or cut."""
        assembler = self._assembler
        try:
            if not self._streamed:
                assembler.feed_chunk(json.loads(b"".join(self._pending)))
                self._pending = []
            else:
                self._decode_pending()
                if not self._sse:
                    for obj in self._ndjson.flush():
                        assembler.feed_chunk(obj)
        except TargetError:
            raise
        except Exception as e:  # not JSON, or JSON of a shape the endpoint never answers
            raise TargetError(STREAM_ERROR, f"target sent a malformed body: {e!r}") from None
        if assembler.error is not None:
            raise TargetError(STREAM_ERROR, assembler.error)
        if self._endpoint in ASSEMBLED and not assembler.complete:
            raise TargetError(RESET, "the target's stream ended before its final chunk")
        response = json.dumps(assembler.result(), separators=(",", ":")).encode()
        return Answer(response, assembler.tokens, self._raw)

    def _decode_pending(self) -> None:
        pending, self._pending, self._waiting = self._pending, [], 0
        if not pending:
            return
        data = b"".join(pending) if len(pending) > 1 else pending[0]
        try:
            self._decode(data)
        except LineTooLong as e:
            raise TargetError(TOO_LARGE, f"the target's stream: {e}") from None
        except TargetError:
            raise
        except Exception as e:  # bad JSON, or JSON of a shape no chunk has
            raise TargetError(STREAM_ERROR, f"target sent a malformed stream: {e!r}") from None
        self._on_tokens(self._assembler.tokens)

    def _decode(self, data: bytes) -> None:
        assembler, raw = self._assembler, self._raw
        if self._sse:
            for event in self._events.feed(data):
                if event.data == "[DONE]" or not event.data:
                    continue
                if raw is not None:  # the SSE payloads, one JSON object per line
                    raw.write(event.data.encode() + b"\n")
                assembler.feed_chunk(json.loads(event.data))
            return
        if raw is not None:  # NDJSON already: keep the target's bytes as they came
            raw.write(data)
        for obj in self._ndjson.feed(data):
            assembler.feed_chunk(obj)
