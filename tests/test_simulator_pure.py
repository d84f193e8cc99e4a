"""Pure parts of the Ollama simulator: keep_alive, names, residency, faults, content."""

from __future__ import annotations

import base64
import math
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from foreman.testing import (
    Fault,
    ModelSpec,
    OllamaSimulator,
    RecordedRequest,
    embedding_vector,
    make_simulator,
    reply_text,
    reply_tokens,
)
from foreman.testing.__main__ import parse_args
from foreman.testing._content import VOCABULARY, make_plan, split_tokens, value_for_schema
from foreman.testing._content import embedding_base64 as b64
from foreman.testing._faults import FaultBook
from foreman.testing._models import (
    DEFAULT_KEEP_ALIVE,
    FOREVER,
    Catalog,
    canonical_name,
    describe,
    parse_keep_alive,
)
from foreman.testing._residency import Grant, Residency, Slot, StartLoad
from tests.budget import examples


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (None, DEFAULT_KEEP_ALIVE),
        ("10m", 600.0),
        ("1h30m", 5400.0),
        ("300ms", 0.3),
        ("0", 0.0),
        (0, 0.0),
        (2.5, 2.5),
        (-1, FOREVER),
        ("-1m", FOREVER),
        ("45", 45.0),
    ],
)
def test_parse_keep_alive(value: object, seconds: float) -> None:
    assert parse_keep_alive(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", ["soon", "10x", True, [], "", "m"])
def test_parse_keep_alive_rejects(value: object) -> None:
    with pytest.raises(ValueError):
        parse_keep_alive(value)


def test_canonical_names_and_derived_details() -> None:
    assert canonical_name("llama3.2") == "llama3.2:latest"
    assert canonical_name("qwen3:0.6b") == "qwen3:0.6b"
    assert canonical_name("hf.co/org/model") == "hf.co/org/model:latest"
    qwen = describe("qwen3:0.6b", 0.1, 0.0)
    assert (qwen.family, qwen.parameter_size, qwen.embedding) == ("qwen3", "0.6B", False)
    assert "thinking" in qwen.capabilities
    embed = describe("nomic-embed-text", 0.1, 0.0)
    assert embed.embedding and embed.capabilities == ["embedding"]
    slow = describe(ModelSpec("big", load_time=3.0), 0.1, 0.0)
    assert slow.load_time == 3.0 and slow.name == "big:latest"


def test_catalog_pull_copy_remove() -> None:
    catalog = Catalog.build(["a"], ["b"], 0.1, 0.0)
    assert catalog.find("a:latest") is not None
    assert catalog.pull_spec("b") is not None and catalog.pull_spec("c") is None
    assert catalog.pull_spec("a") is not None  # present models re-pull fine
    assert catalog.copy("a", "a2", 1.0) and catalog.find("a2") is not None
    assert not catalog.copy("zz", "y", 1.0)
    assert catalog.remove("a") and catalog.find("a") is None


A, B = Slot("a:latest", 4096), Slot("b:latest", 4096)


def test_residency_loads_then_grants_in_order() -> None:
    r = Residency()
    r.enqueue("t1", A, 300.0)
    r.enqueue("t2", B, 300.0)
    r.enqueue("t3", A, 300.0)
    assert r.step() == StartLoad(A, None)
    assert r.step() is None  # loading
    r.finish_load()
    grant = r.step()
    assert isinstance(grant, Grant) and [w.token for w in grant.waiters] == ["t1"]
    assert r.step() is None  # b waits for a's user to finish
    assert r.release()
    assert r.step() == StartLoad(B, A)
    r.finish_load()
    assert (r.loads, r.swaps) == (2, 1)
    grant = r.step()
    assert isinstance(grant, Grant) and [w.token for w in grant.waiters] == ["t2"]


def test_residency_other_context_length_reloads() -> None:
    r = Residency()
    r.enqueue(1, A, 300.0)
    assert isinstance(r.step(), StartLoad)
    r.finish_load()
    assert isinstance(r.step(), Grant)
    r.release()
    r.enqueue(2, Slot("a:latest", 8192), 300.0)
    assert r.step() == StartLoad(Slot("a:latest", 8192), A)


@settings(deadline=None, max_examples=examples(150))
@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("enqueue"), st.sampled_from([A, B])),
            st.tuples(st.just("finish"), st.none()),
            st.tuples(st.just("release"), st.none()),
            st.tuples(st.just("withdraw"), st.none()),
        ),
        max_size=40,
    )
)
def test_residency_invariants(ops: list[tuple[str, Slot | None]]) -> None:
    """Whatever happens: grants only for the resident slot, never two slots at once."""
    r = Residency()
    running: list[Slot] = []
    counter = 0
    for op, slot in ops:
        if op == "enqueue" and slot is not None:
            counter += 1
            r.enqueue(counter, slot, 300.0)
        elif op == "finish" and r.loading is not None:
            r.finish_load()
        elif op == "release" and running:
            running.pop()
            r.release()
        elif op == "withdraw" and r.waiting:
            r.withdraw(r.waiting[-1].token)
        while (step := r.step()) is not None:
            if isinstance(step, Grant):
                assert all(w.slot == r.resident for w in step.waiters)
                running += [w.slot for w in step.waiters]
            else:
                assert not running, "a load started while requests were running"
        assert r.users == len(running)
        assert all(s == r.resident for s in running)
        assert r.swaps <= r.loads


C = Slot("c:latest", 4096)


def _tokens(step: object) -> list[object]:
    assert isinstance(step, Grant), step
    return [w.token for w in step.waiters]


def _resident(r: Residency, *slots: tuple[Slot, float], now: float = 0.0) -> None:
    """Load ``slots`` (with their keep_alive) one by one and leave them idle."""
    for slot, keep_alive in slots:
        r.enqueue(slot, slot, keep_alive)
        assert r.step() == StartLoad(slot, None)
        r.finish_load(now)
        assert _tokens(r.step()) == [slot]
        r.release(slot, now)


def test_residency_rejects_max_loaded_below_one() -> None:
    with pytest.raises(ValueError):
        Residency(0)


def test_residency_several_slots_run_concurrently() -> None:
    r = Residency(2)
    r.enqueue(1, A, 300.0)
    r.enqueue(2, B, 300.0)
    assert r.step() == StartLoad(A, None)
    assert r.step() is None  # one load at a time: b waits behind it
    r.finish_load()
    assert _tokens(r.step()) == [1]
    assert r.step() == StartLoad(B, None)  # room for a second slot: nothing unloaded
    r.finish_load()
    assert _tokens(r.step()) == [2]
    r.enqueue(3, A, 300.0)
    r.enqueue(4, B, 300.0)
    assert _tokens(r.step()) == [3, 4]  # both resident: granted at once, side by side
    assert (r.users, r.loads, r.swaps) == (4, 2, 0)
    assert r.resident_slots == (B, A)  # most recently used first
    assert r.resident == B


def test_residency_grants_resident_slots_while_another_loads() -> None:
    r = Residency(2)
    _resident(r, (A, 300.0))
    r.enqueue("b1", B, 300.0)
    r.enqueue("a1", A, 300.0)
    r.enqueue("b2", B, 300.0)
    r.enqueue("a2", A, 300.0)
    assert r.step() == StartLoad(B, None)
    assert _tokens(r.step()) == ["a1", "a2"]  # b's waiters wait for its load, not a's
    r.enqueue("c", C, 300.0)
    r.enqueue("a3", A, 300.0)
    assert r.step() is None  # c needs a load while one runs: it blocks a3 behind it
    r.finish_load()
    grant = r.step()
    assert _tokens(grant) == ["b1", "b2"]
    assert isinstance(grant, Grant) and all(w.loaded for w in grant.waiters)
    assert r.step() is None  # c: two slots resident, both busy
    r.release(A)
    assert r.step() is None  # a still has a user
    r.release(A)
    assert r.step() == StartLoad(C, A)
    assert r.swaps == 0 and r.loading == C  # counted once the load is done
    r.finish_load()
    assert _tokens(r.step()) == ["c"]
    assert r.step() is None  # a3 waits for a slot now that a is gone
    assert r.swaps == 1


def test_residency_eviction_order() -> None:
    """Shortest keep_alive first, then the one expiring soonest, then by name."""
    r = Residency(2)
    _resident(r, (A, 600.0), (B, 60.0), now=10.0)
    r.enqueue("c", C, 300.0)
    assert r.step() == StartLoad(C, B)  # b has the shorter keep_alive, though more recent

    r = Residency(2)
    _resident(r, (B, 300.0), now=5.0)
    _resident(r, (A, 300.0), now=9.0)
    r.enqueue("c", C, 300.0)
    assert r.step() == StartLoad(C, B)  # same keep_alive: b expires first

    r = Residency(2)
    _resident(r, (B, 300.0), (A, 300.0), now=5.0)
    r.enqueue("c", C, 300.0)
    assert r.step() == StartLoad(C, A)  # a tie: by name

    r = Residency(2)
    _resident(r, (A, 1.0), (B, FOREVER))
    r.enqueue("hold-a", A, 1.0)
    assert _tokens(r.step()) == ["hold-a"]
    r.enqueue("c", C, 300.0)
    assert r.step() == StartLoad(C, B)  # never evicts a busy slot, whatever its keep_alive


def test_residency_expiry_per_slot() -> None:
    r = Residency(3)
    _resident(r, (A, 5.0), (B, FOREVER), (C, 0.0), now=10.0)
    assert r.resident_slots == (B, A)  # keep_alive 0: unloaded as its request ended
    assert r.expiries() == {A: 15.0}  # b never expires
    r.enqueue("a", A, 30.0)
    assert _tokens(r.step()) == ["a"]
    assert r.expiries() == {}  # busy: no timer
    assert r.expires_at(r.residents[0], 12.0) == 42.0  # busy: keep_alive from now
    r.release(A, 12.0)
    assert r.expiries() == {A: 42.0}
    assert r.expire(41.0) == []
    assert r.expire(42.0) == [A]
    assert [*r.resident_slots] == [B]


def test_residency_load_whose_waiter_left_expires() -> None:
    r = Residency(2)
    r.enqueue("gone", A, 0.0)
    assert r.step() == StartLoad(A, None)
    r.withdraw("gone")
    r.finish_load(3.0)
    assert r.step() is None
    assert r.expiries() == {A: 3.0} and r.expire(3.0) == [A]


def test_residency_unload_idle_now_busy_after() -> None:
    r = Residency(3)
    _resident(r, (A, 300.0), (B, 300.0), (Slot("a:latest", 8192), 300.0))
    r.enqueue("b", B, 300.0)
    r.step()
    assert r.unload("a:latest") == [Slot("a:latest", 8192), A]  # every num_ctx of it
    assert r.unload() == []  # b is busy: it goes once its request ends
    assert r.release(B) and r.resident_slots == ()


def test_residency_max_loaded_one_is_single_model() -> None:
    r = Residency()
    _resident(r, (A, 300.0))
    r.enqueue("b", B, 300.0)
    assert r.step() == StartLoad(B, A)
    r.finish_load()
    assert (r.loads, r.swaps) == (2, 1)
    grant = r.step()
    assert isinstance(grant, Grant) and grant.waiters[0].loaded
    r.enqueue("b2", B, 0.0)
    assert _tokens(r.step()) == ["b2"]
    r.release(B)  # b's first request
    r.enqueue("a", A, 300.0)
    assert r.step() is None
    r.release(B)  # keep_alive 0 of the last admitted request: unloaded, not swapped
    assert r.step() == StartLoad(A, None)
    r.finish_load()
    assert (r.loads, r.swaps) == (3, 1)


SLOTS = [A, B, C, Slot("a:latest", 8192)]


class ResidencyMachine(RuleBasedStateMachine):
    """Random arrivals, loads, releases, withdrawals, unloads and time."""

    def __init__(self) -> None:
        super().__init__()
        self.r = Residency()
        self.running: list[Slot] = []
        self.now = 0.0
        self.tokens = 0
        self.withdrawn: set[int] = set()
        self.granted: list[int] = []

    @initialize(max_loaded=st.integers(min_value=1, max_value=3))
    def start(self, max_loaded: int) -> None:
        self.r = Residency(max_loaded)

    def pump(self) -> None:
        while True:
            loading = self.r.loading
            step = self.r.step()
            if step is None:
                if not self.r.expire(self.now):
                    return
                continue
            if isinstance(step, Grant):
                for waiter in step.waiters:
                    assert waiter.slot in self.r.resident_slots
                    self.running.append(waiter.slot)
                    self.granted.append(cast_int(waiter.token))
            else:
                assert loading is None, "two loads at once"
                assert step.unloaded not in self.running, "evicted a slot with users"
                assert step.slot not in self.r.resident_slots

    @rule(slot=st.sampled_from(SLOTS), keep_alive=st.sampled_from([0.0, 1.0, 5.0, FOREVER]))
    def enqueue(self, slot: Slot, keep_alive: float) -> None:
        self.tokens += 1
        self.r.enqueue(self.tokens, slot, keep_alive)
        self.pump()

    @precondition(lambda self: self.r.loading is not None)
    @rule()
    def finish(self) -> None:
        self.r.finish_load(self.now)
        self.pump()

    @precondition(lambda self: bool(self.running))
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        slot = self.running.pop(data.draw(st.integers(0, len(self.running) - 1)))
        self.r.release(slot, self.now)
        self.pump()

    @precondition(lambda self: bool(self.r.waiting))
    @rule(data=st.data())
    def withdraw(self, data: st.DataObject) -> None:
        waiter = data.draw(st.sampled_from(self.r.waiting))
        assert self.r.withdraw(waiter.token)
        self.withdrawn.add(cast_int(waiter.token))
        self.pump()

    @rule(seconds=st.sampled_from([0.5, 2.0, 10.0]))
    def tick(self, seconds: float) -> None:
        self.now += seconds
        self.pump()

    @rule(model=st.sampled_from([None, "a:latest", "b:latest"]))
    def unload(self, model: str | None) -> None:
        self.r.unload(model)
        self.pump()

    @invariant()
    def within_bounds(self) -> None:
        r = self.r
        slots = r.resident_slots
        assert len(slots) + (r.loading is not None) <= r.max_loaded
        assert len(set(slots)) == len(slots) and r.loading not in slots
        for entry in r.residents:
            assert entry.users == self.running.count(entry.slot)
        assert all(slot in slots for slot in self.running)
        assert r.swaps <= r.loads

    def teardown(self) -> None:
        """Once every user releases and every load finishes, every waiter has been granted."""
        for _ in range(200):
            if self.r.loading is not None:
                self.r.finish_load(self.now)
            elif self.running:
                self.r.release(self.running.pop(0), self.now)
            else:
                break
            self.pump()
        assert not self.r.waiting and not self.running and self.r.loading is None
        assert sorted(self.granted) == sorted(set(self.granted))
        assert set(self.granted) | self.withdrawn == set(range(1, self.tokens + 1))


def cast_int(token: object) -> int:
    assert isinstance(token, int)
    return token


ResidencyMachine.TestCase.settings = settings(
    max_examples=examples(300), stateful_step_count=40, deadline=None
)
TestResidencyMachine = ResidencyMachine.TestCase


def test_fault_book_counts_paths_and_order() -> None:
    book = FaultBook()
    book.add(Fault.HTTP_500, count=2)
    book.add("hang", count=1, path="/api/tags")
    assert book.take("/api/tags", inference=False) is Fault.HANG
    assert book.take("/api/tags", inference=False) is None
    assert book.take("/api/chat", inference=True) is Fault.HTTP_500
    assert book.take("/v1/embeddings", inference=True) is Fault.HTTP_500
    assert book.take("/api/chat", inference=True) is None
    book.add("RESET", count=None, path="*")
    assert all(book.take("/api/ps", inference=False) is Fault.RESET for _ in range(3))
    book.clear()
    assert book.describe() == []
    with pytest.raises(ValueError):
        book.add("nope")
    with pytest.raises(ValueError):
        book.add(Fault.HANG, count=0)


def test_reply_content_is_deterministic_and_documented() -> None:
    tokens = reply_tokens("llama3.2", "hi", 5)
    assert tokens == reply_tokens("llama3.2:latest", "hi", 5)
    assert len(tokens) == 5 and not tokens[0].startswith(" ")
    assert all(t.startswith(" ") for t in tokens[1:])
    assert all(t.strip() in VOCABULARY for t in tokens)
    assert reply_text("llama3.2", "hi", 5) == "".join(tokens)
    assert reply_text("qwen3", "hi", 5) != reply_text("llama3.2", "hi", 5)


@given(st.text(max_size=40), st.integers(min_value=1, max_value=64))
def test_embeddings_unit_length_float32_and_base64_roundtrip(text: str, dims: int) -> None:
    vector = embedding_vector("m", text, dims)
    assert len(vector) == dims
    assert math.isclose(math.sqrt(sum(x * x for x in vector)), 1.0, rel_tol=1e-5)
    decoded = struct.unpack(f"<{dims}f", base64.b64decode(b64(vector)))
    assert list(decoded) == vector
    assert vector == embedding_vector("m:latest", text, dims)


@given(st.text(max_size=60))
def test_split_tokens_reassembles(text: str) -> None:
    assert "".join(split_tokens(text)) == text


def test_plans() -> None:
    plain = make_plan(model="m", prompt="p", prompt_tokens=1, default_tokens=3)
    assert (len(plain.content), plain.done_reason, plain.tool_calls) == (3, "stop", [])
    limited = make_plan(model="m", prompt="p", prompt_tokens=1, default_tokens=3, num_predict=7)
    assert (len(limited.content), limited.done_reason) == (7, "length")
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": {
                    "type": "object",
                    "properties": {
                        "city": {"type": "string"},
                        "days": {"type": "integer"},
                        "unit": {"type": "string", "enum": ["c", "f"]},
                    },
                    "required": ["city", "unit"],
                },
            },
        }
    ]
    called = make_plan(model="m", prompt="p", prompt_tokens=1, default_tokens=3, tools=tools)
    assert called.content == [] and called.tool_calls[0].name == "get_weather"
    assert called.tool_calls[0].arguments == {"city": "sim-city", "unit": "c"}
    answered = make_plan(
        model="m", prompt="p", prompt_tokens=1, default_tokens=3, tools=tools, last_role="tool"
    )
    assert answered.tool_calls == [] and len(answered.content) == 3
    thinking = make_plan(model="m", prompt="p", prompt_tokens=1, default_tokens=2, think=True)
    assert len(thinking.thinking) == 4 and thinking.eval_count == 6
    schema = {"type": "object", "properties": {"n": {"type": "number"}, "ok": {"type": "boolean"}}}
    assert value_for_schema(schema) == {"n": 1.5, "ok": True}


def test_record_limit_keeps_the_newest() -> None:
    sim = OllamaSimulator(record_limit=5)
    for n in range(20):
        sim.record(RecordedRequest("GET", f"/{n}", "", {}, b"", None, float(n)))
    assert len(sim.requests) <= 6 and sim.requests[-1].path == "/19"


def test_make_simulator_and_command_line() -> None:
    sim = make_simulator()
    assert sim.token_rate == 20.0 and sim.load_time == 0.5
    assert sorted(sim.catalog.models) == [
        "llama3.2:latest",
        "nomic-embed-text:latest",
        "qwen3:0.6b",
    ]
    args = parse_args(
        ["--listen", "tcp:0", "--models", "a, b", "--token-rate", "7", "--token", "t"]
    )
    assert (args.listen, args.models, args.token_rate, args.token) == ("tcp:0", "a, b", 7.0, "t")
    assert args.max_loaded == 1 and parse_args(["--max-loaded", "3"]).max_loaded == 3
    assert make_simulator(max_loaded=3).max_loaded == 3 and sim.max_loaded == 1
    for bad in (0, -1):
        with pytest.raises(ValueError):
            OllamaSimulator(max_loaded=bad)
