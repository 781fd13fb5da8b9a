"""The one interface every vision-language backend implements, and its typed request/result records.

A backend turns a :class:`VLMRequest` (system prompt, user prompt, JPEG images, an optional JSON
schema) into a :class:`VLMResult` (the answer text with any reasoning stripped, token counts, time).
Prompts and parsing are the caller's business (:mod:`streamwatch.vlm.prompts`); failover, retries and
the circuit breaker are the router's (:mod:`streamwatch.vlm.router`). Backends raise only
:class:`~streamwatch.errors.VLMUnavailable`, :class:`~streamwatch.errors.VLMTimeout` or
:class:`~streamwatch.errors.VLMOutputError`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np

from streamwatch.errors import VLMError, VLMInputError, VLMOutputError
from streamwatch.vlm.images import ImageLimits, Tile, jpeg_size, plan, request_fits
from streamwatch.vlm.output import strip_reasoning as _strip
from streamwatch.vlm.registry import Capability


@dataclass(frozen=True, slots=True)
class VLMRequest:
    prompt: str
    images: tuple[bytes, ...] = ()  # JPEG-encoded; a tiled picture is several, in reading order
    system: str = ""
    max_tokens: int = 256
    schema: str | None = None  # JSON schema (JSON text) the answer must follow, when the server can enforce it
    temperature: float = 0.2
    role: Capability | None = None  # which role asks (thinking on or off per role: ModelSpec.think)
    thinking: bool | None = None  # force reasoning on/off (a retry of a cut-off answer turns it off); None: per role


@dataclass(frozen=True, slots=True)
class VLMResult:
    text: str  # the answer, reasoning stripped
    model: str  # registry id of the model that produced it
    reasoning: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    image_tokens: int = 0  # when the backend can tell (in-process models)
    seconds: float = 0.0
    finish_reason: str = "stop"  # the server's; "length": the token budget cut the answer off
    truncated: bool = False  # cut off (budget, or reasoning that never ended): never a judgment
    recovered: bool = False  # the answer was read out of the reasoning (the content was empty)


class VLMBackend(Protocol):
    """A loaded model behind one registry entry."""

    @property
    def model(self) -> str:
        """Registry id."""
        ...

    async def generate(self, request: VLMRequest) -> VLMResult: ...

    async def warm(self) -> None:
        """Load (if needed) and answer one tiny request, so the first real request is not slow."""
        ...

    async def close(self) -> None: ...


# --- shared helpers (pure) -------------------------------------------------------------------------


def strip_reasoning(text: str) -> tuple[str, str]:
    """(answer, reasoning) of a thinking model's output: see :func:`streamwatch.vlm.output.split_output`."""
    return _strip(text)


def usable_text(text: str, model: str) -> str:
    """The answer, or :class:`VLMOutputError` when nothing is left after stripping the reasoning."""
    if not text.strip():
        raise VLMOutputError(f"{model}: empty answer")
    return text


def jpeg(rgb: np.ndarray, max_side: int = 512, quality: int = 85) -> bytes:
    """Encode an RGB image for a VLM request, long side at most ``max_side`` (tokens scale with pixels)."""
    h, w = rgb.shape[:2]
    scale = min(1.0, max_side / max(h, w))
    if scale < 1.0:
        rgb = cv2.resize(rgb, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise VLMError("could not encode the image as JPEG")
    return buf.tobytes()


PAD = 114  # grey of the padding around content thinner than a model's minimum side (the YOLO letterbox grey)


def render(rgb: np.ndarray, tile: Tile) -> np.ndarray:
    """The canvas of one planned tile: the crop resized to its content size, centred, padded with grey."""
    crop = rgb[tile.y : tile.y + tile.h, tile.x : tile.x + tile.w]
    if (tile.content_w, tile.content_h) != (tile.w, tile.h):
        shrink = tile.content_w * tile.content_h < tile.w * tile.h
        crop = cv2.resize(crop, (tile.content_w, tile.content_h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)
    if not tile.padded:
        return np.ascontiguousarray(crop)
    canvas = np.full((tile.height, tile.width, 3), PAD, np.uint8)
    top, left = (tile.height - tile.content_h) // 2, (tile.width - tile.content_w) // 2
    canvas[top : top + tile.content_h, left : left + tile.content_w] = crop
    return canvas


def fitted_jpegs(rgb: np.ndarray, limits: ImageLimits, quality: int = 85) -> tuple[bytes, ...]:
    """An RGB picture (H×W×3 uint8) as the JPEG images a model with ``limits`` accepts (one, or tiles
    in reading order): see :mod:`streamwatch.vlm.images`. Raises :class:`VLMInputError` for an empty image."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.shape[0] < 1 or rgb.shape[1] < 1:
        raise VLMInputError(f"not an RGB image: shape {rgb.shape}")
    return tuple(jpeg(render(rgb, t), max_side=1 << 30, quality=quality) for t in plan(rgb.shape[1], rgb.shape[0], limits))


def images_fit(request: VLMRequest, limits: ImageLimits) -> bool:
    """Whether the request's images can go as they are (JPEG headers only: microseconds, no decoding)."""
    sizes = [jpeg_size(img) for img in request.images]
    known = [s for s in sizes if s is not None]
    return len(known) == len(sizes) and request_fits(known, limits)


def fit_request(request: VLMRequest, limits: ImageLimits) -> VLMRequest:
    """``request`` with its images refitted to ``limits`` when they do not already fit (sizes read from
    the JPEG headers; only a request that does not fit is decoded). Blocking when it refits: run in an
    executor. Raises :class:`VLMInputError` for an image that is not a decodable JPEG/PNG."""
    if images_fit(request, limits):
        return request
    k = len(request.images)
    share = ImageLimits(
        limits.side,
        limits.min_side,
        limits.patch,
        limits.max_tokens // k,
        max(1, limits.max_tiles // k),
        limits.tile_aspect,
        limits.max_aspect,
    )
    if share.problems():  # too many images to tile within the budget: one image each
        share = ImageLimits(limits.side, limits.min_side, limits.patch, limits.max_tokens // k, 1, limits.tile_aspect, limits.max_aspect)
    images: list[bytes] = []
    for i, data in enumerate(request.images):
        rgb = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        if rgb is None:
            raise VLMInputError(f"image {i + 1} of the request could not be decoded")
        try:
            images.extend(fitted_jpegs(cv2.cvtColor(rgb, cv2.COLOR_BGR2RGB), share))
        except ValueError as e:  # limits that cannot be met for this many images
            raise VLMInputError(f"{k} images cannot be fitted to the model's image limits: {e}") from e
    return dataclasses.replace(request, images=tuple(images))
