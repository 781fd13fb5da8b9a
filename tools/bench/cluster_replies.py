#!/usr/bin/env python3
"""Cluster audience path: submission → reply latency through a gateway vs the single box, and replies
lost or doubled over worker kills.

One run, one VLM server (tests/chat_server.py, 0.3 s per answer) for both sides:

1. Latency: a fan sends ``--submissions`` distinct images one after the other (each waits for its
   reply), from the fan's ``submit`` to the ``reply`` frame on its connection. Cluster: a 3-node
   NATS cluster, a worker running the show and answering nothing, two answering workers, the fan on a
   gateway. Single box: one ``streamwatch run`` with the same show, model and settings. Two warm-up
   submissions on each side are not counted.
2. Kills: ``--kills`` rounds; in each the next VLM call is made slow (12 s), a fan sends an image,
   and the worker whose call it is gets ``kill -9`` as the call starts; the other worker answers
   after ``cluster.request_ack_wait_s`` (6 s); the killed worker is restarted before the next round.
   After a quiet period of twice the ack wait, every submission's answers are counted on the fan's
   connection: lost = none, doubled = more than one (target 0 / 0).

Run: ``python tools/bench/cluster.py --parts replies [--submissions 20 --kills 10]``.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(p) for p in (ROOT / "tests", ROOT / "tools", ROOT)]

from chat_server import ChatServer  # noqa: E402
from cluster_rig import Rig, request, write_config  # noqa: E402
from conftest import publish, start_nginx, stop  # noqa: E402
from make_overlay_suite import SuiteClip, write_clip  # noqa: E402
from nats_cluster import free_port, make_cluster, wait_port  # noqa: E402
from test_cluster_audience import FANS_SECRET, Fan, Vlm, answers_to, picture  # noqa: E402

ACK_WAIT_S = 6.0
SETTINGS = """rate_per_s = 200
rate_burst = 500
abuse_limit = 1000
user_submit_per_min = 60
user_submit_burst = 10
[[server.tokens]]
name = "fans"
role = "submitter"
secret = "{fans}"
[vlm]
registry = "{registry}"
"""


def submit_and_wait(fan: Fan, seed: int, user: str, timeout: float = 60) -> tuple[str, float]:
    """Send one image, wait for its reply; (submission id, seconds from send to reply)."""
    ref = f"lat{seed}"
    t0 = time.monotonic()
    fan.submit(picture(seed), user, "看看我的画", ref)
    frames = fan.wait(lambda fs: any(f.get("ref") == ref for f in fs), timeout, f"{ref} accepted")
    sid = next(f for f in frames if f.get("ref") == ref)["submission"]
    deadline = time.monotonic() + timeout
    while not answers_to(fan.snapshot(), sid):
        if time.monotonic() > deadline:
            raise TimeoutError(f"no reply to {sid}")
        time.sleep(0.005)
    return sid, time.monotonic() - t0


def latencies(fan: Fan, n: int, base: int) -> list[float]:
    for w in range(2):
        submit_and_wait(fan, base + 900 + w, f"warm{w}")
    return [submit_and_wait(fan, base + i, f"fan{i}")[1] for i in range(n)]


def kill_rounds(rig: Rig, fan: Fan, vlm: Vlm, rounds: int) -> tuple[int, int, list[float]]:
    """(lost, doubled, seconds from each kill to its reply)."""
    sids: list[str] = []
    took: list[float] = []
    for r in range(rounds):
        before = vlm.count("reply")
        vlm.slow_next = True
        ref = f"kill{r}"
        fan.submit(picture(7000 + r), f"k{r}", "送给星喵", ref)
        frames = fan.wait(lambda fs, ref=ref: any(f.get("ref") == ref for f in fs), 30, f"{ref} accepted")
        sid = next(f for f in frames if f.get("ref") == ref)["submission"]
        sids.append(sid)
        deadline = time.monotonic() + 60
        while vlm.count("reply") <= before:
            if time.monotonic() > deadline:
                raise TimeoutError(f"round {r}: the VLM call never started\n{rig.logs()}")
            time.sleep(0.02)
        holder = next(w for w in ("w1", "w2") if f"answering submission {sid}" in rig.nodes[w].log.read_text(errors="replace"))
        t0 = time.monotonic()
        rig.nodes[holder].kill()
        fan.wait(lambda fs, sid=sid: bool(answers_to(fs, sid)), 90, f"a reply to {sid} after {holder} was killed")
        took.append(time.monotonic() - t0)
        print(f"  kill {r + 1}: {holder} killed mid-call, reply {took[-1]:.1f}s later", flush=True)
        rig.nodes[holder].start()
        rig.nodes[holder].wait_ready()
    time.sleep(2 * ACK_WAIT_S + 2)  # a late second answer would be in by now
    counts = [len(answers_to(fan.snapshot(), sid)) for sid in sids]
    return sum(c == 0 for c in counts), sum(c > 1 for c in counts), took


def single_box(root: Path, source: str, settings: str, n: int) -> list[float]:
    port = free_port()
    cfg = root / "single.toml"
    cfg.write_text(f'log_level = "INFO"\n[analysis]\nanalyzers = ["qr"]\nthreads = 1\n[analysis.encoder]\n'
                   f'[[streams]]\nid = "show"\nsource = "{source}"\n[server]\nport = {port}\n{settings}')  # fmt: skip
    with (root / "single.log").open("ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "streamwatch", "run", "-c", str(cfg), "--data", str(root / "single")],
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})  # fmt: skip
    try:
        wait_port(port, 90)
        time.sleep(3)
        fan = Fan(f"ws://127.0.0.1:{port}/ws")
        try:
            return latencies(fan, n, 3000)
        finally:
            fan.close()
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


def pct(xs: list[float], q: float) -> float:
    return sorted(xs)[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def replies(submissions: int, kills: int) -> dict[str, object]:
    root = Path(tempfile.mkdtemp(prefix="sw-bench-replies-"))
    nginx, nginx_proc = start_nginx(root / "nginx")
    clip = root / "show.mp4"
    write_clip(SuiteClip("show", "coffee", 640, 360, 10, 12, 12.0, ()), clip)
    publisher = publish(clip, nginx.rtmp("show"), loop=True)
    (root / "nats").mkdir()
    nats = make_cluster(root / "nats", 3)
    nats.start()
    nats.wait_ready()
    vlm = Vlm()
    try:
        with ChatServer(vlm.respond) as srv:
            model = {"id": "m", "backend": "openai", "endpoint": srv.url, "model_name": "m", "capabilities": ["reply", "qa"],
                     "concurrency": 8, "timeout_s": 30}  # fmt: skip
            registry = root / "registry.json"
            registry.write_text(json.dumps({"models": [model], "roles": {"reply": ["m", "local"], "qa": ["m", "local"]}}))
            settings = SETTINGS.format(fans=FANS_SECRET, registry=registry)
            sb = single_box(root, nginx.rtmp("show"), settings, submissions)
            extra = "[server]\n" + settings
            ingest = write_config(root / "ingest.toml", nats.urls, name="rp", cluster_extra="roles = []", extra=extra)
            answering = f"capacity = 0\nrequest_ack_wait_s = {ACK_WAIT_S}\nanswer_concurrency = 2"
            rig = Rig(root, write_config(root / "answer.toml", nats.urls, name="rp", cluster_extra=answering, extra=extra))
            try:
                rig.add("worker", "w0", config=ingest)
                rig.add("worker", "w1")
                rig.add("worker", "w2")
                g1 = rig.add("gateway", "g1")
                rig.wait_ready()
                added = request(g1.url, {"type": "add_stream", "stream": {"id": "show", "source": nginx.rtmp("show")}})
                assert added["type"] == "stream_added", added
                time.sleep(3)
                fan = Fan(g1.url)
                try:
                    cl = latencies(fan, submissions, 1000)
                    lost, doubled, took = kill_rounds(rig, fan, vlm, kills)
                finally:
                    fan.close()
            except BaseException:
                print(rig.logs())
                raise
            finally:
                rig.stop()
    finally:
        stop(publisher)
        nats.stop()
        nginx_proc.terminate()
        nginx_proc.wait(10)
    return {"cluster": cl, "single": sb, "lost": lost, "doubled": doubled, "took": took}


def report(r: dict[str, object], submissions: int) -> None:
    cl, sb, took = r["cluster"], r["single"], r["took"]
    assert isinstance(cl, list) and isinstance(sb, list) and isinstance(took, list)
    print(f"\n=== audience: {submissions} submissions one at a time, VLM 0.3 s per answer ===")
    for label, xs in (("gateway", cl), ("single box", sb)):
        print(f"{label:10s} submission → reply p50 {1000 * statistics.median(xs):6.0f} ms  p95 {1000 * pct(xs, 0.95):6.0f} ms")
    print(f"gateway / single box: p50 {statistics.median(cl) / statistics.median(sb):.2f}x, p95 {pct(cl, 0.95) / pct(sb, 0.95):.2f}x")
    if took:
        print(f"kills {len(took)}: replies lost {r['lost']}, doubled {r['doubled']} (target 0 / 0); kill → reply"
              f" p50 {statistics.median(took):.1f} s max {max(took):.1f} s (ack wait {ACK_WAIT_S:g} s)")  # fmt: skip


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--submissions", type=int, default=20)
    ap.add_argument("--kills", type=int, default=10)
    a = ap.parse_args()
    report(replies(a.submissions, a.kills), a.submissions)
