"""``/queue/*`` actions: pause, resume, drain, and the activity a keep-awake helper follows.

Handlers translate HTTP to ``foreman.work.control.QueueControl``; ``GET
/queue`` (the dispatch order) stays with the job routes.
"""

from __future__ import annotations

from typing import Any

from klein import Klein

from foreman.web.httpjson import BadRequest, json_error, json_response, seconds_arg, text_arg
from foreman.web.view import DaemonView

__all__ = ["register"]

_MAX_WAIT = 300.0
_ACTIONS = ("pause", "resume", "drain")


def _flag(request: Any, name: str) -> bool | None:
    raw = text_arg(request, name)
    if raw is None or raw == "":
        return None
    if raw.lower() in ("true", "1", "yes"):
        return True
    if raw.lower() in ("false", "0", "no"):
        return False
    raise BadRequest(f"{name} must be true or false", "invalid_parameter")


def register(app: Klein, daemon: DaemonView) -> None:
    control = daemon.control

    @app.route("/queue/pause", methods=["POST"])
    async def queue_pause(request: Any) -> bytes:
        return json_response(request, {"object": "queue.state", **await control.pause()})

    @app.route("/queue/resume", methods=["POST"])
    async def queue_resume(request: Any) -> bytes:
        return json_response(request, {"object": "queue.state", **await control.resume()})

    @app.route("/queue/drain", methods=["POST"])
    async def queue_drain(request: Any) -> bytes:
        wait = seconds_arg(request, "wait", _MAX_WAIT)
        await control.pause(drain=True)
        state = await control.until_drained(wait)
        return json_response(request, {"object": "queue.state", **state})

    @app.route("/queue/activity", methods=["GET"])
    async def queue_activity(request: Any) -> bytes:
        wait = seconds_arg(request, "wait", _MAX_WAIT)
        busy = _flag(request, "busy")
        return json_response(request, await control.activity_change(busy, wait))

    @app.route("/queue/<action>", methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"])
    def queue_unknown(request: Any, action: str) -> bytes:
        if action in _ACTIONS:
            method = request.method.decode()
            return json_error(request, 405, "method_not_allowed", f"{method} is not allowed here")
        return json_error(
            request,
            404,
            "unknown_queue_action",
            f"no queue action {action!r}; the actions are {', '.join(_ACTIONS)}",
        )
