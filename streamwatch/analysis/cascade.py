"""The local analysis cascade: pHash cache, then the analyzers, batched across streams, off the loop.

Requests from every stream go through one batcher: whatever is waiting when the previous batch ends
forms the next one (no added delay when idle, bigger batches under load), each analyzer runs its
batch in the thread pool (ONNX Runtime and OpenCV release the GIL), and per-call latency is recorded.
A frame whose pHash is within the cache radius of one analysed less than ``ttl_s`` ago reuses those
detections (policy still runs on it, so cooldowns apply).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np

from streamwatch.analysis.base import Analyzer
from streamwatch.analysis.cache import PHashCache
from streamwatch.analysis.model import Detection, FrameAnalysis
from streamwatch.errors import AnalysisError
from streamwatch.sampling.phash import PHash

logger = logging.getLogger(__name__)

Observer = Callable[[str, float], None]  # (stage or analyzer name, seconds)


@dataclass
class _Request:
    image: np.ndarray
    future: asyncio.Future[tuple[Detection, ...]]


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
    ) -> None:
        self.analyzers = list(analyzers)
        self.executor = executor
        self.max_batch = max_batch
        self.observe = observe or (lambda _name, _s: None)
        self._cache_args = (cache_radius, cache_ttl_s, cache_size)
        self._caches: dict[str, PHashCache[tuple[Detection, ...]]] = {}
        self._pending: list[_Request] = []
        self._wake = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self.frames = 0  # frames analysed by the models
        self.hits = 0
        self.misses = 0

    def cache(self, stream: str) -> PHashCache[tuple[Detection, ...]]:
        c = self._caches.get(stream)
        if c is None:
            c = self._caches[stream] = PHashCache(*self._cache_args)
        return c

    async def analyze(self, stream: str, image: np.ndarray, phash: PHash, *, offset: float, at: float, received_at: float) -> FrameAnalysis:
        """Detections for one frame (RGB), from the cache or the models."""
        h, w = image.shape[:2]
        cache = self.cache(stream)
        now = time.monotonic()
        cached = cache.get(phash, now)
        if cached is not None:
            self.hits += 1
            return FrameAnalysis(stream, offset, at, received_at, cached, w, h, cached=True)
        self.misses += 1
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._run(), name="analysis-batcher")
        fut: asyncio.Future[tuple[Detection, ...]] = asyncio.get_running_loop().create_future()
        self._pending.append(_Request(image, fut))
        self._wake.set()
        detections = await fut
        cache.put(phash, detections, time.monotonic())
        return FrameAnalysis(stream, offset, at, received_at, detections, w, h)

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
            self._worker = None

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
