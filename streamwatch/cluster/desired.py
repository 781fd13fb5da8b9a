"""The desired set of streams: what the cluster should be watching, in a KV bucket (no TTL).

Key ``stream_key(stream id)``, value the :class:`~streamwatch.config.StreamConfig` as JSON
(pydantic ``model_dump_json``). Gateways add and remove streams; workers read the set every
round (:meth:`DesiredStreams.all`) or follow it (:meth:`DesiredStreams.watch`).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import nats.js.errors
from nats.js.kv import KeyValue
from pydantic import ValidationError

from streamwatch.cluster.connect import NATS_ERRORS, is_wrong_sequence, kv_items, stream_key, stream_of_key
from streamwatch.config import StreamConfig
from streamwatch.errors import ClusterError, ConfigError, DuplicateStream, UnknownStream
from streamwatch.ingest.url import parse_source

logger = logging.getLogger(__name__)


def _decode(key: str, value: bytes | None) -> StreamConfig:
    try:
        return StreamConfig.model_validate_json(value or b"")
    except ValidationError as e:
        raise ConfigError(f"desired stream {stream_of_key(key)}: stored config is invalid: {e}") from e


class DesiredStreams:
    """The desired streams in ``kv`` (a bucket without TTL, see ``connect.kv_bucket``)."""

    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv

    async def add(self, cfg: StreamConfig) -> int:
        """Add stream ``cfg``; its revision in the bucket.

        Raises :class:`ConfigError` when the id is already desired (``kv.create``: of two gateways
        adding the same id at once exactly one succeeds) or the source is malformed (as
        ``parse_source`` says), :class:`ClusterError` when NATS fails.
        """
        parse_source(cfg.source, listen=cfg.listen)
        try:
            rev = await self.kv.create(stream_key(cfg.id), cfg.model_dump_json().encode())
        except NATS_ERRORS as e:
            if is_wrong_sequence(e):
                raise DuplicateStream(f"stream {cfg.id} already exists") from e
            raise ClusterError(f"stream {cfg.id}: cannot add it: {e!r}") from e
        logger.info("stream %s: added to the desired streams", cfg.id)
        return rev

    async def remove(self, stream_id: str) -> None:
        """Remove ``stream_id``. Raises :class:`ConfigError` ("unknown stream") when it is not
        desired (or another gateway removed it first), :class:`ClusterError` when NATS fails."""
        key = stream_key(stream_id)
        try:
            entry = await self.kv.get(key)
            await self.kv.delete(key, last=entry.revision)
        except nats.js.errors.KeyNotFoundError as e:
            raise UnknownStream(f"unknown stream {stream_id}") from e
        except NATS_ERRORS as e:
            if is_wrong_sequence(e):
                raise UnknownStream(f"unknown stream {stream_id} (removed or changed meanwhile)") from e
            raise ClusterError(f"stream {stream_id}: cannot remove it: {e!r}") from e
        logger.info("stream %s: removed from the desired streams", stream_id)

    async def get(self, stream_id: str) -> StreamConfig | None:
        """The config of ``stream_id``, None when it is not desired. Raises :class:`ClusterError`
        when NATS fails, :class:`ConfigError` when the stored value is not a valid StreamConfig."""
        key = stream_key(stream_id)
        try:
            entry = await self.kv.get(key)
        except nats.js.errors.KeyNotFoundError:  # KeyDeletedError included
            return None
        except NATS_ERRORS as e:
            raise ClusterError(f"stream {stream_id}: cannot read its config: {e!r}") from e
        return _decode(key, entry.value)

    async def all(self) -> dict[str, StreamConfig]:
        """Stream id → config of every desired stream (an invalid stored value is logged and left
        out). Raises :class:`ClusterError` when NATS fails."""
        out: dict[str, StreamConfig] = {}
        for key, entry in (await kv_items(self.kv)).items():
            try:
                out[stream_of_key(key)] = _decode(key, entry.value)
            except ConfigError as e:
                logger.warning("%s", e)
        return out

    async def watch(self) -> AsyncIterator[tuple[str, StreamConfig | None]]:
        """Changes as they happen: ``(stream id, config)`` for an added or replaced stream,
        ``(stream id, None)`` for a removed one, starting with every stream desired now.

        Runs until cancelled. Backed by a nats-py ordered consumer, which survives a node loss
        and a reconnect here; a worker should still reconcile with :meth:`all` now and then (a
        watcher misses nothing it was sent, but a client that was cut off for minutes may find its
        consumer gone). Raises :class:`ClusterError` when the watch cannot start.
        """
        try:
            watcher = await self.kv.watchall()
        except NATS_ERRORS as e:
            raise ClusterError(f"cannot watch the desired streams: {e!r}") from e
        try:
            async for entry in watcher:
                if entry is None:  # the end of the initial values
                    continue
                stream_id = stream_of_key(entry.key)
                if entry.operation in ("DEL", "PURGE"):
                    yield stream_id, None
                    continue
                try:
                    yield stream_id, _decode(entry.key, entry.value)
                except ConfigError as e:
                    logger.warning("%s", e)
        finally:
            await watcher.stop()  # type: ignore[no-untyped-call]  # nats-py leaves it unannotated
