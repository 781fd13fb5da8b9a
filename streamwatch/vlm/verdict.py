"""A second opinion before a compliance model's verdict becomes a critical alert. Pure.

A small or random model's grammar-valid ``"exposure": true`` must not page the desk on its own. A
critical alert drafted from the model's answers (evidence ``vlm:<model>``) stays critical only when
the cascade's nudity detector found exposure on the same frame; otherwise it is raised one severity
lower, its message saying "model only". The confidence is the model's own answer (never a constant).
"""

from __future__ import annotations

import dataclasses

from streamwatch.analysis.model import AlertDraft, Detection
from streamwatch.events.model import Severity

NUDITY = "nudity"  # the cascade's nudity detector (detections with this source)
EXPOSED_MIN = 0.3  # a nudity detection at least this sure, with an ``*_EXPOSED`` label, confirms


def confirming(local: tuple[Detection, ...]) -> Detection | None:
    """The nudity detector's surest exposed-body-part detection on the frame, if any."""
    hits = [d for d in local if d.source == NUDITY and d.label.upper().endswith("_EXPOSED") and d.confidence >= EXPOSED_MIN]
    return max(hits, key=lambda d: d.confidence) if hits else None


def second_opinion(drafts: list[AlertDraft], local: tuple[Detection, ...]) -> list[AlertDraft]:
    """``drafts`` from the compliance model's answers, with each critical one checked against ``local``
    (the cascade's detections on the same frame)."""
    seen = confirming(local)
    out = []
    for d in drafts:
        if d.severity is not Severity.CRITICAL or not d.evidence_kind.startswith("vlm:"):
            out.append(d)
        elif seen is not None:
            out.append(
                dataclasses.replace(d, message=f"{d.message} (confirmed by the nudity detector: {seen.label} {seen.confidence:.0%})")
            )
        else:
            note = f"{d.message} — model only ({d.evidence_kind[4:]}, {d.confidence:.0%} sure; the nudity detector saw no exposure)"
            out.append(dataclasses.replace(d, severity=Severity.HIGH, message=note))
    return out
