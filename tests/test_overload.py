"""Overload end to end (issue 22): a real daemon given more live RTMP streams than its CPU budget carries.

Three "camera-cut" streams (every frame a different crop of a different photo, 720p, sampled every
0.25 s) and one calm stream (a still photo, sampled every 1 s) are published by ffmpeg to nginx-rtmp;
the daemon runs OCR + QR on one CPU thread (``analysis.cpu_threads = 1``). A real WebSocket client
sees the ``overloaded`` event; the calm stream is then sampled every 2 s or more (its samples, the
event's text, ``/healthz``); a QR code planted on the calm stream during the overload (its publisher
switched to the same photo with a code in a corner) is still alerted; after the load streams are
removed at run time the recovery is said once and ``/healthz`` and ``/metrics`` are back to level 0.
No timing is asserted beyond generous deadlines: the load is many times what one thread analyses.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.request
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
import skimage.data
from conftest import Nginx, publish, stop
from evserver import TOKENS
from websockets.asyncio.client import ClientConnection, connect

from streamwatch.app import Daemon
from streamwatch.config import load_settings

W, H, FPS = 1280, 720, 10
LOAD = ("cut0", "cut1", "cut2")
PHOTOS = ("astronaut", "rocket", "chelsea", "coffee", "hubble_deep_field", "immunohistochemistry", "coins", "colorwheel")


def photo(name: str, w: int, h: int) -> np.ndarray:
    a = np.asarray(getattr(skimage.data, name)())
    a = np.stack([a] * 3, -1) if a.ndim == 2 else a[..., :3]
    return np.ascontiguousarray(cv2.resize(a, (w, h), interpolation=cv2.INTER_AREA))


def with_qr(rgb: np.ndarray, payload: str) -> np.ndarray:
    import segno

    dark = np.asarray(list(segno.make(payload, error="m").matrix_iter(scale=6, border=2)), bool)
    qr = np.repeat(np.where(dark, 0, 255).astype(np.uint8)[..., None], 3, -1)
    out = rgb.copy()
    out[40 : 40 + qr.shape[0], -40 - qr.shape[1] : -40] = qr
    return out


def encode(path: Path, frames: list[np.ndarray]) -> Path:
    """H.264 at FPS, a keyframe every second (a joining player waits at most 1 s), constant quantiser (a
    still picture's keyframes decode alike, loop after loop: its 1 s samples are duplicates)."""
    with av.open(str(path), "w") as out:
        params = f"keyint={FPS}:min-keyint={FPS}:qp=20"
        st = out.add_stream("libx264", rate=FPS, options={"preset": "veryfast", "x264-params": params})
        st.width, st.height, st.pix_fmt = W, H, "yuv420p"
        st.thread_type = "FRAME"
        for i, rgb in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            vf.pts, vf.time_base = i, Fraction(1, FPS)
            for p in st.encode(vf):
                out.mux(p)
        for p in st.encode(None):
            out.mux(p)
    return path


def cuts(path: Path, seconds: int, seed: int) -> Path:
    """Every frame another crop of another photo: every sample is new content (a busy show)."""
    rng = np.random.default_rng(seed)
    big = [photo(n, W * 2, H * 2) for n in PHOTOS]
    frames = []
    for _ in range(seconds * FPS):
        x, y = int(rng.integers(0, W)), int(rng.integers(0, H))
        frames.append(np.ascontiguousarray(big[int(rng.integers(len(big)))][y : y + H, x : x + W]))
    return encode(path, frames)


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as r:
        return bytes(r.read())


def metric(text: str, name: str) -> float:
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))


def test_an_overloaded_daemon_says_so_widens_calm_streams_keeps_overlays_and_says_the_recovery(nginx: Nginx, tmp_path: Path) -> None:
    still = photo("coffee", W, H)
    calm_clip = encode(tmp_path / "calm.mp4", [still] * (3 * FPS))
    qr_clip = encode(tmp_path / "calm-qr.mp4", [with_qr(still, "https://evil.example/join?g=1")] * (3 * FPS))
    load_clips = [cuts(tmp_path / f"{sid}.mp4", 8, seed) for seed, sid in enumerate(LOAD)]
    pubs = {sid: publish(clip, nginx.rtmp(sid), loop=True) for sid, clip in zip(LOAD, load_clips, strict=True)}
    pubs["calm"] = publish(calm_clip, nginx.rtmp("calm"), loop=True)
    settings = load_settings(
        None,
        {
            "data_dir": tmp_path / "data",
            "streams": [
                {"id": "calm", "source": nginx.rtmp("calm"), "every_s": 1.0},
                *({"id": sid, "source": nginx.rtmp(sid), "every_s": 0.25} for sid in LOAD),
            ],
            "server": {"port": 0, "tokens": [{"name": f"{r}-client", "role": r, "secret": s} for r, s in TOKENS.items()]},
            "ingest": {"open_timeout_s": 30},
            "analysis": {
                "analyzers": ["ocr", "qr"],
                "cpu_threads": 1,
                "cache_radius": 0,
                "cache_size": 1,  # (the load clips loop: no analysis is reused)
                "overload": {"lag_s": 1.0, "after_s": 2.0, "recover_s": 2.0, "calm_after_s": 20.0},
            },
        },
    )
    samples: list[tuple[float, float]] = []  # (wall time, offset) of the calm stream's samples
    daemon = Daemon(settings, on_sample=lambda sid, off: samples.append((time.time(), off)) if sid == "calm" else None)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=lambda: loop.run_until_complete(daemon.run()), daemon=True)
    seen: list[dict[str, Any]] = []
    marks: dict[str, float] = {}
    during: dict[str, Any] = {}

    async def until(ws: ClientConnection, what: str, match: Any, wait: float) -> dict[str, Any]:
        try:
            async with asyncio.timeout(wait):
                while True:
                    msg = json.loads(await ws.recv())
                    batch = msg["events"] if msg.get("type") == "batch" else [msg]
                    seen.extend(batch)
                    hits = [ev for ev in batch if match(ev)]
                    if hits:
                        return hits[0]  # type: ignore[no-any-return]
        except TimeoutError:
            pass
        said = [(e.get("stream"), e.get("type"), e.get("kind") or e.get("rule"), e.get("state") or e.get("active")) for e in seen]
        raise AssertionError(f"no {what} within {wait}s; seen: {said[-30:]}")

    def overloaded(active: bool) -> Any:
        return lambda e: e.get("type") == "health" and e.get("kind") == "overloaded" and e.get("stream") == "calm" and e["active"] is active

    async def scenario(base: str, ws_url: str) -> None:
        async with connect(f"{ws_url}?token={TOKENS['moderator']}") as ws:
            await ws.recv()
            await ws.send(json.dumps({"type": "subscribe", "channels": ["health", "alerts"]}))
            await ws.recv()
            began = await until(ws, "an overloaded event", overloaded(True), 75)
            marks["began"] = time.time()
            during["event"] = began
            # the calm stream's sampling widens: wait until its last samples are 2 s or more apart
            deadline = time.monotonic() + 40
            while len(late := [o for t, o in samples if t > marks["began"]]) < 3 or min(np.diff(late[-3:])) < 1.9:
                hz = json.loads(await asyncio.to_thread(get, f"{base}/healthz"))["overload"]
                assert time.monotonic() < deadline, f"the calm stream's step did not widen: {late}, {hz}"
                await asyncio.sleep(0.5)
            during["healthz"] = json.loads(await asyncio.to_thread(get, f"{base}/healthz"))
            during["metrics"] = (await asyncio.to_thread(get, f"{base}/metrics")).decode()
            # plant a QR code on the calm stream while the box is overloaded
            marks["planted"] = time.time()
            stop(pubs["calm"])
            pubs["calm"] = publish(qr_clip, nginx.rtmp("calm"), loop=True)
            alert = await until(ws, "the planted QR code's alert", lambda e: e.get("type") == "alert" and e.get("rule") == "qr_code", 60)
            during["alert"] = alert
            during["level_at_alert"] = json.loads(await asyncio.to_thread(get, f"{base}/healthz"))["overload"]["level"]
            for sid in LOAD:  # the load goes away at run time
                await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(daemon.remove_stream(sid, "test"), loop))
            marks["removed"] = time.time()
            await until(ws, "the recovery", overloaded(False), 60)

    marks["start"] = time.time()
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not daemon.ready.is_set():
            assert time.monotonic() < deadline and thread.is_alive(), "the daemon did not start"
            time.sleep(0.05)
        assert daemon.server is not None
        base = f"http://127.0.0.1:{daemon.server.port}"
        asyncio.run(scenario(base, f"ws://127.0.0.1:{daemon.server.port}/ws"))
        after = json.loads(get(f"{base}/healthz"))
        after_metrics = get(f"{base}/metrics").decode()
    finally:
        loop.call_soon_threadsafe(daemon.stop)
        thread.join(60)
        for p in pubs.values():
            stop(p)
    assert not thread.is_alive(), "the daemon did not stop"

    # the episode is said once on each stream watched then, and ends once
    ov = [e for e in seen if e.get("type") == "health" and e.get("kind") == "overloaded"]
    assert [e["active"] for e in ov if e["stream"] == "calm"] == [True, False], ov
    for sid in LOAD:  # each removed stream's period ends when it stops being watched, before its end
        said = [(e["active"], e["reason"]) for e in ov if e["stream"] == sid]
        assert [a for a, _ in said] == [True, False] and said[1][1] == "stopped watching it", said
        states = [e for e in seen if e.get("stream") == sid and e.get("state") == "ended"]
        assert states and seen.index(states[0]) > seen.index(next(e for e in ov if e["stream"] == sid and not e["active"]))
    text = during["event"]["reason"]
    assert "behind" in text and "step 1 (calm_x2" in text and "this stream calm, sampled every 2s" in text, text
    end = next(e for e in ov if e["active"] is False and e["stream"] == "calm")
    assert end["duration_s"] > 0 and "worst" in end["reason"] and "behind, step" in end["reason"], end

    # while overloaded: the level, the calm stream's step, and drops of busy frames, counted by reason
    hz = during["healthz"]["overload"]
    assert hz["level"] >= 1 and hz["overloaded"] and hz["streams"]["calm"]["every_s"] >= 2.0, hz
    assert all(hz["streams"][sid]["calm"] is False for sid in LOAD), hz
    assert during["healthz"]["streams"]["calm"]["overloaded"] is True
    assert metric(during["metrics"], "streamwatch_degradation_level") >= 1
    assert metric(during["metrics"], "streamwatch_analysis_drops_total") >= 1

    # the calm stream's samples: 1 s apart before the overload (2 s or more after it: waited for above)
    before = [o for t, o in samples if t < marks["began"]]
    assert min(np.diff(before)) < 1.5, before

    # the overlay planted during the overload is alerted, before any recovery
    assert during["alert"]["stream"] == "calm" and during["level_at_alert"] >= 1
    assert seen.index(during["alert"]) < seen.index(end)

    # after the load is removed: back to normal
    assert after["overload"]["level"] == 0 and not after["overload"]["overloaded"], after["overload"]
    assert after["streams"]["calm"]["overloaded"] is False
    assert metric(after_metrics, "streamwatch_degradation_level") == 0
    print("phases (s after the daemon started):", {k: round(v - marks["start"], 1) for k, v in marks.items()})


def test_a_cluster_worker_says_its_overload_on_the_event_log(nats3: Any, nginx: Nginx, tmp_path: Path) -> None:
    """The same watch on a cluster worker: the overloaded event of each stream it holds goes out on the
    cluster's event log (what every gateway's moderators see), with the lag in its reason ("analysis 3.2s behind …")."""
    from streamwatch.cluster.connect import Names, connect
    from streamwatch.cluster.desired import DesiredStreams
    from streamwatch.cluster.events import jetstream
    from streamwatch.cluster.kv import kv_bucket
    from streamwatch.cluster.worker import ClusterWorker
    from streamwatch.config import StreamConfig
    from streamwatch.events.model import Event

    load_clips = [cuts(tmp_path / f"{sid}.mp4", 8, seed) for seed, sid in enumerate(LOAD)]
    pubs = {sid: publish(clip, nginx.rtmp(f"w-{sid}"), loop=True) for sid, clip in zip(LOAD, load_clips, strict=True)}
    name = f"overload{int(time.time()) % 100000}"
    cluster = {"name": name, "nats": nats3.urls, "worker_id": "w1", "lease_ttl_s": 3, "renew_s": 0.5, "connect_timeout_s": 20}
    analysis = {"analyzers": ["ocr", "qr"], "cpu_threads": 1, "cache_radius": 0, "cache_size": 1,
                "overload": {"lag_s": 1.0, "after_s": 2.0, "recover_s": 2.0}}  # fmt: skip
    over = {"data_dir": tmp_path / "w1", "ingest": {"open_timeout_s": 30}, "analysis": analysis, "cluster": cluster}
    settings = load_settings(None, over)
    worker = ClusterWorker(settings)
    published: list[Event] = []

    async def scenario() -> None:
        run = asyncio.create_task(worker.run())
        try:
            await asyncio.wait_for(worker.ready.wait(), 30)
            bus = worker.svc.bus
            send = bus.publish

            async def recorded(ev: Event) -> None:  # what goes onto the event log, as it goes
                await send(ev)
                published.append(ev)

            bus.publish = recorded  # type: ignore[method-assign]
            nc = await connect(worker.cfg, name="test-overload")
            desired = DesiredStreams(await kv_bucket(jetstream(nc), Names.from_config(worker.cfg).desired, ttl_s=None, replicas=3))
            for sid in LOAD:
                await desired.add(StreamConfig(id=sid, source=nginx.rtmp(f"w-{sid}"), every_s=0.25))
            deadline = time.monotonic() + 90
            while not {e.stream for e in published if _began(e)} >= set(LOAD):
                assert time.monotonic() < deadline and not run.done(), f"no overloaded event on every stream: {published[-10:]}"
                await asyncio.sleep(0.5)
            await nc.close()
        finally:
            worker.stop()
            await asyncio.wait_for(run, 60)

    try:
        asyncio.run(scenario())
    finally:
        for p in pubs.values():
            stop(p)
    began = [e for e in published if _began(e)]
    assert len({e.stream for e in began}) == len(began) == len(LOAD), began  # said once per stream
    assert all("behind" in (e.reason or "") for e in began), [e.reason for e in began]


def _began(e: object) -> bool:
    from streamwatch.events.model import HealthEvent, HealthKind

    return isinstance(e, HealthEvent) and e.kind is HealthKind.OVERLOADED and bool(e.active)
