"""The resident-set view: /api/ps parsing, expiry margin, what the worker observes."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from foreman.core.residency import (
    ON_CPU_BELOW,
    ResidentModel,
    ResidentSet,
    VramNotice,
    VramWatch,
    canonical_model,
    human_bytes,
    on_cpu,
    parse_ps,
    parse_time,
    read_ps,
    vram_fraction,
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


# -- a model on the CPU (a GPU that came back wrong) ---------------------------------

GB = 1_000_000_000


def _ps(name: str, size_vram: int | None, size: int | None) -> ResidentModel:
    return ResidentModel(name, math.inf, size_vram, size)


def test_parse_ps_reads_size_and_refuses_sizes_that_are_not_byte_counts() -> None:
    doc = {
        "models": [
            {"name": "a:1", "size": 4 * GB, "size_vram": GB},
            {"name": "b:1", "size": True, "size_vram": -1},
            {"name": "c:1", "size": 1.5, "size_vram": "3"},
        ]
    }
    got = parse_ps(doc) or []
    assert [(m.size_vram, m.size) for m in got] == [(GB, 4 * GB), (None, None), (None, None)]
    assert vram_fraction(got[0]) == 0.25 and on_cpu(got[0])
    assert [vram_fraction(m) for m in got[1:]] == [None, None]


def test_the_fraction_in_vram_and_the_on_cpu_rule() -> None:
    assert vram_fraction(_ps("a:1", 4 * GB, 4 * GB)) == 1.0
    assert vram_fraction(_ps("a:1", 0, 4 * GB)) == 0.0
    assert vram_fraction(_ps("a:1", 5 * GB, 4 * GB)) == 1.0  # never above 1
    assert vram_fraction(_ps("a:1", 0, 0)) is None  # nothing to divide by
    assert vram_fraction(_ps("a:1", None, 4 * GB)) is None
    assert vram_fraction(_ps("a:1", GB, None)) is None
    assert not on_cpu(_ps("a:1", 9 * GB, 10 * GB))  # 90 %: on the GPU
    assert on_cpu(_ps("a:1", 9 * GB - 1, 10 * GB))
    assert not on_cpu(_ps("a:1", 5, 10), threshold=0.5) and on_cpu(_ps("a:1", 4, 10), 0.5)
    assert not on_cpu(_ps("a:1", None, None)), "unknown is not called on the CPU"


@given(
    size=st.integers(0, 10**13),
    vram=st.integers(0, 10**13),
    threshold=st.floats(0, 1),
)
@settings(max_examples=examples(200), deadline=None)
def test_the_rule_agrees_with_its_definition(size: int, vram: int, threshold: float) -> None:
    model = _ps("a:1", vram, size)
    fraction = vram_fraction(model)
    if size == 0:
        assert fraction is None and not on_cpu(model, threshold)
        return
    assert fraction is not None and 0.0 <= fraction <= 1.0
    assert fraction == min(1.0, vram / size)
    assert on_cpu(model, threshold) == (vram / size < threshold)


def test_human_bytes() -> None:
    assert human_bytes(0) == "0 B"
    assert human_bytes(999) == "999 B"
    assert human_bytes(1_200_000_000) == "1.2 GB"
    assert human_bytes(4_019_241_000) == "4.0 GB"
    assert human_bytes(512_000_000) == "512.0 MB"
    assert human_bytes(2_500) == "2.5 KB"


def test_describe_tells_the_size_the_fraction_and_on_cpu_per_model() -> None:
    view = ResidentSet()
    view.observe_ps(
        [
            ResidentModel("a:latest", 1000.0, GB, 3 * GB),
            ResidentModel("b:latest", 1000.0, 2 * GB, 2 * GB),
            ResidentModel("c:latest", 1000.0),
        ],
        now=100.0,
    )
    rows = {row["name"]: row for row in view.describe(100.0)}
    assert rows["a:latest"] == {
        "name": "a:latest",
        "expires_in_s": 900.0,
        "size_vram": GB,
        "size": 3 * GB,
        "vram_fraction": 0.333,
        "on_cpu": True,
        "counted": True,
        "load_s": None,
    }
    assert (rows["b:latest"]["vram_fraction"], rows["b:latest"]["on_cpu"]) == (1.0, False)
    assert (rows["c:latest"]["vram_fraction"], rows["c:latest"]["on_cpu"]) == (None, False)
    assert rows["c:latest"]["size"] is None
    assert view.vram_fractions() == {"a:latest": 1 / 3, "b:latest": 1.0}
    # a response keeps what /api/ps said; a model known only from a response has no sizes
    view.observe_response("a", now=110.0)
    view.observe_response("d", now=110.0)
    rows = {row["name"]: row for row in view.describe(110.0)}
    assert rows["a:latest"]["on_cpu"] and rows["a:latest"]["size"] == 3 * GB
    assert rows["d:latest"]["vram_fraction"] is None and not rows["d:latest"]["on_cpu"]
    assert set(view.vram_fractions()) == {"a:latest", "b:latest"}
    # the next /api/ps is the authority again
    view.observe_ps([ResidentModel("a:latest", 1000.0, 3 * GB, 3 * GB)], now=120.0)
    assert view.vram_fractions() == {"a:latest": 1.0}
    assert not view.describe(120.0)[0]["on_cpu"]


def _kinds(notices: list[VramNotice]) -> list[tuple[str, str]]:
    return [(n.model, "gpu" if n.recovered else "cpu") for n in notices]


def test_a_model_on_the_cpu_is_warned_about_once_per_ten_minutes() -> None:
    watch = VramWatch()
    slow = [_ps("a:1", 3 * GB, 10 * GB), _ps("b:1", 5 * GB, 5 * GB)]
    notices = watch.observe(slow, now=0.0)
    assert notices == [VramNotice("a:1", False, 0.3, 3 * GB, 10 * GB)]
    assert notices[0].percent == 30
    assert watch.observe(slow, now=5.0) == []
    assert watch.observe(slow, now=599.0) == []
    assert _kinds(watch.observe(slow, now=600.0)) == [("a:1", "cpu")]
    assert watch.observe(slow, now=900.0) == []
    assert watch.warned == ("a:1",)


def test_a_fraction_that_moves_a_lot_is_warned_about_at_once() -> None:
    watch = VramWatch()
    assert _kinds(watch.observe([_ps("a:1", 5, 10)], 0.0)) == [("a:1", "cpu")]
    assert watch.observe([_ps("a:1", 4, 10)], 1.0) == []  # 0.5 → 0.4: not news
    assert _kinds(watch.observe([_ps("a:1", 2, 10)], 2.0)) == [("a:1", "cpu")]  # 0.5 → 0.2
    assert watch.observe([_ps("a:1", 3, 10)], 3.0) == []  # measured from the last warning
    assert _kinds(watch.observe([_ps("a:1", 7, 10)], 4.0)) == [("a:1", "cpu")]  # up, still slow


def test_back_on_the_gpu_is_one_recovery_notice() -> None:
    watch = VramWatch()
    watch.observe([_ps("a:1", 0, 10)], 0.0)
    notices = watch.observe([_ps("a:1", 10, 10)], 10.0)
    assert notices == [VramNotice("a:1", True, 1.0, 10, 10)] and notices[0].percent == 100
    assert watch.observe([_ps("a:1", 10, 10)], 20.0) == []
    assert watch.warned == ()
    # a model never warned about has nothing to recover from
    assert watch.observe([_ps("b:1", 10, 10)], 30.0) == []


def test_a_model_that_leaves_keeps_its_record() -> None:
    watch = VramWatch()
    watch.observe([_ps("a:1", 0, 10)], 0.0)
    assert watch.observe([], 10.0) == []
    assert watch.observe([_ps("a:1", 0, 10)], 20.0) == [], "reloaded on the CPU: still limited"
    assert watch.observe([], 30.0) == []
    assert _kinds(watch.observe([_ps("a:1", 10, 10)], 40.0)) == [("a:1", "gpu")]


def test_unknown_sizes_and_percentages() -> None:
    watch = VramWatch()
    assert watch.observe([_ps("a:1", None, 10), _ps("b:1", 0, 0)], 0.0) == []
    assert VramNotice("a:1", False, 0.996, 1, 1).percent == 99, "short of 100 % is never 100 %"
    assert VramNotice("a:1", False, 0.004, 1, 1).percent == 0
    assert VramWatch(threshold=0.5).observe([_ps("a:1", 6, 10)], 0.0) == []


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["a:1", "b:1"]),
            st.one_of(st.none(), st.integers(0, 10)),  # size_vram of 10; None: not listed
            st.floats(0, 400, allow_nan=False),
        ),
        max_size=60,
    )
)
@settings(max_examples=examples(300), deadline=None)
def test_the_warnings_are_rate_limited_and_never_silent_for_long(
    steps: list[tuple[str, int | None, float]],
) -> None:
    watch = VramWatch()
    last: dict[str, tuple[float, float]] = {}  # model -> (time, fraction) of its last warning
    now = 0.0
    for model, vram, step in steps:
        now += step
        listed = [] if vram is None else [_ps(model, vram, 10)]
        notices = watch.observe(listed, now)
        assert len(notices) <= len(listed)
        for notice in notices:
            assert notice.model == model
            if notice.recovered:
                assert notice.fraction >= ON_CPU_BELOW
                assert model in last, "a recovery follows a warning"
                del last[model]
            else:
                assert notice.fraction < ON_CPU_BELOW
                before = last.get(model)
                if before is not None:
                    at, fraction = before
                    assert now - at >= 600.0 or abs(notice.fraction - fraction) >= 0.2
                last[model] = (now, notice.fraction)
        if vram is None:
            continue
        if vram / 10 < ON_CPU_BELOW:
            at, fraction = last[model]  # warned about, and not long ago
            assert now - at < 600.0 and abs(vram / 10 - fraction) < 0.2
        else:
            assert model not in last, "back on the GPU: no warning stands"
        assert watch.warned == tuple(sorted(last))


def test_the_room_is_what_api_ps_has_shown_not_what_responses_counted() -> None:
    view = ResidentSet(keep_alive=300.0)
    view.observe_ps([ResidentModel("a:latest", 500.0), ResidentModel("b:latest", 500.0)], 100.0)
    assert view.capacity == 2
    view.observe_response("c", now=110.0)  # did its load push a or b out? not known yet
    assert view.capacity == 3
    view.observe_ps([ResidentModel("c:latest", 500.0), ResidentModel("a:latest", 500.0)], 111.0)
    assert view.capacity == 2  # /api/ps says: room for two
