"""Wiring of the stages, in pipeline order: ingest → sampling → analysis → events → server.

Thin on purpose: the per-stream work lives in :mod:`streamwatch.runtime` (the same code a cluster
worker runs); each stage gets its own config section; nothing here decides anything.
:class:`Daemon` (``streamwatch run``) is the single box: the SQLite event store and bus, the
WebSocket/HTTP server, and the streams it watches, which can be added and removed while it runs
(the desired set persists in ``data_dir/streams.json``).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from streamwatch.analysis.rules import RuleEngine
from streamwatch.analysis.search import hit_json
from streamwatch.config import Settings, StreamConfig
from streamwatch.errors import ConfigError, PolicyError
from streamwatch.events.bus import EventBus
from streamwatch.events.model import HealthEvent, HealthKind
from streamwatch.events.store import EventStore
from streamwatch.ingest.url import redact_url
from streamwatch.outbound.metrics import OutboundMetrics
from streamwatch.outbound.wiring import Integrations, policy_rule_lookup
from streamwatch.runtime.model_health import ModelNotice
from streamwatch.runtime.pipeline import StreamPipeline, build_pipeline
from streamwatch.runtime.runner import LocalSession, SessionKeeping
from streamwatch.runtime.services import build_services
from streamwatch.runtime.supervisor import StreamSet
from streamwatch.server.control import stream_json
from streamwatch.server.metrics import Metrics
from streamwatch.server.server import EventServer
from streamwatch.server.submit import SwitchReport
from streamwatch.vlm.registry import Capability
from streamwatch.vlm.responder import AudienceResponder

__all__ = ["Daemon", "StreamPipeline", "build_pipeline", "freeze_startup_heap"]

logger = logging.getLogger(__name__)


def freeze_startup_heap() -> None:
    """Move everything allocated during start-up out of the cyclic GC's reach.

    Full (generation 2) collections otherwise walk every module, model and config object again and
    again: 25-80 ms pauses on this 2-core machine that showed up as event-delivery p99 latency.
    Call once after the stages are wired, before streams start.
    """
    gc.collect()
    gc.freeze()


class Daemon:
    """``streamwatch run``: the streams, the analysis cascade, the store, bus and server.

    ``serve=False`` (``analyze``, benchmarks): no server, only the configured streams, and :meth:`run`
    returns when they have all finished. With the server the desired set of streams is managed at
    run time (:meth:`add_stream`, :meth:`remove_stream`) and persisted; :meth:`run` returns when
    stopped, or when the streams it started with have all finished and none was added or removed.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        serve: bool = True,
        on_sample: Callable[[str, float], None] | None = None,
        on_analyzed: Callable[[str, float], None] | None = None,
    ) -> None:
        self.settings = settings
        self.serve = serve
        self.on_sample = on_sample
        self.on_analyzed = on_analyzed
        self.metrics = Metrics()
        self.stopping = asyncio.Event()
        self.server: EventServer | None = None
        self.ready = asyncio.Event()
        self.offsets: dict[str, float] = {}
        self.latest: dict[str, Any] = {}
        self._exit_when_idle = True
        self._wake = asyncio.Event()
        self.integrations: Integrations | None = None

    def stop(self) -> None:
        """Stop ingest; queued frames are still analysed, then the store is flushed and clients closed."""
        self.stopping.set()
        self._wake.set()

    # --- lifecycle -------------------------------------------------------------------------------

    async def run(self) -> None:
        s = self.settings
        self.store = EventStore(
            s.data_dir, retention_days=s.store.retention_days, retention_mb=s.store.retention_mb, min_free_mb=s.store.min_free_mb
        )
        self.bus = EventBus(self.store)
        svc = self.svc = await build_services(s, self.store, self.bus, self.metrics)
        self.bus.cpu = svc.cpu
        if self.on_sample is not None:
            svc.on_sample = self.on_sample
        if self.on_analyzed is not None:
            svc.on_analyzed = self.on_analyzed
        self.offsets, self.latest = svc.offsets, svc.latest
        self.cascade, self.router, self.vlm, self.search = svc.cascade, svc.router, svc.vlm, svc.search
        self.responder = AudienceResponder(
            svc.cascade,
            lambda sid: svc.engines.engine_for(sid).policy,
            svc.persona,
            service=svc.vlm,
            latest=lambda sid: svc.latest.get(sid),
            offsets=lambda x: svc.offsets.get(x, 0.0),
            duplicate_ttl_s=s.vlm.duplicate_ttl_s,
            max_side=s.analysis.max_side,
        )
        self.desired = None
        initial = list(s.streams)
        if self.serve:
            from streamwatch.runtime.desired import DesiredFile

            self.desired = DesiredFile(s.data_dir / "streams.json", list(s.streams))
            initial = await asyncio.get_running_loop().run_in_executor(None, self.desired.streams)
        self._exit_when_idle = bool(initial) or not self.serve
        self.streams = StreamSet(svc, self._keeper)
        watch = svc.models_watch
        if watch is not None:
            watch.targets = self.streams.ids
        svc.overload.targets = self.streams.ids
        await self.bus.start()
        try:
            if self.serve:
                await self._serve([c.id for c in initial])
            await self._integrations()
            freeze_startup_heap()
            self.ready.set()
            async with asyncio.TaskGroup() as tg:
                watcher = tg.create_task(svc.engines.watch(s.analysis.reload_s, self._config_notice))
                models = tg.create_task(watch.run(self._model_notice)) if watch is not None else None
                overload = tg.create_task(svc.overload.run(svc.publish_health, svc.offsets))
                for c in initial:
                    await self._start(c)
                await self._wait()
                watcher.cancel()
                overload.cancel()
                if models is not None:
                    models.cancel()
        finally:
            await self.streams.stop_all()
            if watch is not None:
                await watch.flush(self._model_notice)
            await svc.close()
            if self.integrations is not None:
                await self.integrations.stop()
            if self.server is not None:
                await self.server.stop()
            await self.bus.stop()
            self.store.close()

    async def _serve(self, ids: list[str]) -> None:
        self.server = EventServer(
            self.settings.server,
            self.bus,
            metrics=self.metrics,
            streams=ids,
            responder=self.responder,
            models=self,
            inferrer=self.responder,
            search=self._search if self.search is not None else None,
            offsets=lambda x: self.offsets.get(x, 0.0),
            latest=self.latest.get,
            models_info=self.models_info,
            control=self if self.desired is not None else None,
            actions=self.svc.actions,
            ui=self.settings.ui,
            overload=self.svc.overload.as_json,
        )
        await self.server.start()

    async def _integrations(self) -> None:
        """Webhooks and MQTT (outbound/): bus listeners that deliver committed events to other systems."""
        s, engines = self.settings, self.svc.engines
        url = self.server.url if self.server is not None else f"http://{s.server.host}:{s.server.port}"
        self.integrations = Integrations(
            s,
            self.store,
            self.bus,
            OutboundMetrics(self.metrics.registry),
            rule_of=policy_rule_lookup(engines.engine_for, lambda: engines.default_engine),
            streams=lambda: self.streams.ids(),
            offsets=lambda x: self.offsets.get(x, 0.0),
            server_url=lambda: url,
        )
        await self.integrations.start()

    async def _wait(self) -> None:
        """Until stopped (then every stream ends on purpose), or idle when that ends the run."""
        while True:
            if self.stopping.is_set():
                await self.streams.stop_all()
                return
            if self._exit_when_idle and not self.streams.ids():
                return
            self._wake.clear()
            changed = asyncio.ensure_future(self.streams.changed.wait())
            wake = asyncio.ensure_future(self._wake.wait())
            try:
                await asyncio.wait({changed, wake}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                changed.cancel()
                wake.cancel()
            self.streams.changed.clear()

    def _keeper(self, cfg: StreamConfig) -> SessionKeeping | None:
        return LocalSession(self.store, cfg.id)

    async def _start(self, cfg: StreamConfig) -> None:
        try:
            await self.svc.engines.assign(cfg.id, cfg.policy)
        except PolicyError as e:
            if cfg in self.settings.streams:
                raise
            logger.error("stream %s not started: its policy cannot be loaded: %s", cfg.id, e)
            return
        self.streams.start(cfg)

    def all_failed(self) -> list[str]:
        """The streams of this run when every one ended in failure (nothing was watched), else []."""
        streams = getattr(self, "streams", None)
        if streams is None or self.stopping.is_set() or not streams.seen or not streams.seen <= streams.failed:
            return []
        return sorted(streams.seen)

    # --- streams at run time (admin `add_stream` / `remove_stream`, `streamwatch streams`) -------------

    async def add_stream(self, cfg: StreamConfig, by: str) -> None:
        """Start watching ``cfg`` now and keep it in the desired set. ConfigError: duplicate id, bad policy."""
        if self.desired is None:
            raise ConfigError("streams cannot be added to this daemon (it has no server)")
        try:
            await self.svc.engines.load(cfg.policy or self.settings.analysis.policy)
        except PolicyError as e:
            raise ConfigError(f"stream {cfg.id}: {e}") from e
        await asyncio.get_running_loop().run_in_executor(None, self.desired.add, cfg)
        logger.info("stream %s added by %s (%s)", cfg.id, by, redact_url(cfg.source))
        self._exit_when_idle = False
        await self._start(cfg)

    async def remove_stream(self, stream_id: str, by: str) -> None:
        """Stop watching ``stream_id`` (ended on purpose) and drop it from the desired set. ConfigError: unknown id."""
        if self.desired is None:
            raise ConfigError("streams cannot be removed from this daemon (it has no server)")
        await asyncio.get_running_loop().run_in_executor(None, self.desired.remove, stream_id)
        logger.info("stream %s removed by %s", stream_id, by)
        self._exit_when_idle = False
        await self.streams.stop(stream_id)
        self.svc.engines.forget(stream_id)

    def list_streams(self) -> list[dict[str, Any]]:
        """The desired streams with their last published state."""
        configs = self.desired.streams() if self.desired is not None else list(self.settings.streams)
        out = []
        for c in configs:
            state = self.svc.states.get(c.id)
            running = c.id in self.streams
            origin = self.desired.origin(c.id) if self.desired is not None else "config"
            out.append(stream_json(c, origin=origin, state=state.value if state else ("starting" if running else "not running")))
        return out

    async def _config_notice(self, streams: list[str], reason: str) -> None:
        await self._notice(streams, HealthKind.CONFIG, reason)

    async def _notice(
        self, streams: Sequence[str], kind: HealthKind, reason: str, duration_s: float | None = None, active: bool | None = None
    ) -> None:
        """A health event (config or model change) on each of ``streams``, at its current offset."""
        for sid in streams:
            offset = self.offsets.get(sid, 0.0)
            await self.bus.publish(
                HealthEvent(stream=sid, at=time.time(), offset=offset, kind=kind, active=active, duration_s=duration_s, reason=reason)
            )

    async def _model_notice(self, notice: ModelNotice, streams: Sequence[str]) -> None:
        """The VLM tier failing or working again (:mod:`streamwatch.runtime.model_health`) on the streams watched then."""
        await self._notice(streams, HealthKind.MODEL, notice.reason, active=notice.active)

    # --- search, models ----------------------------------------------------------------------------

    def _search(self, query: str, stream: str | None, limit: int) -> list[dict[str, object]]:
        assert self.search is not None
        return [hit_json(h) for h in self.search.search(query, stream=stream, limit=limit)]

    async def switch_model(self, role: str, model: str, by: str) -> SwitchReport:
        """Load and warm ``model``, then make it the first of ``role``'s chain; a health event records it."""
        logger.info("switching %s to %s (asked by %s)", role, model, by)
        result = await self.router.switch(Capability(role), model)
        reason = f"{role}: {result.old} → {result.new} (load + warm-up {result.seconds:.1f}s, by {by})"
        logger.info("model switched: %s", reason)
        await self._notice(self.streams.ids(), HealthKind.MODEL, reason, duration_s=round(result.seconds, 3))
        return SwitchReport(role, result.old, result.new, result.seconds)

    def models_info(self) -> dict[str, object]:
        """VLM role chains (best first) and each loaded model's breaker state, for the console."""
        chains = {r.value: list(c) for r, c in self.router.chains.items()}
        health = self.svc.models_watch.as_json() if self.svc.models_watch is not None else []
        return {"chains": chains, "breakers": self.router.state(), "models": sorted(self.router.registry.models), "health": health}

    @property
    def engine(self) -> RuleEngine:
        """The engine of the default policy (``analysis.policy``)."""
        return self.svc.engines.default_engine
