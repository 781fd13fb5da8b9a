"""Display rotation (phones, mobile RTMP apps): frames are turned upright before anything looks at them.

Clips carry the rotation two ways: an MP4 display matrix (``-metadata:s:v:0 rotate=N``, what phones
write) and an H.264 display-orientation SEI (``h264_metadata`` bitstream filter; it travels inside
the video over FLV/RTMP). The reference for "upright" is FFmpeg's own autorotation (the ffmpeg CLI).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np
import pytest
from conftest import Nginx, load_jsonl, publish, require_media_tools, stop

from streamwatch.config import IngestConfig
from streamwatch.events.model import HealthEvent
from streamwatch.ingest import Frame, FrameReader, parse_source
from streamwatch.ingest.frame import upright

W, H, FPS = 320, 180, 10


def _picture(i: int) -> np.ndarray:
    """A landscape picture with a marker in one corner and a moving bar (so frames differ)."""
    img = np.zeros((H, W, 3), np.uint8)
    img[:, :, 2] = np.linspace(40, 200, W, dtype=np.uint8)[None, :]
    img[10:60, 10:90] = (255, 255, 255)  # top-left block: where "up" is
    x = 100 + (i * 7) % 180
    img[120:170, x : x + 30] = (255, 0, 0)
    return img


@pytest.fixture(scope="module")
def base_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("rot") / "base.mp4"
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=FPS)
        s.width, s.height, s.pix_fmt = W, H, "yuv420p"
        s.thread_type = "FRAME"
        s.options = {"g": str(FPS), "keyint_min": str(FPS), "sc_threshold": "0", "bf": "0"}
        for i in range(FPS * 3):
            for p in s.encode(av.VideoFrame.from_ndarray(_picture(i), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def rotated(base: Path, degrees: int) -> Path:
    require_media_tools()
    out = base.with_name(f"rot{degrees}.mp4")
    if not out.exists():
        cmd = [
            "ffmpeg",
            "-nostdin",
            "-y",
            "-loglevel",
            "error",
            "-i",
            str(base),
            "-c",
            "copy",
            "-metadata:s:v:0",
            f"rotate={degrees}",
            str(out),
        ]
        subprocess.run(cmd, check=True)
    return out


def reference_frames(path: Path) -> list[np.ndarray]:
    """The clip as FFmpeg displays it (autorotated), as RGB arrays."""
    probe = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "v", "-show_entries", "stream_side_data=rotation", "-of", "csv=p=0", str(path)],
        capture_output=True,
        text=True,
    )
    turned = probe.stdout.strip() not in ("", "0", "180", "-180")
    w, h = (H, W) if turned else (W, H)
    raw = subprocess.run(
        ["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(path), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
        capture_output=True,
        check=True,
    ).stdout
    return list(np.frombuffer(raw, np.uint8).reshape(-1, h, w, 3))


@pytest.mark.parametrize("degrees", [90, 180, 270])
def test_file_with_a_rotation_matrix_is_read_upright(base_clip: Path, degrees: int) -> None:
    path = rotated(base_clip, degrees)
    frames = [i for i in FrameReader(parse_source(str(path)), "rot", IngestConfig()) if isinstance(i, Frame)]
    ref = reference_frames(path)
    assert len(frames) == len(ref) == FPS * 3
    for f in frames:
        assert f.rotation == degrees
        assert (f.width, f.height) == ((H, W) if degrees in (90, 270) else (W, H))
        assert f.luma().shape == (f.height, f.width) and f.gray(64).shape[0] > f.gray(64).shape[1] * (degrees != 180)
    for f, want in zip(frames, ref, strict=True):
        got = f.rgb()
        assert got.shape == want.shape
        assert np.abs(got.astype(int) - want.astype(int)).mean() < 3.0  # same picture, same way up
    # and not the same as the sideways picture turned the other way
    wrong = np.rot90(ref[0], 2)
    assert np.abs(frames[0].rgb().astype(int) - wrong.astype(int)).mean() > 20


def test_upright_keeps_odd_sizes_and_other_formats() -> None:
    rgb = np.zeros((33, 65, 3), np.uint8)
    rgb[:4, :4] = 255
    odd = av.VideoFrame.from_ndarray(rgb, format="rgb24")
    odd.pts = 7
    out = upright(odd, 90)
    assert (out.width, out.height) == (33, 65) and out.pts == 7
    assert out.to_ndarray(format="rgb24")[-4:, :4].mean() > 200  # top-left went to bottom-left (counter-clockwise)
    for fmt in ("yuv422p", "yuv444p", "nv12"):
        even = av.VideoFrame.from_ndarray(np.pad(rgb, ((0, 1), (0, 1), (0, 0))), format="rgb24").reformat(format=fmt)
        out = upright(even, 270)
        assert (out.width, out.height) == (34, 66) and out.format.name == "yuv420p"
        assert out.to_ndarray(format="rgb24")[:4, -4:].mean() > 150  # clockwise: top-left → top-right
        assert upright(even, 0) is even


def sw(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "streamwatch", *args], capture_output=True, text=True, timeout=120)


def test_probe_shows_displayed_size_and_rotation(base_clip: Path) -> None:
    r = sw("probe", str(rotated(base_clip, 90)))
    assert r.returncode == 0, r.stderr
    assert f"size:      {H}x{W}" in r.stdout and "rotation:  90°" in r.stdout and f"coded {W}x{H}" in r.stdout
    r = sw("probe", str(base_clip))
    assert f"size:      {W}x{H}" in r.stdout and "rotation:  none" in r.stdout


def test_sample_writes_upright_evidence(base_clip: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    r = sw("sample", str(rotated(base_clip, 270)), "--every", "1", "--out", str(out), "--max-side", "256")
    assert r.returncode == 0, r.stderr
    kept = [x for x in load_jsonl(out / "samples.jsonl") if x.get("file")]
    assert kept
    import cv2

    for rec in kept:
        img = cv2.imread(str(out / rec["file"]))
        assert img.shape[:2] == (256, 144)  # portrait, as displayed


def sei_clip(base: Path, degrees: int, out: Path) -> Path:
    """An FLV whose every GOP starts with an H.264 display-orientation SEI (as a mobile app sends)."""
    seg_dir = out.parent / f"seg{degrees}"
    seg_dir.mkdir(exist_ok=True)
    run = ["ffmpeg", "-nostdin", "-y", "-loglevel", "error"]
    subprocess.run([*run, "-i", str(base), "-c", "copy", "-f", "segment", "-segment_time", "1", str(seg_dir / "s%03d.ts")], check=True)
    bsf = f"h264_metadata=display_orientation=insert:rotate={degrees}"
    raw = bytearray()
    for p in sorted(seg_dir.glob("s*.ts")):
        subprocess.run([*run, "-i", str(p), "-c", "copy", "-bsf:v", bsf, "-f", "h264", str(p.with_suffix(".h264"))], check=True)
        raw += p.with_suffix(".h264").read_bytes()  # Annex B streams concatenate as they are
    (seg_dir / "all.h264").write_bytes(bytes(raw))
    subprocess.run(
        [*run, "-fflags", "+genpts", "-framerate", str(FPS), "-i", str(seg_dir / "all.h264"), "-c", "copy", "-f", "flv", str(out)],
        check=True,
    )
    return out


@pytest.mark.media_server
def test_rtmp_with_a_display_orientation_sei_is_read_upright(nginx: Nginx, base_clip: Path, tmp_path: Path) -> None:
    clip = sei_clip(base_clip, 90, tmp_path / "sei90.flv")
    url = nginx.rtmp("rotated")
    pub = publish(clip, url, loop=True)
    reader = FrameReader(
        parse_source(url), "rot", IngestConfig(open_timeout_s=3, read_timeout_s=3, backoff_initial_s=0.2, backoff_max_s=1.0)
    )
    frames: list[Frame] = []
    deadline = time.monotonic() + 30
    try:
        for item in reader:
            if isinstance(item, HealthEvent):
                continue
            frames.append(item)
            if len(frames) >= 25 or time.monotonic() > deadline:
                break
    finally:
        reader.stop()
        stop(pub)
    turned = [f for f in frames if f.rotation == 90]
    assert len(turned) >= len(frames) - FPS  # at most the first GOP joined mid-way lacks the SEI
    for f in turned:
        assert (f.width, f.height) == (H, W)
        rgb = f.rgb()
        assert rgb[-60:-10, 10:60].mean() > 200  # the top-left block is now bottom-left (as displayed)
