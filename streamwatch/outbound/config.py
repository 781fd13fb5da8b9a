"""Config sections of the outbound integrations: ``[[webhooks]]`` and ``[mqtt]``.

Part of :class:`~streamwatch.config.Settings` (validated with it, ``extra="forbid"``); kept here so
the integrations' options live beside their code.
"""

from __future__ import annotations

import os
import re
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from streamwatch.events.model import Severity

EVENT_TYPE_NAMES = ("alert", "health", "reply", "rejected", "answer", "review", "scene", "feedback")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class WebhookConfig(_Section):
    name: Annotated[
        str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="Endpoint name (logs, metrics, health events, its outbox cursor).")
    ]
    url: Annotated[str, Field(pattern=r"^https?://", description="Receiver URL; each delivery is an HTTP POST of JSON.")]
    secret: Annotated[
        SecretStr,
        Field(
            min_length=8,
            description="HMAC-SHA256 signing secret, or env:NAME to read it from the environment variable NAME (never logged).",
        ),
    ]
    types: Annotated[list[str], Field(min_length=1, description="Event types delivered (alert, health, review, …).")] = ["alert"]
    rules: Annotated[list[str], Field(description="Alert rule ids delivered (empty = every rule).")] = []
    min_severity: Annotated[Severity | None, Field(description="Alerts below this severity are not delivered (unset = all).")] = None
    streams: Annotated[list[str], Field(description="Streams whose events are delivered (empty = every stream).")] = []
    timeout_s: Annotated[float, Field(gt=0, le=120, description="Seconds a delivery may take before it counts as failed.")] = 5.0
    batch_max: Annotated[int, Field(ge=1, le=1000, description="Events per POST at most (oldest first).")] = 20
    batch_wait_s: Annotated[float, Field(ge=0, le=10, description="How long the first event waits for others to share its POST.")] = 0.0
    backoff_initial_s: Annotated[float, Field(gt=0, description="First retry delay after a failed delivery.")] = 1.0
    backoff_max_s: Annotated[
        float, Field(gt=0, description="Retry delay cap (the longest a recovered receiver waits for its backlog).")
    ] = 30.0
    backoff_jitter: Annotated[float, Field(ge=0, le=1, description="Random spread of each retry delay, as a fraction.")] = 0.2
    unhealthy_after_s: Annotated[
        float, Field(gt=0, description="A 'webhook' health event is raised once deliveries have failed this long (another on recovery).")
    ] = 60.0
    dead_letter_after_s: Annotated[
        float, Field(gt=0, description="Undelivered events older than this are moved to the outbox's dead letters.")
    ] = 86400.0
    evidence_base_url: Annotated[
        str | None,
        Field(
            pattern=r"^https?://",
            description="Base URL of this daemon's HTTP server as the receiver reaches it, for signed evidence links "
            "(unset = http://server.host:server.port).",
        ),
    ] = None
    evidence_ttl_s: Annotated[float, Field(gt=0, description="How long a signed evidence link works.")] = 7 * 86400.0

    @model_validator(mode="after")
    def _check(self) -> WebhookConfig:
        value = self.secret.get_secret_value()
        if value.startswith("env:") and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value[4:]):
            raise ValueError("secret = env:NAME needs an environment variable name")
        unknown = sorted(set(self.types) - set(EVENT_TYPE_NAMES))
        if unknown:
            raise ValueError(f"unknown event types {unknown} (known: {', '.join(EVENT_TYPE_NAMES)})")
        if self.backoff_max_s < self.backoff_initial_s:
            raise ValueError("backoff_max_s must be >= backoff_initial_s")
        return self

    @property
    def secret_env(self) -> str | None:
        """The environment variable named by ``secret = "env:NAME"``, or None for a literal secret."""
        value = self.secret.get_secret_value()
        return value[4:] if value.startswith("env:") else None

    def secret_bytes(self) -> bytes:
        """The signing secret (an unset variable is refused at start: :func:`~streamwatch.outbound.wiring.check_secrets`)."""
        env = self.secret_env
        return os.environ.get(env, "").encode() if env else self.secret.get_secret_value().encode()


class MqttConfig(_Section):
    host: Annotated[str | None, Field(description="MQTT broker host; unset = MQTT off.")] = None
    port: Annotated[int, Field(ge=1, le=65535, description="MQTT broker port.")] = 1883
    client_id: Annotated[str, Field(max_length=64, description="MQTT client id (empty = random).")] = ""
    username: Annotated[str | None, Field(description="Broker user name.")] = None
    password_env: Annotated[
        str | None, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", description="Environment variable holding the broker password.")
    ] = None
    topic_prefix: Annotated[str, Field(pattern=r"^[^#+]+$", description="Topics are PREFIX/<stream>/<type> and PREFIX/<stream>/state.")] = (
        "streamwatch"
    )
    types: Annotated[list[str], Field(min_length=1, description="Event types published.")] = ["alert", "health", "review"]
    qos: Annotated[int, Field(ge=0, le=2, description="QoS of event messages (state messages are retained with the same QoS).")] = 1
    keepalive_s: Annotated[int, Field(ge=5, le=3600, description="MQTT keep-alive interval.")] = 30
    queue_max: Annotated[
        int, Field(ge=1, description="Messages queued while the broker is away; beyond it new ones are dropped (counted).")
    ] = 10_000

    @model_validator(mode="after")
    def _check(self) -> MqttConfig:
        unknown = sorted(set(self.types) - set(EVENT_TYPE_NAMES))
        if unknown:
            raise ValueError(f"unknown event types {unknown} (known: {', '.join(EVENT_TYPE_NAMES)})")
        return self
