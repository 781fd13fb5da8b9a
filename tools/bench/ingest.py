#!/usr/bin/env python3
"""Ingest + sampling speed against ffmpeg, on a generated 1080p30 H.264 60 s clip (GOP 2 s).

1. streamwatch sample-every-1-s pipeline (decode + quality gate + pHash + dedupe, decode=auto)
   vs ``ffmpeg -i clip -vf fps=1 -f null -``. Target ≥ 1.3× ffmpeg's speed.
2. keyframe mode (every 2 s, decode=keyframes) vs
   ``ffmpeg -skip_frame nokey -i clip -fps_mode passthrough -f null -``. Target ≥ 0.9×.
Also prints CPU seconds per stream-minute and peak RSS. Run: ``python tools/bench/ingest.py
[--clip PATH] [--runs 3]`` (the clip is generated once into artifacts/bench/).
"""

from __future__ import annotations

import argparse
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))

import make_sample_stream  # noqa: E402

from streamwatch.app import build_pipeline  # noqa: E402
from streamwatch.config import StreamConfig, load_settings  # noqa: E402
from streamwatch.sampling.sampler import Sample  # noqa: E402


def ffmpeg(args: list[str]) -> tuple[float, float]:
    t, r0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", *args], check=True)
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.perf_counter() - t, (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)


def streamwatch(clip: Path, every: float, decode: str) -> tuple[float, float, int]:
    settings = load_settings(None, {"ingest": {"decode": decode}, "sampling": {"every_s": every}})
    pipeline = build_pipeline(StreamConfig(id="bench", source=str(clip)), settings)
    t, r0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
    n = sum(isinstance(x, Sample) for x in pipeline.run())
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    return time.perf_counter() - t, (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime), n


def best(fn, runs: int):  # type: ignore[no-untyped-def]
    results = [fn() for _ in range(runs)]
    return min(results, key=lambda r: r[0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clip", type=Path, default=ROOT / "artifacts" / "bench" / "concert1080p60s.mp4")
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    if shutil.which("ffmpeg") is None:
        sys.exit("ffmpeg is needed for the baseline (apt-get install ffmpeg)")
    if not a.clip.exists():
        a.clip.parent.mkdir(parents=True, exist_ok=True)
        print(f"generating {a.clip} (1080p30, 60 s, GOP 2 s, x264 veryfast defaults) …", flush=True)
        make_sample_stream.write_clip(a.clip, width=1920, height=1080, fps=30, gop_s=2.0, seconds=60)
    minutes = 1.0

    ff1 = best(lambda: ffmpeg(["-i", str(a.clip), "-vf", "fps=1", "-f", "null", "-"]), a.runs)
    sw1 = best(lambda: streamwatch(a.clip, 1.0, "auto"), a.runs)
    swf = best(lambda: streamwatch(a.clip, 1.0, "full"), a.runs)
    ffk = best(lambda: ffmpeg(["-skip_frame", "nokey", "-i", str(a.clip), "-fps_mode", "passthrough", "-f", "null", "-"]), a.runs)
    swk = best(lambda: streamwatch(a.clip, 2.0, "keyframes"), a.runs)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    print(f"clip: {a.clip.name} (60 s 1080p30), best of {a.runs}")
    print(f"{'run':54s} {'wall s':>7s} {'cpu s/stream-min':>17s}")
    print(f"{'baseline ffmpeg -vf fps=1 -f null -':54s} {ff1[0]:7.2f} {ff1[1] / minutes:17.2f}")
    print(f"{'streamwatch every 1 s (decode=auto: skip non-ref)':54s} {sw1[0]:7.2f} {sw1[1] / minutes:17.2f}  samples={sw1[2]}")
    print(f"{'streamwatch every 1 s (decode=full)':54s} {swf[0]:7.2f} {swf[1] / minutes:17.2f}  samples={swf[2]}")
    print(f"{'baseline ffmpeg -skip_frame nokey -f null -':54s} {ffk[0]:7.2f} {ffk[1] / minutes:17.2f}")
    print(f"{'streamwatch keyframes (every 2 s)':54s} {swk[0]:7.2f} {swk[1] / minutes:17.2f}  samples={swk[2]}")
    r1, rf, rk = ff1[0] / sw1[0], ff1[0] / swf[0], ffk[0] / swk[0]
    print(f"every-1-s speed vs ffmpeg fps=1: {r1:.2f}x (target >= 1.3x: {'MET' if r1 >= 1.3 else 'NOT MET'}); full decode {rf:.2f}x")
    print(f"keyframe speed vs ffmpeg nokey:  {rk:.2f}x (target >= 0.9x: {'MET' if rk >= 0.9 else 'NOT MET'})")
    print(f"peak RSS (this process): {peak_mb:.0f} MB")


if __name__ == "__main__":
    main()
