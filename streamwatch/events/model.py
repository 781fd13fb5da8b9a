"""Typed event records.

Pure values: frozen dataclasses with slots, no I/O. Stages produce them with ``id == 0``; the store
assigns the strictly increasing id (:func:`dataclasses.replace`). ``at`` is UTC wall time in epoch
seconds (ISO 8601 on the wire), ``offset`` seconds since the stream session began.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import ClassVar

from streamwatch.redact import mask_text


class StreamState(enum.Enum):
    """Lifecycle of one stream. Allowed moves are in :data:`TRANSITIONS`."""

    CONNECTING = "connecting"
    LIVE = "live"
    STALLED = "stalled"
    RECONNECTING = "reconnecting"
    NO_VIDEO = "no_video"  # the source is up and sends audio only (a music interlude): not an outage
    STOPPED = "stopped"
    ENDED = "ended"  # stopped on purpose (SIGTERM, a listen-mode publisher's unpublish): not an outage
    UNWATCHED = "unwatched"  # cluster: no worker holds the stream (all gone or full); said by gateways, from the last heartbeat


_ENDS = {StreamState.STOPPED, StreamState.ENDED}
TRANSITIONS: dict[StreamState, frozenset[StreamState]] = {
    StreamState.CONNECTING: frozenset({StreamState.LIVE, StreamState.RECONNECTING, StreamState.NO_VIDEO, *_ENDS}),
    StreamState.LIVE: frozenset({StreamState.STALLED, StreamState.RECONNECTING, StreamState.NO_VIDEO, *_ENDS}),
    StreamState.STALLED: frozenset({StreamState.RECONNECTING, StreamState.LIVE, StreamState.NO_VIDEO, *_ENDS}),
    StreamState.RECONNECTING: frozenset({StreamState.LIVE, StreamState.RECONNECTING, StreamState.NO_VIDEO, *_ENDS}),
    StreamState.NO_VIDEO: frozenset({StreamState.LIVE, StreamState.STALLED, StreamState.RECONNECTING, *_ENDS}),
    StreamState.STOPPED: frozenset(),
    StreamState.ENDED: frozenset({StreamState.LIVE}),  # listen mode: the next publisher
    StreamState.UNWATCHED: frozenset(),  # never a reader's state
}


def can_transition(old: StreamState, new: StreamState) -> bool:
    return new in TRANSITIONS[old]


class HealthKind(enum.Enum):
    """What a health event is about."""

    STATE = "state"  # a stream state change (connecting, live, stalled, reconnecting, stopped)
    BLACK = "black"  # a sustained black / near-uniform picture
    FROZEN = "frozen"  # a sustained frozen picture
    CONFIG = "config"  # a configuration problem noticed while running (e.g. a broken policy reload)
    MODEL = "model"  # VLM tier: active None: a role switched models (duration_s: load + warm-up); True: failing; False: works again
    MONITORING_GAP = "monitoring_gap"  # nobody watched (the daemon was down): offset = last heartbeat, duration_s
    SEGMENT_MISSING = "segment_missing"  # HLS: a listed segment could not be fetched (404): a hole of duration_s in the show
    ANALYSIS = "analysis"  # active: frames in a row skipped because their analysis failed; inactive: it works again
    WEBHOOK = "webhook"  # active: a webhook endpoint has failed for a while (reason names it); inactive: it recovered
    STORAGE = "storage"  # active: the data folder takes no writes (disk full): events held, evidence not saved; inactive: ok again
    OVERLOADED = "overloaded"  # process-wide, on every stream: active: analysis fell behind, sampling degraded; inactive: keeps up again


class Severity(enum.Enum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        return _SEVERITY_RANK[self]


_SEVERITY_RANK = {Severity.LOW: 0, Severity.MEDIUM: 1, Severity.HIGH: 2, Severity.CRITICAL: 3}


class ReviewAction(enum.Enum):
    CONFIRM = "confirm"
    DISMISS = "dismiss"


@dataclass(frozen=True, slots=True)
class Evidence:
    """What an alert is based on. ``frame`` is a path relative to the evidence folder (a URL on the wire)."""

    kind: str
    text: str | None = None
    bbox: tuple[int, int, int, int] | None = None  # x1, y1, x2, y2 in the evidence frame's pixels
    labels: tuple[str, ...] = ()
    frame: str | None = None
    crop: str | None = None
    unsaved: str | None = None  # why there is no evidence image although there was a picture (the disk was full)


@dataclass(frozen=True, slots=True)
class Event:
    """Fields every event has. Subclasses set ``TYPE`` (the wire ``type``)."""

    TYPE: ClassVar[str] = ""

    stream: str
    at: float
    offset: float
    id: int = field(default=0, kw_only=True)

    @property
    def type(self) -> str:
        return self.TYPE

    @property
    def owner(self) -> str | None:
        """Token name that privately owns the event (submitters see only their own), or None."""
        return None

    def files(self) -> tuple[str, ...]:
        """Evidence files the event references (relative paths)."""
        return ()


@dataclass(frozen=True, slots=True)
class AlertEvent(Event):
    TYPE: ClassVar[str] = "alert"

    rule: str
    severity: Severity
    message: str
    confidence: float
    evidence: Evidence
    received_at: float | None = None  # wall time the analysed frame arrived (glass-to-alert latency)
    late: bool | None = None  # True: from the compliance model, after the configured deadline

    def files(self) -> tuple[str, ...]:
        return tuple(p for p in (self.evidence.frame, self.evidence.crop) if p)


@dataclass(frozen=True, slots=True)
class HealthEvent(Event):
    """A change in a stream's health.

    ``state`` is set for ``kind == STATE``. For BLACK/FROZEN periods ``active`` tells whether the
    period starts (True) or ends (False). ``gap_s`` is the outage length when a stream comes back
    LIVE after an outage, and ``duration_s`` the period length when a black/frozen period ends.
    ``reason`` is display text: URLs in it are masked when the event is made (an error message
    quoting a source URL never reaches the store, samples.jsonl, clients or /healthz).
    """

    TYPE: ClassVar[str] = "health"

    kind: HealthKind
    state: StreamState | None = None
    active: bool | None = None
    gap_s: float | None = None
    duration_s: float | None = None
    reason: str = ""
    attempt: int = 0
    caused_by: int | None = None  # id of the action event (a cut) this outage follows: on purpose, not a fault

    def __post_init__(self) -> None:
        if self.reason:
            object.__setattr__(self, "reason", mask_text(self.reason))

    def describe(self, lang: str = "en") -> str:
        """What it says, for people: English (logs, the CLI) or the desk's ``zh`` (:mod:`streamwatch.i18n`)."""
        from streamwatch.i18n import describe_health

        return describe_health(self, "zh" if lang == "zh" else "en")


@dataclass(frozen=True, slots=True)
class ReplyEvent(Event):
    """The persona's answer to an audience image."""

    TYPE: ClassVar[str] = "reply"

    submission: str
    submitter: str  # token name of the submitting client
    text: str
    user: str = ""  # the fan's display name
    image: str | None = None  # thumbnail of the fan's image (evidence path)
    persona: str = ""
    model: str = ""

    @property
    def owner(self) -> str | None:
        return self.submitter

    def files(self) -> tuple[str, ...]:
        return (self.image,) if self.image else ()


@dataclass(frozen=True, slots=True)
class RejectedEvent(Event):
    """An audience image that was refused, with a machine-readable reason."""

    TYPE: ClassVar[str] = "rejected"

    submission: str
    submitter: str
    reason: str
    message: str = ""
    user: str = ""

    @property
    def owner(self) -> str | None:
        return self.submitter


@dataclass(frozen=True, slots=True)
class AnswerEvent(Event):
    """An answer to a question about the live frame."""

    TYPE: ClassVar[str] = "answer"

    question: str
    text: str
    asker: str
    ref: str = ""
    frame: str | None = None
    model: str = ""

    @property
    def owner(self) -> str | None:
        return self.asker  # a relay sees only the answers to its own questions

    def files(self) -> tuple[str, ...]:
        return (self.frame,) if self.frame else ()


@dataclass(frozen=True, slots=True)
class ReviewEvent(Event):
    """A moderator's confirm or dismiss of an alert."""

    TYPE: ClassVar[str] = "review"

    alert_id: int
    action: ReviewAction
    by: str
    note: str = ""


class ActionStatus(enum.Enum):
    """Where an action on the stream stands."""

    PENDING = "pending"  # waits for a moderator's confirmation (console button / key, ``act`` message)
    DONE = "done"  # the origin server did it
    FAILED = "failed"  # the call failed or the origin refused (``detail`` says why)
    DRY_RUN = "dry_run"  # what would have been called, not called (``actions.dry_run`` or the show's switch)
    OFF = "off"  # actions are switched off for this show: nothing called


@dataclass(frozen=True, slots=True)
class ActionEvent(Event):
    """An action on the stream (cut, warn, a named HTTP action) asked for by a rule or a moderator."""

    TYPE: ClassVar[str] = "action"

    alert_id: int  # the alert that asked for it
    rule: str
    action: str  # cut | warn | the name of an [[actions.http]] entry
    status: ActionStatus
    by: str  # "policy" (automatic) or the moderator's token name
    backend: str = ""  # nginx | srs | http:<name> | "" (recorded only)
    target: str = ""  # what was acted on (app/name on the origin, or the URL called)
    detail: str = ""  # the origin's answer or the error
    auto: bool = False  # run without a moderator's confirmation


class Vote(enum.Enum):
    UP = "up"
    DOWN = "down"
    REPORT = "report"  # the reply is inappropriate: becomes a moderator alert


@dataclass(frozen=True, slots=True)
class FeedbackEvent(Event):
    """A viewer's, moderator's or fan's vote on a persona reply (one per voter and reply)."""

    TYPE: ClassVar[str] = "feedback"

    reply_id: int
    vote: Vote
    by: str  # token name of the client that sent it
    user: str = ""  # the voter's name (a relay votes for many viewers)
    model: str = ""  # the model that wrote the reply
    persona: str = ""
    note: str = ""


@dataclass(frozen=True, slots=True)
class SceneEvent(Event):
    """What the compliance model saw in a kept frame: scene tags (``setting=indoor_stage``, ``outfit=…``)
    for the report and for search."""

    TYPE: ClassVar[str] = "scene"

    tags: tuple[str, ...]
    model: str
    frame: str | None = None
    late: bool | None = None

    def files(self) -> tuple[str, ...]:
        return (self.frame,) if self.frame else ()


EVENT_TYPES: dict[str, type[Event]] = {
    cls.TYPE: cls
    for cls in (
        AlertEvent,
        HealthEvent,
        ReplyEvent,
        RejectedEvent,
        AnswerEvent,
        ReviewEvent,
        SceneEvent,
        FeedbackEvent,
        ActionEvent,
    )
}
