#!/usr/bin/env python3
"""Glass-to-alert latency on the CPU: ffmpeg -re → nginx-rtmp → daemon (pull) → WebSocket client.

A clip alternates 2 s clean scenes with 2 s scenes carrying a contact-spam caption (a new photo each
time, so the sampler keeps the frame); the bench policy sets the rule's cooldown to 0 and the result
cache is off, so every onset costs a full cascade run (nudity + OCR + QR) and must alert. Measured
per onset: publish time of the planted frame (ffmpeg start + clip offset) → receipt by the client,
and the sampled frame's arrival in the daemon (``received_at``) → receipt.
Baseline: the budget from the issue — RTMP transport (~0.3 s) + sampling alignment (≤ 1 s) +
analysis; targets at 1 s sampling: p95 ≤ 2.0 s publish → receipt, p95 ≤ 0.6 s arrival → receipt.
Run: ``python tools/bench/latency.py [--cycles 25]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from make_concert_clip import write_concert_clip  # noqa: E402
from media import nginx_rtmp, publish  # noqa: E402
from websockets.asyncio.client import connect  # noqa: E402

from streamwatch.app import Daemon  # noqa: E402
from streamwatch.config import load_settings  # noqa: E402

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")
TOKEN = "bench-moderator-1"


def timeline(cycles: int) -> tuple[tuple[float, str, str, str, str, str], ...]:
    out = [(3.0, "drift", "astronaut", "", "", "")]
    for k in range(cycles):
        out.append((2.0, "drift", PHOTOS[(2 * k + 1) % 4], "", "", ""))
        out.append((2.0, "drift", PHOTOS[(2 * k + 2) % 4], "关注主播 加微信 xiaomei88 领福利", "", "contact_spam"))
    return tuple(out)


def epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


async def run(cycles: int) -> tuple[list[float], list[float], int]:
    tmp = Path(tempfile.mkdtemp())
    clip = tmp / "latency.mp4"
    labels = write_concert_clip(clip, timeline=timeline(cycles))
    onsets = [p["offset"] for p in labels["planted"]]  # type: ignore[index]
    shutil.copytree(ROOT / "models", tmp / "models")
    policy = tmp / "models" / "policy.toml"
    policy.write_text(
        policy.read_text().replace('cooldown_s = 60\n[rule.when]\nocr = "contact"', 'cooldown_s = 0\n[rule.when]\nocr = "contact"')
    )
    with nginx_rtmp() as port:
        url = f"rtmp://127.0.0.1:{port}/live/bench"
        settings = load_settings(None, {
            "data_dir": tmp / "data", "streams": [{"id": "bench", "source": url}],
            "server": {"port": 0, "tokens": [{"name": "bench", "role": "moderator", "secret": TOKEN}]},
            "analysis": {"policy": policy, "cache_ttl_s": 0.001},
        })  # fmt: skip
        daemon = Daemon(settings)
        runner = asyncio.create_task(daemon.run())
        await daemon.ready.wait()
        assert daemon.server is not None
        got: list[tuple[float, dict[str, Any]]] = []
        async with connect(f"ws://127.0.0.1:{daemon.server.port}/ws?token={TOKEN}") as ws:
            await ws.recv()
            await ws.send(json.dumps({"type": "subscribe", "channels": ["alerts"]}))
            await ws.recv()
            t_pub = time.time()
            pub = publish(clip, url)

            async def reader() -> None:
                while True:
                    msg = json.loads(await ws.recv())
                    now = time.time()
                    for ev in msg["events"] if msg["type"] == "batch" else [msg]:
                        got.append((now, ev))

            task = asyncio.create_task(reader())
            await asyncio.to_thread(pub.wait)
            await asyncio.sleep(3)
            task.cancel()
        daemon.stop()
        await runner
    # stream offset 0 of the daemon ≠ clip time 0: align on the first alert's frame arrival
    alerts = [(now, ev) for now, ev in got if ev.get("rule") == "contact_spam"]
    e2e, arrival = [], []
    used: set[int] = set()
    for o in onsets:
        t_planted = t_pub + o
        cands = [(now, ev) for now, ev in alerts if epoch(ev["received_at"]) >= t_planted and id(ev) not in used]
        if not cands:
            continue
        now, ev = min(cands, key=lambda c: c[0])
        if now - t_planted > 4:  # belongs to a later onset: this one was missed
            continue
        used.add(id(ev))
        e2e.append(now - t_planted)
        arrival.append(now - epoch(ev["received_at"]))
    return e2e, arrival, len(onsets)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cycles", type=int, default=25)
    a = ap.parse_args()
    e2e, arrival, n = asyncio.run(run(a.cycles))
    print(f"planted onsets {n}, alerted {len(e2e)}")
    for name, xs, target in (("publish -> receipt:      ", e2e, 2.0), ("frame arrival -> receipt:", arrival, 0.6)):
        stats = f"p50 {statistics.median(xs):.2f} s  p95 {pct(xs, 0.95):.2f} s  max {max(xs):.2f} s"
        print(f"{name} {stats}  (target p95 <= {target} s)")
    ok = len(e2e) == n and pct(e2e, 0.95) <= 2.0 and pct(arrival, 0.95) <= 0.6
    print(f"targets: {'MET' if ok else 'NOT MET'}")


if __name__ == "__main__":
    main()
