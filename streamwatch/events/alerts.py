"""Turn a policy decision into a stored-ready :class:`AlertEvent`, with its evidence image saved.

An evidence image the data folder does not take (a full disk: :class:`~streamwatch.errors.StorageError`)
does not hold the alert back: it goes out without the image, marked ``evidence.unsaved`` with the reason.
"""

from __future__ import annotations

import time

import cv2
import numpy as np

from streamwatch.analysis.model import AlertDraft, FrameAnalysis
from streamwatch.errors import StorageError
from streamwatch.events.model import AlertEvent, Evidence, SceneEvent
from streamwatch.events.store import EventStore

EVIDENCE_SIDE = 640


def evidence_jpeg(rgb: np.ndarray, side: int = EVIDENCE_SIDE) -> tuple[bytes, float]:
    """JPEG of the analysed frame (long side ≤ ``side``) and the scale applied to it."""
    h, w = rgb.shape[:2]
    scale = min(1.0, side / max(h, w))
    img = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    if scale < 1.0:
        img = cv2.resize(img, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 82])
    if not ok:
        raise ValueError("cannot encode evidence JPEG")
    return bytes(buf), scale


def build_alerts(
    drafts: list[AlertDraft], fa: FrameAnalysis, rgb: np.ndarray | None, store: EventStore, *, late: bool = False
) -> list[AlertEvent]:
    """Blocking (JPEG encode + file write): call from an executor. One evidence image per frame."""
    frame_rel = unsaved = None
    scale = 1.0
    if rgb is not None and any(d.evidence_kind != "health" for d in drafts):
        data, scale = evidence_jpeg(rgb)
        frame_rel, unsaved = _save(store, fa.stream, data)
    out = []
    for d in drafts:
        bbox = None
        if d.bbox is not None:
            bbox = (round(d.bbox[0] * scale), round(d.bbox[1] * scale), round(d.bbox[2] * scale), round(d.bbox[3] * scale))
        picture = d.evidence_kind != "health"
        evidence = Evidence(
            kind=d.evidence_kind,
            text=d.text,
            bbox=bbox,
            labels=d.labels,
            frame=frame_rel if picture else None,
            unsaved=unsaved if picture else None,
        )
        out.append(
            AlertEvent(
                stream=fa.stream,
                at=time.time(),
                offset=fa.offset,
                rule=d.rule,
                severity=d.severity,
                message=d.message,
                confidence=round(d.confidence, 4),
                evidence=evidence,
                received_at=fa.received_at,
                late=True if late else None,
            )
        )
    return out


def build_scene(
    fa: FrameAnalysis, rgb: np.ndarray, tags: tuple[str, ...], model: str, store: EventStore, *, late: bool = False
) -> SceneEvent:
    """Blocking: the compliance model's scene tags for a frame, with the frame saved as evidence."""
    data, _ = evidence_jpeg(rgb)
    return SceneEvent(
        stream=fa.stream,
        at=time.time(),
        offset=fa.offset,
        tags=tags,
        model=model,
        frame=_save(store, fa.stream, data)[0],
        late=True if late else None,
    )


def _save(store: EventStore, stream: str, data: bytes) -> tuple[str | None, str | None]:
    """(evidence path, None), or (None, why it was not saved) when the data folder takes no writes."""
    try:
        return store.save_image(stream, data), None
    except StorageError as e:
        return None, f"evidence not saved: {e}"
