#!/usr/bin/env python3
"""Encode a labelled concert-like clip with planted compliance events (tests, benchmarks, ``make demo``).

Scenes are real photos from ``skimage.data`` drifting slowly (so the picture is alive but samples
dedupe), with planted events at known offsets, written to ``<clip>.labels.json``:

- a Chinese contact-spam caption (``contact_spam``), an unauthorised brand caption
  (``unauthorized_brand``), a sponsor caption that must NOT alert, an off-site QR code (``qr_code``),
  a black segment (``stream_black``) and a frozen segment (``stream_frozen``).

Captions are drawn with Noto Sans CJK (Debian ``fonts-noto-cjk``).
Usage: ``python tools/make_concert_clip.py OUT.mp4 [--size 640x360] [--fps 25] [--loops N]``.
"""

from __future__ import annotations

import argparse
import io
import json
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

FONT = Path("/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc")


@dataclass(frozen=True, slots=True)
class Scene:
    start: float
    end: float
    kind: str  # drift | still (fixed photo with a small blinking live badge) | black | frozen
    photo: str = ""
    caption: str = ""
    qr: str = ""
    expect: str = ""  # the rule that must fire at ``start`` ("" = none; "sponsor" = must stay silent)


# One pass (64 s). --loops repeats it (offsets shift by the pass length).
PASS: tuple[tuple[float, str, str, str, str, str], ...] = (
    (8, "drift", "astronaut", "", "", ""),
    (6, "drift", "coffee", "关注主播 加微信 xiaomei88 领福利", "", "contact_spam"),
    (6, "drift", "chelsea", "", "", ""),
    (6, "drift", "rocket", "Monster Energy 能量饮料 限时特惠", "", "unauthorized_brand"),
    (6, "drift", "astronaut", "感谢 Red Bull 红牛 倾情赞助", "", "sponsor"),
    (6, "drift", "coffee", "", "https://evil.example/join?g=88", "qr_code"),
    (6, "black", "", "", "", "stream_black"),
    (6, "drift", "chelsea", "", "", ""),
    (8, "frozen", "", "", "", "stream_frozen"),
    (6, "drift", "rocket", "", "", ""),
)


Timeline = tuple[tuple[float, str, str, str, str, str], ...]


def scenes(loops: int = 1, timeline: Timeline = PASS) -> list[Scene]:
    out, t = [], 0.0
    for _ in range(loops):
        for dur, kind, photo, caption, qr, expect in timeline:
            out.append(Scene(t, t + dur, kind, photo, caption, qr, expect))
            t += dur
    return out


def photo(name: str, w: int, h: int) -> np.ndarray:
    import skimage.data

    img = np.asarray(getattr(skimage.data, name)())
    img = np.stack([img] * 3, -1) if img.ndim == 2 else img[..., :3]
    f = max(w / img.shape[1], h / img.shape[0]) * 1.25
    return cv2.resize(img, (int(img.shape[1] * f) + 2, int(img.shape[0] * f) + 2), interpolation=cv2.INTER_AREA)


def caption_band(text: str, w: int, h: int) -> np.ndarray:
    if not FONT.exists():
        raise SystemExit(f"{FONT} not found: install Debian's fonts-noto-cjk (`make demo` does as root; or apt-get install it)")
    band_h = int(h * 0.16)
    img = Image.new("RGB", (w, band_h), (12, 12, 30))
    draw = ImageDraw.Draw(img)
    font = ImageFont.truetype(str(FONT), int(band_h * 0.5))
    draw.text((int(w * 0.04), int(band_h * 0.2)), text, font=font, fill=(255, 255, 255))
    return np.asarray(img)


def qr_image(payload: str, side: int) -> np.ndarray:
    import segno

    buf = io.BytesIO()
    segno.make(payload, error="m").save(buf, kind="png", scale=8, border=4)
    img = cv2.imdecode(np.frombuffer(buf.getvalue(), np.uint8), cv2.IMREAD_GRAYSCALE)
    img = cv2.resize(img, (side, side), interpolation=cv2.INTER_NEAREST)
    return np.stack([img] * 3, -1)


class Painter:
    def __init__(self, w: int, h: int) -> None:
        self.w, self.h = w, h
        self._cache: dict[str, np.ndarray] = {}
        self._last: np.ndarray | None = None
        self._frozen: np.ndarray | None = None

    def _get(self, key: str, make: object) -> np.ndarray:
        if key not in self._cache:
            self._cache[key] = make()  # type: ignore[operator]
        return self._cache[key]

    def frame(self, s: Scene, t: float) -> np.ndarray:
        w, h = self.w, self.h
        if s.kind == "black":
            out = np.zeros((h, w, 3), np.uint8)
        elif s.kind == "frozen":
            if self._frozen is None:
                self._frozen = (self._last if self._last is not None else np.zeros((h, w, 3), np.uint8)).copy()
            out = self._frozen
        else:
            img = self._get(s.photo, lambda: photo(s.photo, w, h))
            u = (t - s.start) / (s.end - s.start) if s.kind == "drift" else 0.0
            x = int((img.shape[1] - w) * (0.35 + 0.15 * u))  # a slow drift: alive, but samples dedupe
            y = int((img.shape[0] - h) * 0.5)
            out = img[y : y + h, x : x + w].copy()
            if s.caption:
                band = self._get("cap:" + s.caption, lambda: caption_band(s.caption, w, h))
                out[h - band.shape[0] - int(h * 0.04) : h - int(h * 0.04)] = band
            if s.kind == "still":  # a blinking "live" badge: the picture is not frozen, the scene is static
                side = max(8, int(h * 0.11))
                on = int(t * 3) % 2 == 0  # flips every 1/3 s, so 1 s samples alternate
                out[int(h * 0.04) : int(h * 0.04) + side, w - int(w * 0.03) - side : w - int(w * 0.03)] = (
                    (230, 30, 30) if on else (90, 10, 10)
                )
            if s.qr:
                side = int(h * 0.42)
                code = self._get("qr:" + s.qr, lambda: qr_image(s.qr, side))
                out[int(h * 0.08) : int(h * 0.08) + side, int(w * 0.06) : int(w * 0.06) + side] = code
        if s.kind != "frozen":
            self._frozen = None
        self._last = out
        return np.ascontiguousarray(out)


def write_concert_clip(
    path: str | Path, *, width: int = 640, height: int = 360, fps: int = 25, loops: int = 1, timeline: Timeline = PASS
) -> dict[str, object]:
    path = Path(path)
    sc = scenes(loops, timeline)
    gop = 2 * fps
    fmt = {".flv": "flv", ".ts": "mpegts", ".mkv": "matroska"}.get(path.suffix.lower())
    painter = Painter(width, height)
    with av.open(str(path), "w", format=fmt) as out:
        params = f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes=2"  # a keyframe every 2 s exactly
        st = out.add_stream("libx264", rate=fps, options={"preset": "veryfast", "x264-params": params})
        st.width, st.height, st.pix_fmt = width, height, "yuv420p"
        st.codec_context.gop_size = gop
        st.codec_context.time_base = Fraction(1, fps)
        st.thread_type = "FRAME"
        si = 0
        for i in range(round(sc[-1].end * fps)):
            t = i / fps
            while si < len(sc) - 1 and t >= sc[si].end - 1e-9:
                si += 1
            vf = av.VideoFrame.from_ndarray(painter.frame(sc[si], t), format="rgb24")
            vf.pts = i
            vf.time_base = Fraction(1, fps)
            for p in st.encode(vf):
                out.mux(p)
        for p in st.encode(None):
            out.mux(p)
    labels: dict[str, object] = {
        "duration": sc[-1].end,
        "fps": fps,
        "planted": [{"rule": s.expect, "offset": s.start} for s in sc if s.expect and s.expect != "sponsor"],
        "silent": [[s.start, s.end] for s in sc if s.expect == "sponsor" or (not s.expect and s.kind == "drift")],
        "scenes": [asdict(s) for s in sc],
    }
    Path(str(path) + ".labels.json").write_text(json.dumps(labels, ensure_ascii=False, indent=1))
    return labels


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--size", default="640x360")
    ap.add_argument("--fps", type=int, default=25)
    ap.add_argument("--loops", type=int, default=1)
    a = ap.parse_args()
    w, h = (int(v) for v in a.size.split("x"))
    labels = write_concert_clip(a.out, width=w, height=h, fps=a.fps, loops=a.loops)
    print(f"wrote {a.out} ({labels['duration']:.0f} s) and {a.out}.labels.json")


if __name__ == "__main__":
    main()
