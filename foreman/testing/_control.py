"""``/_simulator/*``: drive a simulator that runs in another process over HTTP.

* ``GET /_simulator/state`` → counters (``?requests=1`` adds every recorded
  request with its headers and JSON body);
* ``POST /_simulator/faults`` ``{"fault": "http_500", "count": 1, "path": null}``
  → inject (``count: null`` = until cleared); ``DELETE /_simulator/faults`` → clear;
* ``POST /_simulator/sleep`` ``{"seconds": N, "refuse": false}`` → answer,
  then sleep N seconds and wake by itself: suspended (connections hang,
  nothing answers) or, with ``refuse: true``, off (connections refused);
* ``POST /_simulator/gpu`` ``{"lost": true, "fraction": 0.0}`` → models loaded
  from now on get ``fraction`` of themselves in VRAM (a box that came back
  from sleep without its GPU); ``{"lost": false}`` → the GPU is back;
* ``POST /_simulator/reset`` ``{"unload": false}`` → forget counters, records
  and faults, restore a lost GPU (``unload: true`` also unloads an idle model).

These routes need no token, are never recorded and never suffer faults.
"""

from __future__ import annotations

from twisted.logger import Logger

from foreman.testing._exchange import Exchange, HTTPError
from foreman.testing._generation import FLUSH_SECONDS
from foreman.testing._host import ControlHost

CONTROL_PREFIX = "/_simulator/"

_log = Logger()


def _query_flag(ex: Exchange, name: str) -> bool:
    values = ex.request.args.get(name.encode(), [])
    return any(v.lower() in (b"1", b"true", b"yes") for v in values)


async def control(sim: ControlHost, ex: Exchange) -> None:
    route = (ex.method if ex.method != "HEAD" else "GET", ex.path)
    if route == ("GET", "/_simulator/state"):
        ex.respond_json(200, sim.state(include_requests=_query_flag(ex, "requests")))
    elif route == ("POST", "/_simulator/faults"):
        body = ex.json_body()
        count = body.get("count", 1)
        path = body.get("path")
        if not isinstance(body.get("fault"), str):
            raise HTTPError(400, "fault is required")
        if count is not None and (isinstance(count, bool) or not isinstance(count, int)):
            raise HTTPError(400, "count must be an integer or null")
        if path is not None and not isinstance(path, str):
            raise HTTPError(400, "path must be a string or null")
        try:
            sim.inject(body["fault"], count, path)
        except ValueError as exc:
            raise HTTPError(400, str(exc)) from None
        ex.respond_json(200, {"faults": sim.faults})
    elif route == ("DELETE", "/_simulator/faults"):
        sim.clear_faults()
        ex.respond_json(200, {"faults": sim.faults})
    elif route == ("POST", "/_simulator/sleep"):
        body = ex.json_body()
        seconds, refuse = body.get("seconds"), body.get("refuse", False)
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds <= 0:
            raise HTTPError(400, "seconds must be a positive number")
        if not isinstance(refuse, bool):
            raise HTTPError(400, "refuse must be a boolean")
        ex.respond_json(200, {"sleeping": True, "seconds": seconds, "refuse": refuse})

        # Let the answer leave before the connections are dropped or go silent.
        def go_to_sleep() -> None:
            sim.sleep(float(seconds), refuse=refuse).addErrback(
                lambda failure: _log.failure("simulator could not sleep", failure)
            )

        sim.timers.call_later(FLUSH_SECONDS, go_to_sleep)
    elif route == ("POST", "/_simulator/gpu"):
        body = ex.json_body()
        lost, fraction = body.get("lost"), body.get("fraction", 0.0)
        if not isinstance(lost, bool):
            raise HTTPError(400, "lost must be a boolean")
        if lost:
            try:
                sim.gpu_lost(fraction)
            except ValueError as exc:
                raise HTTPError(400, str(exc)) from None
        else:
            sim.gpu_restored()
        state = sim.state()
        ex.respond_json(
            200, {"gpu_lost": state["gpu_lost"], "vram_fraction": state["vram_fraction"]}
        )
    elif route == ("POST", "/_simulator/reset"):
        body = ex.json_body() if ex.body().strip() else {}
        sim.reset(unload=body.get("unload") is True)
        ex.respond_json(200, sim.state())
    else:
        raise HTTPError(404, f"unknown control route {ex.method} {ex.path}")
