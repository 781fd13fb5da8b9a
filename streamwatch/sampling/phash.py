"""64-bit perceptual hash compatible with ``imagehash.phash``.

imagehash: ``convert("L")`` (BT.601 luma of the RGB picture) → antialiased LANCZOS resize to 32×32
(Pillow: a horizontal then a vertical pass, each rounded to 8 bits) → type-II DCT (scipy,
unnormalised) on both axes → top-left 8×8 including DC → bit = coefficient > median, row-major.

Here the same steps on the same L image (:meth:`Frame.luminance`, i.e. ``cv2.cvtColor(RGB2GRAY)``
of the decoded RGB picture, which equals Pillow's L), with two shortcuts: the image is first
box-filtered by an integer factor to about 256 px on its short side (OpenCV's integer-factor fast
path), and the two Lanczos passes are small matrix products with cached Pillow weights (rounded to
8 bits after each pass, as Pillow does); only the 8 low-frequency DCT rows are computed. On decoded
720p/1080p video frames this is within 0.1–0.4 bit of imagehash on average (``tools/bench/phash.py``).
The decoder's own luma plane (limited range, no RGB clipping) would be about 1.5 bits off: near-median
coefficients flip on small value changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any

import cv2
import numpy as np

from streamwatch.errors import SamplingError

HASH_INPUT = 256  # short side the integer-factor box filter keeps before the Lanczos step


@dataclass(frozen=True, slots=True, order=True)
class PHash:
    """A 64-bit perceptual hash. ``a - b`` is the Hamming distance; ``str()`` is 16 hex digits."""

    value: int

    def __post_init__(self) -> None:
        if not 0 <= self.value < 1 << 64:
            raise ValueError("a PHash is a 64-bit unsigned value")

    def __sub__(self, other: PHash) -> int:
        return (self.value ^ other.value).bit_count()

    def __str__(self) -> str:
        return f"{self.value:016x}"

    @classmethod
    def from_hex(cls, text: str) -> PHash:
        if len(text) != 16:
            raise ValueError(f"expected 16 hex digits, got {text!r}")
        return cls(int(text, 16))

    @classmethod
    def from_bits(cls, bits: np.ndarray) -> PHash:
        """From an 8×8 boolean array, row-major, first bit most significant (imagehash's order)."""
        flat = np.asarray(bits, bool).ravel()
        if flat.size != 64:
            raise ValueError("expected 64 bits")
        return cls(int.from_bytes(np.packbits(flat).tobytes(), "big"))

    def bits(self) -> np.ndarray:
        return np.unpackbits(np.frombuffer(self.value.to_bytes(8, "big"), np.uint8)).astype(bool).reshape(8, 8)


def _lanczos3(x: np.ndarray) -> np.ndarray:
    return np.where(np.abs(x) < 3.0, np.sinc(x) * np.sinc(x / 3.0), 0.0)


@cache
def _resample_matrix(n_in: int, n_out: int) -> np.ndarray:
    """Rows of antialiased Lanczos-3 weights, as Pillow computes them for a downscale."""
    scale = n_in / n_out
    filterscale = max(scale, 1.0)
    support = 3.0 * filterscale
    m = np.zeros((n_out, n_in), np.float64)
    for i in range(n_out):
        center = (i + 0.5) * scale
        lo, hi = max(int(center - support + 0.5), 0), min(int(center + support + 0.5), n_in)
        xs = np.arange(lo, hi)
        w = _lanczos3((xs - center + 0.5) / filterscale)
        m[i, lo:hi] = w / w.sum()
    return m.astype(np.float32)


@cache
def _dct8() -> np.ndarray:
    """The first 8 rows of scipy's unnormalised 32-point DCT-II (8 × 32)."""
    k = np.arange(8)[:, None]
    n = np.arange(32)[None, :]
    return np.ascontiguousarray((2.0 * np.cos(np.pi * k * (2 * n + 1) / 64.0)).astype(np.float32))


def reduce_gray(gray: np.ndarray, side: int = HASH_INPUT) -> np.ndarray:
    """Box-filter ``gray`` by the largest integer factor that keeps both sides ≥ ``side``.

    The edges are trimmed to a multiple of the factor (a few pixels at most) so OpenCV takes its
    integer-factor fast path.
    """
    h, w = gray.shape
    f = max(min(h, w) // side, 1)
    if f == 1:
        return gray
    gray = gray[: h - h % f, : w - w % f]
    return cv2.resize(gray, ((w - w % f) // f, (h - h % f) // f), interpolation=cv2.INTER_AREA)


def phash_luma(luma: np.ndarray) -> PHash:
    """pHash of a 2-D 8-bit grayscale image (an L image: :meth:`Frame.luminance`, or a reduced copy).

    Raises :class:`SamplingError` for anything but a non-empty 2-D array.
    """
    if luma.ndim != 2 or luma.shape[0] < 1 or luma.shape[1] < 1:
        raise SamplingError(f"phash needs a non-empty 2-D grayscale image, got shape {luma.shape}")
    reduced = reduce_gray(luma).astype(np.float32)
    # cv2.gemm, not numpy's @: OpenBLAS threads spin after each call and starve the decoder threads
    # (measured: +40% decode time in the ingest benchmark).
    gemm: Any = cv2.gemm  # the stubs do not allow src3=None, which OpenCV accepts with beta=0
    h, w = reduced.shape
    rows = np.rint(gemm(reduced, _resample_matrix(w, 32), 1.0, None, 0.0, flags=cv2.GEMM_2_T)).clip(0, 255)  # H × 32
    small = np.rint(gemm(_resample_matrix(h, 32), rows, 1.0, None, 0.0)).clip(0, 255)  # 32 × 32, as Pillow's uint8 result
    d8 = _dct8()
    coeffs = gemm(gemm(d8, small, 1.0, None, 0.0), d8, 1.0, None, 0.0, flags=cv2.GEMM_2_T)  # 8 × 8
    return PHash.from_bits(coeffs > np.median(coeffs))
