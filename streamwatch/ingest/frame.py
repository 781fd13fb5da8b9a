"""The decoded-frame record that ingest hands to sampling."""

from __future__ import annotations

from dataclasses import dataclass

import av
import cv2
import numpy as np
from av.sidedata.sidedata import Type

from streamwatch.errors import IngestError

_DISPLAYMATRIX = Type.DISPLAYMATRIX

# Pixel formats whose first plane is 8-bit luma at full resolution.
_LUMA_FIRST = {"yuv420p", "yuvj420p", "yuv422p", "yuvj422p", "yuv444p", "yuvj444p", "nv12", "nv21", "gray"}
_I420 = {"yuv420p", "yuvj420p"}
# swscale threads per conversion: the calling thread. swscale's default (0 = one per core) starts and
# joins a slice-thread pool on every ``reformat`` (PyAV makes a new context per call): hundreds of
# short-lived OS threads a minute with a dozen streams, and more CPU per frame than one thread.
SWS_THREADS = 1


def display_rotation(picture: av.VideoFrame) -> int | None:
    """The display rotation a frame carries (0, 90, 180 or 270 degrees, counter-clockwise), else None.

    The source is the display matrix: a container's (MP4 ``rotate`` from phones, copied onto every
    frame) or an H.264/HEVC display-orientation SEI (mobile RTMP apps; it is on the frames that carry
    it and holds until the next one, so the caller keeps the last value per connection). None: this
    frame has no display matrix.
    """
    if _DISPLAYMATRIX not in picture.side_data:
        return None
    return round(float(picture.rotation) / 90.0) % 4 * 90


def _plane(picture: av.VideoFrame, i: int, w: int, h: int) -> np.ndarray:
    plane = picture.planes[i]
    return np.frombuffer(memoryview(plane), np.uint8).reshape(-1, plane.line_size)[:h, :w]


def upright(picture: av.VideoFrame, rotation: int) -> av.VideoFrame:
    """``picture`` turned by ``rotation`` degrees counter-clockwise (as a player displays it).

    4:2:0 pictures with even sides are turned plane by plane and stay YUV (about 1 ms for 1080p);
    other formats are converted to yuv420p first, odd sizes to rgb24. ``pts`` and ``time_base`` are
    kept. ``rotation`` 0 returns ``picture`` itself.
    """
    k = (rotation // 90) % 4
    if k == 0:
        return picture
    w, h = int(picture.width), int(picture.height)
    if w % 2 or h % 2:
        rgb = np.ascontiguousarray(np.rot90(picture.to_ndarray(format="rgb24", threads=SWS_THREADS), k), dtype=np.uint8)
        out = av.VideoFrame.from_ndarray(rgb, format="rgb24")
    else:
        pic = picture if picture.format.name in _I420 else picture.reformat(format="yuv420p", threads=SWS_THREADS)
        y = np.rot90(_plane(pic, 0, w, h), k)
        u, v = (np.rot90(_plane(pic, i, w // 2, h // 2), k) for i in (1, 2))
        flat = np.concatenate([y.ravel(), u.ravel(), v.ravel()])
        out = av.VideoFrame.from_ndarray(flat.reshape(-1, y.shape[1]), format=pic.format.name)
    out.pts = picture.pts
    if picture.time_base is not None:
        out.time_base = picture.time_base
    return out


@dataclass(frozen=True, slots=True)
class Frame:
    """One decoded video frame with its timing.

    ``offset`` is seconds since the stream session started: continuous across reconnects and PTS
    resets. ``wall`` is the UTC wall time (epoch s) it was received, ``mono`` the monotonic time
    (for latency). ``pts`` is the source's own timestamp in seconds (it may jump back to 0).
    ``picture`` is upright: a display rotation of the source (``rotation``, degrees
    counter-clockwise) was already applied to the pixels, so width and height are the displayed ones.
    """

    stream: str
    seq: int
    offset: float
    wall: float
    mono: float
    pts: float | None
    keyframe: bool
    picture: av.VideoFrame
    rotation: int = 0

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
        return pic.reformat(format="gray", threads=SWS_THREADS).to_ndarray()

    def luminance(self) -> np.ndarray:
        """BT.601 luma of the decoded RGB picture, (height, width) uint8: what Pillow's ``convert("L")``
        gives for ``picture.to_image()`` (the input imagehash hashes). Unlike the luma plane it is
        full range and reflects RGB clipping of saturated colours."""
        return cv2.cvtColor(self.picture.to_ndarray(format="rgb24", threads=SWS_THREADS), cv2.COLOR_RGB2GRAY)

    def gray(self, min_side: int = 128) -> np.ndarray:
        """Grayscale reduced by the largest integer factor that keeps both sides ≥ ``min_side``.

        Done by swscale straight from the YUV picture (~0.15 ms for 1080p), this is the input of the
        quality gate and the perceptual hash.
        """
        w, h = self.width, self.height
        f = max(min(w, h) // min_side, 1)
        if f == 1:
            return self.luma()
        return self.picture.reformat(w // f, h // f, "gray", interpolation="AREA", threads=SWS_THREADS).to_ndarray()

    def rgb(self, max_side: int | None = None) -> np.ndarray:
        """RGB (height, width, 3) uint8, downscaled so the long side is at most ``max_side``."""
        w, h = self.width, self.height
        try:
            if max_side and max(w, h) > max_side:
                scale = max_side / max(w, h)
                w, h = max(2, round(w * scale)), max(2, round(h * scale))
                return self.picture.reformat(w, h, "rgb24", interpolation="AREA", threads=SWS_THREADS).to_ndarray()
            return self.picture.to_ndarray(format="rgb24", threads=SWS_THREADS)
        except (av.FFmpegError, ValueError) as e:  # a pixel format or size swscale cannot convert
            raise IngestError(f"cannot convert a {self.width}x{self.height} {self.picture.format.name} frame to RGB: {e}") from e
