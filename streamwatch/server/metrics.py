"""Prometheus metrics (one registry per daemon, so tests can run several side by side)."""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from streamwatch.events.store import StoredEvent

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.events = Counter("streamwatch_events", "Events stored, by type.", ["type"], registry=r)
        self.clients = Gauge("streamwatch_clients_connected", "WebSocket clients connected, by role.", ["role"], registry=r)
        self.client_messages = Counter("streamwatch_client_messages", "Client messages received, by type.", ["type"], registry=r)
        self.client_errors = Counter("streamwatch_client_errors", "Error frames sent to clients, by code.", ["code"], registry=r)
        self.lagging = Counter("streamwatch_clients_lagging", "Clients disconnected for falling behind.", registry=r)
        self.refused = Counter("streamwatch_handshakes_refused", "WebSocket handshakes refused, by HTTP status.", ["status"], registry=r)
        self.queue_drops = Counter("streamwatch_queue_drops", "Items dropped from bounded queues, by queue.", ["queue"], registry=r)
        self.analysis_drops = Counter(
            "streamwatch_analysis_drops",
            "Kept frames dropped from a live stream's full analysis queue, by reason (unchanged|oldest; "
            "never escalated or overlay frames).",
            ["reason"],
            registry=r,
        )
        self.degradation = Gauge(
            "streamwatch_degradation_level", "Overload degradation step now (0 normal … 3; see runtime/degrade.py).", registry=r
        )
        self.analysis_lag = Gauge(
            "streamwatch_analysis_lag_seconds", "The process's analysis lag at the last look (worst stream).", registry=r
        )
        self.stage_latency = Histogram(
            "streamwatch_stage_latency_seconds", "Per-stage latency, by stage.", ["stage"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.stage_cpu = Counter(
            "streamwatch_stage_cpu_seconds",
            "CPU seconds of the threads doing each stage's work, by stream and stage (thread_time; see runtime/cpu_account.py).",
            ["stream", "stage"],
            registry=r,
        )
        self.frames_failed = Counter(
            "streamwatch_frames_failed", "Frames skipped because their analysis failed (an analyzer or model error).", registry=r
        )
        self.stream_restarts = Counter(
            "streamwatch_stream_failures",
            "Streams whose work failed on an unexpected error, by what followed (restarted|handed_over|stopped).",
            ["outcome"],
            registry=r,
        )
        self.cache = Counter("streamwatch_cache_lookups", "Analysis cache lookups, by result (hit|miss).", ["result"], registry=r)
        self.vlm_requests = Counter(
            "streamwatch_vlm_requests",
            "VLM attempts by model and outcome (ok|error|timeout|bad_output|refused|skipped|busy).",
            ["model", "outcome"],
            registry=r,
        )
        self.vlm_latency = Histogram(
            "streamwatch_vlm_latency_seconds", "VLM attempt latency, by model.", ["model"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.vlm_late = Counter("streamwatch_vlm_late", "Compliance answers that arrived after the deadline.", registry=r)

    def on_level(self, level: int, lag: float) -> None:
        self.degradation.set(level)
        self.analysis_lag.set(lag)

    def on_drop(self, reason: str) -> None:
        self.queue_drops.labels("analysis").inc()
        self.analysis_drops.labels(reason).inc()

    def on_cpu(self, stream: str, stage: str, seconds: float) -> None:
        self.stage_cpu.labels(stream, stage).inc(seconds)

    def on_vlm(self, model: str, outcome: str, seconds: float) -> None:
        self.vlm_requests.labels(model, outcome).inc()
        if outcome not in ("skipped", "busy"):  # no attempt was made
            self.vlm_latency.labels(model).observe(seconds)

    def on_stored(self, batch: Sequence[StoredEvent]) -> None:
        for ev in batch:
            self.events.labels(ev.type).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
