"""foreman's own HTTP routes, assembled into one Klein app.

Each concern registers its routes from its own module (``register(app,
daemon)``); this module only builds the app and turns errors into foreman's
JSON error shape instead of Klein's HTML pages.
"""

from __future__ import annotations

from typing import Any

from klein import Klein
from twisted.logger import Logger
from werkzeug.exceptions import MethodNotAllowed, NotFound

from foreman.ops.metrics import CONTENT_TYPE
from foreman.web import batch_routes, job_routes, queue_routes
from foreman.web.httpjson import BadRequest, json_error, json_response
from foreman.web.openapi import openapi_document
from foreman.web.view import DaemonView

__all__ = ["build_app"]

_log = Logger()


def _install_error_handlers(app: Klein) -> None:
    @app.handle_errors(NotFound)
    def not_found(request: Any, failure: Any) -> bytes:
        return json_error(request, 404, "not_found", f"no route {request.path.decode()!r}")

    @app.handle_errors(MethodNotAllowed)
    def not_allowed(request: Any, failure: Any) -> bytes:
        method = request.method.decode()
        return json_error(request, 405, "method_not_allowed", f"{method} is not allowed here")

    @app.handle_errors(BadRequest)
    def bad_request(request: Any, failure: Any) -> bytes:
        e: BadRequest = failure.value
        return json_error(request, e.status, e.code, str(e))


def _register_ops(app: Klein, daemon: DaemonView) -> None:
    @app.route("/healthz", methods=["GET", "HEAD"])
    async def healthz(request: Any) -> bytes:
        try:
            await daemon.store.read(lambda c: c.execute("SELECT 1").fetchone())
        except Exception as e:
            _log.error("health check: database failed: {error}", error=repr(e))
            return json_response(request, {"status": "failing", "database": "error"}, 503)
        return json_response(request, {"status": "ok", "database": "ok"})

    @app.route("/readyz", methods=["GET", "HEAD"])
    def readyz(request: Any) -> bytes:
        store = daemon.jobs.store
        problem = store.write_problem
        ready = daemon.accepting and problem is None
        body: dict[str, Any] = {"ready": ready, "target": daemon.target_state()}
        target_problem = daemon.target_problem()
        if target_problem is not None:
            body["target_error"] = target_problem  # ready all the same: work is kept
        if problem is not None:
            body["database"] = problem  # why not ready; the probe clears it once writable
            store.probe()
        return json_response(request, body, 200 if ready else 503)

    @app.route("/metrics", methods=["GET"])
    def metrics(request: Any) -> bytes:
        request.setHeader(b"content-type", CONTENT_TYPE)
        body: bytes = daemon.metrics.render()
        return body

    @app.route("/openapi.json", methods=["GET"])
    def openapi(request: Any) -> bytes:
        base = daemon.public_url or job_routes.request_base_url(request, daemon.trusted_proxies)
        return json_response(request, openapi_document(base))

    @app.route("/status", methods=["GET"])
    def status(request: Any) -> bytes:
        return json_response(request, daemon.status())


def build_app(daemon: DaemonView) -> Klein:
    app = Klein()
    _install_error_handlers(app)
    _register_ops(app, daemon)
    job_routes.register(app, daemon)
    batch_routes.register(app, daemon)
    queue_routes.register(app, daemon)
    return app
