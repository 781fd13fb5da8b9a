"""What every stream of one process shares: the analysis cascade, VLM router, policies, store, publisher.

:func:`build_services` loads the models and policies (blocking work in executors) and returns a
:class:`StreamServices`; the single box and a cluster worker build it the same way and differ only in
the :class:`Publisher` they pass (the SQLite event bus, or the JetStream event log).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from streamwatch.analysis.base import create
from streamwatch.analysis.cascade import Cascade
from streamwatch.analysis.detectors import AnalyzerSettings
from streamwatch.analysis.encoder import Encoder, EncoderTier, load_labels
from streamwatch.analysis.model import AnalyzedFrame
from streamwatch.analysis.search import FrameSearch
from streamwatch.config import Settings
from streamwatch.events.model import AlertEvent, Event, HealthEvent, StreamState
from streamwatch.events.store import EventStore, StoredEvent
from streamwatch.outbound.actions import ActionDesk, ran_in
from streamwatch.runtime.blas import limit_blas
from streamwatch.runtime.cpu_account import CpuAccount, CpuBudget, cpu_budget
from streamwatch.runtime.model_health import ModelHealth, ModelWatch, router_snapshot
from streamwatch.runtime.overload import OverloadWatch
from streamwatch.runtime.policies import Engines
from streamwatch.server.metrics import Metrics
from streamwatch.vlm.escalation import EscalationQueue
from streamwatch.vlm.persona import Persona, load_persona
from streamwatch.vlm.prompts import DEFAULT_QUESTIONS, ComplianceQuestion
from streamwatch.vlm.registry import load_registry
from streamwatch.vlm.router import AdmissionGate, ModelRouter
from streamwatch.vlm.service import VLMService

logger = logging.getLogger(__name__)


class Publisher(Protocol):
    """Where a stream's events go: stored durably, then delivered. Returns the event with its id."""

    async def publish(self, event: Event) -> StoredEvent: ...


class FrameIndexer(Protocol):
    """Where indexed frames go when not into the local store: (stream, offset s, wall time, thumbnail path,
    encoder name, labels, embedding) → frame id (a cluster worker publishes them)."""

    async def __call__(
        self, stream: str, offset: float, at: float, thumb: str | None, model: str, tags: tuple[str, ...], embedding: np.ndarray
    ) -> int: ...


def _nothing(_stream: str, _value: float) -> None:
    return None


@dataclass(slots=True)
class StreamServices:
    """Shared by every :class:`~streamwatch.runtime.runner.StreamRunner` of a process."""

    settings: Settings
    pool: ThreadPoolExecutor  # analysis threads (detectors, OCR, the encoder)
    prep: ThreadPoolExecutor  # one thread for the short per-frame steps (RGB conversion, reuse plan, source frame)
    store: EventStore  # local: evidence images, thumbnails and the search index
    bus: Publisher
    metrics: Metrics
    engines: Engines
    cascade: Cascade
    router: ModelRouter
    vlm: VLMService
    escalations: EscalationQueue
    persona: Persona
    overload: OverloadWatch  # analysis lag → the overloaded event, each stream's sampling step, the drop choice
    search: FrameSearch | None = None
    models_watch: ModelWatch | None = None  # the VLM tier's health notices (roles falling back, breakers, unusable output)
    frames: FrameIndexer | None = None  # None: indexed frames go into ``store``
    on_sample: Callable[[str, float], None] = _nothing  # (stream, offset) for every sample (progress bars)
    on_analyzed: Callable[[str, float], None] = _nothing  # (stream, seconds since the frame arrived)
    offsets: dict[str, float] = field(default_factory=dict)  # latest offset per stream
    states: dict[str, StreamState] = field(default_factory=dict)  # the last state published per stream
    latest: dict[str, AnalyzedFrame] = field(default_factory=dict)  # last analysed frame per stream (live Q&A)
    actions: ActionDesk | None = None  # actions on the stream that alerts ask for (None: none run here)
    cpu: CpuAccount = field(default_factory=CpuAccount)  # CPU seconds per stream and stage
    budget: CpuBudget | None = None  # how the process's CPU budget was spent (threads)

    async def publish_health(self, ev: HealthEvent) -> None:
        """Publish ``ev`` of a running stream: its state becomes the stream's last, its rules see it first."""
        if self.actions is not None:  # the outage a cut made is marked as caused by it
            ev = self.actions.attribute(ev)
        if ev.state is not None:
            self.states[ev.stream] = ev.state
        self.engines.engine_for(ev.stream).on_health(ev)
        await self.bus.publish(ev)

    async def close(self) -> None:
        if self.actions is not None:
            await self.actions.close()
        await self.cascade.close()
        await self.router.close()
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.prep.shutdown(wait=False, cancel_futures=True)


def load_encoder(settings: Settings, threads: int = 0) -> EncoderTier | None:
    """Blocking: the encoder tier when ``analysis.encoder.path`` is set (else None)."""
    cfg = settings.analysis.encoder
    if cfg.path is None:
        return None
    encoder = Encoder(cfg.path, device=settings.analysis.device, variant=cfg.variant, threads=threads)
    labels = load_labels(cfg.labels, encoder) if cfg.labels is not None and cfg.labels.is_file() else None
    logger.info("vision encoder %s on %s (%d labels)", encoder.manifest.name, encoder.providers[0], len(labels.labels) if labels else 0)
    return EncoderTier(encoder, labels)


def apply_budget(settings: Settings) -> CpuBudget:
    """The process's CPU budget from ``analysis.cpu_threads``, applied to OpenCV now (ONNX sessions, the
    executor and the decoders take it when they are made), and logged."""
    import cv2

    budget = cpu_budget(settings.analysis.cpu_threads, os.cpu_count(), settings.analysis.threads)
    cv2.setNumThreads(budget.per_call)
    limit_blas(budget.per_call)  # OpenCV's and numpy's OpenBLAS pools: idle workers spin otherwise
    logger.info("%s (machine: %s cores)", budget.describe(), os.cpu_count())
    return budget


async def build_services(
    settings: Settings, store: EventStore, bus: Publisher, metrics: Metrics, *, admission: AdmissionGate | None = None
) -> StreamServices:
    """Load policies, analyzers, the encoder and the VLM router. Raises ConfigError/PolicyError/ModelLoadError."""
    s = settings
    loop = asyncio.get_running_loop()
    budget = apply_budget(s)
    cpu = CpuAccount(metrics.on_cpu)
    pool = ThreadPoolExecutor(budget.executor, thread_name_prefix="analysis")
    prep = ThreadPoolExecutor(1, thread_name_prefix="analysis-prep")
    engines = Engines(s.analysis.policy, s.ui.language)
    await engines.load(s.analysis.policy)
    for c in s.streams:  # a bad policy of a configured stream fails at start, as before
        await engines.assign(c.id, c.policy)
    a_settings = AnalyzerSettings(device=s.analysis.device, threads=budget.per_call)
    analyzers = [await loop.run_in_executor(None, create, name, a_settings) for name in s.analysis.analyzers]
    for a in analyzers:
        logger.info("analyzer %s on %s", a.name, ", ".join(a.providers))
    tier = await loop.run_in_executor(None, load_encoder, s, budget.per_call)
    enc = s.analysis.encoder
    cascade = Cascade(
        analyzers,
        pool,
        cache_radius=s.analysis.cache_radius,
        cache_ttl_s=s.analysis.cache_ttl_s,
        cache_size=s.analysis.cache_size,
        max_batch=s.analysis.max_batch,
        observe=lambda name, sec: metrics.stage_latency.labels(f"analyzer_{name}").observe(sec),
        encoder=tier,
        semantic_threshold=enc.semantic_threshold,
        encoder_wait_s=enc.batch_wait_s,
        region_level=s.sampling.region_level,
        region_min=s.sampling.region_min,
        regional=s.analysis.regional,
        region_max_area=s.analysis.region_max_area,
        small_text_px=s.analysis.small_text_px,
        cpu=cpu,
        prep=prep,
        parallel=budget.executor,
    )
    persona = await loop.run_in_executor(None, load_persona, s.vlm.persona)
    registry = await loop.run_in_executor(None, load_registry, s.vlm.registry, s.vlm.roles)
    watch = ModelWatch(ModelHealth(s.vlm.unusable_notice_after))

    def observe(model: str, outcome: str, seconds: float) -> None:
        metrics.on_vlm(model, outcome, seconds)
        watch.observe(model, outcome, seconds)

    router = ModelRouter(
        registry,
        breaker_failures=s.vlm.breaker_failures,
        breaker_cooldown_s=s.vlm.breaker_cooldown_s,
        min_switch_interval_s=s.vlm.min_switch_interval_s,
        observe=observe,
        admission=admission,
    )
    watch.attach(lambda: router_snapshot(router))
    router.start()
    for role, chain in router.chains.items():
        logger.info("VLM role %s: %s", role.value, " → ".join(chain))
    questions = DEFAULT_QUESTIONS
    if s.vlm.questions is not None:
        questions = tuple(ComplianceQuestion(q.id, q.question, q.kind, tuple(q.options)) for q in s.vlm.questions)  # type: ignore[arg-type]
    escalations = EscalationQueue(
        s.vlm.pending_per_stream, s.vlm.compliance_every_s, on_drop=lambda _sid: metrics.queue_drops.labels("vlm").inc()
    )
    search = FrameSearch(tier.encoder, store) if tier is not None else None

    async def ran_before(alert: AlertEvent) -> bool:  # the stored log: a restarted daemon never runs an action twice
        events = await asyncio.get_running_loop().run_in_executor(None, lambda: store.events(alert.stream, start=alert.at))
        return ran_in(events, alert.id)

    actions = ActionDesk(s.actions, bus, engines.rule_of, ran_before=ran_before)
    return StreamServices(
        settings=s,
        pool=pool,
        prep=prep,
        store=store,
        bus=bus,
        metrics=metrics,
        engines=engines,
        cascade=cascade,
        router=router,
        vlm=VLMService(router, questions=questions, deadline_s=s.vlm.answer_deadline_s),
        escalations=escalations,
        persona=persona,
        overload=OverloadWatch(
            s.analysis.overload, heartbeat_s=s.sampling.heartbeat_s, radius=s.sampling.dedupe_radius, on_level=metrics.on_level
        ),
        search=search,
        models_watch=watch,
        actions=actions,
        cpu=cpu,
        budget=budget,
    )
