"""Near-duplicate suppression against the last kept frame: global pHash distance plus the region-level
change signal, with a heartbeat so static scenes are re-checked (pure)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from streamwatch.sampling.phash import PHash
from streamwatch.sampling.regions import RegionChange, content_change


@dataclass(frozen=True, slots=True)
class Verdict:
    """Whether a frame is new content, and why. ``distance``: pHash bits to the last kept frame (None for
    the first); ``change``: its region change against that frame (None without signatures)."""

    new: bool
    distance: int | None
    change: RegionChange | None


@dataclass(slots=True)
class Deduper:
    """A frame is a duplicate of the last kept one when its pHash is within ``radius`` bits **and** no
    tile holds new content (a caption or QR code in a corner moves the pHash by 0–2 bits), unless
    ``heartbeat_s`` has passed since that keep (then it is kept, so a static scene is still analysed
    now and then). Without signatures it is the pHash test alone.

    A frame whose picture moved (a pan or shake measured as a global shift) is kept too: content that
    slid in at the border is not judged until the motion since the reference reaches a whole tile, so
    an old reference would leave a strip along the edge blind for seconds (a vertical caption at the
    right edge of a pan). Kept, the moving frame becomes the reference here, and the cascade compares
    the edge strip with it (it reuses the analysis when the tiles match: no model run).
    """

    radius: int = 6
    heartbeat_s: float = 30.0
    level: int = 24
    min_fraction: float = 0.03
    _last: PHash | None = None
    _last_sig: np.ndarray | None = None
    _last_offset: float = 0.0

    def distance(self, h: PHash) -> int | None:
        return None if self._last is None else h - self._last

    def heartbeat_due(self, offset: float) -> bool:
        return self._last is None or offset - self._last_offset >= self.heartbeat_s

    def judge(self, h: PHash, offset: float, signature: np.ndarray | None = None) -> Verdict:
        """Judge a frame against the last kept one; a new one becomes the reference."""
        d = self.distance(h)
        change = None
        if signature is not None and self._last_sig is not None and self._last_sig.shape == signature.shape:
            change = content_change(signature, self._last_sig, level=self.level, min_fraction=self.min_fraction)
        reshaped = signature is not None and (self._last_sig is None or self._last_sig.shape != signature.shape)
        moved = change is not None and change.shift != (0, 0)
        new = d is None or d > self.radius or reshaped or (change is not None and change.any) or moved or self.heartbeat_due(offset)
        if new:
            self.keep(h, offset, signature)
        return Verdict(new, d, change)

    def keep(self, h: PHash, offset: float, signature: np.ndarray | None = None) -> None:
        self._last, self._last_offset, self._last_sig = h, offset, signature

    def is_duplicate(self, h: PHash, offset: float) -> bool:
        """The pHash-only test (no signature)."""
        return not self.judge(h, offset).new

    def reset(self) -> None:
        self._last = None
        self._last_sig = None
