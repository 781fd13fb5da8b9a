"""Connecting to the NATS cluster, and the names of everything in it.

* :func:`connect` opens one nats-py connection to all of ``cluster.nats`` (retrying until
  ``connect_timeout_s``); after that nats-py reconnects by itself when a node goes away.
* :class:`Names` is the one place bucket and stream names are derived from ``cluster.name``.
* :func:`kv_bucket` (from kv.py) creates a KV bucket or binds to the existing one.

Every NATS error that leaves this package is a :class:`~streamwatch.errors.ClusterError`.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Final

from nats.aio.client import Client

from streamwatch.cluster.kv import (  # re-exported: callers written before kv.py import them from here
    NATS_ERRORS,
    create_refused,
    is_wrong_sequence,
    kv_bucket,
    kv_items,
    stream_key,
    stream_of_key,
)
from streamwatch.config import ClusterConfig
from streamwatch.errors import ClusterError
from streamwatch.ingest.url import redact_url

logger = logging.getLogger(__name__)

RECONNECT_WAIT_S: Final = 0.5  # between two tries of the same server (nats-py's reconnect_time_wait)


async def connect(cfg: ClusterConfig, *, name: str) -> Client:
    """A connection to the NATS servers ``cfg.nats`` (client name ``name``, shown by the server).

    The first connection is retried (each server every ~0.5 s, TCP connect timeout 1–2 s) until
    ``cfg.connect_timeout_s`` seconds have passed. Once connected, nats-py reconnects for ever after
    a node loss (``max_reconnect_attempts=-1``), trying the configured and discovered servers;
    disconnects and reconnects are logged. Raises :class:`ClusterError` naming the URLs (credentials
    redacted) and the last error when no server answered in time, or when ``cfg.nats`` is empty.
    """
    if not cfg.nats:
        raise ClusterError("cluster mode needs at least one NATS URL in cluster.nats")
    shown = ", ".join(redact_url(u) for u in cfg.nats)
    nc = Client()
    last: list[BaseException] = []

    async def on_error(e: Exception) -> None:
        last[:] = [e]
        if nc.is_connected:
            logger.warning("NATS %s: %s", name, e)
        else:
            logger.debug("NATS %s: connect attempt failed: %s", name, e)

    async def on_disconnect() -> None:
        logger.warning("NATS %s: disconnected; reconnecting to %s", name, shown)

    async def on_reconnect() -> None:
        url = nc.connected_url
        logger.info("NATS %s: reconnected to %s", name, redact_url(url.geturl()) if url else "?")

    try:
        async with asyncio.timeout(cfg.connect_timeout_s):
            await nc.connect(
                servers=list(cfg.nats),
                name=name,
                connect_timeout=max(1, min(2, int(cfg.connect_timeout_s))),  # s, per TCP connect
                reconnect_time_wait=RECONNECT_WAIT_S,  # type: ignore[arg-type]  # annotated int, used as float seconds
                max_reconnect_attempts=-1,
                error_cb=on_error,
                disconnected_cb=on_disconnect,
                reconnected_cb=on_reconnect,
            )
    except (TimeoutError, *NATS_ERRORS) as e:
        cause = last[0] if last else e
        await _close_quietly(nc)
        raise ClusterError(f"cannot connect to NATS at {shown} within {cfg.connect_timeout_s:g} s: {cause!r}") from cause
    url = nc.connected_url
    logger.info("NATS %s: connected to %s", name, redact_url(url.geturl()) if url else shown)
    return nc


async def _close_quietly(nc: Client) -> None:
    try:
        await asyncio.wait_for(nc.close(), 2.0)
    except (TimeoutError, *NATS_ERRORS) as e:
        logger.debug("NATS close after a failed connect: %s", e)


@dataclass(frozen=True, slots=True)
class Names:
    """Names of one cluster's buckets and streams, all derived from ``cluster.name`` (the prefix)."""

    prefix: str

    @classmethod
    def from_config(cls, cfg: ClusterConfig) -> Names:
        return cls(cfg.name)

    @property
    def desired(self) -> str:
        """KV bucket: stream id → StreamConfig JSON (no TTL)."""
        return f"{self.prefix}-desired"

    @property
    def leases(self) -> str:
        """KV bucket: stream id → lease (TTL = lease_ttl_s)."""
        return f"{self.prefix}-leases"

    @property
    def members(self) -> str:
        """KV bucket: worker id → membership record (TTL = lease_ttl_s)."""
        return f"{self.prefix}-members"

    @property
    def fans(self) -> str:
        """KV bucket: hashed fan (token + user) → image rate token bucket (TTL = time to refill)."""
        return f"{self.prefix}-fans"

    @property
    def seen(self) -> str:
        """KV bucket: pHash band → recent fans' images with that band (TTL = vlm.duplicate_ttl_s)."""
        return f"{self.prefix}-seen"

    @property
    def state(self) -> str:
        """KV bucket: stream id → the state a new owner carries on (no TTL)."""
        return f"{self.prefix}-state"

    @property
    def events_stream(self) -> str:
        """JetStream stream holding every event of the cluster."""
        return f"{self.prefix}-events"

    @property
    def events_subject(self) -> str:
        """Subject prefix of events: ``<events_subject>.<stream_key(stream id)>``."""
        return f"{self.prefix}.events"

    @property
    def objects(self) -> str:
        """Object store: evidence frames and latest-frame JPEGs."""
        return f"{self.prefix}-frames"

    @property
    def admission(self) -> str:
        """KV bucket: cluster-wide VLM admission slots."""
        return f"{self.prefix}-vlm-admission"


__all__ = [
    "NATS_ERRORS",
    "Names",
    "connect",
    "create_refused",
    "is_wrong_sequence",
    "kv_bucket",
    "kv_items",
    "stream_key",
    "stream_of_key",
]
