"""Near-duplicate suppression by pHash distance, with a heartbeat so static scenes are re-checked."""

from __future__ import annotations

from dataclasses import dataclass

from streamwatch.sampling.phash import PHash


@dataclass(slots=True)
class Deduper:
    """A frame within ``radius`` bits of the last kept frame is a duplicate, unless ``heartbeat_s``
    has passed since that keep (then it is kept, so a static scene is still analysed now and then).
    """

    radius: int = 6
    heartbeat_s: float = 30.0
    _last: PHash | None = None
    _last_offset: float = 0.0

    def distance(self, h: PHash) -> int | None:
        return None if self._last is None else h - self._last

    def is_duplicate(self, h: PHash, offset: float) -> bool:
        d = self.distance(h)
        if d is not None and d <= self.radius and offset - self._last_offset < self.heartbeat_s:
            return True
        self._last, self._last_offset = h, offset
        return False

    def reset(self) -> None:
        self._last = None
