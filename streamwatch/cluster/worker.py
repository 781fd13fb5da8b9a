"""``streamwatch worker``: run the streams this worker holds leases on, publish their events to JetStream.

Every ``cluster.renew_s`` a round: renew the leases held (a failed renewal drops that stream at once),
write this worker's membership (with its CPU budget and its streams' measured costs, load.py), read
the desired set and the leases, and follow the plan (placement.py by cost once every worker publishes
a budget, else assign.py by count): claim the unleased streams that fall to it, release the ones no
longer desired, over capacity, or handed over to even the load. SIGTERM drains: the worker hands every
stream over (a last heartbeat, the lease released) and exits; the next owner continues each session
with a short ``monitoring_gap``. After ``kill -9`` its leases expire after ``cluster.lease_ttl_s``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Sequence
from functools import partial

from streamwatch.cluster.admission import worker_admission
from streamwatch.cluster.answering import Answering
from streamwatch.cluster.assign import UnleasedClock, plan
from streamwatch.cluster.carry import CarryTable
from streamwatch.cluster.connect import Names, connect, kv_bucket
from streamwatch.cluster.desired import DesiredStreams
from streamwatch.cluster.events import JetStreamPublisher, ensure_event_stream, jetstream
from streamwatch.cluster.latest import latest_bucket, publish_latest
from streamwatch.cluster.leases import Lease, LeaseTable
from streamwatch.cluster.load import CostMeter, LoadKeeper, cpu_budget
from streamwatch.cluster.members import Members
from streamwatch.cluster.placement import cost_ready, plan_by_cost, settled
from streamwatch.cluster.requests import ensure_request_stream
from streamwatch.cluster.session import CarriedSession, live_source
from streamwatch.config import Settings, StreamConfig
from streamwatch.errors import ClusterError, LeaseLost, PolicyError
from streamwatch.events.model import HealthEvent, HealthKind
from streamwatch.events.store import EventStore
from streamwatch.runtime.faults import RestartBackoff
from streamwatch.runtime.model_health import ModelNotice
from streamwatch.runtime.runner import SessionKeeping
from streamwatch.runtime.services import build_services
from streamwatch.runtime.supervisor import StreamSet
from streamwatch.server.metrics import Metrics

logger = logging.getLogger(__name__)

GIVE_UP_AFTER = 3  # a stream that fails on an unexpected error this many times in a row here goes to another worker
AVOID_S = 30.0  # and this worker does not claim it again for this long (s)


def worker_name(settings: Settings) -> str:
    """``cluster.worker_id``, else host name and process id."""
    return settings.cluster.worker_id or f"{socket.gethostname().split('.')[0]}-{os.getpid()}"


class ClusterWorker:
    """One worker of the cluster. :meth:`run` until :meth:`stop` (drain) or cancelled."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.cfg = settings.cluster
        self.id = worker_name(settings)
        self.metrics = Metrics()
        self.leases: dict[str, Lease] = {}
        self.draining = asyncio.Event()
        self.ready = asyncio.Event()
        self.clock = UnleasedClock()
        self.joined = time.time()
        self.avoid: dict[str, float] = {}  # stream → monotonic time until which this worker does not claim it
        self.held_elsewhere: set[str] = set()  # streams seen held by another worker: claiming one is a move
        meter = CostMeter(window_s=self.cfg.cost_window_s)  # placement by cost (placement.py)
        self.load = LoadKeeper(cpu_budget(self.cfg.cpu_budget), meter, cooldown_s=self.cfg.move_cooldown_s)

    def stop(self) -> None:
        """Drain: hand every stream over, then return from :meth:`run`."""
        self.draining.set()

    async def run(self) -> None:
        s, c = self.settings, self.cfg
        nc = await connect(c, name=f"streamwatch-worker-{self.id}")
        try:
            js = jetstream(nc)
            names = Names.from_config(c)
            servers = max(1, len(nc.servers))
            self.desired = DesiredStreams(await kv_bucket(js, names.desired, ttl_s=None, replicas=c.replicas))
            self.lease_table = LeaseTable(await kv_bucket(js, names.leases, ttl_s=c.lease_ttl_s, replicas=c.replicas), ttl_s=c.lease_ttl_s)
            self.members = Members(await kv_bucket(js, names.members, ttl_s=c.lease_ttl_s, replicas=c.replicas))
            self.carry = CarryTable(await kv_bucket(js, names.state, ttl_s=None, replicas=c.replicas))
            await ensure_event_stream(js, c, servers)
            await ensure_request_stream(js, c, servers, roles=c.roles)
            self.store = EventStore(
                s.data_dir, retention_days=s.store.retention_days, retention_mb=s.store.retention_mb, min_free_mb=s.store.min_free_mb
            )
            self.publisher = JetStreamPublisher(js, self.store, c)
            admission = await worker_admission(js, s, self.id, servers)
            svc = self.svc = await build_services(s, self.store, self.publisher, self.metrics, admission=admission)
            svc.frames = self.publisher.publish_frame
            self.streams = StreamSet(
                svc, self._keeper, backoff=lambda: RestartBackoff(give_up_after=GIVE_UP_AFTER), on_give_up=self._gave_up
            )
            logger.info("worker %s: capacity %d streams, CPU budget %.2f, placement by %s, lease %.1fs",
                        self.id, c.capacity, self.load.budget, c.placement, c.lease_ttl_s)  # fmt: skip
            try:
                latest_kv = await latest_bucket(js, c.name, c.replicas)
                async with asyncio.TaskGroup() as tg:
                    watcher = tg.create_task(svc.engines.watch(s.analysis.reload_s, self._config_notice))
                    sharer = tg.create_task(publish_latest(latest_kv, self.streams.ids, svc.latest))
                    self.answering = Answering(js, c, svc, self.publisher, self.desired, latest_kv, roles=c.roles)
                    answering = tg.create_task(self.answering.run())  # fans' images and questions from any gateway
                    svc.overload.targets = self.streams.ids  # analysis lag on this worker → overloaded, wider steps
                    overload = tg.create_task(svc.overload.run(svc.publish_health, svc.offsets))
                    models = None
                    if svc.models_watch is not None:  # the VLM tier's health on the streams this worker holds
                        svc.models_watch.targets = self.streams.ids
                        models = tg.create_task(svc.models_watch.run(self._model_notice))
                    await self._loop()
                    watcher.cancel()
                    sharer.cancel()
                    answering.cancel()
                    overload.cancel()
                    if models is not None:
                        models.cancel()
            finally:
                await self._drain()
                await svc.close()
                self.store.close()
        finally:
            try:
                await asyncio.wait_for(nc.drain(), 5)
            except Exception as e:  # closing is best effort: the leases expire anyway
                logger.warning("worker %s: NATS drain failed: %s", self.id, e)

    def _keeper(self, cfg: StreamConfig) -> SessionKeeping | None:
        return CarriedSession(self.carry, cfg.id, lambda: self.svc.engines.engine_for(cfg.id), self.id, live=live_source(cfg))

    async def _loop(self) -> None:
        """Renewals on their own cadence (a slow listing must never delay them), planning rounds beside them."""
        renewals = asyncio.create_task(self._renew_loop(), name=f"worker-{self.id}-renewals")
        try:
            while not self.draining.is_set():
                t0 = time.monotonic()
                try:
                    await self._round()
                except ClusterError as e:  # a listing needs the meta leader: skip this round, renewals go on
                    logger.warning("worker %s: round failed: %s", self.id, e)
                self.ready.set()
                await self._pause(t0)
        finally:
            renewals.cancel()
            await asyncio.wait({renewals})

    async def _pause(self, t0: float) -> None:
        # asyncio.timeout, not wait_for: on 3.11 wait_for swallows a cancel that comes as the event is set
        try:
            async with asyncio.timeout(max(0.05, self.cfg.renew_s - (time.monotonic() - t0))):
                await self.draining.wait()
        except TimeoutError:
            pass

    async def _renew_loop(self) -> None:
        while not self.draining.is_set():
            t0 = time.monotonic()
            await self._renew()
            await self._pause(t0)

    def _gave_up(self, sid: str) -> None:
        """``sid`` failed here :data:`GIVE_UP_AFTER` times in a row: released next round, not claimed for :data:`AVOID_S`."""
        self.avoid[sid] = time.monotonic() + AVOID_S

    async def _round(self) -> None:
        now = time.monotonic()
        for sid, until in list(self.avoid.items()):
            if sid in self.leases and sid not in self.streams:
                await self._release(sid, ended=False)
            if now >= until:
                del self.avoid[sid]
        desired = await self.desired.all()
        want = {sid: cfg for sid, cfg in desired.items() if sid not in self.avoid}
        mine_ended = tuple(sid for sid in self.leases if sid not in self.streams)  # read to the end (or never started)
        spent = {sid: sum(self.svc.cpu.spent(sid).values()) for sid in self.streams.ids()}
        costs = self.load.costs(spent, [sid for sid in self.leases if sid not in mine_ended], now)
        put = partial(self.members.put, self.id, capacity=self.cfg.capacity, streams=tuple(self.leases), since=self.joined,
                      ended=mine_ended, budget=self.load.budget, costs=costs)  # fmt: skip
        me = await put(handed=self.load.handed(now))
        holders = {sid: h.worker for sid, h in (await self.lease_table.holders()).items()}
        holders.update({sid: self.id for sid in self.leases})  # ours, even if the listing lags
        self.held_elsewhere = (self.held_elsewhere | {sid for sid, w in holders.items() if w != self.id}) & set(desired)
        members = await self.members.live()
        members[self.id] = me  # alive by definition (a listing during a NATS node loss can miss records)
        ages = self.clock.observe(set(want) - holders.keys(), time.monotonic())
        grace = max(2.0, 2 * self.cfg.renew_s)
        ended = {sid for w, m in members.items() if w != self.id for sid in m.ended if holders.get(sid) == w} | set(mine_ended)
        self.load.saw(m.costs for m in members.values())
        pinned = {sid for sid in self.leases if sid in want and not live_source(want[sid])} | self.load.pinned(now)
        receivers = settled(members, time.time(), self.cfg.rebalance_after_s) if self.cfg.rebalance else None
        by_cost = self.cfg.placement == "cost" and cost_ready(members)  # else by count (no budgets known yet)
        planner = partial(plan_by_cost, margin=self.cfg.rebalance_margin) if by_cost else plan
        todo = planner(set(want), holders, members, self.id, unleased_for=ages, grace_s=grace, receivers=receivers,
                       pinned=pinned, ended=ended)  # fmt: skip
        for sid in todo.rebalance:
            self.load.handed_over(sid, now)
            logger.info("worker %s: stream %s handed over to even the load (%d streams, %d workers)", self.id, sid, len(want), len(members))
        if todo.rebalance:  # in the record before the lease goes: whoever sees it unleased knows it was handed over
            await put(handed=self.load.handed(now))
        for sid in todo.release:
            await self._release(sid, ended=sid not in desired)
        for sid in todo.claim:
            if sid in want and await self._claim(want[sid]):
                if sid in self.held_elsewhere or any(sid in m.handed for m in members.values()):
                    # a move (handed over, drained, or its worker died): each move is a monitoring gap, so
                    # it is not moved again for the cool-down, whatever the costs say meanwhile
                    self.load.moved_in(sid, now)
                self.held_elsewhere.discard(sid)

    async def _renew(self) -> None:
        """Renew every held lease at once (a renewal may retry for up to the TTL through a NATS failover)."""

        async def renew(sid: str, lease: Lease) -> None:
            try:
                renewed = await self.lease_table.renew(lease)
            except LeaseLost as e:
                if self.leases.get(sid) is lease:
                    logger.error("worker %s: stream %s dropped at once: %s", self.id, sid, e)
                    del self.leases[sid]
                    await self.streams.abandon(sid)
                return
            if self.leases.get(sid) is lease:  # not released meanwhile
                self.leases[sid] = renewed

        await asyncio.gather(*[renew(sid, lease) for sid, lease in list(self.leases.items())])

    async def _claim(self, cfg: StreamConfig) -> bool:
        """Claim ``cfg``'s lease and start it; whether the lease is ours."""
        lease = await self.lease_table.claim(cfg.id, self.id)
        if lease is None:
            return False  # another worker was quicker
        self.leases[cfg.id] = lease
        try:
            await self.svc.engines.assign(cfg.id, cfg.policy)
        except PolicyError as e:
            logger.error("worker %s: stream %s not started, its policy cannot be loaded: %s", self.id, cfg.id, e)
            return True  # kept leased so no worker loops on it; fix the policy and re-add the stream
        if not live_source(cfg) and await self._finished(cfg.id):
            logger.info("worker %s: stream %s claimed; its file was read to the end before: not read again", self.id, cfg.id)
            return True  # held, not run: it counts as ended
        logger.info("worker %s: stream %s claimed", self.id, cfg.id)
        self.streams.start(cfg)
        return True

    async def _finished(self, sid: str) -> bool:
        try:
            carry = await self.carry.load(sid)
        except ClusterError as e:
            logger.warning("worker %s: stream %s: %s (read as not finished)", self.id, sid, e)
            return False
        return carry is not None and carry.finished_at is not None

    async def _release(self, sid: str, *, ended: bool) -> None:
        """Give ``sid`` up: removed from the desired set (ended on purpose) or handed over."""
        if ended:
            await self.streams.stop(sid)
            try:
                await self.carry.end(sid)  # removed: a file added again later is read again
            except ClusterError as e:
                logger.warning("worker %s: stream %s: %s", self.id, sid, e)
        else:
            runner = self.streams.runners.get(sid)
            await self.streams.abandon(sid)
            if runner is not None:
                await runner.handover()
        self.svc.engines.forget(sid)
        lease = self.leases.pop(sid, None)
        if lease is not None:
            await self.lease_table.release(lease)
        logger.info("worker %s: stream %s %s", self.id, sid, "ended" if ended else "handed over")

    async def _drain(self) -> None:
        """Hand every stream over and leave the membership (SIGTERM)."""
        if not hasattr(self, "streams"):
            return
        try:
            await self.members.put(self.id, capacity=self.cfg.capacity, draining=True, streams=tuple(self.leases), since=self.joined)
        except ClusterError as e:
            logger.warning("worker %s: %s", self.id, e)
        for sid in list(self.leases):
            try:
                await self._release(sid, ended=False)
            except ClusterError as e:
                logger.warning("worker %s: stream %s: %s (its lease expires instead)", self.id, sid, e)
        await self.streams.abandon_all()
        try:
            await self.members.leave(self.id)
        except ClusterError as e:
            logger.warning("worker %s: %s", self.id, e)

    async def _model_notice(self, notice: ModelNotice, streams: Sequence[str]) -> None:
        for sid in streams:
            await self.publisher.publish(HealthEvent(stream=sid, at=notice.at, offset=self.svc.offsets.get(sid, 0.0),
                                                     kind=HealthKind.MODEL, active=notice.active, reason=notice.reason))  # fmt: skip

    async def _config_notice(self, streams: list[str], reason: str) -> None:
        for sid in streams:
            ev = HealthEvent(stream=sid, at=time.time(), offset=self.svc.offsets.get(sid, 0.0), kind=HealthKind.CONFIG, reason=reason)
            await self.publisher.publish(ev)
