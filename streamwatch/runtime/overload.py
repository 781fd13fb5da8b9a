"""Overload said and handled: the asyncio side of :mod:`streamwatch.runtime.degrade` (issue 22).

One :class:`OverloadWatch` per process (on :class:`~streamwatch.runtime.services.StreamServices`).
Each :class:`~streamwatch.runtime.runner.StreamRunner` tells it how far behind its analysis is (a
finished frame's lag; the oldest frame waiting or in analysis), which frames it kept and which alerts
it raised, and asks it each second for its sampling step. :meth:`OverloadWatch.run` looks once a
second: the :class:`~streamwatch.runtime.degrade.Governor` takes the process-wide lag, and when an
episode opens or closes an ``overloaded`` health event goes on every stream watched then (process-wide:
the box is overloaded), each naming the lag, the degradation step and what it does to that stream.
Steps in between are logged and shown by ``streamwatch_degradation_level`` and ``/healthz``.

:class:`AnalysisQueue` is one live stream's bounded queue of kept frames with the drop choice of
:func:`~streamwatch.runtime.degrade.pick_drop` (counted by reason in
``streamwatch_analysis_drops_total``); protected frames make the producer wait instead.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from streamwatch.config import OverloadConfig
from streamwatch.events.model import HealthEvent, HealthKind
from streamwatch.runtime.degrade import ORDER, Activity, Change, Governor, Keep, Step, Thresholds, classify, pick_drop, widened
from streamwatch.sampling.sampler import Sample

logger = logging.getLogger(__name__)

Publish = Callable[[HealthEvent], Awaitable[None]]


class OverloadWatch:
    """The process's overload state: lag in, sampling steps and ``overloaded`` events out."""

    def __init__(
        self, cfg: OverloadConfig, *, heartbeat_s: float, radius: int, on_level: Callable[[int, float], None] | None = None
    ) -> None:
        t = Thresholds(cfg.lag_s, cfg.after_s, cfg.recover_s, cfg.recover_share, max(1, cfg.max_level))
        self.cap = cfg.max_level  # the deepest step applied (0: an episode is said, nothing is degraded)
        self.governor = Governor(t)
        self.activity = Activity(cfg.calm_after_s, cfg.calm_tiles)
        self.heartbeat_s, self.radius = heartbeat_s, radius
        self.on_level = on_level  # (level, lag): the metrics
        self.targets: Callable[[], list[str]] = list  # the streams watched now (events go on each)
        self._base: dict[str, float] = {}  # each stream's own sampling step
        self._finished: dict[str, float] = {}  # the largest lag finished since the last look, per stream
        self._waiting: dict[str, float] = {}  # wall time of the oldest frame waiting or in analysis, per stream
        self._told: set[str] = set()  # the streams told of the open episode
        self._keeps: dict[str, dict[str, int]] = {}  # kept frames by Keep, per stream (/healthz)
        self._began: float | None = None  # wall time the open episode was said

    # --- what runners tell --------------------------------------------------------------------------

    def register(self, stream: str, every_s: float) -> None:
        self._base[stream] = every_s

    def forget(self, stream: str) -> None:
        for d in (self._base, self._finished, self._waiting, self._keeps):
            d.pop(stream, None)
        self.activity.forget(stream)

    def finished(self, stream: str, lag: float) -> None:
        if stream in self._base:  # (live streams only: a file read faster than real time waits, it is not behind)
            self._finished[stream] = max(lag, self._finished.get(stream, 0.0))

    def waiting(self, stream: str, oldest_wall: float | None) -> None:
        if oldest_wall is None or stream not in self._base:
            self._waiting.pop(stream, None)
        else:
            self._waiting[stream] = oldest_wall

    def on_alert(self, stream: str) -> None:
        self.activity.on_alert(stream, time.monotonic())

    def keep_of(self, sample: Sample) -> Keep:
        """How precious a kept frame is (recorded for calmness too)."""
        change = sample.change
        now = time.monotonic()
        self.activity.on_kept(sample.frame.stream, now, change.fraction if change is not None else 0.0)
        changed = change is not None and change.any
        keep = classify(changed, sample.distance, self.radius, self.activity.hot(sample.frame.stream, now))
        counts = self._keeps.setdefault(sample.frame.stream, {})
        counts[keep.name.lower()] = counts.get(keep.name.lower(), 0) + 1
        return keep

    def factor(self, stream: str) -> int:
        return self.step.factor(self.activity.calm(stream, time.monotonic()))

    @property
    def step(self) -> Step:
        """The degradation step applied now."""
        return ORDER[min(self.governor.level, self.cap)]

    def every_s(self, stream: str) -> float | None:
        """The stream's sampling step now (None: not registered)."""
        base = self._base.get(stream)
        return None if base is None else widened(base, self.factor(stream), self.heartbeat_s)

    # --- the look -----------------------------------------------------------------------------------

    def lag(self, now_wall: float) -> float:
        """The process's lag since the last look (and start a new look)."""
        lags = [*self._finished.values(), *(now_wall - w for w in self._waiting.values())]
        self._finished.clear()
        return max(lags, default=0.0)

    def look(self, now: float, now_wall: float) -> Change | None:
        lag = self.lag(now_wall)
        change = self.governor.update(now, lag)
        if self.on_level is not None:
            self.on_level(self.step.level, lag)
        if change is not None:
            (logger.warning if change.new > change.old else logger.info)(
                "overload: degradation %d → %d (%s), analysis %.1fs behind", change.old, change.new, change.step.name, lag
            )
        return change

    def reason(self, stream: str, ended: Change | None = None) -> str:
        """What an ``overloaded`` event on ``stream`` says now, or at the episode's end (display text;
        English, like other reasons)."""
        g, t = self.governor, self.governor.t
        if ended is not None:
            return (
                f"analysis {ended.lag_s:.1f}s behind, under {t.lag_s * t.recover_share:.1f}s for {t.recover_s:g}s; "
                f"worst {ended.peak_lag_s:.1f}s behind, step {min(ended.peak_level, self.cap)} "
                f"({ORDER[min(ended.peak_level, self.cap)].name})"
            )
        step, every = self.step, self.every_s(stream)
        calm = self.activity.calm(stream, time.monotonic())
        here = f"this stream {'calm' if calm else 'busy'}, sampled every {every:g}s" if every is not None else "not sampled here"
        return (
            f"analysis {g.lag_s:.1f}s behind (over {t.lag_s:g}s for {t.after_s:g}s); "
            f"step {step.level} ({step.name}: calm streams ×{step.calm}, others ×{step.busy}); {here}; "
            "escalated and overlay frames are never dropped"
        )

    def leave(self, stream: str, offset: float) -> HealthEvent | None:
        """A stream that ends (or stops) during an episode: the end of its ``overloaded`` period (None: none open)."""
        if stream not in self._told:
            return None
        self._told.discard(stream)
        now = time.time()
        lasted = round(now - self._began, 3) if self._began is not None else None
        return HealthEvent(
            stream=stream, at=now, offset=offset, kind=HealthKind.OVERLOADED, active=False, duration_s=lasted, reason="stopped watching it"
        )

    def as_json(self) -> dict[str, Any]:
        """For ``/healthz``: the level, its step, the last lag and each stream's sampling step now."""
        g = self.governor
        return {
            "level": self.step.level,
            "step": self.step.name,
            "lag_s": round(g.lag_s, 3),
            "overloaded": g.level > 0,
            "since": g.since,
            "streams": {
                sid: {"every_s": self.every_s(sid), "calm": self.activity.calm(sid, time.monotonic()), "kept": self._keeps.get(sid, {})}
                for sid in self._base
            },
        }

    async def run(self, publish: Publish, offsets: Mapping[str, float], every_s: float = 1.0) -> None:
        """Forever: look once a second. An episode's start goes on every stream watched (a stream that
        starts during it is told at once), its end on every stream told."""
        while True:
            await asyncio.sleep(every_s)
            change = self.look(time.monotonic(), time.time())
            now = time.time()
            if change is not None and change.began:
                self._began = now
            if change is not None and change.ended:
                lasted = round(now - self._began, 3) if self._began is not None else None
                for sid in [s for s in self.targets() if s in self._told]:
                    await publish(self._event(sid, now, offsets, False, self.reason(sid, change), lasted))
                self._told.clear()
                self._began = None
            elif self.governor.level > 0:
                for sid in [s for s in self.targets() if s not in self._told]:
                    self._told.add(sid)
                    await publish(self._event(sid, now, offsets, True, self.reason(sid), None))

    @staticmethod
    def _event(sid: str, now: float, offsets: Mapping[str, float], active: bool, reason: str, lasted: float | None) -> HealthEvent:
        offset = offsets.get(sid, 0.0)
        return HealthEvent(stream=sid, at=now, offset=offset, kind=HealthKind.OVERLOADED, active=active, duration_s=lasted, reason=reason)


class AnalysisQueue:
    """One stream's kept frames waiting for analysis (oldest first), bounded, with a named drop choice.

    While ``live()`` (asked at each put: an HLS recording turns out not to be live), a full queue drops
    per :func:`~streamwatch.runtime.degrade.pick_drop` (``on_drop(reason)`` counts it) or, when
    everything is protected, the producer waits; files always wait. The end marker (None) is always
    taken.
    """

    def __init__(self, maxsize: int, live: Callable[[], bool], on_drop: Callable[[str], None]) -> None:
        self.maxsize, self.live, self.on_drop = maxsize, live, on_drop
        self._items: deque[tuple[Sample | None, Keep]] = deque()
        self._changed = asyncio.Condition()
        self._wake: asyncio.Task[None] | None = None  # the end marker's wake-up (kept: a task nobody holds may vanish)

    def oldest_wall(self) -> float | None:
        """Arrival wall time of the oldest frame waiting (None: none)."""
        for s, _k in self._items:
            if s is not None:
                return s.frame.wall
        return None

    async def put(self, sample: Sample, keep: Keep) -> None:
        async with self._changed:
            while len(self._items) >= self.maxsize:
                drop = pick_drop([k for _s, k in self._items], keep) if self.live() else None
                if drop is not None:
                    self.on_drop(drop.reason)
                    if drop.index == len(self._items):
                        return  # the newcomer itself
                    del self._items[drop.index]
                    break
                await self._changed.wait()
            self._items.append((sample, keep))
            self._changed.notify_all()

    def end(self) -> None:
        """The end marker, without waiting (it never replaces a frame)."""
        self._items.append((None, Keep.ESCALATED))
        self._wake = asyncio.get_running_loop().create_task(self._notify())

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def get(self) -> Sample | None:
        async with self._changed:
            while not self._items:
                await self._changed.wait()
            sample, _k = self._items.popleft()
            self._changed.notify_all()
            return sample
