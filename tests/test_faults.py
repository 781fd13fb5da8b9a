"""Faults inside a stream's work never stop it silently: a frame whose analysis fails is skipped (a
streak of them is a health notice, and its end too); a runner that fails on a bug is restarted with
back-off (its unwatched time is a monitoring gap); a file is not read twice; in a cluster, a stream
that keeps failing on one worker goes to another. Real RTMP (nginx), real decoding, real QR analyzer,
a real 3-node NATS cluster; the faults are injected (an analyzer that raises, a callback that raises)."""

from __future__ import annotations

import asyncio
import itertools
import subprocess
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import Clip, Nginx, publish, stop
from test_hls_shapes import playlist, segments, web  # noqa: F401  (web: the HTTP server fixture)

from streamwatch.analysis.base import REGISTRY
from streamwatch.analysis.cascade import Cascade
from streamwatch.analysis.detectors import AnalyzerSettings, QRReader
from streamwatch.analysis.model import Detection
from streamwatch.config import Settings, load_settings
from streamwatch.errors import AnalysisError, EventsError
from streamwatch.events.model import Event, HealthEvent, HealthKind, StreamState
from streamwatch.events.store import EventStore
from streamwatch.report.build import build_report
from streamwatch.runtime.faults import FailureStreak, RestartBackoff, describe
from streamwatch.sampling.phash import phash_luma

# --- pure ---------------------------------------------------------------------------------------


def test_failure_streak_notices_once_per_streak_and_its_end() -> None:
    s = FailureStreak(notice_after=3)
    assert s.ok() is None  # nothing failed
    assert [s.failed() for _ in range(5)] == [False, False, True, False, False]
    assert s.ok() == 5 and s.ok() is None
    assert [s.failed() for _ in range(2)] == [False, False]
    assert s.ok() is None  # a short streak is not worth a notice, nor its end
    assert s.skipped == 7


def test_restart_backoff_doubles_resets_after_a_healthy_run_and_gives_up() -> None:
    b = RestartBackoff(initial_s=1.0, max_s=8.0, healthy_s=60.0, give_up_after=3)
    assert [b.crashed(0.5) for _ in range(5)] == [1.0, 2.0, 4.0, 8.0, 8.0]
    assert b.give_up
    assert b.crashed(61.0) == 1.0 and b.crashes == 1 and not b.give_up
    assert not RestartBackoff().give_up and RestartBackoff(give_up_after=None).crashed(0) == 1.0
    err = ExceptionGroup("unhandled errors in a TaskGroup", [ValueError("x" * 500)])
    text = describe(err)
    assert text.startswith("ValueError: xxx") and len(text) == 200
    assert describe(KeyError()) == "KeyError"


# --- the cascade: a batch that fails fails its frames, never the batcher ------------------------


class Brittle:
    """An analyzer with a bug on small frames (a fan's sticker): IndexError, not an AnalysisError."""

    name = "brittle"
    providers = ("cpu",)

    def analyze(self, images: Sequence[np.ndarray]) -> list[tuple[Detection, ...]]:
        for img in images:
            if min(img.shape[:2]) < 32:
                raise IndexError("index 32 is out of bounds for axis 0 with size 24")
        return [() for _ in images]


def test_a_failing_analyzer_fails_only_its_frames_and_the_cascade_goes_on() -> None:
    from skimage import data

    photo = np.ascontiguousarray(data.astronaut()[::2, ::2])  # 256x256 RGB
    sticker = np.ascontiguousarray(data.astronaut()[:24, :24])  # 24x24

    async def scenario() -> None:
        with ThreadPoolExecutor(2) as pool:
            cascade = Cascade([QRReader(AnalyzerSettings(device="cpu")), Brittle()], pool, cache_size=0)
            try:
                stamp = itertools.count()

                async def one(sid: str, img: np.ndarray) -> Any:
                    t = float(next(stamp))
                    return await cascade.analyze(sid, img, phash_luma(img[..., 1]), offset=t, at=time.time(), received_at=time.time())

                async with asyncio.timeout(30):  # a hang here is the bug this guards against
                    results = await asyncio.gather(one("a", photo), one("b", sticker), one("c", photo[::-1]), return_exceptions=True)
                    _, bad, _ = results
                    assert isinstance(bad, AnalysisError), results
                    assert "brittle" in str(bad) and "IndexError" in str(bad), bad
                    # the same sticker again fails with a clear error; a good frame right after is analysed
                    with pytest.raises(AnalysisError, match=r"24x24"):
                        await one("b", sticker)
                    after = await one("b", photo[:, ::-1].copy())
                    assert after.stream == "b" and after.width == 256
            finally:
                await cascade.close()

    asyncio.run(scenario())


# --- the single box: a live stream over RTMP ----------------------------------------------------


class Switch:
    """Faults the test turns on and off: analysis raising, or the runner's callback raising N times."""

    def __init__(self) -> None:
        self.analysis_fails = False
        self.crashes_left = 0
        self.own_failure = False
        self.analysed = 0

    def on_analyzed(self, _sid: str, _latency: float) -> None:
        self.analysed += 1
        if self.crashes_left > 0:
            self.crashes_left -= 1
            if self.own_failure:  # streamwatch's own side failed (the store, the event log), not the source
                self.own_failure = False
                raise EventsError("cannot write the event store: disk full")
            raise ValueError("injected bug")


def _flaky(switch: Switch) -> Callable[[Any], Any]:
    class Flaky:
        name = "flaky"
        providers = ("cpu",)

        def analyze(self, images: Sequence[np.ndarray]) -> list[tuple[Detection, ...]]:
            if switch.analysis_fails:
                raise RuntimeError("CUDA error: out of memory")
            return [() for _ in images]

    return lambda _settings: Flaky()


def _settings(data: Path, source: str, analyzers: list[str]) -> Settings:
    return load_settings(
        None,
        {
            "data_dir": data,
            "streams": [{"id": "show", "source": source}],
            "analysis": {"analyzers": analyzers, "threads": 1, "cache_radius": 0},
            "ingest": {"open_timeout_s": 10, "read_timeout_s": 3, "backoff_initial_s": 0.3, "backoff_max_s": 1.0},
            "sampling": {"every_s": 0.25, "dedupe_radius": 0},
        },
    )


def _events(data: Path) -> list[Event]:
    store = EventStore(data)
    try:
        return store.events("show")
    finally:
        store.close()


async def _wait(cond: Callable[[], bool], within_s: float) -> bool:
    """Poll ``cond`` until it holds (True) or ``within_s`` passed (False)."""
    deadline = time.monotonic() + within_s
    while True:
        if cond():
            return True
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.1)


def _health(events: list[Event], kind: HealthKind) -> list[HealthEvent]:
    return [e for e in events if isinstance(e, HealthEvent) and e.kind is kind]


async def _until(pred: Callable[[list[Event]], bool], data: Path, within_s: float, what: str) -> list[Event]:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        evs = await asyncio.to_thread(_events, data)
        if pred(evs):
            return evs
        await asyncio.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}: {[e.describe() for e in _health(evs, HealthKind.STATE)]}")


@pytest.mark.media_server
def test_a_live_stream_skips_failed_frames_and_restarts_after_a_bug(nginx: Nginx, short_clip: Clip, tmp_path: Path) -> None:
    from streamwatch.app import Daemon

    switch = Switch()
    REGISTRY["flaky"] = _flaky(switch)
    url = nginx.rtmp("faults")
    data = tmp_path / "d"
    daemon = Daemon(_settings(data, url, ["qr", "flaky"]), serve=False, on_analyzed=switch.on_analyzed)
    pub: list[subprocess.Popen[bytes]] = [publish(short_clip.path, url, loop=True)]

    def live_after(evs: list[Event], t: float) -> bool:
        return any(e.state is StreamState.LIVE and e.at > t for e in _health(evs, HealthKind.STATE))

    async def scenario() -> None:
        run = asyncio.create_task(daemon.run())
        try:
            await _until(lambda evs: live_after(evs, 0), data, 30, "live")
            assert await _wait(lambda: switch.analysed >= 3, 30)

            # 1. the analysis fails on every frame for a while (a model on a GPU out of memory)
            switch.analysis_fails = True
            evs = await _until(lambda evs: any(e.active for e in _health(evs, HealthKind.ANALYSIS)), data, 30, "analysis failing")
            assert not run.done() and not any(e.state is StreamState.STOPPED for e in _health(evs, HealthKind.STATE))
            switch.analysis_fails = False
            before = switch.analysed
            await _until(lambda evs: any(e.active is False for e in _health(evs, HealthKind.ANALYSIS)), data, 30, "analysis again")
            assert switch.analysed > before

            # 2. the stream's work fails on a bug, twice in a row: restarted after 1 s, then 2 s
            crashed_at = time.time()
            switch.crashes_left, switch.own_failure = 2, True
            await _until(
                lambda evs: (
                    sum("error (" in e.reason for e in _health(evs, HealthKind.STATE) if e.at > crashed_at) == 2
                    and any(e.state is StreamState.LIVE and e.at > crashed_at + 3 for e in _health(evs, HealthKind.STATE))
                ),
                data,
                60,
                "two restarts, then live",
            )
            analysed = switch.analysed
            assert await _wait(lambda: switch.analysed >= analysed + 3, 30), "analysed again after the restarts"
            assert not run.done()
        finally:
            daemon.stop()
            await asyncio.wait_for(run, 30)

    try:
        asyncio.run(scenario())
    finally:
        REGISTRY.pop("flaky", None)
        for p in pub:
            stop(p)

    events = _events(data)
    states = _health(events, HealthKind.STATE)
    crashes = [e for e in states if e.state is StreamState.STOPPED]
    assert [e.reason for e in crashes] == [
        "error (EventsError: cannot write the event store: disk full); watching again in 1 s",
        "internal error (ValueError: injected bug); watching again in 2 s",
    ], [e.describe() for e in states]
    assert states[-1].state is StreamState.ENDED
    analysis = _health(events, HealthKind.ANALYSIS)
    assert [e.active for e in analysis] == [True, False], [e.describe() for e in analysis]
    assert "RuntimeError: CUDA error: out of memory" in analysis[0].reason and "flaky" in analysis[0].reason
    gaps = _health(events, HealthKind.MONITORING_GAP)
    assert len(gaps) == 2 and all(0.5 <= (g.duration_s or 0) <= 6.0 for g in gaps), [g.describe() for g in gaps]
    assert gaps[1].offset >= gaps[0].offset + (gaps[0].duration_s or 0) - 0.1, "crashes in a row: gaps that do not overlap"
    assert daemon.metrics.stream_restarts.labels("restarted")._value.get() == 2
    assert daemon.metrics.frames_failed._value.get() >= 5
    report = build_report("show", events, until=time.time())
    kinds = [p.kind for p in report.periods]
    assert kinds.count("monitoring_gap") == 2 and kinds.count("analysis_failing") == 1, report.periods
    failing = next(p for p in report.periods if p.kind == "analysis_failing")
    assert "CUDA error" in failing.detail and (failing.duration or 0) > 0
    offsets = [e.offset for e in states]
    assert offsets == sorted(offsets), "the restarted stream continues the session's offsets"


def test_a_file_that_fails_on_a_bug_is_stopped_and_not_read_again(short_clip: Clip, tmp_path: Path) -> None:
    from streamwatch.app import Daemon

    switch = Switch()
    switch.crashes_left = 1
    data = tmp_path / "d"
    daemon = Daemon(_settings(data, str(short_clip.path), ["qr"]), serve=False, on_analyzed=switch.on_analyzed)
    asyncio.run(asyncio.wait_for(daemon.run(), 60))  # the daemon ends: nothing left to watch
    states = _health(_events(data), HealthKind.STATE)
    assert [e.state for e in states] == [StreamState.CONNECTING, StreamState.LIVE, StreamState.STOPPED], [e.describe() for e in states]
    assert states[-1].reason == "internal error (ValueError: injected bug); the file is not read again"
    assert daemon.metrics.stream_restarts.labels("stopped")._value.get() == 1


def test_an_hls_recording_that_fails_on_a_bug_is_not_read_again(web: tuple[Path, str], short_clip: Clip, tmp_path: Path) -> None:  # noqa: F811
    from streamwatch.app import Daemon

    root, base = web
    segs = segments(short_clip.path, root, "rec", seconds=6.0)
    (root / "rec.m3u8").write_text(playlist(segs, ended=True))  # ENDLIST: a recording, though served over HTTP
    switch = Switch()
    switch.crashes_left = 1
    data = tmp_path / "d"
    daemon = Daemon(_settings(data, f"{base}/rec.m3u8", ["qr"]), serve=False, on_analyzed=switch.on_analyzed)
    asyncio.run(asyncio.wait_for(daemon.run(), 60))  # ends: nothing left to watch (before: re-read every few seconds, forever)
    states = _health(_events(data), HealthKind.STATE)
    assert [e.state for e in states] == [StreamState.CONNECTING, StreamState.LIVE, StreamState.STOPPED], [e.describe() for e in states]
    assert states[-1].reason.endswith("the file is not read again")


# --- the cluster: a stream that keeps failing on one worker goes to another ----------------------


@pytest.mark.media_server
def test_a_stream_failing_on_one_worker_is_handed_to_another(nats3: Any, nginx: Nginx, short_clip: Clip, tmp_path: Path) -> None:
    from streamwatch.cluster.connect import Names, connect
    from streamwatch.cluster.desired import DesiredStreams
    from streamwatch.cluster.events import jetstream
    from streamwatch.cluster.kv import kv_bucket
    from streamwatch.cluster.worker import GIVE_UP_AFTER, ClusterWorker
    from streamwatch.config import StreamConfig

    name = f"faults{int(time.time()) % 100000}"
    url = nginx.rtmp("faults-cluster")
    pub = publish(short_clip.path, url, loop=True)

    def worker(wid: str) -> ClusterWorker:
        cluster = {"name": name, "nats": nats3.urls, "worker_id": wid, "lease_ttl_s": 3, "renew_s": 0.5, "rebalance": False}
        cluster["connect_timeout_s"] = 20
        s = load_settings(None, {"data_dir": tmp_path / wid, "analysis": {"analyzers": ["qr"], "threads": 1}, "cluster": cluster})
        return ClusterWorker(s)

    async def scenario() -> None:
        a, b = worker("a"), worker("b")
        switch = Switch()
        run_a = asyncio.create_task(a.run())
        try:
            await asyncio.wait_for(a.ready.wait(), 30)
            a.svc.on_analyzed = switch.on_analyzed
            switch.crashes_left = 100  # every run on worker a fails (its GPU, its model files…)
            nc = await connect(a.cfg, name="test-faults")
            desired = DesiredStreams(await kv_bucket(jetstream(nc), Names.from_config(a.cfg).desired, ttl_s=None, replicas=3))
            await desired.add(StreamConfig(id="show", source=url))
            assert await _wait(lambda: "show" in a.leases, 30), "worker a claims the show (the only worker)"
            run_b = asyncio.create_task(b.run())  # b joins after a claimed the show
            try:
                ran = await _wait(lambda: "show" in getattr(b, "streams", ()), 60)
                assert ran, f"worker b never ran the show; a holds {list(a.leases)}"
                assert a.metrics.stream_restarts.labels("restarted")._value.get() == GIVE_UP_AFTER - 1
                assert a.metrics.stream_restarts.labels("handed_over")._value.get() == 1
                assert "show" not in a.leases and "show" not in a.streams
                start = switch.analysed
                assert await _wait(lambda: b.svc.cascade.frames >= 3, 30), "worker b analyses the show"
                assert switch.analysed == start  # a does not take it back
            finally:
                b.stop()
                await asyncio.wait_for(run_b, 30)
            await nc.close()
        finally:
            a.stop()
            await asyncio.wait_for(run_a, 30)  # (a worker with nothing left to hand over once spun here: 3.11 wait_for)

    try:
        asyncio.run(scenario())
    finally:
        stop(pub)


# --- messy files through the daemon: odd frames are skipped or taken, never the stream's end ---------


def _file_states(data: Path, source: Path, every_s: float = 0.5) -> tuple[list[HealthEvent], list[Event], Any]:
    from streamwatch.app import Daemon

    settings = _settings(data, str(source), ["qr"])
    settings = settings.model_copy(update={"sampling": settings.sampling.model_copy(update={"every_s": every_s})})
    daemon = Daemon(settings, serve=False)
    asyncio.run(asyncio.wait_for(daemon.run(), 90))
    events = _events(data)
    return _health(events, HealthKind.STATE), events, daemon.metrics


def _encode(path: Path, frames: list[np.ndarray], rate: Any, pix_fmt: str = "yuv420p", **options: str) -> Path:
    import av

    with av.open(str(path), "w", options=options) as c:
        s = c.add_stream("libx264", rate=rate)
        s.height, s.width = frames[0].shape[:2]
        s.pix_fmt = pix_fmt
        for img in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


@pytest.mark.parametrize("shape", [(1, 640), (1, 1921), (640, 1)], ids=["640x1", "1921x1", "1x640"])
def test_one_pixel_strips_are_sampled_and_the_file_ends_normally(tmp_path: Path, shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(3)
    frames = [np.repeat(rng.integers(0, 255, (1, *shape, 3), np.uint8), 1, axis=0)[0] for _ in range(50)]
    clip = _encode(tmp_path / "strip.mp4", frames, 25, "yuv444p")
    states, _, metrics = _file_states(tmp_path / "d", clip)
    assert [e.state for e in states] == [StreamState.CONNECTING, StreamState.LIVE, StreamState.STOPPED], [e.describe() for e in states]
    assert states[-1].reason == "end of file" and states[-1].offset >= 1.9
    assert metrics.stream_restarts.labels("stopped")._value.get() == 0


def test_a_slow_slideshow_keeps_its_timeline_and_alerts_where_the_qr_code_is(tmp_path: Path) -> None:
    from fractions import Fraction

    import cv2
    from skimage import data

    clip = tmp_path / "qr.mp4"
    from test_cluster import qr_clip  # a real QR code overlaid on a photo

    qr_clip(tmp_path, 1).rename(clip)
    import av

    with av.open(str(clip)) as c:
        qr_frame = next(c.decode(video=0)).to_ndarray(format="rgb24")
    photos = [cv2.resize(p, (640, 360)) for p in (data.coffee(), data.chelsea(), data.astronaut())]
    slides = [photos[0], photos[1], qr_frame, photos[2], photos[0]]  # 10 s each: the QR code from 20 s to 30 s
    show = _encode(tmp_path / "slides.mp4", slides, Fraction(1, 10))
    states, events, _ = _file_states(tmp_path / "d", show, every_s=1.0)
    assert states[-1].reason == "end of file" and states[-1].offset >= 39.0, [e.describe() for e in states]
    alerts = [e for e in events if type(e).__name__ == "AlertEvent" and getattr(e, "rule", "") == "qr_code"]
    assert alerts and 19.0 <= alerts[0].offset <= 31.0, [(a.rule, a.offset) for a in alerts]


def test_a_damaged_recording_says_so_in_its_end_event(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    base = rng.integers(0, 255, (180, 320, 3), np.uint8)
    frames = [np.roll(base, i * 3, axis=1) for i in range(25 * 12)]
    clip = _encode(tmp_path / "ok.mp4", frames, 25, movflags="+faststart")  # the index first, as web videos are
    raw = clip.read_bytes()
    cut = len(raw) // 3
    damaged = tmp_path / "damaged.mp4"
    damaged.write_bytes(raw[:cut] + raw[cut + 50_000 :])
    states, events, _ = _file_states(tmp_path / "d", damaged)
    end = states[-1]
    assert end.state is StreamState.STOPPED, [e.describe() for e in states]
    assert "undecodable packets skipped" in end.reason or "unreadable data" in end.reason, end.reason
    report = build_report("show", events, until=time.time())
    assert report.ended is not None and report.ended.reason == end.reason
