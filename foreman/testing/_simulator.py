"""The simulator object: configuration, observable state, residency, lifecycle.

I/O edge around the pure parts (catalog, residency state machine, fault
book): owns every timer (one load timer, one expiry timer per idle resident
slot), every connection and the suspension gate, so that
:meth:`OllamaSimulator.close` leaves nothing in the reactor. The top of the
package: it builds the resource and site around itself; they see it only
through the protocols of :mod:`foreman.testing._host`.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any, Literal, cast

from twisted.internet.defer import (
    CancelledError,
    Deferred,
    DeferredList,
    DeferredLock,
    maybeDeferred,
)
from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint, serverFromString
from twisted.internet.interfaces import IDelayedCall, IListeningPort
from twisted.logger import Logger
from twisted.web.resource import IResource

from foreman.testing._exchange import Exchange
from foreman.testing._faults import Fault, FaultBook
from foreman.testing._gate import Gate
from foreman.testing._models import (
    Catalog,
    ModelInfo,
    ModelSpec,
    canonical_name,
    check_vram_fraction,
    cpu_slowdown,
)
from foreman.testing._records import Disconnect, RecordedRequest
from foreman.testing._residency import Grant, Lease, Residency, Slot
from foreman.testing._resource import SimulatorResource
from foreman.testing._server import SimulatorSite
from foreman.testing._timers import Timers
from foreman.testing._watchers import Watchers

DEFAULT_MODELS: tuple[str, ...] = ("llama3.2", "qwen3:0.6b", "nomic-embed-text")

WARM_LOAD_SECONDS = 0.00025
"""``load_duration`` of a request whose model was already resident (Ollama: well under 1 ms)."""

SleepMode = Literal["suspended", "refused"]

_log = Logger()


class _Ticket:
    """A request waiting for its model to be resident."""

    def __init__(self) -> None:
        self.d: Deferred[None] = Deferred()
        self.granted = False
        self.granted_at = 0.0
        self.loaded = False


class OllamaSimulator:
    """A fake Ollama server for tests; see the package docstring for the tour."""

    def __init__(
        self,
        models: Iterable[ModelSpec | str] = DEFAULT_MODELS,
        *,
        token_rate: float = 50.0,
        load_time: float = 0.2,
        reply_tokens: int = 8,
        reactor: Any = None,
        required_token: str | None = None,
        pullable: Iterable[ModelSpec | str] = (),
        pull_time: float = 0.2,
        record_limit: int | None = 10_000,
        max_loaded: int = 1,
        vram_fraction: float = 1.0,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        if token_rate < 0 or load_time < 0 or reply_tokens < 0 or pull_time < 0:
            raise ValueError("token_rate, load_time, reply_tokens and pull_time must be >= 0")
        if isinstance(max_loaded, bool) or not isinstance(max_loaded, int) or max_loaded < 1:
            raise ValueError("max_loaded must be an integer >= 1")
        healthy = check_vram_fraction(vram_fraction)
        self.reactor: Any = reactor
        self.token_rate = float(token_rate)
        self.load_time = float(load_time)
        self.reply_tokens = reply_tokens
        self.required_token = required_token
        self.pull_time = float(pull_time)
        self.record_limit = record_limit
        """Keep at most this many recent ``requests`` / ``disconnects`` (None: all)."""
        self.max_loaded = max_loaded
        """How many slots may be resident at once (``OLLAMA_MAX_LOADED_MODELS``)."""
        self._healthy_vram = healthy
        self._gpu_lost = False
        self.vram_fraction = healthy
        """Share in VRAM of the models loaded from now on (at most: a ``ModelSpec``
        may say less); below 1 after :meth:`gpu_lost`."""
        if isinstance(models, str):
            models = [models]
        if isinstance(pullable, str):
            pullable = [pullable]
        self.catalog = Catalog.build(models, pullable, self.load_time, self.now())
        self.timers = Timers(reactor)

        self.requests: list[RecordedRequest] = []
        """Every request received (control routes excluded), in arrival order."""
        self.disconnects: list[Disconnect] = []
        """Inference requests whose client left before their response was complete."""
        self.completed = 0
        """Inference requests answered successfully and completely."""
        self.in_flight = 0
        """Inference requests being processed now (from arrival to the last byte)."""
        self.max_in_flight = 0

        self._residency = Residency(max_loaded)
        self._faults = FaultBook()
        self._expiry: dict[Slot, tuple[float, IDelayedCall]] = {}
        self._load_call: IDelayedCall | None = None
        self._gate = Gate()
        self._sleep_mode: SleepMode | None = None
        self._sleep_lock = DeferredLock()
        self._watchers = Watchers(reactor)
        self._exchanges: set[Exchange] = set()
        self._pumping = False
        self._ids = itertools.count(1)
        self._closed = False

        self._site = SimulatorSite(SimulatorResource(self), reactor)
        self._port: IListeningPort | None = None
        self._stopping: Deferred[Any] | None = None
        self._rebind: Any = None
        self._wake_call: IDelayedCall | None = None
        self.port: int | None = None
        """The TCP port number once listening (kept while asleep)."""
        self.host = "127.0.0.1"

    # ------------------------------------------------------------- observing

    def now(self) -> float:
        return float(self.reactor.seconds())

    @property
    def url(self) -> str:
        """``http://HOST:PORT`` of the listening simulator."""
        if self.port is None:
            raise RuntimeError("the simulator is not listening; await sim.listen() first")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def loads(self) -> int:
        """Model loads completed."""
        return self._residency.loads

    @property
    def swaps(self) -> int:
        """Loads that unloaded another model (or the same model with another num_ctx)."""
        return self._residency.swaps

    @property
    def resident(self) -> str | None:
        """Canonical name (``name:tag``) of the most recently used resident model, or None."""
        slot = self._residency.resident
        return slot.model if slot else None

    @property
    def resident_models(self) -> tuple[str, ...]:
        """Canonical names of the resident models, most recently used first."""
        return tuple(dict.fromkeys(slot.model for slot in self._residency.resident_slots))

    @property
    def loading(self) -> str | None:
        """Canonical name of the model being loaded now, or None."""
        slot = self._residency.loading
        return slot.model if slot else None

    @property
    def resident_context_length(self) -> int | None:
        """Context length of the most recently used resident slot, or None."""
        slot = self._residency.resident
        return slot.context_length if slot else None

    def slot_vram_fraction(self, slot: Slot) -> float:
        """Share in VRAM of a resident slot (1.0 for one not resident)."""
        entry = self._residency.find(slot)
        return entry.vram_fraction if entry is not None else 1.0

    def resident_vram_fraction(self, model: str | None = None) -> float | None:
        """Share in VRAM of ``model`` (default: the most recently used); None: not resident."""
        canon = canonical_name(model) if model else None
        for entry in self._residency.residents:
            if canon in (None, entry.slot.model):
                return entry.vram_fraction
        return None

    @property
    def gpu_is_lost(self) -> bool:
        """True between :meth:`gpu_lost` and :meth:`gpu_restored`."""
        return self._gpu_lost

    def resident_slots(self) -> list[tuple[Slot, float]]:
        """Each resident slot with when it expires (``inf``: never), most recently used first."""
        now = self.now()
        residency = self._residency
        return [(entry.slot, residency.expires_at(entry, now)) for entry in residency.residents]

    @property
    def sleeping(self) -> bool:
        return self._sleep_mode is not None

    @property
    def sleep_mode(self) -> SleepMode | None:
        """``"suspended"`` (silent), ``"refused"`` (off) or None (awake)."""
        return self._sleep_mode

    @property
    def gate(self) -> Gate:
        """Closed while suspended: exchanges wait and hold their output here."""
        return self._gate

    @property
    def faults(self) -> list[dict[str, Any]]:
        """Pending faults, as ``{"fault", "remaining", "path"}`` dicts."""
        return self._faults.describe()

    def expires_at(self, model: str | None = None) -> float | None:
        """When ``model`` (default: the most recently used) will be unloaded.

        ``inf``: never; None: not resident. A busy model reports ``keep_alive``
        from now, as Ollama does.
        """
        canon = canonical_name(model) if model else None
        for slot, when in self.resident_slots():
            if canon in (None, slot.model):
                return when
        return None

    def is_resident(self, model: str) -> bool:
        return canonical_name(model) in self.resident_models

    def state(self, include_requests: bool = False) -> dict[str, Any]:
        """Counters as JSON-ready data (what ``GET /_simulator/state`` returns)."""
        body: dict[str, Any] = {
            "loads": self.loads,
            "swaps": self.swaps,
            "resident": self.resident,
            "resident_models": list(self.resident_models),
            "max_loaded": self.max_loaded,
            "loading": self.loading,
            "sleep_mode": self.sleep_mode,
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "completed": self.completed,
            "request_count": len(self.requests),
            "disconnects": [d.describe() for d in self.disconnects],
            "faults": self.faults,
            "models": sorted(self.catalog.models),
            "token_rate": self.token_rate,
            "load_time": self.load_time,
            "vram_fraction": self.vram_fraction,
            "gpu_lost": self.gpu_is_lost,
        }
        if include_requests:
            body["requests"] = [r.describe() for r in self.requests]
        return body

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> Deferred[None]:
        """Fires once ``predicate()`` is true, re-checked on every state change.

        Fails with TimeoutError after ``timeout`` seconds. No polling: the
        predicate runs when a request, load, disconnect or counter changes.
        """
        return self._watchers.wait_for(predicate, timeout)

    def wait_for_disconnects(self, count: int = 1, timeout: float = 5.0) -> Deferred[None]:
        return self.wait_for(lambda: len(self.disconnects) >= count, timeout)

    def wait_for_requests(
        self, count: int = 1, path: str | None = None, timeout: float = 5.0
    ) -> Deferred[None]:
        def seen() -> bool:
            return sum(1 for r in self.requests if path in (None, r.path)) >= count

        return self.wait_for(seen, timeout)

    def changed(self) -> None:
        """Re-check the wait_for predicates (called after every state change)."""
        self._watchers.changed()

    # ------------------------------------------------------------- controlling

    def inject(self, fault: Fault | str, count: int | None = 1, path: str | None = None) -> None:
        """Make the next ``count`` matching requests suffer ``fault``.

        ``path=None`` matches inference routes (chat, generate, embed,
        embeddings and their /v1 forms); ``"*"`` matches every route; any
        other value is an exact path such as ``"/api/tags"``.
        ``count=None`` keeps the fault until :meth:`clear_faults`.
        """
        self._faults.add(fault, count, path)
        self.changed()

    def clear_faults(self) -> None:
        self._faults.clear()
        self.changed()

    def take_fault(self, path: str, inference: bool) -> Fault | None:
        return self._faults.take(path, inference)

    def reset(self, unload: bool = False) -> None:
        """Forget counters, records and faults, restore a lost GPU.

        ``unload``: also unload the idle models.
        """
        self.requests.clear()
        self.disconnects.clear()
        self.completed = 0
        self.max_in_flight = self.in_flight
        self._residency.loads = 0
        self._residency.swaps = 0
        self._faults.clear()
        self.vram_fraction, self._gpu_lost = self._healthy_vram, False
        if unload:
            self.unload()
        self.changed()

    def unload(self, model: str | None = None) -> bool:
        """Unload the idle resident models now (only ``model`` when given).

        A busy one is unloaded as soon as its last request ends (like
        Ollama's ``keep_alive: 0``). Returns True if something was unloaded now.
        """
        canon = canonical_name(model) if model else None
        unloaded = self._residency.unload(canon)
        if unloaded:
            self.changed()
            self._pump()
        return bool(unloaded)

    def gpu_lost(self, fraction: float = 0.0) -> None:
        """The GPU came back wrong (a box resumed from sleep): models loaded from now on
        get at most ``fraction`` of themselves in VRAM (0: all on the CPU).

        ``/api/ps`` then reports ``size_vram`` = fraction * ``size`` for them and
        their tokens come slower (:func:`cpu_slowdown`: ten times when wholly on
        the CPU). Models already resident keep what they had, as in Ollama; unload
        them (:meth:`unload`) to have them reloaded this way.
        """
        self.vram_fraction = check_vram_fraction(fraction)
        self._gpu_lost = True
        self.changed()

    def gpu_restored(self) -> None:
        """The GPU is back: models loaded from now on get the configured ``vram_fraction``."""
        self.vram_fraction = self._healthy_vram
        self._gpu_lost = False
        self.changed()

    def next_id(self) -> int:
        return next(self._ids)

    def token_interval(self, fault: Fault | None = None, vram_fraction: float = 1.0) -> float:
        """Seconds between tokens; longer for a model partly on the CPU (``vram_fraction``)."""
        interval = 1.0 / self.token_rate if self.token_rate > 0 else 0.0
        interval *= cpu_slowdown(vram_fraction)
        if fault is Fault.SLOW:
            return max(1.0, 10 * interval)
        return interval

    # -------------------------------------------------------------- residency

    async def acquire(
        self, ex: Exchange, info: ModelInfo, context_length: int, keep_alive: float
    ) -> Lease:
        """Wait until ``info`` is resident for this request.

        The lease tells the load time to report: the whole wait when the model
        was loaded meanwhile (queue included, as Ollama measures it), else
        :data:`WARM_LOAD_SECONDS`. The caller must :meth:`release` it (use
        try/finally).
        """
        started = self.now()
        ticket = _Ticket()
        slot = Slot(info.name, context_length)
        self._residency.enqueue(ticket, slot, keep_alive)
        self._pump()
        try:
            await ex.wait(ticket.d)
        except BaseException:
            if ticket.granted:
                self._release(slot)
            elif self._residency.withdraw(ticket):
                self._pump()
            raise
        load = ticket.granted_at - started if ticket.loaded else WARM_LOAD_SECONDS
        return Lease(slot, load, self.slot_vram_fraction(slot))

    def release(self, lease: Lease) -> None:
        self._release(lease.slot)

    def _release(self, slot: Slot) -> None:
        if self._residency.release(slot, self.now()):
            self.changed()
        self._pump()

    def _pump(self) -> None:
        """Perform what the residency state machine says until it says nothing.

        Re-entrant calls (a granted request finishing synchronously) return at
        once: the outer loop asks the state machine again after every action.
        Then unload what has expired (not while suspended) and re-arm the
        expiry timers.
        """
        if self._pumping or self._closed:
            return
        self._pumping = True
        try:
            while True:
                step = self._residency.step()
                if step is None:
                    if self._gate.closed or not self._residency.expire(self.now()):
                        break
                    self.changed()
                elif isinstance(step, Grant):
                    now = self.now()
                    for waiter in step.waiters:
                        ticket = cast(_Ticket, waiter.token)
                        ticket.granted, ticket.granted_at = True, now
                        ticket.loaded = waiter.loaded
                        ticket.d.callback(None)
                else:
                    info = self.catalog.find(step.slot.model)
                    seconds = info.load_time if info else self.load_time
                    self._load_call = self.timers.call_later(seconds, self._load_done)
                    self.changed()
        finally:
            self._pumping = False
        self._arm_expiries()

    def _load_done(self) -> None:
        self._load_call = None
        if self._gate.closed:  # a suspended box finishes nothing: at the wake
            self._after_wake(self._load_done)
            return
        loading = self._residency.loading
        info = self.catalog.find(loading.model) if loading is not None else None
        healthy = info.vram_fraction if info is not None else 1.0
        self._residency.finish_load(self.now(), min(healthy, self.vram_fraction))
        self.changed()
        self._pump()

    def _arm_expiries(self) -> None:
        """One timer per idle resident slot with a finite keep_alive, at its expiry."""
        if self._closed:
            return
        wanted = self._residency.expiries()
        for slot, (when, call) in list(self._expiry.items()):
            if wanted.get(slot) != when:
                self.timers.cancel(call)
                del self._expiry[slot]
        now = self.now()
        for slot, when in wanted.items():
            if slot not in self._expiry:
                call = self.timers.call_later(when - now, partial(self._expired, slot, when))
                self._expiry[slot] = (when, call)

    def _expired(self, slot: Slot, when: float) -> None:
        if self._gate.closed:  # its timer ran out while suspended: unload at the wake
            self._after_wake(partial(self._expired, slot, when))
            return
        if self._expiry.get(slot, (None,))[0] == when:
            del self._expiry[slot]
        if self._residency.expire(max(self.now(), when)):
            self.changed()
        self._pump()

    def _after_wake(self, f: Callable[[], None]) -> None:
        passage = self._gate.passage()
        passage.addCallback(lambda _: f())
        passage.addErrback(lambda failure: failure.trap(CancelledError))

    # -------------------------------------------------------------- exchanges

    def record(self, record: RecordedRequest) -> None:
        self.requests.append(record)
        self._trim(self.requests)
        self.changed()

    def _trim(self, records: list[Any]) -> None:
        """Bound memory in long benchmarks: drop the oldest records (in batches)."""
        limit = self.record_limit
        if limit is not None and len(records) > limit + max(1, limit // 10):
            del records[: len(records) - limit]

    def begin(self, ex: Exchange) -> None:
        self._exchanges.add(ex)
        if ex.inference:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self.changed()

    def end(self, ex: Exchange, record: RecordedRequest | None) -> None:
        self._exchanges.discard(ex)
        if record is not None:
            record.status = ex.request.code if ex.started or not ex.gone else None
            record.finished_at = self.now()
            record.model = record.model or ex.model
        if ex.inference:
            self.in_flight -= 1
            if ex.completed:
                self.completed += 1
            elif ex.gone and not ex.aborted:
                phase = "streaming" if ex.started else "waiting"
                self.disconnects.append(Disconnect(ex.method, ex.path, ex.model, self.now(), phase))
                self._trim(self.disconnects)
        self.changed()

    # -------------------------------------------------------------- lifecycle

    @property
    def closed(self) -> bool:
        return self._closed

    def resource(self) -> IResource:
        """The twisted.web resource serving the whole API (mount it anywhere)."""
        return cast(IResource, self._site.resource)

    def listen(self, endpoint: str = "tcp:0:interface=127.0.0.1") -> Deferred[int]:
        """Listen on a Twisted server endpoint string; fires with the port number."""
        return Deferred.fromCoroutine(self._listen(endpoint))

    async def _listen(self, description: str) -> int:
        if self._closed:
            raise RuntimeError("the simulator is closed; create a new one")
        if self._port is not None or self.port is not None:
            raise RuntimeError("the simulator is already listening")
        port: IListeningPort = await serverFromString(self.reactor, description).listen(self._site)
        self._port = port
        address: Any = port.getHost()
        self.port = int(getattr(address, "port", 0)) or None
        kind = type(address).__name__
        host = str(getattr(address, "host", "127.0.0.1"))
        if kind == "IPv4Address":
            self._rebind = TCP4ServerEndpoint(self.reactor, self.port, interface=host)
            self.host = "127.0.0.1" if host == "0.0.0.0" else host
        elif kind == "IPv6Address":
            self._rebind = TCP6ServerEndpoint(self.reactor, self.port, interface=host)
            self.host = "::1" if host == "::" else host
        else:
            self._rebind = serverFromString(self.reactor, description)
        return self.port or 0

    def sleep(self, seconds: float | None = None, *, refuse: bool = False) -> Deferred[None]:
        """Go to sleep; with ``seconds``, wake up by itself afterwards.

        By default the box is suspended: the port stays bound but nothing is
        accepted (the kernel queues new connections), open connections are
        neither read nor written, and generation, loads and expiries stand
        still; everything goes on at :meth:`wake`. With ``refuse=True`` the
        box is off: it stops listening (connections are refused) and drops
        open connections. Either way the models stay resident. Switching
        modes wakes first.
        """
        return self._sleep_lock.run(self._sleep, seconds, refuse)

    async def _sleep(self, seconds: float | None, refuse: bool) -> None:
        if self.port is None:
            raise RuntimeError("the simulator is not listening")
        if self._closed:
            raise RuntimeError("the simulator is closed")
        mode: SleepMode = "refused" if refuse else "suspended"
        if self._sleep_mode not in (None, mode):
            await self._wake()
        self.timers.cancel(self._wake_call)
        self._wake_call = None
        if mode == "suspended":
            self._suspend()
        else:
            port, self._port = self._port, None
            if port is not None:
                self._stop(port)
            self._drop_connections()
        self._sleep_mode = mode
        if seconds is not None:
            self._wake_call = self.timers.call_later(seconds, self._wake_up)
        self.changed()
        stopping = self._stopping
        if stopping is not None and mode == "refused":
            await stopping

    def _suspend(self) -> None:
        self._gate.close()
        self._site.suspend()
        if self._port is not None:
            cast(Any, self._port).stopReading()  # bound, not accepting: handshakes queue up

    def _stop(self, port: IListeningPort) -> None:
        stopping: Deferred[object] = maybeDeferred(port.stopListening)
        self._stopping = stopping

        def done(result: object) -> object:
            if self._stopping is stopping:
                self._stopping = None
            return result

        stopping.addBoth(done)

    def _wake_up(self) -> None:
        self._wake_call = None
        self.wake().addErrback(lambda f: _log.failure("simulator could not wake", f))

    def wake(self) -> Deferred[None]:
        """Go on where it stopped (suspended) or listen again on the same port (refused).

        A no-op when awake. After a suspension, fires once the paused
        exchanges have been let through.
        """
        return self._sleep_lock.run(self._wake)

    async def _wake(self) -> None:
        self.timers.cancel(self._wake_call)
        self._wake_call = None
        if self._closed:
            return
        if self._sleep_mode == "suspended":
            await self._resume()
            return
        stopping = self._stopping
        if stopping is not None:
            await stopping
        if self._port is not None or self._rebind is None or self._closed:
            return
        self._port = await self._rebind.listen(self._site)
        self._sleep_mode = None
        self.changed()

    async def _resume(self) -> None:
        self._site.resume()
        if self._port is not None:
            cast(Any, self._port).startReading()
        self._sleep_mode = None
        self.changed()
        try:
            # Two turns make the reactor poll the connections once more, so a
            # client that left meanwhile is noticed before its exchange goes on.
            await self.timers.delay(0)
            await self.timers.delay(0)
        except CancelledError:
            if self._closed:
                return
            raise
        self._gate.open()
        self.changed()

    def _drop_connections(self) -> None:
        for ex in list(self._exchanges):
            ex.abort()
        self._site.drop_connections()

    def close(self) -> Deferred[None]:
        """Stop listening, cancel every timer, drop every connection; fires when done."""
        return Deferred.fromCoroutine(self._close())

    async def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        port, self._port = self._port, None
        if port is not None:
            self._stop(port)
        self._drop_connections()
        self.timers.close()
        self._load_call = None
        self._expiry.clear()
        self._wake_call = None
        self._gate.shut()
        self._residency.cancel_load()
        for waiter in list(self._residency.waiting):
            self._residency.withdraw(waiter.token)
            cast(_Ticket, waiter.token).d.cancel()
        self._watchers.cancel_all()
        pending: list[Deferred[Any]] = self._site.connections_lost()
        if self._stopping is not None:
            pending.append(self._stopping)
        if pending:
            await DeferredList(pending, consumeErrors=True)


__all__ = ["DEFAULT_MODELS", "OllamaSimulator"]
