"""Faults in one stream's work that must neither stop the stream nor go unnoticed (pure: no I/O, no asyncio).

- :class:`FailureStreak`: frames whose analysis failed (an analyzer or model error on those frames) are
  skipped and counted; a streak of ``notice_after`` frames in a row is said once (a health notice), and
  so is its end. One bad frame never stops a stream; a model that fails on every frame is not silent.
- :class:`RestartBackoff`: a stream whose work failed on an unexpected error (a bug, not a source
  error: those reconnect in ingest) is restarted after 1, 2, 4 … ``max_s`` s; a run that lasted
  ``healthy_s`` starts the count again. ``give_up_after`` crashes in a row: the cluster hands the
  stream to another worker (a fault of this machine: its GPU, its disk, its model files).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class FailureStreak:
    """Consecutive frames of one stream whose analysis failed."""

    notice_after: int = 5
    failing: int = 0  # frames in a row that failed
    skipped: int = 0  # all frames skipped so far
    noticed: bool = False

    def failed(self) -> bool:
        """One more failed frame; True when the streak has just become worth a notice (once per streak)."""
        self.failing += 1
        self.skipped += 1
        if self.failing >= self.notice_after and not self.noticed:
            self.noticed = True
            return True
        return False

    def ok(self) -> int | None:
        """A frame was analysed: the length of the streak that ended, if it was noticed (else None)."""
        ended, noticed = self.failing, self.noticed
        self.failing, self.noticed = 0, False
        return ended if noticed else None


@dataclass(slots=True)
class RestartBackoff:
    """When to restart a stream after its work failed: ``initial_s`` doubling up to ``max_s``."""

    initial_s: float = 1.0
    max_s: float = 30.0
    healthy_s: float = 60.0  # a run at least this long was healthy: the next crash counts from one
    give_up_after: int | None = None  # crashes in a row after which the stream goes elsewhere (cluster)
    crashes: int = 0  # in a row

    def crashed(self, ran_s: float) -> float:
        """A run of ``ran_s`` s ended on an unexpected error: seconds to wait before the next one."""
        if ran_s >= self.healthy_s:
            self.crashes = 0
        self.crashes += 1
        return float(min(self.max_s, self.initial_s * 2 ** (self.crashes - 1)))

    @property
    def give_up(self) -> bool:
        """True when the stream should be handed to another worker instead of restarted here."""
        return self.give_up_after is not None and self.crashes >= self.give_up_after


def first_error(e: BaseException) -> BaseException:
    """``e``, or the first error inside it when it is an exception group (a TaskGroup's failure)."""
    while isinstance(e, BaseExceptionGroup) and e.exceptions:
        e = e.exceptions[0]
    return e


def describe(e: BaseException) -> str:
    """``e`` for a health event's reason: the first error of a group, as ``Type: message``, bounded."""
    e = first_error(e)
    text = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
    return text if len(text) <= 200 else text[:199] + "…"
