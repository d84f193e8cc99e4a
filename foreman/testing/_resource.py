"""The twisted.web resource: routing, auth, recording, fault dispatch.

Unknown paths and wrong methods get Gin's plain-text ``404 page not found`` /
``405 method not allowed``, as Ollama (a Gin server) answers them.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from attrs import frozen
from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from foreman.testing import _native as native
from foreman.testing import _openai as openai
from foreman.testing._control import CONTROL_PREFIX, control
from foreman.testing._exchange import Exchange, HTTPError
from foreman.testing._faults import Fault
from foreman.testing._host import GenerationHost, SimulatorHost
from foreman.testing._records import RecordedRequest

Handler = Callable[[GenerationHost, Exchange, Fault | None], Awaitable[None]]

_log = Logger()


@frozen
class Route:
    handler: Handler
    inference: bool = False


def _get(handler: Handler) -> dict[str, Route]:
    return {"GET": Route(handler), "HEAD": Route(handler)}


def _post(handler: Handler, inference: bool = False) -> dict[str, Route]:
    return {"POST": Route(handler, inference)}


ROUTES: dict[str, dict[str, Route]] = {
    "/": _get(native.root),
    "/api/version": _get(native.version),
    "/api/tags": _get(native.tags),
    "/api/ps": _get(native.ps),
    "/api/show": _post(native.show),
    "/api/chat": _post(native.chat, inference=True),
    "/api/generate": _post(native.generate, inference=True),
    "/api/embed": _post(native.embed, inference=True),
    "/api/embeddings": _post(native.embeddings, inference=True),
    "/api/pull": _post(native.pull),
    "/api/delete": {"DELETE": Route(native.delete)},
    "/api/copy": _post(native.copy),
    "/v1/chat/completions": _post(openai.chat_completions, inference=True),
    "/v1/completions": _post(openai.completions, inference=True),
    "/v1/embeddings": _post(openai.embeddings, inference=True),
    "/v1/models": _get(openai.models),
}
MODEL_ROUTE_PREFIX = "/v1/models/"
MODEL_ROUTE = _get(openai.model)

SIMULATED_500 = "simulated internal server error"


def route_path(request: Request) -> str:
    """The path below where the resource is mounted, e.g. ``/api/chat``."""
    segments = [s.decode("utf-8", "replace") for s in request.postpath or []]
    return "/" + "/".join(segments)


def _record_of(request: Request, path: str, now: float) -> RecordedRequest:
    headers = {
        name.decode("latin-1").lower(): values[-1].decode("latin-1")
        for name, values in request.requestHeaders.getAllRawHeaders()
    }
    body = b""
    if request.content is not None:
        request.content.seek(0)
        body = request.content.read()
        request.content.seek(0)
    try:
        parsed: Any = json.loads(body) if body.strip() else None
    except (UnicodeDecodeError, json.JSONDecodeError):
        parsed = None
    model = None
    if isinstance(parsed, dict):
        candidate = parsed.get("model") or parsed.get("name")
        model = candidate if isinstance(candidate, str) else None
    uri = request.uri.decode("latin-1")
    return RecordedRequest(
        method=request.method.decode("latin-1"),
        path=path,
        query=uri.partition("?")[2],
        headers=headers,
        body=body,
        json=parsed,
        received_at=now,
        model=model,
    )


class SimulatorResource(Resource):
    isLeaf = True

    def __init__(self, sim: SimulatorHost) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.sim = sim

    def _authorized(self, request: Request) -> bool:
        token = self.sim.required_token
        if token is None:
            return True
        header = request.getHeader(b"authorization") or b""
        scheme, _, value = header.decode("latin-1").partition(" ")
        return scheme.lower() == "bearer" and value.strip() == token

    def render(self, request: Request) -> Any:
        sim = self.sim
        path = route_path(request)
        if path.startswith(CONTROL_PREFIX):
            ex = Exchange(request, path, sim.timers, sim.now, lambda _: None, sim.gate)
            self._start(ex, lambda: control(sim, ex))
            return NOT_DONE_YET

        record = _record_of(request, path, sim.now())
        sim.record(record)
        methods = ROUTES.get(path)
        if methods is None and path.startswith(MODEL_ROUTE_PREFIX):
            methods = MODEL_ROUTE
        method = request.method.decode("latin-1")
        route = methods.get(method) if methods else None
        authorized = self._authorized(request)
        ex = Exchange(request, path, sim.timers, sim.now, lambda e: sim.end(e, record), sim.gate)
        ex.inference = bool(route and route.inference and authorized and not sim.closed)
        sim.begin(ex)
        if sim.closed:
            ex.respond_error(503, "the simulator is closed")
        elif not authorized:
            ex.respond_json(401, {"error": "unauthorized"})
        elif methods is None:
            ex.respond_text(404, "404 page not found")
        elif route is None:
            request.setHeader(b"allow", ", ".join(sorted(methods)).encode())
            ex.respond_text(405, "405 method not allowed")
        else:
            fault = sim.take_fault(path, route.inference)
            self._start(ex, lambda: self._serve(route, ex, fault))
        return NOT_DONE_YET

    async def _serve(self, route: Route, ex: Exchange, fault: Fault | None) -> None:
        if fault is Fault.HTTP_500:
            ex.respond_error(500, SIMULATED_500)
        elif fault is Fault.HANG:
            await ex.wait(self.sim.timers.never())
        else:
            await route.handler(self.sim, ex, fault)

    def _start(self, ex: Exchange, work: Callable[[], Awaitable[None]]) -> None:
        async def run() -> None:
            try:
                await work()
            except HTTPError as exc:
                if ex.committed:
                    ex.abort()
                else:
                    ex.respond_error(exc.status, exc.message)
            except CancelledError:
                ex.abort()
            except Exception:
                _log.failure("simulator handler failed for {path}", path=ex.path)
                if ex.committed:
                    ex.abort()
                else:
                    ex.respond_error(500, "simulator internal error")

        Deferred.fromCoroutine(run())
