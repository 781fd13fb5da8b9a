"""When analysis cannot keep up: the overload episode, the named degradation order and the analysis
queue's drop choice (pure: values in, values out; no clock, no I/O).

**Lag** is the time from a frame's arrival to the end of its policy evaluation, process-wide: the
largest one finished since the last look, or the age of the oldest frame still waiting or in
analysis (a frame stuck in a slow analyzer counts before it finishes). :class:`Governor` is fed that
lag once a second:

* over ``lag_s`` for ``after_s`` in a row → one step deeper in :data:`ORDER` (the first step opens
  the ``overloaded`` episode); each further step needs another ``after_s`` over the line, so a step
  has time to take effect before the next one;
* under ``recover_share × lag_s`` for ``recover_s`` in a row → one step back (the last one ends the
  episode); lag between the two lines holds the level (hysteresis: no flapping).

The **degradation order** (:data:`ORDER`): 1 calm streams sampled every 2 steps, 2 calm streams every
4, 3 every stream at least every 2 (calm ones 4). A stream is *calm* (:class:`Activity`) when it had
no alert or escalation for ``calm_after_s`` and its recent kept frames changed few tiles. A widened
step never exceeds the sampler's heartbeat (a still picture is still looked at once per heartbeat).

The **drop choice** (:func:`pick_drop`) for one stream's full analysis queue: never a *protected*
frame (a region-change keep: the picture is the same but some tiles hold new content, e.g. an overlay
appearing; or any frame of a stream with a recent alert or escalation); first the oldest
*unchanged* frame (kept by the heartbeat or a pHash move with no tile holding new content), else the
oldest other frame. When everything queued and the newcomer are protected, nothing is dropped and the
producer waits for room.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Step:
    """One level of the degradation order: the sampling step factor of calm and of other streams."""

    level: int
    name: str
    calm: int
    busy: int

    def factor(self, calm: bool) -> int:
        return self.calm if calm else self.busy


ORDER: tuple[Step, ...] = (
    Step(0, "normal", 1, 1),
    Step(1, "calm_x2", 2, 1),
    Step(2, "calm_x4", 4, 1),
    Step(3, "all_x2", 4, 2),
)
MAX_LEVEL = len(ORDER) - 1


@dataclass(frozen=True, slots=True)
class Thresholds:
    """When to step deeper and back (``analysis.overload``)."""

    lag_s: float = 2.0
    after_s: float = 3.0
    recover_s: float = 10.0
    recover_share: float = 0.5
    max_level: int = MAX_LEVEL


@dataclass(frozen=True, slots=True)
class Change:
    """A step taken at ``at`` with the lag seen then. ``began``: the episode opens (0 → 1); ``ended``:
    it closes (→ 0), ``since`` its start, ``peak_level`` / ``peak_lag_s`` its worst."""

    at: float
    old: int
    new: int
    lag_s: float
    since: float
    peak_level: int
    peak_lag_s: float

    @property
    def began(self) -> bool:
        return self.old == 0 and self.new > 0

    @property
    def ended(self) -> bool:
        return self.new == 0 and self.old > 0

    @property
    def step(self) -> Step:
        return ORDER[self.new]


@dataclass(slots=True)
class Governor:
    """The degradation level from the process's analysis lag, one look at a time (see the module doc)."""

    t: Thresholds = field(default_factory=Thresholds)
    level: int = 0
    lag_s: float = 0.0  # the last lag seen
    since: float | None = None  # start of the open episode
    peak_level: int = 0
    peak_lag_s: float = 0.0
    _over: float | None = None  # since when the lag is over the line (reset by each step deeper)
    _under: float | None = None  # since when it is under the recover line (reset by each step back)

    def update(self, now: float, lag: float) -> Change | None:
        """Feed the lag seen at ``now``; the step taken, if any."""
        self.lag_s = lag
        if self.since is not None:
            self.peak_lag_s = max(self.peak_lag_s, lag)
        if lag > self.t.lag_s:
            self._under = None
            self._over = now if self._over is None else self._over
            if now - self._over >= self.t.after_s and self.level < self.t.max_level:
                self._over = now
                return self._move(now, self.level + 1)
        elif lag < self.t.lag_s * self.t.recover_share:
            self._over = None
            if self.level > 0:
                self._under = now if self._under is None else self._under
                if now - self._under >= self.t.recover_s:
                    self._under = now
                    return self._move(now, self.level - 1)
        else:  # between the lines: hold
            self._over = self._under = None
        return None

    def _move(self, now: float, new: int) -> Change:
        old, self.level = self.level, new
        if old == 0:
            self.since, self.peak_level, self.peak_lag_s = now, new, self.lag_s
        self.peak_level = max(self.peak_level, new)
        since = self.since if self.since is not None else now
        change = Change(now, old, new, self.lag_s, since, self.peak_level, self.peak_lag_s)
        if new == 0:
            self.since = None
        return change


@dataclass(slots=True)
class Activity:
    """Which streams are calm: no alert or escalation for ``calm_after_s``, and the kept frames of the
    last ``calm_after_s`` changed on average less than ``calm_tiles`` of the tiles."""

    calm_after_s: float = 30.0
    calm_tiles: float = 0.25
    _alerted: dict[str, float] = field(default_factory=dict)
    _kept: dict[str, list[tuple[float, float]]] = field(default_factory=dict)  # (when, share of tiles changed)

    def on_alert(self, stream: str, now: float) -> None:
        self._alerted[stream] = now

    def on_kept(self, stream: str, now: float, changed: float) -> None:
        kept = self._kept.setdefault(stream, [])
        kept.append((now, changed))
        while kept and now - kept[0][0] > self.calm_after_s:
            kept.pop(0)

    def hot(self, stream: str, now: float) -> bool:
        """An alert or escalation within ``calm_after_s``: its frames are never dropped."""
        at = self._alerted.get(stream)
        return at is not None and now - at < self.calm_after_s

    def calm(self, stream: str, now: float) -> bool:
        if self.hot(stream, now):
            return False
        kept = [c for t, c in self._kept.get(stream, ()) if now - t <= self.calm_after_s]
        return not kept or sum(kept) / len(kept) < self.calm_tiles

    def forget(self, stream: str) -> None:
        self._alerted.pop(stream, None)
        self._kept.pop(stream, None)


def widened(every_s: float, factor: int, heartbeat_s: float) -> float:
    """The sampling step at ``factor``: never past the heartbeat (unless the stream's own step is)."""
    return every_s if factor <= 1 else max(every_s, min(every_s * factor, heartbeat_s))


class Keep(enum.IntEnum):
    """Why a kept frame waits for analysis, lowest dropped first."""

    UNCHANGED = 0  # kept by the heartbeat or a pHash move, no tile holds new content
    CHANGED = 1  # tiles and the pHash moved (motion, a new scene), or the stream's first frame
    OVERLAY = 2  # a region-change keep: same picture, some tiles new (an overlay appearing): never dropped
    ESCALATED = 3  # its stream had an alert or escalation recently: never dropped

    @property
    def protected(self) -> bool:
        return self >= Keep.OVERLAY


def classify(tiles_changed: bool, distance: int | None, radius: int, hot: bool) -> Keep:
    """A kept frame's :class:`Keep` from its region change (any tile new), its pHash distance to the
    last kept frame and the dedupe radius, and whether its stream is hot (:meth:`Activity.hot`)."""
    if hot:
        return Keep.ESCALATED
    if not tiles_changed:  # (the stream's first frame is new to us)
        return Keep.CHANGED if distance is None else Keep.UNCHANGED
    if distance is not None and distance <= radius:
        return Keep.OVERLAY
    return Keep.CHANGED


@dataclass(frozen=True, slots=True)
class Drop:
    """Which frame a full queue gives up: ``index`` into the queue (oldest first), or ``len(queue)``
    for the newcomer; ``reason`` names the policy: ``unchanged`` or ``oldest``."""

    index: int
    reason: str


def pick_drop(queued: Sequence[Keep], incoming: Keep) -> Drop | None:
    """The frame to drop when a queue holding ``queued`` (oldest first) is full and ``incoming`` arrives;
    None when every one of them is protected (the producer then waits for room)."""
    candidates = [*queued, incoming]
    lowest = min(candidates)
    if lowest.protected:
        return None
    return Drop(candidates.index(lowest), "unchanged" if lowest is Keep.UNCHANGED else "oldest")
