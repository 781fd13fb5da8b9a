"""When the data folder takes no writes: which failures those are, the state a stream reports, room to make.

A full disk must not end the watch. Every writer of the store (event and frame-index inserts, session
heartbeats, evidence images and thumbnails) turns a failure that means "no room / no writes here" into a
:class:`~streamwatch.errors.StorageError` (:func:`storage_error`) and records it in the store's
:class:`StorageHealth`; each running stream says it as one ``storage`` health event while it lasts
and one when writes work again. :func:`floor_deficit` is the retention arithmetic of the
free-space floor. Pure: errors and numbers in, values out (time is passed in).
"""

from __future__ import annotations

import errno
import sqlite3
import threading

from streamwatch.errors import StorageError

# OS errors that mean the data folder takes no more writes (not a bug, not a bad path)
FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS})
# SQLite primary result codes of the same (extended codes carry them in the low byte)
_SQLITE_FULL = frozenset({sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR, sqlite3.SQLITE_READONLY})

WRITERS = ("database", "files")  # what StorageError.what names: the SQLite event log, evidence files


def storage_error(e: BaseException, what: str, doing: str) -> StorageError | None:
    """A :class:`StorageError` for ``e`` when it means the data folder takes no writes, else None.

    ``what`` is the writer (:data:`WRITERS`), ``doing`` what it tried ("write evidence image").
    """
    if isinstance(e, OSError) and e.errno in FULL_ERRNOS:
        return StorageError(f"cannot {doing}: {e}", what)
    if isinstance(e, sqlite3.Error):
        code = getattr(e, "sqlite_errorcode", None)
        if (code is not None and code & 0xFF in _SQLITE_FULL) or "disk is full" in str(e):
            return StorageError(f"cannot {doing}: {e}", what)
    return None


class StorageHealth:
    """Which writers of one store fail, thread-safe (writers run in executors).

    A writer fails until one of its writes succeeds again. :meth:`problem` is what a stream reports:
    the last error while any writer fails, or while the last failure is less than ``settle_s`` old
    (a disk that is just full lets some writes through: the state does not flap with them).
    """

    def __init__(self, settle_s: float = 3.0) -> None:
        self.settle_s = settle_s
        self._lock = threading.Lock()
        self._failing: dict[str, str] = {}  # writer → its last error
        self._last: tuple[float, str] | None = None  # (monotonic time, error) of the last failure
        self.failures = 0  # every failed write (a metric)

    def failed(self, e: StorageError, now: float) -> None:
        with self._lock:
            self._failing[e.what] = str(e)
            self._last = (now, str(e))
            self.failures += 1

    def ok(self, what: str) -> None:
        if what in self._failing:  # (a dict read needs no lock: the common case costs nothing)
            with self._lock:
                self._failing.pop(what, None)

    def failing(self, what: str | None = None) -> bool:
        """Whether ``what`` (any writer when None) fails now."""
        return bool(self._failing) if what is None else what in self._failing

    def problem(self, now: float) -> str | None:
        """The error to report while storage fails (or failed less than ``settle_s`` ago), else None."""
        with self._lock:
            if self._failing:
                return next(reversed(self._failing.values()))
            if self._last is not None and now - self._last[0] < self.settle_s:
                return self._last[1]
            return None


def floor_deficit(free: int, reusable: int, floor: int) -> int:
    """Bytes retention must delete (0: none) to keep ``floor`` bytes (``store.min_free_mb``) free on the data disk.

    ``free``: the disk's free bytes; ``reusable``: pages SQLite already freed and reuses before growing
    its file (deleting rows gives back room there, not on the disk).
    """
    return max(0, floor - free - reusable)
