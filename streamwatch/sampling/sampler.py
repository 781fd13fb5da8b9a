"""The sampling stage: quality gate + pHash + region change + dedupe over interval-sampled frames (pure).

``Sampler.feed(frame)`` returns the :class:`Sample` decision for that frame, preceded by any
health events it closes or opens (a sustained black or frozen picture is itself an incident).
Decision precedence: black > uniform > frozen > blurred > duplicate > kept; a frozen picture is
still kept once per ``heartbeat_s``.

The pHash is taken from the frame's L image (imagehash-compatible); the quality gate and the region
signals from the luma reduced to about 320×180 (:mod:`streamwatch.sampling.regions`). With
``regions`` on, "frozen" means no tile moved since the previous sample, and "duplicate" means the
pHash is within the radius and no tile holds new content compared with the last kept frame.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

import numpy as np

from streamwatch.config import SamplingConfig
from streamwatch.events.model import HealthEvent, HealthKind
from streamwatch.ingest.frame import Frame
from streamwatch.runtime.cpu_account import CpuAccount, Stage
from streamwatch.sampling.dedupe import Deduper
from streamwatch.sampling.phash import PHash, phash_luma
from streamwatch.sampling.quality import QualityGate, QualityReport
from streamwatch.sampling.regions import WORK_SIDE, RegionChange, still_change


class Decision(enum.Enum):
    KEPT = "kept"
    DUPLICATE = "duplicate"
    BLACK = "black"
    UNIFORM = "uniform"
    BLURRED = "blurred"
    FROZEN = "frozen"


@dataclass(frozen=True, slots=True)
class Sample:
    """A sampled frame and what the gate decided about it. Only KEPT samples go to analysis."""

    frame: Frame
    decision: Decision
    phash: PHash
    distance: int | None  # Hamming distance to the last kept frame
    quality: QualityReport
    signature: np.ndarray | None = field(default=None, compare=False)  # reduced luma (~320×180 uint8)
    change: RegionChange | None = field(default=None, compare=False)  # tiles changed vs the last kept frame
    moved: RegionChange | None = field(default=None, compare=False)  # tiles that moved since the previous sample

    @property
    def kept(self) -> bool:
        return self.decision is Decision.KEPT

    @property
    def offset(self) -> float:
        return self.frame.offset


@dataclass(slots=True)
class _Period:
    """Tracks one sustained condition (black, frozen) and when it was announced."""

    kind: HealthKind
    threshold_s: float
    since: float | None = None
    announced: bool = False

    def update(self, active: bool, since: float, now: float, stream: str, wall: float) -> HealthEvent | None:
        if active:
            if self.since is None:
                self.since = since
            if not self.announced and now - self.since >= self.threshold_s:
                self.announced = True
                # offset and at both mark when the condition began (announced threshold_s later)
                return HealthEvent(stream=stream, kind=self.kind, at=wall - (now - self.since), offset=self.since, active=True)
            return None
        event = None
        if self.announced and self.since is not None:
            event = HealthEvent(stream=stream, kind=self.kind, at=wall, offset=now, active=False, duration_s=round(now - self.since, 3))
        self.since, self.announced = None, False
        return event


class Sampler:
    """Decide, for each interval-sampled frame of one stream, whether it is worth analysing."""

    def __init__(self, cfg: SamplingConfig, cpu: CpuAccount | None = None) -> None:
        self.cfg = cfg
        self.cpu = cpu  # CPU time per stage of this thread (conversion, pHash, regions), per stream
        self.gate = QualityGate(cfg)
        self.dedupe = Deduper(cfg.dedupe_radius, cfg.heartbeat_s, cfg.region_level, cfg.region_min)
        self._prev_sig: np.ndarray | None = None
        self._unchanged_since: float | None = None
        self._prev_offset: float | None = None
        self._black = _Period(HealthKind.BLACK, cfg.black_after_s)
        self._frozen = _Period(HealthKind.FROZEN, 0.0)
        self.counts: dict[Decision, int] = dict.fromkeys(Decision, 0)

    def feed(self, frame: Frame) -> list[Sample | HealthEvent]:
        t0 = time.thread_time()
        gray = frame.gray(WORK_SIDE)
        luminance = frame.luminance()
        t1 = time.thread_time()
        h = phash_luma(luminance)
        t2 = time.thread_time()
        q = self.gate.measure(gray)
        out: list[Sample | HealthEvent] = []

        moved: RegionChange | None = None
        unchanged = q.unchanged
        if self.cfg.regions:
            prev, self._prev_sig = self._prev_sig, gray
            if prev is not None and prev.shape == gray.shape:
                moved = still_change(gray, prev, min_fraction=self.cfg.frozen_tile_changed)
            unchanged = moved is not None and not moved.any
        if unchanged:
            if self._unchanged_since is None:
                self._unchanged_since = self._prev_offset if self._prev_offset is not None else frame.offset
        else:
            self._unchanged_since = None
        self._prev_offset = frame.offset
        frozen = (
            self._unchanged_since is not None and not q.uniform and frame.offset - self._unchanged_since >= self.cfg.frozen_after_s - 1e-6
        )

        for period, active, since in (
            (self._black, q.black, frame.offset),
            (self._frozen, frozen, self._unchanged_since if self._unchanged_since is not None else frame.offset),
        ):
            ev = period.update(active, since, frame.offset, frame.stream, frame.wall)
            if ev is not None:
                out.append(ev)

        distance = self.dedupe.distance(h)
        change: RegionChange | None = None
        signature = gray if self.cfg.regions else None
        if q.black:
            decision = Decision.BLACK
        elif q.uniform:
            decision = Decision.UNIFORM
        elif frozen and not self.dedupe.heartbeat_due(frame.offset):
            decision = Decision.FROZEN
        elif q.blurred:
            decision = Decision.BLURRED
        else:
            verdict = self.dedupe.judge(h, frame.offset, signature)
            change = verdict.change
            decision = Decision.KEPT if verdict.new else Decision.DUPLICATE
        self.counts[decision] += 1
        if self.cpu is not None:
            t3 = time.thread_time()
            self.cpu.add(frame.stream, Stage.CONVERSION, t1 - t0)
            self.cpu.add(frame.stream, Stage.PHASH, t2 - t1)
            self.cpu.add(frame.stream, Stage.REGIONS, t3 - t2)
        out.append(Sample(frame, decision, h, distance, q, signature, change, moved))
        return out

    def restart(self, offset: float, wall: float, stream: str) -> list[HealthEvent]:
        """A break in the picture (a new connection or publisher): open periods close, and the first
        frame after it is not compared with the last one before it (no frozen picture across a gap)."""
        out = self.finish(offset, wall, stream)
        self._unchanged_since = self._prev_offset = None
        self.gate = QualityGate(self.cfg)
        return out

    def finish(self, offset: float, wall: float, stream: str) -> list[HealthEvent]:
        """Close open black/frozen periods at the end of a stream."""
        out = []
        for period in (self._black, self._frozen):
            ev = period.update(False, offset, offset, stream, wall)
            if ev is not None:
                out.append(ev)
        return out
