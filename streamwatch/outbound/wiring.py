"""Starting and stopping the integrations of one daemon: the webhook senders and the MQTT publisher."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable

from streamwatch.analysis.policy import RuleSpec
from streamwatch.config import Settings
from streamwatch.errors import ConfigError
from streamwatch.events.bus import EventBus
from streamwatch.events.store import EventStore
from streamwatch.outbound.metrics import OutboundMetrics
from streamwatch.outbound.mqtt import MqttPublisher
from streamwatch.outbound.outbox import Outbox
from streamwatch.outbound.signing import evidence_key
from streamwatch.outbound.webhooks import Outbound, RuleOf, WebhookSender

logger = logging.getLogger(__name__)


def check_secrets(settings: Settings) -> None:
    """ConfigError when a webhook's ``secret = "env:NAME"`` names an unset or empty variable (named, never a value)."""
    for w in settings.webhooks:
        env = w.secret_env
        if env is not None and not os.environ.get(env):
            raise ConfigError(f"webhooks {w.name}: environment variable {env} (secret = env:{env}) is not set")


class Integrations:
    """The daemon's outbound side. ``start`` after the bus, ``stop`` before it."""

    def __init__(
        self,
        settings: Settings,
        store: EventStore,
        bus: EventBus,
        metrics: OutboundMetrics,
        *,
        rule_of: RuleOf,
        streams: Callable[[], list[str]],
        offsets: Callable[[str], float],
        server_url: Callable[[], str],
    ) -> None:
        self.settings = settings
        self.store, self.bus, self.metrics = store, bus, metrics
        self.rule_of, self.streams, self.offsets, self.server_url = rule_of, streams, offsets, server_url
        self.outbox: Outbox | None = None
        self.senders: list[WebhookSender] = []
        self.mqtt: MqttPublisher | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        s = self.settings
        if s.webhooks:
            check_secrets(s)
            loop = asyncio.get_running_loop()
            self.outbox = await loop.run_in_executor(None, Outbox, s.data_dir)
            key = await loop.run_in_executor(None, evidence_key, s.data_dir)
            ctx = Outbound(
                self.store, self.bus, self.outbox, self.metrics, self.rule_of, self.streams, self.offsets, key, self.server_url()
            )
            for cfg in s.webhooks:
                sender = WebhookSender(cfg, ctx)
                self.senders.append(sender)
                self._tasks.append(asyncio.create_task(sender.run(), name=f"webhook-{cfg.name}"))
        if s.mqtt.host is not None:
            self.mqtt = MqttPublisher(s.mqtt, self.metrics)
            self.mqtt.start()
            self.bus.add_listener(self.mqtt.on_stored)

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._tasks.clear()
        if self.mqtt is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.mqtt.stop)
        if self.outbox is not None:
            self.outbox.close()


def policy_rule_lookup(engine_for: Callable[[str], object], default: Callable[[], object]) -> RuleOf:
    """(stream, rule id) → the rule in the stream's policy (its engine's ``policy.rules``), or None."""

    def rule_of(stream: str, rule_id: str) -> RuleSpec | None:
        try:
            engine = engine_for(stream)
        except KeyError:
            engine = default()
        rules: list[RuleSpec] = getattr(getattr(engine, "policy", None), "rules", [])
        return next((r for r in rules if r.id == rule_id), None)

    return rule_of
