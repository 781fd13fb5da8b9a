"""TTL result cache keyed by perceptual hash. Pure: time is passed in (monotonic seconds).

A lookup hits when a stored hash is within Hamming ``radius`` and younger than ``ttl_s``. Bounded
(LRU eviction at ``max_entries``); entries expire when read, so there is no sweeper thread.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, TypeVar

from streamwatch.sampling.phash import PHash

V = TypeVar("V")


class PHashCache(Generic[V]):
    def __init__(self, radius: int = 4, ttl_s: float = 600.0, max_entries: int = 512) -> None:
        self.radius = radius
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._items: OrderedDict[int, tuple[float, V]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._items)

    def get(self, h: PHash, now: float) -> V | None:
        best: tuple[int, int] | None = None  # (distance, key)
        expired = []
        for key, (born, _) in self._items.items():
            if now - born > self.ttl_s:
                expired.append(key)
                continue
            d = (key ^ h.value).bit_count()
            if d <= self.radius and (best is None or d < best[0]):
                best = (d, key)
        for key in expired:
            del self._items[key]
        if best is None:
            self.misses += 1
            return None
        self._items.move_to_end(best[1])
        self.hits += 1
        return self._items[best[1]][1]

    def put(self, h: PHash, value: V, now: float) -> None:
        self._items[h.value] = (now, value)
        self._items.move_to_end(h.value)
        while len(self._items) > self.max_entries:
            self._items.popitem(last=False)
