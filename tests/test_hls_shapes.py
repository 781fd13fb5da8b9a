"""HLS playlist shapes served by a plain HTTP server on 127.0.0.1: recordings, stuck playlists,
playlists that move again, discontinuities (timestamps reset or jumped by thousands of seconds)."""

from __future__ import annotations

import functools
import http.server
import itertools
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Clip, require_media_tools

from streamwatch.config import IngestConfig
from streamwatch.events.model import HealthEvent, StreamState
from streamwatch.ingest import Frame, FrameReader, parse_source
from streamwatch.ingest.hls import Playlist, Variant, Watermark, parse_playlist

CFG = IngestConfig(open_timeout_s=3, read_timeout_s=3, backoff_initial_s=0.3, backoff_max_s=1.0)


@pytest.fixture
def web(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.RequestHandlerClass.log_message = lambda *a, **k: None  # type: ignore[method-assign]
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield tmp_path, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def segments(clip: Path, out: Path, prefix: str, *, start: float = 0.0, seconds: float = 6.0, ts_offset: float | None = None) -> list[Path]:
    """Cut ``seconds`` of ``clip`` into ~1 s MPEG-TS segments (GOP 1 s); ``ts_offset`` shifts their timestamps."""
    require_media_tools()
    cmd = ["ffmpeg", "-nostdin", "-y", "-loglevel", "error", "-i", str(clip), *(["-ss", str(start)] if start else []), "-t", str(seconds)]
    cmd += ["-c", "copy"]
    if ts_offset is not None:
        cmd += ["-output_ts_offset", str(ts_offset)]
    cmd += ["-f", "segment", "-segment_time", "1", "-segment_format", "mpegts", str(out / f"{prefix}%03d.ts")]
    subprocess.run(cmd, check=True)
    return sorted(out.glob(f"{prefix}*.ts"))


def playlist(segs: list[Path], *, seq: int = 0, ended: bool = False, breaks: frozenset[int] = frozenset()) -> str:
    lines = ["#EXTM3U", "#EXT-X-VERSION:3", "#EXT-X-TARGETDURATION:1", f"#EXT-X-MEDIA-SEQUENCE:{seq}"]
    for i, s in enumerate(segs):
        if i in breaks:
            lines.append("#EXT-X-DISCONTINUITY")
        lines += ["#EXTINF:1.000,", s.name]
    if ended:
        lines.append("#EXT-X-ENDLIST")
    return "\n".join(lines) + "\n"


def read_all(url: str, cfg: IngestConfig = CFG, timeout: float = 60) -> tuple[list[Frame], list[HealthEvent], float]:
    reader = FrameReader(parse_source(url), "hls", cfg)
    frames: list[Frame] = []
    states: list[HealthEvent] = []
    t0 = time.monotonic()
    for item in reader:
        if isinstance(item, Frame):
            frames.append(item)
        elif item.state is not None:
            states.append(item)
        assert time.monotonic() - t0 < timeout, "a recording must end"
    return frames, states, time.monotonic() - t0


def test_recording_with_endlist_ends_like_a_file(web: tuple[Path, str], short_clip: Clip) -> None:
    d, base = web
    segs = segments(short_clip.path, d, "vod", seconds=12)
    (d / "vod.m3u8").write_text(playlist(segs, ended=True))
    frames, states, took = read_all(f"{base}/vod.m3u8")
    assert [s.state for s in states] == [StreamState.LIVE, StreamState.STOPPED]
    assert "EXT-X-ENDLIST" in states[-1].reason
    assert len(frames) == 12 * 25  # every frame once: read once, never reconnected
    assert took < 12  # as fast as it decodes, like a file (the clip is 12 s)
    offs = [f.offset for f in frames]
    assert offs[0] < 0.1 and 11.5 < offs[-1] < 12.1  # stream time, not wall time
    paced, _, took_rt = read_all(f"{base}/vod.m3u8", CFG.model_copy(update={"realtime": True}))
    assert len(paced) == len(frames) and took_rt >= 11.0  # --realtime paces it


def test_discontinuities_keep_offsets_continuous(web: tuple[Path, str], short_clip: Clip) -> None:
    d, base = web
    a = segments(short_clip.path, d, "a", seconds=4)
    b = segments(short_clip.path, d, "b", start=4, seconds=4, ts_offset=5000)  # timestamps jump by ~5000 s
    c = segments(short_clip.path, d, "c", start=8, seconds=4, ts_offset=-8)  # and back to 0
    (d / "disc.m3u8").write_text(playlist(a + b + c, ended=True, breaks=frozenset({len(a), len(a) + len(b)})))
    frames, _, _ = read_all(f"{base}/disc.m3u8")
    pts = [f.pts or 0.0 for f in frames]
    assert max(pts) > 5000 and min(pts[-10:]) < 100  # the input really jumps forward and back
    offs = [f.offset for f in frames]
    steps = [y - x for x, y in itertools.pairwise(offs)]
    assert min(steps) > 0 and max(steps) < 0.5, "no jump and no step back at a discontinuity"
    assert abs(offs[-1] - len(frames) / 25) < 1.0  # the offset is the show time of what was read


def test_stuck_live_playlist_is_an_outage_and_nothing_is_sampled_twice(web: tuple[Path, str], short_clip: Clip) -> None:
    d, base = web
    segs = segments(short_clip.path, d, "s", seconds=12)
    live = d / "live.m3u8"
    live.write_text(playlist(segs[:3], seq=0))  # three segments, no ENDLIST, never moving
    reader = FrameReader(parse_source(f"{base}/live.m3u8"), "hls", CFG)
    items: list[Frame | HealthEvent] = []
    thread = threading.Thread(target=lambda: items.extend(reader), daemon=True)
    thread.start()
    try:
        time.sleep(14)  # ~14 target durations of a playlist that does not move
        first = [i for i in items if isinstance(i, Frame)]
        states = [i for i in items if isinstance(i, HealthEvent) and i.state is not None]
        kinds = [s.state for s in states]
        assert kinds.count(StreamState.LIVE) == 1, [s.describe() for s in states]
        assert StreamState.STALLED in kinds and kinds[-1] is StreamState.RECONNECTING
        assert any("not advancing" in s.reason for s in states if s.state is StreamState.RECONNECTING)
        assert len(first) <= 3 * 25 + 1  # the three segments, once
        # the playlist moves again: the next segments are read, and only those
        live.write_text(playlist(segs[2:6], seq=2))
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and sum(isinstance(i, Frame) for i in items) < len(first) + 3 * 25:
            time.sleep(0.2)
        time.sleep(4)
    finally:
        reader.stop()
        thread.join(15)
    frames = [i for i in items if isinstance(i, Frame)]
    later = frames[len(first) :]
    assert len(later) == 3 * 25  # segments 3, 4 and 5 exactly: segment 2 was read already
    assert min(f.pts or 0 for f in later) > max(f.pts or 0 for f in first)
    lives = [i for i in items if isinstance(i, HealthEvent) and i.state is StreamState.LIVE]
    assert len(lives) == 2 and lives[1].gap_s is not None and lives[1].gap_s > 8
    offs = [f.offset for f in frames]
    assert all(y > x for x, y in itertools.pairwise(offs))
    assert later[0].offset - first[-1].offset > 8  # the outage advanced the show's clock


def test_playlist_parsing_and_segment_identity() -> None:
    text = "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:41\n#EXTINF:2,\nx41.ts\n#EXT-X-DISCONTINUITY\n#EXTINF:2,\nsub/x42.ts\n"
    pl = parse_playlist(text, "http://h/live/p.m3u8")
    segs = ("http://h/live/x41.ts", "http://h/live/sub/x42.ts")
    assert pl == Playlist("http://h/live/p.m3u8", 41, 2.0, segs, False, 1, durations=(2.0, 2.0))
    assert pl.last == Watermark(42, "http://h/live/sub/x42.ts")
    assert Watermark(42, "http://h/live/sub/x42.ts").new_segments(pl) == 0
    assert Watermark(41, "http://h/live/x41.ts").new_segments(pl) == 1
    master = parse_playlist("#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1\nlow/index.m3u8\n", "http://h/m.m3u8")
    assert master.variants == (Variant("http://h/low/index.m3u8", 1),) and not master.segments
    assert parse_playlist("#EXTM3U\n#EXT-X-PLAYLIST-TYPE:VOD\n#EXTINF:1,\na.ts\n", "http://h/").ended
    with pytest.raises(ValueError):
        parse_playlist("<html>", "http://h/")
