"""Frame search: text query → the stream's kept frames ranked by embedding similarity.

A flat index: every indexed frame's float16 embedding in one numpy matrix, loaded from the store
incrementally (only rows newer than the last refresh), one matrix–vector product per query. At show
scale this is small and exact — a 3-hour show keeping a frame every 2 s is ~5,400 frames (5.5 MB at
512-d); a million frames is ~1 GB and ~0.2 s per query on two cores. Past that, or for many shows at
once, an approximate index (FAISS IVF-PQ or HNSW, or pgvector beside the event store) replaces the
matrix behind the same ``query`` call.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from streamwatch.analysis.encoder import Encoder
from streamwatch.events.store import EventStore, IndexedFrame


@dataclass(frozen=True, slots=True)
class SearchHit:
    frame: IndexedFrame
    score: float  # cosine similarity to the query


class FrameIndex:
    """The flat index of one encoder's embeddings (thread-safe)."""

    def __init__(self, model: str, dim: int) -> None:
        self.model = model
        self.dim = dim
        self._frames: list[IndexedFrame] = []
        self._matrix = np.zeros((0, dim), np.float16)
        self._last = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._frames)

    def refresh(self, store: EventStore) -> int:
        """Load frames indexed since the last refresh; drop those retention removed. Returns the count added."""
        with self._lock:
            new = [f for f in store.frames(model=self.model, after=self._last) if f.embedding.shape == (self.dim,)]
            if new:
                block = np.stack([f.embedding for f in new]).astype(np.float16)
                self._matrix = np.concatenate([self._matrix, block])
                self._frames.extend(new)
                self._last = new[-1].id
            return len(new)

    def query(self, vector: np.ndarray, *, stream: str | None = None, limit: int = 20, min_score: float | None = None) -> list[SearchHit]:
        with self._lock:
            frames, matrix = self._frames, self._matrix
        if not frames:
            return []
        scores = matrix.astype(np.float32) @ vector.astype(np.float32)
        if stream is not None:
            scores = np.where(np.array([f.stream == stream for f in frames]), scores, -np.inf)
        k = min(limit, len(frames))
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top], kind="stable")]
        floor = -np.inf if min_score is None else min_score
        return [SearchHit(frames[i], float(scores[i])) for i in top if np.isfinite(scores[i]) and scores[i] >= floor]


class FrameSearch:
    """Text queries over the store's indexed frames with one encoder (blocking: run in an executor)."""

    def __init__(self, encoder: Encoder, store: EventStore) -> None:
        self.encoder = encoder
        self.store = store
        self.index = FrameIndex(encoder.manifest.name, encoder.dim)

    def search(self, query: str, *, stream: str | None = None, limit: int = 20) -> list[SearchHit]:
        self.index.refresh(self.store)
        vector = self.encoder.embed_texts([query])[0]
        hits = self.index.query(vector, stream=stream, limit=limit * 2)
        # frames whose thumbnail retention has removed are gone from the show's record too
        return [h for h in hits if h.frame.thumb is None or self.store.frame_path(h.frame.thumb) is not None][:limit]


def hit_json(hit: SearchHit) -> dict[str, object]:
    """A hit as the HTTP API and the CLI's --json give it (thumbnail as a /frames/ URL)."""
    from streamwatch.events.codec import FRAMES_PREFIX, iso
    from streamwatch.report.build import hms

    f = hit.frame
    return {
        "stream": f.stream,
        "offset": round(f.offset, 3),
        "offset_hms": hms(f.offset),
        "at": iso(f.at),
        "score": round(hit.score, 4),
        "thumb": FRAMES_PREFIX + f.thumb if f.thumb else None,
        "labels": list(f.tags),
    }
