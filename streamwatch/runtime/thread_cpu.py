"""CPU time of this process's OS threads, from ``/proc/self/task`` (Linux; elsewhere: nothing).

``time.thread_time()`` sees only the calling thread. Work that a library hands to threads of its own
(FFmpeg's frame threads ``av:h264:df0``…) is counted here instead: :class:`ThreadGroup` remembers the
threads a call started (:meth:`ThreadGroup.adopt_new`) and reports their CPU seconds, so the ``decode``
stage of a file read with frame threads still holds all of its decoding. :func:`snapshot` and
:func:`by_group` give the whole process by thread (the benchmark's table of where the CPU went).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

_TASKS = "/proc/self/task"
_TICK = float(os.sysconf("SC_CLK_TCK")) if hasattr(os, "sysconf") else 100.0
_OPENING = threading.Lock()  # one decoder opens at a time, so the threads it starts are its own


@dataclass(frozen=True, slots=True)
class ThreadCpu:
    tid: int
    name: str  # the kernel's name of the thread (``comm``): ``av:h264:df0``, ``python``…
    seconds: float  # user + system CPU seconds since the thread started


def parse_stat(text: str) -> tuple[str, float]:
    """(comm, CPU seconds) from one ``/proc/…/stat`` line (pure; the name may hold spaces and parentheses)."""
    open_, close = text.index("("), text.rindex(")")
    fields = text[close + 2 :].split()
    # after "pid (comm)": state is field 3; utime and stime are fields 14 and 15 (1-based)
    return text[open_ + 1 : close], (int(fields[11]) + int(fields[12])) / _TICK


def thread_cpu(tid: int) -> ThreadCpu | None:
    """One thread's CPU time; None when it has ended (or there is no ``/proc``)."""
    try:
        with open(f"{_TASKS}/{tid}/stat") as f:
            name, sec = parse_stat(f.read())
    except (OSError, ValueError, IndexError):
        return None
    return ThreadCpu(tid, name, sec)


def snapshot() -> dict[int, ThreadCpu]:
    """Every thread of the process now, by thread id."""
    try:
        tids = [int(t) for t in os.listdir(_TASKS)]
    except OSError:
        return {}
    return {t.tid: t for t in (thread_cpu(tid) for tid in tids) if t is not None}


def by_group(before: Mapping[int, ThreadCpu], after: Mapping[int, ThreadCpu], group: Callable[[ThreadCpu], str]) -> dict[str, float]:
    """CPU seconds spent between two snapshots, summed by ``group(thread)`` (pure). A thread that ended
    in between is lost (its last seconds are not in ``after``); one that started counts from 0."""
    out: dict[str, float] = {}
    for tid, t in after.items():
        prev = before.get(tid)
        spent = t.seconds - (prev.seconds if prev is not None and prev.name == t.name else 0.0)
        key = group(t)
        out[key] = out.get(key, 0.0) + max(0.0, spent)
    return out


class ThreadGroup:
    """Threads a library started for one owner (a stream's decoder), and the CPU they have used."""

    def __init__(self, prefix: str = "av:") -> None:
        self.prefix = prefix
        self._tids: tuple[int, ...] = ()
        self._last: dict[int, float] = {}

    @contextmanager
    def adopt_new(self) -> Iterator[None]:
        """Adopt the threads that appear while the block runs and are (or later get) named ``prefix…``
        (one block at a time process-wide, so two decoders opening together do not take each other's threads)."""
        with _OPENING:
            before = set(snapshot())
            try:
                yield
            finally:
                # every new thread: one just started may not have named itself yet (take() checks the name)
                new = tuple(tid for tid in snapshot() if tid not in before)
                self._tids += new
                for tid in new:
                    self._last[tid] = 0.0

    @property
    def size(self) -> int:
        return len(self._tids)

    def take(self) -> float:
        """CPU seconds the adopted threads used since the last call (since they started, the first time)."""
        spent = 0.0
        for tid in self._tids:
            t = thread_cpu(tid)
            if t is None or not t.name.startswith(self.prefix):
                continue  # ended; its id may be reused by another thread
            spent += max(0.0, t.seconds - self._last.get(tid, 0.0))
            self._last[tid] = t.seconds
        return spent


__all__ = ["ThreadCpu", "ThreadGroup", "by_group", "parse_stat", "snapshot", "thread_cpu"]
