"""Choosing how much of the stream to decode (pure).

Decoding is the main CPU cost of a stream. When sampling one frame per second there is no need
to decode every frame:

- ``NONKEY`` (keyframes only) when the sampling interval covers the keyframe interval: ~17 ms per
  keyframe instead of every frame.
- ``NONREF`` (skip non-reference frames, i.e. most B-frames) when samples are far enough apart
  that a gap of a few frames does not matter (and a frame lasts at most a quarter of the sampling
  step: at 0.5 fps one frame is 2 s of picture): about a third less work on typical OBS/x264 streams.
- ``DEFAULT`` (every frame) otherwise.

The keyframe interval is measured from demuxed packets (cheap: no decoding). If keyframes become
too sparse while in keyframe mode, decoding falls back at once, and returns to keyframes when
they are regular again.
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass, field

from streamwatch.config import DecodeMode

# Below this sampling interval every frame is decoded (a gap of a few frames would be visible).
NONREF_MIN_INTERVAL_S = 0.25


@dataclass(slots=True)
class DecodePlan:
    mode: DecodeMode
    every_s: float | None  # None: every frame is wanted (probe, full-rate consumers)
    _key_times: deque[float] = field(default_factory=lambda: deque(maxlen=6))
    _last_packet: float | None = None
    _times: deque[float] = field(default_factory=lambda: deque(maxlen=16))  # recent packet times, for the frame step

    def observe_packet(self, t: float | None, keyframe: bool) -> None:
        if t is None:
            return
        if self._last_packet is not None and t < self._last_packet - 0.5:
            self._key_times.clear()  # timestamps reset: measure again
            self._times.clear()
        self._last_packet = t
        self._times.append(t)
        if keyframe:
            self._key_times.append(t)

    @property
    def frame_step(self) -> float | None:
        """Mean time between recent frames (s), once 4 packets were seen (B-frame order does not matter)."""
        t = self._times
        return None if len(t) < 4 else (max(t) - min(t)) / (len(t) - 1)

    @property
    def keyframe_interval(self) -> float | None:
        """Longest recent keyframe interval in seconds, once two keyframes were seen."""
        k = list(self._key_times)
        if len(k) < 2:
            return None
        return max(b - a for a, b in itertools.pairwise(k))

    def _keyframes_fit(self) -> bool:
        if self.every_s is None:
            return False
        gop = self.keyframe_interval
        if gop is None or gop > self.every_s + 1e-3:
            return False
        return not self._overdue()

    def _overdue(self) -> bool:
        """The last keyframe is older than 1.5 sampling intervals: keyframes are too sparse now."""
        if not self._key_times or self._last_packet is None or self.every_s is None:
            return False
        return self._last_packet - self._key_times[-1] > self.every_s * 1.5

    def skip_frame(self) -> str:
        """The decoder's ``skip_frame`` value for the next packet."""
        if self.every_s is None or self.mode is DecodeMode.FULL:
            return "DEFAULT"
        if self.mode in (DecodeMode.AUTO, DecodeMode.KEYFRAMES) and self._keyframes_fit():
            return "NONKEY"
        if self.mode is DecodeMode.KEYFRAMES and self.keyframe_interval is None and self._key_times and not self._overdue():
            return "NONKEY"  # asked for keyframes and nothing measured yet: trust the user
        step = self.frame_step  # a skipped frame must be short next to the sampling step (0.5 fps: 2 s of picture)
        if self.every_s >= NONREF_MIN_INTERVAL_S and self.mode is not DecodeMode.KEYFRAMES and (step is None or step * 4 <= self.every_s):
            return "NONREF"
        return "DEFAULT"
