"""Pure parts of the Ollama simulator: keep_alive, names, residency, faults, content."""

from __future__ import annotations

import base64
import math
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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
