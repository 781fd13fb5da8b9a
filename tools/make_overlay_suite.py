#!/usr/bin/env python3
"""Encode the overlay suite: calm pictures with small overlays that come and go (tests, benchmarks).

Each clip is a real photo from ``skimage.data`` — still, or panning slowly — at a real stream size,
with small overlays appearing for 2–6 s at known times: Chinese and English captions 20–34 px high
(contact spam, gambling, a brand, and clean captions that must stay silent), QR codes 80–250 px
(dark-on-light and light-on-dark, near an edge). A 64-bit global pHash moves by 0–2 bits for most
of them. Labels (``<clip>.labels.json``) list every overlay with the rule it must raise ("" = none).

The second part (``--kinds``, clips in tools/overlay_kinds.py) moves the camera (pan, zoom, shake) and
plants the variants spammers answer a caught caption with: translucent captions, marquees, 16 px
corner text, vertical text at an edge, skewed QR codes and QR codes with a logo, and clean look-alikes.

Captions are drawn with Noto Sans CJK (Debian ``fonts-noto-cjk``); QR codes with segno.
Usage: ``python tools/make_overlay_suite.py OUT_DIR [--kinds] [--only NAME]``.
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
    case: str = ""  # the spammers' variant this overlay stands for ("" = the plain caption or QR)
    alpha: float = 1.0  # opacity of the whole overlay (translucent captions: 0.4–0.6)
    speed: float = 0.0  # caption: px per second it scrolls left (a marquee entering at the right edge)
    vertical: bool = False  # caption: one character per line
    color: tuple[int, int, int] = (255, 255, 255)  # caption: text colour (the outline is its opposite)
    skew: float = 0.0  # QR: degrees of rotation, with a perspective tilt of the same size
    logo: bool = False  # QR: error correction H and a logo over the centre


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
    camera: str = ""  # "" (still or pan) | zoom (slow zoom in, ``pan`` % per second) | shake (hand-held jitter, ``pan`` px)


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


def background(name: str, w: int, h: int, pan_px: float, margin: int = 0) -> np.ndarray:
    import skimage.data

    img = np.asarray(getattr(skimage.data, name)())
    img = np.stack([img] * 3, -1) if img.ndim == 2 else img[..., :3]
    f = max((w + pan_px + 4 + 2 * margin) / img.shape[1], (h + 2 * margin) / img.shape[0])
    return cv2.resize(img, (int(img.shape[1] * f) + 2, int(img.shape[0] * f) + 2), interpolation=cv2.INTER_AREA)


def caption_image(
    text: str, px: int, band: bool = False, *, color: tuple[int, int, int] = (255, 255, 255), vertical: bool = False
) -> np.ndarray:
    """RGBA image of a caption whose text is about ``px`` high (one character per line if ``vertical``),
    on a dark band or with an outline (dark around light text, white around dark or coloured text)."""
    if not FONT.exists():
        raise SystemExit(f"{FONT} not found: install Debian's fonts-noto-cjk")
    font = ImageFont.truetype(str(FONT), px)
    stroke = 0 if band else (1 if px < 20 else 2)
    outline = (0, 0, 0, 255) if sum(color) > 480 else (255, 255, 255, 255)
    lines = list(text) if vertical else [text]
    step = int(px * 1.2)
    boxes = [font.getbbox(t, stroke_width=stroke) for t in lines]
    x0, y0 = min(b[0] for b in boxes), min(b[1] for b in boxes)
    tw = max(b[2] for b in boxes) - x0
    th = (len(lines) - 1) * step + max(b[3] for b in boxes) - y0
    pad = max(px // 3, 4)
    img = Image.new("RGBA", (tw + 2 * pad, th + 2 * pad), (10, 10, 30, 210) if band else (0, 0, 0, 0))
    draw = ImageDraw.Draw(img)
    for i, (t, b) in enumerate(zip(lines, boxes, strict=True)):
        dx = (tw - (b[2] - b[0])) // 2 if vertical else 0
        draw.text((pad - b[0] + dx, pad - y0 + i * step), t, font=font, fill=(*color, 255), stroke_width=stroke, stroke_fill=outline)
    return np.asarray(img)


def qr_image(payload: str, side: int, inverted: bool = False, *, logo: bool = False, skew: float = 0.0) -> np.ndarray:
    """RGBA image of a QR code ``side`` px wide (before any skew), with its quiet zone."""
    import segno

    buf = io.BytesIO()
    segno.make(payload, error="h" if logo else "m").save(buf, kind="png", scale=8, border=4)
    img = cv2.imdecode(np.frombuffer(buf.getvalue(), np.uint8), cv2.IMREAD_GRAYSCALE)
    img = cv2.resize(img, (side, side), interpolation=cv2.INTER_AREA)
    if inverted:
        img = 255 - img
    rgba = np.dstack([img, img, img, np.full_like(img, 255)])
    if logo:  # a brand badge over the centre (about 6% of the code's area): level H restores it
        s, c = side // 4, side // 2
        cv2.rectangle(rgba, (c - s // 2, c - s // 2), (c + s // 2, c + s // 2), (220, 30, 40, 255), -1)
        cv2.circle(rgba, (c, c), s // 3, (255, 255, 255, 255), -1)
    return skewed(rgba, skew) if skew else rgba


def skewed(rgba: np.ndarray, degrees: float) -> np.ndarray:
    """``rgba`` tilted away (its right side shrinks as on a card turned by ``degrees``) and rotated by ``degrees``."""
    h, w = rgba.shape[:2]
    tilt = np.sin(np.radians(degrees)) * 0.5 * h / 2
    quad = np.float32([[0, 0], [w * 0.95, tilt], [w * 0.95, h - tilt], [0, h]]) - np.float32([w / 2, h / 2])
    a = np.radians(degrees)
    rot = np.float32([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    dst = quad @ rot.T
    dst -= dst.min(0)
    size = (int(np.ceil(dst[:, 0].max())) + 1, int(np.ceil(dst[:, 1].max())) + 1)
    m = cv2.getPerspectiveTransform(np.float32([[0, 0], [w, 0], [w, h], [0, h]]), dst.astype(np.float32))
    return cv2.warpPerspective(rgba, m, size, flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0, 0))


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
    if o.kind == "qr":
        return qr_image(o.text, o.size, o.inverted, logo=o.logo, skew=o.skew)
    return caption_image(o.text, o.size, o.band, color=o.color, vertical=o.vertical)


def paste(frame: np.ndarray, rgba: np.ndarray, x: int, y: int, alpha: float = 1.0) -> None:
    """Blend ``rgba`` onto ``frame`` with its top-left corner at (x, y); what falls outside is cut off."""
    fh, fw = frame.shape[:2]
    oh, ow = rgba.shape[:2]
    x1, y1, x2, y2 = max(x, 0), max(y, 0), min(x + ow, fw), min(y + oh, fh)
    if x2 <= x1 or y2 <= y1:
        return
    part = rgba[y1 - y : y2 - y, x1 - x : x2 - x]
    a = part[..., 3:4].astype(np.float32) / 255.0 * alpha
    roi = frame[y1:y2, x1:x2].astype(np.float32)
    frame[y1:y2, x1:x2] = (roi * (1 - a) + part[..., :3].astype(np.float32) * a).astype(np.uint8)


SHAKE_MARGIN = 24  # px of picture kept around the view for a shaking camera


def view(bg: np.ndarray, c: SuiteClip, t: float, jitter: tuple[float, float]) -> np.ndarray:
    """The camera's picture at ``t``: a still or panning window, a slow zoom into the centre, or a shaking window."""
    m = SHAKE_MARGIN if c.camera == "shake" else 0
    y = (bg.shape[0] - c.height) // 2
    if c.camera == "zoom":
        x = (bg.shape[1] - c.width) // 2
        s = 1 + c.pan / 100 * t
        cw, ch = c.width / s, c.height / s
        cx, cy = x + c.width / 2, y + c.height / 2
        crop = bg[int(cy - ch / 2) : int(cy + ch / 2), int(cx - cw / 2) : int(cx + cw / 2)]
        return cv2.resize(crop, (c.width, c.height), interpolation=cv2.INTER_LINEAR)
    if c.camera == "shake":
        x, y = m + round(jitter[0] * c.pan), y + round(jitter[1] * c.pan)
    else:
        x = int(c.pan * t)
    return np.ascontiguousarray(bg[y : y + c.height, x : x + c.width])


def write_clip(c: SuiteClip, out: Path) -> dict[str, object]:
    """Encode ``c`` (H.264, 2 s GOP, x264 veryfast with B-frames) to ``out`` and write its labels."""
    moving = c.camera == ""
    bg = background(c.photo, c.width, c.height, c.pan * c.seconds if moving else 0.0, SHAKE_MARGIN if c.camera == "shake" else 0)
    pictures = [overlay_rgba(o) for o in c.overlays]
    rng = np.random.default_rng(len(c.name))  # a hand-held camera: a slow sway plus a tremor, in [-1, 1]
    with av.open(str(out), "w") as container:
        gop = 2 * c.fps
        st = container.add_stream("libx264", rate=c.fps, options={"preset": "veryfast", "x264-params": f"keyint={gop}:min-keyint={gop}"})
        st.width, st.height, st.pix_fmt = c.width, c.height, "yuv420p"
        st.thread_type = "FRAME"  # one slice per frame, as real encoders write
        for i in range(c.seconds * c.fps):
            t = i / c.fps
            sway = (0.6 * np.sin(2.1 * t), 0.6 * np.cos(1.7 * t))
            jitter = (sway[0] + 0.4 * rng.uniform(-1, 1), sway[1] + 0.4 * rng.uniform(-1, 1))
            frame = view(bg, c, t, jitter).copy()
            for o, rgba in zip(c.overlays, pictures, strict=True):
                if o.start <= t < o.end:
                    x, y = place(o.where, rgba.shape[1], rgba.shape[0], c.width, c.height)
                    if o.speed:  # a marquee: enters at the right edge and scrolls left
                        x = c.width - int(o.speed * (t - o.start))
                    paste(frame, rgba, x, y, o.alpha)
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
        "camera": c.camera or ("pan" if c.pan else "still"),
        "overlays": [asdict(o) for o in c.overlays],
    }
    Path(str(out) + ".labels.json").write_text(json.dumps(labels, ensure_ascii=False, indent=1))
    return labels


def write_suite(out_dir: Path, only: str | None = None, suite: tuple[SuiteClip, ...] = SUITE) -> list[tuple[Path, dict[str, object]]]:
    names = [c.name for c in suite]
    if only is not None and only not in names:
        raise SystemExit(f"no clip {only!r} in the suite; the clips are: {', '.join(names)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    return [(out_dir / f"{c.name}.mp4", write_clip(c, out_dir / f"{c.name}.mp4")) for c in suite if only in (None, c.name)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--only", help="one clip of the suite: " + ", ".join(c.name for c in SUITE) + " (or of --kinds)")
    ap.add_argument("--kinds", action="store_true", help="the second part: moving cameras and the spammers' variants")
    a = ap.parse_args()
    if a.kinds:
        from overlay_kinds import KINDS

    for path, labels in write_suite(a.out, a.only, KINDS if a.kinds else SUITE):
        print(f"wrote {path} ({labels['duration']} s, {len(labels['overlays'])} overlays)")  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
