"""The local analysis cascade: reuse of earlier analyses, vision encoder + semantic candidates, then
the analyzers, batched across streams, off the loop.

Requests from every stream go through one batcher: whatever is waiting when a batch slot frees forms
the next batch (no added delay when idle, bigger batches under load); up to ``parallel`` batches run at
once (the pool's size), so the tail of one batch (its last OCR call) never leaves a core idle while
frames wait. Each analyzer runs its batch in the thread pool (ONNX Runtime and OpenCV release the GIL),
and per-call latency is recorded. The short steps around a frame (the reuse plan, the source-resolution
frame) run on ``prep``, a thread of their own, so a frame is not queued behind other frames' model
calls three times over (shortest work first: under a burst of scene cuts this is what keeps the lag
of the frames that are cheap to settle, the reused ones, near zero).

Reuse (:mod:`streamwatch.analysis.reuse`): a frame whose tiles all match a recent analysis (the last
one, or one within the pHash cache radius) reuses its detections; one where a few regions changed
keeps the detections of the unchanged regions and sends only the changed regions' crops to the
regional analyzers (QR at the source resolution, OCR at the analysis scale), while whole-frame
analyzers (nudity) run on the whole frame. With a vision encoder, a frame is embedded first (micro-batched across streams: up
to ``max_batch`` frames or ``encoder_wait_s``): its zero-shot labels join the detections, and the
semantically closest recent frame becomes one more candidate (reused only if its tiles match).

OCR lines too small to read at the analysis scale (under ``small_text_px``: 16 px corner text on a
1080p source) are read again on crops of the source frame (:mod:`streamwatch.analysis.reread`).

Analyzers say what they take: ``regional = True`` (crops are fine; OCR, QR) and
``source_resolution = True`` (whole frames at the source resolution; QR, whose modules must stay
readable). Boxes always come back in the analysis image's pixels.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from streamwatch.analysis.base import Analyzer
from streamwatch.analysis.cache import EmbeddingCache
from streamwatch.analysis.model import Detection, FrameAnalysis
from streamwatch.analysis.reread import Line, merged, small_lines
from streamwatch.analysis.reuse import Plan, PlanKind, Reference, References
from streamwatch.errors import AnalysisError
from streamwatch.runtime.cpu_account import CpuAccount, Stage, weights
from streamwatch.sampling.phash import PHash
from streamwatch.sampling.regions import Box

logger = logging.getLogger(__name__)

Observer = Callable[[str, float], None]  # (stage or analyzer name, seconds)
Source = Callable[[], np.ndarray]  # blocking: the frame as RGB at its source resolution


@dataclass
class _Request:
    image: np.ndarray
    source: Source | None
    boxes: tuple[Box, ...]  # empty: the whole frame
    future: asyncio.Future[tuple[Detection, ...]]
    stream: str = ""
    src: np.ndarray | None = field(default=None)


@dataclass(frozen=True, slots=True)
class _Input:
    index: int  # request in the batch
    image: np.ndarray
    offset: tuple[int, int]  # where the input sits in the source image (x, y)
    scale: float  # source pixels → analysis image pixels


class FrameEncoder(Protocol):
    """Embeddings and zero-shot labels for a batch of RGB frames (blocking)."""

    name: str
    model: str  # the encoder's name (what indexed embeddings are tagged with)
    dim: int

    def encode(self, images: list[np.ndarray]) -> tuple[np.ndarray, list[tuple[Detection, ...]]]: ...


class Cascade:
    def __init__(
        self,
        analyzers: Sequence[Analyzer],
        executor: Executor,
        *,
        cache_radius: int = 4,
        cache_ttl_s: float = 600.0,
        cache_size: int = 128,
        max_batch: int = 8,
        observe: Observer | None = None,
        encoder: FrameEncoder | None = None,
        semantic_threshold: float | None = 0.95,
        encoder_wait_s: float = 0.02,
        region_level: int = 24,
        region_min: float = 0.03,
        regional: bool = True,
        region_max_area: float = 0.5,
        cpu: CpuAccount | None = None,
        small_text_px: int = 24,
        prep: Executor | None = None,
        parallel: int = 1,
    ) -> None:
        self.analyzers = list(analyzers)
        self.cpu = cpu or CpuAccount()  # CPU seconds per stream and stage (analyzers, encoder, reuse plan, source RGB)
        self.executor = executor
        self.prep = prep or executor  # short per-frame steps (reuse plan, source RGB): not behind model calls
        self.parallel = max(1, parallel)  # batches in flight at once (the analysis pool's threads)
        self.max_batch = max_batch
        self.small_text_px = small_text_px  # OCR lines under this many analysis px tall are read again at the source resolution
        self.observe = observe or (lambda _name, _s: None)
        self._ref_args = (cache_radius, cache_ttl_s, cache_size)
        self._ref_kw = {"level": region_level, "min_fraction": region_min, "max_area": region_max_area if regional else 0.0}
        self._refs: dict[str, References] = {}
        self.regional_names = frozenset(a.name for a in self.analyzers if getattr(a, "regional", False))
        self.encoder = encoder
        self.semantic_threshold = semantic_threshold
        self.encoder_wait_s = encoder_wait_s
        self._semantic: dict[str, EmbeddingCache[Reference]] = {}
        self._encode_pending: list[tuple[str, np.ndarray, asyncio.Future[tuple[np.ndarray, tuple[Detection, ...]]]]] = []
        self._encode_wake = asyncio.Event()
        self._encode_worker: asyncio.Task[None] | None = None
        self.semantic_hits = 0
        self._pending: list[_Request] = []
        self._wake = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self.frames = 0  # frames that went through the models (whole or by regions)
        self.regional = 0  # of which only changed regions went to the regional analyzers
        self.hits = 0
        self.misses = 0
        self.busy: dict[str, float] = {}  # seconds spent per analyzer
        self.pixels: dict[str, int] = {}  # pixels handed to each analyzer

    def references(self, stream: str) -> References:
        r = self._refs.get(stream)
        if r is None:
            radius, ttl, size = self._ref_args
            r = self._refs[stream] = References(radius, ttl, size, **self._ref_kw)  # type: ignore[arg-type]
        return r

    def semantic(self, stream: str) -> EmbeddingCache[Reference] | None:
        if self.encoder is None or self.semantic_threshold is None:
            return None
        c = self._semantic.get(stream)
        if c is None:
            _radius, ttl, size = self._ref_args
            c = self._semantic[stream] = EmbeddingCache(self.encoder.dim, self.semantic_threshold, ttl, size)
        return c

    async def analyze(
        self,
        stream: str,
        image: np.ndarray,
        phash: PHash,
        *,
        offset: float,
        at: float,
        received_at: float,
        signature: np.ndarray | None = None,
        source: Source | None = None,
    ) -> FrameAnalysis:
        """Detections for one frame: ``image`` is RGB (H×W×3 uint8) at the analysis size, boxes come back
        in its pixels; ``signature`` the frame's reduced luma (region reuse; None = pHash reuse only);
        ``source`` gives the RGB frame at source resolution for crops and QR (None = ``image``)."""
        loop = asyncio.get_running_loop()
        h, w = image.shape[:2]
        refs = self.references(stream)
        plan = await loop.run_in_executor(self.prep, lambda: self._planned(stream, refs, phash, signature, (w, h), None))
        embedding: np.ndarray | None = None
        labels: tuple[Detection, ...] = ()
        if plan.kind is not PlanKind.HIT and self.encoder is not None:
            embedding, labels = await self._encode(image, stream)
            semantic = self.semantic(stream)
            found = semantic.get(embedding, time.monotonic()) if semantic is not None else None
            if found is not None:
                extra = found[0]
                alt = await loop.run_in_executor(self.prep, lambda: self._planned(stream, refs, phash, signature, (w, h), extra))
                if alt.kind is PlanKind.HIT:
                    self.semantic_hits += 1
                    plan = alt
        refs.seen(signature)
        if plan.kind is PlanKind.HIT:
            ref = plan.reference
            assert ref is not None
            refs.touch(ref)
            self.hits += 1
            emb = embedding if embedding is not None else ref.embedding
            return FrameAnalysis(stream, offset, at, received_at, ref.detections, w, h, cached=True, embedding=emb)
        self.misses += 1
        if plan.kind is PlanKind.REGIONS:
            self.regional += 1
        found_now = await self._submit(image, source, plan, stream)
        detections = plan.carried(self.regional_names) + found_now + labels
        ref = Reference(phash, signature, detections, (w, h), time.monotonic(), embedding)
        refs.put(ref)
        semantic = self.semantic(stream)
        if semantic is not None and embedding is not None:
            semantic.put(embedding, ref, time.monotonic())
        return FrameAnalysis(stream, offset, at, received_at, detections, w, h, embedding=embedding)

    def _planned(
        self, stream: str, refs: References, phash: PHash, signature: np.ndarray | None, size: tuple[int, int], extra: Reference | None
    ) -> Plan:
        with self.cpu.measure(stream, Stage.REGIONS):
            return refs.plan(phash, signature, size, time.monotonic(), extra, regional=self.regional_names)

    async def _submit(self, image: np.ndarray, source: Source | None, plan: Plan, stream: str = "") -> tuple[Detection, ...]:
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._run(), name="analysis-batcher")
        fut: asyncio.Future[tuple[Detection, ...]] = asyncio.get_running_loop().create_future()
        boxes = plan.boxes if plan.kind is PlanKind.REGIONS else ()
        self._pending.append(_Request(image, source, boxes, fut, stream))
        self._wake.set()
        return await fut

    async def embed(self, image: np.ndarray) -> tuple[np.ndarray, tuple[Detection, ...]]:
        """The encoder's embedding and labels for one image (micro-batched with the streams' frames)."""
        if self.encoder is None:
            raise AnalysisError("no vision encoder is configured")
        return await self._encode(image, "")

    async def _encode(self, image: np.ndarray, stream: str) -> tuple[np.ndarray, tuple[Detection, ...]]:
        fut: asyncio.Future[tuple[np.ndarray, tuple[Detection, ...]]] = asyncio.get_running_loop().create_future()
        self._encode_pending.append((stream, image, fut))
        self._encode_wake.set()
        if self._encode_worker is None or self._encode_worker.done():
            self._encode_worker = asyncio.create_task(self._run_encoder(), name="encoder-batcher")
        return await fut

    async def _run_encoder(self) -> None:
        loop = asyncio.get_running_loop()
        encoder = self.encoder
        assert encoder is not None
        while True:
            await self._encode_wake.wait()
            if len(self._encode_pending) < self.max_batch:  # a moment for other streams' frames to join
                await asyncio.sleep(self.encoder_wait_s)
            batch, self._encode_pending = self._encode_pending[: self.max_batch], self._encode_pending[self.max_batch :]
            if not self._encode_pending:
                self._encode_wake.clear()
            if not batch:
                continue
            t0 = time.perf_counter()
            try:
                embeds, labels = await loop.run_in_executor(self.executor, self._encoded, encoder, batch)
            except Exception as e:  # a failed batch fails its frames only; the batcher goes on for every stream
                err = _wrapped(e, f"encoder {encoder.name}")
                for _, _, f in batch:
                    if not f.done():
                        f.set_exception(err)
                continue
            self.observe(encoder.name, time.perf_counter() - t0)
            for i, (_, _, f) in enumerate(batch):
                if not f.done():
                    f.set_result((embeds[i], labels[i]))

    def _encoded(
        self, encoder: FrameEncoder, batch: list[tuple[str, np.ndarray, asyncio.Future[tuple[np.ndarray, tuple[Detection, ...]]]]]
    ) -> tuple[np.ndarray, list[tuple[Detection, ...]]]:
        t0 = time.thread_time()
        try:
            return encoder.encode([img for _, img, _ in batch])
        finally:  # shared by the frames' streams (requests that are not a stream's, e.g. a question's image: "")
            self.cpu.share(weights([s for s, _, _ in batch], [1.0] * len(batch)), Stage.ENCODER, time.thread_time() - t0)

    async def close(self) -> None:
        for task in (self._worker, self._encode_worker):
            if task is not None:
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
        self._worker = self._encode_worker = None

    async def _run(self) -> None:
        slots = asyncio.Semaphore(self.parallel)
        running: set[asyncio.Task[None]] = set()

        def done(t: asyncio.Task[None]) -> None:
            running.discard(t)
            slots.release()

        try:
            while True:
                await self._wake.wait()
                await slots.acquire()
                batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch :]
                if not self._pending:
                    self._wake.clear()
                if not batch:
                    slots.release()
                    continue
                task = asyncio.create_task(self._batch(batch), name="analysis-batch")
                running.add(task)
                task.add_done_callback(done)
        finally:
            for t in list(running):
                t.cancel()
            if running:
                await asyncio.gather(*running, return_exceptions=True)

    async def _batch(self, batch: list[_Request]) -> None:
        """One batch through every analyzer; each frame's future gets its detections or the batch's error."""
        loop = asyncio.get_running_loop()
        try:
            await self._sources(loop, batch)
            inputs = {a.name: self._inputs(a, batch) for a in self.analyzers}
            # batched analyzers (nudity) take the whole batch in one call; per-image ones (OCR, QR)
            # get one job per input, so the pool's threads share them
            jobs: list[Awaitable[list[tuple[Detection, ...]]]] = []
            for a in self.analyzers:
                images = [i.image for i in inputs[a.name]]
                streams = [batch[i.index].stream for i in inputs[a.name]]
                if getattr(a, "batched", False) or len(images) <= 1:
                    jobs.append(loop.run_in_executor(self.executor, self._call, a, images, streams))
                else:
                    jobs.append(self._per_image(loop, a, images, streams))
            results = await asyncio.gather(*jobs)
            results = [await self._reread(loop, a, inputs[a.name], per, batch) for a, per in zip(self.analyzers, results, strict=True)]
            found: list[list[Detection]] = [[] for _ in batch]
            for a, per_input in zip(self.analyzers, results, strict=True):
                for inp, dets in zip(inputs[a.name], per_input, strict=True):
                    found[inp.index].extend(_placed(d, inp) for d in dets)
        except Exception as e:  # a failed batch fails its frames only; the batcher goes on for every stream
            err = _wrapped(e, "analysis")
            for r in batch:
                if not r.future.done():
                    r.future.set_exception(err)
            return
        self.frames += len(batch)
        for r, per_request in zip(batch, found, strict=True):
            if not r.future.done():
                r.future.set_result(tuple(per_request))

    async def _sources(self, loop: asyncio.AbstractEventLoop, batch: list[_Request]) -> None:
        """The source-resolution frames the batch needs (crops, or a source-resolution analyzer)."""
        wants_source = any(getattr(a, "source_resolution", False) for a in self.analyzers)
        todo = [(r, r.source) for r in batch if r.source is not None and (r.boxes or wants_source)]
        got = await asyncio.gather(*(loop.run_in_executor(self.prep, self._source, r.stream, source) for r, source in todo))
        for (r, _), src in zip(todo, got, strict=True):
            r.src = src

    def _source(self, stream: str, source: Source) -> np.ndarray:
        with self.cpu.measure(stream, Stage.CONVERSION):
            return source()

    def _inputs(self, a: Analyzer, batch: list[_Request]) -> list[_Input]:
        out = []
        at_source = getattr(a, "source_resolution", False)
        for i, r in enumerate(batch):
            w = r.image.shape[1]
            # source-resolution analyzers (QR) read the source picture; the others (OCR) the analysis
            # image, whose scale they read well (10 px text) at a quarter of the cost of 1080p crops
            src = r.src if r.src is not None and at_source else r.image
            scale = w / src.shape[1]
            if r.boxes and a.name in self.regional_names:
                sh, sw = src.shape[:2]
                for x1, y1, x2, y2 in r.boxes:
                    px1, py1 = int(x1 * sw), int(y1 * sh)
                    px2, py2 = min(sw, int(np.ceil(x2 * sw))), min(sh, int(np.ceil(y2 * sh)))
                    if px2 - px1 >= 8 and py2 - py1 >= 8:
                        out.append(_Input(i, np.ascontiguousarray(src[py1:py2, px1:px2]), (px1, py1), scale))
            elif at_source:
                out.append(_Input(i, src, (0, 0), scale))
            else:
                out.append(_Input(i, r.image, (0, 0), 1.0))
        return out

    async def _reread(
        self, loop: asyncio.AbstractEventLoop, a: Analyzer, inputs: list[_Input], found: list[tuple[Detection, ...]], batch: list[_Request]
    ) -> list[tuple[Detection, ...]]:
        """OCR lines too small at the analysis scale, read again on crops of the source frame (:mod:`.reread`)."""
        if a.name not in self.regional_names or getattr(a, "source_resolution", False):
            return found
        todo: list[tuple[int, list[Line], np.ndarray, float]] = []
        for k, (inp, dets) in enumerate(zip(inputs, found, strict=True)):
            r = batch[inp.index]
            if r.src is not None and dets:
                gain = r.src.shape[1] / r.image.shape[1]
                lines = small_lines(dets, inp.offset, gain, self.small_text_px, (r.src.shape[1], r.src.shape[0]))
                if lines:
                    todo.append((k, lines, r.src, gain))
        if not todo:
            return found
        crops = [np.ascontiguousarray(src[y1:y2, x1:x2]) for _, lines, src, _ in todo for x1, y1, x2, y2 in (ln.box for ln in lines)]
        streams = [batch[inputs[k].index].stream for k, lines, _, _ in todo for _ in lines]
        readings = iter(await self._per_image(loop, a, crops, streams))
        out = list(found)
        for k, lines, _, gain in todo:
            out[k] = merged(found[k], lines, [next(readings) for _ in lines], inputs[k].offset, gain)
        return out

    async def _per_image(
        self, loop: asyncio.AbstractEventLoop, a: Analyzer, images: list[np.ndarray], streams: list[str]
    ) -> list[tuple[Detection, ...]]:
        jobs = (loop.run_in_executor(self.executor, self._call, a, [img], [s]) for img, s in zip(images, streams, strict=True))
        parts = await asyncio.gather(*jobs)
        return [p[0] for p in parts]

    def _call(self, analyzer: Analyzer, images: list[np.ndarray], streams: list[str] | None = None) -> list[tuple[Detection, ...]]:
        if not images:
            return []
        t0 = time.perf_counter()
        c0 = time.thread_time()
        try:
            out = analyzer.analyze(images)
        except AnalysisError:
            raise
        except Exception as e:  # a library or analyzer bug on these frames: named, with the frame sizes
            sizes = ", ".join(f"{i.shape[1]}x{i.shape[0]}" for i in images[:4])
            raise AnalysisError(f"analyzer {analyzer.name} failed on {len(images)} frame(s) ({sizes}): {type(e).__name__}: {e}") from e
        took = time.perf_counter() - t0
        self._count_cpu(analyzer, images, streams or [""] * len(images), time.thread_time() - c0)
        self.observe(analyzer.name, took)
        self.busy[analyzer.name] = self.busy.get(analyzer.name, 0.0) + took
        self.pixels[analyzer.name] = self.pixels.get(analyzer.name, 0) + sum(int(i.shape[0] * i.shape[1]) for i in images)
        if len(out) != len(images):
            raise AnalysisError(f"analyzer {analyzer.name} returned {len(out)} results for {len(images)} images")
        return out

    def _count_cpu(self, analyzer: Analyzer, images: list[np.ndarray], streams: list[str], cpu: float) -> None:
        """This thread's CPU time of one analyzer call, shared by the inputs' streams by pixels; an analyzer
        with ``cpu_split()`` (OCR: detection, recognition) says how its last call on this thread divides."""
        split = getattr(analyzer, "cpu_split", None)
        parts: dict[str, float] = split() if split is not None else {}
        rest = cpu - sum(parts.values())
        if parts:  # what the analyzer did around its parts (colour order, boxes) goes to its first part
            first = next(iter(parts))
            parts[first] += max(0.0, rest)
        else:
            parts = {analyzer.name: cpu}
        w = weights(streams, [int(i.shape[0] * i.shape[1]) for i in images])
        for stage, sec in parts.items():
            self.cpu.share(w, stage, sec)


def _placed(d: Detection, inp: _Input) -> Detection:
    """``d`` with its box moved from the input's pixels to the analysis image's."""
    if d.bbox is None or (inp.offset == (0, 0) and inp.scale == 1.0):
        return d
    ox, oy = inp.offset
    s = inp.scale
    x1, y1, x2, y2 = d.bbox
    bbox = (int((x1 + ox) * s), int((y1 + oy) * s), int((x2 + ox) * s), int((y2 + oy) * s))
    return Detection(d.source, d.label, d.confidence, bbox, d.text)


def _wrapped(e: Exception, what: str) -> AnalysisError:
    """``e`` as the AnalysisError the waiting frames get; anything not already one is logged with its traceback."""
    if isinstance(e, AnalysisError):
        return e
    logger.error("%s failed on a batch: %s: %s", what, type(e).__name__, e, exc_info=e)
    return AnalysisError(f"{what} failed: {type(e).__name__}: {e}")
