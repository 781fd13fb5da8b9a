"""Retention of the event store: by age, under a size cap, and above a free-space floor on the data disk.

:class:`Retention` is the part of :class:`~streamwatch.events.store.EventStore` that deletes: the
oldest thumbnails of the search index first, then the oldest events with their evidence files. The
free-space floor (``store.min_free_mb``) makes room before a full disk refuses writes; pages SQLite
freed count as room (it reuses them before growing its file), so deleting rows does not go on and on
while the file keeps its size. Blocking (SQLite, files): run from an executor.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import sqlite3
import threading
import time
from pathlib import Path

from streamwatch.events.storage import floor_deficit

logger = logging.getLogger(__name__)


class Retention:
    """Deleting old rows and files; mixed into EventStore, whose connections and locks it uses."""

    data_dir: Path
    frames_dir: Path
    retention_days: float | None
    retention_mb: float | None
    min_free_mb: float | None
    _db: sqlite3.Connection
    _reader: sqlite3.Connection
    _rlock: threading.Lock
    _wlock: threading.Lock

    def _transaction(self, doing: str = "store events", what: str = "database") -> contextlib.AbstractContextManager[None]:
        raise NotImplementedError

    def frame_path(self, rel: str) -> Path | None:
        raise NotImplementedError

    def size_bytes(self) -> int:
        total = sum(p.stat().st_size for p in self.data_dir.glob("events.sqlite3*") if p.is_file())
        return total + sum(p.stat().st_size for p in self.frames_dir.rglob("*") if p.is_file())

    def free_bytes(self) -> tuple[int, int]:
        """(free bytes on the data disk, bytes of pages SQLite freed and reuses before growing its file)."""
        free = shutil.disk_usage(self.data_dir).free
        with self._rlock:
            pages = self._reader.execute("PRAGMA freelist_count").fetchone()[0]
            page = self._reader.execute("PRAGMA page_size").fetchone()[0]
        return free, int(pages) * int(page)

    def space_needed(self) -> int:
        """Bytes to delete to get the free space back above the ``min_free_mb`` floor (0: above it, or no floor)."""
        if self.min_free_mb is None:
            return 0
        free, reusable = self.free_bytes()
        return floor_deficit(free, reusable, int(self.min_free_mb * 1024 * 1024))

    def prune(self, now: float | None = None, *, by_age: bool = True, by_size: bool = True) -> int:
        """Delete events stored longer ago than the retention age (``by_age``), the oldest ones over the
        size cap (``by_size``, one pass by the rows' and files' sizes), then the oldest ones while under
        the free-space floor (measured again after each pass); returns the events removed.

        The age counts from when a row was stored (``stored_at``), not from the picture's own time: a
        recording of last year's show analysed today, or a frame whose clock is off, is kept as long
        as anything else (rows from stores older than ``stored_at`` fall back to ``at``).

        The search index goes first, then the oldest events with their evidence. Errors: StorageError
        when even a delete cannot be written (the evidence files are removed all the same).
        """
        removed = 0
        if self.retention_days is not None and by_age:
            cutoff = (now if now is not None else time.time()) - self.retention_days * 86400
            age = "coalesce(stored_at, at) < ?"
            removed += self._delete(f"SELECT id, files FROM events WHERE {age} ORDER BY id", (cutoff,))
            self._delete(f"SELECT id, coalesce(thumb, '') FROM frames WHERE {age} ORDER BY id", (cutoff,), table="frames")
        if self.retention_mb is not None and by_size:
            excess = self.size_bytes() - int(self.retention_mb * 1024 * 1024)
            if excess > 0:  # the search index goes first: alerts and their evidence are worth more
                excess -= self._delete_oldest_frames(excess)
            if excess > 0:
                removed += self._delete_oldest(excess)
        need = self.space_needed()
        for _ in range(8):  # sizes only estimate the room a delete gives back (pages, the WAL): measure again
            if need <= 0:
                break
            self._delete_oldest_frames(_slack(need))
            left = self.space_needed()
            if left > 0:
                removed += self._delete_oldest(_slack(left))
                left = self.space_needed()
            if left >= need:  # nothing (more) to delete helps
                break
            need = left
        if removed:
            logger.info("retention removed %d events", removed)
        return removed

    def _delete_oldest(self, excess: int) -> int:
        """Delete the oldest events until their rows and files add up to ``excess`` bytes."""
        freed, upto, after = 0, 0, 0
        while freed < excess:
            with self._rlock:
                rows = self._reader.execute(
                    "SELECT id, files, length(body) FROM events WHERE id > ? ORDER BY id LIMIT 200", (after,)
                ).fetchall()
            if not rows:
                break
            for eid, files, size in rows:
                freed += size + 100 + sum(self._file_size(rel) for rel in files.split())
                upto = after = eid
                if freed >= excess:
                    break
        return self._delete("SELECT id, files FROM events WHERE id <= ? ORDER BY id", (upto,)) if upto else 0

    def _delete_oldest_frames(self, excess: int) -> int:
        freed, upto = 0, 0
        with self._rlock:
            rows = self._reader.execute("SELECT id, coalesce(thumb, ''), length(embedding) FROM frames ORDER BY id").fetchall()
        for fid, thumb, size in rows:
            freed += size + 100 + (self._file_size(thumb) if thumb else 0)
            upto = fid
            if freed >= excess:
                break
        if upto:
            self._delete("SELECT id, coalesce(thumb, '') FROM frames WHERE id <= ? ORDER BY id", (upto,), table="frames")
        return freed

    def _file_size(self, rel: str) -> int:
        path = self.frame_path(rel)
        return path.stat().st_size if path is not None else 0

    def _delete(self, select: str, args: tuple[object, ...], table: str = "events") -> int:
        with self._wlock:
            rows = self._db.execute(select, args).fetchall()
        if not rows:
            return 0
        try:
            with self._transaction(f"delete old {table}"):
                self._db.executemany(f"DELETE FROM {table} WHERE id = ?", [(r[0],) for r in rows])
        finally:  # a disk too full to write the delete still gets the room of the files back (the rows go next round)
            for _, files in rows:
                for rel in files.split():
                    path = self.frame_path(rel)
                    if path is not None:
                        path.unlink(missing_ok=True)
        return len(rows)


def _slack(excess: int) -> int:
    """What to delete for ``excess`` bytes of room: a delete gives back less than the rows' and files' sizes
    (partly used pages, the WAL it writes), so a quarter and 64 KiB more."""
    return excess + excess // 4 + 64 * 1024
