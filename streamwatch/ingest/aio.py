"""asyncio adapter: runs a blocking :class:`FrameReader` in its own thread behind a bounded queue.

Drop policy (explicit, counted): live sources drop the **oldest** queued frame when the consumer
falls behind (:attr:`DropPolicy.DROP_OLDEST`); files make the reader wait (:attr:`DropPolicy.WAIT`).
Health events are never dropped.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import threading
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass

from streamwatch.ingest.frame import Frame
from streamwatch.ingest.reader import FrameReader, Item, ReaderStats

logger = logging.getLogger(__name__)


class DropPolicy(enum.Enum):
    DROP_OLDEST = "drop_oldest"
    WAIT = "wait"


@dataclass(frozen=True, slots=True)
class _End:
    error: BaseException | None


class FrameQueue:
    """A bounded frame queue fed from a thread; ``dropped`` counts frames thrown away."""

    def __init__(self, loop: asyncio.AbstractEventLoop, maxsize: int, policy: DropPolicy, stats: ReaderStats | None = None) -> None:
        self._loop, self.maxsize, self.policy = loop, maxsize, policy
        self._stats = stats
        self._items: deque[Item | _End] = deque()
        self._frames = 0
        self._ready = asyncio.Event()
        self._slots = threading.Semaphore(maxsize)
        self.dropped = 0

    # producer side (reader thread)
    def put_threadsafe(self, item: Item | _End, stop: threading.Event) -> None:
        if self.policy is DropPolicy.WAIT and isinstance(item, Frame):
            while not self._slots.acquire(timeout=0.2):
                if stop.is_set():
                    return
        self._loop.call_soon_threadsafe(self._push, item)

    def _push(self, item: Item | _End) -> None:
        if isinstance(item, Frame):
            if self.policy is DropPolicy.DROP_OLDEST and self._frames >= self.maxsize:
                for i, old in enumerate(self._items):
                    if isinstance(old, Frame):
                        del self._items[i]
                        self._frames -= 1
                        self.dropped += 1
                        if self._stats is not None:
                            self._stats.dropped += 1
                        break
            self._frames += 1
        self._items.append(item)
        self._ready.set()

    # consumer side (event loop)
    async def get(self) -> Item | _End:
        while not self._items:
            self._ready.clear()
            await self._ready.wait()
        item = self._items.popleft()
        if isinstance(item, Frame):
            self._frames -= 1
            if self.policy is DropPolicy.WAIT:
                self._slots.release()
        return item


def lower_priority(nice: int) -> None:
    """Raise the calling thread's nice value by ``nice`` (Linux: ``setpriority`` on a thread id applies to
    that thread only; threads it starts later, e.g. FFmpeg's, inherit it). Elsewhere, or refused: nothing."""
    if nice <= 0 or not hasattr(os, "setpriority"):
        return
    tid = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))
    except OSError:
        pass


async def aiter_reader(reader: FrameReader, *, maxsize: int = 8, policy: DropPolicy | None = None) -> AsyncIterator[Item]:
    """Yield the reader's items on the event loop; stop the reader when the consumer leaves.

    Errors raised by the reader (e.g. :class:`~streamwatch.errors.SourceOpenError` after the last
    retry) are re-raised here. Cancellation stops the reader thread (it exits after the packet or
    timeout in progress) and propagates.
    """
    fixed = policy
    if policy is None:
        policy = DropPolicy.DROP_OLDEST if reader.live else DropPolicy.WAIT
    loop = asyncio.get_running_loop()
    queue = FrameQueue(loop, maxsize, policy, reader.stats)
    stop = threading.Event()

    def run() -> None:
        error: BaseException | None = None
        lower_priority(reader.cfg.reader_nice)
        try:
            for item in reader:
                if stop.is_set():
                    break
                if fixed is None and not isinstance(item, Frame):  # an HLS recording turns out file-like
                    queue.policy = DropPolicy.DROP_OLDEST if reader.live else DropPolicy.WAIT
                queue.put_threadsafe(item, stop)
        except BaseException as e:  # handed to the consumer, which re-raises it
            error = e
        if not stop.is_set():
            loop.call_soon_threadsafe(queue._push, _End(error))

    thread = threading.Thread(target=run, name=f"ingest-{reader.stream_id}", daemon=True)
    thread.start()
    try:
        while True:
            item = await queue.get()
            if isinstance(item, _End):
                if item.error is not None:
                    raise item.error
                return
            yield item
    finally:
        stop.set()
        reader.stop()
        # wait (bounded: the packet or read timeout in progress) for the decoder thread to leave
        # FFmpeg: a process that exits with it still inside can crash in native teardown
        await asyncio.to_thread(thread.join, max(reader.cfg.open_timeout_s, reader.cfg.read_timeout_s) + 2.0)
        if queue.dropped:
            logger.info("[%s] %d frames dropped (consumer behind)", reader.stream_id, queue.dropped)
