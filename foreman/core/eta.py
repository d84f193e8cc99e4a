"""Estimated start and finish of what waits (pure): learned per model, walked in dispatch order.

What is learned, per model, from the worker's own dispatches: how long one
request keeps the target busy once its model is resident (a weighted mean,
so a box that got slower is followed within a few requests), and what a
load costs (``core.residency``). An estimate walks the dispatch order the
scheduler would follow, adds a load wherever the simulated resident set
does not hold the model (least recently used pushed out, as Ollama does),
and the remaining time of the running request.

An estimate is never a promise when nothing was learned: each one says
whether every request before it (and itself) is of a model with learned
times (``known``); otherwise the unknown ones count the mean of the models
that were learned, or ``DEFAULT_SERVICE`` when none was, and say so.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping, Sequence

from attrs import define, field, frozen

from foreman.core.residency import canonical_model
from foreman.core.scheduler import INTERACTIVE, Waiting, after_pick

__all__ = ["DEFAULT_SERVICE", "Estimator", "Eta", "Running"]

DEFAULT_SERVICE = 5.0  # seconds a request is guessed to take when nothing is learned
WEIGHT = 0.3  # of the newest sample in the weighted mean
SHARE_WINDOW = 300.0  # seconds over which interactive requests' share of the target is seen
MAX_SHARE = 0.8
MIN_SHARE_WINDOW = 10.0  # seconds: a share is never judged over less


@frozen
class Eta:
    start: float
    finish: float
    known: bool  # False: a model on the way has no learned times yet (or see ``reason``)
    unknown_models: tuple[str, ...] = ()
    reason: str | None = None  # why it is not a promise, when not for unknown models

    def as_dict(self, stamp: Callable[[float], object]) -> dict[str, object]:
        """The public form; ``stamp`` turns epoch seconds into the API's time format."""
        body: dict[str, object] = {
            "start_at": stamp(self.start),
            "finish_at": stamp(self.finish),
            "known": self.known,
        }
        if not self.known:
            names = ", ".join(self.unknown_models) or "these models"
            body["note"] = self.reason or f"a guess: nothing has finished yet for {names}"
        return body

    def held(self, reason: str) -> Eta:
        """The same estimate, no longer a promise for ``reason`` (the queue is paused)."""
        return Eta(self.start, self.finish, False, self.unknown_models, reason)


@frozen
class Running:
    """The request at the target now: its model, when it was dispatched, its load."""

    model: str
    since: float
    load: float = 0.0  # the learned cost of the load it began with (0: none needed)


@define
class _Mean:
    value: float | None = None
    samples: int = 0

    def add(self, sample: float) -> None:
        self.samples += 1
        if self.value is None:
            self.value = sample
        else:
            self.value += WEIGHT * (sample - self.value)


@define
class Estimator:
    """Per-model service times, learned; estimates over a dispatch order."""

    _service: dict[str, _Mean] = field(factory=dict)
    _interactive: deque[tuple[float, float]] = field(factory=deque)
    _first: float | None = None  # when the first interactive request seen began

    def observe(self, model: str, seconds: float, load_seconds: float | None = None) -> None:
        """A request for ``model`` held the target ``seconds`` (``load_seconds`` of it a load)."""
        busy = seconds - (load_seconds or 0.0)
        if busy < 0 or seconds > 24 * 3600:
            return
        self._service.setdefault(canonical_model(model), _Mean()).add(busy)

    def service(self, model: str) -> float | None:
        mean = self._service.get(canonical_model(model))
        return None if mean is None else mean.value

    def learned(self) -> dict[str, dict[str, float | int | None]]:
        """For ``/status``: what is known per model."""
        return {
            name: {
                "service_s": None if m.value is None else round(m.value, 3),
                "samples": m.samples,
            }
            for name, m in sorted(self._service.items())
        }

    def guess(self) -> float:
        """Seconds a request of a model with nothing learned is counted."""
        known = [m.value for m in self._service.values() if m.value is not None]
        return sum(known) / len(known) if known else DEFAULT_SERVICE

    def plan(
        self,
        now: float,
        order: Sequence[Waiting],
        *,
        running: Running | None,
        resident: Sequence[str],
        capacity: int,
        load_costs: Mapping[str, float],
    ) -> list[Eta]:
        """An estimate per item of ``order`` (the scheduler's dispatch order), in that order."""
        fallback = self.guess()
        clock = now
        unknown: list[str] = []
        current = tuple(dict.fromkeys(canonical_model(m) for m in resident))
        cap = max(capacity, len(current), 1)
        if running is not None:
            model = canonical_model(running.model)
            expected = self.service(model)
            if expected is None:
                unknown.append(model)
                expected = fallback
            # a request past its expected time is guessed to end soon, not in the past
            left = running.load + expected - (now - running.since)
            clock += max(left, expected * 0.1)
            current = after_pick(current, model, cap)  # its load may push another model out
        # chats and other interactive requests come in ahead of waiting jobs:
        # a job's wait stretches by the share of the target they have been taking
        stretch = 1.0 / (1.0 - self.interactive_share(now))
        plans: list[Eta] = []
        # per model name as the items spell it: (canonical name, learned time or None)
        seen: dict[str, tuple[str, float | None]] = {}
        named = tuple(unknown)
        for item in order:
            known = seen.get(item.model)
            if known is None:
                model = canonical_model(item.model)
                mean = self._service.get(model)
                known = seen[item.model] = (model, None if mean is None else mean.value)
            model, expected = known
            cost = 0.0 if model in current else load_costs.get(model, 0.0)
            if current[:1] != (model,):  # the most recent already: the set stays as it is
                current = after_pick(current, model, cap)
            if expected is None:
                if model not in unknown:
                    unknown.append(model)
                    named = tuple(unknown)
                expected = fallback
            start = clock  # a job starts (``loading``) when its load begins
            clock = start + cost + expected
            if item.kind == INTERACTIVE:
                plans.append(Eta(start, clock, not unknown, named))
            else:
                late = now + (start - now) * stretch
                plans.append(Eta(late, late + cost + expected, not unknown, named))
        return plans

    def interactive(self, seconds: float, now: float) -> None:
        """An interactive request held the target ``seconds``, ending at ``now``."""
        if self._first is None:
            self._first = now - seconds
        self._interactive.append((now, seconds))
        while self._interactive and self._interactive[0][0] < now - SHARE_WINDOW:
            self._interactive.popleft()

    def interactive_share(self, now: float) -> float:
        """The share of the target's time interactive requests took lately (at most 0.8)."""
        if self._first is None:
            return 0.0
        busy = sum(s for at, s in self._interactive if at >= now - SHARE_WINDOW)
        # over the window, or over what has been seen of it when foreman is younger
        seen = max(MIN_SHARE_WINDOW, min(SHARE_WINDOW, now - self._first))
        return min(MAX_SHARE, busy / seen)

    def placed(self, here: Eta, model: str) -> Eta:
        """An estimate for a request of ``model`` put where ``here`` was planned to start."""
        expected = self.service(model)
        if expected is None:
            name = canonical_model(model)
            unknown = here.unknown_models + ((name,) if name not in here.unknown_models else ())
            return Eta(here.start, here.start + self.guess(), False, unknown)
        return Eta(here.start, here.start + expected, here.known, here.unknown_models)

    def beyond(self, last: Eta | None, now: float, extra: int) -> Eta:
        """A rougher estimate ``extra`` places past ``last`` (past a planned prefix)."""
        base = now if last is None else last.finish
        step = self.guess()
        unknown = () if last is None else last.unknown_models
        known = last.known if last is not None else bool(self._service)
        return Eta(base + step * (extra - 1), base + step * extra, known, unknown)
