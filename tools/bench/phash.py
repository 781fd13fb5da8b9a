#!/usr/bin/env python3
"""pHash speed and agreement: streamwatch's luma pHash against ``imagehash.phash`` on 1080p frames.

Both start from the same decoded 1080p video frame, as in the pipeline: imagehash needs a PIL RGB
image (``frame.to_image()``), streamwatch reads the luma plane (``Frame.gray()`` → ``phash_luma``).
Target: ≥ 20× faster with mean bit difference ≤ 0.5. Run: ``python tools/bench/phash.py``.
"""

from __future__ import annotations

import statistics
import time
from fractions import Fraction

import av
import cv2
import imagehash
import numpy as np
import skimage.data

from streamwatch.ingest.frame import Frame
from streamwatch.sampling.phash import PHash, phash_luma

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "cat", "camera", "coins", "clock", "moon", "brick", "grass")


def frames_1080p() -> list[Frame]:
    out = []
    for i, name in enumerate(PHOTOS):
        a = np.asarray(getattr(skimage.data, name)())
        a = np.stack([a] * 3, -1) if a.ndim == 2 else a[..., :3]
        rgb = cv2.resize(np.ascontiguousarray(a).astype(np.uint8), (1920, 1080), interpolation=cv2.INTER_CUBIC)
        pic = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
        pic.pts, pic.time_base = i, Fraction(1, 30)
        out.append(Frame("bench", i, float(i), 0.0, 0.0, float(i), True, pic))
    return out


def timed(fn, items, repeat: int) -> float:  # type: ignore[no-untyped-def]
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        for x in items:
            fn(x)
        best = min(best, (time.perf_counter() - t) / len(items))
    return best


def main() -> None:
    frames = frames_1080p()
    ref = [PHash.from_hex(str(imagehash.phash(f.picture.to_image()))) for f in frames]
    ours = [phash_luma(f.gray()) for f in frames]
    ours_luma = [phash_luma(f.luma()) for f in frames]
    diffs = [a - b for a, b in zip(ours, ref, strict=True)]
    diffs_luma = [a - b for a, b in zip(ours_luma, ref, strict=True)]
    t_ref = timed(lambda f: imagehash.phash(f.picture.to_image()), frames, 3)
    t_ref_pil = timed(imagehash.phash, [f.picture.to_image() for f in frames], 3)
    t_ours = timed(lambda f: phash_luma(f.gray()), frames, 10)
    t_luma = timed(lambda f: phash_luma(f.luma()), frames, 10)
    print(f"1080p frames: {len(frames)} real photos (skimage.data)")
    print(f"baseline imagehash.phash(frame.to_image())     {t_ref * 1e3:7.2f} ms/frame")
    print(f"baseline imagehash.phash(PIL image, prebuilt)  {t_ref_pil * 1e3:7.2f} ms/frame")
    print(f"streamwatch phash_luma(frame.gray())           {t_ours * 1e3:7.2f} ms/frame  -> {t_ref / t_ours:5.1f}x faster")
    print(f"streamwatch phash_luma(frame.luma())           {t_luma * 1e3:7.2f} ms/frame  -> {t_ref / t_luma:5.1f}x faster")
    print(
        f"bits differing from imagehash: gray() mean {statistics.mean(diffs):.2f} max {max(diffs)}; "
        f"luma() mean {statistics.mean(diffs_luma):.2f} max {max(diffs_luma)}"
    )
    ok = t_ref / t_ours >= 20 and statistics.mean(diffs) <= 0.5
    print(f"target >= 20x and mean <= 0.5 bit: {'MET' if ok else 'NOT MET'}")


if __name__ == "__main__":
    main()
