"""The one place that builds every part and wires them to each other.

Nothing here starts anything (``foreman.app.services`` does, in order); it
only constructs objects and hands each its collaborators, so the whole
dependency graph of a running foreman can be read in one function.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from foreman.app.config import Config
from foreman.app.observe import live_state, request_line
from foreman.app.parts import Parts
from foreman.core.errors import BadRequest
from foreman.core.jobview import rfc3339
from foreman.core.scheduler import Scheduler
from foreman.jobs.artifacts import ArtifactStore
from foreman.jobs.batches import BatchService
from foreman.jobs.files import FileStore
from foreman.jobs.hub import JobHub
from foreman.jobs.runner import JobRunner
from foreman.jobs.service import JobService
from foreman.ops.metrics import Metrics
from foreman.outbox.delivery import Delivery, load_or_create_secret
from foreman.outbox.ssrf import InvalidWebhookURL, check_url, resolve_and_check
from foreman.store.database import Store
from foreman.target.monitor import TargetMonitor
from foreman.target.upstream import build_upstream
from foreman.target.wol import send_magic_packet
from foreman.web import job_routes
from foreman.web.auth import TokenCheck
from foreman.web.proxy import ProxyResource
from foreman.web.routes import build_app
from foreman.web.site import ForemanSite
from foreman.web.upload import Upload
from foreman.web.view import DaemonView
from foreman.work.control import QueueControl
from foreman.work.etaboard import EtaBoard
from foreman.work.queue import WorkQueue
from foreman.work.worker import Worker

__all__ = ["build_parts", "build_site"]


def build_parts(config: Config, reactor: Any) -> Parts:
    """Construct and wire every part for ``config`` (the target URL already final)."""
    metrics = Metrics()
    store = Store(config.db_path)
    store.commit_observer = metrics.commit
    upstream = build_upstream(reactor, config.target_url)
    monitor = TargetMonitor(
        reactor,
        config.target_url,
        config.target_token,
        upstream.agent,
        probe_timeout=config.probe_timeout,
    )
    queue = WorkQueue(Scheduler(config.max_wait), config.max_queue, reactor, reactor.seconds)
    hub = JobHub()
    artifacts = ArtifactStore(config.artifacts_dir)
    jobs = JobService(
        store=store,
        queue=queue,
        hub=hub,
        artifacts=artifacts,
        reactor=reactor,
        metrics=metrics,
        public_url=config.public_url,
        max_attempts=config.max_attempts,
        check_webhook=_webhook_check(config, reactor),
    )
    batches = BatchService(
        store=store,
        jobs=jobs,
        files=FileStore(config.files_dir),
        artifacts=artifacts,
        reactor=reactor,
        max_lines=config.batch_max_lines,
        line_limit=config.max_body,
        default_webhook=config.batch_webhook_url,
        check_webhook=_webhook_check(config, reactor),
    )
    runner = JobRunner(
        reactor=reactor,
        upstream=upstream,
        token=config.target_token,
        jobs=jobs,
        artifacts=artifacts,
        max_attempts=config.max_attempts,
        on_unreachable=monitor.mark_down,
        idle_timeout=config.job_idle_timeout,
        max_response=config.max_response,
    )
    worker = Worker(
        reactor=reactor,
        queue=queue,
        runner=runner,
        monitor=monitor,
        wake=_waker(config),
        storage=store,
    )
    worker.on_dispatch = lambda item, waited: metrics.dispatched(item.kind, waited)
    worker.on_wake = metrics.woke

    def loaded(model: str, seconds: float) -> None:
        metrics.model_loaded(model, seconds)
        worker.observe_load(model, seconds)

    runner.on_load = loaded
    runner.on_free = worker.job_freed
    runner.knows_resident = lambda model: worker.residency.is_resident(model, queue.clock())
    delivery = Delivery(
        reactor=reactor,
        store=store,
        secret=load_or_create_secret(config.data_dir, config.webhook_secret),
        allow_private=config.webhook_allow_private,
    )
    control = QueueControl(
        store, queue, worker, reactor, recording=lambda: runner.recorder.recording
    )
    etas = EtaBoard(queue, worker)

    def eta_of(key: str, position: int | None = None) -> dict[str, Any] | None:
        found = etas.of(key, position)
        return None if found is None else found.as_dict(rfc3339)

    def batch_eta(keys: Iterable[str]) -> dict[str, Any] | None:
        found = etas.last_of(keys)
        return None if found is None else found.as_dict(int)

    jobs.eta_of = eta_of
    batches.eta_of = batch_eta
    runner.recorder.on_recorded = control.recorded
    queue.paused = lambda: worker.paused
    jobs.outbox_listeners.append(delivery.poke)
    jobs.batch_active = batches.active
    batches.abort_running = worker.cancel_job
    jobs.resident = worker.resident
    jobs.live_tokens = runner.tokens_of
    proxy = ProxyResource(
        reactor,
        upstream,
        queue,
        monitor=monitor,
        target_token=config.target_token,
        idle_timeout=config.job_idle_timeout,
    )
    parts = Parts(
        config=config,
        reactor=reactor,
        store=store,
        metrics=metrics,
        upstream=upstream,
        monitor=monitor,
        queue=queue,
        hub=hub,
        artifacts=artifacts,
        jobs=jobs,
        batches=batches,
        runner=runner,
        worker=worker,
        control=control,
        delivery=delivery,
        proxy=proxy,
    )
    metrics.watch(lambda: live_state(parts))
    return parts


def build_site(parts: Parts, view: DaemonView) -> ForemanSite:
    """The one HTTP site: foreman's own routes over ``view``, the proxy for the rest."""
    config = parts.config
    # No form parsing: nothing here reads form posts, and parsing the
    # Content-Type of every POST costs ~25 µs on the proxy's hot path.
    site = ForemanSite(
        build_app(view).resource(),
        parts.proxy,
        TokenCheck(config.api_tokens),
        config.max_body,
        parsePOSTFormSubmission=False,
        reactor=parts.reactor,
    )
    site.report = request_line(parts.metrics, parts.reactor)
    site.lean_routes.update(job_routes.lean_routes(view))

    def upload(request: Any, length: int | None) -> Upload:
        return Upload(
            content_type=(request.getHeader(b"content-type") or b"").decode("latin-1"),
            new_writer=parts.batches.new_upload,
            limit=config.batch_max_bytes,
            transport=request.channel.transport,
        )

    site.uploads = upload
    return site


def _webhook_check(config: Config, reactor: Any) -> Any:
    async def check_webhook(url: str) -> None:
        problem = check_url(url)
        if problem is not None:
            raise BadRequest(f"webhook_url: {problem}", "invalid_webhook_url")
        if config.webhook_allow_private:
            return
        try:
            await resolve_and_check(reactor, url, False)
        except InvalidWebhookURL as e:
            raise BadRequest(f"webhook_url: {e}", "invalid_webhook_url") from None

    return check_webhook


def _waker(config: Config) -> Any:
    mac = config.wol_mac
    if mac is None:
        return None

    def wake() -> None:
        send_magic_packet(mac, config.wol_broadcast)

    return wake
