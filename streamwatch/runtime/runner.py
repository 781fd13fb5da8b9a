"""One stream's work: produce (ingest + sampling), analyse, escalate to the VLM, health ticks.

The single box (:class:`~streamwatch.app.Daemon`) and a cluster worker both run a
:class:`StreamRunner` per stream, over the same :class:`~streamwatch.runtime.services.StreamServices`;
what differs is where events go (a :class:`Publisher`: the SQLite bus, or JetStream) and where the
session clock survives a crash (a :class:`SessionKeeping`: SQLite, or the cluster's carried state).

A runner's TaskGroup: a producer (decoder thread → sampler; health events straight to the
publisher), a bounded queue of kept frames (:class:`~streamwatch.runtime.overload.AnalysisQueue`;
live: a named drop choice that never drops escalated or overlay frames, counted; files: wait), a consumer
(cascade → policy → alerts), the compliance loop and a one-second ticker for health rules, session
heartbeats and the overload watch (how far behind analysis is; the sampling step it asks for).
:meth:`StreamRunner.stop` ends the stream on purpose (queued frames are still analysed, an
``ended`` event, the session closed); cancelling the task abandons it (a lost cluster
lease): nothing more is published and the session stays open for the next owner.

A data folder that takes no writes (a full disk) never stops a runner: a heartbeat, thumbnail or
index row that cannot be written is skipped, alerts go out without their evidence image (marked), and
the ticker says it once as a ``storage`` health event (and once when writes work again).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import numpy as np

from streamwatch.analysis.encoder import thumbnail_record
from streamwatch.analysis.model import AlertDraft, AnalyzedFrame, FrameAnalysis
from streamwatch.config import StreamConfig
from streamwatch.errors import AnalysisError, IngestError, StorageError, VLMError
from streamwatch.events.alerts import build_alerts, build_scene
from streamwatch.events.model import HealthEvent, HealthKind, StreamState
from streamwatch.events.session import SessionKeeper
from streamwatch.events.store import EventStore
from streamwatch.runtime.cpu_account import Stage
from streamwatch.runtime.faults import FailureStreak, describe
from streamwatch.runtime.overload import AnalysisQueue
from streamwatch.runtime.pipeline import SkippedFrame, StreamPipeline, build_pipeline
from streamwatch.runtime.services import StreamServices
from streamwatch.sampling.regions import SIGNATURE_INDEX, signature_vector
from streamwatch.sampling.sampler import Sample
from streamwatch.vlm.local import ImageEvidence
from streamwatch.vlm.registry import LOCAL, Capability
from streamwatch.vlm.verdict import second_opinion

logger = logging.getLogger(__name__)
T = TypeVar("T")


class SessionKeeping(Protocol):
    """Where a live stream's session clock and heartbeat survive the process (see events/session.py)."""

    async def restore(self) -> tuple[float | None, HealthEvent | None]:
        """(start of the open session to continue, its monitoring gap), or (None, None) for a new one."""
        ...

    async def beat(self, started_at: float | None, offset: float, *, force: bool = False) -> None:
        """Record that the session was watched up to now / ``offset`` (rate-limited unless ``force``)."""
        ...

    async def end(self) -> None:
        """The session ended on purpose: the next start begins a new one."""
        ...


class StreamRunner:
    """Runs one stream until it ends, is stopped (:meth:`stop`) or its task is cancelled."""

    def __init__(self, cfg: StreamConfig, svc: StreamServices, keeper: SessionKeeping | None) -> None:
        self.cfg = cfg
        self.sid = cfg.id
        self.svc = svc
        self.keeper = keeper  # None: no session kept (files)
        self.stopping = False
        self._producer: asyncio.Task[None] | None = None
        self._thumbnailed: float | None = None  # offset of the last frame kept as a thumbnail
        self.pipeline: StreamPipeline | None = None
        self._session: SessionKeeping | None = None  # the keeper of a live stream's session
        self._streak = FailureStreak()  # frames in a row whose analysis failed
        self._storage_since: float | None = None  # wall time this runner said storage is failing (None: ok)
        self.failed = False  # the source was given up on (retries exhausted, unreadable file)
        self._queue: AnalysisQueue | None = None
        self._inflight: float | None = None  # arrival wall time of the frame in analysis now

    def stop(self) -> None:
        """End on purpose: ingest stops, queued frames are still analysed, then ``ended``."""
        self.stopping = True
        if self._producer is not None:
            self._producer.cancel()

    async def run(self) -> None:
        svc, cfg = self.svc, self.cfg
        self.pipeline = pipeline = build_pipeline(cfg, svc.settings, svc.cpu)
        if svc.actions is not None:
            svc.actions.register(cfg)
        live = pipeline.reader.spec.live
        keeper = self._session = self.keeper if live else None
        if keeper is not None:
            await self._resume_session(pipeline, keeper)
        reason = "waiting for the publisher" if cfg.listen else "opening the source"
        await svc.bus.publish(
            HealthEvent(
                stream=cfg.id,
                at=time.time(),
                offset=pipeline.reader.offset_now(),  # 0, or where a resumed session is now
                kind=HealthKind.STATE,
                state=StreamState.CONNECTING,
                reason=reason,
            )
        )
        queue = self._queue = AnalysisQueue(svc.settings.analysis.queue_size, lambda: pipeline.reader.live, svc.metrics.on_drop)
        if live and pipeline.interval is not None:  # (a file is analysed as fast as it can be: never degraded)
            svc.overload.register(cfg.id, pipeline.interval.every_s)
        try:
            async with asyncio.TaskGroup() as tg:
                self._producer = tg.create_task(self._produce(pipeline, queue))
                if self.stopping:
                    self._producer.cancel()
                consumer = tg.create_task(self._consume(queue))
                ticker = tg.create_task(self._tick(pipeline, keeper))
                consumer.add_done_callback(lambda _t: ticker.cancel())
                consumer.add_done_callback(lambda _t: svc.escalations.close(cfg.id))
                tg.create_task(self._comply())
        except* IngestError as eg:  # the source is gone for good (retries exhausted, unreadable file); other errors go to the supervisor
            self.failed = True
            for e in eg.exceptions:
                logger.error("stream %s stopped: %s", cfg.id, e)
            await svc.bus.publish(
                HealthEvent(
                    stream=cfg.id,
                    at=time.time(),
                    offset=svc.offsets.get(cfg.id, 0.0),
                    kind=HealthKind.STATE,
                    state=StreamState.STOPPED,
                    reason=str(eg.exceptions[0]),
                )
            )
            keeper = None  # the session stays open: a restart continues it
        finally:
            svc.overload.forget(cfg.id)
        if (ev := svc.overload.leave(cfg.id, svc.offsets.get(cfg.id, 0.0))) is not None:  # its overloaded period ends here
            await svc.publish_health(ev)
        if keeper is not None:  # stopped on purpose, or the source finished: the session ends
            await self._end_session(pipeline, keeper)
        elif not live and not self.failed and not self.stopping and self.keeper is not None:
            try:
                await self.keeper.end()  # a file read to its end (a cluster records it: no new owner reads it again)
            except StorageError as e:
                logger.warning("stream %s: its end could not be written: %s", self.sid, e)

    # --- the tasks -------------------------------------------------------------------------------

    async def _produce(self, pipeline: StreamPipeline, queue: AnalysisQueue) -> None:
        svc, sid = self.svc, self.sid
        try:
            async for out in pipeline.arun(svc.settings.ingest.queue_size):
                if isinstance(out, SkippedFrame):  # the sampler could not take this frame
                    await self._frame_failed(out.offset, out.error)
                    continue
                if isinstance(out, HealthEvent):
                    await svc.publish_health(out)
                    continue
                svc.offsets[sid] = out.offset
                svc.on_sample(sid, out.offset)
                await self._health_alerts(out.offset)
                if out.kept:  # analysis behind: the queue drops per its named choice, or waits (files, protected frames)
                    await queue.put(out, svc.overload.keep_of(out))
        finally:
            queue.end()  # queued frames are still analysed

    async def _consume(self, queue: AnalysisQueue) -> None:
        svc, sid = self.svc, self.sid
        loop = asyncio.get_running_loop()
        lat = svc.metrics.stage_latency
        while (sample := await queue.get()) is not None:
            frame = sample.frame
            self._inflight = frame.wall
            lat.labels("queued").observe(max(0.0, time.time() - frame.wall))
            t0 = time.perf_counter()
            try:
                image = await loop.run_in_executor(svc.prep, self._timed, Stage.CONVERSION, frame.rgb, svc.settings.analysis.max_side)
                fa = await svc.cascade.analyze(
                    sid,
                    image,
                    sample.phash,
                    offset=frame.offset,
                    at=frame.wall,
                    received_at=frame.wall,
                    signature=sample.signature,
                    source=frame.rgb,
                )
            except (AnalysisError, IngestError) as e:  # this frame is skipped; the stream goes on
                self._inflight = None
                await self._frame_failed(frame.offset, e)
                continue
            if (streak := self._streak.ok()) is not None:
                await self._notice(frame.offset, False, f"after {streak} skipped frames")
            lat.labels("analyze").observe(time.perf_counter() - t0)
            svc.metrics.cache.labels("hit" if fa.cached else "miss").inc()
            svc.latest[sid] = AnalyzedFrame(fa, image)
            await self._index(fa, image, sample)
            t1 = time.perf_counter()
            with svc.cpu.measure(sid, Stage.POLICY):
                drafts = svc.engines.engine_for(sid).evaluate(fa)
            lat.labels("policy").observe(time.perf_counter() - t1)
            svc.on_analyzed(sid, lag := time.time() - frame.wall)
            svc.overload.finished(sid, lag)
            self._inflight = None
            if drafts:
                await self._publish_alerts(drafts, fa, image)
            if svc.router.primary(Capability.COMPLIANCE) != LOCAL:  # stream time, so files are checked like live shows
                svc.escalations.offer(sid, svc.latest[sid], [d.rule for d in drafts if d.escalate], frame.offset)

    def _timed(self, stage: Stage, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on this (executor) thread, its CPU time counted to this stream's ``stage``."""
        with self.svc.cpu.measure(self.sid, stage):
            return fn(*args)

    async def _frame_failed(self, offset: float, e: Exception) -> None:
        """A frame whose conversion, sampling or analysis failed: skipped and counted; a streak of them is said once."""
        self.svc.metrics.frames_failed.inc()
        if self._streak.failing == 0:
            logger.warning("stream %s: frame at %.1fs skipped: %s", self.sid, offset, e)
        if self._streak.failed():
            reason = f"{self._streak.failing} frames in a row skipped ({describe(e)})"
            logger.error("stream %s: analysis failing: %s", self.sid, reason)
            await self._notice(offset, True, reason)

    async def _notice(self, offset: float, failing: bool, reason: str) -> None:
        ev = HealthEvent(stream=self.sid, at=time.time(), offset=offset, kind=HealthKind.ANALYSIS, active=failing, reason=reason)
        await self.svc.bus.publish(ev)

    async def _index(self, fa: FrameAnalysis, image: np.ndarray, sample: Sample) -> None:
        """Keep the frame for search / the summary: with its encoder embedding, or its change signature."""
        svc = self.svc
        loop = asyncio.get_running_loop()
        if fa.embedding is not None and not fa.cached and svc.settings.analysis.encoder.index:
            model, side = (svc.cascade.encoder.model if svc.cascade.encoder else ""), 320
        elif self._thumbnail_due(fa, sample):  # without the encoder: the change signal stands in (summary picks)
            fa = dataclasses.replace(fa, embedding=signature_vector(sample.signature))  # type: ignore[arg-type]
            model, side = SIGNATURE_INDEX, 960  # post-sized
        else:
            return
        try:
            row = await loop.run_in_executor(None, self._timed, Stage.STORE, thumbnail_record, svc.store, fa, image, model, side)
            if svc.frames is not None:
                await svc.frames(*row)
            else:
                await loop.run_in_executor(None, self._timed, Stage.STORE, svc.store.add_frame, *row)
        except StorageError as e:  # not kept for search; the storage health event says why
            logger.debug("stream %s: frame at %.1fs not indexed: %s", self.sid, fa.offset, e)

    def _thumbnail_due(self, fa: FrameAnalysis, sample: Sample) -> bool:
        """A newly analysed frame that starts a new scene (half the tiles changed; 2 s apart at least), or
        one per ``store.thumbnail_every_s`` of stream time."""
        every = self.svc.settings.store.thumbnail_every_s
        last = self._thumbnailed
        if fa.cached or sample.signature is None or every is None:
            return False
        cut = sample.change is not None and sample.change.fraction >= 0.5
        if last is not None and fa.offset - last < (2.0 if cut else every):
            return False
        self._thumbnailed = fa.offset
        return True

    async def _comply(self) -> None:
        """The compliance model's second look at escalated and periodic frames → alerts and scene tags."""
        svc, sid = self.svc, self.sid
        loop = asyncio.get_running_loop()
        deadline = svc.settings.vlm.compliance_deadline_s
        while (item := await svc.escalations.get(sid)) is not None:
            fa, image = item.frame.analysis, item.frame.image
            try:
                answer = await svc.vlm.compliance(image, ImageEvidence.from_detections(fa.width, fa.height, fa.detections))
            except VLMError as e:
                logger.error("stream %s: no compliance answer for the frame at %.1fs (%s): %s", sid, fa.offset, item.reason, e)
                continue
            if answer is None:
                continue
            late = time.time() - fa.received_at > deadline
            if late:
                svc.metrics.vlm_late.inc()
            vlm_fa = FrameAnalysis(sid, fa.offset, fa.at, fa.received_at, answer.detections(), fa.width, fa.height)
            drafts = second_opinion(svc.engines.engine_for(sid).evaluate(vlm_fa), fa.detections)
            if drafts:
                await self._publish_alerts(drafts, vlm_fa, image, late=late)
            scene = await loop.run_in_executor(
                None, functools.partial(build_scene, fa, image, answer.tags, answer.model, svc.store, late=late)
            )
            await svc.bus.publish(scene)

    async def _tick(self, pipeline: StreamPipeline, keeper: SessionKeeping | None) -> None:
        while True:  # outages produce no samples: health rules are also checked once a second
            await asyncio.sleep(1.0)
            await self._storage_health(pipeline.reader.offset_now())
            await self._health_alerts(None)
            self._overload(pipeline)
            if keeper is not None:  # the heartbeat that bounds a monitoring gap after a crash
                await self._beat(keeper)

    def _overload(self, pipeline: StreamPipeline) -> None:
        """Tell the overload watch the oldest frame still waiting or in analysis; take the sampling step it asks for."""
        ov, queue = self.svc.overload, self._queue
        if not pipeline.reader.live:  # (an HLS recording: read as a file, never degraded)
            ov.forget(self.sid)
            return
        waits = [w for w in (self._inflight, queue.oldest_wall() if queue is not None else None) if w is not None]
        ov.waiting(self.sid, min(waits, default=None))
        every = ov.every_s(self.sid)
        if pipeline.interval is not None and every is not None and every != pipeline.interval.every_s:
            logger.info("stream %s: sampled every %.2gs (overload step %d)", self.sid, every, ov.step.level)
            pipeline.interval.every_s = every  # the decoder thread reads it for its next frame

    async def _beat(self, keeper: SessionKeeping, *, force: bool = False) -> None:
        """A session heartbeat; one the data folder does not take is skipped (the storage health event says it)."""
        assert self.pipeline is not None
        reader = self.pipeline.reader
        try:
            await keeper.beat(reader.session_start, reader.offset_now(), force=force)
        except StorageError as e:
            logger.debug("stream %s: no heartbeat: %s", self.sid, e)

    async def _storage_health(self, offset: float) -> None:
        """Say once that the data folder takes no writes (``storage`` active), and once that it does again."""
        problem = self.svc.store.health.problem(time.monotonic())
        if (problem is None) == (self._storage_since is None):
            return
        now = time.time()
        if problem is not None:
            self._storage_since = now
            logger.error("stream %s: storage failing, watching on (events held, evidence not saved): %s", self.sid, problem)
            ev = HealthEvent(stream=self.sid, at=now, offset=offset, kind=HealthKind.STORAGE, active=True, reason=problem)
        else:
            lasted = round(now - (self._storage_since or now), 3)
            self._storage_since = None
            logger.warning("stream %s: storage ok again after %.1fs", self.sid, lasted)
            ev = HealthEvent(
                stream=self.sid, at=now, offset=offset, kind=HealthKind.STORAGE, active=False, duration_s=lasted, reason="writes work again"
            )
        await self.svc.publish_health(ev)

    # --- session ---------------------------------------------------------------------------------

    async def _resume_session(self, pipeline: StreamPipeline, keeper: SessionKeeping) -> None:
        """Continue the stream's open session (after a crash or a takeover): same offsets, and a monitoring gap."""
        started, gap = await keeper.restore()
        if started is not None and gap is not None:
            pipeline.reader.resume_session(started, at_least=gap.offset + (gap.duration_s or 0.0))
            logger.warning("stream %s: session continues; %s", self.sid, gap.describe())
            await self.svc.publish_health(gap)

    async def _end_session(self, pipeline: StreamPipeline, keeper: SessionKeeping) -> None:
        svc, reader = self.svc, pipeline.reader
        if self.stopping and svc.states.get(self.sid) not in (StreamState.STOPPED, StreamState.ENDED):
            ev = HealthEvent(
                stream=self.sid,
                at=time.time(),
                offset=reader.offset_now(),
                kind=HealthKind.STATE,
                state=StreamState.ENDED,
                reason="stopped by the operator",
            )
            await svc.publish_health(ev)
        await self._beat(keeper, force=True)
        try:
            await keeper.end()
        except StorageError as e:  # the next start continues this session: its gap is the time nobody watched
            logger.warning("stream %s: its session end could not be written: %s", self.sid, e)

    # --- alerts ----------------------------------------------------------------------------------

    async def _health_alerts(self, offset: float | None) -> None:
        for began, draft in self.svc.engines.engine_for(self.sid).tick(self.sid, time.time(), offset):
            now = time.time()
            await self._publish_alerts([draft], FrameAnalysis(self.sid, began, now, now, (), 0, 0), None)

    async def _publish_alerts(self, drafts: list[AlertDraft], fa: FrameAnalysis, image: np.ndarray | None, *, late: bool = False) -> None:
        svc = self.svc
        loop = asyncio.get_running_loop()
        build = functools.partial(build_alerts, drafts, fa, image, svc.store, late=late)
        events = await loop.run_in_executor(None, self._timed, Stage.STORE, build)
        if events and image is not None:  # a content alert (not a health rule's): for a while its stream's frames are never
            svc.overload.on_alert(self.sid)  # dropped and its sampling is not widened before the other streams'
        for ev in events:
            stored = await svc.bus.publish(ev)
            svc.metrics.stage_latency.labels("glass_to_stored").observe(max(0.0, time.time() - fa.received_at))
            if svc.actions is not None:  # the rule's action: pending for a moderator, or run now
                await svc.actions.on_alert(dataclasses.replace(ev, id=stored.id))
        if events and self._session is not None and self.pipeline is not None:  # the cooldowns reach the next owner now
            await self._beat(self._session, force=True)

    async def handover(self) -> None:
        """After the task was cancelled (drain): a last heartbeat, so the next owner's gap starts now."""
        if self._session is not None and self.pipeline is not None:
            await self._beat(self._session, force=True)


class LocalSession:
    """:class:`SessionKeeping` in the local SQLite store (the single box), blocking calls in the default executor."""

    def __init__(self, store: EventStore, stream: str) -> None:
        self.keeper = SessionKeeper(store, stream)

    async def restore(self) -> tuple[float | None, HealthEvent | None]:
        return await asyncio.get_running_loop().run_in_executor(None, self.keeper.restore)

    async def beat(self, started_at: float | None, offset: float, *, force: bool = False) -> None:
        await asyncio.get_running_loop().run_in_executor(None, functools.partial(self.keeper.beat, started_at, offset, force=force))

    async def end(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.keeper.end)
