"""The webhooks' durable outbox: ``data_dir/outbox.sqlite3`` beside the event store.

The events themselves are the event store's (committed before anyone hears of them); the outbox keeps
what is needed to deliver them at least once across receiver outages and restarts (kill -9 included):
per endpoint the id of the last event handled (delivered or dead-lettered), moved only after the
receiver said 2xx, and the dead letters. An endpoint seen for the first time starts at the store's
newest event (no history replay) and its cursor is committed at once, so nothing after that is lost.
Blocking calls: run them in an executor from async code.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from streamwatch.errors import OutboundError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS cursors (
    endpoint TEXT PRIMARY KEY,
    after_id INTEGER NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS dead_letters (
    endpoint TEXT NOT NULL,
    event_id INTEGER NOT NULL,
    dead_at REAL NOT NULL,
    error TEXT NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (endpoint, event_id)
);
"""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    endpoint: str
    event_id: int
    dead_at: float
    error: str
    body: str


class Outbox:
    """Delivery cursors and dead letters (thread-safe; one connection, serialised)."""

    def __init__(self, data_dir: Path) -> None:
        self.path = Path(data_dir) / "outbox.sqlite3"
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as e:
            raise OutboundError(f"cannot open the webhook outbox {self.path}: {e}") from e
        self._lock = threading.Lock()

    def cursor(self, endpoint: str, start: int) -> int:
        """The endpoint's cursor; a new endpoint's is ``start`` (stored now)."""
        with self._lock, self._db:
            self._db.execute(
                "INSERT OR IGNORE INTO cursors (endpoint, after_id, updated_at) VALUES (?, ?, ?)", (endpoint, start, time.time())
            )
            row = self._db.execute("SELECT after_id FROM cursors WHERE endpoint = ?", (endpoint,)).fetchone()
        return int(row[0])

    def advance(self, endpoint: str, after_id: int, dead: Sequence[tuple[int, str]] = (), error: str = "") -> None:
        """Everything up to ``after_id`` is handled; ``dead`` (id, body) go to the dead letters, in the same commit."""
        now = time.time()
        try:
            with self._lock, self._db:
                self._db.executemany(
                    "INSERT OR REPLACE INTO dead_letters (endpoint, event_id, dead_at, error, body) VALUES (?, ?, ?, ?, ?)",
                    [(endpoint, i, now, error, body) for i, body in dead],
                )
                self._db.execute(
                    "UPDATE cursors SET after_id = max(after_id, ?), updated_at = ? WHERE endpoint = ?", (after_id, now, endpoint)
                )
        except sqlite3.Error as e:
            raise OutboundError(f"webhook outbox write failed: {e}") from e

    def dead_letters(self, endpoints: Iterable[str] | None = None) -> list[DeadLetter]:
        rows = self._db.execute("SELECT endpoint, event_id, dead_at, error, body FROM dead_letters ORDER BY event_id").fetchall()
        wanted = set(endpoints) if endpoints is not None else None
        return [DeadLetter(*r) for r in rows if wanted is None or r[0] in wanted]

    def close(self) -> None:
        self._db.close()


def count_pending(events_db: Path, after: int, types: Iterable[str], streams: Iterable[str] | None) -> int:
    """Events after ``after`` of these types (and streams) in the event store: an endpoint's backlog."""
    types = list(types)
    sql = f"SELECT count(*) FROM events WHERE id > ? AND type IN ({','.join('?' * len(types))})"
    args: list[object] = [after, *types]
    if streams is not None:
        streams = list(streams)
        sql += f" AND stream IN ({','.join('?' * len(streams))})"
        args += streams
    db = sqlite3.connect(f"file:{events_db}?mode=ro", uri=True, timeout=30)
    try:
        return int(db.execute(sql, args).fetchone()[0])
    except sqlite3.Error as e:
        raise OutboundError(f"cannot count the webhook backlog: {e}") from e
    finally:
        db.close()
