"""``streamwatch gateway``: serve ``/ws``, the overlay, the console and reports for every stream of the cluster.

A gateway follows the JetStream event log into its own SQLite store (a materialised view whose ids
are the JetStream sequences, resumable from the last one it holds: see
:class:`~streamwatch.cluster.follow.Follower`), so ``since`` resume, replay and reports work the same
on every gateway and across gateway restarts. What clients publish here (reviews, votes) goes to the
log too (:class:`GatewayBus`) and comes back through the follower, so every gateway has it under
the same id. Streams are added and removed in the cluster's desired set (KV); workers pick them up.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from nats.js import JetStreamContext

from streamwatch.analysis.model import AnalyzedFrame
from streamwatch.cluster.carry import CarryTable
from streamwatch.cluster.connect import Names, connect, kv_bucket
from streamwatch.cluster.desired import DesiredStreams
from streamwatch.cluster.events import JetStreamPublisher, ensure_event_stream, jetstream
from streamwatch.cluster.follow import Follower
from streamwatch.cluster.intake import ClusterIntake
from streamwatch.cluster.latest import follow_latest, latest_bucket
from streamwatch.cluster.leases import LeaseTable
from streamwatch.cluster.requests import RequestQueue, ensure_request_stream
from streamwatch.cluster.screening import FanLimits, SeenImages
from streamwatch.config import Settings, StreamConfig
from streamwatch.errors import ClusterError, ConfigError, EventsError
from streamwatch.events.bus import EventBus
from streamwatch.events.codec import iso
from streamwatch.events.model import Event, HealthEvent, HealthKind, StreamState
from streamwatch.events.store import EventStore, StoredEvent
from streamwatch.server.control import stream_json
from streamwatch.server.metrics import Metrics
from streamwatch.server.server import EventServer

logger = logging.getLogger(__name__)

UNWATCHED_REASON = "no worker holds it: every worker gone or full"

FOLLOW_WAIT_S = 15.0  # how long a client's publish waits to see its event come back through the follower


class GatewayBus(EventBus):
    """The bus of a gateway: :meth:`publish` appends to the cluster log and returns once the follower
    has stored and delivered the event locally (so a client's own review is in the store it reads)."""

    def __init__(self, store: EventStore, publisher: JetStreamPublisher) -> None:
        super().__init__(store)
        self.publisher = publisher
        self._waiting: dict[int, list[asyncio.Future[None]]] = {}

    async def publish(self, event: Event) -> StoredEvent:
        stored = await self.publisher.publish(event)
        if stored.id > self.last_id:
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiting.setdefault(stored.id, []).append(fut)
            try:
                async with asyncio.timeout(FOLLOW_WAIT_S):
                    await fut
            except TimeoutError as e:
                raise EventsError(f"event {stored.id} was stored in the cluster but not followed here within {FOLLOW_WAIT_S:g}s") from e
        return stored

    def deliver(self, stored: Sequence[StoredEvent]) -> None:
        super().deliver(stored)
        for seq in [s for s in self._waiting if s <= self.last_id]:
            for fut in self._waiting.pop(seq):
                if not fut.done():
                    fut.set_result(None)


class Gateway:
    """One gateway. :meth:`run` until :meth:`stop`. Implements the server's StreamControl over the desired set."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.cfg = settings.cluster
        self.metrics = Metrics()
        self.server: EventServer | None = None
        self.ready = asyncio.Event()
        self.stopping = asyncio.Event()
        self._desired: dict[str, StreamConfig] = {}
        self._holders: dict[str, str] = {}
        self._unheld: dict[str, float] = {}  # stream id → monotonic time first seen without a lease
        self._saying: set[asyncio.Task[None]] = set()  # `unwatched` events being put in the log
        self.latest: dict[str, AnalyzedFrame] = {}  # the console's tiles: each stream's latest analysed frame

    def stop(self) -> None:
        self.stopping.set()

    async def run(self) -> None:
        s, c = self.settings, self.cfg
        nc = await connect(c, name="streamwatch-gateway")
        try:
            js = jetstream(nc)
            names = Names.from_config(c)
            self.desired = DesiredStreams(await kv_bucket(js, names.desired, ttl_s=None, replicas=c.replicas))
            self.leases = LeaseTable(await kv_bucket(js, names.leases, ttl_s=c.lease_ttl_s, replicas=c.replicas), ttl_s=c.lease_ttl_s)
            self.carry = CarryTable(await kv_bucket(js, names.state, ttl_s=None, replicas=c.replicas))
            await ensure_event_stream(js, c, max(1, len(nc.servers)))
            await ensure_request_stream(js, c, max(1, len(nc.servers)))
            self.store = EventStore(
                s.data_dir, retention_days=s.store.retention_days, retention_mb=s.store.retention_mb, min_free_mb=s.store.min_free_mb
            )
            bus = self.bus = GatewayBus(self.store, JetStreamPublisher(js, self.store, c))
            self.intake = await _intake(js, s, names, bus.publisher, self._offset)
            follower = self.follower = Follower(js, self.store, bus, c)
            await bus.start()
            follower.start()
            latest = asyncio.create_task(follow_latest(await latest_bucket(js, c.name, c.replicas), self.latest))
            try:
                await self._refresh()
                self.server = EventServer(
                    s.server,
                    bus,
                    metrics=self.metrics,
                    streams=list(self._desired),
                    control=self,
                    forwarder=self.intake,
                    latest=self.latest.get,
                    offsets=self._offset,
                )
                await self.server.start()
                self.ready.set()
                while not self.stopping.is_set():
                    try:  # (asyncio.timeout: on 3.11 wait_for can swallow a cancel that comes as the event is set)
                        async with asyncio.timeout(c.renew_s):
                            await self.stopping.wait()
                    except TimeoutError:
                        pass
                    try:
                        await self._refresh()
                    except ClusterError as e:
                        logger.warning("gateway: cannot read the desired set: %s", e)
            finally:
                latest.cancel()
                for task in list(self._saying):
                    task.cancel()
                if self.server is not None:
                    await self.server.stop()
                await follower.stop()
                await bus.stop()
                self.store.close()
        finally:
            try:
                await asyncio.wait_for(nc.drain(), 5)
            except Exception as e:
                logger.warning("gateway: NATS drain failed: %s", e)

    async def _refresh(self) -> None:
        """The desired set and lease holders; streams added or removed elsewhere join or leave this server's view."""
        self._desired = await self.desired.all()
        self._holders = {sid: h.worker for sid, h in (await self.leases.holders()).items()}
        for sid in self._mark_unwatched(time.monotonic()):
            task = asyncio.create_task(self._say_unwatched(sid), name=f"unwatched-{sid}")  # (a NATS election must not hold the refresh)
            self._saying.add(task)
            task.add_done_callback(self._saying.discard)
        if self.server is not None:
            known = self.server.streams
            for sid in set(self._desired) - known:
                known.add(sid)
                self.server.removed.discard(sid)
                self.server.status.setdefault(sid, {"state": "unknown"})
            for sid in known - set(self._desired):
                known.discard(sid)
                self.server.removed.add(sid)
                self.server.status.pop(sid, None)

    def _mark_unwatched(self, now: float) -> list[str]:
        """A desired stream no worker has held for ``lease_ttl_s`` shows as ``unwatched`` (all workers
        gone, or none with room); when a worker holds it again it shows ``unknown`` until its first state event.
        Returns the streams that have just become unwatched."""
        newly: list[str] = []
        for sid in list(self._unheld):
            if sid in self._holders or sid not in self._desired:
                del self._unheld[sid]
                entry = self.server.status.get(sid) if self.server is not None else None
                if entry is not None and entry.get("state") == "unwatched":
                    entry.update(state="unknown", reason="a worker holds it again")
        for sid in set(self._desired) - set(self._holders):
            since = self._unheld.setdefault(sid, now)
            if self.server is not None and now - since >= self.cfg.lease_ttl_s:
                entry = self.server.status.setdefault(sid, {"state": "unknown"})
                if entry.get("state") not in ("unwatched", "stopped", "ended"):  # a finished file stays finished
                    logger.warning("stream %s: no worker holds it (for %.0fs): unwatched", sid, now - since)
                    at = iso(time.time() - (now - since))
                    entry.update(state="unwatched", since=at, reason=UNWATCHED_REASON)
                    newly.append(sid)
        return newly

    async def _say_unwatched(self, sid: str) -> None:
        """Put ``unwatched`` in the log, once for the cluster: the event is built from the carried state
        (the last heartbeat: when and where in the show nobody watched any more), so every gateway builds
        the same one and JetStream keeps the first (Nats-Msg-Id). Nothing is said for a stream never
        watched, a finished file, or one already said unwatched from that heartbeat (a restarted gateway)."""
        try:
            carry = await self.carry.load(sid)
        except ClusterError as e:
            logger.warning("stream %s: unwatched, but its carried state cannot be read: %s", sid, e)
            return
        if carry is None or carry.finished_at is not None or carry.session_started_at is None:
            return
        ev = HealthEvent(
            stream=sid,
            at=carry.heartbeat_at,
            offset=carry.heartbeat_offset,
            kind=HealthKind.STATE,
            state=StreamState.UNWATCHED,
            reason=UNWATCHED_REASON,
        )
        loop = asyncio.get_running_loop()
        since = await loop.run_in_executor(None, functools.partial(self.store.events, sid, start=carry.heartbeat_at - 1.0))
        if any(isinstance(e, HealthEvent) and e.state is StreamState.UNWATCHED and abs(e.at - ev.at) < 0.01 for e in since):
            return
        try:
            await self.bus.publisher.publish(ev)
        except ClusterError as e:
            logger.warning("stream %s: unwatched, not put in the log: %s", sid, e)

    # --- StreamControl ------------------------------------------------------------------------------

    async def add_stream(self, cfg: StreamConfig, by: str) -> None:
        if cfg.listen:
            raise ConfigError("listen mode is not available in cluster mode: publish to a media server and add its pull URL")
        try:
            await self.desired.add(cfg)
        except ClusterError as e:
            raise ConfigError(f"the cluster cannot take the change now, try again: {e}") from e
        self._desired[cfg.id] = cfg
        logger.info("stream %s added to the cluster by %s", cfg.id, by)

    async def remove_stream(self, stream_id: str, by: str) -> None:
        try:
            await self.desired.remove(stream_id)
        except ClusterError as e:
            raise ConfigError(f"the cluster cannot take the change now, try again: {e}") from e
        self._desired.pop(stream_id, None)
        logger.info("stream %s removed from the cluster by %s", stream_id, by)

    def list_streams(self) -> list[dict[str, Any]]:
        status = self.server.status if self.server is not None else {}
        return [
            stream_json(cfg, origin="cluster", state=str(status.get(sid, {}).get("state", "unknown")), worker=self._holders.get(sid))
            for sid, cfg in sorted(self._desired.items())
        ]

    def _offset(self, sid: str) -> float:
        frame = self.latest.get(sid)
        return frame.analysis.offset if frame is not None else 0.0


async def _intake(
    js: JetStreamContext, s: Settings, names: Names, publisher: JetStreamPublisher, offsets: Callable[[str], float]
) -> ClusterIntake:
    """Fans' images and questions to the workers, with cluster-wide rate limits and duplicate checks."""
    c, srv = s.cluster, s.server
    refill_s = srv.user_submit_burst / (srv.user_submit_per_min / 60.0)  # an expired bucket is a full one
    fans = await kv_bucket(js, names.fans, ttl_s=refill_s + 1.0, replicas=c.replicas)
    seen = await kv_bucket(js, names.seen, ttl_s=s.vlm.duplicate_ttl_s, replicas=c.replicas)
    return ClusterIntake(
        RequestQueue(js, c),
        publisher,
        FanLimits(fans, srv.user_submit_per_min, srv.user_submit_burst),
        SeenImages(seen, s.vlm.duplicate_ttl_s),
        max_side=s.analysis.max_side,
        offsets=offsets,
    )
