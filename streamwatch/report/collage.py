"""The fan-art collage and slideshow: the audience images that received replies (pure image building).

Only :class:`~streamwatch.events.model.ReplyEvent` images are used — a rejected submission has no
reply, so it can never appear. Captions carry the fan's name (Noto Sans CJK when installed).
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

FONTS = (Path("/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc"), Path("/usr/share/fonts/truetype/wqy/wqy-microhei.ttc"))


def _fit(img: np.ndarray, side: int) -> np.ndarray:
    """``img`` letterboxed into a ``side`` × ``side`` dark square (aspect kept)."""
    h, w = img.shape[:2]
    s = side / max(h, w)
    small = cv2.resize(img, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_CUBIC)
    out = np.full((side, side, 3), 24, np.uint8)
    y, x = (side - small.shape[0]) // 2, (side - small.shape[1]) // 2
    out[y : y + small.shape[0], x : x + small.shape[1]] = small
    return out


def collage(items: Sequence[tuple[np.ndarray, str]], *, cols: int = 4, cell: int = 240, caption_h: int = 36) -> np.ndarray:
    """One RGB image: a grid of ``cell``-px tiles, each with its caption (the fan's name) underneath.

    Raises ValueError for no items.
    """
    from PIL import Image, ImageDraw, ImageFont

    if not items:
        raise ValueError("a collage needs at least one image")
    cols = max(1, min(cols, len(items)))
    rows = -(-len(items) // cols)
    pad = 8
    canvas = Image.new("RGB", (cols * (cell + pad) + pad, rows * (cell + caption_h + pad) + pad), (16, 16, 28))
    font_path = next((f for f in FONTS if f.exists()), None)
    font = ImageFont.truetype(str(font_path), 20) if font_path else ImageFont.load_default()
    draw = ImageDraw.Draw(canvas)
    for i, (img, caption) in enumerate(items):
        r, c = divmod(i, cols)
        x, y = pad + c * (cell + pad), pad + r * (cell + caption_h + pad)
        canvas.paste(Image.fromarray(_fit(img, cell)), (x, y))
        text = caption if len(caption) <= 14 else caption[:13] + "…"
        draw.text((x + 4, y + cell + 6), text, font=font, fill=(235, 235, 245))
    return np.asarray(canvas)


def slideshow(path: Path, images: Sequence[np.ndarray], *, seconds_each: float = 2.0, side: int = 720, fps: int = 10) -> Path:
    """An H.264 MP4 showing each image for ``seconds_each`` (letterboxed to ``side`` square)."""
    import av

    with av.open(str(path), "w") as out:
        st = out.add_stream("libx264", rate=fps, options={"preset": "veryfast"})
        st.width, st.height, st.pix_fmt = side, side, "yuv420p"
        n = 0
        for img in images:
            frame = av.VideoFrame.from_ndarray(_fit(img, side), format="rgb24")
            for _ in range(max(1, round(seconds_each * fps))):
                frame.pts, frame.time_base = n, Fraction(1, fps)
                n += 1
                for p in st.encode(frame):
                    out.mux(p)
        for p in st.encode(None):
            out.mux(p)
    return path
