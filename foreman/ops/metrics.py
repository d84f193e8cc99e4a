"""Prometheus metrics for ``GET /metrics``.

Each daemon has its own ``CollectorRegistry`` (tests run several daemons in
one process). Counters and histograms are updated where things happen;
gauges that mirror live state (queue depth, target up, worker busy) are read
at scrape time by a collector, so the hot paths pay nothing for them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from foreman import __version__

__all__ = ["CONTENT_TYPE", "Metrics"]

CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"

_WAIT_BUCKETS = (0.005, 0.05, 0.25, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
_WAKE_BUCKETS = (1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)
_LOAD_BUCKETS = (0.05, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 300)
_DB_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1)


class _LiveState:
    """Reads the daemon's live state at scrape time."""

    def __init__(self, read: Callable[[], dict[str, Any]]) -> None:
        self._read = read

    def collect(self) -> Iterator[Metric]:
        state = self._read()
        by_model = GaugeMetricFamily(
            "foreman_queue_depth", "Requests waiting for the worker, by model", labels=["model"]
        )
        for model, n in sorted(state["by_model"].items()):
            by_model.add_metric([model], n)
        yield by_model
        by_kind = GaugeMetricFamily(
            "foreman_queue_depth_by_kind",
            "Requests waiting for the worker, by kind (interactive or job)",
            labels=["kind"],
        )
        for kind in ("interactive", "job"):
            by_kind.add_metric([kind], state["by_kind"].get(kind, 0))
        yield by_kind
        yield GaugeMetricFamily(
            "foreman_jobs_retrying", "Jobs waiting out a retry backoff", value=state["retrying"]
        )
        yield GaugeMetricFamily(
            "foreman_target_up", "1 when the target answers, 0 when down", value=state["target_up"]
        )
        loaded = GaugeMetricFamily(
            "foreman_target_loaded_model", "Models resident on the target", labels=["model"]
        )
        for model in state["loaded_models"]:
            loaded.add_metric([model], 1)
        yield loaded
        yield GaugeMetricFamily(
            "foreman_inflight_requests",
            "Inference requests running at the target (0 or 1)",
            value=state["inflight"],
        )
        yield GaugeMetricFamily(
            "foreman_queue_paused",
            "1 while an operator has paused dispatching (POST /queue/pause or drain)",
            value=state.get("paused", 0),
        )
        yield GaugeMetricFamily(
            "foreman_queue_draining",
            "1 while a drain waits for, or has finished, the running request",
            value=state.get("draining", 0),
        )
        yield CounterMetricFamily(
            "foreman_worker_dispatched",
            "Requests the worker dispatched",
            value=state["dispatched"],
        )
        yield CounterMetricFamily(
            "foreman_model_switches",
            "Dispatches that needed a load while another model was resident",
            value=state["switches"],
        )
        yield CounterMetricFamily(
            "foreman_worker_model_loads",
            "Dispatches whose model was not resident (a load at the target)",
            value=state["model_loads"],
        )
        yield CounterMetricFamily(
            "foreman_requests_lost_to_target",
            "Requests declared lost because the target stopped answering mid-request",
            value=state["lost"],
        )
        cost = GaugeMetricFamily(
            "foreman_model_load_cost_seconds",
            "Learned load time per model (weighted mean of observed loads)",
            labels=["model"],
        )
        for model, seconds in sorted(state["load_costs"].items()):
            cost.add_metric([model], seconds)
        yield cost
        vram = GaugeMetricFamily(
            "foreman_model_vram_fraction",
            "Share of each resident model in GPU memory (size_vram / size from /api/ps;"
            " well below 1: partly or wholly on the CPU)",
            labels=["model"],
        )
        for model, fraction in sorted(state.get("vram_fractions", {}).items()):
            vram.add_metric([model], fraction)
        yield vram
        if state["last_wake"] is not None:
            yield GaugeMetricFamily(
                "foreman_target_last_wake_seconds",
                "How long the last wait for a down target took, until it answered",
                value=state["last_wake"],
            )
        deliveries = CounterMetricFamily(
            "foreman_webhook_deliveries",
            "Webhook delivery attempts by outcome",
            labels=["outcome"],
        )
        for outcome in ("delivered", "retry", "gone"):
            deliveries.add_metric([outcome], state["webhooks"].get(outcome, 0))
        yield deliveries
        yield CounterMetricFamily(
            "foreman_webhook_events_failed",
            "Webhook events given up after the whole retry schedule",
            value=state["webhooks_failed"],
        )


class Metrics:
    def __init__(self) -> None:
        # a `_created` series per counter and histogram doubles the scrape for
        # nothing a dashboard uses (process-wide switch; foreman owns its process)
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "foreman_http_requests",
            "HTTP requests by route class and status",
            ["route", "status"],
            registry=r,
        )
        self.queue_wait = Histogram(
            "foreman_queue_wait_seconds",
            "Time from arrival to dispatch",
            ["kind"],
            buckets=_WAIT_BUCKETS,
            registry=r,
        )
        self.transitions = Counter(
            "foreman_job_transitions", "Job state changes", ["state"], registry=r
        )
        self.loads = Counter(
            "foreman_model_loads", "Explicit model loads before a job", ["model"], registry=r
        )
        self.load_seconds = Histogram(
            "foreman_model_load_seconds",
            "Duration of explicit model loads",
            buckets=_LOAD_BUCKETS,
            registry=r,
        )
        self.wake_seconds = Histogram(
            "foreman_target_wake_seconds",
            "Waits for a down target (from the first wait or Wake-on-LAN until it answered)",
            buckets=_WAKE_BUCKETS,
            registry=r,
        )
        self.db_commit = Histogram(
            "foreman_db_commit_seconds",
            "SQLite group-commit transaction time",
            buckets=_DB_BUCKETS,
            registry=r,
        )
        self.db_batch = Histogram(
            "foreman_db_commit_writes",
            "Writes per group-commit transaction",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
            registry=r,
        )
        info = Gauge("foreman_build_info", "foreman build (always 1)", ["version"], registry=r)
        info.labels(__version__).set(1)
        self._request_children: dict[tuple[str, int], Any] = {}
        self._wait_children: dict[str, Any] = {}

    def watch(self, read: Callable[[], dict[str, Any]]) -> None:
        self.registry.register(_LiveState(read))  # type: ignore[arg-type]

    def request(self, route: str, status: int) -> None:
        key = (route, status)
        child = self._request_children.get(key)
        if child is None:
            child = self._request_children[key] = self.requests.labels(route, str(status))
        child.inc()

    def dispatched(self, kind: str, waited: float) -> None:
        child = self._wait_children.get(kind)
        if child is None:  # ``labels`` takes a lock and builds a key: once per kind
            child = self._wait_children[kind] = self.queue_wait.labels(kind)
        child.observe(waited)

    def woke(self, seconds: float) -> None:
        self.wake_seconds.observe(seconds)

    def transition(self, state: str) -> None:
        self.transitions.labels(state).inc()

    def model_loaded(self, model: str, seconds: float) -> None:
        self.loads.labels(model).inc()
        self.load_seconds.observe(seconds)

    def commit(self, seconds: float, writes: int) -> None:
        self.db_commit.observe(seconds)
        self.db_batch.observe(writes)

    def render(self) -> bytes:
        data: bytes = generate_latest(self.registry)
        return data
