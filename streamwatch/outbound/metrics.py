"""Prometheus metrics of the integrations, registered in the daemon's registry (one per daemon)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

DELAY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0, 3600.0)


class OutboundMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.sent = Counter("streamwatch_webhook_sent", "Events delivered (2xx), by endpoint.", ["endpoint"], registry=r)
        self.failed = Counter(
            "streamwatch_webhook_failed", "Failed deliveries (unreachable, timeout, non-2xx), by endpoint.", ["endpoint"], registry=r
        )
        self.dead = Counter("streamwatch_webhook_dead_letters", "Events moved to the dead letters, by endpoint.", ["endpoint"], registry=r)
        self.backlog = Gauge(
            "streamwatch_webhook_backlog",
            "Events of the endpoint's types and streams not yet handled, by endpoint.",
            ["endpoint"],
            registry=r,
        )
        self.delay = Histogram(
            "streamwatch_webhook_delay_seconds",
            "Event time to receipt (2xx), by endpoint.",
            ["endpoint"],
            buckets=DELAY_BUCKETS,
            registry=r,
        )
        self.mqtt = Counter(
            "streamwatch_mqtt_published", "MQTT messages handed to the client, by kind (event|state).", ["kind"], registry=r
        )
        self.mqtt_dropped = Counter("streamwatch_mqtt_dropped", "MQTT messages refused by the client (queue full).", registry=r)
