"""Offsets that mean the show's time: offset 0 is the first frame of the stream's session; the session
survives a daemon restart (kill -9), the unwatched window is a monitoring gap; stopping on purpose
ends the stream as `ended`; open outages in a report run up to the report's end."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np
import pytest
from conftest import Nginx, publish, stop

from streamwatch.analysis.policy import load_policy
from streamwatch.analysis.rules import RuleEngine
from streamwatch.events.model import AlertEvent, HealthEvent, HealthKind, StreamState
from streamwatch.events.store import EventStore
from streamwatch.report.build import build_report

MODELS = Path(__file__).resolve().parent.parent / "models"
FPS = 25


@pytest.fixture(scope="module")
def black_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 s, 320x180: moving noise 0-3 s, black 3-9 s, noise 9-12 s (GOP 1 s), as FLV for publishing."""
    path = tmp_path_factory.mktemp("session") / "black.flv"
    rng = np.random.default_rng(7)
    with av.open(str(path), "w", format="flv") as c:
        s = c.add_stream("libx264", rate=FPS)
        s.width, s.height, s.pix_fmt = 320, 180, "yuv420p"
        s.thread_type = "FRAME"
        s.options = {"g": str(FPS), "keyint_min": str(FPS), "sc_threshold": "0", "bf": "0", "preset": "veryfast"}
        for i in range(12 * FPS):
            t = i / FPS
            img = np.zeros((180, 320, 3), np.uint8) if 3 <= t < 9 else rng.integers(0, 255, (180, 320, 3), np.uint8)
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def daemon_settings(data: Path, source: str) -> dict[str, object]:
    return {
        "data_dir": data,
        "streams": [{"id": "show", "source": source}],
        "analysis": {"analyzers": ["qr"]},
        "ingest": {"open_timeout_s": 10, "read_timeout_s": 3, "backoff_initial_s": 0.3, "backoff_max_s": 1.0},
        "sampling": {"every_s": 0.5},
    }


@pytest.mark.media_server
def test_offset_zero_is_the_first_frame_and_a_stop_on_purpose_is_ended(nginx: Nginx, black_clip: Path, tmp_path: Path) -> None:
    from streamwatch.app import Daemon
    from streamwatch.config import load_settings

    url = nginx.rtmp("session1")
    settings = load_settings(None, daemon_settings(tmp_path / "d", url))
    daemon = Daemon(settings, serve=False)
    pub: list[subprocess.Popen[bytes]] = []

    async def scenario() -> None:
        run = asyncio.create_task(daemon.run())
        await asyncio.sleep(5)  # the daemon waits for the publisher: not part of the show
        pub.append(publish(black_clip, url))
        await asyncio.to_thread(pub[0].wait, 30)
        await asyncio.sleep(1)
        daemon.stop()  # SIGTERM's handler
        await asyncio.wait_for(run, 30)

    try:
        asyncio.run(scenario())
    finally:
        for p in pub:
            stop(p)
    store = EventStore(tmp_path / "d")
    events = store.events("show")
    health = [e for e in events if isinstance(e, HealthEvent)]
    black = [e for e in health if e.kind is HealthKind.BLACK and e.active]
    assert black and abs(black[0].offset - 3.0) <= 1.0, [(e.describe(), e.offset) for e in health]
    alerts = [e for e in events if isinstance(e, AlertEvent) and e.rule == "stream_black"]
    assert len(alerts) == 1 and abs(alerts[0].offset - 3.0) <= 1.0
    assert alerts[0].message == f"自 00:00:0{int(alerts[0].offset)} 起黑屏（已至少 3 秒）"  # the desk's language: zh by default
    states = [e.state for e in health if e.state is not None]
    assert states[-1] is StreamState.ENDED
    report = build_report("show", events, until=time.time())
    blacks = [p for p in report.periods if p.kind == "black"]
    assert blacks and 5.0 <= (blacks[0].duration or 0) <= 7.0  # the real length, not the threshold
    assert report.ended is not None and report.ended.state is StreamState.ENDED
    session = store.session("show")
    assert session is not None and session.ended_at is not None


@pytest.mark.media_server
def test_a_session_survives_kill_9_and_the_unwatched_window_is_a_monitoring_gap(nginx: Nginx, black_clip: Path, tmp_path: Path) -> None:
    url = nginx.rtmp("session2")
    data = tmp_path / "d"
    cfg = tmp_path / "sw.toml"
    cfg.write_text(
        f'data_dir = "{data}"\n[[streams]]\nid = "show"\nsource = "{url}"\n[analysis]\nanalyzers = ["qr"]\n'
        "[ingest]\nopen_timeout_s = 10\nread_timeout_s = 3\nbackoff_initial_s = 0.3\nbackoff_max_s = 1.0\n"
    )
    cmd = [sys.executable, "-m", "streamwatch", "run", "-c", str(cfg), "--port", "0"]
    env = {**os.environ, "STREAMWATCH_LOG_LEVEL": "INFO"}
    pub = publish(black_clip, url, loop=True)
    logs = [tmp_path / "run1.log", tmp_path / "run2.log"]

    def start(log: Path) -> subprocess.Popen[bytes]:
        with log.open("w") as f:
            return subprocess.Popen(cmd, stderr=f, env=env)

    def offsets() -> list[float]:
        s = EventStore(data)
        try:
            return [e.offset for e in s.events("show") if isinstance(e, HealthEvent | AlertEvent)]
        finally:
            s.close()

    def wait(pred, timeout: float, what: str, proc: subprocess.Popen[bytes], log: Path) -> None:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"daemon exited: {log.read_text()[-2000:]}"
            if pred():
                return
            time.sleep(0.5)
        raise AssertionError(f"timed out waiting for {what}: {log.read_text()[-2000:]}")

    first = start(logs[0])
    try:
        # a heartbeat with a few seconds of show behind it
        def beat() -> bool:
            s = EventStore(data)
            try:
                sess = s.session("show")
            finally:
                s.close()
            return sess is not None and sess.heartbeat_offset >= 8

        wait(beat, 60, "a heartbeat 8 s into the show", first, logs[0])
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        killed_at = time.time()
        before = max(offsets())
        s0 = EventStore(data)
        try:
            last_beat = s0.session("show")
        finally:
            s0.close()
        assert last_beat is not None
        beat_offset = last_beat.heartbeat_offset  # the last second known watched: the gap starts here
        time.sleep(8)  # nobody watching
        second = start(logs[1])
        try:
            wait(lambda: any(o > before + 8 for o in offsets()), 60, "offsets after the restart", second, logs[1])
            time.sleep(2)
            second.send_signal(signal.SIGTERM)
            assert second.wait(30) == 0
        finally:
            if second.poll() is None:
                second.kill()
    finally:
        if first.poll() is None:
            first.kill()
        stop(pub)
    store = EventStore(data)
    events = store.events("show")
    gaps = [e for e in events if isinstance(e, HealthEvent) and e.kind is HealthKind.MONITORING_GAP]
    assert len(gaps) == 1
    gap = gaps[0]
    assert 8 <= (gap.duration_s or 0) <= 8 + 4 + 30  # kill → restart, bounded by the 3 s heartbeat and start-up
    assert gap.offset >= 8 and gap.offset <= max(before, beat_offset) + 0.1 and gap.at - (gap.duration_s or 0) <= killed_at
    alerts = [e for e in events if isinstance(e, AlertEvent) and e.rule == "monitoring_gap"]
    assert len(alerts) == 1 and abs(alerts[0].offset - gap.offset) < 0.01 and f"起 {gap.duration_s:.1f} 秒无人监看" in alerts[0].message
    after = [e.offset for e in events if e.id > gap.id and isinstance(e, HealthEvent)]
    assert after and min(after) >= gap.offset  # one timeline: offsets continue, they do not restart at 0
    lives = [e for e in events if isinstance(e, HealthEvent) and e.state is StreamState.LIVE and e.id > gap.id]
    assert lives and lives[0].offset >= gap.offset + (gap.duration_s or 0) - 1.0  # the gap advanced the show's clock
    report = build_report("show", events, until=time.time())
    assert [p.kind for p in report.gaps] == ["monitoring_gap"] and report.gaps[0].duration == gap.duration_s
    assert report.ended is not None and report.ended.state is StreamState.ENDED
    r = subprocess.run(
        [sys.executable, "-m", "streamwatch", "report", "show", "--data", str(data), "--format", "json", "-o", str(tmp_path / "r.json")],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    summary = json.loads((tmp_path / "r.json").read_text())
    assert summary["summary"]["monitoring_gaps"] == 1 and summary["summary"]["end"] == "ended"
    html = subprocess.run(
        [sys.executable, "-m", "streamwatch", "report", "show", "--data", str(data), "-o", str(tmp_path / "r.html")],
        capture_output=True,
        text=True,
    )
    assert html.returncode == 0 and "monitoring_gap" in (tmp_path / "r.html").read_text()


def test_open_outage_runs_to_the_report_end_and_ended_closes_it() -> None:
    t0 = 1_800_000_000.0

    def state(at: float, offset: float, st: StreamState, **kw: object) -> HealthEvent:
        return HealthEvent(stream="s", at=t0 + at, offset=offset, kind=HealthKind.STATE, state=st, **kw)  # type: ignore[arg-type]

    events = [state(0, 0, StreamState.LIVE), state(20, 20, StreamState.STALLED, reason="no data for 3s")]
    r = build_report("s", list(events), until=t0 + 50)
    (out,) = r.outages
    assert out.open and out.duration == 30 and out.length == "open, 30.0s so far" and r.outage_s == 30
    assert r.duration_s == 50 and r.ended is None
    ended = build_report("s", [*events, state(25, 25, StreamState.ENDED, reason="stopped by the operator")], until=t0 + 50)
    (out,) = ended.outages
    assert not out.open and out.duration == 5 and ended.ended is not None
    gap = HealthEvent(stream="s", at=t0 + 60, offset=22, kind=HealthKind.MONITORING_GAP, duration_s=30.0, reason="down")
    with_gap = build_report("s", [*events, gap], until=t0 + 70)
    assert [(p.kind, p.start, p.duration) for p in with_gap.gaps] == [("monitoring_gap", 22, 30.0)]


def test_monitoring_gap_rule_alerts_once_when_long_enough() -> None:
    eng = RuleEngine(load_policy(MODELS / "policy.toml"))
    now = time.time()
    eng.on_health(HealthEvent(stream="s", at=now, offset=12, kind=HealthKind.MONITORING_GAP, duration_s=42.0))
    hits = eng.tick("s", now + 0.5, offset=None)
    assert [(off, a.rule) for off, a in hits] == [(12, "monitoring_gap")]
    assert "00:00:12" in hits[0][1].message and "42" in hits[0][1].message
    assert eng.tick("s", now + 2) == []  # once
    eng.on_health(HealthEvent(stream="s", at=now, offset=50, kind=HealthKind.MONITORING_GAP, duration_s=1.0))
    assert eng.tick("s", now + 0.1) == []  # a restart within the threshold is not worth an alert


def test_a_resumed_session_never_steps_back_behind_the_last_watched_offset() -> None:
    """Offsets after a takeover continue from the wall clock, or from the last offset watched plus the gap
    when the old owner's timestamps ran ahead of the wall clock (HLS segments arrive in bursts)."""
    from streamwatch.config import IngestConfig
    from streamwatch.ingest.reader import FrameReader
    from streamwatch.ingest.url import parse_source

    reader = FrameReader(parse_source("rtmp://127.0.0.1:1935/live/x"), "s", IngestConfig())
    started = time.time() - 100.0
    reader.resume_session(started)
    assert 99.5 <= reader.offset_now() <= 101.0
    reader.resume_session(started, at_least=130.0)
    assert 129.9 <= reader.offset_now() <= 131.0
