"""Event bus: store first, then fan out to subscribers, in id order, without ever blocking on a client.

One writer task takes whatever was published since its last round (group commit: one SQLite
transaction per round, so throughput grows with load while an idle bus commits each event at once),
commits it in a single-thread executor, then hands the stored events to every subscription. A
subscription is a bounded queue of pending chunks of wire texts; when a client falls that far behind it is marked
lagging and its connection closes (the client resumes with ``since``). Publishers wait when the
publish queue is full: events are never dropped.

When the store takes no writes (a full disk: :class:`~streamwatch.errors.StorageError`) events are not
lost and not late: they are delivered live at once, without an ``id`` and marked ``"unsaved": true``, and
held in memory (up to ``hold_max``, the oldest dropped beyond) until a write succeeds again, then stored
with their ids (a client that resumes with ``since`` gets them again, then with ids). Publishers get
them back with id 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor

from streamwatch.errors import EventsError, StorageError
from streamwatch.events.codec import encode_body
from streamwatch.events.model import Event
from streamwatch.events.store import EventStore, StoredEvent
from streamwatch.runtime.cpu_account import CpuAccount, Stage, weights

logger = logging.getLogger(__name__)

Listener = Callable[[Sequence[StoredEvent]], None]


class Chunk:
    """Wire texts of one commit round for one filter, shared by every subscription with that filter,
    so the frame is built and encoded once however many clients get it (``frame`` is the cache)."""

    __slots__ = ("frame", "texts")

    def __init__(self, texts: list[str]) -> None:
        self.texts = texts
        self.frame: bytes | None = None


class Subscription:
    """What one client wants (types, streams, owner) and the chunks waiting to be sent to it."""

    __slots__ = ("count", "key", "lagging", "limit", "owner", "pending", "streams", "types", "wake")

    def __init__(self, types: Iterable[str], streams: Iterable[str] | None, owner: str | None, limit: int) -> None:
        self.types = frozenset(types)
        self.streams = frozenset(streams) if streams is not None else None
        self.owner = owner
        self.key = (self.types, self.streams, owner)
        self.limit = limit
        self.pending: deque[Chunk] = deque()
        self.count = 0  # events pending
        self.wake = asyncio.Event()
        self.lagging = False

    def select(self, batch: Sequence[StoredEvent]) -> list[str]:
        types, streams, owner = self.types, self.streams, self.owner
        return [
            e.text for e in batch if e.type in types and (streams is None or e.stream in streams) and (owner is None or e.owner == owner)
        ]

    def offer(self, chunk: Chunk) -> None:
        if self.lagging:
            return
        n = len(chunk.texts)
        if self.count + n > self.limit:
            self.lagging = True
            self.pending.clear()
            self.count = 0
        else:
            self.pending.append(chunk)
            self.count += n
        self.wake.set()

    def take(self, max_events: int) -> list[Chunk]:
        """Pending chunks, oldest first, up to about ``max_events`` events (at least one chunk)."""
        out: list[Chunk] = []
        n = 0
        while self.pending and (not out or n + len(self.pending[0].texts) <= max_events):
            chunk = self.pending.popleft()
            out.append(chunk)
            n += len(chunk.texts)
        self.count -= n
        if not self.pending:
            self.wake.clear()
        return out


class EventBus:
    """Publish events (stored, then broadcast). Start with :meth:`start`, stop with :meth:`stop`."""

    def __init__(
        self,
        store: EventStore,
        *,
        max_batch: int = 2000,
        queue_size: int = 20000,
        checkpoint_s: float = 1.0,
        retention_s: float = 3600.0,
        hold_max: int = 20000,
    ) -> None:
        self.store = store
        self.held: deque[Event] = deque()  # delivered live, not stored yet (the store took no writes)
        self.hold_max = hold_max
        self.dropped = 0  # held events dropped (over hold_max): never stored
        self.max_batch = max_batch
        self._queue: asyncio.Queue[tuple[Event, asyncio.Future[StoredEvent]] | None] = asyncio.Queue(queue_size)
        self._subs: set[Subscription] = set()
        self._listeners: list[Listener] = []
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="event-store")
        self._task: asyncio.Task[None] | None = None
        self._housekeeping: asyncio.Task[None] | None = None
        self.checkpoint_s = checkpoint_s
        self.retention_s = retention_s
        self.last_id = store.last_id()  # last id handed to subscribers
        self.cpu: CpuAccount | None = None  # commit and fan-out CPU time, shared by the events' streams

    def add_listener(self, fn: Listener) -> None:
        """Call ``fn`` with each committed batch (metrics, stream status). Must not block."""
        self._listeners.append(fn)

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="event-bus")
            self._housekeeping = asyncio.create_task(self._housekeep(), name="event-store-housekeeping")

    async def stop(self) -> None:
        """Commit and broadcast everything already published, then stop."""
        if self._housekeeping is not None:
            self._housekeeping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._housekeeping
            self._housekeeping = None
        if self._task is not None:
            await self._queue.put(None)
            await self._task
            self._task = None
        self._executor.shutdown(wait=True)

    async def publish(self, event: Event) -> StoredEvent:
        """Store ``event`` and broadcast it; returns once it is committed (with its id)."""
        if self._task is None:
            raise EventsError("event bus is not running")
        fut: asyncio.Future[StoredEvent] = asyncio.get_running_loop().create_future()
        await self._queue.put((event, fut))
        return await asyncio.shield(fut)

    def subscribe(self, types: Iterable[str], streams: Iterable[str] | None, owner: str | None, limit: int) -> Subscription:
        """Register a subscription that gets every event committed after :attr:`last_id`."""
        sub = Subscription(types, streams, owner, limit)
        self._subs.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self._subs.discard(sub)

    @property
    def subscriptions(self) -> int:
        return len(self._subs)

    async def read(self, after: int, upto: int, sub: Subscription, limit: int) -> list[StoredEvent]:
        """Stored events for a replay, read off the event loop."""
        types, streams, owner = sub.types, sub.streams, sub.owner
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            None, lambda: self.store.read(after, upto=upto, limit=limit, types=types, streams=streams, owner=owner)
        )

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        stopping = False
        while not stopping:
            items: list[tuple[Event, asyncio.Future[StoredEvent]]] = []
            try:  # while events are held, a write is tried every checkpoint_s even when nothing is published
                async with asyncio.timeout(self.checkpoint_s if self.held else None):
                    item = await self._queue.get()
            except TimeoutError:
                pass
            else:
                while item is not None:
                    items.append(item)
                    if len(items) >= self.max_batch or self._queue.empty():
                        break
                    item = self._queue.get_nowait()
                stopping = item is None
            if not items and not self.held:
                continue
            events = [ev for ev, _ in items]
            held = list(self.held)
            try:
                stored = await loop.run_in_executor(self._executor, self._append, held + events)
            except StorageError as e:
                self._hold(items, e)
                if stopping and self.held:
                    logger.error("event store takes no writes at exit: %d events delivered live were never stored", len(self.held))
                continue
            except EventsError as e:
                logger.exception("event store write failed; %d events not broadcast", len(events))
                for _, fut in items:
                    if not fut.done():
                        fut.set_exception(e)
                continue
            if held:
                self._stored_held(stored[: len(held)])
            stored = stored[len(held) :]
            for (_, fut), st in zip(items, stored, strict=True):
                if not fut.done():
                    fut.set_result(st)
            if stored:
                self._fan_out(stored)

    def _hold(self, items: list[tuple[Event, asyncio.Future[StoredEvent]]], e: StorageError) -> None:
        """The store took no writes: deliver ``items`` live now (unsaved) and keep them for a later write."""
        if items and not self.held:
            logger.warning("event store takes no writes (%s): events are delivered unsaved and held in memory", e)
        unsaved = []
        for ev, fut in items:
            self.held.append(ev)
            body = encode_body(ev)
            st = StoredEvent(0, ev.TYPE, ev.stream, ev.owner, f'{{"unsaved":true,{body[1:]}')
            unsaved.append(st)
            if not fut.done():
                fut.set_result(st)
        while len(self.held) > self.hold_max:  # bounded: the oldest held event is lost
            self.held.popleft()
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                logger.error("%d held events dropped: the store has taken no writes for too long", self.dropped)
        if unsaved:
            self._deliver_unsaved(unsaved)

    def _stored_held(self, stored: Sequence[StoredEvent]) -> None:
        """Held events are stored now (delivered live before): replays reach them, subscribers do not get them twice."""
        self.held.clear()
        self.last_id = stored[-1].id
        logger.warning("event store takes writes again: %d held events stored", len(stored))

    def _deliver_unsaved(self, batch: Sequence[StoredEvent]) -> None:
        """Fan out events that could not be stored (no id; :attr:`last_id` does not move)."""
        for sub in self._subs:
            texts = sub.select(batch)
            if texts:
                sub.offer(Chunk(texts))
        for fn in self._listeners:
            try:
                fn(batch)
            except Exception:
                logger.exception("event listener failed")

    def deliver(self, stored: Sequence[StoredEvent]) -> None:
        """Fan out events committed by someone else with their own ids (a cluster gateway's follower).

        Call on the event loop right after the commit, without an await in between, in id order; events
        at or below :attr:`last_id` are ignored. Do not mix with :meth:`publish` on the same store (both
        would assign ids). Replays read the store up to :attr:`last_id`, which moves only here, after the
        commit: a client never misses or doubles an event at the replay/live seam.
        """
        fresh = [s for s in stored if s.id > self.last_id]
        if fresh:
            self._fan_out(fresh)

    async def _housekeep(self) -> None:
        """Every ``checkpoint_s``, off the loop: a WAL checkpoint, room made when the free-space floor
        or the size cap is crossed, a write probe while evidence files fail; retention by age every
        ``retention_s``."""
        loop = asyncio.get_running_loop()
        last_prune = float("-inf")
        store = self.store
        while True:
            await asyncio.sleep(self.checkpoint_s)
            try:
                if store.health.failing("files"):  # nothing else may write a file before space is back
                    await loop.run_in_executor(None, store.probe)
                if loop.time() - last_prune >= self.retention_s:
                    last_prune = loop.time()
                    await loop.run_in_executor(None, store.prune)
                elif store.min_free_mb is not None and await loop.run_in_executor(None, store.space_needed) > 0:
                    await loop.run_in_executor(None, functools.partial(store.prune, by_age=False, by_size=False))
                await loop.run_in_executor(None, store.checkpoint)
            except StorageError as e:  # said by the streams' storage health events; the bus holds the events
                logger.debug("event store housekeeping: %s", e)
            except EventsError:
                logger.exception("event store housekeeping failed")
            except Exception:
                logger.exception("event store housekeeping failed unexpectedly")

    def _append(self, events: list[Event]) -> list[StoredEvent]:
        t0 = time.thread_time()
        try:
            return self.store.append(events)
        finally:
            if self.cpu is not None:
                self._count(Stage.STORE, [e.stream for e in events], time.thread_time() - t0)

    def _count(self, stage: str, streams: list[str], seconds: float) -> None:
        assert self.cpu is not None
        self.cpu.share(weights(streams, [1.0] * len(streams)), stage, seconds)

    def _fan_out(self, stored: Sequence[StoredEvent]) -> None:
        t0 = time.thread_time()
        try:
            self._fan_out_now(stored)
        finally:
            if self.cpu is not None:
                self._count(Stage.DELIVERY, [e.stream for e in stored], time.thread_time() - t0)

    def _fan_out_now(self, stored: Sequence[StoredEvent]) -> None:
        self.last_id = stored[-1].id
        chunks: dict[object, Chunk | None] = {}
        for sub in self._subs:
            if sub.key in chunks:
                chunk = chunks[sub.key]
            else:
                texts = sub.select(stored)
                chunk = chunks[sub.key] = Chunk(texts) if texts else None
            if chunk is not None:
                sub.offer(chunk)
        for fn in self._listeners:
            try:
                fn(stored)
            except Exception:
                logger.exception("event listener failed")
