"""The streams one process runs right now: start, stop on purpose, abandon, wait, restart after a bug.

Each stream runs in its own task (its :class:`~streamwatch.runtime.runner.StreamRunner` has the
TaskGroup of that stream); a stream that fails leaves the others running. Streams can be added and
removed while the process runs (runtime management, cluster leases).

A runner that fails on an unexpected error (a bug) or on a failure of streamwatch's own side (the
event log, the store; not the source: those reconnect in ingest, and a source given up on is
``stopped`` by the runner itself) is never left silent: a ``stopped`` state event names the error,
and a live stream is restarted with back-off (:class:`RestartBackoff`). The
restart continues the open session, so the time nobody watched is a ``monitoring_gap`` in the
report. A file is not restarted (its alerts would be repeated), and neither is a stream whose
source is refused (:class:`~streamwatch.errors.ConfigError`: retrying cannot help). In a cluster,
``give_up_after`` crashes in a row hand the stream to another worker (``on_give_up``). ``failed``
holds the streams whose last run ended in failure (the CLI exits non-zero when every stream did).
Handling a failure may fail too (the store that failed cannot take the ``stopped`` event or the last
heartbeat): a live stream is restarted all the same, so a process never stops watching a live stream
on its own.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from streamwatch.config import StreamConfig
from streamwatch.errors import ConfigError, StreamwatchError
from streamwatch.events.model import HealthEvent, HealthKind, StreamState
from streamwatch.runtime.faults import RestartBackoff, describe, first_error
from streamwatch.runtime.runner import SessionKeeping, StreamRunner
from streamwatch.runtime.services import StreamServices

logger = logging.getLogger(__name__)

KeeperFactory = Callable[[StreamConfig], SessionKeeping | None]


class StreamSet:
    """Running streams by id. ``keepers`` gives each stream its session keeping (None: no session);
    ``backoff`` makes each stream's :class:`RestartBackoff`; ``on_give_up(sid)`` is called when a
    stream crashed ``give_up_after`` times in a row (it is then no longer run here)."""

    def __init__(
        self,
        svc: StreamServices,
        keepers: KeeperFactory,
        *,
        backoff: Callable[[], RestartBackoff] = RestartBackoff,
        on_give_up: Callable[[str], None] | None = None,
    ) -> None:
        self.svc = svc
        self.keepers = keepers
        self.backoff = backoff
        self.on_give_up = on_give_up
        self.runners: dict[str, StreamRunner] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self._stop: dict[str, asyncio.Event] = {}
        self.changed = asyncio.Event()  # set whenever a stream starts or finishes
        self.failed: set[str] = set()  # streams whose last run ended in failure (not stopped on purpose)
        self.seen: set[str] = set()  # every stream started here

    def __contains__(self, sid: object) -> bool:
        return sid in self.tasks

    def ids(self) -> list[str]:
        return list(self.tasks)

    def start(self, cfg: StreamConfig) -> None:
        """Start watching ``cfg`` (its policy must be assigned already). A running id is left alone."""
        if cfg.id in self.tasks:
            return
        self._stop[cfg.id] = asyncio.Event()
        self.seen.add(cfg.id)
        self.tasks[cfg.id] = asyncio.create_task(self._supervise(cfg), name=f"stream-{cfg.id}")
        self.changed.set()

    async def _supervise(self, cfg: StreamConfig) -> None:
        sid, backoff = cfg.id, self.backoff()
        stop = self._stop[sid]
        try:
            while not stop.is_set():
                runner = self.runners[sid] = StreamRunner(cfg, self.svc, self.keepers(cfg))
                began = time.monotonic()
                self.failed.discard(sid)
                try:
                    await runner.run()
                    if runner.failed:
                        self.failed.add(sid)
                    return
                except asyncio.CancelledError:
                    raise
                except Exception as e:
                    delay = backoff.crashed(time.monotonic() - began)
                    refused = isinstance(first_error(e), ConfigError)  # a source it cannot read: one line, no restart
                    logger.error("stream %s failed: %s", sid, describe(e), exc_info=None if refused else e)
                    live = runner.pipeline is None or runner.pipeline.reader.live  # (an HLS recording is not live)
                    try:
                        restart = await self._after_crash(cfg, runner, e, delay, backoff, live, refused)
                    except asyncio.CancelledError:
                        raise
                    except Exception as e2:  # saying the failure failed too (a full disk): a live stream is still watched again
                        logger.error("stream %s: its failure could not be handled in full: %s", sid, describe(e2))
                        restart = live and not runner.stopping and not refused
                        if not restart and not runner.stopping:
                            self.failed.add(sid)
                    if not restart:
                        return
                try:  # stopped on purpose during the wait: nothing more to watch
                    async with asyncio.timeout(delay):  # (not wait_for: on 3.11 it can swallow an abandon's cancel)
                        await stop.wait()
                except TimeoutError:
                    pass
            try:
                await self._ended_while_down(cfg)
            except StreamwatchError as e:
                logger.error("stream %s: its end could not be recorded: %s", sid, e)
        finally:
            if self.tasks.get(sid) is asyncio.current_task():
                del self.tasks[sid]
                self._stop.pop(sid, None)
            self.runners.pop(sid, None)
            self.changed.set()

    async def _after_crash(
        self, cfg: StreamConfig, runner: StreamRunner, e: Exception, delay: float, backoff: RestartBackoff, live: bool, refused: bool
    ) -> bool:
        """A last heartbeat, the ``stopped`` event, a session that still ends; True: restart the stream."""
        await self._last_beat(cfg, runner, live)
        # a bug, or a failure of streamwatch's own side (the event log, the store): not the source
        what = "error" if _ours(e) else "internal error"
        if await self._crashed(runner, f"{what} ({describe(e)})", delay, backoff, live=live, refused=refused):
            return True
        if not runner.stopping:
            self.failed.add(runner.sid)
        if runner.stopping and live:  # it failed while being stopped on purpose: the session still ends
            await self._end_session(cfg)
        return False

    async def _last_beat(self, cfg: StreamConfig, runner: StreamRunner, live: bool) -> None:
        """Watched up to the crash: the restart's monitoring gap then starts here (gaps of crashes in a row never overlap)."""
        reader = runner.pipeline.reader if runner.pipeline is not None else None
        keeper = self.keepers(cfg) if live and reader is not None and reader.session_start is not None else None
        if keeper is None or reader is None:
            return
        try:
            await keeper.beat(reader.session_start, reader.offset_now(), force=True)
        except StreamwatchError as e:
            logger.warning("stream %s: no heartbeat at the failure: %s", cfg.id, e)

    async def _crashed(
        self, runner: StreamRunner, error: str, delay: float, backoff: RestartBackoff, *, live: bool, refused: bool = False
    ) -> bool:
        """Say that ``runner`` failed (a ``stopped`` state event with the error and what comes next); True: restart it."""
        sid, restarts = runner.sid, self.svc.metrics.stream_restarts
        if refused and not runner.stopping:
            outcome, then = "stopped", "not retried: fix the source, then add the stream again"
        elif runner.stopping or not live:
            outcome, then = "stopped", "stopped by the operator" if runner.stopping else "the file is not read again"
        elif backoff.give_up and self.on_give_up is not None:
            outcome, then = "handed_over", "handed to another worker"
        else:
            outcome, then = "restarted", f"watching again in {delay:g} s"
        restarts.labels(outcome).inc()
        try:
            await self._publish(sid, StreamState.STOPPED, f"{error}; {then}")
        except StreamwatchError as e:  # the event log itself may be what failed: what follows still happens
            logger.error("stream %s: the failure could not be put in the log: %s", sid, e)
        if outcome == "handed_over" and self.on_give_up is not None:
            logger.warning("stream %s: failed %d times in a row here; handed to another worker", sid, backoff.crashes)
            self.on_give_up(sid)
        return outcome == "restarted"

    async def _ended_while_down(self, cfg: StreamConfig) -> None:
        """Stopped on purpose while waiting to restart: the stream ends as ``ended`` and its session closes."""
        await self._publish(cfg.id, StreamState.ENDED, "stopped by the operator")
        await self._end_session(cfg)

    async def _end_session(self, cfg: StreamConfig) -> None:
        keeper = self.keepers(cfg)
        if keeper is not None:
            await keeper.end()

    async def _publish(self, sid: str, state: StreamState, reason: str) -> None:
        offset = self.svc.offsets.get(sid, 0.0)
        await self.svc.publish_health(
            HealthEvent(stream=sid, at=time.time(), offset=offset, kind=HealthKind.STATE, state=state, reason=reason)
        )

    async def stop(self, sid: str) -> None:
        """End ``sid`` on purpose and wait until its queued frames are analysed and its session closed."""
        task = self.tasks.get(sid)
        if task is None:
            return
        self._request_stop(sid)
        await asyncio.shield(task)

    def _request_stop(self, sid: str) -> None:
        """Ask ``sid`` to end on purpose: its runner stops, and a restart waiting to happen does not."""
        self._stop[sid].set()
        runner = self.runners.get(sid)
        if runner is not None:
            runner.stop()

    async def abandon(self, sid: str) -> None:
        """Drop ``sid`` at once (its cluster lease is lost): nothing more is published, the session stays open."""
        task = self.tasks.get(sid)
        if task is None:
            return
        task.cancel()
        await asyncio.wait({task})  # (not `await task`: its CancelledError is not ours to swallow)

    async def stop_all(self) -> None:
        """End every stream on purpose, concurrently."""
        for sid in list(self.tasks):
            self._request_stop(sid)
        if self.tasks:
            await asyncio.gather(*[asyncio.shield(t) for t in list(self.tasks.values())], return_exceptions=True)

    async def abandon_all(self) -> None:
        await asyncio.gather(*[self.abandon(s) for s in list(self.tasks)])


def _ours(e: BaseException) -> bool:
    """True when the first error of ``e`` is a StreamwatchError (a named failure, not a bug)."""
    return isinstance(first_error(e), StreamwatchError)
