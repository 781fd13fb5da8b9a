"""A gateway's materialised view of the cluster's event log (:mod:`streamwatch.cluster.events`).

:class:`Follower` reads the events stream from ``local_store.high_water() + 1`` (so a restarted
gateway resumes where its SQLite ends, even after local retention pruned its newest rows), fetches
the evidence objects each event names into the local frames folder, commits each fetched batch in
one transaction with the JetStream sequences as ids
(:meth:`EventStore.append_ids`), then hands it to the bus's WebSocket subscribers
(:meth:`EventBus.deliver`). The frames stream goes the same way into the search index. Sequences
missing from the log (aged out) are simply gaps; nothing is ever inserted out of order.

Reading uses an ephemeral, in-memory, ack-less pull consumer started at the next sequence; when it is
lost (its server stopped, the connection reconnected) a new one is created from the same point.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import nats.errors
import nats.js.errors
import numpy as np
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.object_store import ObjectStore

from streamwatch.cluster.events import names, reraise_cancel
from streamwatch.config import ClusterConfig
from streamwatch.errors import EventsError
from streamwatch.events.bus import EventBus
from streamwatch.events.codec import decode
from streamwatch.events.model import Event
from streamwatch.events.store import EventStore

logger = logging.getLogger(__name__)

Handler = Callable[[list[Msg]], Awaitable[None]]


class Follower:
    """Follow the log into ``store`` and ``bus``. ``batch``: messages per fetch (one SQLite transaction);
    ``idle_s``: fetch wait when caught up; ``check_s``: how long idle before checking the consumer is alive."""

    def __init__(
        self, js: JetStreamContext, store: EventStore, bus: EventBus, cfg: ClusterConfig, *, batch: int = 256, idle_s: float = 1.0
    ) -> None:
        self.js = js
        self.store = store
        self.bus = bus
        self.cfg = cfg
        self.batch = batch
        self.idle_s = idle_s
        self.check_s = 3.0
        self.events_stream, self.frames_stream, self.bucket = names(cfg)
        self.last_seq = 0  # newest event sequence committed locally
        self.followed = 0  # events committed by this follower
        self.missing = 0  # evidence objects not found in the bucket
        self._obs: ObjectStore | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name="cluster-follower")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def run(self) -> None:
        """Follow both streams until cancelled."""
        loop = asyncio.get_running_loop()
        self.last_seq = await loop.run_in_executor(None, self.store.high_water)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._consume(self.events_stream, f"{self.cfg.name}.ev.>", self.store.high_water, self._on_events))
            tg.create_task(
                self._consume(self.frames_stream, f"{self.cfg.name}.fr.>", lambda: self.store.high_water("frames"), self._on_frames)
            )

    async def _consume(self, stream: str, subject: str, last: Callable[[], int], handle: Handler) -> None:
        loop = asyncio.get_running_loop()
        next_seq = await loop.run_in_executor(None, last) + 1
        pause = 0.1
        while True:
            try:
                cc = ConsumerConfig(
                    deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                    opt_start_seq=next_seq,
                    ack_policy=AckPolicy.NONE,
                    inactive_threshold=30.0,
                    mem_storage=True,
                    num_replicas=1,
                )
                sub = await self.js.pull_subscribe(subject, stream=stream, config=cc)
            except (nats.errors.Error, OSError) as e:
                reraise_cancel()
                logger.warning("cannot follow %s from %d: %s; retrying in %.1fs", stream, next_seq, type(e).__name__, pause)
                await asyncio.sleep(pause)
                pause = min(pause * 2, 2.0)
                continue
            pause = 0.1
            idle_since = loop.time()
            try:
                while True:
                    reraise_cancel()
                    try:
                        msgs = await sub.fetch(self.batch, timeout=self.idle_s)
                    except nats.errors.TimeoutError:
                        reraise_cancel()
                        if loop.time() - idle_since >= self.check_s:
                            await sub.consumer_info()  # raises when the consumer is gone
                            idle_since = loop.time()
                        continue
                    idle_since = loop.time()
                    fresh = sorted((m for m in msgs if m.metadata.sequence.stream >= next_seq), key=lambda m: m.metadata.sequence.stream)
                    if fresh:
                        await handle(fresh)
                        next_seq = fresh[-1].metadata.sequence.stream + 1
            except EventsError:  # the local store refused the batch: read it again from next_seq
                reraise_cancel()
                logger.exception("cannot store what was followed from %s at %d; retrying in 1s", stream, next_seq)
                await asyncio.sleep(1.0)
            except (nats.errors.Error, OSError) as e:
                reraise_cancel()
                # a timeout (a busy or re-electing server) is routine: the new consumer resumes at next_seq
                level = logging.INFO if isinstance(e, TimeoutError) else logging.WARNING
                logger.log(level, "following %s stopped at %d (%s); starting a new consumer", stream, next_seq, type(e).__name__)
            finally:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()

    # --- events --------------------------------------------------------------------------------

    async def _on_events(self, msgs: list[Msg]) -> None:
        items: list[tuple[int, Event]] = []
        for m in msgs:
            seq = m.metadata.sequence.stream
            try:
                event = decode(m.data.decode())
            except (EventsError, ValueError) as e:
                logger.error("event %d in %s is unreadable, skipped: %s", seq, self.events_stream, e)
                continue
            for rel in event.files():
                await self._fetch(rel)
            items.append((seq, event))
        if not items:
            return
        loop = asyncio.get_running_loop()
        stored = await loop.run_in_executor(None, self.store.append_ids, items)
        self.bus.deliver(stored)  # no await since the commit: see EventBus.deliver
        self.followed += len(stored)
        self.last_seq = items[-1][0]

    def _local(self, rel: str) -> Path | None:
        if not rel or rel.startswith("/") or "\\" in rel or "\0" in rel:
            return None
        root = self.store.frames_dir.resolve()
        path = (root / rel).resolve()
        return path if path.is_relative_to(root) else None

    async def _fetch(self, rel: str) -> None:
        """Copy one evidence object into the local frames folder (kept if already there)."""
        path = self._local(rel)
        if path is None:
            logger.warning("evidence path %r refused", rel)
            return
        if path.is_file():
            return
        try:
            if self._obs is None:
                self._obs = await self.js.object_store(self.bucket)
            result = await self._obs.get(rel)
        except nats.js.errors.NotFoundError:
            self.missing += 1
            logger.warning("evidence %s is not in bucket %s; the event is kept without it", rel, self.bucket)
            return
        await asyncio.get_running_loop().run_in_executor(None, _write, path, result.data or b"")

    # --- frames --------------------------------------------------------------------------------

    async def _on_frames(self, msgs: list[Msg]) -> None:
        rows = []
        for m in msgs:
            try:
                d = json.loads(m.data)
                emb = np.frombuffer(base64.b64decode(d["embedding"]), np.float16).astype(np.float32)
                rows.append((m.metadata.sequence.stream, d, emb))
            except (ValueError, KeyError, TypeError) as e:
                logger.error("frame %d in %s is unreadable, skipped: %s", m.metadata.sequence.stream, self.frames_stream, e)
                continue
            if d.get("thumb"):
                await self._fetch(d["thumb"])

        def insert(rows: Sequence[tuple[int, dict[str, object], np.ndarray]]) -> None:
            for seq, d, emb in rows:
                tags = d.get("tags") or []
                self.store.add_frame(
                    str(d["stream"]),
                    float(d["offset"]),  # type: ignore[arg-type]
                    float(d["at"]),  # type: ignore[arg-type]
                    str(d["thumb"]) if d.get("thumb") else None,
                    str(d["model"]),
                    tuple(str(t) for t in tags) if isinstance(tags, list) else (),
                    emb,
                    frame_id=seq,
                )

        await asyncio.get_running_loop().run_in_executor(None, insert, rows)


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    tmp.write_bytes(data)
    os.replace(tmp, path)
