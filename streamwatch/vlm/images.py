"""Fitting images to what a VLM server accepts. Pure: sizes in, a plan out (no pixels, no I/O).

Qwen-VL and GLM-V processors cut images into patches (28 px for Qwen2.5-VL / GLM-4.xV, 32 px for
Qwen3-VL: the ViT patch times the 2×2 token merge) and refuse, or crash on, an image whose short side
is below one patch or whose aspect ratio passes 200 (vLLM answers 500, Ollama's runner panics). Fans
send 24×24 stickers, 332×27 banners and 690×15420 scrolling screenshots, so every image is planned as:

- **one image** when its long side is within ``side`` or its aspect ratio within ``tile_aspect``:
  the long side scaled down to ``side`` (never up), as before;
- **tiles** otherwise: cut along the long side into at most ``max_tiles`` equal pieces (no more than
  the aspect ratio or the long side needs), each scaled to the area of a ``side``×``side`` image, so
  a long screenshot keeps readable text instead of becoming a 23-px-wide strip; neighbouring tiles
  share ``2 · OVERLAP`` of a piece's length, so a line of text cut by a boundary is whole in one;
- then every piece is fitted: a short side below ``min_side`` is **scaled up** to it when the result
  stays within the aspect and token limits, and **padded** (content centred on a grey canvas)
  otherwise; sides are snapped to the nearest multiple of ``patch`` (as the processors' own
  ``smart_resize`` does) and never end below ``min_side``; a canvas beyond ``max_aspect`` has its
  short side padded; the request's tokens (``(W / patch) · (H / patch)`` per image, summed) stay
  within ``max_tokens`` by scaling down.

Guarantees (property-tested over generated shapes from 1×1 to 690×15420 and aspect ratios to 15420):
every canvas side is a multiple of ``patch`` and ≥ ``min_side``; aspect ≤ ``max_aspect``; the sum of
tokens ≤ ``max_tokens``; the crops cover the source in order, neighbours overlapping by at most
``2 · OVERLAP`` of a piece; content fits its canvas.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

OVERLAP = 0.03  # of a tile's nominal length, added beyond each cut between two tiles


@dataclass(frozen=True, slots=True)
class ImageLimits:
    """What one model accepts. Sides in px; tokens counted as ``(W / patch) · (H / patch)`` per image."""

    side: int = 512  # long side of an untiled image (never scaled up to it)
    min_side: int = 32  # shortest side the server accepts
    patch: int = 32  # sides are multiples of this (ViT patch × token merge)
    max_tokens: int = 1280  # image tokens of one request, all tiles together
    max_tiles: int = 4  # images one picture may become
    tile_aspect: float = 3.0  # pictures longer than this (and than ``side``) are tiled
    max_aspect: float = 200.0  # canvases beyond this ratio have their short side padded

    @property
    def floor(self) -> int:
        """The smallest side a canvas may have: ``min_side`` rounded up to a multiple of ``patch``."""
        return _ceil_to(max(self.min_side, 1), self.patch)

    def problems(self) -> list[str]:
        """Why these limits cannot always be met (empty when they can)."""
        out = []
        if self.floor > self.side:
            out.append(f"min_side {self.min_side} (as patches of {self.patch}: {self.floor}) is above side {self.side}")
        least = self.max_tiles * (self.floor // self.patch) ** 2
        if self.max_tokens < least:
            out.append(f"max_tokens {self.max_tokens} is below {least} (max_tiles × the smallest image, {self.floor}×{self.floor})")
        if self.max_aspect < 1 or self.tile_aspect < 1:
            out.append("aspect limits must be at least 1")
        return out


@dataclass(frozen=True, slots=True)
class Tile:
    """One image to send: a crop of the source, resized to ``content``, centred on a ``width``×``height`` canvas."""

    x: int  # crop in the source, px
    y: int
    w: int
    h: int
    content_w: int  # crop after resizing, px
    content_h: int
    width: int  # canvas sent (multiples of the patch); the margin around the content is padding
    height: int

    @property
    def padded(self) -> bool:
        return (self.content_w, self.content_h) != (self.width, self.height)

    def tokens(self, patch: int) -> int:
        return (self.width // patch) * (self.height // patch)


def plan(width: int, height: int, limits: ImageLimits) -> tuple[Tile, ...]:
    """The images a ``width``×``height`` picture is sent as (in reading order: left→right or top→bottom).

    Raises ``ValueError`` for an empty picture or limits that cannot be met (:meth:`ImageLimits.problems`).
    """
    if width < 1 or height < 1:
        raise ValueError(f"an image needs at least 1×1 px, not {width}×{height}")
    bad = limits.problems()
    if bad:
        raise ValueError("; ".join(bad))
    long, short = max(width, height), min(width, height)
    n = 1
    if long > limits.side and long / short > limits.tile_aspect:
        n = min(limits.max_tiles, math.ceil(long / short / limits.tile_aspect), math.ceil(long / limits.side))
    budget = limits.max_tokens // n
    cuts = [round(i * long / n) for i in range(n + 1)]
    extra = math.ceil(OVERLAP * long / n) if n > 1 else 0
    tiles = []
    for a, b in itertools.pairwise(cuts):
        a, b = max(0, a - extra), min(long, b + extra)
        x, y, w, h = (a, 0, b - a, height) if width >= height else (0, a, width, b - a)
        scale = min(1.0, limits.side / max(w, h)) if n == 1 else min(1.0, limits.side / math.sqrt(w * h))
        tiles.append(_fit(x, y, w, h, scale, budget, limits))
    return tuple(tiles)


def _fit(x: int, y: int, w: int, h: int, scale: float, budget: int, lim: ImageLimits) -> Tile:
    """The piece at ``scale`` (or scaled up to the minimum side), snapped and padded, within ``budget`` tokens."""
    if min(w, h) * scale < lim.floor:  # too thin: scale up to the minimum side if that fits
        up = _canvas(x, y, w, h, lim.floor / min(w, h), lim)
        if up.tokens(lim.patch) <= budget and max(up.width, up.height) <= lim.max_aspect * min(up.width, up.height):
            return up
    while True:
        tile = _canvas(x, y, w, h, scale, lim)
        if tile.tokens(lim.patch) <= budget:
            return tile
        scale *= min(0.95, math.sqrt(budget / tile.tokens(lim.patch)))


def _canvas(x: int, y: int, w: int, h: int, scale: float, lim: ImageLimits) -> Tile:
    cw, ch = max(1, round(w * scale)), max(1, round(h * scale))
    width, height = _snap(cw, lim), _snap(ch, lim)
    # content at least the floor is resized onto the snapped side (≤ patch/2 px off); thinner content is padded
    cw, ch = (width if cw >= lim.floor else cw), (height if ch >= lim.floor else ch)
    if max(width, height) > lim.max_aspect * min(width, height):  # pad the short side up to the ratio
        if width < height:
            width = _ceil_to(math.ceil(height / lim.max_aspect), lim.patch)
        else:
            height = _ceil_to(math.ceil(width / lim.max_aspect), lim.patch)
    return Tile(x, y, w, h, cw, ch, width, height)


def _snap(side: int, lim: ImageLimits) -> int:
    return max(lim.floor, round(side / lim.patch) * lim.patch)


def _ceil_to(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG's frame header, without decoding it; None when it is not a JPEG."""
    if data[:2] != b"\xff\xd8":
        return None
    i = 2
    while i + 9 < len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if 0xD0 <= marker <= 0xD9 or marker == 0x01:  # no length
            i += 2
            continue
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # start of frame
            return int.from_bytes(data[i + 7 : i + 9], "big"), int.from_bytes(data[i + 5 : i + 7], "big")
        i += 2 + length
    return None


def request_fits(sizes: list[tuple[int, int]], limits: ImageLimits) -> bool:
    """Whether images of these (width, height) can be sent as they are: every side ≥ ``min_side``,
    every aspect ratio ≤ ``max_aspect``, and their tokens (sides rounded up to patches) ≤ ``max_tokens``."""
    tokens = 0
    for width, height in sizes:
        long, short = max(width, height), min(width, height)
        if short < limits.min_side or long > limits.max_aspect * short:
            return False
        tokens += math.ceil(width / limits.patch) * math.ceil(height / limits.patch)
    return tokens <= limits.max_tokens
