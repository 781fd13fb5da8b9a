"""Bounded admission of frames to the compliance model, per stream.

Frames come from rules marked ``escalate`` and from a periodic check (one kept frame per stream every
``every_s``). Each stream has at most ``per_stream`` frames waiting; when the model falls behind, the
oldest waiting frame is dropped and counted. Escalations go ahead of periodic checks. How many calls
run at once per backend is the backend's ``concurrency``.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from streamwatch.analysis.model import AnalyzedFrame


@dataclass(frozen=True, slots=True)
class Escalation:
    frame: AnalyzedFrame
    reason: str  # "escalate:<rule>" or "periodic"


class EscalationQueue:
    def __init__(self, per_stream: int, every_s: float, on_drop: Callable[[str], None] = lambda _s: None) -> None:
        self.per_stream = per_stream
        self.every_s = every_s
        self.on_drop = on_drop
        self._waiting: dict[str, deque[Escalation]] = {}
        self._ready: dict[str, asyncio.Event] = {}
        self._last_periodic: dict[str, float] = {}
        self._closed: set[str] = set()

    def _queue(self, sid: str) -> deque[Escalation]:
        if sid not in self._waiting:
            self._waiting[sid] = deque()
            self._ready[sid] = asyncio.Event()
        return self._waiting[sid]

    def offer(self, sid: str, frame: AnalyzedFrame, rules: list[str], now: float) -> bool:
        """Queue the frame if a rule escalated it or the periodic check is due; True when queued."""
        if rules:
            reason = "escalate:" + ",".join(rules)
        elif self.every_s > 0 and now - self._last_periodic.get(sid, float("-inf")) >= self.every_s:
            reason = "periodic"
        else:
            return False
        q = self._queue(sid)
        if reason == "periodic":
            self._last_periodic[sid] = now
        while len(q) >= self.per_stream:  # behind: drop the oldest (a periodic one first)
            victim = next((e for e in q if e.reason == "periodic"), q[0])
            q.remove(victim)
            self.on_drop(sid)
        item = Escalation(frame, reason)
        if rules:  # escalations go first
            q.appendleft(item)
        else:
            q.append(item)
        self._ready[sid].set()
        return True

    async def get(self, sid: str) -> Escalation | None:
        """The next frame to check; None once the stream is closed and nothing is left."""
        q = self._queue(sid)
        while not q:
            if sid in self._closed:
                return None
            self._ready[sid].clear()
            await self._ready[sid].wait()
        return q.popleft()

    def close(self, sid: str) -> None:
        """The stream's frames have ended: what is waiting is still checked, then :meth:`get` returns None."""
        self._queue(sid)
        self._closed.add(sid)
        self._ready[sid].set()

    def waiting(self, sid: str) -> int:
        return len(self._waiting.get(sid, ()))
