"""MQTT publishing (paho-mqtt 2.x): each committed event on ``PREFIX/<stream>/<type>`` (QoS 1 by
default) and each stream's state, retained, on ``PREFIX/<stream>/state``.

The bus listener only hands messages to paho's network thread (``loop_start``), which connects,
reconnects with back-off and resends unacknowledged QoS 1/2 messages; while the broker is away up to
``queue_max`` messages wait in the client. Nothing here blocks the event loop or the bus.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Sequence
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from streamwatch.events.store import StoredEvent
from streamwatch.outbound.config import MqttConfig
from streamwatch.outbound.metrics import OutboundMetrics

logger = logging.getLogger(__name__)


def topic_part(stream: str) -> str:
    """A stream id as one topic level (ids are [A-Za-z0-9_.-], so this only guards against wildcards)."""
    return stream.replace("/", "_").replace("+", "_").replace("#", "_")


def state_message(event: dict[str, Any]) -> dict[str, Any] | None:
    """The retained state object for a health event that changes a stream's state, else None."""
    if event.get("type") != "health" or event.get("kind") != "state" or not event.get("state"):
        return None
    return {
        "stream": event.get("stream"),
        "state": event["state"],
        "since": event.get("at"),
        "reason": event.get("reason", ""),
        "id": event.get("id"),
    }


class MqttPublisher:
    """Publishes the bus's committed events to one broker. :meth:`start` / :meth:`stop` (blocking, short)."""

    def __init__(self, cfg: MqttConfig, metrics: OutboundMetrics) -> None:
        self.cfg = cfg
        self.metrics = metrics
        self.types = frozenset(cfg.types)
        self.connected = threading.Event()
        self._last: mqtt.MQTTMessageInfo | None = None
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=cfg.client_id, clean_session=True)
        self.client.max_queued_messages_set(cfg.queue_max)
        self.client.reconnect_delay_set(1, 30)
        if cfg.username is not None:
            password = os.environ.get(cfg.password_env) if cfg.password_env else None
            self.client.username_pw_set(cfg.username, password)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if getattr(reason, "is_failure", False):
            logger.warning("MQTT broker %s:%d refused the connection: %s", self.cfg.host, self.cfg.port, reason)
            return
        self.connected.set()
        logger.info("MQTT connected to %s:%d", self.cfg.host, self.cfg.port)

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if self.connected.is_set():
            logger.warning("MQTT connection to %s:%d lost: %s (reconnecting)", self.cfg.host, self.cfg.port, reason)
        self.connected.clear()

    def start(self) -> None:
        assert self.cfg.host is not None
        self.client.connect_async(self.cfg.host, self.cfg.port, keepalive=self.cfg.keepalive_s)
        self.client.loop_start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Give the messages in flight up to ``timeout_s`` to be acknowledged (when connected), then disconnect."""
        last = self._last
        if last is not None and self.connected.is_set():
            try:
                last.wait_for_publish(timeout_s)
            except (RuntimeError, ValueError) as e:  # refused or never queued: nothing to wait for
                logger.debug("MQTT: not waiting for the last message: %s", e)
        self.client.disconnect()
        self.client.loop_stop()

    def on_stored(self, batch: Sequence[StoredEvent]) -> None:
        prefix = self.cfg.topic_prefix.rstrip("/")
        for e in batch:
            if e.type in self.types:
                self._publish(f"{prefix}/{topic_part(e.stream)}/{e.type}", e.text.encode(), retain=False, kind="event")
            if e.type == "health":
                state = state_message(json.loads(e.text))
                if state is not None:
                    body = json.dumps(state, ensure_ascii=False).encode()
                    self._publish(f"{prefix}/{topic_part(e.stream)}/state", body, retain=True, kind="state")

    def _publish(self, topic: str, body: bytes, *, retain: bool, kind: str) -> None:
        info = self.client.publish(topic, body, qos=self.cfg.qos, retain=retain)
        if info.rc == mqtt.MQTT_ERR_QUEUE_SIZE:
            self.metrics.mqtt_dropped.inc()
        else:
            self._last = info
            self.metrics.mqtt.labels(kind).inc()
