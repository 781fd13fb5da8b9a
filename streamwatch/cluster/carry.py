"""The state a new owner of a stream carries on, in a KV bucket (no TTL), written by the owner.

When a worker dies, the next owner of its streams loads this to continue the same session (the
show clock), report the unwatched window as a monitoring gap (from the last heartbeat) and not
repeat alerts still in cooldown. Key ``stream_key(stream id)``, value JSON of :class:`StreamCarry`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

import nats.js.errors
from nats.js.kv import KeyValue

from streamwatch.cluster.kv import NATS_ERRORS, stream_key
from streamwatch.errors import ClusterError

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class StreamCarry:
    """One stream's carried state.

    ``session_started_at``: wall time (s since the epoch) the open session began (None: no open
    session); ``heartbeat_at``: wall time the owner last knew it was watching, at show time
    ``heartbeat_offset`` (s); ``cooldowns``: rule key → last seen time, from
    ``RuleEngine.export_cooldowns``; ``latest_frame_jpeg_key``: object-store key of the latest frame;
    ``finished_at``: wall time a file source was read to its end (a new owner does not read it again).
    """

    session_started_at: float | None
    heartbeat_at: float
    heartbeat_offset: float
    cooldowns: Mapping[str, float] = field(default_factory=dict)
    latest_frame_jpeg_key: str | None = None
    finished_at: float | None = None

    def to_json(self) -> bytes:
        d = asdict(self)
        d["cooldowns"] = dict(self.cooldowns)
        return json.dumps(d).encode()

    @classmethod
    def from_json(cls, data: bytes) -> StreamCarry:
        """Raises ValueError on anything but a record written by :meth:`to_json`."""
        try:
            d = json.loads(data)
            started = d["session_started_at"]
            frame = d.get("latest_frame_jpeg_key")
            finished = d.get("finished_at")
            return cls(
                session_started_at=None if started is None else float(started),
                heartbeat_at=float(d["heartbeat_at"]),
                heartbeat_offset=float(d["heartbeat_offset"]),
                cooldowns={str(k): float(v) for k, v in (d.get("cooldowns") or {}).items()},
                latest_frame_jpeg_key=None if frame is None else str(frame),
                finished_at=None if finished is None else float(finished),
            )
        except (KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"not a stream carry record: {e!r}") from e


class CarryTable:
    """Carried state in ``kv``; :meth:`save` writes one stream at most every ``min_interval_s`` s."""

    def __init__(self, kv: KeyValue, *, min_interval_s: float = 1.0) -> None:
        self.kv = kv
        self.min_interval_s = min_interval_s
        self._written: dict[str, float] = {}  # stream → monotonic time of its last write

    async def save(self, stream: str, carry: StreamCarry, *, force: bool = False) -> bool:
        """Write ``carry`` for ``stream`` (by its owner); False when skipped because the last write
        was less than ``min_interval_s`` ago (``force`` writes anyway: a new alert, a session start).
        Raises :class:`ClusterError` when NATS fails."""
        now = time.monotonic()
        last = self._written.get(stream)
        if not force and last is not None and now - last < self.min_interval_s:
            return False
        try:
            await self.kv.put(stream_key(stream), carry.to_json())
        except NATS_ERRORS as e:
            raise ClusterError(f"stream {stream}: cannot save its carried state: {e!r}") from e
        self._written[stream] = now
        return True

    async def load(self, stream: str) -> StreamCarry | None:
        """The carried state of ``stream``; None when there is none (or it is unreadable: logged).
        Raises :class:`ClusterError` when NATS fails."""
        try:
            entry = await self.kv.get(stream_key(stream))
        except nats.js.errors.KeyNotFoundError:
            return None
        except NATS_ERRORS as e:
            raise ClusterError(f"stream {stream}: cannot load its carried state: {e!r}") from e
        try:
            return StreamCarry.from_json(entry.value or b"")
        except ValueError as e:
            logger.warning("stream %s: carried state unreadable, starting afresh: %s", stream, e)
            return None

    async def end(self, stream: str) -> None:
        """The session of ``stream`` ended on purpose: forget its carried state. Raises
        :class:`ClusterError` when NATS fails."""
        self._written.pop(stream, None)
        try:
            await self.kv.delete(stream_key(stream))
        except NATS_ERRORS as e:
            raise ClusterError(f"stream {stream}: cannot end its carried state: {e!r}") from e
