"""Where the CPU goes: CPU seconds per stream and stage, and the one CPU budget of the process (pure).

Each stage is timed with :func:`time.thread_time` (the CPU time of the thread doing the work, not
wall time: a stage that waits on a lock or a slower neighbour costs nothing here) where it runs, and
accumulated per (stream, stage) in a :class:`CpuAccount`. Work a batch does for several streams (one
nudity run over frames of three shows, one SQLite commit of many events) is shared out by weight
(pixels, events). A library's own worker threads are not the calling thread: live decoders run on
their reader thread (one decoder thread), a file decoder's frame threads are added to ``decode`` from
``/proc`` (:mod:`streamwatch.runtime.thread_cpu`), swscale converts on the calling thread, and ONNX
Runtime runs one intra-op thread per call by default; with a per-call budget above 1 its extra
intra-op threads are outside the figures (compare :func:`per_stream_hour` with the process's CPU).

The budget (:func:`cpu_budget`) sizes from one number what each library would otherwise size to the
machine: the analysis executor, ONNX Runtime intra-op threads per session, OpenCV's threads and the
decoder's frame threads.
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass


class Stage(enum.StrEnum):
    DECODE = "decode"  # demux + decode on the reader thread (+ the rotation to upright)
    CONVERSION = "conversion"  # YUV → gray/luminance for sampling, RGB at the analysis and source sizes
    REGIONS = "regions"  # quality gate, tile change, dedupe, the reuse plan
    PHASH = "phash"
    NUDITY = "nudity"
    OCR_DETECTION = "ocr_detection"
    OCR_RECOGNITION = "ocr_recognition"
    QR = "qr"
    ENCODER = "encoder"  # the vision encoder tier (embeddings + zero-shot labels)
    POLICY = "policy"
    STORE = "store"  # event commits, evidence images, thumbnails and index rows
    DELIVERY = "delivery"  # fan-out of committed events to subscribers


STAGES: tuple[str, ...] = tuple(s.value for s in Stage)

Sink = Callable[[str, str, float], None]  # (stream, stage, CPU seconds)


class CpuAccount:
    """CPU seconds per (stream, stage); thread-safe. ``sink`` sees every addition (a Prometheus counter)."""

    def __init__(self, sink: Sink | None = None) -> None:
        self._lock = threading.Lock()
        self._spent: dict[tuple[str, str], float] = {}
        self._sink = sink

    def add(self, stream: str, stage: str, seconds: float) -> None:
        if seconds <= 0.0:
            return
        with self._lock:
            key = (stream, stage)
            self._spent[key] = self._spent.get(key, 0.0) + seconds
        if self._sink is not None:
            self._sink(stream, stage, seconds)

    def share(self, weights: Mapping[str, float], stage: str, seconds: float) -> None:
        """``seconds`` of one piece of work done for several streams, split by ``weights`` (pixels, events)."""
        total = sum(weights.values())
        if total <= 0:
            return
        for stream, w in weights.items():
            self.add(stream, stage, seconds * w / total)

    @contextmanager
    def measure(self, stream: str, stage: str) -> Iterator[None]:
        """Time a synchronous block of this thread (never around an ``await``: other tasks would be counted)."""
        t0 = time.thread_time()
        try:
            yield
        finally:
            self.add(stream, stage, time.thread_time() - t0)

    def spent(self, stream: str | None = None) -> dict[str, float]:
        """CPU seconds per stage, of one stream or summed over all."""
        out: dict[str, float] = {}
        with self._lock:
            items = list(self._spent.items())
        for (s, stage), sec in items:
            if stream is None or s == stream:
                out[stage] = out.get(stage, 0.0) + sec
        return out

    def streams(self) -> list[str]:
        with self._lock:
            return sorted({s for s, _ in self._spent})


def per_stream_hour(spent: Mapping[str, float], stream_seconds: float) -> dict[str, float]:
    """CPU seconds per stream-hour, per stage: ``spent`` over ``stream_seconds`` of show watched (all streams)."""
    if stream_seconds <= 0:
        return {}
    return {stage: sec * 3600.0 / stream_seconds for stage, sec in spent.items()}


def weights(streams: Sequence[str], sizes: Sequence[float]) -> dict[str, float]:
    """Per-stream weights of a batch's inputs (stream of each input, its size)."""
    out: dict[str, float] = {}
    for s, n in zip(streams, sizes, strict=True):
        out[s] = out.get(s, 0.0) + float(n)
    return out


@dataclass(frozen=True, slots=True)
class CpuBudget:
    """How one CPU budget is spent: ``executor`` analysis calls at once, each using ``per_call`` threads
    (ONNX Runtime intra-op, OpenCV), and ``decoder`` frame threads per stream's decoder."""

    threads: int  # the budget (cores this process may use)
    executor: int
    per_call: int
    decoder: int

    def describe(self) -> str:
        return (
            f"CPU budget {self.threads} threads: {self.executor} analysis calls at once x {self.per_call} "
            f"thread(s) each (ONNX Runtime intra-op, OpenCV), {self.decoder} decoder thread(s) per stream"
        )


def cpu_budget(cpu_threads: int, cores: int | None, executor: int = 0) -> CpuBudget:
    """The budget: ``cpu_threads`` (0 = ``cores``); ``executor`` analysis threads (0 = the budget). Calls
    share the budget: executor x per-call threads stays within it (at least one each)."""
    total = cpu_threads or cores or 1
    ex = executor or total
    return CpuBudget(threads=total, executor=ex, per_call=max(1, total // ex), decoder=total)


__all__ = ["STAGES", "CpuAccount", "CpuBudget", "Stage", "cpu_budget", "per_stream_hour", "weights"]
