#!/usr/bin/env python3
"""Encode the overlay suite: calm pictures with small overlays that come and go (tests, benchmarks).

Each clip is a real photo from ``skimage.data`` — still, or panning slowly — at a real stream size,
with small overlays appearing for 2–6 s at known times: Chinese and English captions 20–34 px high
(contact spam, gambling, a brand, and clean captions that must stay silent), QR codes 80–250 px
(dark-on-light and light-on-dark, near an edge). A 64-bit global pHash moves by 0–2 bits for most
of them. Labels (``<clip>.labels.json``) list every overlay with the rule it must raise ("" = none).

Captions are drawn with Noto Sans CJK (Debian ``fonts-noto-cjk``); QR codes with segno.
Usage: ``python tools/make_overlay_suite.py OUT_DIR [--only NAME]``.
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
class Overlay:
    start: float
    end: float
    kind: str  # caption | qr
    text: str  # the caption, or the QR payload
    size: int  # caption text height (px) or QR side (px)
    where: str  # bottom-left | bottom-right | top-left | top-right | left-edge | right-edge | center-bottom
    expect: str = ""  # the rule that must fire once within 2 s of ``start``; "" = must stay silent
    inverted: bool = False  # QR: light modules on dark
    band: bool = False  # caption: on a dark band (else bare text with a dark outline)


@dataclass(frozen=True, slots=True)
class SuiteClip:
    name: str
    photo: str
    width: int
    height: int
    fps: int
    seconds: int
    pan: float  # px per second of slow horizontal pan (0 = a still picture)
    overlays: tuple[Overlay, ...]


SUITE: tuple[SuiteClip, ...] = (
    SuiteClip("still-720p", "coffee", 1280, 720, 25, 26, 0.0, (
        Overlay(3.3, 8, "caption", "主播福利 加薇信 abc12345 送礼物", 30, "bottom-left", "contact_spam"),
        Overlay(10.6, 13, "qr", "https://evil.example/join?g=1", 116, "top-right", "qr_code"),
        Overlay(15.2, 19, "caption", "Monster Energy", 22, "bottom-right", "unauthorized_brand"),
        Overlay(21, 24, "caption", "今晚的舞台真好看 谢谢大家", 26, "top-left", ""),
    )),
    SuiteClip("pan-720p", "astronaut", 1280, 720, 25, 26, 8.0, (
        Overlay(2.5, 6, "caption", "真人荷官 在线百家乐 注册就送", 24, "top-left", "gambling", band=True),
        Overlay(8.8, 11.5, "qr", "https://evil.example/vip?c=22", 240, "left-edge", "qr_code", inverted=True),
        Overlay(13.1, 19, "caption", "加V信 mei2024 领取福利", 34, "bottom-right", "contact_spam"),
        Overlay(21, 24, "caption", "Thanks for watching tonight", 20, "bottom-left", ""),
    )),
    SuiteClip("still-1080p", "chelsea", 1920, 1080, 15, 20, 0.0, (
        Overlay(2.4, 5, "qr", "https://evil.example/r/80", 80, "right-edge", "qr_code"),
        Overlay(7.7, 12, "caption", "网赌平台 注册送彩金", 20, "bottom-left", "gambling"),
        Overlay(14, 17, "caption", "Starbucks 星巴克 新品", 28, "top-right", "unauthorized_brand", band=True),
    )),
    SuiteClip("pan-540p", "rocket", 960, 540, 25, 20, 5.0, (
        Overlay(2.9, 6, "qr", "https://evil.example/x?id=250", 250, "right-edge", "qr_code", inverted=True),
        Overlay(8.5, 10.5, "caption", "QQ群 123456789 进群领福利", 22, "center-bottom", "contact_spam"),
        Overlay(12, 16, "caption", "感谢 Red Bull 红牛 倾情赞助", 26, "bottom-left", ""),
    )),
)  # fmt: skip


def background(name: str, w: int, h: int, pan_px: float) -> np.ndarray:
    import skimage.data

    img = np.asarray(getattr(skimage.data, name)())
    img = np.stack([img] * 3, -1) if img.ndim == 2 else img[..., :3]
    f = max((w + pan_px + 4) / img.shape[1], h / img.shape[0])
    return cv2.resize(img, (int(img.shape[1] * f) + 2, int(img.shape[0] * f) + 2), interpolation=cv2.INTER_AREA)


def caption_image(text: str, px: int, band: bool) -> np.ndarray:
    """RGBA image of a caption whose text is about ``px`` high."""
    if not FONT.exists():
        raise SystemExit(f"{FONT} not found: install Debian's fonts-noto-cjk")
    font = ImageFont.truetype(str(FONT), px)
    x0, y0, x1, y1 = font.getbbox(text, stroke_width=2)
    pad = max(px // 3, 4)
    img = Image.new("RGBA", (x1 - x0 + 2 * pad, y1 - y0 + 2 * pad), (10, 10, 30, 210) if band else (0, 0, 0, 0))
    ImageDraw.Draw(img).text((pad - x0, pad - y0), text, font=font, fill=(255, 255, 255, 255), stroke_width=0 if band else 2,
                             stroke_fill=(0, 0, 0, 255))  # fmt: skip
    return np.asarray(img)


def qr_image(payload: str, side: int, inverted: bool) -> np.ndarray:
    import segno

    buf = io.BytesIO()
    segno.make(payload, error="m").save(buf, kind="png", scale=8, border=4)
    img = cv2.imdecode(np.frombuffer(buf.getvalue(), np.uint8), cv2.IMREAD_GRAYSCALE)
    img = cv2.resize(img, (side, side), interpolation=cv2.INTER_AREA)
    if inverted:
        img = 255 - img
    return np.dstack([img, img, img, np.full_like(img, 255)])


def place(where: str, ow: int, oh: int, w: int, h: int) -> tuple[int, int]:
    m = max(int(h * 0.03), 6)
    return {
        "bottom-left": (m * 2, h - oh - m * 2),
        "bottom-right": (w - ow - m * 2, h - oh - m * 2),
        "top-left": (m * 2, m * 2),
        "top-right": (w - ow - m * 2, m * 2),
        "left-edge": (4, (h - oh) // 3),
        "right-edge": (w - ow - 4, (h - oh) // 2),
        "center-bottom": ((w - ow) // 2, h - oh - m * 3),
    }[where]


def overlay_rgba(o: Overlay) -> np.ndarray:
    return qr_image(o.text, o.size, o.inverted) if o.kind == "qr" else caption_image(o.text, o.size, o.band)


def paste(frame: np.ndarray, rgba: np.ndarray, x: int, y: int) -> None:
    oh, ow = rgba.shape[:2]
    a = rgba[..., 3:4].astype(np.float32) / 255.0
    roi = frame[y : y + oh, x : x + ow].astype(np.float32)
    frame[y : y + oh, x : x + ow] = (roi * (1 - a) + rgba[..., :3].astype(np.float32) * a).astype(np.uint8)


def write_clip(c: SuiteClip, out: Path) -> dict[str, object]:
    """Encode ``c`` (H.264, 2 s GOP, x264 veryfast with B-frames) to ``out`` and write its labels."""
    bg = background(c.photo, c.width, c.height, c.pan * c.seconds)
    pictures = [overlay_rgba(o) for o in c.overlays]
    y = (bg.shape[0] - c.height) // 2
    with av.open(str(out), "w") as container:
        gop = 2 * c.fps
        st = container.add_stream("libx264", rate=c.fps, options={"preset": "veryfast", "x264-params": f"keyint={gop}:min-keyint={gop}"})
        st.width, st.height, st.pix_fmt = c.width, c.height, "yuv420p"
        st.thread_type = "FRAME"  # one slice per frame, as real encoders write
        for i in range(c.seconds * c.fps):
            t = i / c.fps
            x = int(c.pan * t)
            frame = np.ascontiguousarray(bg[y : y + c.height, x : x + c.width])
            for o, rgba in zip(c.overlays, pictures, strict=True):
                if o.start <= t < o.end:
                    frame = frame.copy() if frame.base is not None else frame
                    paste(frame, rgba, *place(o.where, rgba.shape[1], rgba.shape[0], c.width, c.height))
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            vf.pts, vf.time_base = i, Fraction(1, c.fps)
            for p in st.encode(vf):
                container.mux(p)
        for p in st.encode(None):
            container.mux(p)
    labels: dict[str, object] = {
        "name": c.name,
        "size": [c.width, c.height],
        "duration": c.seconds,
        "pan": c.pan,
        "overlays": [asdict(o) for o in c.overlays],
    }
    Path(str(out) + ".labels.json").write_text(json.dumps(labels, ensure_ascii=False, indent=1))
    return labels


def write_suite(out_dir: Path, only: str | None = None) -> list[tuple[Path, dict[str, object]]]:
    names = [c.name for c in SUITE]
    if only is not None and only not in names:
        raise SystemExit(f"no clip {only!r} in the suite; the clips are: {', '.join(names)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    return [(out_dir / f"{c.name}.mp4", write_clip(c, out_dir / f"{c.name}.mp4")) for c in SUITE if only in (None, c.name)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--only", help="one clip of the suite: " + ", ".join(c.name for c in SUITE))
    a = ap.parse_args()
    for path, labels in write_suite(a.out, a.only):
        print(f"wrote {path} ({labels['duration']} s, {len(labels['overlays'])} overlays)")  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
