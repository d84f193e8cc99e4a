"""One HTTP request/response in flight: writing, waiting, noticing the client leave.

Wraps ``twisted.web.server.Request`` so that handlers stay small: every wait
goes through :meth:`Exchange.wait`, which is cancelled the moment the client
disconnects (``notifyFinish`` errback), so generation stops at once and no
timer outlives its request. Waits and writes also pass the simulator's
:class:`~foreman.testing._gate.Gate`: while the box is suspended a handler
stops where it is and its output is held, both going on at the wake.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet.defer import CancelledError, Deferred
from twisted.python.failure import Failure
from twisted.web.server import Request

from foreman.testing._gate import Gate
from foreman.testing._shapes import ollama_error, openai_error
from foreman.testing._timers import Timers

T = TypeVar("T")

JSON_TYPE = b"application/json; charset=utf-8"


class HTTPError(Exception):
    """Raised by a handler: answer ``status`` with an error body of the route's shape."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Exchange:
    def __init__(
        self,
        request: Request,
        path: str,
        timers: Timers,
        now: Callable[[], float],
        on_end: Callable[[Exchange], None],
        gate: Gate | None = None,
    ) -> None:
        self.request = request
        self.path = path
        self.method = request.method.decode("latin-1")
        self.openai = path.startswith("/v1/")
        self.received_at = now()
        self.inference = False
        self.model: str | None = None
        self.gone = False
        """The connection was lost before the response was finished."""
        self.aborted = False
        """The simulator itself dropped the connection (fault, sleep, close)."""
        self.completed = False
        """A successful inference response was fully written."""
        self.ended = False
        self._timers = timers
        self._on_end = on_end
        self._waiting: Deferred[Any] | None = None
        self._gate = gate or Gate()
        self._held: list[Callable[[], object]] | None = None
        """Output written while the gate was closed, sent when it opens."""
        request.notifyFinish().addBoth(self._finished)

    # ------------------------------------------------------------ lifecycle

    @property
    def started(self) -> bool:
        """Whether the status line has been written."""
        return bool(self.request.startedWriting)

    @property
    def committed(self) -> bool:
        """Whether the response has begun (written, or held while suspended)."""
        return self.started or bool(self._held)

    @property
    def silent(self) -> bool:
        """Nothing more may be written: the response ended, the client left or was dropped."""
        return self.ended or self.gone or self.aborted

    def _finished(self, result: object) -> None:
        if isinstance(result, Failure):
            self.gone = True
        if not self.ended:
            self.ended = True
            self._on_end(self)
        if self._waiting is not None:
            self._waiting.cancel()  # stop generating for a client that left

    async def wait(self, d: Deferred[T]) -> T:
        """Await ``d`` (then the gate); raises CancelledError if the client leaves meanwhile."""
        if self.silent:
            d.addErrback(lambda _: None)
            d.cancel()
            raise CancelledError()
        result = await self._await(d)
        await self.pass_gate()
        return result

    async def _await(self, d: Deferred[T]) -> T:
        self._waiting = d
        try:
            return await d
        finally:
            self._waiting = None

    async def pass_gate(self) -> None:
        """Wait while the box is suspended; CancelledError if the exchange is over."""
        if self._gate.closed and not self.silent:
            await self._await(self._gate.passage())
        if self.silent:
            raise CancelledError()

    async def sleep(self, seconds: float) -> None:
        if seconds > 0:
            await self.wait(self._timers.delay(seconds))
        else:
            await self.pass_gate()

    # -------------------------------------------------------------- reading

    def body(self) -> bytes:
        content = self.request.content
        if content is None:
            return b""
        content.seek(0)
        data: bytes = content.read()
        return data

    def json_body(self) -> dict[str, Any]:
        """The JSON object body; HTTPError 400 the way Ollama words it otherwise."""
        raw = self.body()
        if not raw.strip():
            raise HTTPError(400, "missing request body")
        try:
            value = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise HTTPError(400, f"invalid JSON body: {exc}") from None
        if not isinstance(value, dict):
            raise HTTPError(400, "request body must be a JSON object")
        return value

    # -------------------------------------------------------------- writing

    def start(
        self, status: int, content_type: bytes, headers: dict[bytes, bytes] | None = None
    ) -> None:
        """Set status and headers; they leave with the first write."""
        request = self.request
        request.setResponseCode(status)
        request.responseHeaders.removeHeader(b"server")
        request.setHeader(b"content-type", content_type)
        for name, value in (headers or {}).items():
            request.setHeader(name, value)

    def write(self, data: bytes) -> None:
        if not self._hold(lambda: self.request.write(data)):
            self.request.write(data)

    def flush_headers(self) -> None:
        """Send the status line and headers now (an empty write does that)."""
        self.write(b"")

    def finish(self) -> None:
        if not self._hold(self.request.finish):
            self.request.finish()

    def _hold(self, action: Callable[[], object]) -> bool:
        """True when ``action`` must not run now: silent, or held until the gate opens."""
        if self.silent:
            return True
        if self._held is None and not self._gate.closed:
            return False
        if self._held is None:
            self._held = []
            passage = self._gate.passage()
            passage.addCallbacks(self._send_held, lambda f: f.trap(CancelledError))
        self._held.append(action)
        return True

    def _send_held(self, _: object) -> None:
        held, self._held = self._held or [], None
        for action in held:
            if self.silent:
                return
            action()

    def respond(self, status: int, content_type: bytes, data: bytes) -> None:
        if self.silent:
            return
        self.start(status, content_type, {b"content-length": b"%d" % len(data)})
        self.write(data)
        self.finish()

    def respond_json(self, status: int, obj: object) -> None:
        self.respond(status, JSON_TYPE, json.dumps(obj, separators=(",", ":")).encode())

    def respond_text(self, status: int, text: str) -> None:
        self.respond(status, b"text/plain; charset=utf-8", text.encode())

    def respond_error(self, status: int, message: str) -> None:
        """An error body in the route's shape: OpenAI's on /v1, Ollama's elsewhere."""
        body = openai_error(status, message) if self.openai else ollama_error(message)
        self.respond_json(status, body)

    def abort(self) -> None:
        """Drop the connection at once (TCP reset); unsent data is discarded."""
        if self.silent:
            return
        self.aborted = True
        channel = self.request.channel
        transport = getattr(channel, "transport", None) if channel is not None else None
        if transport is not None:
            transport.abortConnection()
