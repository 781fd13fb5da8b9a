"""Zero-shot labels from frame embeddings: text prompts plus image prototypes. Pure (numpy, no I/O).

Each label has prompts ("a person in hanfu", "汉服") whose text embeddings are averaged, a cosine
threshold for them, and optionally prototypes: embeddings of a few reference images, with their own
(higher) threshold. Text thresholds alone are unreliable — CLIP-like cosines sit in a narrow band
that shifts with the prompt — so a label fires when either its prompt score or its best prototype
score clears its threshold; the detection says which (``text`` or ``prototype``) in its ``text``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from streamwatch.analysis.model import Detection

SOURCE = "encoder"


@dataclass(frozen=True, slots=True)
class Label:
    id: str
    text: np.ndarray | None  # unit vector: mean of the prompt embeddings, renormalised
    threshold: float  # cosine the prompt score must reach
    prototypes: np.ndarray | None = None  # (K, D) unit vectors of reference images
    prototype_threshold: float = 0.85


class LabelIndex:
    """All labels, scored together with two matrix products."""

    def __init__(self, labels: list[Label], dim: int) -> None:
        self.labels = labels
        self.dim = dim
        self._text = np.stack([lb.text if lb.text is not None else np.zeros(dim, np.float32) for lb in labels]) if labels else None
        self._has_text = np.array([lb.text is not None for lb in labels])

    @staticmethod
    def prompt_vector(prompt_embeds: np.ndarray) -> np.ndarray:
        v = prompt_embeds.mean(axis=0)
        return np.asarray(v / max(float(np.linalg.norm(v)), 1e-12), np.float32)

    def detect(self, embeds: np.ndarray) -> list[tuple[Detection, ...]]:
        """Labels per image for (N, D) unit embeddings."""
        out: list[list[Detection]] = [[] for _ in range(len(embeds))]
        if not self.labels or not len(embeds):
            return [tuple(d) for d in out]
        assert self._text is not None
        text_scores = embeds @ self._text.T  # (N, L) cosines
        for j, lb in enumerate(self.labels):
            proto = (embeds @ lb.prototypes.T).max(axis=1) if lb.prototypes is not None and len(lb.prototypes) else None
            for i in range(len(embeds)):
                t = float(text_scores[i, j]) if self._has_text[j] else -2.0
                p = float(proto[i]) if proto is not None else -2.0
                hit_t, hit_p = t >= lb.threshold, p >= lb.prototype_threshold
                if hit_p and (not hit_t or p - lb.prototype_threshold >= t - lb.threshold):
                    out[i].append(Detection(SOURCE, lb.id, round(p, 4), text="prototype"))
                elif hit_t:
                    out[i].append(Detection(SOURCE, lb.id, round(t, 4), text="text"))
        return [tuple(d) for d in out]
