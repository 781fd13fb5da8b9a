"""Post-stream report model: pure computation from a list of events (no I/O)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from streamwatch.events.model import (
    ActionEvent,
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

UNWATCHED_PERIODS = ("monitoring_gap", "segment_missing")
DOWN_STATES = (StreamState.STALLED, StreamState.RECONNECTING)
_PERIOD = {HealthKind.ANALYSIS: "analysis_failing", HealthKind.STORAGE: "storage_failing"}  # period kinds named otherwise
_DETAILED = (HealthKind.ANALYSIS, HealthKind.STORAGE, HealthKind.OVERLOADED)  # periods whose start's reason is their detail


def hms(offset: float) -> str:
    s = max(0, int(offset))
    return f"{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"


@dataclass(frozen=True, slots=True)
class Period:
    """A stretch of stream time: an outage, a black or a frozen picture."""

    # outage | cut (the outage an action made: on purpose) | black | frozen | monitoring_gap | segment_missing
    # | analysis_failing (frames skipped: their analysis failed) | storage_failing (the data disk took no writes)
    # | overloaded (analysis fell behind: sampling degraded; the detail names the lag and the step)
    kind: str
    start: float  # stream offset, seconds
    duration: float | None  # open ones: up to the report's end (None without one)
    detail: str = ""
    open: bool = False  # still going on when the report was written

    @property
    def length(self) -> str:
        """``12.0s``, ``open, 12.0s so far`` or ``open``."""
        if self.duration is None:
            return "open"
        return f"open, {self.duration:.1f}s so far" if self.open else f"{self.duration:.1f}s"

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
    switches: tuple[HealthEvent, ...] = ()  # model switches (health kind "model", active None)
    model_health: tuple[HealthEvent, ...] = ()  # the VLM tier failing (active) or working again (health kind "model")
    models: dict[str, int] = field(default_factory=dict)  # which model produced replies, answers, VLM alerts, scenes
    feedback: dict[str, dict[str, int]] = field(default_factory=dict)  # "model / persona" → replies, up, down, report
    actions: tuple[ActionEvent, ...] = ()  # actions on the stream (cut, warn, …): asked, and what came of them

    @property
    def outages(self) -> tuple[Period, ...]:
        return tuple(p for p in self.periods if p.kind == "outage")

    @property
    def outage_s(self) -> float:
        return sum(p.duration or 0.0 for p in self.outages)

    @property
    def gaps(self) -> tuple[Period, ...]:
        """Stretches of the show nobody watched: monitoring gaps (the daemon was down) and missing HLS segments."""
        return tuple(p for p in self.periods if p.kind in UNWATCHED_PERIODS)

    @property
    def ended(self) -> HealthEvent | None:
        """The ``ended`` (stopped on purpose) or ``stopped`` event that closed the stream, if the last state is one."""
        states = [e for e in self.events if isinstance(e, HealthEvent) and e.state is not None]
        last = states[-1] if states else None
        return last if last is not None and last.state in (StreamState.ENDED, StreamState.STOPPED) else None


def build_report(stream: str, events: list[Event], until: float | None = None) -> Report:
    """Summarise one stream's events (in id order).

    ``until`` is the wall time (epoch s) the report ends at (its ``--to``, or when it was written):
    periods still open then are shown as open, with their length up to that moment.
    """
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
    periods = _periods(health, until)
    duration = max([e.offset for e in live] + [p.start + (p.duration or 0.0) for p in periods] + [0.0])
    sev = Counter(a.severity.value for a in alerts)
    return Report(
        stream=stream,
        first_at=first,
        last_at=last,
        duration_s=duration,
        periods=tuple(periods),
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
        switches=tuple(e for e in health if e.kind is HealthKind.MODEL and e.active is None),
        model_health=tuple(e for e in health if e.kind is HealthKind.MODEL and e.active is not None),
        models=dict(Counter(m for m in map(_model_of, mine) if m).most_common()),
        feedback=reply_feedback(mine),
        actions=tuple(e for e in mine if isinstance(e, ActionEvent)),
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


def _periods(health: list[HealthEvent], until: float | None = None) -> list[Period]:
    out: list[Period] = []
    down_since: HealthEvent | None = None
    open_: dict[HealthKind, HealthEvent] = {}

    def down(began: HealthEvent) -> tuple[str, str]:
        """An outage's kind and detail: ``cut`` when an action made it (not a fault)."""
        return ("cut", f"action #{began.caused_by}") if began.caused_by is not None else ("outage", began.reason)

    def closed(began: HealthEvent, length: float) -> Period:
        kind, detail = down(began)
        return Period(kind, began.offset, round(length, 3), detail)

    def still_open(kind: str, began: HealthEvent, detail: str = "") -> Period:
        so_far = None if until is None else round(max(0.0, until - began.at), 3)
        return Period(kind, began.offset, so_far, detail, open=True)

    unwatched: HealthEvent | None = None  # cluster: no worker held the stream from here (a gateway said so)
    for e in health:
        if e.kind is HealthKind.STATE and e.state is StreamState.UNWATCHED:
            if down_since is not None:  # what the source did from here is not known
                out.append(closed(down_since, max(0.0, e.offset - down_since.offset)))
                down_since = None
            unwatched = unwatched or e
        elif e.kind is HealthKind.STATE and e.state is not None:
            if unwatched is not None:  # watched again without a monitoring gap (a new session): the gap by the wall clock
                out.append(Period("monitoring_gap", unwatched.offset, round(max(0.0, e.at - unwatched.at), 3), unwatched.reason))
                unwatched = None
            if e.state in DOWN_STATES and down_since is None:
                down_since = e
            elif e.state is StreamState.LIVE and down_since is not None:
                gap = e.gap_s if e.gap_s is not None else e.offset - down_since.offset
                out.append(closed(down_since, gap))
                down_since = None
            elif e.state in (StreamState.STOPPED, StreamState.ENDED, StreamState.NO_VIDEO) and down_since is not None:
                out.append(closed(down_since, e.offset - down_since.offset))
                down_since = None
        elif e.kind is HealthKind.MONITORING_GAP:
            unwatched = None  # the next owner's gap measures the unwatched window exactly
            out.append(Period("monitoring_gap", e.offset, e.duration_s, e.reason))
        elif e.kind is HealthKind.SEGMENT_MISSING:  # a hole in the show nobody could watch (the segment was not served)
            out.append(Period("segment_missing", e.offset, e.duration_s, e.reason))
        elif e.kind in (HealthKind.BLACK, HealthKind.FROZEN, *_DETAILED):
            if e.active:
                open_.setdefault(e.kind, e)
            else:
                began = open_.pop(e.kind, None)
                start = began.offset if began else e.offset - (e.duration_s or 0.0)
                detail = began.reason if began is not None and e.kind in _DETAILED else ""
                out.append(
                    Period(_PERIOD.get(e.kind, e.kind.value), start, e.duration_s if e.duration_s is not None else e.offset - start, detail)
                )
    if down_since is not None:
        kind, detail = down(down_since)
        out.append(still_open(kind, down_since, detail))
    if unwatched is not None:
        out.append(still_open("monitoring_gap", unwatched, unwatched.reason))
    out.extend(still_open(_PERIOD.get(k, k.value), e, e.reason if k in _DETAILED else "") for k, e in open_.items())
    return sorted(out, key=lambda p: p.start)
