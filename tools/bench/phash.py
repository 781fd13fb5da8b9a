#!/usr/bin/env python3
"""pHash agreement and speed: the pipeline's pHash against ``imagehash.phash`` on decoded video frames.

Both start from the same decoded H.264 frame, as in the pipeline: imagehash needs a PIL RGB image
(``frame.to_image()``); streamwatch hashes the frame's L image (``Frame.luminance()`` →
``phash_luma``, what the sampler writes to samples.jsonl). For comparison, the earlier shortcuts:
the decoder's luma plane (``Frame.luma()``) and its reduced copy (``Frame.gray()``), which are faster
but 0.5–1.5 bits off (limited range, no RGB clipping of saturated colours).
Clips: 12 real photos (skimage.data), each drifting for 1 s, encoded with x264 at 720p and 1080p.
Target: mean ≤ 0.5 bit off imagehash on 720p frames; speed printed as a ratio to imagehash.
Run: ``python tools/bench/phash.py``.
"""

from __future__ import annotations

import io
import statistics
import time
from collections.abc import Callable
from fractions import Fraction

import av
import cv2
import imagehash
import numpy as np
import skimage.data

from streamwatch.ingest.frame import Frame
from streamwatch.sampling.phash import PHash, phash_luma

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "cat", "camera", "coins", "clock", "moon", "brick", "grass")


def decoded_frames(w: int, h: int, fps: int = 10) -> list[Frame]:
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        st = out.add_stream("libx264", rate=fps, options={"preset": "veryfast", "crf": "23"})
        st.width, st.height, st.pix_fmt = w, h, "yuv420p"
        st.thread_type = "FRAME"
        i = 0
        for name in PHOTOS:
            a = np.asarray(getattr(skimage.data, name)())
            a = np.stack([a] * 3, -1) if a.ndim == 2 else a[..., :3]
            big = cv2.resize(np.ascontiguousarray(a).astype(np.uint8), (w + fps * 4, h), interpolation=cv2.INTER_CUBIC)
            for k in range(fps):  # a slow drift, one second per photo
                vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(big[:, k * 4 : k * 4 + w]), format="rgb24")
                vf.pts, vf.time_base = i, Fraction(1, fps)
                i += 1
                for p in st.encode(vf):
                    out.mux(p)
        for p in st.encode(None):
            out.mux(p)
    buf.seek(0)
    with av.open(buf) as inp:
        return [Frame("bench", n, n / fps, 0.0, 0.0, n / fps, True, f) for n, f in enumerate(inp.decode(video=0)) if n % 3 == 0]


def timed(fn: Callable[[Frame], object], items: list[Frame], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        for x in items:
            fn(x)
        best = min(best, (time.perf_counter() - t) / len(items))
    return best


def main() -> None:
    met = True
    for w, h in ((1280, 720), (1920, 1080)):
        frames = decoded_frames(w, h)
        ref = [PHash.from_hex(str(imagehash.phash(f.picture.to_image()))) for f in frames]
        paths: dict[str, Callable[[Frame], PHash]] = {
            "phash_luma(frame.luminance())   [pipeline]": lambda f: phash_luma(f.luminance()),
            "phash_luma(frame.luma())     [luma plane]": lambda f: phash_luma(f.luma()),
            "phash_luma(frame.gray())  [reduced luma]": lambda f: phash_luma(f.gray()),
        }
        t_ref = timed(lambda f: imagehash.phash(f.picture.to_image()), frames, 2)
        print(f"{h}p: {len(frames)} decoded frames of {len(PHOTOS)} real photos")
        print(f"  baseline imagehash.phash(frame.to_image())  {t_ref * 1e3:7.2f} ms/frame")
        for name, fn in paths.items():
            diffs = [fn(f) - r for f, r in zip(frames, ref, strict=True)]
            t = timed(fn, frames, 3)
            off = f"mean {statistics.mean(diffs):.2f} max {max(diffs)}"
            print(f"  {name}  {t * 1e3:7.2f} ms/frame  {t_ref / t:5.1f}x imagehash;  bits off: {off}")
            if "pipeline" in name and h == 720:
                met = statistics.mean(diffs) <= 0.5
    print(f"target: pipeline pHash within 0.5 bit of imagehash on 720p frames: {'MET' if met else 'NOT MET'}")


if __name__ == "__main__":
    main()
