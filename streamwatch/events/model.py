"""Typed event records.

Pure values: frozen dataclasses with slots, no I/O. Stages produce them; the store assigns ids later.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class StreamState(enum.Enum):
    """Lifecycle of one stream. Allowed moves are in :data:`TRANSITIONS`."""

    CONNECTING = "connecting"
    LIVE = "live"
    STALLED = "stalled"
    RECONNECTING = "reconnecting"
    STOPPED = "stopped"


TRANSITIONS: dict[StreamState, frozenset[StreamState]] = {
    StreamState.CONNECTING: frozenset({StreamState.LIVE, StreamState.RECONNECTING, StreamState.STOPPED}),
    StreamState.LIVE: frozenset({StreamState.STALLED, StreamState.RECONNECTING, StreamState.STOPPED}),
    StreamState.STALLED: frozenset({StreamState.RECONNECTING, StreamState.LIVE, StreamState.STOPPED}),
    StreamState.RECONNECTING: frozenset({StreamState.LIVE, StreamState.RECONNECTING, StreamState.STOPPED}),
    StreamState.STOPPED: frozenset(),
}


def can_transition(old: StreamState, new: StreamState) -> bool:
    return new in TRANSITIONS[old]


class HealthKind(enum.Enum):
    """What a health event is about."""

    STATE = "state"  # a stream state change (connecting, live, stalled, reconnecting, stopped)
    BLACK = "black"  # a sustained black / near-uniform picture
    FROZEN = "frozen"  # a sustained frozen picture


@dataclass(frozen=True, slots=True)
class HealthEvent:
    """A change in a stream's health.

    ``state`` is set for ``kind == STATE``. For BLACK/FROZEN periods ``active`` tells whether the
    period starts (True) or ends (False). ``gap_s`` is the outage length when a stream comes back
    LIVE after an outage, and ``duration_s`` the period length when a black/frozen period ends.
    ``offset`` is seconds since the stream session started; ``at`` the UTC wall time (epoch seconds).
    """

    stream: str
    kind: HealthKind
    at: float
    offset: float
    state: StreamState | None = None
    active: bool | None = None
    gap_s: float | None = None
    duration_s: float | None = None
    reason: str = ""
    attempt: int = 0

    def describe(self) -> str:
        if self.kind is HealthKind.STATE and self.state is not None:
            text = self.state.value
            if self.gap_s is not None:
                text += f" again after {self.gap_s:.1f}s"
        else:
            text = f"{self.kind.value} {'started' if self.active else 'ended'}"
            if self.duration_s is not None:
                text += f" after {self.duration_s:.1f}s"
        if self.attempt:
            text += f" (attempt {self.attempt})"
        if self.reason:
            text += f": {self.reason}"
        return text
