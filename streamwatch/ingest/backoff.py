"""Exponential backoff with jitter for reconnects (pure; the caller sleeps)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass(slots=True)
class Backoff:
    """Delays ``initial * multiplier**n`` capped at ``cap``, each spread by ±``jitter``.

    >>> b = Backoff(0.5, 10.0, jitter=0.0)
    >>> [b.next() for _ in range(7)]
    [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    """

    initial: float
    cap: float
    multiplier: float = 2.0
    jitter: float = 0.2
    rng: random.Random = field(default_factory=random.Random)
    attempt: int = 0

    def next(self) -> float:
        base = min(self.cap, self.initial * self.multiplier**self.attempt)
        self.attempt += 1
        if self.jitter:
            base *= 1.0 + self.rng.uniform(-self.jitter, self.jitter)
        return max(0.0, min(base, self.cap))

    def reset(self) -> None:
        self.attempt = 0
