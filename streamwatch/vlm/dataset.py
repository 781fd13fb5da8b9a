"""The moderators' decisions as an eval dataset (``streamwatch export-reviews``, issue 21).

Each reviewed alert with an evidence frame says something about that frame: a *confirm* of an alert
from the compliance model (evidence ``vlm:<model>``, label ``exposure``) means the true answer to
``exposure`` is yes, a *dismiss* means no; a confirmed choice (``setting:outdoor``) gives the choice, a
dismissed one says nothing certain and is left out. Every reviewed alert, the local cascade's too,
also goes in as ``rules: {rule: confirmed}`` with the moderator's note. The latest review of an alert
wins; frames several alerts share are merged. Pure: events in, frames out (the command copies files).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from streamwatch.events.model import AlertEvent, Event, ReviewAction, ReviewEvent


@dataclass
class ReviewedFrame:
    frame: str  # the evidence frame, relative to the store's evidence folder
    answers: dict[str, bool | str] = field(default_factory=dict)
    rules: dict[str, bool] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    alerts: list[int] = field(default_factory=list)

    def as_json(self, image: str) -> dict[str, object]:
        return {"image": image, "answers": self.answers, "rules": self.rules, "notes": self.notes, "alerts": self.alerts}


def reviewed_frames(events: Iterable[Event]) -> list[ReviewedFrame]:
    """One entry per evidence frame with at least one reviewed alert, in the order of the alerts."""
    events = list(events)
    latest: dict[int, ReviewEvent] = {}
    for e in events:
        if isinstance(e, ReviewEvent):
            latest[e.alert_id] = e
    frames: dict[str, ReviewedFrame] = {}
    for a in events:
        if not isinstance(a, AlertEvent) or a.id not in latest or not a.evidence.frame:
            continue
        review = latest[a.id]
        confirmed = review.action is ReviewAction.CONFIRM
        entry = frames.setdefault(a.evidence.frame, ReviewedFrame(a.evidence.frame))
        entry.alerts.append(a.id)
        entry.rules[a.rule] = confirmed or entry.rules.get(a.rule, False)
        if review.note:
            entry.notes.append(review.note)
        if not a.evidence.kind.startswith("vlm:"):
            continue
        for label in a.evidence.labels:
            question, _, choice = label.partition(":")
            if choice and confirmed:
                entry.answers[question] = choice
            elif not choice:
                entry.answers[question] = confirmed
    return list(frames.values())
