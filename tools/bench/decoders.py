#!/usr/bin/env python3
"""Decoder settings for many live streams: CPU seconds per stream-hour of N decoders paced at real time.

N threads each read the 1080p30 concert clip (tools/bench/streams.py's) as a live source would arrive
(packets paced by their timestamps) and decode with ``skip_frame=NONREF`` (what 1 s sampling uses).
Variants, measured alternately in one run and repeated:

- ``main``: frame threading, 2 threads per decoder (the CPU budget), deblocking on (the old live path)
- ``1 thread``: each decoder on its own reader thread (``thread_count=1``), the new live path
- ``1 thread, no deblock``: plus ``skip_loop_filter=nokey`` (``ingest.skip_deblock``)

It prints the process CPU per stream-hour of decoded video (stream time actually decoded, so a
variant that falls behind on a loaded machine is not flattered) and each variant's ratio to ``main``.
Run: ``python tools/bench/decoders.py --streams 12 --seconds 20 --repeat 2``.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import threading
import time
from pathlib import Path

import av

ROOT = Path(__file__).resolve().parents[2]
VARIANTS: dict[str, tuple[int, bool]] = {"main": (2, False), "1 thread": (1, False), "1 thread, no deblock": (1, True)}


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def reader(clip: Path, start: float, seconds: float, threads: int, no_deblock: bool, done: list[float]) -> None:
    decoded = 0.0
    with av.open(str(clip)) as c:
        vs = c.streams.video[0]
        if threads != 1:
            vs.thread_type = "AUTO"
        vs.codec_context.thread_count = threads
        if no_deblock:
            vs.codec_context.options = {"skip_loop_filter": "nokey"}
        vs.codec_context.skip_frame = "NONREF"
        c.seek(int(start / vs.time_base), stream=vs)
        t0, first = time.monotonic(), None
        for p in c.demux(vs):
            if p.pts is None:
                continue
            t = float(p.pts * vs.time_base)
            first = t if first is None else first
            wait = t0 + (t - first) - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            if time.monotonic() - t0 > seconds:
                break
            p.decode()
            decoded = t - first
    done.append(decoded)


def run(clip: Path, n: int, seconds: float, threads: int, no_deblock: bool) -> tuple[float, float]:
    """(CPU s per stream-hour decoded, stream seconds decoded / wall seconds)."""
    done: list[float] = []
    ts = [threading.Thread(target=reader, args=(clip, (i * 7.0) % 40, seconds, threads, no_deblock, done)) for i in range(n)]
    c0 = _cpu()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    cpu = _cpu() - c0
    return cpu * 3600.0 / max(sum(done), 1e-9), sum(done) / (n * seconds)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--streams", type=int, default=12)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--clip", type=Path, default=ROOT / "artifacts" / "bench" / "concert1080.mp4")
    a = ap.parse_args()
    res: dict[str, list[tuple[float, float]]] = {k: [] for k in VARIANTS}
    for i in range(a.repeat):
        order = list(VARIANTS) if i % 2 == 0 else list(VARIANTS)[::-1]
        for name in order:
            res[name].append(run(a.clip, a.streams, a.seconds, *VARIANTS[name]))
            print(f"  run {i + 1} {name:22s} {res[name][-1][0]:6.0f} CPU s/stream-hour, kept up {100 * res[name][-1][1]:5.1f}%", flush=True)
    base = statistics.median(c for c, _ in res["main"])
    print(f"\n{a.streams} decoders, 1080p30, skip_frame=NONREF, median of {a.repeat}:")
    for name in VARIANTS:
        cpu = statistics.median(c for c, _ in res[name])
        print(f"  {name:22s} {cpu:6.0f} CPU s/stream-hour  {base / cpu:4.2f}x main")


if __name__ == "__main__":
    main()
