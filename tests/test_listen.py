"""Listen mode through the managed nginx-rtmp relay: consecutive publishers are all received to the
end, each starts within about a second, an unpublish is `ended` (not an outage), and a hung publisher
(SIGSTOP: the TCP connection stays open, nothing is sent) gives way to a new one.

The field figure (20 consecutive 60 s publishes) is tools/bench/listen.py; here 5 × 8 s."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import free_port, require_media_tools, stop

from streamwatch.config import IngestConfig
from streamwatch.events.model import HealthEvent, StreamState
from streamwatch.ingest import Frame, FrameReader, parse_source

pytestmark = pytest.mark.media_server

CFG = IngestConfig(open_timeout_s=5, read_timeout_s=2, listen_relay="nginx")
SECONDS, FPS = 8, 25


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import make_sample_stream

    path = tmp_path_factory.mktemp("listen") / "pub.flv"
    make_sample_stream.write_clip(path, width=320, height=180, fps=FPS, gop_s=2.0, seconds=SECONDS)
    return path


class Run:
    def __init__(self, url: str) -> None:
        self.reader = FrameReader(parse_source(url, listen=True), "listen", CFG)
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

    def frames_since(self, t: float) -> list[tuple[float, Frame]]:
        return [(at, i) for at, i in self.items if isinstance(i, Frame) and at >= t]

    def states(self) -> list[HealthEvent]:
        return [i for _, i in self.items if isinstance(i, HealthEvent) and i.state is not None]

    def wait(self, pred, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.error is None, f"reader failed: {self.error!r}"
            if pred():
                return
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}: {[s.describe() for s in self.states()]}")


@pytest.fixture
def run() -> Iterator:  # type: ignore[type-arg]
    made: list[Run] = []

    def make(url: str) -> Run:
        r = Run(url)
        made.append(r)
        return r

    yield make
    for r in made:
        r.reader.stop()
        r.thread.join(15)


def ffmpeg_publish(clip: Path, url: str) -> subprocess.Popen[bytes]:
    require_media_tools()
    return subprocess.Popen(["ffmpeg", "-nostdin", "-loglevel", "error", "-re", "-i", str(clip), "-c", "copy", "-f", "flv", url])


def count_frames(clip: Path) -> int:
    import av

    with av.open(str(clip)) as c:
        return sum(1 for _ in c.decode(video=0))


def test_consecutive_publishers_are_received_to_the_end_and_start_fast(clip: Path, run) -> None:  # type: ignore[no-untyped-def]
    url = f"rtmp://127.0.0.1:{free_port()}/live/showkey"
    r = run(url)
    time.sleep(1.0)  # nginx is up, the reader waits as a player
    total = count_frames(clip)
    firsts: list[float] = []
    for k in range(5):
        ended_before = sum(s.state is StreamState.ENDED for s in r.states())
        started = time.monotonic()
        pub = ffmpeg_publish(clip, url)
        try:
            assert pub.wait(SECONDS + 20) == 0, "the publisher was dropped"
        finally:
            stop(pub)
        r.wait(lambda n=ended_before: sum(s.state is StreamState.ENDED for s in r.states()) > n, 15, f"publish {k} to end")
        got = r.frames_since(started)
        assert len(got) == total, f"publish {k}: {len(got)} of {total} frames"
        firsts.append(got[0][0] - started)
    assert max(firsts) <= 2.0, f"first frame after the publisher started: {firsts}"  # ~0.7 s here; bar 1 s (bench)
    states = [s.state for s in r.states()]
    assert states == [StreamState.LIVE, StreamState.ENDED] * 5  # an unpublish is not an outage
    offs = [i.offset for _, i in r.items if isinstance(i, Frame)]
    assert all(b > a for a, b in itertools.pairwise(offs))


def test_a_hung_publisher_gives_way_to_a_new_one(clip: Path, run) -> None:  # type: ignore[no-untyped-def]
    url = f"rtmp://127.0.0.1:{free_port()}/live/k2"
    r = run(url)
    time.sleep(1.0)
    hung = ffmpeg_publish(clip, url)
    try:
        r.wait(lambda: len(r.frames_since(0)) >= 50, 15, "frames from the first publisher")
        os.kill(hung.pid, signal.SIGSTOP)  # the connection stays open and silent (a cut network, a frozen app)
        stopped = time.monotonic()
        r.wait(lambda: r.states()[-1].state is not StreamState.LIVE, CFG.read_timeout_s + 10, "the hung publisher noticed")
        fresh = ffmpeg_publish(clip, url)
        try:
            r.wait(lambda: len(r.frames_since(stopped)) >= 50, 20, "frames from the new publisher")
            assert r.frames_since(stopped)[0][0] - stopped <= CFG.read_timeout_s * 2 + 3
        finally:
            stop(fresh)
    finally:
        os.kill(hung.pid, signal.SIGCONT)
        stop(hung)


def test_a_killed_daemon_leaves_no_relay_holding_the_port(tmp_path: Path) -> None:
    import socket
    import sys

    from conftest import wait_port

    port = free_port()
    cmd = [sys.executable, "-m", "streamwatch", "sample", f"rtmp://127.0.0.1:{port}/live/k", "--listen", "--out", str(tmp_path / "o")]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, 30)  # nginx listens for the publisher
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        deadline = time.monotonic() + 10
        while True:
            with socket.socket() as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    s.bind(("127.0.0.1", port))
                    break  # the relay went with the process
                except OSError:
                    assert time.monotonic() < deadline, "nginx outlived the killed daemon and still holds the port"
                    time.sleep(0.2)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_pyav_publisher_is_received_to_the_end(run) -> None:  # type: ignore[no-untyped-def]
    import av
    import numpy as np

    url = f"rtmp://127.0.0.1:{free_port()}/live/pyav"
    r = run(url)
    time.sleep(1.0)
    n = 5 * FPS
    t0 = time.monotonic()
    with av.open(url, "w", format="flv") as c:  # an app pushing with libavformat, paced like a camera
        s = c.add_stream("libx264", rate=FPS)
        s.width, s.height, s.pix_fmt = 320, 180, "yuv420p"
        s.options = {"g": str(FPS), "preset": "veryfast"}
        for i in range(n):
            img = np.full((180, 320, 3), (i * 2) % 255, np.uint8)
            img[:, (i * 3) % 300 : (i * 3) % 300 + 20] = 255
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
            time.sleep(max(0.0, t0 + (i + 1) / FPS - time.monotonic()))
        for p in s.encode():
            c.mux(p)
    r.wait(lambda: any(s.state is StreamState.ENDED for s in r.states()), 15, "the unpublish")
    assert len(r.frames_since(t0)) == n
