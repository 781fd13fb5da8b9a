"""Policy rules scored on labelled frames (``streamwatch eval``, issue 21): the local cascade's rules
(nudity, OCR word lists, QR) and the rules a model's compliance answers raise through the same policy,
side by side.

A frame's ``rules`` labels (``{"contact_spam": true, "qr_code": false}``, as ``export-reviews`` writes
them) say which rules should and should not fire on it. Per rule, over the frames that label it and
were analysed: precision = frames where it fired and should / frames where it fired, recall = frames
where it fired and should / frames where it should. Pure: detections in, fired rule ids and scores out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from streamwatch.analysis.model import Detection, FrameAnalysis
from streamwatch.analysis.rules import RuleEngine


@dataclass(frozen=True, slots=True)
class RuleScore:
    rule: str
    right: int  # fired where it should
    fired: int  # fired, on frames that label the rule
    positive: int  # frames where it should fire
    labelled: int  # frames that label the rule (analysed ones)

    @property
    def precision(self) -> float | None:
        return self.right / self.fired if self.fired else None

    @property
    def recall(self) -> float | None:
        return self.right / self.positive if self.positive else None


def fired_rules(engine: RuleEngine, detections: Sequence[Detection], width: int, height: int, key: str) -> frozenset[str]:
    """The frame rules of ``engine``'s policy that these detections raise (``key``: a stream id of its own,
    so no cooldown from another frame holds an alert back)."""
    fa = FrameAnalysis(key, 0.0, 0.0, 0.0, tuple(detections), width, height)
    return frozenset(d.rule for d in engine.evaluate(fa))


def score_rules(frames: Sequence[tuple[Mapping[str, bool], frozenset[str] | None]]) -> tuple[RuleScore, ...]:
    """Per labelled rule: ``frames`` are (labels, rules fired; None where the frame could not be analysed)."""
    rules = sorted({r for truth, _ in frames for r in truth})
    out = []
    for rule in rules:
        seen = [(truth[rule], rule in fired) for truth, fired in frames if fired is not None and rule in truth]
        out.append(RuleScore(rule, sum(t and f for t, f in seen), sum(f for _, f in seen), sum(t for t, _ in seen), len(seen)))
    return tuple(out)


def rules_wrong(truth: Mapping[str, bool], fired: frozenset[str] | None) -> bool:
    """A labelled rule that fired where it should not, or did not where it should."""
    return fired is not None and any((rule in fired) != want for rule, want in truth.items())
