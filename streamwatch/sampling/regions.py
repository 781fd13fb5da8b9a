"""Region-level change signal: which tiles of the picture changed, and by how much (pure).

A 64-bit global pHash barely moves when a caption, a QR code or a logo appears on a calm picture
(0–2 bits for a 30 px caption strip or a 116 px code on 1280×720). This signal looks at tiles.

The input is the frame's luma reduced by an integer factor to about 320×180 (``Frame.gray()``); the
picture is cut into ``TILE``-pixel tiles (16×9 for 16:9, each 80×80 px of a 720p frame). Two
comparisons:

- :func:`content_change` — is there *new content* compared with a reference (the last analysed
  frame)? Per pixel, the excess of the current luma over the reference's 3×3 min/max envelope
  (absorbs encoder noise and ±1 px jitter), taken at the best of two motions: none, and the global
  shift between the pictures (phase correlation). A slow pan is explained by the shift, a static
  logo over a moving background by no motion; a new overlay is explained by neither. A tile's score
  is the fraction of its pixels whose excess is above ``level``; it changed when the score reaches
  ``min_fraction``. Pixels that slid in at the border during a pan are ignored until the pan has
  moved a whole tile (then they are new content).
- :func:`still_change` — did *anything* move since the previous sample (frozen detection)? Plain
  per-pixel difference above ``level``, no motion search, per tile.

Scores are per tile, row-major (``rows × cols``), in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from streamwatch.sampling.phash import reduce_gray

TILE = 20  # px of the reduced luma (≈ 1/16 of its width at 16:9)
WORK_SIDE = 180  # short side ``Frame.gray()`` keeps for the change signal (integer-factor reduction)

Box = tuple[float, float, float, float]  # x1, y1, x2, y2 as fractions of the picture's width/height


@dataclass(frozen=True, slots=True)
class RegionChange:
    """Per-tile change between two reduced luma pictures.

    ``scores``: (rows, cols) float32, the fraction of each tile's pixels that changed. ``changed``:
    (rows, cols) bool, ``scores >= min_fraction``. ``shift``: the global motion (dx, dy) in reduced
    pixels that was tried besides none. ``size``: (width, height) of the reduced picture.
    """

    scores: np.ndarray
    changed: np.ndarray
    shift: tuple[int, int]
    size: tuple[int, int]

    @property
    def any(self) -> bool:
        return bool(self.changed.any())

    @property
    def count(self) -> int:
        return int(self.changed.sum())

    @property
    def fraction(self) -> float:
        """Share of the tiles that changed (0–1)."""
        return self.count / max(self.changed.size, 1)

    @property
    def peak(self) -> float:
        return float(self.scores.max()) if self.scores.size else 0.0

    def tiles(self) -> list[tuple[int, int, float]]:
        """(row, col, score) of each changed tile, row-major."""
        rows, cols = np.nonzero(self.changed)
        return [(int(r), int(c), round(float(self.scores[r, c]), 3)) for r, c in zip(rows, cols, strict=True)]

    def boxes(self, pad: int = 1, merge_gap: int = 1) -> list[Box]:
        """Rectangles around groups of changed tiles, ``pad`` tiles wider on every side, as fractions
        of the picture (x1, y1, x2, y2). Groups closer than ``merge_gap`` tiles are merged, so the
        words of one caption line stay one box."""
        if not self.any:
            return []
        mask: np.ndarray = self.changed.astype(np.uint8)
        if merge_gap:
            mask = cv2.dilate(mask, np.ones((1, 2 * merge_gap + 1), np.uint8))
        n, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
        rows, cols = self.changed.shape
        w, h = self.size
        out: list[Box] = []
        for x, y, bw, bh, _area in stats[1:n]:
            c1, r1 = max(int(x) - pad, 0), max(int(y) - pad, 0)
            c2, r2 = min(int(x + bw) + pad, cols), min(int(y + bh) + pad, rows)
            out.append((c1 * TILE / w, r1 * TILE / h, min(c2 * TILE / w, 1.0), min(r2 * TILE / h, 1.0)))
        return merge_boxes(out)

    def record(self) -> dict[str, Any]:
        """What ``samples.jsonl`` shows: changed tiles as [row, col, score], the peak and the shift."""
        return {"tiles": [list(t) for t in self.tiles()], "peak": round(self.peak, 3), "shift": list(self.shift)}


def signature_of(rgb: np.ndarray) -> np.ndarray:
    """The region signature of an RGB image (H×W×3 uint8): its gray reduced by an integer factor to
    about ``WORK_SIDE`` on the short side, as ``Frame.gray(WORK_SIDE)`` gives for video frames."""
    return reduce_gray(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), WORK_SIDE)


SIGNATURE_INDEX = "signature"  # the model name of frames indexed by their change signature (no encoder)


def signature_vector(signature: np.ndarray) -> np.ndarray:
    """A 576-d unit vector of a region signature (32×18 area-averaged, zero mean): stands in for an
    encoder embedding when choosing diverse frames (cosine ≈ 1 for the same picture)."""
    h, w = signature.shape
    cols, rows = (32, 18) if w >= h else (18, 32)
    v = cv2.resize(signature, (cols, rows), interpolation=cv2.INTER_AREA).astype(np.float32).ravel()
    v -= v.mean()
    n = float(np.linalg.norm(v))
    return v / n if n > 1e-6 else np.zeros_like(v)


def merge_boxes(boxes: list[Box]) -> list[Box]:
    """Union overlapping boxes until none overlap."""
    out = list(boxes)
    merged = True
    while merged:
        merged = False
        for i in range(len(out)):
            for j in range(i + 1, len(out)):
                a, b = out[i], out[j]
                if a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]:
                    out[i] = (min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3]))
                    del out[j]
                    merged = True
                    break
            if merged:
                break
    return out


def box_area(boxes: list[Box]) -> float:
    """Area of the union of non-overlapping boxes, as a fraction of the picture."""
    return sum((x2 - x1) * (y2 - y1) for x1, y1, x2, y2 in boxes)


def _tile_scores(hit: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """Fraction of hits per TILE×TILE tile (partial tiles at the right/bottom edge count their own pixels)."""
    h, w = hit.shape
    rows, cols = -(-h // TILE), -(-w // TILE)
    pad = ((0, rows * TILE - h), (0, cols * TILE - w))
    hits = np.pad(hit.astype(np.float32), pad).reshape(rows, TILE, cols, TILE).sum((1, 3))
    if valid is None:
        valid = np.ones_like(hit, bool)
    counts = np.pad(valid.astype(np.float32), pad).reshape(rows, TILE, cols, TILE).sum((1, 3))
    return np.where(counts > 0, hits / np.maximum(counts, 1.0), 0.0).astype(np.float32)


def global_shift(cur: np.ndarray, ref: np.ndarray, max_shift: int = 3 * TILE) -> tuple[int, int]:
    """Integer (dx, dy) such that ``cur[y, x] ≈ ref[y - dy, x - dx]`` (phase correlation); (0, 0) when
    the correlation is weak or the shift implausible."""
    if min(ref.shape[:2]) < 2 or ref.shape != cur.shape:  # a 1-px strip has no shift to find (OpenCV refuses it)
        return 0, 0
    a = ref.astype(np.float32)
    b = cur.astype(np.float32)
    window = _hann(a.shape)
    (dx, dy), response = cv2.phaseCorrelate(a, b, window)
    if response < 0.1 or abs(dx) > max_shift or abs(dy) > max_shift:
        return 0, 0
    return round(dx), round(dy)


_HANN: dict[tuple[int, int], np.ndarray] = {}


def _hann(shape: tuple[int, ...]) -> np.ndarray:
    key = (int(shape[0]), int(shape[1]))
    win = _HANN.get(key)
    if win is None:
        win = _HANN[key] = cv2.createHanningWindow((key[1], key[0]), cv2.CV_32F)
    return win


def _excess(cur: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """How far each pixel of ``cur`` lies outside [lo, hi] (uint8, saturating)."""
    return cv2.max(cv2.subtract(cur, hi), cv2.subtract(lo, cur))


def _shifted(img: np.ndarray, dx: int, dy: int, fill: int) -> np.ndarray:
    """``img`` moved by (dx, dy); uncovered pixels are ``fill``."""
    out = np.full_like(img, fill)
    h, w = img.shape
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    out[yd, xd] = img[ys, xs]
    return out


def content_change(cur: np.ndarray, ref: np.ndarray, *, level: int = 24, min_fraction: float = 0.04, motion: bool = True) -> RegionChange:
    """New content in ``cur`` compared with ``ref`` (both reduced luma, same shape), per tile.

    Symmetric: something that appeared (``cur`` outside ``ref``'s envelope) and something that went
    away (``ref`` outside ``cur``'s envelope) both count. Raises ValueError when the shapes differ
    (a resolution change: everything is new).
    """
    if cur.shape != ref.shape or cur.ndim != 2:
        raise ValueError(f"region signatures differ in shape: {cur.shape} vs {ref.shape}")
    kernel = np.ones((3, 3), np.uint8)
    r_lo, r_hi = cv2.erode(ref, kernel), cv2.dilate(ref, kernel)
    c_lo, c_hi = cv2.erode(cur, kernel), cv2.dilate(cur, kernel)
    excess = cv2.max(_excess(cur, r_lo, r_hi), _excess(ref, c_lo, c_hi))
    dx, dy = global_shift(cur, ref) if motion else (0, 0)
    valid = None
    if (dx, dy) != (0, 0):
        ref_s = _shifted(ref, dx, dy, 0)
        moved = cv2.max(_excess(cur, _shifted(r_lo, dx, dy, 0), _shifted(r_hi, dx, dy, 255)), _excess(ref_s, c_lo, c_hi))
        uncovered = np.zeros(cur.shape, bool)
        if dy:
            uncovered[(slice(0, dy) if dy > 0 else slice(dy, None)), :] = True
        if dx:
            uncovered[:, (slice(0, dx) if dx > 0 else slice(dx, None))] = True
        if max(abs(dx), abs(dy)) < TILE:  # content slid in at the border: not counted until a tile's worth
            valid = ~uncovered
            moved[uncovered] = 0
        else:
            moved[uncovered] = 255
        excess = cv2.min(excess, moved)
    scores = _tile_scores(excess > level, valid)
    h, w = cur.shape
    return RegionChange(scores, scores >= min_fraction, (dx, dy), (w, h))


def still_change(cur: np.ndarray, prev: np.ndarray, *, level: int = 10, min_fraction: float = 0.01) -> RegionChange:
    """Anything that moved between two consecutive samples (no motion search), per tile."""
    if cur.shape != prev.shape or cur.ndim != 2:
        raise ValueError(f"region signatures differ in shape: {cur.shape} vs {prev.shape}")
    scores = _tile_scores(cv2.absdiff(cur, prev) > level)
    h, w = cur.shape
    return RegionChange(scores, scores >= min_fraction, (0, 0), (w, h))
