"""What each stream costs this worker, and what the worker may spend (pure: the caller passes the time).

A stream's cost is CPU seconds per stream-second: the CPU time :class:`~streamwatch.runtime.cpu_account.CpuAccount`
counted for it (every stage: decode, conversion, analysers, policy, store) over a window of
``window_s`` seconds of wall time, smoothed by an EWMA. The published figure moves only when the
smoothed one leaves a dead band around it (``band`` of it, at least ``floor``), so noise does not
move streams (placement.py). A stream just claimed has no figure until one window has passed; the
worker publishes the previous owner's figure meanwhile.

The budget is ``cluster.cpu_budget`` CPU seconds per second, else :data:`DEFAULT_UTILISATION` of
the machine's cores.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

DEFAULT_UTILISATION = 0.8  # of the cores, when cluster.cpu_budget is 0


def cpu_budget(configured: float, cores: int | None = None) -> float:
    """CPU seconds per second this worker's streams may use together."""
    if configured > 0:
        return configured
    n = cores if cores is not None else (os.cpu_count() or 1)
    return round(DEFAULT_UTILISATION * n, 3)


@dataclass
class CostMeter:
    """Smoothed CPU cost per stream from cumulative CPU seconds. :meth:`observe` every round."""

    window_s: float = 5.0
    alpha: float = 0.5  # EWMA weight of the newest window
    band: float = 0.15  # published cost moves when the smoothed one differs by more than this fraction
    floor: float = 0.005  # and by more than this (CPU s per s)
    _base: dict[str, tuple[float, float]] = field(default_factory=dict)  # stream → (time, CPU s at that time)
    _smooth: dict[str, float] = field(default_factory=dict)
    _shown: dict[str, float] = field(default_factory=dict)

    def observe(self, spent: Mapping[str, float], now: float) -> dict[str, float]:
        """``spent``: stream → CPU seconds so far (the running streams); ``now``: monotonic seconds.
        Returns stream → published cost of the streams measured for a window at least."""
        for s in [s for s in self._base if s not in spent]:  # stopped or handed over: start again if it comes back
            self._base.pop(s)
            self._smooth.pop(s, None)
            self._shown.pop(s, None)
        for s, total in spent.items():
            base = self._base.get(s)
            if base is None or total < base[1]:
                self._base[s] = (now, total)
                continue
            t0, c0 = base
            if now - t0 < self.window_s:
                continue
            rate = (total - c0) / (now - t0)
            self._base[s] = (now, total)
            prev = self._smooth.get(s)
            smooth = rate if prev is None else prev + self.alpha * (rate - prev)
            self._smooth[s] = smooth
            shown = self._shown.get(s)
            if shown is None or abs(smooth - shown) > max(self.floor, self.band * shown):
                self._shown[s] = round(smooth, 4)
        return dict(self._shown)


def load(costs: Mapping[str, float]) -> float:
    """The sum of ``costs`` (a worker's load)."""
    return sum(costs.values())


@dataclass
class LoadKeeper:
    """One worker's side of placement by cost: what it publishes (its budget, its streams' costs, the
    streams it just handed over) and what it must not move (streams handed to it, for a cool-down)."""

    budget: float
    meter: CostMeter
    cooldown_s: float = 60.0
    handed_s: float = 10.0  # how long a handed-over stream stays in the record (nobody gives it back meanwhile)
    seen: dict[str, float] = field(default_factory=dict)  # last cost of each stream anywhere in the cluster
    _handed: dict[str, float] = field(default_factory=dict)  # stream → monotonic time it leaves the record
    _pinned: dict[str, float] = field(default_factory=dict)  # stream → monotonic time it may move again

    def costs(self, spent: Mapping[str, float], held: Iterable[str], now: float) -> dict[str, float]:
        """Costs to publish for ``held``: measured here, else the last figure seen (the previous owner's)."""
        measured = self.meter.observe(spent, now)
        out = {s: measured[s] if s in measured else self.seen.get(s) for s in held}
        return {s: c for s, c in out.items() if c is not None}

    def saw(self, records: Iterable[Iterable[tuple[str, float]]]) -> None:
        """Remember the costs of every membership record (``Member.costs`` of each)."""
        for costs in records:
            self.seen.update(costs)

    def handed_over(self, stream: str, now: float) -> None:
        self._handed[stream] = now + self.handed_s

    def handed(self, now: float) -> tuple[str, ...]:
        self._handed = {s: t for s, t in self._handed.items() if t > now}
        return tuple(sorted(self._handed))

    def moved_in(self, stream: str, now: float) -> None:
        """``stream`` moved to this worker (handed over, drained, or taken over from a dead worker): not moved
        again to even the load for the cool-down (each move is a monitoring gap)."""
        self._pinned[stream] = now + self.cooldown_s

    def pinned(self, now: float) -> set[str]:
        self._pinned = {s: t for s, t in self._pinned.items() if t > now}
        return set(self._pinned)
