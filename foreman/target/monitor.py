"""Watches the target: is it up, which models are loaded, last good metadata.

The target is typically a desktop that sleeps, so "down" is normal and
recovers by itself. The monitor probes ``GET /api/version`` (reachability),
``GET /api/ps`` (loaded models) and ``GET /api/tags`` (kept so ``/api/tags``
can be answered while the target sleeps) every few seconds while up, and
with jittered exponential backoff while down. Others read its attributes,
``subscribe`` to changes, wait for ``when_up()``, or ``poke()`` it when they
saw a connection fail and want a fresh verdict now.

Every ``/api/ps`` answer also goes through a :class:`VramWatch`: a model
running partly or wholly on the CPU (``size_vram`` well below ``size``; a
box that came back from sleep without its GPU) is warned about, rate-limited
per model, and its return to the GPU is logged once.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from typing import Any, Literal

from attrs import frozen
from twisted.internet.defer import CancelledError, Deferred, TimeoutError, succeed
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IResponse

from foreman.core.backoff import monitor_probe_delay
from foreman.core.residency import ResidentModel, VramNotice, VramWatch, human_bytes, read_ps
from foreman.target.readbody import BodyTimeout, HeadersTimeout, fetch

__all__ = ["CachedBody", "TargetMonitor", "TargetSnapshot"]

_log = Logger()

# /api/tags of a box with hundreds of models is well under this
PROBE_BODY_LIMIT = 8 * 1024 * 1024

State = Literal["unknown", "up", "down"]


@frozen
class CachedBody:
    """A target response kept to answer from while the target is down."""

    body: bytes
    content_type: bytes


@frozen
class TargetSnapshot:
    """What the monitor knows, as one value handed to subscribers."""

    state: State
    loaded_models: tuple[str, ...]
    version: str | None
    last_seen: float | None  # wall-clock epoch seconds of the last answer


class TargetMonitor:
    """Probes the target periodically and publishes what it found."""

    def __init__(
        self,
        reactor: Any,
        target_url: str,
        target_token: str | None,
        agent: IAgent,
        *,
        interval: float = 5.0,
        probe_timeout: float = 3.0,
        min_poke_interval: float = 0.5,
        rng: random.Random | None = None,
        delay: Callable[[int, random.Random], float] = monitor_probe_delay,
    ) -> None:
        self._reactor = reactor
        self._base = target_url.rstrip("/").encode("ascii")
        self._agent = agent
        headers = Headers({b"User-Agent": [b"foreman-monitor"]})
        if target_token:
            headers.setRawHeaders(b"Authorization", [b"Bearer " + target_token.encode()])
        self._headers = headers
        self.interval = interval
        self.probe_timeout = probe_timeout
        self.min_poke_interval = min_poke_interval
        self._rng = rng or random.Random()
        self._delay = delay

        self.state: State = "unknown"
        self.loaded_models: tuple[str, ...] = ()
        self.version: str | None = None
        self.last_seen: float | None = None
        self.consecutive_failures = 0
        self.probes = 0
        self.cached: dict[bytes, CachedBody] = {}
        self.resident: tuple[ResidentModel, ...] = ()
        """The models ``/api/ps`` listed last, with their expiry."""
        self.last_error: str | None = None
        """Why the last probe failed (None once one succeeds)."""
        self.down_by_probe = False
        """Whether "down" came from a failed probe (not from a request's refusal)."""
        self.on_ps: Callable[[tuple[ResidentModel, ...]], None] | None = None
        """Called with every ``/api/ps`` answer (also between state changes)."""
        self.vram = VramWatch()
        """Decides when a model on the CPU is worth a warning (``/api/ps`` feeds it)."""

        self._running = False
        self._timer: IDelayedCall | None = None
        self._probing: Deferred[None] | None = None
        self._last_probe_at = float("-inf")
        self._subscribers: list[Callable[[TargetSnapshot], None]] = []
        self._up_waiters: list[Deferred[None]] = []

    # -- public ---------------------------------------------------------

    def start(self) -> None:
        """Probe now, then keep probing until ``stop()``."""
        if self._running:
            return
        self._running = True
        self._probe_now()

    def stop(self) -> None:
        """Cancel the timer and any probe in flight; leaves nothing in the reactor."""
        self._running = False
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self._probing is not None:
            probing, self._probing = self._probing, None
            probing.cancel()

    def snapshot(self) -> TargetSnapshot:
        return TargetSnapshot(self.state, self.loaded_models, self.version, self.last_seen)

    def subscribe(self, callback: Callable[[TargetSnapshot], None]) -> Callable[[], None]:
        """Call ``callback(snapshot)`` whenever state, loaded models or version change.

        Returns a function that unsubscribes.
        """
        self._subscribers.append(callback)

        def unsubscribe() -> None:
            if callback in self._subscribers:
                self._subscribers.remove(callback)

        return unsubscribe

    def when_up(self) -> Deferred[None]:
        """Fires when the target is seen up: at once if it is up now.

        Cancel the Deferred to stop waiting.
        """
        if self.state == "up":
            return succeed(None)

        def forget(d: Deferred[None]) -> None:
            if d in self._up_waiters:
                self._up_waiters.remove(d)

        waiter: Deferred[None] = Deferred(forget)
        self._up_waiters.append(waiter)
        return waiter

    def poke(self) -> None:
        """Probe soon (rate-limited): someone just saw the target fail or wants news."""
        if not self._running or self._probing is not None:
            return
        wait = self._last_probe_at + self.min_poke_interval - self._reactor.seconds()
        if wait <= 0:
            self._probe_now()
        elif self._timer is None or self._timer.getTime() > self._reactor.seconds() + wait:
            self._schedule(wait)

    def mark_down(self, reason: str) -> None:
        """A request just failed to connect: treat the target as down until a probe
        says otherwise, so the worker waits instead of retrying into a refusal."""
        if self.state == "down":
            return
        _log.info("target {url} unreachable: {reason}", url=self._base.decode(), reason=reason)
        self.last_error = reason
        self.down_by_probe = False
        self.consecutive_failures = max(1, self.consecutive_failures)
        self._update("down", self.loaded_models, self.version, self.last_seen)
        self.poke()

    # -- probing --------------------------------------------------------

    def _schedule(self, delay: float) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = self._reactor.callLater(delay, self._probe_now)

    def _probe_now(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if not self._running or self._probing is not None:
            return
        self._last_probe_at = self._reactor.seconds()
        self.probes += 1
        probing = Deferred.fromCoroutine(self._probe())
        self._probing = probing
        probing.addCallbacks(self._probed, self._probe_failed)

    async def _get(self, path: bytes) -> tuple[IResponse, bytes]:
        return await fetch(
            self._agent,
            self._base + path,
            self._headers,
            timeout=self.probe_timeout,
            limit=PROBE_BODY_LIMIT,
            clock=self._reactor,
        )

    async def _probe(self) -> None:
        response, body = await self._get(b"/api/version")
        version = self.version
        if response.code == 200:
            version = _json_field(body, "version", str) or version
            self._keep(b"/api/version", response, body)
        loaded = self.loaded_models
        resident = await self._ps()
        if resident is not None:
            loaded = tuple(m.name for m in resident)
        response, body = await self._get(b"/api/tags")
        if response.code == 200:
            self._keep(b"/api/tags", response, body)
        self._update("up", loaded, version, time.time())

    async def _ps(self) -> tuple[ResidentModel, ...] | None:
        response, body = await self._get(b"/api/ps")
        if response.code != 200:
            return None
        models = read_ps(body)
        if models is None:
            return None
        self.resident = tuple(models)
        self._report_vram(self.vram.observe(self.resident, self._reactor.seconds()))
        if self.on_ps is not None:
            try:
                self.on_ps(self.resident)
            except Exception:
                _log.failure("target monitor: on_ps failed")
        return self.resident

    def _report_vram(self, notices: list[VramNotice]) -> None:
        for notice in notices:
            fields = {
                "model": notice.model,
                "vram_fraction": round(notice.fraction, 3),
                "size_vram": notice.size_vram,
                "size": notice.size,
                "percent": notice.percent,
                "vram_text": human_bytes(notice.size_vram),
                "size_text": human_bytes(notice.size),
            }
            if notice.recovered:
                _log.info(
                    "model {model} runs on the GPU again ({percent}% in VRAM:"
                    " size_vram {vram_text} of {size_text})",
                    **fields,
                )
            else:
                _log.warn(
                    "model {model} runs {percent}% on the GPU (size_vram {vram_text} of"
                    " {size_text}): the target may have come back from sleep without its GPU",
                    **fields,
                )

    def refresh_models(self) -> Deferred[bool]:
        """Ask ``/api/ps`` now (after a load: which models did it push out?).

        Fires True when it answered; never fails.
        """

        async def ask() -> bool:
            try:
                return await self._ps() is not None
            except Exception:
                return False

        return Deferred.fromCoroutine(ask())

    def _keep(self, path: bytes, response: IResponse, body: bytes) -> None:
        content_type = response.headers.getRawHeaders(b"content-type", [b"application/json"])[0]
        self.cached[path] = CachedBody(body, content_type)

    def _probed(self, _: None) -> None:
        self._probing = None
        self.consecutive_failures = 0
        self.last_error = None
        if self._running:
            self._schedule(self.interval)

    def _probe_failed(self, failure: Any) -> None:
        self._probing = None
        if not self._running:
            return  # stopped: the probe was cancelled
        self.consecutive_failures += 1
        error = _probe_error(failure, self.probe_timeout)
        self.last_error = error
        self.down_by_probe = True
        if self.state == "unknown":
            # the first probe since start: most often a wrong FOREMAN_TARGET_URL
            _log.warn(
                "target {url} unreachable at start: {error} (check FOREMAN_TARGET_URL;"
                " foreman keeps probing and holds work until it answers)",
                url=self._base.decode(),
                error=error,
            )
        elif self.state != "down":
            _log.info("target {url} unreachable: {error}", url=self._base.decode(), error=error)
        self._update("down", self.loaded_models, self.version, self.last_seen)
        if self._running:
            self._schedule(self._delay(self.consecutive_failures, self._rng))

    def _update(
        self, state: State, loaded: tuple[str, ...], version: str | None, seen: float | None
    ) -> None:
        before = self.snapshot()
        self.state, self.loaded_models, self.version, self.last_seen = (
            state,
            loaded,
            version,
            seen,
        )
        if state == "up" and before.state != "up":
            _log.info(
                "target {url} is up (version {version})", url=self._base.decode(), version=version
            )
        if state == "up" and self._up_waiters:
            waiters, self._up_waiters = self._up_waiters, []
            for waiter in waiters:
                waiter.callback(None)
        if (before.state, before.loaded_models, before.version) != (state, loaded, version):
            after = self.snapshot()
            for callback in list(self._subscribers):
                try:
                    callback(after)
                except Exception:
                    _log.failure("target monitor subscriber failed")


def _probe_error(failure: Any, timeout: float) -> str:
    if failure.check(HeadersTimeout, BodyTimeout, TimeoutError, CancelledError):
        return f"no answer within {timeout:g} s (asleep, or dropping packets)"
    return str(failure.getErrorMessage() or failure.type.__name__)


def _json_field(body: bytes, name: str, kind: type) -> Any:
    try:
        value = json.loads(body).get(name)
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, kind) else None
