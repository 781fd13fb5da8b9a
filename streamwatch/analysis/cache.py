"""TTL result cache keyed by perceptual hash. Pure: time is passed in (monotonic seconds).

A lookup hits when a stored hash is within Hamming ``radius`` and younger than ``ttl_s``. Bounded
(LRU eviction at ``max_entries``); entries expire when read, so there is no sweeper thread.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, TypeVar

import numpy as np

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


class EmbeddingCache(Generic[V]):
    """TTL result cache keyed by unit embeddings: a hit is the most similar entry with cosine ≥
    ``threshold`` and younger than ``ttl_s``. Catches re-framed shots of the same scene (zoom, pan,
    a moving caption) that the pHash key misses. Bounded ring of ``max_entries``."""

    def __init__(self, dim: int, threshold: float = 0.95, ttl_s: float = 600.0, max_entries: int = 512) -> None:
        self.threshold = threshold
        self.ttl_s = ttl_s
        self._keys = np.zeros((max_entries, dim), np.float32)
        self._born = np.full(max_entries, -np.inf)
        self._values: list[V | None] = [None] * max_entries
        self._next = 0
        self.hits = 0
        self.misses = 0

    def get(self, embedding: np.ndarray, now: float) -> tuple[V, float] | None:
        """(value, cosine) of the best live match, or None."""
        live = (now - self._born) <= self.ttl_s
        if not live.any():
            self.misses += 1
            return None
        sims = np.where(live, self._keys @ embedding, -np.inf)
        i = int(np.argmax(sims))
        value = self._values[i]
        if sims[i] < self.threshold or value is None:
            self.misses += 1
            return None
        self.hits += 1
        return value, float(sims[i])

    def put(self, embedding: np.ndarray, value: V, now: float) -> None:
        i = self._next
        self._keys[i] = embedding
        self._born[i] = now
        self._values[i] = value
        self._next = (i + 1) % len(self._values)
