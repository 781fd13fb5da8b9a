#!/usr/bin/env python3
"""Encode a labelled synthetic "concert" clip with PyAV (used by tests, benchmarks and the demo).

The clip is built from real photos shipped in ``skimage.data`` and has segments with known kinds
and times, written next to the clip as JSON labels:

- ``moving``:  a fast pan/zoom over a photo (every 1 s sample should be kept);
- ``cuts``:    a different photo every second (scene cuts; every sample kept);
- ``static``:  a slide with a scrolling ticker band (not frozen, but duplicates after the first);
- ``black``:   black frames;
- ``frozen``:  the exact same frame repeated (a frozen feed);
- ``blurred``: a heavily blurred, slowly drifting photo.

The GOP is fixed (``--gop`` seconds, no scene-cut keyframes) so keyframe-mode tests know where the
keyframes are. ``thread_type='FRAME'`` keeps x264 from writing multi-slice frames.

Usage: ``python tools/make_sample_stream.py OUT.mp4 [--size 640x360] [--fps 30] [--gop 2]
[--seconds N]`` (``--seconds`` loops the timeline; labels go to ``OUT.labels.json``).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "cat", "horse", "coins")


@dataclass(frozen=True, slots=True)
class Segment:
    kind: str
    start: float
    end: float
    photo: str


# One pass of the timeline (40 s). Longer clips repeat it.
TIMELINE: tuple[tuple[str, float, str], ...] = (
    ("moving", 6.0, "astronaut"),
    ("cuts", 4.0, "chelsea"),
    ("static", 6.0, "coffee"),
    ("black", 4.0, ""),
    ("moving", 4.0, "hubble_deep_field"),
    ("frozen", 8.0, ""),
    ("blurred", 4.0, "rocket"),
    ("moving", 4.0, "coins"),
)


def build_segments(seconds: float | None = None) -> list[Segment]:
    one_pass = sum(d for _, d, _ in TIMELINE)
    total = seconds if seconds is not None else one_pass
    segments: list[Segment] = []
    t = 0.0
    while t < total - 1e-9:
        for kind, dur, photo in TIMELINE:
            if t >= total - 1e-9:
                break
            end = min(t + dur, total)
            segments.append(Segment(kind, round(t, 3), round(end, 3), photo))
            t = end
    return segments


def load_photo(name: str) -> np.ndarray:
    import skimage.data

    img = np.asarray(getattr(skimage.data, name)())
    if img.dtype == bool:
        img = img.astype(np.uint8) * 255
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    return np.ascontiguousarray(img[..., :3].astype(np.uint8))


class Renderer:
    """Draws each segment's frames at a given size (RGB uint8)."""

    def __init__(self, width: int, height: int) -> None:
        self.w, self.h = width, height
        self._photos: dict[str, np.ndarray] = {}
        self._frozen: np.ndarray | None = None
        self._last: np.ndarray | None = None

    def photo(self, name: str, scale: float = 1.0) -> np.ndarray:
        key = f"{name}@{scale}"
        if key not in self._photos:
            img = load_photo(name)
            # Cover the frame at `scale` times its size.
            f = max(self.w / img.shape[1], self.h / img.shape[0]) * scale
            size = (int(img.shape[1] * f) + 2, int(img.shape[0] * f) + 2)
            self._photos[key] = cv2.resize(img, size, interpolation=cv2.INTER_CUBIC)
        return self._photos[key]

    def _crop(self, img: np.ndarray, fx: float, fy: float) -> np.ndarray:
        x = int((img.shape[1] - self.w) * min(max(fx, 0.0), 1.0))
        y = int((img.shape[0] - self.h) * min(max(fy, 0.0), 1.0))
        return img[y : y + self.h, x : x + self.w]

    def render(self, seg: Segment, t: float) -> np.ndarray:
        u = (t - seg.start) / max(seg.end - seg.start, 1e-6)  # 0..1 through the segment
        if seg.kind == "moving":
            # Zoom in from 2.2x to 1.2x while panning diagonally: large change every second.
            img = self.photo(seg.photo, 2.6)
            zoom = 2.4 - 1.2 * u
            cw, ch = int(img.shape[1] / 2.6 * zoom * 0.9), int(img.shape[0] / 2.6 * zoom * 0.9)
            cw, ch = min(cw, img.shape[1]), min(ch, img.shape[0])
            x = int((img.shape[1] - cw) * u)
            y = int((img.shape[0] - ch) * (1 - u))
            frame = cv2.resize(img[y : y + ch, x : x + cw], (self.w, self.h), interpolation=cv2.INTER_AREA)
        elif seg.kind == "cuts":
            k = int(t - seg.start)
            name = PHOTOS[(PHOTOS.index(seg.photo) + k) % len(PHOTOS)]
            frame = self._crop(self.photo(name), 0.5, 0.5).copy()
        elif seg.kind == "static":
            frame = self._crop(self.photo(seg.photo), 0.3, 0.5).copy()
            band = int(self.h * 0.12)
            frame[-band:] = (20, 20, 60)
            # A scrolling ticker: stripes moving left, so the picture is never frozen.
            xs = (np.arange(self.w) + int(t * self.w * 0.35)) % max(self.w // 8, 1)
            stripes = xs < max(self.w // 16, 1)
            frame[-band + band // 4 : -band // 4, stripes] = (240, 220, 90)
        elif seg.kind == "black":
            frame = np.zeros((self.h, self.w, 3), np.uint8)
        elif seg.kind == "frozen":
            if self._frozen is None:
                self._frozen = (self._last if self._last is not None else np.zeros((self.h, self.w, 3), np.uint8)).copy()
            frame = self._frozen
        elif seg.kind == "blurred":
            img = self._crop(self.photo(seg.photo, 1.3), 0.2 + 0.6 * u, 0.5)
            sigma = max(self.w, self.h) * 0.03
            frame = cv2.GaussianBlur(img, (0, 0), sigma)
        else:
            raise ValueError(f"unknown segment kind {seg.kind!r}")
        if seg.kind != "frozen":
            self._frozen = None
        self._last = frame
        return np.ascontiguousarray(frame)


def iter_frames(segments: list[Segment], width: int, height: int, fps: int) -> Iterator[np.ndarray]:
    r = Renderer(width, height)
    n = round(segments[-1].end * fps)
    si = 0
    for i in range(n):
        t = i / fps
        while si < len(segments) - 1 and t >= segments[si].end - 1e-9:
            si += 1
        yield r.render(segments[si], t)


def write_clip(
    path: str | Path,
    *,
    width: int = 640,
    height: int = 360,
    fps: int = 30,
    gop_s: float = 2.0,
    seconds: float | None = None,
    preset: str = "veryfast",
) -> dict[str, object]:
    """Encode the clip to ``path`` (container from the suffix) and write ``<path>.labels.json``."""
    path = Path(path)
    segments = build_segments(seconds)
    gop = max(round(gop_s * fps), 1)
    fmt = {".flv": "flv", ".ts": "mpegts", ".mkv": "matroska"}.get(path.suffix.lower())
    with av.open(str(path), "w", format=fmt) as out:
        stream = out.add_stream(
            "libx264",
            rate=fps,
            options={"preset": preset, "keyint": str(gop), "min-keyint": str(gop), "scenecut": "0"},
        )
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.gop_size = gop
        stream.codec_context.time_base = Fraction(1, fps)
        stream.thread_type = "FRAME"
        for i, rgb in enumerate(iter_frames(segments, width, height, fps)):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = i
            frame.time_base = Fraction(1, fps)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    labels: dict[str, object] = {
        "width": width,
        "height": height,
        "fps": fps,
        "gop_s": gop / fps,
        "duration": segments[-1].end,
        "segments": [asdict(s) for s in segments],
    }
    Path(str(path) + ".labels.json").write_text(json.dumps(labels, indent=1))
    return labels


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", help="output clip (.mp4, .flv, .ts, .mkv)")
    p.add_argument("--size", default="640x360", help="WIDTHxHEIGHT (default 640x360)")
    p.add_argument("--fps", type=int, default=30)
    p.add_argument("--gop", type=float, default=2.0, help="keyframe interval in seconds (default 2)")
    p.add_argument("--seconds", type=float, default=None, help="loop the 40 s timeline to this length")
    p.add_argument("--preset", default="veryfast", help="x264 preset")
    a = p.parse_args(argv)
    w, h = (int(v) for v in a.size.lower().split("x"))
    labels = write_clip(a.out, width=w, height=h, fps=a.fps, gop_s=a.gop, seconds=a.seconds, preset=a.preset)
    print(f"wrote {a.out} ({labels['duration']} s, {w}x{h}@{a.fps}, GOP {labels['gop_s']} s)")


if __name__ == "__main__":
    main()
