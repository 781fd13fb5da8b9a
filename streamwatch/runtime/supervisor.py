"""The streams one process runs right now: start, stop on purpose, abandon, wait.

Each stream runs in its own task (its :class:`~streamwatch.runtime.runner.StreamRunner` has the
TaskGroup of that stream); a stream that fails is logged and leaves the others running. Streams can
be added and removed while the process runs (runtime management, cluster leases).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from streamwatch.config import StreamConfig
from streamwatch.runtime.runner import SessionKeeping, StreamRunner
from streamwatch.runtime.services import StreamServices

logger = logging.getLogger(__name__)

KeeperFactory = Callable[[StreamConfig], SessionKeeping | None]


class StreamSet:
    """Running streams by id. ``keepers`` gives each stream its session keeping (None: no session)."""

    def __init__(self, svc: StreamServices, keepers: KeeperFactory) -> None:
        self.svc = svc
        self.keepers = keepers
        self.runners: dict[str, StreamRunner] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.changed = asyncio.Event()  # set whenever a stream starts or finishes

    def __contains__(self, sid: object) -> bool:
        return sid in self.tasks

    def ids(self) -> list[str]:
        return list(self.tasks)

    def start(self, cfg: StreamConfig) -> None:
        """Start watching ``cfg`` (its policy must be assigned already). A running id is left alone."""
        if cfg.id in self.tasks:
            return
        runner = StreamRunner(cfg, self.svc, self.keepers(cfg))
        task = asyncio.create_task(self._run(runner), name=f"stream-{cfg.id}")
        self.runners[cfg.id] = runner
        self.tasks[cfg.id] = task
        self.changed.set()

    async def _run(self, runner: StreamRunner) -> None:
        try:
            await runner.run()
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("stream %s failed", runner.sid)
        finally:
            if self.runners.get(runner.sid) is runner:
                del self.runners[runner.sid]
                del self.tasks[runner.sid]
            self.changed.set()

    async def stop(self, sid: str) -> None:
        """End ``sid`` on purpose and wait until its queued frames are analysed and its session closed."""
        runner, task = self.runners.get(sid), self.tasks.get(sid)
        if runner is None or task is None:
            return
        runner.stop()
        await asyncio.shield(task)

    async def abandon(self, sid: str) -> None:
        """Drop ``sid`` at once (its cluster lease is lost): nothing more is published, the session stays open."""
        task = self.tasks.get(sid)
        if task is None:
            return
        task.cancel()
        await asyncio.wait({task})  # (not `await task`: its CancelledError is not ours to swallow)

    async def stop_all(self) -> None:
        """End every stream on purpose, concurrently."""
        for runner in list(self.runners.values()):
            runner.stop()
        if self.tasks:
            await asyncio.gather(*[asyncio.shield(t) for t in list(self.tasks.values())], return_exceptions=True)

    async def abandon_all(self) -> None:
        await asyncio.gather(*[self.abandon(s) for s in list(self.tasks)])
