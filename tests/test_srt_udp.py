"""SRT and UDP/RTP MPEG-TS as live sources (issue 24 §4), against Debian's ffmpeg publishing a generated clip.

Each shape: SRT with streamwatch as caller (the publisher listens), SRT with streamwatch as listener
(the publisher calls), UDP unicast, RTP, UDP multicast on loopback. Each goes live with increasing
offsets; the publisher stops → an outage (stalled/reconnecting); it comes back → `live` again with
the gap, offsets going on. `probe` answers for each; `run --source srt://…` is no longer refused,
and an SRT source without the relay (no FFmpeg CLI with SRT) is one line, exit 2.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import free_port, require_media_tools

from streamwatch.config import IngestConfig
from streamwatch.events.model import HealthEvent, StreamState
from streamwatch.ingest import Frame, FrameReader, parse_source

pytestmark = pytest.mark.media_server

ROOT = Path(__file__).resolve().parents[1]
CFG = IngestConfig(open_timeout_s=4, read_timeout_s=2, backoff_initial_s=0.3, backoff_max_s=1.0)


@dataclass(frozen=True)
class Shape:
    name: str
    source: str  # what streamwatch reads ({port})
    out: str  # where the publisher writes ({port})
    fmt: str = "mpegts"
    publisher_calls: bool = False  # the publisher connects to streamwatch: start it once streamwatch listens


SHAPES = [
    Shape("srt-caller", "srt://127.0.0.1:{port}?mode=caller&latency=200000", "srt://127.0.0.1:{port}?mode=listener"),
    Shape("srt-listener", "srt://127.0.0.1:{port}?mode=listener", "srt://127.0.0.1:{port}?mode=caller", publisher_calls=True),
    Shape("srt-listener-any-host", "srt://:{port}?mode=listener", "srt://127.0.0.1:{port}", publisher_calls=True),
    Shape("udp", "udp://127.0.0.1:{port}", "udp://127.0.0.1:{port}?pkt_size=1316"),
    Shape("udp-any-host", "udp://@:{port}", "udp://127.0.0.1:{port}?pkt_size=1316"),
    Shape("rtp", "rtp://127.0.0.1:{port}", "rtp://127.0.0.1:{port}", fmt="rtp_mpegts"),
    Shape(
        "udp-multicast",
        "udp://239.255.42.{last}:{port}?localaddr=127.0.0.1",
        "udp://239.255.42.{last}:{port}?pkt_size=1316&ttl=0&localaddr=127.0.0.1",
    ),
]


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import make_sample_stream

    path = tmp_path_factory.mktemp("srt") / "pub.flv"
    make_sample_stream.write_clip(path, width=320, height=180, fps=25, gop_s=1.0, seconds=6)
    return path


def urls(shape: Shape) -> tuple[str, str]:
    port = free_port() if not shape.fmt.startswith("rtp") else free_port() & ~1  # RTP: an even port (RTCP is the next)
    last = 1 + port % 250
    return shape.source.format(port=port, last=last), shape.out.format(port=port, last=last)


def publish(clip: Path, out: str, fmt: str) -> subprocess.Popen[bytes]:
    """ffmpeg sending ``clip`` in a loop, in real time. As an SRT listener it serves one caller and exits; an
    encoder in listener mode takes the next caller, so here it is started again (a shell loop) until stopped."""
    require_media_tools()
    cmd = ["ffmpeg", "-nostdin", "-loglevel", "error", "-re", "-stream_loop", "-1", "-i", str(clip), "-c", "copy", "-f", fmt, out]
    if "mode=listener" in out:
        cmd = ["sh", "-c", 'while :; do "$@"; sleep 0.1; done', "publisher", *cmd]
    return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop the publisher and its children (the shell loop's ffmpeg)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # a child left behind by the loop
    except ProcessLookupError:
        pass


def publish_when_heard(clip: Path, out: str, fmt: str, timeout: float = 15) -> subprocess.Popen[bytes]:
    """A calling publisher, started again until it connects (ffmpeg's SRT caller gives up on a refused call)."""
    deadline = time.monotonic() + timeout
    while True:
        proc = publish(clip, out, fmt)
        try:
            proc.wait(1.5)
        except subprocess.TimeoutExpired:
            return proc  # still sending: connected
        assert time.monotonic() < deadline, f"the publisher could not call {out}"


class Run:
    def __init__(self, source: str) -> None:
        self.reader = FrameReader(parse_source(source), "srtudp", CFG)
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

    def frames(self) -> list[Frame]:
        return [i for _, i in self.items if isinstance(i, Frame)]

    def states(self) -> list[HealthEvent]:
        return [i for _, i in self.items if isinstance(i, HealthEvent) and i.state is not None]

    def wait(self, pred: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.error is None, f"reader failed: {self.error!r}"
            if pred():
                return
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}: {[s.describe() for s in self.states()]}")

    def close(self) -> None:
        self.reader.stop()
        self.thread.join(15)
        assert not self.thread.is_alive(), "the reader did not stop"


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    made: list[subprocess.Popen[bytes]] = []
    yield made
    for p in made:
        stop(p)


def start_publisher(shape: Shape, clip: Path, out: str) -> subprocess.Popen[bytes]:
    return publish_when_heard(clip, out, shape.fmt) if shape.publisher_calls else publish(clip, out, shape.fmt)


@pytest.mark.parametrize("shape", SHAPES, ids=[s.name for s in SHAPES])
def test_live_then_outage_then_live_again_with_the_gap(shape: Shape, clip: Path, procs: list[subprocess.Popen[bytes]]) -> None:
    source, out = urls(shape)
    if not shape.publisher_calls:
        procs.append(publish(clip, out, shape.fmt))
    run = Run(source)
    try:
        if shape.publisher_calls:
            time.sleep(0.5)  # the relay's listener is up
            procs.append(start_publisher(shape, clip, out))
        run.wait(lambda: len(run.frames()) >= 3, 25, "three samples")
        states = [s.state for s in run.states()]
        assert StreamState.LIVE in states and StreamState.STALLED not in states, states
        first = [f.offset for f in run.frames()]
        assert first == sorted(first) and first[-1] > first[0], first

        t_stop = time.monotonic()
        stop(procs.pop())
        run.wait(lambda: any(s.state is StreamState.STALLED for s in run.states()), 15, "the outage")
        assert time.monotonic() - t_stop < CFG.read_timeout_s + 6
        time.sleep(2.0)
        n = len(run.frames())
        assert all(s.state is not StreamState.LIVE for s in run.states()[-2:])
        procs.append(start_publisher(shape, clip, out))
        run.wait(lambda: sum(s.state is StreamState.LIVE for s in run.states()) >= 2, 25, "live again")
        back = [s for s in run.states() if s.state is StreamState.LIVE][-1]
        assert back.gap_s is not None and back.gap_s >= 2.0, back
        run.wait(lambda: len(run.frames()) >= n + 3, 15, "samples after the return")
        offsets = [f.offset for f in run.frames()]
        assert offsets == sorted(offsets), offsets
        assert offsets[-1] - first[-1] >= 2.0  # the outage is in the offsets too
    finally:
        run.close()
    assert run.error is None, repr(run.error)
    assert run.states()[-1].state is StreamState.ENDED


def sw(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    full = dict(os.environ, PYTHONPATH=str(ROOT), **(env or {}))
    return subprocess.run([sys.executable, "-m", "streamwatch", *args], capture_output=True, text=True, timeout=timeout, cwd=cwd, env=full)


@pytest.mark.parametrize("shape", [s for s in SHAPES if not s.publisher_calls], ids=[s.name for s in SHAPES if not s.publisher_calls])
def test_probe(shape: Shape, clip: Path, procs: list[subprocess.Popen[bytes]], tmp_path: Path) -> None:
    source, out = urls(shape)
    procs.append(publish(clip, out, shape.fmt))
    t0 = time.monotonic()
    r = sw("probe", source, "--open-timeout", "5", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "codec:     h264" in r.stdout and "size:      320x180" in r.stdout, r.stdout
    assert "duration:  live/unknown" in r.stdout and "keyframes: every 1.00s" in r.stdout, r.stdout
    assert time.monotonic() - t0 < 20


def test_probe_srt_listener(clip: Path, procs: list[subprocess.Popen[bytes]], tmp_path: Path) -> None:
    port = free_port()
    full = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "streamwatch", "probe", f"srt://127.0.0.1:{port}?mode=listener", "--open-timeout", "15"]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=full)
    try:
        time.sleep(2.0)  # the interpreter and the relay's listener start
        procs.append(publish_when_heard(clip, f"srt://127.0.0.1:{port}", "mpegts"))
        out, err = p.communicate(timeout=40)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0, err[-2000:]
    assert "codec:     h264" in out and "size:      320x180" in out, out


@pytest.mark.parametrize("source", ["srt://127.0.0.1:{port}?mode=caller", "srt://:{port}?mode=listener&passphrase=SECRET0123456"])
def test_srt_without_its_relay_is_one_line_at_start(source: str, tmp_path: Path) -> None:
    url = source.format(port=free_port())
    for ffmpeg in ("/nonexistent/ffmpeg", "/bin/true"):
        env = {"STREAMWATCH_INGEST__FFMPEG": ffmpeg}
        for args in (("probe", url), ("run", "--source", url, "--port", "0")):
            r = sw(*args, cwd=tmp_path, env=env)
            lines = r.stderr.strip().splitlines()
            assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
            assert "needs the FFmpeg CLI as a relay" in lines[0] and ffmpeg in lines[0], lines[0]
            assert "SECRET0123456" not in r.stderr + r.stdout


def test_run_source_srt_is_no_longer_refused(clip: Path, procs: list[subprocess.Popen[bytes]], tmp_path: Path) -> None:
    port = free_port()
    procs.append(publish(clip, f"srt://127.0.0.1:{port}?mode=listener", "mpegts"))
    full = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "streamwatch", "run", "--source", f"srt://127.0.0.1:{port}?mode=caller", "--port", "0"]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=full)
    try:
        time.sleep(15)
        assert p.poll() is None, p.communicate()[1][-2000:]
    finally:
        p.send_signal(signal.SIGTERM)
        try:
            _, err = p.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            _, err = p.communicate()
    assert "not supported" not in err and "Traceback" not in err, err[-2000:]
    assert re.search(r"srt://127\.0\.0\.1:\d+\?mode=\*\*\* live\b", err), err[-2000:]  # the stream went live


def test_a_daemon_stream_whose_srt_relay_is_missing_is_stopped_not_retried(tmp_path: Path) -> None:
    """Past the CLI's check (a stream added over the API): the reader refuses it once, no restart loop."""
    import asyncio

    from streamwatch.app import Daemon
    from streamwatch.config import load_settings
    from streamwatch.events.model import HealthKind
    from streamwatch.events.store import EventStore

    data = tmp_path / "d"
    over = {
        "data_dir": data,
        "streams": [{"id": "show", "source": f"srt://127.0.0.1:{free_port()}?mode=caller"}],
        "ingest": {"ffmpeg": "/nonexistent/ffmpeg"},
        "analysis": {"analyzers": ["qr"], "threads": 1},
    }
    daemon = Daemon(load_settings(None, over), serve=False)
    asyncio.run(asyncio.wait_for(daemon.run(), 60))
    assert daemon.all_failed() == ["show"]
    assert daemon.metrics.stream_restarts.labels("restarted")._value.get() == 0
    store = EventStore(data)
    try:
        states = [e for e in store.events("show") if isinstance(e, HealthEvent) and e.kind is HealthKind.STATE]
    finally:
        store.close()
    assert [e.state for e in states] == [StreamState.STOPPED]
    assert "needs the FFmpeg CLI as a relay" in (states[0].reason or "")


@pytest.mark.parametrize(
    ("url", "listener"),
    [
        ("srt://:{p}?mode=listener", True),
        ("srt://0.0.0.0:{p}?mode=listener&latency=120000", True),
        ("srt://127.0.0.1:{p}?latency=120000&mode=listener", True),
        ("srt://:{p}", True),  # no host: nobody to call
        ("srt://127.0.0.1:{p}", False),
        ("srt://encoder.example:{p}?mode=caller&streamid=#!::r=live/show", False),
        ("srt://:{p}?mode=caller", False),  # said so: calls (FFmpeg then says what is wrong)
    ],
)
def test_srt_mode_of_each_url_shape(url: str, listener: bool) -> None:
    from streamwatch.ingest.srtrelay import is_listener
    from streamwatch.ingest.url import SourceKind

    for p in (1, 9000, 65535):
        spec = parse_source(url.format(p=p))
        assert spec.kind is SourceKind.SRT and spec.live
        assert is_listener(spec.url) is listener


@pytest.mark.parametrize("scheme", ["udp", "rtp", "UDP"])
@pytest.mark.parametrize("host", ["127.0.0.1", "@", "", "239.1.2.3", "[::1]"])
def test_udp_and_rtp_shapes_are_live_mpegts(scheme: str, host: str) -> None:
    from streamwatch.errors import BadSource
    from streamwatch.ingest.url import SourceKind

    assert parse_source(f"{scheme}://{host}:1234?fifo_size=100").kind is SourceKind.UDP
    with pytest.raises(BadSource, match="has no port"):
        parse_source(f"{scheme}://{host}")
    with pytest.raises(BadSource, match="listen mode needs an rtmp"):
        parse_source(f"{scheme}://{host}:1234", listen=True)


@pytest.mark.parametrize("secret_at", ["passphrase", "streamid"])
def test_relay_errors_keep_srt_secrets_masked(secret_at: str) -> None:
    """Nobody listening, no retries: the relay's own message is the error, with the SRT options masked."""
    from streamwatch.errors import SourceOpenError, SourceTimeout

    secret = "S3cretPassphrase" + secret_at
    url = f"srt://127.0.0.1:{free_port()}?mode=caller&{secret_at}={secret}"
    cfg = IngestConfig(open_timeout_s=4, read_timeout_s=2, max_retries=0)
    items: list[object] = []
    with pytest.raises((SourceOpenError, SourceTimeout)) as caught:
        items.extend(FrameReader(parse_source(url), "sec", cfg))
    shown = str(caught.value) + " ".join(e.describe() for e in items if isinstance(e, HealthEvent))
    assert secret not in shown and "127.0.0.1" in shown, shown
