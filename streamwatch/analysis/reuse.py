"""Which earlier analysis a frame may reuse, and which of its regions must be analysed again (pure).

Per stream, the analysed frames of the last ``ttl_s`` are kept as references (pHash, region
signature, detections). For a new frame the candidates are the last analysed frame and the
references within ``radius`` pHash bits (plus, with a vision encoder, the semantically closest one);
each is compared tile by tile (:func:`~streamwatch.sampling.regions.content_change`). The best
candidate decides the plan:

- ``hit``: no tile holds new content → its detections are reused as they are;
- ``regions``: a few tiles changed (their padded boxes cover at most ``max_area`` of the picture) →
  the detections of the unchanged regions are kept and only the changed regions' crops go to the
  regional analyzers (QR at source resolution, OCR at the analysis scale); whole-frame analyzers run on the whole frame;
- ``full``: everything is analysed again.

A cached analysis never hides a change: a frame is only matched to a reference whose tiles agree.
A moving picture (pan, shake) is matched at the measured shift and becomes the next reference, so a
caption appearing at the edge is not hidden in the strip that slid in since an old reference; what
slid in is counted (``drift``, in reduced pixels since the detections' model run) and analysed as a
strip along the edge once the camera has moved a whole tile.
Without signatures (``regions`` off) this is the plain pHash-radius cache.
Time is passed in (monotonic seconds); expired entries are skipped on read and dropped on write.
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from streamwatch.analysis.model import BBox, Detection
from streamwatch.sampling.phash import PHash
from streamwatch.sampling.regions import TILE, Box, RegionChange, box_area, content_change, merge_boxes


class PlanKind(enum.Enum):
    HIT = "hit"
    REGIONS = "regions"
    FULL = "full"


@dataclass(frozen=True, slots=True)
class Reference:
    """One analysed frame: what the analyzers found, and what it looked like."""

    phash: PHash
    signature: np.ndarray | None = field(compare=False)  # reduced luma, or None
    detections: tuple[Detection, ...]
    size: tuple[int, int]  # (width, height) of the analysis image the boxes refer to
    born: float
    embedding: np.ndarray | None = field(default=None, compare=False)
    drift: tuple[int, int] = (0, 0)  # camera motion (reduced px) since the model run whose detections these are


@dataclass(frozen=True, slots=True)
class Plan:
    kind: PlanKind
    reference: Reference | None = None
    boxes: tuple[Box, ...] = ()  # regions to analyse again (fractions of the picture), for REGIONS
    change: RegionChange | None = None
    drift: tuple[int, int] = (0, 0)  # the motion the frame's reference carries on (what slid in, not yet analysed)

    def carried(self, regional: frozenset[str]) -> tuple[Detection, ...]:
        """Detections of the reference's regional analyzers that lie outside every box (REGIONS)."""
        ref = self.reference
        if ref is None:
            return ()
        w, h = ref.size
        return tuple(d for d in ref.detections if d.source in regional and not _touches(d.bbox, self.boxes, w, h))


def _touches(bbox: BBox | None, boxes: tuple[Box, ...], w: int, h: int) -> bool:
    if bbox is None:
        return True  # a detection without a place cannot be kept apart from the change
    x1, y1, x2, y2 = bbox[0] / w, bbox[1] / h, bbox[2] / w, bbox[3] / h
    return any(x1 < b[2] and b[0] < x2 and y1 < b[3] and b[1] < y2 for b in boxes)


def _slid_in(drift: tuple[int, int], size: tuple[int, int]) -> list[Box]:
    """The strips along the edges where ``drift`` (reduced px; the picture moved by it) brought in new
    picture, one tile wider inwards."""
    (dx, dy), (w, h) = drift, size
    out: list[Box] = []
    if dx:
        x = min(abs(dx) + TILE, w) / w
        out.append((1.0 - x, 0.0, 1.0, 1.0) if dx < 0 else (0.0, 0.0, x, 1.0))
    if dy:
        y = min(abs(dy) + TILE, h) / h
        out.append((0.0, 1.0 - y, 1.0, 1.0) if dy < 0 else (0.0, 0.0, 1.0, y))
    return out


class References:
    """The reference analyses of one stream (bounded LRU of ``max_entries``, ``ttl_s`` on read)."""

    def __init__(
        self,
        radius: int = 4,
        ttl_s: float = 600.0,
        max_entries: int = 128,
        *,
        level: int = 24,
        min_fraction: float = 0.03,
        max_area: float = 0.5,
        candidates: int = 3,
    ) -> None:
        self.radius = radius
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self.level, self.min_fraction = level, min_fraction
        self.max_area = max_area
        self.candidates = candidates
        self._items: OrderedDict[int, Reference] = OrderedDict()  # insertion order = age; last = newest
        self._serial = 0

    def __len__(self) -> int:
        return len(self._items)

    def _live(self, now: float) -> list[Reference]:
        """Unexpired references, oldest first (read-only: ``plan`` may run in a worker thread)."""
        return [r for r in list(self._items.values()) if now - r.born <= self.ttl_s]

    def plan(
        self,
        phash: PHash,
        signature: np.ndarray | None,
        size: tuple[int, int],
        now: float,
        extra: Reference | None = None,
        *,
        regional: frozenset[str] = frozenset(),
    ) -> Plan:
        """The plan for a frame of ``size`` (analysis image) with this pHash and signature."""
        live = self._live(now)
        near = sorted((r for r in live if r.phash - phash <= self.radius), key=lambda r: r.phash - phash)
        picks: list[Reference] = []
        for r in [*near[: self.candidates], *live[-1:], *([extra] if extra is not None and now - extra.born <= self.ttl_s else [])]:
            if all(r is not p for p in picks):
                picks.append(r)
        if signature is None:  # no tiles to compare: the plain pHash (and semantic) cache
            if near:
                return Plan(PlanKind.HIT, near[0])
            return Plan(PlanKind.HIT, extra) if extra is not None and extra in picks else Plan(PlanKind.FULL)
        best: tuple[int, Reference, RegionChange] | None = None
        for r in picks:
            if r.signature is None or r.signature.shape != signature.shape or r.size != size:
                continue
            change = content_change(signature, r.signature, level=self.level, min_fraction=self.min_fraction)
            if best is None or change.count < best[0]:
                best = (change.count, r, change)
            if change.count == 0:
                break
        if best is None:
            return Plan(PlanKind.FULL)
        _, ref, change = best
        drift = (ref.drift[0] + change.shift[0], ref.drift[1] + change.shift[1])
        strips = _slid_in(drift, change.size) if max(abs(drift[0]), abs(drift[1])) >= TILE else []
        if strips:
            drift = (0, 0)
        if not change.any and not strips:
            return Plan(PlanKind.HIT, ref, (), change, drift)
        boxes = [*change.boxes(), *strips]
        w, h = size
        # a kept text line or code that the change touches is read again whole, not cut at the box
        for d in ref.detections:
            if d.source in regional and d.bbox is not None and _touches(d.bbox, tuple(boxes), w, h):
                boxes.append((d.bbox[0] / w, d.bbox[1] / h, d.bbox[2] / w, d.bbox[3] / h))
        merged = tuple(merge_boxes(boxes))
        if box_area(list(merged)) > self.max_area:
            return Plan(PlanKind.FULL, None, (), change)
        return Plan(PlanKind.REGIONS, ref, merged, change, drift)

    def put(self, ref: Reference) -> None:
        for key in [k for k, r in self._items.items() if ref.born - r.born > self.ttl_s]:
            del self._items[key]
        self._serial += 1
        self._items[self._serial] = ref
        while len(self._items) > self.max_entries:
            self._items.popitem(last=False)

    def touch(self, ref: Reference) -> None:
        """Mark ``ref`` as the latest used (a hit): the next frame compares with it first."""
        for key, r in self._items.items():
            if r is ref:
                self._items.move_to_end(key)
                return
