"""Which model is resident, who waits for which, when to load: a pure state machine.

The simulated GPU holds one model instance at a time, identified by a
:class:`Slot` (model name and context length: like Ollama, a request asking
for another ``num_ctx`` reloads even the same model). Requests queue in
arrival order. The head of the queue is served when its slot is resident;
otherwise, once no request uses the resident slot any more, the resident is
unloaded and the head's slot is loaded (a *swap* when something was
resident). The reactor-side owner performs what :meth:`Residency.step`
returns (grant waiters, start a load timer) and reports back with
:meth:`Residency.finish_load` and :meth:`Residency.release`.
"""

from __future__ import annotations

from attrs import define, field, frozen

from foreman.testing._models import DEFAULT_KEEP_ALIVE


@frozen
class Slot:
    model: str
    context_length: int


@define
class Waiter:
    token: object
    slot: Slot
    keep_alive: float


@frozen
class Grant:
    """These waiters may run now on the resident slot."""

    waiters: list[Waiter]


@frozen
class StartLoad:
    """Start loading ``slot``; call finish_load when its load time has passed."""

    slot: Slot
    unloaded: Slot | None


Step = Grant | StartLoad | None


@define
class Residency:
    resident: Slot | None = None
    loading: Slot | None = None
    users: int = 0
    keep_alive: float = DEFAULT_KEEP_ALIVE
    """Session duration of the resident slot: the last admitted request's keep_alive."""
    waiting: list[Waiter] = field(factory=list)
    loads: int = 0
    swaps: int = 0
    _load_swaps: bool = False
    _load_keep_alive: float = DEFAULT_KEEP_ALIVE

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
        if self.loading is not None or not self.waiting:
            return None
        head = self.waiting[0]
        if head.slot == self.resident:
            granted: list[Waiter] = []
            while self.waiting and self.waiting[0].slot == self.resident:
                granted.append(self.waiting.pop(0))
            self.users += len(granted)
            self.keep_alive = granted[-1].keep_alive
            return Grant(granted)
        if self.users > 0:
            return None
        unloaded = self.resident
        self.resident = None
        self.loading = head.slot
        self._load_swaps = unloaded is not None
        self._load_keep_alive = head.keep_alive
        return StartLoad(head.slot, unloaded)

    def finish_load(self) -> Slot:
        """The load started by the last StartLoad is done: its slot is resident."""
        if self.loading is None:
            raise RuntimeError("no load in progress")
        self.resident, self.loading = self.loading, None
        self.loads += 1
        self.swaps += 1 if self._load_swaps else 0
        self.keep_alive = self._load_keep_alive
        return self.resident

    def cancel_load(self) -> None:
        """Abandon a load in progress (the simulator is closing)."""
        self.loading = None

    def release(self) -> bool:
        """A granted request ended; True when the resident slot is now idle."""
        if self.users <= 0:
            raise RuntimeError("release without a matching grant")
        self.users -= 1
        return self.users == 0

    @property
    def idle(self) -> bool:
        return self.resident is not None and self.users == 0 and self.loading is None

    def unload(self, model: str | None = None) -> bool:
        """Unload the resident slot if idle (and of ``model`` when given)."""
        if not self.idle or self.resident is None:
            return False
        if model is not None and self.resident.model != model:
            return False
        self.resident = None
        return True
