"""HLS as CDNs serve it (issue 24 §5): master playlists with several variants, a segment or an AES key
that returns 404, probing a recording. Served by a plain HTTP server on 127.0.0.1 that logs requests."""

from __future__ import annotations

import functools
import http.server
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Clip, require_media_tools
from test_hls_shapes import playlist, segments

from streamwatch.config import IngestConfig
from streamwatch.errors import SourceOpenError
from streamwatch.events.model import HealthEvent, HealthKind, StreamState
from streamwatch.ingest import Frame, FrameReader, parse_source
from streamwatch.ingest.hls import PlaylistTracker
from streamwatch.ingest.probe import probe
from streamwatch.report import build_report

CFG = IngestConfig(open_timeout_s=3, read_timeout_s=3, backoff_initial_s=0.2, backoff_max_s=0.5)
SIZES = [(160, 90, 300_000), (320, 180, 800_000), (640, 360, 2_000_000)]


class Web:
    def __init__(self, root: Path, base: str, log: list[str]) -> None:
        self.root, self.base, self.log = root, base, log

    def fetched(self, prefix: str) -> list[str]:
        return [p for p in self.log if p.startswith(prefix)]


@pytest.fixture
def web(tmp_path: Path) -> Iterator[Web]:
    log: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *a: object) -> None:
            log.append(self.path.lstrip("/"))

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(tmp_path)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield Web(tmp_path, f"http://127.0.0.1:{httpd.server_address[1]}", log)
    httpd.shutdown()


def master(variants: list[tuple[int, int, int]], *, resolution: bool = True) -> str:
    lines = ["#EXTM3U"]
    for w, h, bw in variants:
        res = f",RESOLUTION={w}x{h}" if resolution else ""
        lines += [f'#EXT-X-STREAM-INF:BANDWIDTH={bw},CODECS="avc1.42e01e,mp4a.40.2"{res}', f"v{w}/index.m3u8"]
    return "\n".join(lines) + "\n"


@pytest.fixture
def ladder(web: Web, short_clip: Clip) -> Web:
    """Three renditions of 4 s (1 s segments, a recording) under a master playlist."""
    require_media_tools()
    for w, h, _ in SIZES:
        d = web.root / f"v{w}"
        d.mkdir()
        src = d / "src.mp4"
        cmd = ["ffmpeg", "-nostdin", "-y", "-loglevel", "error", "-i", str(short_clip.path), "-t", "4", "-vf", f"scale={w}:{h}"]
        subprocess.run([*cmd, "-c:v", "libx264", "-preset", "ultrafast", "-g", "25", str(src)], check=True)
        segs = segments(src, d, "s", seconds=4)
        (d / "index.m3u8").write_text(playlist(segs, ended=True))
    (web.root / "master.m3u8").write_text(master(SIZES))
    return web


@pytest.mark.parametrize(
    ("choice", "max_side", "width"),
    [("auto", 300, 320), ("auto", 960, 640), ("lowest", 960, 160), ("highest", 300, 640), ("900000", 960, 320)],
)
def test_master_playlist_one_variant_chosen_and_only_its_segments_fetched(ladder: Web, choice: str, max_side: int, width: int) -> None:
    cfg = CFG.model_copy(update={"hls_variant": choice})
    reader = FrameReader(parse_source(f"{ladder.base}/master.m3u8"), "hls", cfg, max_side=max_side)
    frames = [i for i in reader if isinstance(i, Frame)]
    assert frames and {f.picture.width for f in frames} == {width}
    others = [p for p in ladder.log if p.endswith(".ts") and not p.startswith(f"v{width}/")]
    assert not others, f"segments of other variants fetched: {others}"
    assert len(ladder.fetched(f"v{width}/s")) >= 4


def test_a_variant_that_disappears_is_replaced(ladder: Web) -> None:
    tracker = PlaylistTracker(f"{ladder.base}/master.m3u8", 3, "auto", 300)
    assert tracker.fetch().url.endswith("v320/index.m3u8")
    (ladder.root / "v320" / "index.m3u8").unlink()
    (ladder.root / "master.m3u8").write_text(master([SIZES[0], SIZES[2]]))
    assert tracker.fetch().url.endswith("v640/index.m3u8")  # the next that is big enough
    assert tracker.chosen is not None and tracker.chosen.width == 640


def test_variants_without_resolution_by_bandwidth(ladder: Web) -> None:
    (ladder.root / "master.m3u8").write_text(master(SIZES, resolution=False))
    for choice, expect in [("highest", "v640"), ("lowest", "v160"), ("1000000", "v320"), ("auto", "v320")]:
        assert PlaylistTracker(f"{ladder.base}/master.m3u8", 3, choice, 960).fetch().url.endswith(f"{expect}/index.m3u8")


@pytest.mark.parametrize("missing", [[2], [1, 4]])
def test_a_segment_that_returns_404_is_a_segment_missing_notice_in_unwatched_time(web: Web, short_clip: Clip, missing: list[int]) -> None:
    segs = segments(short_clip.path, web.root, "seg", seconds=7)
    (web.root / "vod.m3u8").write_text(playlist(segs, ended=True))
    for i in missing:
        segs[i].unlink()
    items = list(FrameReader(parse_source(f"{web.base}/vod.m3u8"), "hls", CFG))
    holes = [i for i in items if isinstance(i, HealthEvent) and i.kind is HealthKind.SEGMENT_MISSING]
    assert len(holes) == len(missing), holes
    assert all(h.duration_s is not None and 0.7 < h.duration_s < 1.5 for h in holes)
    for h, i in zip(holes, missing, strict=True):
        assert abs(h.offset - i) < 1.1  # where the hole is in the show
    assert [i.state for i in items if isinstance(i, HealthEvent) and i.state is not None][-1] is StreamState.STOPPED
    report = build_report("hls", [i for i in items if isinstance(i, HealthEvent)])
    assert [p.kind for p in report.gaps] == ["segment_missing"] * len(missing)
    assert sum(p.duration or 0 for p in report.gaps) == pytest.approx(len(missing), abs=0.5)


def test_without_holes_no_segment_missing(web: Web, short_clip: Clip) -> None:
    segs = segments(short_clip.path, web.root, "ok", seconds=5, ts_offset=5000)
    (web.root / "ok.m3u8").write_text(playlist(segs, ended=True))
    items = list(FrameReader(parse_source(f"{web.base}/ok.m3u8"), "hls", CFG))
    assert not [i for i in items if isinstance(i, HealthEvent) and i.kind is HealthKind.SEGMENT_MISSING]


def test_an_aes_key_that_returns_404_says_the_key_could_not_be_fetched(web: Web, short_clip: Clip) -> None:
    segs = segments(short_clip.path, web.root, "enc", seconds=3)
    text = playlist(segs, ended=True).replace(
        "#EXT-X-MEDIA-SEQUENCE:0\n", '#EXT-X-MEDIA-SEQUENCE:0\n#EXT-X-KEY:METHOD=AES-128,URI="keys/k1.bin"\n'
    )
    (web.root / "enc.m3u8").write_text(text)
    reader = FrameReader(parse_source(f"{web.base}/enc.m3u8?auth_key=SECRET456"), "hls", CFG.model_copy(update={"max_retries": 0}))
    with pytest.raises(SourceOpenError) as e:
        list(reader)
    assert "AES-128 key" in str(e.value) and "404" in str(e.value) and "Invalid data" not in str(e.value)


def test_probe_of_a_recording_playlist_gives_duration_and_bitrate(ladder: Web) -> None:
    vod = probe(parse_source(f"{ladder.base}/v320/index.m3u8"), CFG)
    assert vod.duration_s == pytest.approx(4.0, abs=0.6) and vod.bitrate and vod.bitrate > 10_000
    via_master = probe(parse_source(f"{ladder.base}/master.m3u8"), CFG.model_copy(update={"hls_variant": "highest"}))
    assert (via_master.width, via_master.bitrate) == (640, 2_000_000) and via_master.duration_s == pytest.approx(4.0, abs=0.6)
    assert any(line.startswith("duration:  4.") for line in via_master.lines())
