"""Which models are resident, who waits for which, what to load or evict: a pure state machine.

The simulated GPU holds up to ``max_loaded`` model instances, each a
:class:`Slot` (model name and context length: like Ollama, a request asking
for another ``num_ctx`` needs another instance even of the same model).
Requests queue in arrival order and the queue is processed in that order,
as Ollama's scheduler does:

* a waiter whose slot is resident is granted at once (requests for resident
  models run concurrently);
* a waiter whose slot is being loaded waits for that load without blocking
  the others;
* any other waiter needs a load. Ollama loads one model at a time and a
  pending request blocks those behind it, so the scan stops there while a
  load is in progress; otherwise the load starts, after evicting an idle
  slot when ``max_loaded`` are resident (shortest keep_alive first, then the
  one expiring soonest, then by name), or the scan stops until a slot is
  released when none is idle.

Each resident slot expires ``keep_alive`` seconds after its last request
ended (0: at once; ``inf``: never). Time is whatever the owner passes as
``now``. The reactor-side owner performs what :meth:`Residency.step` returns
(grant waiters, start a load timer), reports back with
:meth:`Residency.finish_load` and :meth:`Residency.release`, and arms one
timer per entry of :meth:`Residency.expiries`.
"""

from __future__ import annotations

from attrs import define, field, frozen
from attrs.validators import ge, instance_of

from foreman.testing._models import DEFAULT_KEEP_ALIVE, FOREVER


@frozen
class Slot:
    model: str
    context_length: int


@define(eq=False)
class Waiter:
    token: object
    slot: Slot
    keep_alive: float
    loaded: bool = False
    """Its slot was loaded while it waited (it reports the wait as load time)."""


@define(eq=False)
class Resident:
    """A resident slot: its requests running now and when it expires once idle."""

    slot: Slot
    keep_alive: float
    """Session duration: the keep_alive of the last request admitted to it."""
    expires_at: float
    """When it is unloaded if still idle (meaningful only while ``users == 0``)."""
    users: int = 0
    vram_fraction: float = 1.0
    """Share of the model in VRAM, fixed when it was loaded (below 1: partly on the CPU)."""

    def eviction_key(self) -> tuple[float, float, str, int]:
        """Ollama's order: shortest keep_alive, then soonest expiry, then name."""
        return (self.keep_alive, self.expires_at, self.slot.model, self.slot.context_length)


@frozen
class Grant:
    """These waiters may run now on their resident slots."""

    waiters: list[Waiter]


@frozen
class StartLoad:
    """Start loading ``slot`` (after unloading ``unloaded``); call finish_load when done."""

    slot: Slot
    unloaded: Slot | None


Step = Grant | StartLoad | None


@frozen
class Lease:
    """A granted request's hold on its slot, and the load time it reports (seconds)."""

    slot: Slot
    load: float
    vram_fraction: float = 1.0
    """Share of its model in VRAM (below 1 the tokens come slower)."""


@define
class Residency:
    max_loaded: int = field(default=1, validator=[instance_of(int), ge(1)])
    residents: list[Resident] = field(factory=list)
    """Resident slots, most recently used first."""
    loading: Slot | None = None
    waiting: list[Waiter] = field(factory=list)
    loads: int = 0
    swaps: int = 0
    """Loads that unloaded another slot to make room."""
    _load_swaps: bool = False
    _load_keep_alive: float = DEFAULT_KEEP_ALIVE

    # ------------------------------------------------------------ observing

    @property
    def resident(self) -> Slot | None:
        """The most recently used resident slot."""
        return self.residents[0].slot if self.residents else None

    @property
    def resident_slots(self) -> tuple[Slot, ...]:
        return tuple(entry.slot for entry in self.residents)

    @property
    def users(self) -> int:
        """Requests running on any resident slot."""
        return sum(entry.users for entry in self.residents)

    def find(self, slot: Slot) -> Resident | None:
        for entry in self.residents:
            if entry.slot == slot:
                return entry
        return None

    def expires_at(self, entry: Resident, now: float) -> float:
        """When ``entry`` expires: ``keep_alive`` after now while busy (as Ollama reports)."""
        return now + entry.keep_alive if entry.users else entry.expires_at

    def expiries(self) -> dict[Slot, float]:
        """Idle slots that expire at a finite time, and when (the owner arms these timers)."""
        return {
            entry.slot: entry.expires_at
            for entry in self.residents
            if entry.users == 0 and entry.expires_at != FOREVER
        }

    # ------------------------------------------------------------- queueing

    def enqueue(self, token: object, slot: Slot, keep_alive: float) -> None:
        self.waiting.append(Waiter(token, slot, keep_alive))

    def withdraw(self, token: object) -> bool:
        """Forget a waiter (its client left). A load already started goes on."""
        for index, waiter in enumerate(self.waiting):
            if waiter.token is token:
                del self.waiting[index]
                return True
        return False

    def step(self) -> Step:
        """The next thing to do, or None when nothing can happen yet."""
        granted: list[Waiter] = []
        blocked: Waiter | None = None
        for waiter in self.waiting:
            if waiter.slot == self.loading:
                continue
            if self.find(waiter.slot) is None:
                blocked = waiter
                break
            granted.append(waiter)
        if granted:
            self._grant(granted)
            return Grant(granted)
        if blocked is None or self.loading is not None:
            return None
        victim: Resident | None = None
        if len(self.residents) >= self.max_loaded:
            victim = self._victim()
            if victim is None:
                return None
            self.residents.remove(victim)
        self.loading = blocked.slot
        self._load_swaps = victim is not None
        self._load_keep_alive = blocked.keep_alive
        return StartLoad(blocked.slot, victim.slot if victim else None)

    def _grant(self, granted: list[Waiter]) -> None:
        chosen = {id(waiter) for waiter in granted}
        self.waiting[:] = [waiter for waiter in self.waiting if id(waiter) not in chosen]
        for waiter in granted:
            entry = self.find(waiter.slot)
            assert entry is not None
            entry.users += 1
            entry.keep_alive = waiter.keep_alive
            self.residents.remove(entry)
            self.residents.insert(0, entry)

    def _victim(self) -> Resident | None:
        idle = [entry for entry in self.residents if entry.users == 0]
        return min(idle, key=Resident.eviction_key, default=None)

    # ------------------------------------------------------------- reporting

    def finish_load(self, now: float = 0.0, vram_fraction: float = 1.0) -> Slot:
        """The load started by the last StartLoad is done: its slot is resident.

        ``vram_fraction`` is the share of it that went to VRAM.
        """
        slot = self.loading
        if slot is None:
            raise RuntimeError("no load in progress")
        self.loading = None
        keep_alive = self._load_keep_alive
        self.residents.insert(
            0, Resident(slot, keep_alive, now + keep_alive, vram_fraction=vram_fraction)
        )
        self.loads += 1
        self.swaps += 1 if self._load_swaps else 0
        for waiter in self.waiting:
            if waiter.slot == slot:
                waiter.loaded = True
        return slot

    def cancel_load(self) -> None:
        """Abandon a load in progress (the simulator is closing)."""
        self.loading = None

    def release(self, slot: Slot | None = None, now: float = 0.0) -> bool:
        """A granted request on ``slot`` ended; True when the slot is now idle.

        ``slot=None`` means the only busy slot. An idle slot with keep_alive 0
        is unloaded at once (before anything else may take its place).
        """
        if slot is None:
            busy = [entry for entry in self.residents if entry.users > 0]
            if len(busy) != 1:
                raise RuntimeError("release without a slot needs exactly one busy slot")
            entry: Resident | None = busy[0]
        else:
            entry = self.find(slot)
        if entry is None or entry.users <= 0:
            raise RuntimeError("release without a matching grant")
        entry.users -= 1
        if entry.users:
            return False
        if entry.keep_alive == 0:
            self.residents.remove(entry)
        else:
            entry.expires_at = now + entry.keep_alive
        return True

    def unload(self, model: str | None = None) -> list[Slot]:
        """Unload the idle slots (of ``model`` when given); busy ones once their requests end."""
        unloaded: list[Slot] = []
        for entry in list(self.residents):
            if model is not None and entry.slot.model != model:
                continue
            if entry.users:
                entry.keep_alive = 0.0
            else:
                self.residents.remove(entry)
                unloaded.append(entry.slot)
        return unloaded

    def expire(self, now: float) -> list[Slot]:
        """Unload the idle slots whose keep_alive has run out by ``now``."""
        expired = [e for e in self.residents if e.users == 0 and e.expires_at <= now]
        for entry in expired:
            self.residents.remove(entry)
        return [entry.slot for entry in expired]
