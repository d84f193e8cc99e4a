"""The resident-set view: /api/ps parsing, expiry margin, what the worker observes."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from foreman.core.residency import (
    ResidentModel,
    ResidentSet,
    canonical_model,
    parse_ps,
    parse_time,
    read_ps,
)
from tests.budget import examples


def test_parse_time_reads_ollamas_nanoseconds_and_offsets() -> None:
    assert parse_time("2024-06-04T14:38:31.83753-07:00") == 1717537111.83753
    assert parse_time("2024-06-04T21:38:31.837530123Z") == 1717537111.83753
    assert parse_time("2024-06-04T21:38:31Z") == 1717537111.0
    assert parse_time("2318-08-01T00:00:00Z") is not None  # keep_alive -1
    assert parse_time("yesterday") is None
    assert parse_time("2024-06-04T21:38:31") is None  # no zone: not Ollama's


def test_parse_ps_takes_names_expiries_and_vram() -> None:
    doc = {
        "models": [
            {"name": "llama3.2:latest", "expires_at": "2030-01-01T00:00:00Z", "size_vram": 5},
            {"model": "qwen3:0.6b", "expires_at": "not a time"},
            {"nothing": True},
            "junk",
        ]
    }
    got = parse_ps(doc)
    assert got == [
        ResidentModel("llama3.2:latest", parse_time("2030-01-01T00:00:00Z") or 0.0, 5),
        ResidentModel("qwen3:0.6b", math.inf, None),
    ]
    assert parse_ps({"models": "x"}) is None and parse_ps([]) is None


def test_names_skip_models_about_to_expire_and_alias_latest() -> None:
    view = ResidentSet(margin=5.0)
    view.observe_ps(
        [ResidentModel("a:latest", 1000.0), ResidentModel("b:7b", 104.0)],
        now=100.0,
    )
    assert view.names(100.0) == ("a:latest",)  # b expires in 4 s
    assert view.capacity == 2
    assert view.is_resident("a", 100.0) and not view.is_resident("b:7b", 100.0)


def test_a_response_makes_a_model_resident_and_most_recent() -> None:
    view = ResidentSet(keep_alive=300.0)
    view.observe_ps([ResidentModel("a:latest", 500.0)], now=100.0)
    view.observe_response("b", now=110.0)
    assert view.names(110.0) == ("b:latest", "a:latest")
    view.observe_response("a", now=120.0)
    assert view.names(120.0) == ("a:latest", "b:latest")
    # /api/ps is the authority: b is gone (evicted), a's keep-alive is what it says
    view.observe_ps([ResidentModel("a:latest", 130.0)], now=121.0)
    assert view.names(121.0) == ("a:latest",)
    assert view.names(126.0) == ()  # within the margin of its expiry
    described = view.describe(121.0)
    assert described[0]["name"] == "a:latest" and described[0]["expires_in_s"] == 9.0


def test_load_cost_is_a_weighted_mean() -> None:
    view = ResidentSet()
    view.observe_load("a", 10.0)
    view.observe_load("a:latest", 20.0)
    assert view.load_seconds("a") == 15.0
    view.observe_load("a", math.nan)
    view.observe_load("a", -1.0)
    assert view.load_costs == {"a:latest": 15.0}
    assert view.load_seconds("b") is None
    assert (
        canonical_model("x/y:1") == "x/y:1" and canonical_model("reg:5000/y") == "reg:5000/y:latest"
    )


@given(
    events=st.lists(
        st.tuples(
            st.sampled_from(["ps", "response"]),
            st.sampled_from(["a", "b:1", "c"]),
            st.floats(0, 100, allow_nan=False),
        ),
        max_size=30,
    )
)
@settings(max_examples=examples(200), deadline=None)
def test_never_counts_a_model_expiring_within_the_margin(
    events: list[tuple[str, str, float]],
) -> None:
    view = ResidentSet(margin=5.0, keep_alive=30.0)
    now = 0.0
    for kind, model, step in events:
        now += step / 10
        if kind == "ps":
            view.observe_ps([ResidentModel(canonical_model(model), now + step)], now)
        else:
            view.observe_response(model, now)
        for name in view.names(now):
            assert view.is_resident(name, now)
        assert view.capacity >= len(view.names(now))


def test_read_ps_takes_the_first_string_name_and_refuses_other_bodies() -> None:
    body = b'{"models": [{"name": 5, "model": "qwen3"}, {"name": "", "model": "x:1"}]}'
    assert [m.name for m in read_ps(body) or []] == ["qwen3:latest", "x:1"]
    assert read_ps(b"not json") is None
    assert read_ps(b"[" * 100_000 + b"]" * 100_000) is None  # nested too deeply
    assert read_ps(b'{"models": {}}') is None
