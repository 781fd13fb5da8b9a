"""The single box's desired set of streams: the config's streams, plus those added at run time, minus
those removed at run time, persisted in ``data_dir/streams.json``.

- A stream added at run time survives restarts; a config stream removed at run time stays removed
  across restarts until it is added again (by id; the added definition then wins over the config's).
- The file is written atomically (a temporary file, fsync, ``os.replace``): a crash leaves the old or
  the new set, never half of one. A file that cannot be read or parsed is a :class:`ConfigError` naming
  it; it is never reset silently (that would bring back removed streams or drop added ones).

File shape (version 1)::

    {"version": 1, "added": [{"id": …, "source": …, "listen": …, "every_s": …, "policy": …}, …],
     "removed": ["config-stream-id", …]}

:func:`validate_stream` checks one stream definition from a client (WebSocket, HTTP, CLI) the way the
config file's ``[[streams]]`` are checked, plus the source URL and the policy file.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from streamwatch.config import StreamConfig, format_validation_error
from streamwatch.errors import ConfigError, DuplicateStream, UnknownStream

logger = logging.getLogger(__name__)

FILE_NAME = "streams.json"
VERSION = 1

Origin = Literal["config", "runtime"]


def validate_stream(raw: Mapping[str, Any]) -> StreamConfig:
    """A :class:`StreamConfig` from a client's stream object, or ConfigError with one line per bad field.

    Beyond the config schema (id pattern, unknown keys, ``every_s`` > 0): the source must parse as a
    source URL (``listen=true`` needs ``rtmp://``), and a given policy file must exist and load. Reads
    the policy file (no other I/O).
    """
    from streamwatch.analysis.policy import load_policy
    from streamwatch.ingest.url import parse_source

    if not isinstance(raw, Mapping):
        raise ConfigError("a stream must be an object: {id, source, listen?, every_s?, policy?}")
    try:
        cfg = StreamConfig.model_validate(dict(raw))
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, "stream").replace("invalid configuration in stream", "invalid stream")) from e
    try:
        parse_source(cfg.source, listen=cfg.listen)
    except ValueError as e:  # ConfigError, or urlsplit's ValueError on a malformed URL (e.g. a bad IPv6 host)
        msg = str(e) if isinstance(e, ConfigError) else f"malformed source URL: {e}"
        raise ConfigError(f"invalid stream:\n  source: {msg}") from e
    if cfg.policy is not None:
        if not cfg.policy.is_file():
            raise ConfigError(f"invalid stream:\n  policy: no policy file {cfg.policy}")
        load_policy(cfg.policy)  # PolicyError (a ConfigError) naming the file and line
    return cfg


def _dump(cfg: StreamConfig) -> dict[str, Any]:
    return cfg.model_dump(mode="json")


class DesiredFile:
    """The desired set of one process, backed by ``path`` (``data_dir/streams.json``).

    ``configured`` is the config file's ``[[streams]]`` at start. Each change writes the file (a few
    hundred bytes, fsynced) before it returns, so call it from an executor; a lock makes concurrent
    calls (two clients adding the same id at once) take turns: one wins, the other gets DuplicateStream.
    """

    def __init__(self, path: Path, configured: list[StreamConfig]) -> None:
        self.path = path
        self._configured = {c.id: c for c in configured}
        self._added: dict[str, StreamConfig] = {}
        self._removed: set[str] = set()
        self._lock = threading.RLock()
        self._load()

    @classmethod
    def in_dir(cls, data_dir: Path, configured: list[StreamConfig]) -> DesiredFile:
        return cls(data_dir / FILE_NAME, configured)

    # --- reading -------------------------------------------------------------------------------

    def _load(self) -> None:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return
        except OSError as e:
            raise ConfigError(f"cannot read the stream set {self.path}: {e.strerror or e}") from e
        fix = "fix or move the file away (moving it restores the config's streams and forgets streams added at run time)"
        try:
            d = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as e:
            raise ConfigError(f"{self.path}: corrupt stream set (not JSON: {e}); {fix}") from e
        if not isinstance(d, dict) or d.get("version") != VERSION:
            raise ConfigError(f"{self.path}: not a version-{VERSION} stream set (an object with version, added, removed); {fix}")
        added, removed = d.get("added", []), d.get("removed", [])
        if not isinstance(added, list) or not isinstance(removed, list) or not all(isinstance(r, str) for r in removed):
            raise ConfigError(f"{self.path}: 'added' must be a list of streams and 'removed' a list of ids; {fix}")
        for n, item in enumerate(added):
            try:
                cfg = StreamConfig.model_validate(item)
            except ValidationError as e:
                where = f"{self.path} (added[{n}])"
                raise ConfigError(f"{format_validation_error(e, where)}\n{fix}") from e
            if cfg.id in self._added:
                raise ConfigError(f"{self.path}: stream {cfg.id!r} is added twice; {fix}")
            self._added[cfg.id] = cfg
        self._removed = set(removed)
        for sid in self._added.keys() & self._configured.keys():
            if self._added[sid] != self._configured[sid]:
                logger.warning("stream %s: the definition added at run time replaces the config's (see %s)", sid, self.path)

    def streams(self) -> list[StreamConfig]:
        """The desired streams: config order first (each possibly replaced by a run-time definition), then
        the streams added at run time in the order they were added."""
        with self._lock:
            out = [self._added.get(sid, cfg) for sid, cfg in self._configured.items() if sid not in self._removed]
            out.extend(cfg for sid, cfg in self._added.items() if sid not in self._configured)
            return out

    def get(self, stream_id: str) -> StreamConfig:
        """The desired stream ``stream_id``; UnknownStream when it is not desired."""
        with self._lock:
            cfg = self._added.get(stream_id)
            if cfg is None and stream_id not in self._removed:
                cfg = self._configured.get(stream_id)
        if cfg is None:
            raise UnknownStream(f"no stream {stream_id!r}; known: {', '.join(sorted(self.ids())) or 'none'}")
        return cfg

    def ids(self) -> list[str]:
        return [c.id for c in self.streams()]

    def origin(self, stream_id: str) -> Origin:
        """``"config"`` for a config file stream (as configured), ``"runtime"`` for one added at run time."""
        with self._lock:
            self.get(stream_id)
            return "runtime" if stream_id in self._added else "config"

    # --- changing ------------------------------------------------------------------------------

    def add(self, cfg: StreamConfig) -> None:
        """Add ``cfg`` to the desired set and persist it; DuplicateStream when its id is already desired."""
        with self._lock:
            self._add(cfg)

    def _add(self, cfg: StreamConfig) -> None:
        if cfg.id in self.ids():
            raise DuplicateStream(f"stream {cfg.id!r} is already watched; remove it first to change it")
        removed = cfg.id in self._removed
        self._removed.discard(cfg.id)
        if cfg.id not in self._configured or cfg != self._configured[cfg.id]:
            self._added[cfg.id] = cfg
        try:
            self._save()
        except BaseException:
            self._added.pop(cfg.id, None)
            if removed:
                self._removed.add(cfg.id)
            raise

    def remove(self, stream_id: str) -> StreamConfig:
        """Remove ``stream_id`` from the desired set and persist it; UnknownStream when not desired."""
        with self._lock:
            return self._remove(stream_id)

    def _remove(self, stream_id: str) -> StreamConfig:
        cfg = self.get(stream_id)
        added = self._added.pop(stream_id, None)
        configured = stream_id in self._configured
        if configured:
            self._removed.add(stream_id)
        try:
            self._save()
        except BaseException:
            if added is not None:
                self._added[stream_id] = added
            if configured:
                self._removed.discard(stream_id)
            raise
        return cfg

    def _save(self) -> None:
        data = {
            "version": VERSION,
            "added": [_dump(c) for c in self._added.values()],
            "removed": sorted(self._removed & self._configured.keys()),
        }
        text = json.dumps(data, ensure_ascii=False, indent=1) + "\n"
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise ConfigError(f"cannot write the stream set {self.path}: {e.strerror or e}") from e
