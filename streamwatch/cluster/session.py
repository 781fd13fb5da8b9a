"""A cluster stream's session clock and cooldowns, carried over JetStream KV to the next owner.

The owner writes the carried state (session start, heartbeat, the rule cooldowns) about once a
second; a worker that takes the stream over (the owner died, drained, or its lease was lost) reads
it: offsets continue from the same session start, alerts still in cooldown are not raised again,
and the unwatched window between the last heartbeat and the takeover is a ``monitoring_gap``
health event with its length. Implements :class:`~streamwatch.runtime.runner.SessionKeeping`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from streamwatch.analysis.rules import RuleEngine
from streamwatch.cluster.carry import CarryTable, StreamCarry
from streamwatch.config import StreamConfig
from streamwatch.errors import ClusterError, StreamwatchError
from streamwatch.events.codec import iso
from streamwatch.events.model import HealthEvent, HealthKind
from streamwatch.ingest.url import parse_source

logger = logging.getLogger(__name__)

RESTORE_PATIENCE_S = 20.0  # how long a new owner retries reading the carried state (a NATS leader election: 4-8 s)


def takeover_gap(stream: str, carry: StreamCarry, now: float, worker: str) -> HealthEvent:
    """The window nobody watched ``stream`` before ``worker`` took it over at ``now`` (pure).

    ``offset``: show time of the last heartbeat (s); ``duration_s``: from that heartbeat to now.
    """
    return HealthEvent(
        stream=stream,
        at=now,
        offset=carry.heartbeat_offset,
        kind=HealthKind.MONITORING_GAP,
        duration_s=round(max(0.0, now - carry.heartbeat_at), 3),
        reason=f"taken over by worker {worker}: nobody watched from {iso(carry.heartbeat_at)} to {iso(now)}",
    )


class CarriedSession:
    """:class:`SessionKeeping` of one stream in the cluster's carried state (``table``)."""

    def __init__(self, table: CarryTable, stream: str, engine: Callable[[], RuleEngine], worker: str, *, live: bool = True) -> None:
        self.table = table
        self.stream = stream
        self.engine = engine
        self.worker = worker
        self.live = live  # False: a file, whose end is recorded so that no new owner reads it again

    async def restore(self, *, patience_s: float = RESTORE_PATIENCE_S) -> tuple[float | None, HealthEvent | None]:
        """The carried session start and the takeover's monitoring gap (None, None: a new session).

        A read that fails (NATS electing a leader after a node loss takes 4-8 s) is retried for
        ``patience_s``; after that the stream starts a new session rather than not run at all.
        """
        deadline = time.monotonic() + patience_s
        while True:
            try:
                carry = await self.table.load(self.stream)
                break
            except ClusterError as e:
                if time.monotonic() >= deadline:
                    logger.error("stream %s: %s; starting a new session (cooldowns not carried)", self.stream, e)
                    return None, None
                logger.warning("stream %s: %s; retrying", self.stream, e)
                await asyncio.sleep(0.5)
        if carry is None or carry.session_started_at is None or carry.finished_at is not None:
            return None, None
        self.engine().import_cooldowns(self.stream, carry.cooldowns)
        return carry.session_started_at, takeover_gap(self.stream, carry, time.time(), self.worker)

    async def beat(self, started_at: float | None, offset: float, *, force: bool = False) -> None:
        if started_at is None:
            return
        carry = StreamCarry(started_at, time.time(), offset, self.engine().export_cooldowns(self.stream))
        try:
            await self.table.save(self.stream, carry, force=force)
        except ClusterError as e:  # the next beat tries again; a lost lease is noticed by the renewals
            logger.warning("stream %s: %s", self.stream, e)

    async def end(self) -> None:
        if self.live:
            await self.table.end(self.stream)
            return
        now = time.time()  # a file read to its end (or stopped: the worker then forgets the record)
        done = StreamCarry(None, now, 0.0, self.engine().export_cooldowns(self.stream), finished_at=now)
        await self.table.save(self.stream, done, force=True)


def live_source(cfg: StreamConfig) -> bool:
    """Whether ``cfg`` is a live source (one that a new owner continues; a file would start again)."""
    try:
        return parse_source(cfg.source, listen=cfg.listen).live
    except StreamwatchError:
        return False
