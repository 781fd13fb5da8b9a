"""Post-stream report model: pure computation from a list of events (no I/O)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from streamwatch.events.model import (
    AlertEvent,
    AnswerEvent,
    Event,
    FeedbackEvent,
    HealthEvent,
    HealthKind,
    RejectedEvent,
    ReplyEvent,
    ReviewAction,
    ReviewEvent,
    SceneEvent,
    Severity,
    StreamState,
)

DOWN_STATES = (StreamState.STALLED, StreamState.RECONNECTING)


def hms(offset: float) -> str:
    s = max(0, int(offset))
    return f"{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"


@dataclass(frozen=True, slots=True)
class Period:
    """A stretch of stream time: an outage, a black or a frozen picture."""

    kind: str  # outage | black | frozen
    start: float  # stream offset, seconds
    duration: float | None  # None: still open at the end of the data
    detail: str = ""

    @property
    def end(self) -> float | None:
        return None if self.duration is None else self.start + self.duration


@dataclass(frozen=True, slots=True)
class AlertRow:
    alert: AlertEvent
    review: ReviewEvent | None

    @property
    def state(self) -> str:
        if self.review is None:
            return "pending"
        return "confirmed" if self.review.action is ReviewAction.CONFIRM else "dismissed"


@dataclass(frozen=True, slots=True)
class Report:
    stream: str
    first_at: float
    last_at: float
    duration_s: float
    periods: tuple[Period, ...]
    alerts: tuple[AlertRow, ...]
    by_severity: dict[str, int]
    by_rule: dict[str, int]
    reviewed: int
    pending: int
    replies: int
    rejected: int
    answers: int
    events: tuple[Event, ...] = field(repr=False)
    scenes: tuple[SceneEvent, ...] = ()  # the compliance model's scene tags
    switches: tuple[HealthEvent, ...] = ()  # model switches (health kind "model")
    models: dict[str, int] = field(default_factory=dict)  # which model produced replies, answers, VLM alerts, scenes
    feedback: dict[str, dict[str, int]] = field(default_factory=dict)  # "model / persona" → replies, up, down, report

    @property
    def outages(self) -> tuple[Period, ...]:
        return tuple(p for p in self.periods if p.kind == "outage")

    @property
    def outage_s(self) -> float:
        return sum(p.duration or 0.0 for p in self.outages)


def build_report(stream: str, events: list[Event]) -> Report:
    """Summarise one stream's events (in id order)."""
    mine = [e for e in events if e.stream == stream]
    health = [e for e in mine if isinstance(e, HealthEvent)]
    alerts = [e for e in mine if isinstance(e, AlertEvent)]
    reviews: dict[int, ReviewEvent] = {}
    for e in mine:
        if isinstance(e, ReviewEvent):
            reviews[e.alert_id] = e  # the latest review wins
    rows = tuple(AlertRow(a, reviews.get(a.id)) for a in alerts)
    first = min((e.at for e in mine), default=0.0)
    last = max((e.at for e in mine), default=0.0)
    # stream time covered: reviews happen later (often after the show) and do not extend it
    live = [e for e in mine if not isinstance(e, ReviewEvent)]
    duration = max([e.offset for e in live] + [0.0])
    sev = Counter(a.severity.value for a in alerts)
    return Report(
        stream=stream,
        first_at=first,
        last_at=last,
        duration_s=duration,
        periods=tuple(_periods(health)),
        alerts=rows,
        by_severity={s.value: sev.get(s.value, 0) for s in Severity},
        by_rule=dict(Counter(a.rule for a in alerts).most_common()),
        reviewed=sum(1 for r in rows if r.review is not None),
        pending=sum(1 for r in rows if r.review is None),
        replies=sum(isinstance(e, ReplyEvent) for e in mine),
        rejected=sum(isinstance(e, RejectedEvent) for e in mine),
        answers=sum(isinstance(e, AnswerEvent) for e in mine),
        events=tuple(mine),
        scenes=tuple(e for e in mine if isinstance(e, SceneEvent)),
        switches=tuple(e for e in health if e.kind is HealthKind.MODEL),
        models=dict(Counter(m for m in map(_model_of, mine) if m).most_common()),
        feedback=reply_feedback(mine),
    )


def reply_feedback(events: list[Event]) -> dict[str, dict[str, int]]:
    """Reply quality per model and persona: replies written, and the 👍 / 👎 / report votes on them."""
    out: dict[str, dict[str, int]] = {}
    for e in events:
        if isinstance(e, ReplyEvent):
            out.setdefault(f"{e.model or '?'} / {e.persona or '?'}", dict.fromkeys(("replies", "up", "down", "report"), 0))["replies"] += 1
    for e in events:
        if isinstance(e, FeedbackEvent):
            row = out.setdefault(f"{e.model or '?'} / {e.persona or '?'}", dict.fromkeys(("replies", "up", "down", "report"), 0))
            row[e.vote.value] += 1
    return out


def _model_of(e: Event) -> str | None:
    if isinstance(e, ReplyEvent | AnswerEvent | SceneEvent):
        return e.model or None
    if isinstance(e, AlertEvent) and e.evidence.kind.startswith("vlm:"):
        return e.evidence.kind[4:]
    return None


def _periods(health: list[HealthEvent]) -> list[Period]:
    out: list[Period] = []
    down_since: HealthEvent | None = None
    open_: dict[HealthKind, HealthEvent] = {}
    for e in health:
        if e.kind is HealthKind.STATE and e.state is not None:
            if e.state in DOWN_STATES and down_since is None:
                down_since = e
            elif e.state is StreamState.LIVE and down_since is not None:
                gap = e.gap_s if e.gap_s is not None else e.offset - down_since.offset
                out.append(Period("outage", down_since.offset, round(gap, 3), down_since.reason))
                down_since = None
            elif e.state is StreamState.STOPPED and down_since is not None:
                out.append(Period("outage", down_since.offset, round(e.offset - down_since.offset, 3), down_since.reason))
                down_since = None
        elif e.kind in (HealthKind.BLACK, HealthKind.FROZEN):
            if e.active:
                open_[e.kind] = e
            else:
                began = open_.pop(e.kind, None)
                start = began.offset if began else e.offset - (e.duration_s or 0.0)
                out.append(Period(e.kind.value, start, e.duration_s if e.duration_s is not None else e.offset - start))
    if down_since is not None:
        out.append(Period("outage", down_since.offset, None, down_since.reason))
    out.extend(Period(k.value, e.offset, None) for k, e in open_.items())
    return sorted(out, key=lambda p: p.start)
