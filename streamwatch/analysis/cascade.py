"""The local analysis cascade: pHash cache, vision encoder + semantic cache, then the analyzers,
batched across streams, off the loop.

Requests from every stream go through one batcher: whatever is waiting when the previous batch ends
forms the next one (no added delay when idle, bigger batches under load), each analyzer runs its
batch in the thread pool (ONNX Runtime and OpenCV release the GIL), and per-call latency is recorded.
A frame whose pHash is within the cache radius of one analysed less than ``ttl_s`` ago reuses those
detections (policy still runs on it, so cooldowns apply). With a vision encoder, a pHash miss is
embedded first (micro-batched across streams: up to ``max_batch`` frames or ``encoder_wait_s``): its
zero-shot labels join the detections, and a frame whose embedding is within the semantic threshold of
a recent one (a re-framed shot of the same scene, which the pHash misses) reuses that analysis.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from streamwatch.analysis.base import Analyzer
from streamwatch.analysis.cache import EmbeddingCache, PHashCache
from streamwatch.analysis.model import Detection, FrameAnalysis
from streamwatch.errors import AnalysisError
from streamwatch.sampling.phash import PHash

logger = logging.getLogger(__name__)

Observer = Callable[[str, float], None]  # (stage or analyzer name, seconds)


@dataclass
class _Request:
    image: np.ndarray
    future: asyncio.Future[tuple[Detection, ...]]


@dataclass(frozen=True, slots=True)
class _Entry:
    detections: tuple[Detection, ...]
    embedding: np.ndarray | None


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
        cache_size: int = 512,
        max_batch: int = 8,
        observe: Observer | None = None,
        encoder: FrameEncoder | None = None,
        semantic_threshold: float | None = 0.95,
        encoder_wait_s: float = 0.02,
    ) -> None:
        self.analyzers = list(analyzers)
        self.executor = executor
        self.max_batch = max_batch
        self.observe = observe or (lambda _name, _s: None)
        self._cache_args = (cache_radius, cache_ttl_s, cache_size)
        self._caches: dict[str, PHashCache[_Entry]] = {}
        self.encoder = encoder
        self.semantic_threshold = semantic_threshold
        self.encoder_wait_s = encoder_wait_s
        self._semantic: dict[str, EmbeddingCache[_Entry]] = {}
        self._encode_pending: list[tuple[np.ndarray, asyncio.Future[tuple[np.ndarray, tuple[Detection, ...]]]]] = []
        self._encode_wake = asyncio.Event()
        self._encode_worker: asyncio.Task[None] | None = None
        self.semantic_hits = 0
        self._pending: list[_Request] = []
        self._wake = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self.frames = 0  # frames analysed by the models
        self.hits = 0
        self.misses = 0

    def cache(self, stream: str) -> PHashCache[_Entry]:
        c = self._caches.get(stream)
        if c is None:
            c = self._caches[stream] = PHashCache(*self._cache_args)
        return c

    def semantic(self, stream: str) -> EmbeddingCache[_Entry] | None:
        if self.encoder is None or self.semantic_threshold is None:
            return None
        c = self._semantic.get(stream)
        if c is None:
            _radius, ttl, size = self._cache_args
            c = self._semantic[stream] = EmbeddingCache(self.encoder.dim, self.semantic_threshold, ttl, size)
        return c

    async def analyze(self, stream: str, image: np.ndarray, phash: PHash, *, offset: float, at: float, received_at: float) -> FrameAnalysis:
        """Detections for one frame (RGB), from the cache or the models."""
        h, w = image.shape[:2]
        cache = self.cache(stream)
        now = time.monotonic()
        cached = cache.get(phash, now)
        if cached is not None:
            self.hits += 1
            return FrameAnalysis(stream, offset, at, received_at, cached.detections, w, h, cached=True, embedding=cached.embedding)
        embedding: np.ndarray | None = None
        labels: tuple[Detection, ...] = ()
        if self.encoder is not None:
            embedding, labels = await self._encode(image)
            semantic = self.semantic(stream)
            hit = semantic.get(embedding, time.monotonic()) if semantic is not None else None
            if hit is not None:
                self.hits += 1
                self.semantic_hits += 1
                entry = _Entry(hit[0].detections, embedding)
                cache.put(phash, entry, time.monotonic())
                return FrameAnalysis(stream, offset, at, received_at, entry.detections, w, h, cached=True, embedding=embedding)
        self.misses += 1
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._run(), name="analysis-batcher")
        fut: asyncio.Future[tuple[Detection, ...]] = asyncio.get_running_loop().create_future()
        self._pending.append(_Request(image, fut))
        self._wake.set()
        detections = (await fut) + labels
        entry = _Entry(detections, embedding)
        cache.put(phash, entry, time.monotonic())
        semantic = self.semantic(stream)
        if semantic is not None and embedding is not None:
            semantic.put(embedding, entry, time.monotonic())
        return FrameAnalysis(stream, offset, at, received_at, detections, w, h, embedding=embedding)

    async def embed(self, image: np.ndarray) -> tuple[np.ndarray, tuple[Detection, ...]]:
        """The encoder's embedding and labels for one image (micro-batched with the streams' frames)."""
        if self.encoder is None:
            raise AnalysisError("no vision encoder is configured")
        return await self._encode(image)

    async def _encode(self, image: np.ndarray) -> tuple[np.ndarray, tuple[Detection, ...]]:
        fut: asyncio.Future[tuple[np.ndarray, tuple[Detection, ...]]] = asyncio.get_running_loop().create_future()
        self._encode_pending.append((image, fut))
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
                embeds, labels = await loop.run_in_executor(self.executor, encoder.encode, [img for img, _ in batch])
            except AnalysisError as e:
                for _, f in batch:
                    if not f.done():
                        f.set_exception(e)
                continue
            self.observe(encoder.name, time.perf_counter() - t0)
            for i, (_, f) in enumerate(batch):
                if not f.done():
                    f.set_result((embeds[i], labels[i]))

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
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch :]
            if not self._pending:
                self._wake.clear()
            if not batch:
                continue
            images = [r.image for r in batch]
            # batched analyzers (nudity) take the whole batch in one call; per-image ones (OCR, QR)
            # get one job per image, so the pool's threads share them
            jobs: list[Awaitable[list[tuple[Detection, ...]]]] = []
            for a in self.analyzers:
                if getattr(a, "batched", False) or len(images) == 1:
                    jobs.append(loop.run_in_executor(self.executor, self._call, a, images))
                else:
                    jobs.append(self._per_image(loop, a, images))
            try:
                results = await asyncio.gather(*jobs)
            except AnalysisError as e:
                for r in batch:
                    if not r.future.done():
                        r.future.set_exception(e)
                continue
            self.frames += len(batch)
            for i, r in enumerate(batch):
                if not r.future.done():
                    r.future.set_result(tuple(d for per_analyzer in results for d in per_analyzer[i]))

    async def _per_image(self, loop: asyncio.AbstractEventLoop, a: Analyzer, images: list[np.ndarray]) -> list[tuple[Detection, ...]]:
        parts = await asyncio.gather(*(loop.run_in_executor(self.executor, self._call, a, [img]) for img in images))
        return [p[0] for p in parts]

    def _call(self, analyzer: Analyzer, images: list[np.ndarray]) -> list[tuple[Detection, ...]]:
        t0 = time.perf_counter()
        out = analyzer.analyze(images)
        self.observe(analyzer.name, time.perf_counter() - t0)
        if len(out) != len(images):
            raise AnalysisError(f"analyzer {analyzer.name} returned {len(out)} results for {len(images)} images")
        return out
