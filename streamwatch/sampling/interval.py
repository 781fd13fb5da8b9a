"""Pick one frame every N seconds of stream time."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class IntervalSampler:
    """``due(offset)`` is True for the first frame at or after each grid point ``k * every_s``.

    The grid is kept across gaps: after an outage the next frame is due at once, then the grid
    continues from it. ``tolerance`` lets a frame a hair early (timestamp rounding) count.

    >>> s = IntervalSampler(1.0)
    >>> [t for t in (0.0, 0.4, 0.99, 1.5, 2.0, 7.3, 7.9, 8.3) if s.due(t)]
    [0.0, 0.99, 2.0, 7.3, 8.3]
    """

    every_s: float
    tolerance: float = 0.02
    _next: float | None = None

    def due(self, offset: float) -> bool:
        if self._next is not None and offset < self._next - self.tolerance:
            return False
        if self._next is None or offset - self._next >= self.every_s:
            self._next = offset  # first frame, or a gap longer than one interval: restart the grid
        while self._next <= offset + self.tolerance:
            self._next += self.every_s
        return True
