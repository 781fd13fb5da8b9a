"""Stream sessions that survive a daemon restart: the show's clock, heartbeats and monitoring gaps.

A live stream's session begins with its first frame (offset 0) and its start is kept in the store,
with a heartbeat the daemon writes every few seconds. A daemon that comes back after a crash or
``kill -9`` finds the session still open: offsets continue from the same start, and the window
between the last heartbeat and now, when nobody was watching, becomes a ``monitoring_gap`` health
event. A session stopped on purpose (SIGTERM, a source that finished) is ended in the store, so the
next run starts a new one. Blocking (SQLite): call from an executor.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from streamwatch.events.codec import iso
from streamwatch.events.model import HealthEvent, HealthKind
from streamwatch.events.store import EventStore, StreamSession


def monitoring_gap(session: StreamSession, now: float) -> HealthEvent:
    """The unwatched window of an open ``session`` from its last heartbeat to ``now`` (pure).

    ``offset`` is the show time of the last heartbeat, ``duration_s`` the length of the window.
    """
    return HealthEvent(
        stream=session.stream,
        at=now,
        offset=session.heartbeat_offset,
        kind=HealthKind.MONITORING_GAP,
        duration_s=round(max(0.0, now - session.heartbeat_at), 3),
        reason=f"streamwatch was not running from {iso(session.heartbeat_at)} to {iso(now)}",
    )


@dataclass(slots=True)
class SessionKeeper:
    """One live stream's session in ``store``; ``every_s`` is the heartbeat interval."""

    store: EventStore
    stream: str
    every_s: float = 3.0
    _last_beat: float = 0.0

    def restore(self, now: float | None = None) -> tuple[float | None, HealthEvent | None]:
        """(start of the open session to continue, its monitoring gap), or (None, None) for a new one."""
        s = self.store.session(self.stream)
        if s is None or s.ended_at is not None:
            return None, None
        return s.started_at, monitoring_gap(s, time.time() if now is None else now)

    def beat(self, started_at: float | None, offset: float, *, force: bool = False) -> bool:
        """Write a heartbeat when ``every_s`` has passed (or ``force``); False when not due or not started."""
        now = time.time()
        if started_at is None or (not force and now - self._last_beat < self.every_s):
            return False
        self.store.heartbeat(self.stream, started_at, now, offset)
        self._last_beat = now
        return True

    def end(self) -> None:
        """The session ended on purpose."""
        self.store.end_session(self.stream, time.time())
