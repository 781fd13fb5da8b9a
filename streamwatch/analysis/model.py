"""Typed records of the analysis stage. Pure values."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from streamwatch.events.model import Severity

BBox = tuple[int, int, int, int]  # x1, y1, x2, y2 in the analysed image's pixels


@dataclass(frozen=True, slots=True)
class Detection:
    """One finding of one analyzer in one frame."""

    source: str  # analyzer: nudity | ocr | qr | …
    label: str  # class name (nudity), "text" (ocr), "qr"
    confidence: float
    bbox: BBox | None = None
    text: str | None = None  # OCR line or QR payload


@dataclass(frozen=True, slots=True)
class FrameAnalysis:
    """Everything the analyzers found in one sampled frame (possibly reused from the cache)."""

    stream: str
    offset: float
    at: float  # wall time of the frame
    received_at: float  # when the frame arrived (glass-to-alert latency)
    detections: tuple[Detection, ...]
    width: int
    height: int
    cached: bool = False
    embedding: np.ndarray | None = field(default=None, compare=False)  # unit vector from the vision encoder

    def by(self, source: str) -> tuple[Detection, ...]:
        return tuple(d for d in self.detections if d.source == source)


@dataclass(frozen=True, slots=True)
class AnalyzedFrame:
    """A kept frame with its analysis (the latest one per stream answers live questions)."""

    analysis: FrameAnalysis
    image: np.ndarray  # RGB, as the analyzers saw it


@dataclass(frozen=True, slots=True)
class AlertDraft:
    """What the policy decided: an alert to store (the app adds the evidence image and the id)."""

    rule: str
    severity: Severity
    message: str
    confidence: float
    evidence_kind: str
    key: str  # what the cooldown is keyed on (matched entry, payload, label, …)
    text: str | None = None
    bbox: BBox | None = None
    labels: tuple[str, ...] = ()
    escalate: bool = False
