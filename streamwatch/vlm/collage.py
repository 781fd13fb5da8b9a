"""Fewer images per request than a picture was cut into: tiles merged into collages.

A server started with vLLM's defaults takes one image per request (``--limit-mm-per-prompt``) and
refuses more with HTTP 400 ``At most 1 image(s) may be provided in one request.``. A long picture sent
as tiles (:mod:`streamwatch.vlm.images`) is then merged: consecutive tiles are laid side by side,
left to right in reading order, into at most ``count`` collages, each fitted to the model's image
limits as one image (its share of the token budget). The prompt is told how the parts were placed.
"""

from __future__ import annotations

import dataclasses
import math

import cv2
import numpy as np

from streamwatch.errors import VLMInputError
from streamwatch.vlm.backend import PAD, VLMRequest, fitted_jpegs
from streamwatch.vlm.images import ImageLimits


def groups(n: int, count: int) -> list[range]:
    """``n`` images in order, split into at most ``count`` runs as even as can be."""
    k = min(n, count)
    size = math.ceil(n / k)
    return [range(i, min(n, i + size)) for i in range(0, n, size)]


def side_by_side(images: list[np.ndarray]) -> np.ndarray:
    """RGB images left to right on one canvas, each scaled to the tallest one's height, grey between."""
    height = max(img.shape[0] for img in images)
    gap = max(2, height // 64)
    scaled = [
        img if img.shape[0] == height else cv2.resize(img, (max(1, round(img.shape[1] * height / img.shape[0])), height)) for img in images
    ]
    width = sum(img.shape[1] for img in scaled) + gap * (len(scaled) - 1)
    canvas = np.full((height, width, 3), PAD, np.uint8)
    x = 0
    for img in scaled:
        canvas[:, x : x + img.shape[1]] = img
        x += img.shape[1] + gap
    return canvas


def merge_to_count(request: VLMRequest, count: int, limits: ImageLimits) -> VLMRequest:
    """``request`` with at most ``count`` images (collages of consecutive ones). Blocking: run in an
    executor. Raises :class:`VLMInputError` for an image that does not decode."""
    if len(request.images) <= count:
        return request
    decoded: list[np.ndarray] = []
    for i, data in enumerate(request.images):
        bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        if bgr is None:
            raise VLMInputError(f"image {i + 1} of the request could not be decoded")
        decoded.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    runs = groups(len(decoded), count)
    share = dataclasses.replace(limits, max_tokens=max(limits.max_tokens // len(runs), 1), max_tiles=1, tile_aspect=1e9)
    if share.problems():
        share = dataclasses.replace(share, max_tokens=(share.floor // share.patch) ** 2)
    merged: list[bytes] = []
    for run in runs:
        merged.extend(fitted_jpegs(side_by_side([decoded[i] for i in run]), share))
    note = (
        f"\n(The {len(request.images)} parts of the picture were placed side by side, left to right in reading order, "
        f"in {len(merged)} image{'s' if len(merged) > 1 else ''}.)"
    )
    return dataclasses.replace(request, images=tuple(merged), prompt=request.prompt + note)
