"""Ingest as the field delivers it (issue 24 §2, §3, §6): RTMP whose video comes late or not at all,
and HTTP-FLV pulls that drop and come back. Real nginx-rtmp and `ffmpeg -listen 1` on 127.0.0.1."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Clip, Nginx, free_port, require_media_tools, stop

from streamwatch.config import IngestConfig
from streamwatch.events.model import HealthEvent, HealthKind, StreamState
from streamwatch.ingest import Frame, FrameReader, SourceKind, parse_source
from streamwatch.ingest.httpsrc import classify
from streamwatch.ingest.opening import video_announced
from streamwatch.ingest.probe import probe


def lavfi_publish(url: str, *, gop_s: int, audio: bool = True, video: bool = True, fmt: str = "flv") -> subprocess.Popen[bytes]:
    """A live encoder (testsrc2 + sine) with a fixed keyframe interval: audio is sent before the first keyframe."""
    require_media_tools()
    cmd = ["ffmpeg", "-nostdin", "-loglevel", "error", "-re"]
    if video:
        cmd += ["-f", "lavfi", "-i", "testsrc2=size=320x180:rate=25"]
    if audio:
        cmd += ["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100"]
    if video:
        g = str(gop_s * 25)
        cmd += ["-c:v", "libx264", "-preset", "ultrafast", "-g", g, "-keyint_min", g, "-sc_threshold", "0"]
    if audio:
        cmd += ["-c:a", "aac"]
    return subprocess.Popen([*cmd, "-f", fmt, url], stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def read_for(url: str, cfg: IngestConfig, seconds: float) -> tuple[list[tuple[float, Frame]], list[tuple[float, HealthEvent]]]:
    """Read ``url`` for ``seconds``: (time, frame) and (time, health event) since the start."""
    reader = FrameReader(parse_source(url), "field", cfg)
    frames: list[tuple[float, Frame]] = []
    events: list[tuple[float, HealthEvent]] = []
    t0 = time.monotonic()

    def go() -> None:
        for item in reader:
            (frames if isinstance(item, Frame) else events).append((time.monotonic() - t0, item))  # type: ignore[arg-type]

    th = threading.Thread(target=go, daemon=True)
    th.start()
    time.sleep(seconds)
    reader.stop()
    th.join(cfg.open_timeout_s + cfg.read_timeout_s + 5)
    assert not th.is_alive(), "the reader must stop"
    return frames, events


def states(events: list[tuple[float, HealthEvent]]) -> list[StreamState]:
    return [e.state for _, e in events if e.state is not None]


@pytest.mark.parametrize(("gop_s", "audio"), [(2, True), (10, True), (2, False), (10, False)])
def test_rtmp_whose_video_comes_a_gop_later_goes_live_without_an_outage(nginx: Nginx, gop_s: int, audio: bool) -> None:
    name = f"late{gop_s}{'a' if audio else 'v'}"
    pub = lavfi_publish(nginx.rtmp(name), gop_s=gop_s, audio=audio)
    try:
        time.sleep(3.3)  # the player joins mid-GOP: nginx sends the audio at once, the video at the next keyframe
        cfg = IngestConfig(open_timeout_s=gop_s + 3, read_timeout_s=3, backoff_initial_s=0.2, backoff_max_s=1)
        frames, events = read_for(nginx.rtmp(name), cfg, gop_s + 4)
    finally:
        stop(pub)
    assert frames, f"no frame within one keyframe interval ({gop_s}s) and the probe: {events}"
    assert states(events)[0] is StreamState.LIVE and frames[0][0] <= gop_s + 2.5
    assert not {StreamState.RECONNECTING, StreamState.STALLED, StreamState.NO_VIDEO} & set(states(events))


def test_rtmp_probe_answers_in_about_one_keyframe_interval(nginx: Nginx) -> None:
    pub = lavfi_publish(nginx.rtmp("probe2"), gop_s=2)
    try:
        time.sleep(2.5)
        t0 = time.monotonic()
        result = probe(parse_source(nginx.rtmp("probe2")), IngestConfig(open_timeout_s=6, read_timeout_s=3))
        took = time.monotonic() - t0
    finally:
        stop(pub)
    assert (result.width, result.height) == (320, 180) and result.keyframe_interval_s == pytest.approx(2.0, abs=0.1)
    assert took < 2 * 2.0 + 2.0, f"probe took {took:.1f}s"  # first keyframe (≤1 GOP) + one GOP to measure it + the short probe
    assert result.duration_s is None


def test_audio_only_rtmp_is_no_video_not_an_outage(nginx: Nginx) -> None:
    pub = lavfi_publish(nginx.rtmp("music"), gop_s=2, video=False)
    try:
        time.sleep(1.5)
        cfg = IngestConfig(open_timeout_s=3, read_timeout_s=3, backoff_initial_s=0.5, backoff_max_s=1)
        frames, events = read_for(nginx.rtmp("music"), cfg, 9)
    finally:
        stop(pub)
    assert not frames
    assert states(events)[:1] == [StreamState.NO_VIDEO] and "audio only" in events[0][1].reason
    assert events[0][0] < 3.0  # the metadata says there is no video: no waiting for the whole open timeout
    assert states(events).count(StreamState.NO_VIDEO) == 1  # said once, though the source is tried again
    assert not {StreamState.RECONNECTING, StreamState.STALLED} & set(states(events))


def test_video_that_stops_while_the_audio_goes_on_is_no_video(tmp_path: Path) -> None:
    """A music interlude mid-show: the connection stays up (audio flows), the video stops."""
    require_media_tools()
    show = tmp_path / "show.flv"
    cmd = ["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=320x180:rate=25:d=3"]
    cmd += ["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100:d=12", "-c:v", "libx264", "-g", "25", "-c:a", "aac", str(show)]
    subprocess.run(cmd, check=True)
    url = f"http://127.0.0.1:{free_port()}/show.flv"
    serve = ["ffmpeg", "-nostdin", "-loglevel", "quiet", "-re", "-i", str(show), "-c", "copy", "-max_interleave_delta", "1"]
    srv = subprocess.Popen([*serve, "-f", "flv", "-listen", "1", url], stdin=subprocess.DEVNULL)
    try:
        time.sleep(0.8)
        frames, events = read_for(url, IngestConfig(open_timeout_s=4, read_timeout_s=2, backoff_initial_s=0.2, backoff_max_s=0.5), 8)
    finally:
        stop(srv)
    seen = states(events)
    assert frames and seen[:2] == [StreamState.LIVE, StreamState.NO_VIDEO], seen
    no_video = next(t for t, e in events if e.state is StreamState.NO_VIDEO)
    assert 4.0 < no_video < 7.5 and "audio" in events[1][1].reason  # 3 s of video, then the read timeout (2 s) of audio only


@pytest.mark.parametrize(
    ("meta", "expected"),
    [
        ({"videocodecid": "7"}, True),
        ({"videocodecid": "0"}, False),
        ({"displayWidth": "0"}, False),
        ({"width": "1920.0"}, True),
        ({}, None),
    ],
)
def test_flv_metadata_says_whether_video_is_coming(meta: dict[str, str], expected: bool | None) -> None:
    assert video_announced(meta) is expected


@pytest.mark.parametrize(
    ("headers", "path", "live", "fmt"),
    [
        ({"transfer-encoding": "chunked", "content-type": "application/octet-stream"}, "/live/room.flv", True, "flv"),
        ({"content-type": "video/x-flv"}, "/live/room", True, "flv"),  # close-delimited, no suffix
        ({"content-type": "video/MP2T"}, "/tv/ch1", True, "mpegts"),
        ({"content-length": "123456", "content-type": "video/x-flv"}, "/vod/rec.flv", False, "flv"),
        ({"content-length": "99", "content-type": "application/octet-stream"}, "/vod/rec.ts", False, "mpegts"),
        ({"content-length": "99", "transfer-encoding": "chunked"}, "/x", True, None),
    ],
)
def test_http_response_shape_says_live_or_file(headers: dict[str, str], path: str, live: bool, fmt: str | None) -> None:
    shape = classify(200, headers, path)
    assert (shape.live, shape.format) == (live, fmt)


def test_http_urls_are_classified_by_the_response_not_the_suffix() -> None:
    assert parse_source("http://cdn.example/live/room.flv?auth_key=1").kind is SourceKind.HTTP
    assert parse_source("https://cdn.example/live/room").kind is SourceKind.HTTP
    assert parse_source("http://cdn.example/ch1.ts").kind is SourceKind.HTTP
    assert parse_source("http://cdn.example/v/a.mp4").kind is SourceKind.FILE


@pytest.fixture
def flv_server(short_clip: Clip) -> Iterator[tuple[str, list[subprocess.Popen[bytes]]]]:
    """``ffmpeg -listen 1`` serving the clip as live HTTP-FLV (one client); the test restarts it."""
    require_media_tools()
    url = f"http://127.0.0.1:{free_port()}/live.flv"
    procs: list[subprocess.Popen[bytes]] = []
    yield url, procs
    for p in procs:
        stop(p)


def serve_flv(clip: Path, url: str, fmt: str = "flv") -> subprocess.Popen[bytes]:
    cmd = ["ffmpeg", "-nostdin", "-loglevel", "quiet", "-re", "-stream_loop", "-1", "-i", str(clip), "-c", "copy"]
    return subprocess.Popen([*cmd, "-f", fmt, "-listen", "1", url], stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("fmt", ["flv", "mpegts"])
def test_http_live_pull_that_drops_reconnects_and_is_live_again(
    flv_server: tuple[str, list[subprocess.Popen[bytes]]], short_clip: Clip, fmt: str
) -> None:
    url, procs = flv_server
    url = url if fmt == "flv" else url.replace(".flv", "")  # MPEG-TS without a suffix: told by the response
    procs.append(serve_flv(short_clip.path, url, fmt))
    time.sleep(0.8)
    cfg = IngestConfig(open_timeout_s=3, read_timeout_s=2, backoff_initial_s=0.3, backoff_max_s=1.0)
    reader = FrameReader(parse_source(url), "flv", cfg)
    got: list[tuple[float, Frame | HealthEvent]] = []
    th = threading.Thread(target=lambda: got.extend((time.monotonic(), i) for i in reader), daemon=True)
    th.start()
    time.sleep(4)
    stop(procs[0])  # the CDN drops
    dropped = time.monotonic()
    time.sleep(6)
    procs.append(serve_flv(short_clip.path, url, fmt))  # and comes back 6 s later
    time.sleep(5)
    reader.stop()
    th.join(10)
    evs = [i for _, i in got if isinstance(i, HealthEvent) and i.kind is HealthKind.STATE]
    seen = [e.state for e in evs]
    assert seen[0] is StreamState.LIVE and StreamState.STOPPED not in seen, seen
    assert StreamState.RECONNECTING in seen and seen.count(StreamState.LIVE) == 2, seen
    again = [e for e in evs if e.state is StreamState.LIVE][1]
    assert again.gap_s is not None and 5.0 < again.gap_s < 10.0
    assert any(isinstance(i, Frame) and t > dropped + 6 for t, i in got), "frames after the server came back"


def test_http_flv_with_a_length_is_read_once_like_a_file(tmp_path: Path, short_clip: Clip) -> None:
    import functools
    import http.server

    (tmp_path / "rec").write_bytes(short_clip.path.read_bytes())  # no suffix: the Content-Length says "a file"
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.RequestHandlerClass.log_message = lambda *a, **k: None  # type: ignore[method-assign]
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        reader = FrameReader(parse_source(f"http://127.0.0.1:{httpd.server_address[1]}/rec"), "rec", IngestConfig(open_timeout_s=3))
        items = list(reader)
    finally:
        httpd.shutdown()
    seen = [i.state for i in items if isinstance(i, HealthEvent)]
    assert seen == [StreamState.LIVE, StreamState.STOPPED] and not reader.live
    assert len([i for i in items if isinstance(i, Frame)]) == pytest.approx(12 * 25, abs=3)


@pytest.mark.parametrize(
    ("sequence", "rules"),
    [
        ([StreamState.CONNECTING, StreamState.CONNECTING, StreamState.NO_VIDEO], ["stream_no_video"]),
        ([StreamState.LIVE, StreamState.NO_VIDEO], ["stream_no_video"]),
        ([StreamState.LIVE, StreamState.STALLED, StreamState.NO_VIDEO], ["stream_no_video"]),  # the outage ends: audio is back
        ([StreamState.CONNECTING, StreamState.CONNECTING, StreamState.LIVE], []),
        ([StreamState.NO_VIDEO, StreamState.LIVE], []),
        ([StreamState.LIVE, StreamState.RECONNECTING], ["stream_outage"]),
    ],
)
def test_no_video_is_a_low_notice_and_connecting_is_never_an_outage(sequence: list[StreamState], rules: list[str]) -> None:
    from streamwatch.analysis.policy import load_policy
    from streamwatch.analysis.rules import RuleEngine

    engine = RuleEngine(load_policy(Path(__file__).resolve().parent.parent / "models" / "policy.toml"))
    t = 1000.0
    for k, st in enumerate(sequence):
        engine.on_health(HealthEvent("s", t + k, float(k), kind=HealthKind.STATE, state=st))
    drafts = [d for _, d in engine.tick("s", t + len(sequence) + 30)]
    assert [d.rule for d in drafts] == rules
    assert all(d.severity.value == "low" for d in drafts if d.rule == "stream_no_video")
