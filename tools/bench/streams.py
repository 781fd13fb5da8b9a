#!/usr/bin/env python3
"""How many concurrent 1080p30 live streams one machine sustains at 1 s sampling, all local analyzers on.

N copies of a 1080p30 concert clip are published in a loop with ffmpeg -re to nginx-rtmp; one daemon
pulls all N (decode → sample → dedupe → cache → nudity + OCR + QR → policy). For each N it reports:
decoder lag (wall time elapsed minus stream time decoded, worst stream), analysis lag (frame arrival
→ policy done; p50/p95 over all streams), frames dropped before analysis, the CPU seconds per
stream-hour of each stage (``streamwatch_stage_cpu_seconds_total`` over the measured window) against
the process's CPU time (``accounted``), and the process's CPU by thread (``/proc/self/task``: reader
threads, analysis pool, event loop, FFmpeg's own threads, other native threads). A count is sustained
while both lags stay < 2 s, nothing is dropped and the overload watch never widened sampling
(`degraded` = its deepest step in the window; 0 = normal).

Each measurement runs in a fresh child process. ``--baseline REF`` measures the same counts on git
``REF`` too (checked out with ``git worktree add`` into a temporary folder), alternating with this tree
in the same run, so the two columns saw the same machine. ``--floor`` adds the decode-only floor:
N ``ffmpeg -skip_frame noref -threads 1 -i URL -an -f null -`` readers (video only), their CPU per stream-hour and
whether they keep up with real time.

Run: ``python tools/bench/streams.py --counts 1,4,8,12,16 --seconds 30 --baseline main --floor``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from make_concert_clip import write_concert_clip  # noqa: E402
from media import nginx_rtmp, publish  # noqa: E402

TRACE = bool(os.environ.get("BENCH_TRACE"))
WARMUP = 15.0
STAGES = ("decode", "conversion", "regions", "phash", "nudity", "ocr_detection", "ocr_recognition", "qr", "encoder",
          "policy", "store", "delivery")  # fmt: skip


async def measure(clip: Path, port: int, n: int, seconds: float, tmp: Path, over: dict[str, Any] | None = None) -> dict[str, Any]:
    from streamwatch.app import Daemon
    from streamwatch.config import load_settings
    from streamwatch.runtime.cpu_account import STAGES, per_stream_hour

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
    level = 0.0  # the overload watch's deepest degradation step in the window (sampling widened: not sustained)
    until = time.monotonic() + seconds
    while (left := until - time.monotonic()) > 0:
        await asyncio.sleep(min(0.5, left))
        level = max(level, daemon.metrics.registry.get_sample_value("streamwatch_degradation_level") or 0.0)
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
        "level": level,
        "model_runs": daemon.cascade.frames,
        "ocr_s": daemon.cascade.busy.get("ocr", 0.0),  # wall seconds inside OCR calls (the whole run)
        "ocr_cpu_s": sum(cpu1.get(k, 0.0) for k in ("ocr_detection", "ocr_recognition")),  # their CPU seconds (the whole run)
        # CPU s per stream-hour per stage (thread_time of the threads doing the work), over the measured window
        "cpu": per_stream_hour({k: cpu1.get(k, 0.0) - cpu0.get(k, 0.0) for k in STAGES}, n * seconds),
        "process_cpu": per_stream_hour({"process": proc1 - proc0}, n * seconds)["process"],
    }


# ---- the child: one measurement of one tree, with the process's CPU by thread --------------------------
def _thread_kind(name: str, py_names: dict[int, str], tid: int, main_tid: int) -> str:
    if tid == main_tid:
        return "event loop"
    py = py_names.get(tid)
    if py is not None:
        for prefix, kind in (("ingest-", "reader threads"), ("analysis", "analysis pool"), ("event-store", "event store")):
            if py.startswith(prefix):
                return kind
        return "other python"
    return "ffmpeg threads" if name.startswith("av:") else "native (ORT, swscale …)"


@contextlib.contextmanager
def _by_thread(thread_cpu: Any, seconds: float, out: dict[str, Any]) -> Iterator[None]:
    """Snapshots of every thread at the start and end of the measured window (timed like measure())."""
    main_tid = threading.main_thread().native_id
    snaps: list[tuple[dict[int, Any], dict[int, str]]] = []
    births: list[int] = []

    def watch() -> None:
        time.sleep(2 + WARMUP)
        seen: set[int] = set()
        t_end = time.monotonic() + seconds
        snaps.append((thread_cpu.snapshot(), {t.native_id: t.name for t in threading.enumerate() if t.native_id}))
        seen.update(snaps[0][0])
        while time.monotonic() < t_end:
            time.sleep(min(0.05, max(0.0, t_end - time.monotonic())))
            seen.update(int(t) for t in os.listdir("/proc/self/task"))
        snaps.append((thread_cpu.snapshot(), {t.native_id: t.name for t in threading.enumerate() if t.native_id}))
        births.append(len(seen) - len(snaps[0][0]))

    w = threading.Thread(target=watch, daemon=True)
    w.start()
    yield
    w.join(5)
    if len(snaps) == 2:
        names = {**snaps[0][1], **snaps[1][1]}
        out["threads"] = thread_cpu.by_group(snaps[0][0], snaps[1][0], lambda t: _thread_kind(t.name, names, t.tid, main_tid))
        out["threads_at_end"] = len(snaps[1][0])
        out["threads_started"] = births[0]


def child(root: Path, clip: Path, port: int, n: int, seconds: float, over: dict[str, Any]) -> dict[str, Any]:
    """Run ``measure`` of the tree at ``root`` (this one or a baseline's) in this process."""
    sys.path.insert(0, str(root))
    spec = importlib.util.spec_from_file_location("streams_under_test", root / "tools" / "bench" / "streams.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    spec2 = importlib.util.spec_from_file_location("bench_thread_cpu", ROOT / "streamwatch" / "runtime" / "thread_cpu.py")
    assert spec2 is not None and spec2.loader is not None
    thread_cpu = sys.modules["bench_thread_cpu"] = importlib.util.module_from_spec(spec2)
    spec2.loader.exec_module(thread_cpu)
    from streamwatch.config import Settings  # the tree's own (sys.path above)

    over = _known(over, Settings)  # a baseline that predates a setting runs without it
    extra: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as t, _by_thread(thread_cpu, seconds, extra):
        r: dict[str, Any] = asyncio.run(mod.measure(clip, port, n, seconds, Path(t), over))
    r.update({k: (per_hour(v, n, seconds) if k == "threads" else v) for k, v in extra.items()})
    return r


def _known(over: dict[str, Any], model: Any) -> dict[str, Any]:
    """``over`` without the keys the settings ``model`` (a pydantic model class) does not have."""
    out: dict[str, Any] = {}
    for k, v in over.items():
        field = model.model_fields.get(k)
        if field is None:
            continue
        sub = field.annotation
        out[k] = _known(v, sub) if isinstance(v, dict) and hasattr(sub, "model_fields") else v
    return out


def per_hour(spent: dict[str, float], n: int, seconds: float) -> dict[str, float]:
    return {k: v * 3600.0 / (n * seconds) for k, v in spent.items()}


def run_child(root: Path, clip: Path, port: int, n: int, seconds: float, over: dict[str, Any]) -> dict[str, Any]:
    args = [sys.executable, __file__, "--child", str(root), "--clip", str(clip), "--port", str(port), "--counts", str(n),
            "--seconds", str(seconds), "--over", json.dumps(over)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    p = subprocess.run(args, capture_output=True, text=True, env=env, cwd=root)
    for line in p.stdout.splitlines():
        if line.startswith("RESULT "):
            return dict(json.loads(line[7:]))
    raise RuntimeError(f"the measurement of {root} failed (rc {p.returncode}):\n{p.stderr[-3000:]}")


# ---- the floor: decode only, with the ffmpeg CLI ----------------------------------------------------
def _ticks(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def _progress(path: Path) -> float:
    """The last ``out_time_us`` ffmpeg's -progress wrote (s of stream decoded)."""
    try:
        vals = [line.split("=", 1)[1] for line in path.read_text().splitlines() if line.startswith("out_time_us=")]
        return int(vals[-1]) / 1e6 if vals and vals[-1].strip().lstrip("-").isdigit() else 0.0
    except OSError:
        return 0.0


def floor(clip: Path, port: int, n: int, seconds: float, tmp: Path) -> dict[str, float]:
    """N decode-only ffmpeg readers of N live copies: CPU per stream-hour, worst lag growth over the window."""
    urls = [f"rtmp://127.0.0.1:{port}/live/f{n}_{i}" for i in range(n)]
    pubs = [publish(clip, u, loop=True, start=(i * 13.0) % 60) for i, u in enumerate(urls)]
    time.sleep(2)
    prog = [tmp / f"floor{n}_{i}.txt" for i in range(n)]
    cmd = "ffmpeg -nostdin -v error -skip_frame noref -threads 1 -i {u} -an -f null -progress {p} -stats_period 0.5 -"
    readers = [subprocess.Popen(cmd.format(u=u, p=p).split(), stdin=subprocess.DEVNULL) for u, p in zip(urls, prog, strict=True)]
    time.sleep(WARMUP / 3)
    c0, s0, w0 = [_ticks(r.pid) for r in readers], [_progress(p) for p in prog], time.monotonic()
    time.sleep(seconds)
    c1, s1, w1 = [_ticks(r.pid) for r in readers], [_progress(p) for p in prog], time.monotonic()
    for proc in (*readers, *pubs):
        proc.terminate()
        proc.wait(10)
    behind = max(max(0.0, (w1 - w0) - (b - a)) for a, b in zip(s0, s1, strict=True))
    return {"cpu": sum(b - a for a, b in zip(c0, c1, strict=True)) * 3600.0 / (n * seconds), "lag_growth": behind}


# ---- printing ----------------------------------------------------------------------------------------
def verdict(r: dict[str, Any], n: int) -> bool:
    ok = r["streams_seen"] == n and r["decode_lag"] < 2 and r["analysis_p95"] < 2 and r["drops"] == 0
    return bool(ok and r.get("level", 0) == 0)


def _ocr_ratio(r: dict[str, Any]) -> str:
    """Wall time inside OCR calls ÷ their CPU time (1 = never waiting for a core or the GIL)."""
    return f"{r['ocr_s'] / r['ocr_cpu_s']:4.2f}" if r.get("ocr_cpu_s") else " n/a"


def line(label: str, r: dict[str, Any], n: int) -> str:
    return (f"  {label:10s} decoder lag {r['decode_lag']:5.2f} s  analysis lag p50 {r['analysis_p50']:5.2f} s p95 "
            f"{r['analysis_p95']:5.2f} s  analysed {r['analysed']:4.0f} (model runs {r['model_runs']:3.0f})  dropped "
            f"{r['drops']:3.0f}  degraded {r.get('level', 0):1.0f}  "
            f"OCR wall/CPU {_ocr_ratio(r)}  "
            f"threads {r.get('threads_at_end', 0):3d} (+{r.get('threads_started', 0)} started)  -> "
            f"{'sustained' if verdict(r, n) else 'NOT sustained'}")  # fmt: skip


def cpu_table(cols: list[tuple[str, dict[str, Any]]]) -> str:
    """CPU s per stream-hour by stage and by thread, one column per tree measured."""
    head = "    " + f"{'CPU s/stream-hour':24s}" + "".join(f"{label:>12s}" for label, _ in cols)
    rows = [head]
    for stage in STAGES:
        if any(r["cpu"].get(stage, 0.0) > 0 for _, r in cols):
            rows.append(f"    {stage:24s}" + "".join(f"{r['cpu'].get(stage, 0.0):12.0f}" for _, r in cols))
    rows.append(f"    {'accounted (stages)':24s}" + "".join(f"{sum(r['cpu'].values()):12.0f}" for _, r in cols))
    rows.append(f"    {'process':24s}" + "".join(f"{r['process_cpu']:12.0f}" for _, r in cols))
    rows.append(
        f"    {'accounted %':24s}" + "".join(f"{100 * sum(r['cpu'].values()) / max(r['process_cpu'], 1e-9):11.0f}%" for _, r in cols)
    )
    kinds = sorted({k for _, r in cols for k in r.get("threads", {})})
    for k in kinds:
        rows.append(f"    {'thread ' + k[:17]:24s}" + "".join(f"{r.get('threads', {}).get(k, 0.0):12.0f}" for _, r in cols))
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--counts", default="1,4,8,12,16")
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--cpu-threads", type=int, default=0, help="analysis.cpu_threads (0 = the machine's cores)")
    ap.add_argument("--gate", choices=["regions", "phash"], default="regions",
                    help="phash: the global-pHash gate before the region change signal (for comparison)")  # fmt: skip
    ap.add_argument("--baseline", metavar="REF", help="also measure git REF (e.g. main), alternating with this tree")
    ap.add_argument("--floor", action="store_true", help="also measure N decode-only ffmpeg readers")
    ap.add_argument("--governor", action="store_true",
                    help="keep the overload watch's degradation on (default off: the capacity without help)")  # fmt: skip
    ap.add_argument("--reader-nice", type=int, help="ingest.reader_nice (default: the config's default)")
    ap.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--clip", type=Path, default=ROOT / "artifacts" / "bench" / "concert1080.mp4")
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--over", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child is not None:
        r = child(a.child, a.clip, a.port, int(a.counts), a.seconds, json.loads(a.over))
        print("RESULT " + json.dumps(r), flush=True)
        return
    over: dict[str, Any] = {"sampling": {"regions": False}, "analysis": {"regional": False}} if a.gate == "phash" else {"analysis": {}}
    over["analysis"]["cpu_threads"] = a.cpu_threads
    if not a.governor:
        over["analysis"]["overload"] = {"max_level": 0}
    if a.reader_nice is not None:
        over["ingest"] = {"reader_nice": a.reader_nice}
    if not a.clip.exists():
        a.clip.parent.mkdir(parents=True, exist_ok=True)
        print("encoding a 1080p30 clip …", flush=True)
        write_concert_clip(a.clip, width=1920, height=1080, fps=30)
    with contextlib.ExitStack() as stack:
        trees = [("this tree", ROOT)]
        if a.baseline:
            base = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="streams-baseline-"))) / "tree"
            subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(base), a.baseline], check=True,
                           capture_output=True)  # fmt: skip
            stack.callback(subprocess.run, ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base)], check=False)
            rev = subprocess.run(["git", "-C", str(base), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
            trees.insert(0, (f"{a.baseline}@{rev}", base))
        port = stack.enter_context(nginx_rtmp())
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        best = {label: 0 for label, _ in trees}
        for i, n in enumerate(int(x) for x in a.counts.split(",")):
            print(f"{n} streams:", flush=True)
            if a.floor:
                f = floor(a.clip, port, n, a.seconds, tmp)
                keeps = "keeps up" if f["lag_growth"] < 2 else f"falls behind {f['lag_growth']:.1f} s"
                print(f"  {'floor':10s} ffmpeg -skip_frame noref -threads 1: {f['cpu']:5.0f} CPU s/stream-hour, {keeps}", flush=True)
            order = trees if i % 2 == 0 else trees[::-1]  # alternate which tree runs first
            results: dict[str, dict[str, Any]] = {}
            for label, root in order:
                results[label] = r = run_child(root, a.clip, port, n, a.seconds, over)
                print(line(label.split("@")[0][:10], r, n), flush=True)
                if verdict(r, n):
                    best[label] = n
            print(cpu_table([(label.split("@")[0][:10], results[label]) for label, _ in trees]), flush=True)
    print()
    for label, _ in trees:
        print(f"{label}: sustained up to {best[label]} concurrent 1080p30 streams (of {a.counts})")


if __name__ == "__main__":
    main()
