"""Stream-session offsets that stay continuous across reconnects and PTS resets (pure)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class OffsetClock:
    """Turns per-connection PTS into seconds since the stream session started.

    Files: the offset is stream time (PTS relative to the first frame).
    Live: each connection is anchored to the wall clock when its first frame arrives; within a
    connection PTS differences advance the offset. A PTS that jumps back (a publisher restart on
    the same connection) or far forward re-anchors to the wall clock. Offsets never go backwards.
    """

    live: bool
    jump_s: float = 5.0  # live: a forward PTS step past this is a jump (re-anchored to the wall clock)
    file_jump_s: float = 600.0  # files: only this is a discontinuity; shorter steps are real (a 0.1 fps slideshow)
    _anchor_offset: float | None = None
    _anchor_pts: float = 0.0
    _last_pts: float | None = None
    _last_offset: float = -1.0

    @property
    def _jump(self) -> float:
        return self.jump_s if self.live else self.file_jump_s

    def new_connection(self) -> None:
        """Forget the PTS anchor: the next frame is anchored to the wall clock."""
        if self.live:
            self._anchor_offset = None
            self._last_pts = None

    def offset(self, pts: float | None, elapsed: float) -> float:
        """Offset for a frame with source time ``pts`` received ``elapsed`` s after session start."""
        if pts is None:
            # No timestamp: live sources use the wall clock; files continue one step past the last.
            off = elapsed if self.live else self._last_offset + 1e-3
        else:
            if self._anchor_offset is None:
                self._anchor_offset = elapsed if self.live else 0.0
                self._anchor_pts = pts
            elif self._last_pts is not None and (pts < self._last_pts - 0.5 or pts > self._last_pts + self._jump):
                # PTS reset or jump: continue from where we are in wall time (live) or stream time.
                self._anchor_offset = max(elapsed, self._last_offset) if self.live else self._last_offset
                self._anchor_pts = pts
            self._last_pts = pts
            off = self._anchor_offset + (pts - self._anchor_pts)
        off = max(off, self._last_offset + 1e-6) if self._last_offset >= 0 else max(off, 0.0)
        self._last_offset = off
        return off
