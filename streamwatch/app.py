"""Wiring of the stages, in pipeline order: ingest → sampling → analysis → events → server.

Thin on purpose: each stage gets its own config section; nothing here decides anything. The
daemon (:class:`Daemon`) runs one TaskGroup per stream: a producer (decoder thread → sampler, health
events straight to the bus), a bounded queue of kept frames (live: drop the oldest, counted; files:
wait), a consumer (cascade → policy → alerts) and a one-second ticker for health rules.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import gc
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from streamwatch.analysis.base import create
from streamwatch.analysis.cascade import Cascade
from streamwatch.analysis.detectors import AnalyzerSettings
from streamwatch.analysis.encoder import Encoder, EncoderTier, index_frame, load_labels
from streamwatch.analysis.model import AlertDraft, AnalyzedFrame, FrameAnalysis
from streamwatch.analysis.policy import load_policy
from streamwatch.analysis.rules import RuleEngine
from streamwatch.analysis.search import FrameSearch, hit_json
from streamwatch.config import Settings, StreamConfig
from streamwatch.errors import PolicyError, StreamwatchError, VLMError
from streamwatch.events.alerts import build_alerts, build_scene
from streamwatch.events.bus import EventBus
from streamwatch.events.model import HealthEvent, HealthKind, StreamState
from streamwatch.events.session import SessionKeeper
from streamwatch.events.store import EventStore
from streamwatch.ingest.aio import aiter_reader
from streamwatch.ingest.frame import Frame
from streamwatch.ingest.reader import FrameReader
from streamwatch.ingest.url import parse_source
from streamwatch.sampling.interval import IntervalSampler
from streamwatch.sampling.regions import SIGNATURE_INDEX, signature_vector
from streamwatch.sampling.sampler import Sample, Sampler
from streamwatch.server.metrics import Metrics
from streamwatch.server.server import EventServer
from streamwatch.server.submit import SwitchReport
from streamwatch.vlm.escalation import EscalationQueue
from streamwatch.vlm.local import ImageEvidence
from streamwatch.vlm.persona import load_persona
from streamwatch.vlm.prompts import DEFAULT_QUESTIONS, ComplianceQuestion
from streamwatch.vlm.registry import LOCAL, Capability, load_registry
from streamwatch.vlm.responder import AudienceResponder
from streamwatch.vlm.router import ModelRouter
from streamwatch.vlm.service import VLMService

logger = logging.getLogger(__name__)

Output = Sample | HealthEvent


@dataclass(frozen=True, slots=True)
class StreamPipeline:
    """The ingest and sampling stages of one stream."""

    stream: StreamConfig
    reader: FrameReader
    sampler: Sampler

    def _feed(self, item: Frame | HealthEvent) -> list[Output]:
        if isinstance(item, Frame):
            return self.sampler.feed(item)
        if item.state is not None and item.state.value in ("stopped", "ended"):
            return [*self.sampler.finish(item.offset, item.at, item.stream), item]
        if item.state is StreamState.LIVE:  # a new connection or publisher: nothing is frozen across the break
            return [*self.sampler.restart(item.offset, item.at, item.stream), item]
        return [item]

    def run(self) -> Iterator[Output]:
        """Blocking: samples and health events as they come (files, CLI, benchmarks)."""
        for item in self.reader:
            yield from self._feed(item)

    async def arun(self, maxsize: int) -> AsyncIterator[Output]:
        """The same on the event loop, the decoder in its own thread behind a bounded queue."""
        async for item in aiter_reader(self.reader, maxsize=maxsize):
            for out in self._feed(item):
                yield out


def build_pipeline(stream: StreamConfig, settings: Settings) -> StreamPipeline:
    every = stream.every_s or settings.sampling.every_s
    interval = IntervalSampler(every)
    spec = parse_source(stream.source, listen=stream.listen)
    reader = FrameReader(spec, stream.id, settings.ingest, every_s=every, keep=interval.due)
    return StreamPipeline(stream, reader, Sampler(settings.sampling))


def freeze_startup_heap() -> None:
    """Move everything allocated during start-up out of the cyclic GC's reach.

    Full (generation 2) collections otherwise walk every module, model and config object again and
    again: 25-80 ms pauses on this 2-core machine that showed up as event-delivery p99 latency.
    Call once after the stages are wired, before streams start.
    """
    gc.collect()
    gc.freeze()


# --- the daemon ------------------------------------------------------------------------------------


class Daemon:
    """``streamwatch run``: every configured stream, the analysis cascade, the store, bus and server."""

    def __init__(
        self,
        settings: Settings,
        *,
        serve: bool = True,
        on_sample: Callable[[str, float], None] | None = None,
        on_analyzed: Callable[[str, float], None] | None = None,
    ) -> None:
        self.settings = settings
        self.serve = serve
        self.on_sample = on_sample or (lambda _s, _o: None)  # (stream, offset) for every sample (progress bars)
        self.on_analyzed = on_analyzed or (lambda _s, _l: None)  # (stream, seconds since the frame arrived)
        self.metrics = Metrics()
        self.offsets: dict[str, float] = {}
        self.states: dict[str, StreamState] = {}  # the last state published per stream
        self.latest: dict[str, AnalyzedFrame] = {}  # last analysed frame per stream (live Q&A)
        self.stopping = asyncio.Event()
        self.server: EventServer | None = None
        self.ready = asyncio.Event()
        self._producers: list[asyncio.Task[None]] = []
        self.search: FrameSearch | None = None  # with a vision encoder
        self._thumbnailed: dict[str, float] = {}  # stream → offset of the last frame kept as a thumbnail

    def stop(self) -> None:
        """Stop ingest; queued frames are still analysed, then the store is flushed and clients closed."""
        self.stopping.set()
        for task in self._producers:
            task.cancel()

    async def run(self) -> None:
        s = self.settings
        loop = asyncio.get_running_loop()
        threads = s.analysis.threads or os.cpu_count() or 2
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="analysis")
        self.store = EventStore(s.data_dir, retention_days=s.store.retention_days, retention_mb=s.store.retention_mb)
        self.bus = EventBus(self.store)
        # one rule engine per policy file (streams may name their own; default: analysis.policy)
        self.stream_policy = {c.id: c.policy or s.analysis.policy for c in s.streams}
        self.engines: dict[Path, RuleEngine] = {}
        for path in dict.fromkeys([s.analysis.policy, *self.stream_policy.values()]):
            self.engines[path] = RuleEngine(await loop.run_in_executor(None, load_policy, path))
        a_settings = AnalyzerSettings(device=s.analysis.device)
        analyzers = [await loop.run_in_executor(None, create, name, a_settings) for name in s.analysis.analyzers]
        for a in analyzers:
            logger.info("analyzer %s on %s", a.name, ", ".join(a.providers))
        tier = await loop.run_in_executor(None, self._load_encoder)
        enc = s.analysis.encoder
        self.cascade = Cascade(
            analyzers,
            self.pool,
            cache_radius=s.analysis.cache_radius,
            cache_ttl_s=s.analysis.cache_ttl_s,
            cache_size=s.analysis.cache_size,
            max_batch=s.analysis.max_batch,
            observe=lambda name, sec: self.metrics.stage_latency.labels(f"analyzer_{name}").observe(sec),
            encoder=tier,
            semantic_threshold=enc.semantic_threshold,
            encoder_wait_s=enc.batch_wait_s,
            region_level=s.sampling.region_level,
            region_min=s.sampling.region_min,
            regional=s.analysis.regional,
            region_max_area=s.analysis.region_max_area,
        )
        persona = await loop.run_in_executor(None, load_persona, s.vlm.persona)
        registry = await loop.run_in_executor(None, load_registry, s.vlm.registry, s.vlm.roles)
        self.router = ModelRouter(
            registry,
            breaker_failures=s.vlm.breaker_failures,
            breaker_cooldown_s=s.vlm.breaker_cooldown_s,
            min_switch_interval_s=s.vlm.min_switch_interval_s,
            observe=self.metrics.on_vlm,
        )
        self.router.start()
        for role, chain in self.router.chains.items():
            logger.info("VLM role %s: %s", role.value, " → ".join(chain))
        questions = DEFAULT_QUESTIONS
        if s.vlm.questions is not None:
            questions = tuple(ComplianceQuestion(q.id, q.question, q.kind, tuple(q.options)) for q in s.vlm.questions)  # type: ignore[arg-type]
        self.vlm = VLMService(self.router, questions=questions)
        self.escalations = EscalationQueue(
            s.vlm.pending_per_stream, s.vlm.compliance_every_s, on_drop=lambda _sid: self.metrics.queue_drops.labels("vlm").inc()
        )
        self.responder = AudienceResponder(
            self.cascade,
            lambda sid: self.engine_for(sid).policy,
            persona,
            service=self.vlm,
            latest=lambda sid: self.latest.get(sid),
            offsets=lambda x: self.offsets.get(x, 0.0),
            duplicate_ttl_s=s.vlm.duplicate_ttl_s,
            max_side=s.analysis.max_side,
        )
        await self.bus.start()
        try:
            if self.serve:
                ids = [c.id for c in s.streams]
                self.server = EventServer(
                    s.server,
                    self.bus,
                    metrics=self.metrics,
                    streams=ids,
                    responder=self.responder,
                    models=self,
                    inferrer=self.responder,
                    search=self._search if self.search is not None else None,
                    offsets=lambda x: self.offsets.get(x, 0.0),
                    latest=self.latest.get,
                    models_info=self.models_info,
                )
                await self.server.start()
            freeze_startup_heap()
            self.ready.set()
            async with asyncio.TaskGroup() as tg:
                watchers = [tg.create_task(self._watch_policy(path)) for path in self.engines]
                streams = [tg.create_task(self._stream(c), name=f"stream-{c.id}") for c in s.streams]
                for c, result in zip(s.streams, await asyncio.gather(*streams, return_exceptions=True), strict=True):
                    if isinstance(result, Exception):
                        logger.error("stream %s failed", c.id, exc_info=result)
                for w in watchers:
                    w.cancel()
        finally:
            await self.cascade.close()
            await self.router.close()
            if self.server is not None:
                await self.server.stop()
            await self.bus.stop()
            self.store.close()
            self.pool.shutdown(wait=False, cancel_futures=True)

    # --- one stream ------------------------------------------------------------------------------

    async def _stream(self, cfg: StreamConfig) -> None:
        pipeline = build_pipeline(cfg, self.settings)
        live = pipeline.reader.spec.live
        keeper = await self._resume_session(pipeline) if live else None
        reason = "waiting for the publisher" if cfg.listen else "opening the source"
        offset = pipeline.reader.offset_now()  # 0, or where a resumed session is now
        await self.bus.publish(
            HealthEvent(stream=cfg.id, at=time.time(), offset=offset, kind=HealthKind.STATE, state=StreamState.CONNECTING, reason=reason)
        )
        queue: asyncio.Queue[Sample | None] = asyncio.Queue(self.settings.analysis.queue_size)
        try:
            async with asyncio.TaskGroup() as tg:
                producer = tg.create_task(self._produce(pipeline, queue, live))
                self._producers.append(producer)
                consumer = tg.create_task(self._consume(cfg.id, queue))
                ticker = tg.create_task(self._tick(cfg.id, pipeline, keeper))
                consumer.add_done_callback(lambda _t: ticker.cancel())
                consumer.add_done_callback(lambda _t: self.escalations.close(cfg.id))
                tg.create_task(self._comply(cfg.id))
        except* StreamwatchError as eg:
            for e in eg.exceptions:
                logger.error("stream %s stopped: %s", cfg.id, e)
            await self.bus.publish(
                HealthEvent(
                    stream=cfg.id,
                    at=time.time(),
                    offset=self.offsets.get(cfg.id, 0.0),
                    kind=HealthKind.STATE,
                    state=StreamState.STOPPED,
                    reason=str(eg.exceptions[0]),
                )
            )
            keeper = None  # the session stays open: a restart continues it
        if keeper is not None:  # stopped on purpose, or the source finished: the session ends
            await self._end_session(pipeline, keeper)

    async def _produce(self, pipeline: StreamPipeline, queue: asyncio.Queue[Sample | None], live: bool) -> None:
        sid = pipeline.stream.id
        ended = False
        try:
            async for out in pipeline.arun(self.settings.ingest.queue_size):
                if isinstance(out, HealthEvent):
                    self.states[sid] = out.state or self.states.get(sid, StreamState.CONNECTING)
                    self.engine_for(sid).on_health(out)
                    await self.bus.publish(out)
                    continue
                self.offsets[sid] = out.offset
                self.on_sample(sid, out.offset)
                await self._health_alerts(sid, out.offset)
                if not out.kept:
                    continue
                if pipeline.reader.live and queue.full():  # analysis is behind: drop the oldest kept frame
                    queue.get_nowait()
                    self.metrics.queue_drops.labels("analysis").inc()
                await queue.put(out)
            ended = True
        finally:
            if ended and not live:  # a file that ended: its last frames are analysed, nothing is dropped
                await queue.put(None)
            else:  # stopped or live: the end marker without waiting; if the queue is full it replaces the oldest frame
                try:
                    queue.put_nowait(None)
                except asyncio.QueueFull:
                    queue.get_nowait()
                    self.metrics.queue_drops.labels("analysis").inc()
                    queue.put_nowait(None)

    async def _consume(self, sid: str, queue: asyncio.Queue[Sample | None]) -> None:
        loop = asyncio.get_running_loop()
        lat = self.metrics.stage_latency
        while (sample := await queue.get()) is not None:
            frame = sample.frame
            lat.labels("queued").observe(max(0.0, time.time() - frame.wall))
            t0 = time.perf_counter()
            image = await loop.run_in_executor(self.pool, frame.rgb, self.settings.analysis.max_side)
            fa = await self.cascade.analyze(
                sid,
                image,
                sample.phash,
                offset=frame.offset,
                at=frame.wall,
                received_at=frame.wall,
                signature=sample.signature,
                source=frame.rgb,
            )
            lat.labels("analyze").observe(time.perf_counter() - t0)
            self.metrics.cache.labels("hit" if fa.cached else "miss").inc()
            self.latest[sid] = AnalyzedFrame(fa, image)
            if fa.embedding is not None and not fa.cached and self.settings.analysis.encoder.index:
                await loop.run_in_executor(
                    None, index_frame, self.store, fa, image, self.cascade.encoder.model if self.cascade.encoder else ""
                )
            elif self._thumbnail_due(sid, fa, sample):  # without the encoder: the change signal stands in (summary picks)
                vec = signature_vector(sample.signature)  # type: ignore[arg-type]
                indexed = dataclasses.replace(fa, embedding=vec)
                await loop.run_in_executor(None, index_frame, self.store, indexed, image, SIGNATURE_INDEX, 960)  # post-sized
            t1 = time.perf_counter()
            drafts = self.engine_for(sid).evaluate(fa)
            lat.labels("policy").observe(time.perf_counter() - t1)
            self.on_analyzed(sid, time.time() - frame.wall)
            if drafts:
                await self._publish_alerts(drafts, fa, image)
            if self.router.primary(Capability.COMPLIANCE) != LOCAL:  # stream time, so files are checked like live shows
                self.escalations.offer(sid, self.latest[sid], [d.rule for d in drafts if d.escalate], frame.offset)

    def _thumbnail_due(self, sid: str, fa: FrameAnalysis, sample: Sample) -> bool:
        """A newly analysed frame that starts a new scene (half the tiles changed; 2 s apart at least), or
        one per ``store.thumbnail_every_s`` of stream time per stream."""
        every = self.settings.store.thumbnail_every_s
        last = self._thumbnailed.get(sid)
        if fa.cached or sample.signature is None or every is None:
            return False
        cut = sample.change is not None and sample.change.fraction >= 0.5
        if last is not None and fa.offset - last < (2.0 if cut else every):
            return False
        self._thumbnailed[sid] = fa.offset
        return True

    async def _comply(self, sid: str) -> None:
        """The compliance model's second look at escalated and periodic frames → alerts and scene tags."""
        loop = asyncio.get_running_loop()
        deadline = self.settings.vlm.compliance_deadline_s
        while (item := await self.escalations.get(sid)) is not None:
            fa, image = item.frame.analysis, item.frame.image
            try:
                answer = await self.vlm.compliance(image, ImageEvidence.from_detections(fa.width, fa.height, fa.detections))
            except VLMError as e:
                logger.error("stream %s: no compliance answer for the frame at %.1fs (%s): %s", sid, fa.offset, item.reason, e)
                continue
            if answer is None:
                continue
            late = time.time() - fa.received_at > deadline
            if late:
                self.metrics.vlm_late.inc()
            vlm_fa = FrameAnalysis(sid, fa.offset, fa.at, fa.received_at, answer.detections(), fa.width, fa.height)
            drafts = self.engine_for(sid).evaluate(vlm_fa)
            if drafts:
                await self._publish_alerts(drafts, vlm_fa, image, late=late)
            scene = await loop.run_in_executor(
                None, functools.partial(build_scene, fa, image, answer.tags, answer.model, self.store, late=late)
            )
            await self.bus.publish(scene)

    async def _tick(self, sid: str, pipeline: StreamPipeline, keeper: SessionKeeper | None) -> None:
        loop = asyncio.get_running_loop()
        while True:  # outages produce no samples: health rules are also checked once a second
            await asyncio.sleep(1.0)
            await self._health_alerts(sid, None)
            if keeper is not None:  # the heartbeat that bounds a monitoring gap after a crash
                await loop.run_in_executor(None, keeper.beat, pipeline.reader.session_start, pipeline.reader.offset_now())

    async def _resume_session(self, pipeline: StreamPipeline) -> SessionKeeper:
        """Continue the stream's open session (after a crash): same offsets, and a monitoring gap."""
        keeper = SessionKeeper(self.store, pipeline.stream.id)
        started, gap = await asyncio.get_running_loop().run_in_executor(None, keeper.restore)
        if started is not None and gap is not None:
            pipeline.reader.resume_session(started)
            logger.warning("stream %s: session continues; %s", pipeline.stream.id, gap.describe())
            self.engine_for(gap.stream).on_health(gap)
            await self.bus.publish(gap)
        return keeper

    async def _end_session(self, pipeline: StreamPipeline, keeper: SessionKeeper) -> None:
        reader = pipeline.reader
        if self.stopping.is_set() and self.states.get(pipeline.stream.id) not in (StreamState.STOPPED, StreamState.ENDED):
            ev = HealthEvent(
                stream=pipeline.stream.id,
                at=time.time(),
                offset=reader.offset_now(),
                kind=HealthKind.STATE,
                state=StreamState.ENDED,
                reason="stopped by the operator",
            )
            self.engine_for(ev.stream).on_health(ev)
            await self.bus.publish(ev)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, functools.partial(keeper.beat, reader.session_start, reader.offset_now(), force=True))
        await loop.run_in_executor(None, keeper.end)

    async def _health_alerts(self, sid: str, offset: float | None) -> None:
        for began, draft in self.engine_for(sid).tick(sid, time.time(), offset):
            now = time.time()
            await self._publish_alerts([draft], FrameAnalysis(sid, began, now, now, (), 0, 0), None)

    async def _publish_alerts(self, drafts: list[AlertDraft], fa: FrameAnalysis, image: np.ndarray | None, *, late: bool = False) -> None:
        loop = asyncio.get_running_loop()
        events = await loop.run_in_executor(None, lambda: build_alerts(drafts, fa, image, self.store, late=late))
        for ev in events:
            await self.bus.publish(ev)
            self.metrics.stage_latency.labels("glass_to_stored").observe(max(0.0, time.time() - fa.received_at))

    async def _notice(self, streams: list[str], kind: HealthKind, reason: str, duration_s: float | None = None) -> None:
        """A health event (config or model change) on each of ``streams``, at its current offset."""
        for sid in streams:
            await self.bus.publish(
                HealthEvent(stream=sid, at=time.time(), offset=self.offsets.get(sid, 0.0), kind=kind, duration_s=duration_s, reason=reason)
            )

    # --- vision encoder and search -------------------------------------------------------------------

    def _load_encoder(self) -> EncoderTier | None:
        """Blocking: the encoder tier when ``analysis.encoder.path`` is set (else None)."""
        cfg = self.settings.analysis.encoder
        if cfg.path is None:
            return None
        encoder = Encoder(cfg.path, device=self.settings.analysis.device, variant=cfg.variant)
        labels = load_labels(cfg.labels, encoder) if cfg.labels is not None and cfg.labels.is_file() else None
        logger.info("vision encoder %s on %s (%d labels)", encoder.manifest.name, encoder.providers[0], len(labels.labels) if labels else 0)
        self.search = FrameSearch(encoder, self.store)
        return EncoderTier(encoder, labels)

    def _search(self, query: str, stream: str | None, limit: int) -> list[dict[str, object]]:
        assert self.search is not None
        return [hit_json(h) for h in self.search.search(query, stream=stream, limit=limit)]

    # --- model switching (admin `switch_model`, `streamwatch models switch`) ----------------------

    async def switch_model(self, role: str, model: str, by: str) -> SwitchReport:
        """Load and warm ``model``, then make it the first of ``role``'s chain; a health event records it."""
        logger.info("switching %s to %s (asked by %s)", role, model, by)
        result = await self.router.switch(Capability(role), model)
        reason = f"{role}: {result.old} → {result.new} (load + warm-up {result.seconds:.1f}s, by {by})"
        logger.info("model switched: %s", reason)
        await self._notice([c.id for c in self.settings.streams], HealthKind.MODEL, reason, duration_s=round(result.seconds, 3))
        return SwitchReport(role, result.old, result.new, result.seconds)

    def models_info(self) -> dict[str, object]:
        """VLM role chains (best first) and each loaded model's breaker state, for the console."""
        chains = {r.value: list(c) for r, c in self.router.chains.items()}
        return {"chains": chains, "breakers": self.router.state(), "models": sorted(self.router.registry.models)}

    # --- policy hot reload -----------------------------------------------------------------------

    @property
    def engine(self) -> RuleEngine:
        """The engine of the default policy (``analysis.policy``)."""
        return self.engines[self.settings.analysis.policy]

    def engine_for(self, sid: str) -> RuleEngine:
        return self.engines[self.stream_policy.get(sid, self.settings.analysis.policy)]

    async def _watch_policy(self, path: Path) -> None:
        loop = asyncio.get_running_loop()
        files = policy_files(path)
        seen = file_stamps(files)
        users = [sid for sid, p in self.stream_policy.items() if p == path]
        while True:
            await asyncio.sleep(self.settings.analysis.reload_s)
            stamps = await loop.run_in_executor(None, file_stamps, files)
            if stamps == seen:
                continue
            seen = stamps
            try:
                policy = await loop.run_in_executor(None, load_policy, path)
            except PolicyError as e:
                logger.error("policy reload failed, keeping the previous policy: %s", e)
                await self._notice(users, HealthKind.CONFIG, f"policy reload failed, previous policy kept: {e}")
                continue
            self.engines[path].replace_policy(policy)
            files = policy_files(path)
            seen = file_stamps(files)
            logger.info("policy reloaded from %s (%d rules)", path, len(policy.rules))


def policy_files(path: Path) -> list[Path]:
    """The policy file and the word lists it names (best effort: a broken file is reported on load)."""
    try:
        import tomllib

        raw = tomllib.loads(path.read_text(encoding="utf-8"))
        names = list((raw.get("lists") or {}).values()) + ([raw["t2s"]] if raw.get("t2s") else [])
        return [path, *(path.parent / str(n) for n in names)]
    except (OSError, ValueError):
        return [path]


def file_stamps(paths: list[Path]) -> list[tuple[int, int] | None]:
    out: list[tuple[int, int] | None] = []
    for p in paths:
        try:
            st = p.stat()
            out.append((st.st_mtime_ns, st.st_size))
        except OSError:
            out.append(None)
    return out
