"""The decoded-frame record that ingest hands to sampling."""

from __future__ import annotations

from dataclasses import dataclass

import av
import cv2
import numpy as np

# Pixel formats whose first plane is 8-bit luma at full resolution.
_LUMA_FIRST = {"yuv420p", "yuvj420p", "yuv422p", "yuvj422p", "yuv444p", "yuvj444p", "nv12", "nv21", "gray"}


@dataclass(frozen=True, slots=True)
class Frame:
    """One decoded video frame with its timing.

    ``offset`` is seconds since the stream session started: continuous across reconnects and PTS
    resets. ``wall`` is the UTC wall time (epoch s) it was received, ``mono`` the monotonic time
    (for latency). ``pts`` is the source's own timestamp in seconds (it may jump back to 0).
    """

    stream: str
    seq: int
    offset: float
    wall: float
    mono: float
    pts: float | None
    keyframe: bool
    picture: av.VideoFrame

    @property
    def width(self) -> int:
        return int(self.picture.width)

    @property
    def height(self) -> int:
        return int(self.picture.height)

    def luma(self) -> np.ndarray:
        """The luma plane as a (height, width) uint8 array; a view without a copy when possible."""
        pic = self.picture
        if pic.format.name in _LUMA_FIRST:
            plane = pic.planes[0]
            buf = np.frombuffer(memoryview(plane), np.uint8).reshape(-1, plane.line_size)
            return buf[: pic.height, : pic.width]
        return pic.reformat(format="gray").to_ndarray()

    def luminance(self) -> np.ndarray:
        """BT.601 luma of the decoded RGB picture, (height, width) uint8: what Pillow's ``convert("L")``
        gives for ``picture.to_image()`` (the input imagehash hashes). Unlike the luma plane it is
        full range and reflects RGB clipping of saturated colours."""
        return cv2.cvtColor(self.picture.to_ndarray(format="rgb24"), cv2.COLOR_RGB2GRAY)

    def gray(self, min_side: int = 128) -> np.ndarray:
        """Grayscale reduced by the largest integer factor that keeps both sides ≥ ``min_side``.

        Done by swscale straight from the YUV picture (~0.15 ms for 1080p), this is the input of the
        quality gate and the perceptual hash.
        """
        w, h = self.width, self.height
        f = max(min(w, h) // min_side, 1)
        if f == 1:
            return self.luma()
        return self.picture.reformat(w // f, h // f, "gray", interpolation="AREA").to_ndarray()

    def rgb(self, max_side: int | None = None) -> np.ndarray:
        """RGB (height, width, 3) uint8, downscaled so the long side is at most ``max_side``."""
        w, h = self.width, self.height
        if max_side and max(w, h) > max_side:
            scale = max_side / max(w, h)
            w, h = max(2, round(w * scale)), max(2, round(h * scale))
            return self.picture.reformat(w, h, "rgb24", interpolation="AREA").to_ndarray()
        return self.picture.to_ndarray(format="rgb24")
