"""Placeholder until the persisted desired set lands (in-memory)."""

from __future__ import annotations

from pathlib import Path

from streamwatch.config import StreamConfig
from streamwatch.errors import ConfigError


class DesiredFile:
    def __init__(self, path: Path, configured: list[StreamConfig]) -> None:
        self.path = path
        self._streams = {c.id: c for c in configured}
        self._config = set(self._streams)

    def streams(self) -> list[StreamConfig]:
        return list(self._streams.values())

    def add(self, cfg: StreamConfig) -> None:
        if cfg.id in self._streams:
            raise ConfigError(f"stream {cfg.id} already exists")
        self._streams[cfg.id] = cfg

    def remove(self, stream_id: str) -> StreamConfig:
        if stream_id not in self._streams:
            raise ConfigError(f"unknown stream {stream_id}")
        return self._streams.pop(stream_id)

    def origin(self, stream_id: str) -> str:
        return "config" if stream_id in self._config else "runtime"
