#!/usr/bin/env python3
"""Cluster placement: the spread of measured load across workers, by cost vs by count, same run.

3 workers (``cluster.cpu_budget`` 0.16 CPU s per s each), 1 NATS node, nginx-rtmp with 2 heavy
shows (1080p25) and 6 light ones (240p15), every frame decoded (``ingest.decode = full``, so a show's
cost follows its pixels × fps) and ``analysis.cpu_threads = 1`` (complete CPU figures). For each run
and each ``cluster.placement`` (``cost``, ``count``), fresh workers, the 8 shows added at once under
new ids (the ids change the rendezvous hash, hence where count placement puts the heavy shows); once
every show is measured by its holder and nothing moved for 12 s, the loads are read from the
membership records. Two starts: ``together`` (3 workers up before the shows are added) and ``join``
(w1 alone takes and measures every show, then w2 and w3 join and rebalancing hands work over); a
worker's load is the sum of its published costs. Printed: per mode and start, the max / min load,
their ratio, the standard deviation, how many workers ended over budget, and the moves.

Run: ``python tools/bench/cluster.py --parts placement [--placement-runs 3]`` (or this file alone).
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(p) for p in (ROOT / "tests", ROOT / "tools", ROOT)]

from cluster_rig import Rig, request, write_config  # noqa: E402
from conftest import publish, start_nginx, stop  # noqa: E402
from nats_cluster import make_cluster  # noqa: E402
from test_cluster_placement_live import HEAVY, LIGHT, clip, loads, records, settled  # noqa: E402

BUDGET = 0.16


def one(root: Path, urls: list[str], rtmp: dict[str, str], mode: str, run: int, join: bool) -> dict[str, float]:
    """Start 3 workers placing by ``mode`` (``join``: w1 alone takes every show, then w2 and w3 join), add
    the shows, wait until placement settles; the figures."""
    name = f"p{mode}{run}{'j' if join else 't'}"
    extra = f'placement = "{mode}"\ncpu_budget = {BUDGET}\ncost_window_s = 3\nmove_cooldown_s = 60\n'
    rig = Rig(root / name, write_config(root / f"{name}.toml", urls, name=name, lease_ttl_s=4.0, cluster_extra=extra))
    (root / name).mkdir()
    ids = {f"r{run}-{s}": src for s, src in rtmp.items()}
    try:
        for w in ("w1",) if join else ("w1", "w2", "w3"):
            rig.add("worker", w)
        g = rig.add("gateway", "g")
        rig.wait_ready()
        for sid, src in ids.items():
            assert request(g.url, {"type": "add_stream", "stream": {"id": sid, "source": src}})["type"] == "stream_added"
        deadline = time.monotonic() + 120
        while join and not settled(records(urls, name), set(ids)):  # w1 holds and has measured every show
            assert time.monotonic() < deadline, rig.logs()
            time.sleep(1.0)
        if join:
            rig.add("worker", "w2")
            rig.add("worker", "w3")
        deadline, stable, last = time.monotonic() + 240, None, None
        while time.monotonic() < deadline:
            recs = records(urls, name)
            now = {w: m.streams for w, m in recs.items()}
            if settled(recs, set(ids)) and now == last:
                stable = stable or time.monotonic()
                if time.monotonic() - stable >= 12:
                    break
            else:
                stable = None
            last = now
            time.sleep(1.0)
        else:
            raise TimeoutError(f"{mode} run {run}: placement did not settle\n{rig.logs()}")
        load = loads(recs)
        logs = "".join(n.log.read_text(errors="replace") for n in rig.workers)
        moves = len(re.findall(r"handed over to even the load", logs))
        heavy = {w for w, m in recs.items() for s in m.streams if "heavy" in s}
        print(f"  {mode:5s} {'join' if join else 'together'} run {run}: loads " + ", ".join(f"{w} {v:.3f}" for w, v in sorted(load.items()))
              + f"  heavy shows on {len(heavy)} worker(s), {moves} move(s)", flush=True)  # fmt: skip
        vals = list(load.values())
        return {"max": max(vals), "min": min(vals), "stdev": statistics.pstdev(vals), "over": sum(v > BUDGET for v in vals), "moves": moves}
    finally:
        rig.stop()


def placement(runs: int, keep: bool = False) -> dict[str, list[dict[str, float]]]:
    """``runs`` runs of each mode and start (together, join) on one nginx + NATS; the figures of each run."""
    import os

    root = Path(tempfile.mkdtemp(prefix="sw-bench-placement-"))
    os.environ["STREAMWATCH_ANALYSIS__CPU_THREADS"] = "1"
    os.environ["STREAMWATCH_INGEST__DECODE"] = "full"
    nginx, nginx_proc = start_nginx(root / "nginx")
    media = root / "media"
    media.mkdir()
    shows = HEAVY + LIGHT
    pubs = [publish(clip(media, n, w, h, fps, i), nginx.rtmp(n), loop=True) for i, (n, w, h, fps) in enumerate(shows)]
    (root / "nats").mkdir()
    nats = make_cluster(root / "nats", 1)
    nats.start()
    nats.wait_ready()
    out: dict[str, list[dict[str, float]]] = {f"{m} {j}": [] for j in ("together", "join") for m in ("cost", "count")}
    try:
        for run in range(runs):
            for key in out:
                mode, start = key.split()
                out[key].append(one(root, nats.urls, {n: nginx.rtmp(n) for n, *_ in shows}, mode, run, start == "join"))
    finally:
        for p in pubs:
            stop(p)
        nats.stop()
        nginx_proc.terminate()
        nginx_proc.wait(10)
        if not keep:
            import shutil

            shutil.rmtree(root, ignore_errors=True)
    return out


def report(out: dict[str, list[dict[str, float]]]) -> None:
    print(f"\n=== placement: 2 heavy (1080p25) + 6 light (240p15) shows on 3 workers, budget {BUDGET} CPU s/s each ===")
    for mode, rs in out.items():
        if not rs:
            continue
        ratio = [r["max"] / r["min"] if r["min"] > 0 else float("inf") for r in rs]
        print(f"{mode:14s} ({len(rs)} runs): max load {statistics.mean(r['max'] for r in rs):.3f} (worst {max(r['max'] for r in rs):.3f})"
              f"  min {statistics.mean(r['min'] for r in rs):.3f}  max/min {statistics.median(ratio):.1f}x (median)"
              f"  stdev {statistics.mean(r['stdev'] for r in rs):.3f}  workers over budget {sum(int(r['over']) for r in rs)}"
              f"/{3 * len(rs)}  moves {sum(int(r['moves']) for r in rs)}")  # fmt: skip


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--placement-runs", type=int, default=3)
    ap.add_argument("--keep", action="store_true")
    a = ap.parse_args()
    report(placement(a.placement_runs, a.keep))
