"""Live sources against real local servers: nginx-rtmp (RTMP + HLS), http.server HLS, PyAV listener."""

from __future__ import annotations

import asyncio
import functools
import http.server
import itertools
import logging
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Clip, Nginx, free_port, publish, require_media_tools, stop

from streamwatch.config import IngestConfig
from streamwatch.errors import SourceOpenError
from streamwatch.events.model import HealthEvent, StreamState
from streamwatch.ingest import Frame, FrameReader, parse_source
from streamwatch.ingest.aio import aiter_reader

pytestmark = pytest.mark.media_server

FAST = IngestConfig(open_timeout_s=3, read_timeout_s=2, backoff_initial_s=0.2, backoff_max_s=1.0)
HLS_CFG = IngestConfig(open_timeout_s=3, read_timeout_s=3, backoff_initial_s=0.3, backoff_max_s=1.0)


class Collector:
    """Runs a FrameReader in a thread and records what it yields, with arrival times."""

    def __init__(self, reader: FrameReader) -> None:
        self.reader = reader
        self.items: list[tuple[float, Frame | HealthEvent]] = []
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for item in self.reader:
                self.items.append((time.monotonic(), item))
        except BaseException as e:
            self.error = e

    @property
    def frames(self) -> list[Frame]:
        return [i for _, i in self.items if isinstance(i, Frame)]

    @property
    def states(self) -> list[HealthEvent]:
        return [i for _, i in self.items if isinstance(i, HealthEvent) and i.state is not None]

    def wait_for(self, pred, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if pred():
                return
            if self.error is not None:
                raise AssertionError(f"reader failed while waiting for {what}: {self.error!r}")
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}; states: {[s.describe() for s in self.states]}")

    def close(self) -> None:
        self.reader.stop()
        self.thread.join(10)


@pytest.fixture
def collect() -> Iterator:  # type: ignore[type-arg]
    made: list[Collector] = []

    def make(url: str, cfg: IngestConfig = FAST, listen: bool = False, every_s: float | None = None) -> Collector:
        c = Collector(FrameReader(parse_source(url, listen=listen), "live", cfg, every_s=every_s))
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


def assert_continuous(frames: list[Frame]) -> None:
    offs = [f.offset for f in frames]
    assert all(b > a for a, b in itertools.pairwise(offs)), "offsets must increase"
    seqs = [f.seq for f in frames]
    assert all(b > a for a, b in itertools.pairwise(seqs))


def test_rtmp_pull_reconnects_after_publisher_stop_and_restart(nginx: Nginx, short_clip: Clip, collect) -> None:  # type: ignore[no-untyped-def]
    url = nginx.rtmp("reconnect")
    pub = publish(short_clip.path, url, loop=True)
    try:
        c = collect(url)
        c.wait_for(lambda: len(c.frames) >= 50, 20, "frames from the first publisher")
        stop(pub)
        stopped_at = time.monotonic()
        n_before = len(c.frames)
        c.wait_for(lambda: any(s.state is StreamState.RECONNECTING for s in c.states), 15, "reconnecting")
        time.sleep(1.0)
        pub = publish(short_clip.path, url, loop=True)
        c.wait_for(lambda: len(c.frames) >= n_before + 50, 30, "frames after the restart")
    finally:
        stop(pub)
    states = [s.state for s in c.states]
    assert states[0] is StreamState.LIVE
    assert StreamState.STALLED in states and StreamState.RECONNECTING in states
    back = [s for s in c.states[1:] if s.state is StreamState.LIVE]
    assert back and back[0].gap_s is not None and back[0].gap_s >= 1.0
    frames = c.frames
    assert_continuous(frames)
    # (frames the decoder still held when the publisher stopped are drained after the read timeout)
    split = max(range(n_before - 1, len(frames) - 1), key=lambda i: frames[i + 1].offset - frames[i].offset)
    before, after = frames[split], frames[split + 1]
    # the gap in offsets matches the outage (wall clock), not the publisher's PTS (which restarted at 0)
    assert after.offset - before.offset >= 1.5
    assert after.offset - before.offset <= time.monotonic() - stopped_at + 1.0
    assert c.reader.stats.reconnects >= 1


def test_hls_from_nginx(nginx: Nginx, short_clip: Clip, collect) -> None:  # type: ignore[no-untyped-def]
    pub = publish(short_clip.path, nginx.rtmp("hlsnginx"), loop=True)
    try:
        c = collect(nginx.hls("hlsnginx"), HLS_CFG, every_s=0.5)
        c.wait_for(lambda: len(c.frames) >= 6, 40, "HLS frames")
    finally:
        stop(pub)
    assert_continuous(c.frames)
    assert c.frames[0].width == 320


@pytest.fixture
def hls_dir_server(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.RequestHandlerClass.log_message = lambda *a, **k: None  # type: ignore[method-assign]
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield tmp_path, int(httpd.server_address[1])
    httpd.shutdown()


def test_hls_live_playlist_that_gets_its_endlist_is_finished(hls_dir_server: tuple[Path, int], short_clip: Clip, collect) -> None:  # type: ignore[no-untyped-def]
    require_media_tools()
    d, port = hls_dir_server
    seg = subprocess.Popen(
        [
            "ffmpeg",
            "-nostdin",
            "-loglevel",
            "error",
            "-re",
            "-i",
            str(short_clip.path),
            "-c",
            "copy",
            "-f",
            "hls",
            "-hls_time",
            "1",
            "-hls_list_size",
            "5",
            "-hls_flags",
            "delete_segments",
            str(d / "live.m3u8"),
        ]
    )
    try:
        c = collect(
            f"http://127.0.0.1:{port}/live.m3u8",
            HLS_CFG,
            every_s=0.5,
        )
        c.wait_for(lambda: len(c.frames) >= 6, 30, "HLS frames")
        seg.wait(30)  # the publisher finishes its 12 s clip and appends #EXT-X-ENDLIST
        c.wait_for(lambda: any(s.state is StreamState.STOPPED for s in c.states), 30, "the end of the playlist")
    finally:
        stop(seg)
    assert_continuous(c.frames)
    assert c.frames[-1].offset >= 6
    assert "EXT-X-ENDLIST" in c.states[-1].reason  # finished, not an outage
    assert StreamState.STALLED not in [s.state for s in c.states]


def test_ffmpeg_listener_accepts_publishers_one_after_another(short_clip: Clip, collect) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    url = f"rtmp://127.0.0.1:{port}/live/secretkey"
    c = collect(url, IngestConfig(open_timeout_s=2, read_timeout_s=3, listen_relay="ffmpeg"), listen=True)  # FFmpeg's own listener
    time.sleep(0.5)
    pub = publish(short_clip.path, url)
    try:
        c.wait_for(lambda: len(c.frames) >= 40, 20, "frames from publisher 1")
        stop(pub)
        n = len(c.frames)
        c.wait_for(lambda: c.states[-1].state is StreamState.RECONNECTING, 10, "re-armed listener")
        pub = publish(short_clip.path, url)
        c.wait_for(lambda: len(c.frames) >= n + 40, 20, "frames from publisher 2")
    finally:
        stop(pub)
    lives = [s for s in c.states if s.state is StreamState.LIVE]
    assert len(lives) == 2 and lives[1].gap_s is not None
    assert_continuous(c.frames)


def test_unreachable_source_retries_with_backoff_then_clear_error(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    url = f"rtmp://admin:hunter2@127.0.0.1:{free_port()}/live/streamkey123?key=s3cret"
    cfg = IngestConfig(open_timeout_s=1, read_timeout_s=1, backoff_initial_s=0.05, backoff_max_s=0.2, max_retries=3)
    reader = FrameReader(parse_source(url), "x", cfg)
    seen: list[HealthEvent] = []
    t0 = time.monotonic()
    with pytest.raises(SourceOpenError) as e:
        for item in reader:
            assert isinstance(item, HealthEvent)
            seen.append(item)
    # nothing was ever received: waiting for the show to start (connecting), not an outage
    assert [s.state for s in seen] == [StreamState.CONNECTING] * 3 + [StreamState.STOPPED]
    assert [s.attempt for s in seen[:3]] == [1, 2, 3]
    assert time.monotonic() - t0 < 10
    assert "gave up after 4 attempts" in str(e.value)
    no_retry = FrameReader(parse_source(url), "x", cfg.model_copy(update={"max_retries": 0}))
    with pytest.raises(SourceOpenError) as e0:
        list(no_retry)
    text = str(e.value) + str(e0.value) + caplog.text + "".join(s.reason for s in seen)
    for secret in ("hunter2", "s3cret", "streamkey123", "admin"):
        assert secret not in text
    assert "127.0.0.1" in str(e0.value)


def test_async_adapter_drops_oldest_frames_for_a_slow_consumer(nginx: Nginx, short_clip: Clip) -> None:
    url = nginx.rtmp("slow")
    pub = publish(short_clip.path, url, loop=True)

    async def consume() -> tuple[int, FrameReader]:
        reader = FrameReader(parse_source(url), "slow", FAST)  # every frame (25 fps)
        got = 0
        async with asyncio.timeout(30):
            async for item in aiter_reader(reader, maxsize=4):
                if isinstance(item, Frame):
                    got += 1
                    await asyncio.sleep(0.2)  # 5 frames/s: far behind 25 fps
                    if got >= 15:
                        break
        return got, reader

    try:
        got, reader = asyncio.run(consume())
    finally:
        stop(pub)
    assert got == 15
    assert reader.stats.dropped > 20  # counted, oldest first
    assert reader.stopped


RTSP_SERVER = Path(__file__).with_name("rtsp_server.py")


def start_rtsp(clip: Path, port: int) -> subprocess.Popen[str]:
    """GStreamer's RTSP server (system python3 + python3-gi) serving ``clip`` at /live; waits until it listens."""
    cmd = ["/usr/bin/python3", str(RTSP_SERVER), str(clip), str(port)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("ready"):
        proc.kill()
        pytest.fail(f"RTSP server did not start: {line}{proc.stdout.read()}")
    return proc


@pytest.fixture(scope="module")
def rtsp_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import make_sample_stream

    probe = subprocess.run(
        ["/usr/bin/python3", "-c", "import gi; gi.require_version('GstRtspServer', '1.0'); from gi.repository import GstRtspServer"],
        capture_output=True,
    )
    if probe.returncode != 0:
        pytest.skip("GStreamer RTSP server not installed (apt-get install gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-good python3-gi)")
    path = tmp_path_factory.mktemp("rtsp") / "clip.mp4"
    make_sample_stream.write_clip(path, width=320, height=180, fps=25, gop_s=1.0, seconds=30)
    return path


def test_rtsp_pull_reconnects_after_the_server_restarts(rtsp_clip: Path, collect) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    url = f"rtsp://127.0.0.1:{port}/live"
    server = start_rtsp(rtsp_clip, port)
    try:
        c = collect(url)
        c.wait_for(lambda: len(c.frames) >= 50, 20, "RTSP frames")
        server.kill()
        server.wait()
        n_before = len(c.frames)
        c.wait_for(lambda: any(s.state is StreamState.RECONNECTING for s in c.states), 15, "reconnecting")
        server = start_rtsp(rtsp_clip, port)
        c.wait_for(lambda: len(c.frames) >= n_before + 50, 30, "RTSP frames after the restart")
    finally:
        server.kill()
        server.wait()
    states = [s.state for s in c.states]
    assert states[0] is StreamState.LIVE and StreamState.RECONNECTING in states
    assert [s for s in c.states[1:] if s.state is StreamState.LIVE], "live again after the restart"
    assert_continuous(c.frames)
    assert c.frames[0].width == 320 and c.frames[0].height == 180
    assert c.reader.stats.reconnects >= 1


def test_sample_log_of_a_live_run_is_written_as_it_goes_and_survives_kill_9(nginx: Nginx, short_clip: Clip, tmp_path: Path) -> None:
    import json
    import os
    import signal
    import sys

    url = nginx.rtmp("livelog")
    pub = publish(short_clip.path, url, loop=True)
    out = tmp_path / "out"
    log = out / "samples.jsonl"
    cmd = [sys.executable, "-m", "streamwatch", "sample", url, "--every", "1", "--out", str(out), "--quiet", "--read-timeout", "3"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # records reach the file while the run goes on (a block-buffered log would hold ~30 of them)
        deadline = time.monotonic() + 25
        lines = 0
        while time.monotonic() < deadline and lines < 5:
            time.sleep(0.25)
            lines = log.read_text().count('"type": "sample"') if log.exists() else 0
        assert proc.poll() is None, "the run is still going"
        assert lines >= 5, f"only {lines} samples reached the file during the run"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        stop(pub)
    text = log.read_text()
    assert text.endswith("\n")
    recs = [json.loads(line) for line in text.splitlines()]  # every line is whole, valid JSON
    samples = [r for r in recs if r["type"] == "sample"]
    assert len(samples) >= 5
    assert all((out / r["file"]).is_file() for r in samples if "file" in r)
