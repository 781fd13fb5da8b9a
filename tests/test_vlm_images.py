"""Image fitting for VLM servers (streamwatch.vlm.images): properties over thousands of generated shapes,
from 1×1 to 690×15420 and aspect ratios up to 15420:1, under the limits of every shipped model and of
generated limits; real pixels through render / fitted_jpegs / fit_request; registry validation."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from streamwatch.errors import RegistryError, VLMInputError
from streamwatch.vlm.backend import VLMRequest, fit_request, fitted_jpegs, images_fit, jpeg, render
from streamwatch.vlm.images import OVERLAP, ImageLimits, Tile, jpeg_size, plan, request_fits
from streamwatch.vlm.registry import load_registry

MODELS = Path(__file__).resolve().parents[1] / "models"
FIELD = [(24, 24), (332, 27), (27, 332), (690, 15420), (15420, 690), (1, 1), (1, 15420), (15420, 1), (640, 360), (1080, 1920)]


def shapes(n: int, seed: int) -> list[tuple[int, int]]:
    """The field's shapes, every small shape to 40×40, and log-uniform sizes with extreme aspect ratios."""
    rng = np.random.default_rng(seed)
    out = list(FIELD) + list(itertools.product(range(1, 41), repeat=2))
    for _ in range(n):
        w, h = (round(float(math.exp(v))) for v in rng.uniform(0, math.log(15420), 2))
        out.append((max(1, w), max(1, h)))
    return out


def shipped_limits() -> list[ImageLimits]:
    return [m.image_limits for m in load_registry(MODELS / "registry.json").models.values()]


def generated_limits(n: int, seed: int) -> list[ImageLimits]:
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < n:
        patch = int(rng.choice([1, 14, 16, 28, 32, 64]))
        lim = ImageLimits(
            side=int(rng.integers(64, 2048)),
            min_side=int(rng.integers(1, 120)),
            patch=patch,
            max_tokens=int(rng.integers(1, 5000)),
            max_tiles=int(rng.integers(1, 9)),
            tile_aspect=float(rng.uniform(1, 8)),
            max_aspect=float(rng.choice([1.0, 3.0, 50.0, 200.0])),
        )
        if not lim.problems():
            out.append(lim)
    return out


def check(width: int, height: int, lim: ImageLimits) -> tuple[Tile, ...]:
    tiles = plan(width, height, lim)
    assert 1 <= len(tiles) <= lim.max_tiles
    assert sum(t.tokens(lim.patch) for t in tiles) <= lim.max_tokens
    for t in tiles:
        assert t.width % lim.patch == 0 and t.height % lim.patch == 0
        assert min(t.width, t.height) >= lim.min_side
        assert max(t.width, t.height) <= lim.max_aspect * min(t.width, t.height) + 1e-9
        assert 1 <= t.content_w <= t.width and 1 <= t.content_h <= t.height
        assert t.w >= 1 and t.h >= 1
        # not distorted beyond snapping: one scale s puts both content sides within patch/2 (+1 rounding)
        d = lim.patch / 2 + 1
        lo, hi = max((t.content_w - d) / t.w, (t.content_h - d) / t.h), min((t.content_w + d) / t.w, (t.content_h + d) / t.h)
        assert lo <= hi, (width, height, t)
    # the crops cover the picture in reading order along its long side; neighbours overlap a little
    wide = width >= height
    spans = [(t.x, t.x + t.w) if wide else (t.y, t.y + t.h) for t in tiles]
    assert all((t.y, t.h) == (0, height) if wide else (t.x, t.w) == (0, width) for t in tiles)
    assert spans[0][0] == 0 and spans[-1][1] == max(width, height)
    nominal = max(width, height) / len(tiles)
    for (a0, a1), (b0, b1) in itertools.pairwise(spans):
        assert a0 < b0 and a1 < b1  # in order
        assert 0 <= a1 - b0 <= 2 * math.ceil(OVERLAP * nominal) + 1  # no gap; a bounded overlap
        if len(tiles) > 1 and nominal >= 100:
            assert a1 - b0 >= 2 * OVERLAP * nominal - 2  # a text line cut by the boundary is whole in one tile
    assert request_fits([(t.width, t.height) for t in tiles], lim)  # what the backends accept without refitting
    return tiles


def test_every_shape_fits_every_shipped_model() -> None:
    for lim in shipped_limits():
        for w, h in shapes(3000, 1):
            check(w, h, lim)


def test_every_shape_fits_generated_limits() -> None:
    for i, lim in enumerate(generated_limits(60, 2)):
        for w, h in shapes(150, 100 + i):
            check(w, h, lim)


def test_ordinary_frames_are_sent_as_before_and_never_scaled_up() -> None:
    lim = ImageLimits()  # side 512, patch 32
    (t,) = check(640, 360, lim)
    assert (t.width, t.height) == (512, 288) and not t.padded
    (t,) = check(300, 200, lim)  # small but above the minimum: kept (snapped to the patch)
    assert (t.width, t.height) == (288, 192)
    for w, h in shapes(500, 3):
        tiles = plan(w, h, lim)
        if len(tiles) == 1 and min(w, h) >= lim.floor and max(w, h) <= lim.side:
            assert abs(tiles[0].width - w) <= lim.patch / 2 and abs(tiles[0].height - h) <= lim.patch / 2


def test_field_shapes_stickers_banners_and_long_screenshots() -> None:
    lim = ImageLimits()
    (sticker,) = check(24, 24, lim)
    assert (sticker.width, sticker.height) == (32, 32) and not sticker.padded  # scaled up, not a grey square
    (banner,) = check(332, 27, lim)
    assert banner.height == 32 and banner.width == 384 and not banner.padded  # one image: its text is not cut
    shots = check(690, 15420, lim)
    assert len(shots) == 4  # a long screenshot is tiled, top to bottom
    for t in shots:
        assert t.content_w >= 690 * 0.3  # text stays legible (one image would be 23 px wide at side 512)
    (line,) = check(15420, 1, ImageLimits(max_tiles=1))  # a 1-px line: padded, not blown up to 32× its length
    assert line.padded and line.content_h == 1 and line.height == 32


def test_the_token_budget_is_shared_by_the_tiles() -> None:
    lim = ImageLimits(max_tokens=64, max_tiles=4)
    tiles = check(690, 15420, lim)
    assert sum(t.tokens(32) for t in tiles) <= 64


def test_impossible_limits_and_empty_pictures_are_refused() -> None:
    with pytest.raises(ValueError, match="max_tokens"):
        plan(100, 100, ImageLimits(max_tokens=3, max_tiles=4))
    with pytest.raises(ValueError, match="above side"):
        plan(100, 100, ImageLimits(side=64, min_side=100))
    with pytest.raises(ValueError, match="1×1"):
        plan(0, 10, ImageLimits())


# --- pixels ------------------------------------------------------------------------------------------


def picture(w: int, h: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 255, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize(("w", "h"), FIELD)
def test_fitted_jpegs_decode_to_the_planned_sizes(w: int, h: int) -> None:
    for lim in (ImageLimits(), ImageLimits(patch=28), ImageLimits(max_tiles=1, max_tokens=256)):
        tiles = plan(w, h, lim)
        images = fitted_jpegs(picture(w, h), lim)
        assert len(images) == len(tiles)
        for data, t in zip(images, tiles, strict=True):
            img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
            assert (img.shape[1], img.shape[0]) == (t.width, t.height) == jpeg_size(data)


def test_render_keeps_content_and_pads_with_grey() -> None:
    rgb = np.zeros((1, 400, 3), np.uint8)
    rgb[:, :, 0] = 255  # a red 1-px line
    (t,) = plan(400, 1, ImageLimits(max_aspect=8.0))
    out = render(rgb, t)
    assert out.shape == (t.height, t.width, 3) and t.padded
    top = (t.height - t.content_h) // 2
    assert (out[top, : t.content_w, 0] > 200).all()  # the line is there
    assert (out[0] == 114).all() and (out[-1] == 114).all()  # grey above and below
    # tiles of a picture with a gradient keep their order (reading order)
    tall = np.repeat(np.linspace(0, 255, 4000).astype(np.uint8)[:, None, None], 200, 1).repeat(3, 2)
    means = [float(render(tall, t).mean()) for t in plan(200, 4000, ImageLimits())]
    assert means == sorted(means) and len(means) > 1


def test_jpeg_size_reads_headers_like_the_decoder() -> None:
    for w, h in [(1, 1), (24, 24), (690, 15420), (333, 27)]:
        for q in (30, 95):
            params = [cv2.IMWRITE_JPEG_QUALITY, q, cv2.IMWRITE_JPEG_PROGRESSIVE, int(q > 50)]
            data = cv2.imencode(".jpg", picture(w, h), params)[1].tobytes()
            assert jpeg_size(data) == (w, h)
    assert jpeg_size(cv2.imencode(".png", picture(10, 10))[1].tobytes()) is None
    assert jpeg_size(b"\xff\xd8\xff") is None and jpeg_size(b"") is None


def test_fit_request_passes_fitted_images_and_refits_the_rest() -> None:
    lim = ImageLimits()
    ok = VLMRequest("q", fitted_jpegs(picture(640, 360), lim))
    assert images_fit(ok, lim) and fit_request(ok, lim) is ok
    raw = VLMRequest("q", (jpeg(picture(24, 24)), jpeg(picture(690, 15420), 512)))  # 24×24 and 23×512: refused by servers
    assert not images_fit(raw, lim)
    fixed = fit_request(raw, lim)
    sizes = [jpeg_size(i) for i in fixed.images]
    assert all(s is not None and min(s) >= 32 for s in sizes) and images_fit(fixed, lim)
    png = VLMRequest("q", (cv2.imencode(".png", picture(20, 20))[1].tobytes(),))  # not a JPEG: decoded and refitted
    assert jpeg_size(fit_request(png, lim).images[0]) == (32, 32)
    with pytest.raises(VLMInputError, match="could not be decoded"):
        fit_request(VLMRequest("q", (b"not an image",)), lim)


# --- registry ----------------------------------------------------------------------------------------


def test_registry_validates_image_limits(tmp_path: Path) -> None:
    base = {"id": "a", "backend": "hf", "path": "x", "capabilities": ["qa"]}
    for extra, expected in [
        ({"image_max_tokens": 2, "image_max_tiles": 4}, "models[0]: image limits cannot be met: max_tokens 2"),
        ({"image_min_side": 600}, "min_side 600"),
        ({"image_patch": 0}, "models[0].image_patch"),
        ({"image_max_aspect": 0.5}, "models[0].image_max_aspect"),
    ]:
        p = tmp_path / "registry.json"
        p.write_text(json.dumps({"models": [{**base, **extra}]}))
        with pytest.raises(RegistryError) as e:
            load_registry(p)
        assert expected in str(e.value) and str(p) in str(e.value)
    assert {(lim.patch, lim.min_side) for lim in shipped_limits()} >= {(32, 32), (28, 32)}
