"""Durable event store: one SQLite database (WAL) per daemon plus evidence image files beside it.

Events are committed before anyone broadcasts them (:class:`~streamwatch.events.bus.EventBus` calls
:meth:`EventStore.append` first). WAL with ``synchronous=NORMAL`` survives a killed process (kill -9):
a committed transaction is in the WAL file, which the next open replays. Ids come from an
AUTOINCREMENT key, so they are strictly increasing and never reused, even after retention deletes the
newest rows' predecessors. Blocking calls: run them in an executor from async code.

A write the data folder refuses (a full disk, a quota: :func:`~streamwatch.events.storage.storage_error`)
raises :class:`~streamwatch.errors.StorageError` and is recorded in :attr:`EventStore.health`; the next
write of the same kind that succeeds clears it. Retention (:mod:`~streamwatch.events.retention`) keeps
the store under ``retention_mb`` and the disk's free space above ``min_free_mb``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from streamwatch.errors import EventsError
from streamwatch.events.codec import decode, encode_body, with_id
from streamwatch.events.model import Event
from streamwatch.events.retention import Retention
from streamwatch.events.storage import StorageHealth, storage_error

logger = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    type TEXT NOT NULL,
    stream TEXT NOT NULL,
    owner TEXT,
    at REAL NOT NULL,
    files TEXT NOT NULL DEFAULT '',
    body TEXT NOT NULL,
    stored_at REAL
);
CREATE INDEX IF NOT EXISTS events_stream ON events(stream, id);
CREATE INDEX IF NOT EXISTS events_at ON events(at);
CREATE TABLE IF NOT EXISTS frames (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    stream TEXT NOT NULL,
    offset REAL NOT NULL,
    at REAL NOT NULL,
    thumb TEXT,
    model TEXT NOT NULL,
    tags TEXT NOT NULL DEFAULT '',
    embedding BLOB NOT NULL,
    stored_at REAL
);
CREATE INDEX IF NOT EXISTS frames_stream ON frames(stream, id);
CREATE INDEX IF NOT EXISTS frames_at ON frames(at);
CREATE TABLE IF NOT EXISTS sessions (
    stream TEXT PRIMARY KEY,
    started_at REAL NOT NULL,
    heartbeat_at REAL NOT NULL,
    heartbeat_offset REAL NOT NULL,
    ended_at REAL
);
"""


@dataclass(frozen=True, slots=True)
class StreamSession:
    """A live stream's session: ``started_at`` is the wall time of its first frame (offset 0), the
    heartbeat the last moment the daemon was known to watch it; ``ended_at`` is set when it ended on
    purpose (None: still on, or the daemon died)."""

    stream: str
    started_at: float
    heartbeat_at: float
    heartbeat_offset: float
    ended_at: float | None


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """An event as stored and sent: its id, the fields clients filter on, and its wire JSON text."""

    id: int
    type: str
    stream: str
    owner: str | None
    text: str

    def event(self) -> Event:
        return decode(self.text)


@dataclass(frozen=True, slots=True)
class IndexedFrame:
    """A kept frame in the search index: where it is, its thumbnail, its encoder embedding and labels."""

    id: int
    stream: str
    offset: float
    at: float
    thumb: str | None
    model: str  # encoder name (embeddings of different encoders are not comparable)
    tags: tuple[str, ...]
    embedding: np.ndarray  # float32 unit vector (stored as float16)


class EventStore(Retention):
    """SQLite event log + evidence folder under ``data_dir``. Thread-safe."""

    def __init__(
        self,
        data_dir: Path,
        *,
        retention_days: float | None = 30.0,
        retention_mb: float | None = 2048.0,
        min_free_mb: float | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.frames_dir = self.data_dir / "frames"
        self.retention_days = retention_days
        self.retention_mb = retention_mb
        self.min_free_mb = min_free_mb
        self.health = StorageHealth()
        try:
            self.frames_dir.mkdir(parents=True, exist_ok=True)
            self.path = self.data_dir / "events.sqlite3"
            self._db = self._connect()
            self._db.executescript(_SCHEMA)
            self._migrate()
            self._db.execute("PRAGMA wal_autocheckpoint=0")  # checkpoints run beside commits: checkpoint()
            self._reader = self._connect()
            self._ckpt = self._connect()
        except (OSError, sqlite3.Error) as e:
            raise EventsError(f"cannot open the event store in {self.data_dir}: {e}") from e
        self._wlock = threading.Lock()
        self._rlock = threading.Lock()
        self._clock = threading.Lock()

    def _migrate(self) -> None:
        """Stores written before ``stored_at`` existed get the column (NULL: their ``at`` stands in)."""
        for table in ("events", "frames"):
            if "stored_at" not in {r[1] for r in self._db.execute(f"PRAGMA table_info({table})")}:
                self._db.execute(f"ALTER TABLE {table} ADD COLUMN stored_at REAL")
            self._db.execute(f"CREATE INDEX IF NOT EXISTS {table}_stored ON {table}(coalesce(stored_at, at))")

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        return db

    # --- writing -------------------------------------------------------------------------------

    def append(self, events: Sequence[Event]) -> list[StoredEvent]:
        """Commit events in one transaction; return them with their new ids, in order."""
        stored = time.time()
        rows = [(e.TYPE, e.stream, e.owner, e.at, " ".join(e.files()), encode_body(e), stored) for e in events]
        out: list[StoredEvent] = []
        with self._transaction():
            for ev, row in zip(events, rows, strict=True):
                cur = self._db.execute("INSERT INTO events(type, stream, owner, at, files, body, stored_at) VALUES (?,?,?,?,?,?,?)", row)
                eid = int(cur.lastrowid or 0)
                out.append(StoredEvent(eid, ev.TYPE, ev.stream, ev.owner, with_id(eid, row[5])))
        return out

    @contextlib.contextmanager
    def _transaction(self, doing: str = "store events", what: str = "database") -> Iterator[None]:
        """One write transaction under the write lock; an SQLite error rolls it back as EventsError
        (StorageError when the disk takes no writes)."""
        with self._wlock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                yield
                self._db.execute("COMMIT")
            except sqlite3.Error as e:
                if self._db.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        self._db.execute("ROLLBACK")
                raise self._failed(e, what, doing) from e
        self.health.ok(what)

    @contextlib.contextmanager
    def _write(self, doing: str, what: str = "database") -> Iterator[None]:
        """One statement on the writing connection (autocommit) under the write lock, errors as in :meth:`_transaction`."""
        with self._wlock:
            try:
                yield
            except sqlite3.Error as e:
                raise self._failed(e, what, doing) from e
        self.health.ok(what)

    def _failed(self, e: BaseException, what: str, doing: str) -> EventsError:
        """The error to raise for a failed write: a StorageError (recorded in :attr:`health`) or an EventsError."""
        err = storage_error(e, what, doing)
        if err is None:
            return EventsError(f"cannot {doing}: {e}")
        self.health.failed(err, time.monotonic())
        return err

    def append_ids(self, items: Sequence[tuple[int, Event]]) -> list[StoredEvent]:
        """Commit events whose ids were assigned elsewhere (a cluster's JetStream sequence), in one transaction.

        ``items`` are ``(id, event)`` in increasing id order. An id not above the largest ever stored
        (:meth:`high_water`) is skipped (already here, pruned, or it would land out of order), so a
        replayed batch is a no-op. Returns the
        events actually inserted, in order. Errors: :class:`EventsError` on an SQLite failure (nothing kept).
        """
        out: list[StoredEvent] = []
        with self._transaction():
            row = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
            top = int(row[0]) if row else 0  # the largest id ever stored, even if pruned since
            for eid, ev in items:
                if eid <= top:
                    continue
                body = encode_body(ev)
                self._db.execute(
                    "INSERT INTO events(id, type, stream, owner, at, files, body, stored_at) VALUES (?,?,?,?,?,?,?,?)",
                    (eid, ev.TYPE, ev.stream, ev.owner, ev.at, " ".join(ev.files()), body, time.time()),
                )
                out.append(StoredEvent(eid, ev.TYPE, ev.stream, ev.owner, with_id(eid, body)))
                top = eid
        return out

    def add(self, event: Event) -> Event:
        """Store one event and return it with its id (convenience for tools and tests)."""
        stored = self.append([event])[0]
        return replace(event, id=stored.id)

    def add_frame(
        self,
        stream: str,
        offset: float,
        at: float,
        thumb: str | None,
        model: str,
        tags: tuple[str, ...],
        embedding: np.ndarray,
        *,
        frame_id: int | None = None,
    ) -> int:
        """Index one kept frame for search (its embedding stored as float16: 1 KiB per 512-d frame).

        ``frame_id`` gives the id (a cluster's JetStream sequence); an id already present is left as is.
        """
        blob = np.asarray(embedding, np.float16).tobytes()
        with self._write("index a frame"):
            cur = self._db.execute(
                "INSERT OR IGNORE INTO frames(id, stream, offset, at, thumb, model, tags, embedding, stored_at) VALUES (?,?,?,?,?,?,?,?,?)",
                (frame_id, stream, offset, at, thumb, model, " ".join(tags), blob, time.time()),
            )
        return int(frame_id if frame_id is not None else cur.lastrowid or 0)

    def frames(self, *, stream: str | None = None, model: str | None = None, after: int = 0) -> list[IndexedFrame]:
        """Indexed frames with id > ``after``, in id order (incremental loading for the search index)."""
        sql = "SELECT id, stream, offset, at, thumb, model, tags, embedding FROM frames WHERE id > ?"
        args: list[object] = [after]
        for col, val in (("stream", stream), ("model", model)):
            if val is not None:
                sql += f" AND {col} = ?"
                args.append(val)
        with self._rlock:
            rows = self._reader.execute(sql + " ORDER BY id", args).fetchall()
        return [
            IndexedFrame(r[0], r[1], r[2], r[3], r[4], r[5], tuple(r[6].split()), np.frombuffer(r[7], np.float16).astype(np.float32))
            for r in rows
        ]

    def save_image(self, stream: str, data: bytes, suffix: str = ".jpg") -> str:
        """Write an evidence image; return its path relative to the frames folder.

        Errors: StorageError when the disk takes no writes (nothing is left behind), else EventsError.
        """
        day = time.strftime("%Y%m%d", time.gmtime())
        rel = f"{stream}/{day}/{uuid.uuid4().hex}{suffix}"
        path = self.frames_dir / rel
        tmp = path.with_suffix(".part")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(data)
            os.replace(tmp, path)
        except OSError as e:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)  # a partly written file would only take more room
            raise self._failed(e, "files", "write evidence image") from e
        self.health.ok("files")
        return rel

    def probe(self, size: int = 64 * 1024) -> bool:
        """Whether a file of ``size`` bytes (an evidence image) can be written now; clears a files failure."""
        path = self.data_dir / f".probe-{uuid.uuid4().hex}"
        try:
            with open(path, "wb") as f:
                f.write(bytes(size))
        except OSError as e:
            err = storage_error(e, "files", "write to the data folder")
            if err is not None:
                self.health.failed(err, time.monotonic())
            return False
        finally:
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)
        self.health.ok("files")
        return True

    def frame_path(self, rel: str) -> Path | None:
        """Absolute path of an evidence file, or None when ``rel`` escapes the folder or is missing."""
        if not rel or "\\" in rel or "\0" in rel or rel.startswith("/"):
            return None
        root = self.frames_dir.resolve()
        path = (root / rel).resolve()
        if not path.is_relative_to(root) or not path.is_file():
            return None
        return path

    # --- reading -------------------------------------------------------------------------------

    def last_id(self) -> int:
        with self._rlock:
            row = self._reader.execute("SELECT max(id) FROM events").fetchone()
        return int(row[0] or 0)

    def high_water(self, table: str = "events") -> int:
        """Largest id ever stored in ``table`` (``events`` or ``frames``), even if retention deleted it since."""
        if table not in ("events", "frames"):
            raise EventsError(f"no table {table!r}")
        with self._rlock:
            row = self._reader.execute("SELECT seq FROM sqlite_sequence WHERE name = ?", (table,)).fetchone()
        return int(row[0]) if row else 0

    def read(
        self,
        after: int,
        *,
        upto: int | None = None,
        limit: int = 1000,
        types: Iterable[str] | None = None,
        streams: Iterable[str] | None = None,
        owner: str | None = None,
    ) -> list[StoredEvent]:
        """Events with ``after < id <= upto`` matching the filters, in id order."""
        sql = "SELECT id, type, stream, owner, body FROM events WHERE id > ?"
        args: list[object] = [after]
        if upto is not None:
            sql += " AND id <= ?"
            args.append(upto)
        for column, values in (("type", types), ("stream", streams)):
            if values is not None:
                vals = list(values)
                sql += f" AND {column} IN ({','.join('?' * len(vals))})"
                args.extend(vals)
        if owner is not None:
            sql += " AND owner = ?"
            args.append(owner)
        sql += " ORDER BY id LIMIT ?"
        args.append(limit)
        with self._rlock:
            rows = self._reader.execute(sql, args).fetchall()
        return [StoredEvent(r[0], r[1], r[2], r[3], with_id(r[0], r[4])) for r in rows]

    def get(self, event_id: int) -> Event | None:
        with self._rlock:
            row = self._reader.execute("SELECT body FROM events WHERE id = ?", (event_id,)).fetchone()
        return decode(with_id(event_id, row[0])) if row else None

    def events(self, stream: str | None = None, *, start: float | None = None, end: float | None = None) -> list[Event]:
        """All events (optionally of one stream, within wall times) decoded, in id order."""
        sql = "SELECT id, body FROM events WHERE 1=1"
        args: list[object] = []
        if stream is not None:
            sql += " AND stream = ?"
            args.append(stream)
        if start is not None:
            sql += " AND at >= ?"
            args.append(start)
        if end is not None:
            sql += " AND at <= ?"
            args.append(end)
        with self._rlock:
            rows = self._reader.execute(sql + " ORDER BY id", args).fetchall()
        return [decode(with_id(r[0], r[1])) for r in rows]

    # --- stream sessions (offsets that survive a restart) ---------------------------------------

    def session(self, stream: str) -> StreamSession | None:
        """The stream's latest session (ended or not), or None."""
        with self._rlock:
            row = self._reader.execute(
                "SELECT stream, started_at, heartbeat_at, heartbeat_offset, ended_at FROM sessions WHERE stream = ?", (stream,)
            ).fetchone()
        return StreamSession(*row) if row else None

    def heartbeat(self, stream: str, started_at: float, at: float, offset: float) -> None:
        """Record that ``stream``'s session (begun at ``started_at``) was watched up to ``at`` / ``offset``."""
        with self._write("write the session heartbeat"):
            self._db.execute(
                "INSERT INTO sessions (stream, started_at, heartbeat_at, heartbeat_offset, ended_at) VALUES (?, ?, ?, ?, NULL) "
                "ON CONFLICT(stream) DO UPDATE SET started_at = excluded.started_at, heartbeat_at = excluded.heartbeat_at, "
                "heartbeat_offset = excluded.heartbeat_offset, ended_at = NULL",
                (stream, started_at, at, offset),
            )

    def end_session(self, stream: str, at: float) -> None:
        """Mark ``stream``'s session as ended on purpose: the next run starts a new one."""
        with self._write("end the session"):
            self._db.execute("UPDATE sessions SET ended_at = ? WHERE stream = ? AND ended_at IS NULL", (at, stream))

    def streams(self) -> list[str]:
        with self._rlock:
            return [r[0] for r in self._reader.execute("SELECT DISTINCT stream FROM events ORDER BY stream")]

    def checkpoint(self) -> int:
        """Copy committed WAL pages into the database without blocking writers; returns pages left.

        Auto-checkpointing is off on the writing connection (it stalled commits for tens of ms every
        few MB of events); the bus calls this about once a second from another thread instead.
        """
        with self._clock:
            try:
                _busy, log, done = self._ckpt.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            except sqlite3.Error as e:
                raise self._failed(e, "database", "checkpoint the event log") from e
        return int(log) - int(done) if log >= 0 else 0

    def close(self) -> None:
        with self._wlock, self._rlock, self._clock:
            try:
                self._ckpt.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error:
                logger.warning("final checkpoint failed; the WAL is replayed at the next open")
            self._db.close()
            self._reader.close()
            self._ckpt.close()
