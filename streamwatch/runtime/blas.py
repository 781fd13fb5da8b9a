"""OpenBLAS thread pools loaded into the process, sized to the CPU budget.

OpenCV's wheel and numpy each bundle an OpenBLAS whose pool starts with one worker per core; an idle
worker spins in ``sched_yield`` after every call, and OpenCV's is called per sample (seen here:
about 55 CPU s per stream-hour on 2 cores, most of the "other threads" of the process). The pool
size is set through each library's own ``openblas_set_num_threads`` (the symbol names differ:
numpy's copy is prefixed ``scipy_``), found in ``/proc/self/maps``; no environment variable has to be
set before the imports.
"""

from __future__ import annotations

import ctypes
import logging

logger = logging.getLogger(__name__)

_SETTERS = ("openblas_set_num_threads", "scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads")


def loaded_openblas(maps: str) -> list[str]:
    """Paths of the OpenBLAS libraries in a ``/proc/self/maps`` text (pure)."""
    out: list[str] = []
    for line in maps.splitlines():
        path = line.split(maxsplit=5)[5].strip() if len(line.split(maxsplit=5)) == 6 else ""
        if "openblas" in path.rsplit("/", 1)[-1].lower() and path not in out:
            out.append(path)
    return out


def limit_blas(threads: int) -> list[str]:
    """Set every loaded OpenBLAS to ``threads`` threads (1: the calling thread only, no spinning pool).
    Returns the libraries changed. Call it after the analyzers' libraries are imported."""
    try:
        with open("/proc/self/maps") as f:
            paths = loaded_openblas(f.read())
    except OSError:
        return []
    done: list[str] = []
    for path in paths:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for name in _SETTERS:
            fn = getattr(lib, name, None)
            if fn is not None:
                fn.argtypes, fn.restype = [ctypes.c_int], None
                fn(max(1, threads))
                done.append(path)
                break
    if done:
        logger.debug("OpenBLAS pools set to %d thread(s): %s", threads, ", ".join(done))
    return done


__all__ = ["limit_blas", "loaded_openblas"]
