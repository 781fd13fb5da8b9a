"""How the cascade schedules frames from many streams under load (issue 22: the lag of a burst of scene
cuts): a batch in flight does not hold back the next one while a pool thread is free, and a frame that
only needs the reuse plan (a reused picture) is not queued behind other frames' model calls.

Real QR analyzer and real photos (skimage); one analyzer that the test holds inside its call (a model
call that takes as long as the test wants), so the timing is the test's, not the machine's."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest

from streamwatch.analysis.cascade import Cascade
from streamwatch.analysis.detectors import AnalyzerSettings, QRReader
from streamwatch.analysis.model import Detection
from streamwatch.sampling.phash import phash_luma


class Held:
    """Holds every call on a dark frame (mean < 60) until ``release`` is set: a long model call."""

    name = "held"
    providers = ("cpu",)

    def __init__(self) -> None:
        self.release = threading.Event()
        self.inside = threading.Semaphore(0)  # one token per held call that has started

    def analyze(self, images: Sequence[np.ndarray]) -> list[tuple[Detection, ...]]:
        for img in images:
            if float(img.mean()) < 60:
                self.inside.release()
                assert self.release.wait(30), "never released"
        return [() for _ in images]


def _photos() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from skimage import data

    bright = np.ascontiguousarray(data.astronaut()[::2, ::2])  # 256x256 RGB, mean > 60
    dark = (bright // 5).astype(np.uint8)  # the held kind
    other = np.ascontiguousarray(data.chelsea()[:256, :256])
    assert float(dark.mean()) < 60 < float(other.mean()) and float(bright.mean()) > 60
    return bright, dark, other


async def _analyze(cascade: Cascade, sid: str, img: np.ndarray, t: float) -> Any:
    return await cascade.analyze(sid, img, phash_luma(img[..., 1]), offset=t, at=time.time(), received_at=time.time())


async def _inside(held: Held, n: int) -> None:
    for _ in range(n):
        assert await asyncio.to_thread(held.inside.acquire, True, 10), "the held call never started"


@pytest.mark.parametrize("parallel", [1, 2])
def test_a_batch_in_flight_does_not_hold_back_the_next_while_a_thread_is_free(parallel: int) -> None:
    _, dark, other = _photos()

    async def scenario() -> None:
        held = Held()
        with ThreadPoolExecutor(2) as pool, ThreadPoolExecutor(1) as prep:
            cascade = Cascade([QRReader(AnalyzerSettings(device="cpu")), held], pool, cache_size=0, prep=prep, parallel=parallel)
            try:
                slow = asyncio.create_task(_analyze(cascade, "a", dark, 0.0))
                await _inside(held, 1)  # show a's frame is inside a long model call
                quick = asyncio.create_task(_analyze(cascade, "b", other, 0.0))
                done, _ = await asyncio.wait({quick}, timeout=5)
                if parallel == 2:
                    assert quick in done, "b's frame waited for a's batch although a pool thread was free"
                    assert quick.result().stream == "b" and not slow.done()
                else:  # one batch at a time: b waits for a (what the cascade did before)
                    assert not done
                held.release.set()
                async with asyncio.timeout(30):
                    assert (await slow).stream == "a" and (await quick).stream == "b"
            finally:
                held.release.set()
                await cascade.close()

    asyncio.run(scenario())


def test_a_reused_picture_is_settled_while_every_pool_thread_is_in_a_model_call() -> None:
    bright, dark, _ = _photos()

    async def scenario() -> None:
        held = Held()
        with ThreadPoolExecutor(2) as pool, ThreadPoolExecutor(1) as prep:
            cascade = Cascade([QRReader(AnalyzerSettings(device="cpu")), held], pool, prep=prep, parallel=2)
            try:
                first = await _analyze(cascade, "c", bright, 0.0)  # c's picture, analysed once
                assert not first.cached
                busy = [asyncio.create_task(_analyze(cascade, s, img, 0.0)) for s, img in (("a", dark), ("b", dark[:, ::-1].copy()))]
                await _inside(held, 2)  # both pool threads are inside model calls
                async with asyncio.timeout(5):  # the same picture on c: only the plan runs, on prep
                    again = await _analyze(cascade, "c", bright, 1.0)
                assert again.cached and again.stream == "c"
                assert not any(t.done() for t in busy)
                held.release.set()
                async with asyncio.timeout(30):
                    assert [(await t).stream for t in busy] == ["a", "b"]
            finally:
                held.release.set()
                await cascade.close()

    asyncio.run(scenario())


def test_cancelling_the_cascade_with_batches_in_flight_ends_them() -> None:
    _, dark, _ = _photos()

    async def scenario() -> None:
        held = Held()
        with ThreadPoolExecutor(2) as pool:
            cascade = Cascade([held], pool, cache_size=0, parallel=2)
            waiting = asyncio.create_task(_analyze(cascade, "a", dark, 0.0))
            await _inside(held, 1)
            async with asyncio.timeout(5):
                await cascade.close()  # the batcher and its batch tasks end; the held thread is let go below
            held.release.set()
            waiting.cancel()  # its stream's runner is cancelled with the cascade

    asyncio.run(scenario())
