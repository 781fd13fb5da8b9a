#!/usr/bin/env python3
"""Cluster mode (NATS JetStream): failover time, event delivery through gateways, RSS per worker.

One run, each figure against a named baseline measured in the same run:

1. Failover: a 3-node NATS cluster, 3 workers (lease 3 s, renew 0.5 s), 1 gateway, N 360p RTMP shows
   from nginx-rtmp. Each round kills (-9) the worker holding the most shows and measures, per moved
   show, the time from the kill to its first ``live`` health event after it, and the ``monitoring_gap``
   it reports; the killed worker is restarted (same name) before the next round. Baseline: the lease
   TTL (failover = TTL + takeover overhead). Target: max <= 10 s.
2. Event delivery: synthetic alerts published at a fixed rate through a ``JetStreamPublisher`` (as a
   worker does) to 100 clients over 2 gateways (50 each, clients in second processes, as in
   tools/bench/events.py); baseline: the single-box bus (tools/bench/events.py ``measure``), same
   clients and rate. Latency: event creation (just before publish) to receipt.
3. RSS per worker with its shows running (psutil) against one ``streamwatch run`` daemon running the
   same N shows.
4. Fans' images: submission → reply p50/p95 through a gateway vs the single box, replies lost or
   doubled over worker kills (tools/bench/cluster_replies.py).
5. Placement: the spread of measured load across workers, by cost vs by count (cluster_placement.py).

Run: ``python tools/bench/cluster.py [--parts core,replies,placement --shows 3 --rounds 10 --rate 1000 --seconds 5]``.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tools"), str(ROOT / "tools" / "bench"), str(ROOT)]

import cluster_placement  # noqa: E402  (tools/bench/cluster_placement.py)
import cluster_replies  # noqa: E402  (tools/bench/cluster_replies.py)
import events as single_box  # noqa: E402  (tools/bench/events.py)
import psutil  # noqa: E402
from cluster_rig import ADMIN, MODERATOR, Moderator, Rig, request, write_config  # noqa: E402
from conftest import publish as rtmp_publish  # noqa: E402
from conftest import start_nginx, stop  # noqa: E402
from nats_cluster import free_port, make_cluster, wait_port  # noqa: E402
from test_cluster import health, qr_clip  # noqa: E402

from streamwatch.events.codec import parse_iso  # noqa: E402


def mib(pid: int) -> float:
    return float(psutil.Process(pid).memory_info().rss) / 2**20


def holders(url: str) -> dict[str, str | None]:
    return {s["id"]: s.get("worker") for s in request(url, {"type": "list_streams"})["streams"]}


def wait_all_live(mod: Moderator, shows: list[str], since: float, timeout: float) -> dict[str, float]:
    """First ``live`` health time of each show after ``since`` (wall seconds)."""
    evs = mod.wait_for(
        lambda evs: all(any(parse_iso(e["at"]) > since for e in health(evs, s, "state", "live")) for s in shows),
        timeout,
        f"{shows} live after {since:.1f}",
    )
    return {s: min(parse_iso(e["at"]) for e in health(evs, s, "state", "live") if parse_iso(e["at"]) > since) for s in shows}


def failover(rig: Rig, mod: Moderator, url: str, shows: list[str], rounds: int) -> tuple[list[float], list[float]]:
    times: list[float] = []
    gaps: list[float] = []
    for r in range(rounds):
        held = holders(url)
        deadline = time.monotonic() + 30
        while any(w is None for w in held.values()) and time.monotonic() < deadline:
            time.sleep(0.5)
            held = holders(url)
        victim = Counter(w for w in held.values() if w).most_common(1)[0][0]
        moved = sorted(s for s, w in held.items() if w == victim)
        killed_at = time.time()
        rig.nodes[victim].kill()
        live = wait_all_live(mod, moved, killed_at, 60)
        evs = mod.snapshot()
        for s in moved:
            times.append(live[s] - killed_at)
            g = [e["duration_s"] for e in health(evs, s, "monitoring_gap") if parse_iso(e["at"]) > killed_at]
            gaps.extend(g[:1])
        print(f"  round {r + 1}: killed {victim} ({len(moved)} shows): live again after "
              + ", ".join(f"{live[s] - killed_at:.1f}s" for s in moved), flush=True)  # fmt: skip
        rig.nodes[victim].start()
        rig.nodes[victim].wait_ready()
        deadline = time.monotonic() + 60  # the restarted worker is handed its even share back (rebalancing)
        while time.monotonic() < deadline:
            counts = Counter(w for w in holders(url).values() if w)
            if len(counts) == len(rig.workers) and max(counts.values()) - min(counts.values()) <= 1:
                break
            time.sleep(0.5)
    return times, gaps


async def offer_alerts(urls: list[str], total: int, rate: int, ready: list[Any]) -> float:
    """Publish ``total`` alerts at ``rate``/s through a JetStreamPublisher; returns the start time."""
    from streamwatch.cluster.connect import connect
    from streamwatch.cluster.events import JetStreamPublisher, ensure_event_stream, jetstream
    from streamwatch.config import ClusterConfig
    from streamwatch.events.store import EventStore

    class Both:
        def wait(self) -> None:
            for ev in ready:
                ev.wait()

    cfg = ClusterConfig(nats=urls)
    nc = await connect(cfg, name="bench-publisher")
    try:
        js = jetstream(nc)
        await ensure_event_stream(js, cfg, len(urls))
        with tempfile.TemporaryDirectory() as tmp:
            store = EventStore(Path(tmp), retention_mb=None)
            pub = JetStreamPublisher(js, store, cfg)
            t0 = await single_box._publish(pub.publish, total, rate, Both())
            store.close()
            return t0
    finally:
        await nc.drain()


def delivery(nats_urls: list[str], gateways: list[str], n_clients: int, total: int, rate: int) -> dict[str, float]:
    """Like events.measure, with the server side replaced by JetStream + gateways."""
    ctx = mp.get_context("spawn")
    per = n_clients // len(gateways)
    runs = []
    for g in gateways:
        ready, results = ctx.Event(), ctx.Queue()
        proc = ctx.Process(target=single_box.clients_main, args=(f"{g}?token={MODERATOR}", per, total, True, ready, results))
        proc.start()
        runs.append((proc, ready, results))
    cpu0 = time.process_time()
    t0 = asyncio.run(offer_alerts(nats_urls, total, rate, [r for _, r, _ in runs]))
    pub_cpu = time.process_time() - cpu0
    outs = [q.get(timeout=180) for _, _, q in runs]
    for proc, _, _ in runs:
        proc.join(30)
    lat = sorted(x for o in outs for x in o["lat"])
    done = [x for o in outs for x in o["done"]]
    span = max(done) - t0 if done else float("nan")
    return {
        "clients_done": len(done),
        "events_per_s": total / span if len(done) == per * len(gateways) else float("nan"),
        "p50_ms": 1000 * statistics.median(lat) if lat else float("nan"),
        "p99_ms": 1000 * lat[int(len(lat) * 0.99) - 1] if lat else float("nan"),
        "max_ms": 1000 * lat[-1] if lat else float("nan"),
        "server_cpu_s": pub_cpu,
        "client_cpu_s": sum(o["cpu"] for o in outs),
    }


def single_box_rss(root: Path, sources: dict[str, str], settle_s: float) -> float:
    """RSS (MiB) of one ``streamwatch run`` daemon watching ``sources`` once every show is live."""
    port = free_port()
    streams = "".join(f'[[streams]]\nid = "{s}"\nsource = "{u}"\n' for s, u in sources.items())
    cfg = root / "single.toml"
    cfg.write_text(f'log_level = "INFO"\n[analysis]\nanalyzers = ["qr"]\nthreads = 1\n[analysis.encoder]\n'
                   f'[server]\nport = {port}\n[[server.tokens]]\nname = "desk"\nrole = "moderator"\nsecret = "{MODERATOR}"\n'
                   f'[[server.tokens]]\nname = "admin"\nrole = "admin"\nsecret = "{ADMIN}"\n{streams}')  # fmt: skip
    with (root / "single.log").open("ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "streamwatch", "run", "-c", str(cfg), "--data", str(root / "single")],
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})  # fmt: skip
    try:
        wait_port(port, 90)
        mod = Moderator(f"ws://127.0.0.1:{port}/ws")
        mod.start()
        try:
            wait_all_live(mod, list(sources), 0, 90)
        finally:
            mod.close()
        time.sleep(settle_s)
        return mib(proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def pct(xs: list[float], q: float) -> float:
    return sorted(xs)[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shows", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=10, help="worker kills")
    ap.add_argument("--clients", type=int, default=100, help="spread over 2 gateways")
    ap.add_argument("--rate", type=int, default=1000, help="offered events/s (cluster and single box)")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--settle", type=float, default=10.0, help="seconds of running shows before RSS is read")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (logs)")
    ap.add_argument("--parts", default="core,replies,placement", help="core (1-3 above), replies, placement (see their files)")
    ap.add_argument("--submissions", type=int, default=20, help="replies: timed submissions on each side")
    ap.add_argument("--kills", type=int, default=10, help="replies: answering workers killed mid-request")
    ap.add_argument("--placement-runs", type=int, default=3, help="placement: runs of each mode")
    a = ap.parse_args()
    parts = set(a.parts.split(","))
    if "core" in parts:
        core(a)
    if "replies" in parts:  # 4. submission → reply through a gateway vs the single box; replies over kills
        cluster_replies.report(cluster_replies.replies(a.submissions, a.kills), a.submissions)
    if "placement" in parts:  # 5. measured load per worker: placement by cost vs by count
        cluster_placement.report(cluster_placement.placement(a.placement_runs, a.keep))


def core(a: argparse.Namespace) -> None:
    ttl = 3.0
    root = Path(tempfile.mkdtemp(prefix="sw-bench-cluster-"))
    print(f"work folder {root}", flush=True)
    nginx, nginx_proc = start_nginx(root / "nginx")
    media = root / "media"
    media.mkdir()
    shows = [f"show{i}" for i in range(a.shows)]
    publishers = [rtmp_publish(qr_clip(media, i), nginx.rtmp(s), loop=True) for i, s in enumerate(shows)]
    nats = make_cluster(root, 3)
    nats.start()
    nats.wait_ready()
    rig = Rig(root, write_config(root / "cluster.toml", nats.urls, lease_ttl_s=ttl, renew_s=0.5))
    mod: Moderator | None = None
    try:
        workers = [rig.add("worker", w) for w in ("w1", "w2", "w3")]
        g1 = rig.add("gateway", "g1")
        rig.wait_ready()
        mod = Moderator(g1.url)
        mod.start()
        t_add = time.time()
        for s in shows:
            answer = request(g1.url, {"type": "add_stream", "stream": {"id": s, "source": nginx.rtmp(s)}})
            assert answer["type"] == "stream_added", answer
        wait_all_live(mod, shows, t_add - 1, 120)
        time.sleep(a.settle)
        held = holders(g1.url)
        rss = {w.name: (mib(w.proc.pid), sum(1 for x in held.values() if x == w.name)) for w in workers if w.proc}
        single = single_box_rss(root, {s: nginx.rtmp(s) for s in shows}, a.settle)

        print(f"\n1. failover over {a.rounds} worker kills ({a.shows} shows, 3 workers, 3 NATS nodes)", flush=True)
        times, gaps = failover(rig, mod, g1.url, shows, a.rounds)

        for w in workers:
            w.kill()
        g2 = rig.add("gateway", "g2")
        print(f"\n2. event delivery to {a.clients} clients at {a.rate} ev/s offered", flush=True)
        total = int(a.rate * a.seconds)
        mod.close()
        cl = delivery(nats.urls, [g1.url, g2.url], a.clients, total, a.rate)
        sb = single_box.measure("streamwatch", a.clients, total, a.rate)
    except BaseException:
        print(rig.logs())
        raise
    finally:
        if mod is not None:
            mod.close()
        rig.stop()
        for p in publishers:
            stop(p)
        nats.stop()
        nginx_proc.terminate()
        nginx_proc.wait(10)

    print(f"\n=== cluster bench ({a.shows} shows, {a.rounds} kills, {a.clients} clients, {a.rate} ev/s) ===")
    p50, mx = statistics.median(times or [float("nan")]), max(times, default=float("nan"))
    print(f"failover  {len(times)} moved shows: p50 {p50:.1f} s  max {mx:.1f} s  = lease TTL {ttl:.0f} s + {p50 - ttl:.1f} s (p50)"
          f"  | monitoring_gap p50 {statistics.median(gaps) if gaps else float('nan'):.1f} s max {max(gaps, default=float('nan')):.1f} s"
          f" ({len(gaps)} gaps)  target max <= 10 s: {'MET' if mx <= 10 else 'NOT MET'}")  # fmt: skip
    for label, r in (("cluster", cl), ("single box", sb)):
        print(f"{label:10s} clients {r['clients_done']}/{a.clients}  delivered {r['events_per_s']:7.0f} ev/s"
              f"  p50 {r['p50_ms']:7.1f} ms  p99 {r['p99_ms']:7.1f} ms  max {r['max_ms']:7.1f} ms")  # fmt: skip
    print(f"cluster / single box: {cl['events_per_s'] / sb['events_per_s']:.2f}x throughput, "
          f"p50 {cl['p50_ms'] / sb['p50_ms']:.1f}x, p99 {cl['p99_ms'] / sb['p99_ms']:.1f}x")  # fmt: skip
    for name, (m, n) in rss.items():
        print(f"RSS {name}: {m:6.0f} MiB with {n} show(s)")
    total_rss = sum(m for m, _ in rss.values())
    print(f"RSS single box `streamwatch run` with {a.shows} shows: {single:.0f} MiB; "
          f"per worker mean {total_rss / len(rss):.0f} MiB = {total_rss / len(rss) / single:.2f}x; "
          f"3 workers together {total_rss:.0f} MiB = {total_rss / single:.2f}x")  # fmt: skip
    if not a.keep:
        import shutil

        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
