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
On a moving picture the comparison with a reference is blind along the edge where picture slid in
since (until the camera has moved a whole tile, then that strip is new content): there, the frame
is compared with the previous frame planned (``seen``; the sampler keeps every moving frame), so a
caption appearing at the edge during a pan is not hidden in the strip.
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


@dataclass(frozen=True, slots=True)
class Plan:
    kind: PlanKind
    reference: Reference | None = None
    boxes: tuple[Box, ...] = ()  # regions to analyse again (fractions of the picture), for REGIONS
    change: RegionChange | None = None

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
        self._recent: np.ndarray | None = None  # the signature of the last frame planned

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
        change = self._edge(signature, change)
        if not change.any:
            return Plan(PlanKind.HIT, ref, (), change)
        boxes = list(change.boxes())
        w, h = size
        # a kept text line or code that the change touches is read again whole, not cut at the box
        for d in ref.detections:
            if d.source in regional and d.bbox is not None and _touches(d.bbox, tuple(boxes), w, h):
                boxes.append((d.bbox[0] / w, d.bbox[1] / h, d.bbox[2] / w, d.bbox[3] / h))
        merged = tuple(merge_boxes(boxes))
        if box_area(list(merged)) > self.max_area:
            return Plan(PlanKind.FULL, None, (), change)
        return Plan(PlanKind.REGIONS, ref, merged, change)

    def seen(self, signature: np.ndarray | None) -> None:
        """The frame just planned: the next one's edge strip is compared with it."""
        self._recent = signature

    def _edge(self, signature: np.ndarray, change: RegionChange) -> RegionChange:
        """``change`` with the tiles of its blind edge strip (what slid in since the reference, less than a
        tile) judged against the previous frame instead."""
        dx, dy = change.shift
        recent = self._recent
        if (dx, dy) == (0, 0) or max(abs(dx), abs(dy)) >= TILE or recent is None or recent.shape != signature.shape:
            return change
        rows, cols = change.changed.shape
        strip = np.zeros((rows, cols), bool)
        if dx:
            strip[:, -1 if dx < 0 else 0] = True  # the strip is narrower than a tile: the outermost column
            if dx < 0 and signature.shape[1] % TILE and signature.shape[1] % TILE < -dx:
                strip[:, -2] = True
        if dy:
            strip[-1 if dy < 0 else 0, :] = True
            if dy < 0 and signature.shape[0] % TILE and signature.shape[0] % TILE < -dy:
                strip[-2, :] = True
        fresh = content_change(signature, recent, level=self.level, min_fraction=self.min_fraction).changed & strip
        if not fresh.any():
            return change
        return RegionChange(change.scores, change.changed | fresh, change.shift, change.size)

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
