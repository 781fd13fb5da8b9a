"""Circuit breaker for one backend. Pure: the caller passes the clock.

closed → (``failures`` failed requests in a row) → open → (``cooldown_s`` later) → half-open: exactly
one probe request goes through; its success closes the circuit, its failure opens it again.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass
class CircuitBreaker:
    failures: int = 2
    cooldown_s: float = 30.0
    state: BreakerState = BreakerState.CLOSED
    _failed: int = 0
    _opened_at: float = 0.0
    _probing: bool = False

    def allow(self, now: float) -> bool:
        """May a request go to this backend now? (In half-open, only the one probe may.)"""
        if self.state is BreakerState.CLOSED:
            return True
        if self.state is BreakerState.OPEN and now - self._opened_at >= self.cooldown_s:
            self.state = BreakerState.HALF_OPEN
            self._probing = False
        if self.state is BreakerState.HALF_OPEN and not self._probing:
            self._probing = True
            return True
        return False

    def success(self) -> None:
        self.state = BreakerState.CLOSED
        self._failed = 0
        self._probing = False

    def failure(self, now: float) -> bool:
        """Record a failed request; True when this opened the circuit."""
        self._failed += 1
        if self.state is BreakerState.HALF_OPEN or self._failed >= self.failures:
            opened = self.state is not BreakerState.OPEN
            self.state = BreakerState.OPEN
            self._opened_at = now
            self._probing = False
            return opened
        return False

    def release(self) -> None:
        """A probe that ended without a verdict (cancelled): let the next request probe."""
        self._probing = False
