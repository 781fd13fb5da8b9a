#!/usr/bin/env python3
"""How many concurrent 1080p30 live streams one machine sustains at 1 s sampling, all local analyzers on.

N copies of a 1080p30 concert clip are published in a loop with ffmpeg -re to nginx-rtmp; one daemon
pulls all N (decode → sample → dedupe → cache → nudity + OCR + QR → policy). For each N it reports:
decoder lag (wall time elapsed minus stream time decoded, worst stream), analysis lag (frame arrival
→ policy done; p95 over all streams), frames dropped before analysis, and the CPU seconds per
stream-hour of each stage (``streamwatch_stage_cpu_seconds_total`` over the measured window). A stream is sustained while
both lags stay < 2 s. Baseline: N = 1. Target: ≥ 4 streams. Run: ``python tools/bench/streams.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from make_concert_clip import write_concert_clip  # noqa: E402
from media import nginx_rtmp, publish  # noqa: E402

from streamwatch.app import Daemon  # noqa: E402
from streamwatch.config import load_settings  # noqa: E402
from streamwatch.runtime.cpu_account import STAGES, per_stream_hour  # noqa: E402

TRACE = bool(os.environ.get("BENCH_TRACE"))
WARMUP = 15.0


async def measure(clip: Path, port: int, n: int, seconds: float, tmp: Path, over: dict[str, Any] | None = None) -> dict[str, Any]:
    urls = [f"rtmp://127.0.0.1:{port}/live/s{n}_{i}" for i in range(n)]
    # independent shows are not frame-synchronised: start each copy at a different point of the clip
    pubs = [publish(clip, u, loop=True, start=(i * 13.0) % 60) for i, u in enumerate(urls)]
    await asyncio.sleep(2)
    first: dict[str, tuple[float, float]] = {}
    last: dict[str, tuple[float, float]] = {}
    lags: list[float] = []
    t_start = time.time() + WARMUP  # warm-up: connections, first GOPs, model threads

    def on_sample(sid: str, offset: float) -> None:
        now = time.time()
        if now >= t_start:
            first.setdefault(sid, (now, offset))
            last[sid] = (now, offset)

    def on_analyzed(_sid: str, lag: float) -> None:
        if time.time() >= t_start:
            lags.append(lag)
            if TRACE:
                print(f"  t={time.time() - t_start:5.1f} {_sid} lag {lag:.2f}", flush=True)

    streams = [{"id": f"s{i}", "source": u} for i, u in enumerate(urls)]
    settings = load_settings(None, {"data_dir": tmp / f"d{n}-{len(over or {})}", "streams": streams, **(over or {})})
    daemon = Daemon(settings, serve=False, on_sample=on_sample, on_analyzed=on_analyzed)
    runner = asyncio.create_task(daemon.run())
    await asyncio.sleep(WARMUP)
    cpu0, proc0 = daemon.svc.cpu.spent(), time.process_time()  # after the warm-up: steady state only
    await asyncio.sleep(seconds)
    cpu1, proc1 = daemon.svc.cpu.spent(), time.process_time()
    daemon.stop()
    await runner
    for p in pubs:
        p.terminate()
        p.wait(10)
    # stream time decoded vs wall time elapsed (a PTS jump where the publisher loops can make it negative: clamp)
    decode_lag = max((max(0.0, (last[s][0] - first[s][0]) - (last[s][1] - first[s][1])) for s in first), default=float("inf"))
    drops = daemon.metrics.registry.get_sample_value("streamwatch_queue_drops_total", {"queue": "analysis"}) or 0.0
    lags.sort()
    p95 = lags[int(0.95 * (len(lags) - 1))] if lags else float("inf")
    p50 = lags[len(lags) // 2] if lags else float("inf")
    return {
        "streams_seen": len(first),
        "decode_lag": decode_lag,
        "analysis_p50": p50,
        "analysis_p95": p95,
        "analysed": len(lags),
        "drops": drops,
        "model_runs": daemon.cascade.frames,
        "ocr_s": daemon.cascade.busy.get("ocr", 0.0),
        # CPU s per stream-hour per stage (thread_time of the threads doing the work), over the measured window
        "cpu": per_stream_hour({k: cpu1.get(k, 0.0) - cpu0.get(k, 0.0) for k in STAGES}, n * seconds),
        "process_cpu": per_stream_hour({"process": proc1 - proc0}, n * seconds)["process"],
    }


def cpu_table(cpu: dict[str, float], process: float) -> str:
    """CPU s per stream-hour, per stage, with the process's own CPU time (what the stages do not account for:
    library worker threads with a budget above 1, the event loop's own work, the interpreter)."""
    acc = sum(cpu.values())
    rows = [f"    {stage:16s} {cpu.get(stage, 0.0):8.0f} s  {100 * cpu.get(stage, 0.0) / max(acc, 1e-9):5.1f}%" for stage in STAGES]
    rows.append(f"    {'accounted':16s} {acc:8.0f} s  of process {process:.0f} s ({100 * acc / max(process, 1e-9):.0f}%)")
    return "  CPU per stream-hour by stage:\n" + "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--counts", default="1,2,4,8")
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument(
        "--cpu-threads", type=int, default=0, help="analysis.cpu_threads (0 = the machine's cores; 1 = complete per-stage figures)"
    )
    ap.add_argument("--gate", choices=["regions", "phash"], default="regions",
                    help="phash: the global-pHash gate before the region change signal (for comparison)")  # fmt: skip
    a = ap.parse_args()
    over: dict[str, Any] = {"sampling": {"regions": False}, "analysis": {"regional": False}} if a.gate == "phash" else {"analysis": {}}
    over["analysis"]["cpu_threads"] = a.cpu_threads
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        clip = ROOT / "artifacts" / "bench" / "concert1080.mp4"  # reused between runs
        if not clip.exists():
            clip.parent.mkdir(parents=True, exist_ok=True)
            print("encoding a 1080p30 clip …", flush=True)
            write_concert_clip(clip, width=1920, height=1080, fps=30)
        best = 0
        with nginx_rtmp() as port:
            for n in (int(x) for x in a.counts.split(",")):
                r = asyncio.run(measure(clip, port, n, a.seconds, tmp, over))
                ok = r["streams_seen"] == n and r["decode_lag"] < 2 and r["analysis_p95"] < 2
                best = n if ok else best
                verdict = "sustained" if ok else "NOT sustained"
                lag = f"analysis lag p50 {r['analysis_p50']:5.2f} s p95 {r['analysis_p95']:5.2f} s"
                print(f"{n} streams: decoder lag {r['decode_lag']:5.2f} s (worst)  {lag}"
                      f"  analysed {r['analysed']:4.0f} (model runs {r['model_runs']:3.0f}, OCR {r['ocr_s']:5.1f} s)"
                      f"  dropped {r['drops']:3.0f}  -> {verdict}", flush=True)  # fmt: skip
                print(cpu_table(r["cpu"], r["process_cpu"]), flush=True)
    print(f"\nsustained: {best} concurrent 1080p30 streams (baseline 1); target >= 4: {'MET' if best >= 4 else 'NOT MET'}")


if __name__ == "__main__":
    main()
