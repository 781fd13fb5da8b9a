"""Rule engines per policy file, the stream → policy map, and hot reload of the files.

A stream uses its own ``policy`` file or ``analysis.policy``; streams naming the same file share one
:class:`~streamwatch.analysis.rules.RuleEngine` (and its cooldowns). Streams added at run time may
name a new file: it is loaded then and watched like the others. A reload that fails keeps the
previous policy and tells the streams that use it (a ``config`` health event).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from streamwatch.analysis.policy import RuleSpec, load_policy
from streamwatch.analysis.rules import RuleEngine
from streamwatch.errors import PolicyError
from streamwatch.i18n import Lang

logger = logging.getLogger(__name__)

Notice = Callable[[list[str], str], Awaitable[None]]  # (stream ids, reason) → a config health event on each


def policy_files(path: Path) -> list[Path]:
    """The policy file and the word lists it names (best effort: a broken file is reported on load)."""
    try:
        import tomllib

        raw = tomllib.loads(path.read_text(encoding="utf-8"))
        names = list((raw.get("lists") or {}).values()) + ([raw["t2s"]] if raw.get("t2s") else [])
        return [path, *(path.parent / str(n) for n in names)]
    except (OSError, ValueError):
        return [path]


def file_stamps(paths: list[Path]) -> list[tuple[int, int] | None]:
    """(mtime ns, size) of each file, None where it cannot be read."""
    out: list[tuple[int, int] | None] = []
    for p in paths:
        try:
            st = p.stat()
            out.append((st.st_mtime_ns, st.st_size))
        except OSError:
            out.append(None)
    return out


class Engines:
    """``default``: ``analysis.policy``. Blocking loads run in the default executor."""

    def __init__(self, default: Path, language: Lang = "zh") -> None:
        self.default = default
        self.language = language
        self.engines: dict[Path, RuleEngine] = {}
        self.stream_policy: dict[str, Path] = {}
        self._files: dict[Path, tuple[list[Path], list[tuple[int, int] | None]]] = {}

    def rule_of(self, stream: str, rule: str) -> RuleSpec | None:
        """The rule ``rule`` of the policy ``stream`` uses now (None when it has no such rule)."""
        return next((r for r in self.engine_for(stream).policy.rules if r.id == rule), None)

    async def load(self, path: Path) -> RuleEngine:
        """The engine of ``path``, loading the file the first time. Raises PolicyError."""
        engine = self.engines.get(path)
        if engine is None:
            loop = asyncio.get_running_loop()
            policy = await loop.run_in_executor(None, load_policy, path)
            engine = self.engines.setdefault(path, RuleEngine(policy, self.language))
            files = policy_files(path)
            self._files[path] = (files, await loop.run_in_executor(None, file_stamps, files))
        return engine

    async def assign(self, stream: str, policy: Path | None) -> RuleEngine:
        """Use ``policy`` (None: the default) for ``stream``; loads it if new. Raises PolicyError."""
        path = policy or self.default
        engine = await self.load(path)
        self.stream_policy[stream] = path
        return engine

    def forget(self, stream: str) -> None:
        self.stream_policy.pop(stream, None)

    def engine_for(self, stream: str) -> RuleEngine:
        return self.engines[self.stream_policy.get(stream, self.default)]

    @property
    def default_engine(self) -> RuleEngine:
        return self.engines[self.default]

    async def watch(self, every_s: float, notice: Notice) -> None:
        """Forever: reload a policy whose files changed (checked every ``every_s``)."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(every_s)
            for path, (files, seen) in list(self._files.items()):
                stamps = await loop.run_in_executor(None, file_stamps, files)
                if stamps == seen:
                    continue
                self._files[path] = (files, stamps)
                users = [sid for sid, p in self.stream_policy.items() if p == path]
                try:
                    policy = await loop.run_in_executor(None, load_policy, path)
                except PolicyError as e:
                    logger.error("policy reload failed, keeping the previous policy: %s", e)
                    await notice(users, f"policy reload failed, previous policy kept: {e}")
                    continue
                self.engines[path].replace_policy(policy)
                files = policy_files(path)
                self._files[path] = (files, await loop.run_in_executor(None, file_stamps, files))
                logger.info("policy reloaded from %s (%d rules) at %.0f", path, len(policy.rules), time.time())
