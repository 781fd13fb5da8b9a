"""Quality gate measurements: black / near-uniform, blur and change between samples (pure).

All measures run on a small copy of the luma plane (256 px wide, area-averaged), which keeps
them cheap on 1080p and averages compression noise away.

- black/uniform: low luma standard deviation (``uniform_std``); dark ones (mean < ``black_luma``)
  are black.
- blur: variance of the Laplacian, taken per tile of a 4×4 grid; the frame's sharpness is the
  second-best tile, so a sharp performer in front of a soft background is not "blurred".
- change: fraction of pixels that moved by more than 10 luma levels since the previous sample.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from streamwatch.config import SamplingConfig
from streamwatch.errors import SamplingError

WORK_WIDTH = 256
_CHANGE_LEVEL = 10
_TILES = 4


@dataclass(frozen=True, slots=True)
class QualityReport:
    mean: float
    std: float
    sharpness: float
    changed: float | None  # fraction of changed pixels vs the previous sample (None: first sample)
    uniform: bool
    black: bool
    blurred: bool
    unchanged: bool


def _small(luma: np.ndarray) -> np.ndarray:
    h, w = luma.shape
    if w <= WORK_WIDTH:
        return np.ascontiguousarray(luma)
    return cv2.resize(luma, (WORK_WIDTH, max(1, round(h * WORK_WIDTH / w))), interpolation=cv2.INTER_AREA)


def sharpness(small: np.ndarray) -> float:
    lap = cv2.Laplacian(small, cv2.CV_32F)
    h, w = lap.shape
    th, tw = max(h // _TILES, 1), max(w // _TILES, 1)
    tiles = sorted(float(lap[y : y + th, x : x + tw].var()) for y in range(0, h - th + 1, th) for x in range(0, w - tw + 1, tw))
    return tiles[-2] if len(tiles) > 1 else tiles[-1]


class QualityGate:
    """Measures each sampled frame; remembers the previous one for change detection."""

    def __init__(self, cfg: SamplingConfig) -> None:
        self.cfg = cfg
        self._prev: np.ndarray | None = None

    def measure(self, luma: np.ndarray) -> QualityReport:
        if luma.ndim != 2 or luma.size == 0:
            raise SamplingError(f"quality gate needs a non-empty 2-D luma plane, got shape {luma.shape}")
        small = _small(luma)
        mean, std = (float(v[0][0]) for v in cv2.meanStdDev(small))
        changed: float | None = None
        if self._prev is not None and self._prev.shape == small.shape:
            diff = cv2.absdiff(small, self._prev)
            changed = float(np.count_nonzero(diff > _CHANGE_LEVEL)) / diff.size
        self._prev = small
        uniform = std < self.cfg.uniform_std
        sharp = sharpness(small) if not uniform else 0.0
        return QualityReport(
            mean=mean,
            std=std,
            sharpness=sharp,
            changed=changed,
            uniform=uniform,
            black=uniform and mean < self.cfg.black_luma,
            blurred=not uniform and sharp < self.cfg.blur_threshold,
            unchanged=changed is not None and changed < self.cfg.frozen_changed,
        )
