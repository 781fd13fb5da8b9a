"""Pure sampling/ingest logic: interval grid, backoff, offsets, decode plan, pHash, gate, dedupe."""

from __future__ import annotations

import itertools
import random

import av
import cv2
import imagehash
import numpy as np
import pytest
import skimage.data
from PIL import Image

from streamwatch.config import DecodeMode, SamplingConfig
from streamwatch.errors import SamplingError
from streamwatch.ingest.backoff import Backoff
from streamwatch.ingest.clock import OffsetClock
from streamwatch.ingest.decode import DecodePlan
from streamwatch.sampling import Deduper, IntervalSampler, PHash, QualityGate, phash_luma

PHOTOS = [
    *("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "cat", "camera", "coins"),
    *("clock", "page", "text", "moon", "brick", "grass", "gravel"),
]


def photo(name: str) -> np.ndarray:
    a = np.asarray(getattr(skimage.data, name)())
    if a.ndim == 2:
        a = np.stack([a] * 3, axis=-1)
    return np.ascontiguousarray(a[..., :3]).astype(np.uint8)


def luma_of(rgb: np.ndarray) -> np.ndarray:
    """The luma plane a decoder would hand us for this picture (via yuv420p)."""
    vf = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
    p = vf.planes[0]
    return np.frombuffer(p, np.uint8).reshape(-1, p.line_size)[: vf.height, : vf.width].copy()


def test_interval_sampler_keeps_one_per_interval_on_a_30fps_grid() -> None:
    s = IntervalSampler(1.0)
    kept = [i / 30 for i in range(30 * 10) if s.due(i / 30)]
    assert len(kept) == 10
    assert all(abs(b - a - 1.0) < 0.05 for a, b in itertools.pairwise(kept))


def test_interval_sampler_restarts_grid_after_a_gap() -> None:
    s = IntervalSampler(1.0)
    assert s.due(0.0) and not s.due(0.5) and s.due(1.0)
    assert s.due(10.37)  # after an outage the first frame is due at once
    assert not s.due(11.0) and s.due(11.37)


def test_backoff_grows_to_cap_with_bounded_jitter() -> None:
    b = Backoff(0.5, 10.0, 2.0, jitter=0.2, rng=random.Random(1))
    delays = [b.next() for _ in range(12)]
    assert 0.4 <= delays[0] <= 0.6
    assert all(d <= 10.0 for d in delays)
    assert delays[-1] >= 8.0
    b.reset()
    assert b.next() <= 0.6


def test_offset_clock_is_continuous_across_pts_reset_and_reconnect() -> None:
    c = OffsetClock(live=True)
    offs = [c.offset(10.0 + i * 0.04, elapsed=1.0 + i * 0.04) for i in range(50)]  # first connection
    assert offs[0] == pytest.approx(1.0)
    assert offs[-1] == pytest.approx(1.0 + 49 * 0.04)
    # publisher restarts on the same connection: PTS back to 0, 3 s later in wall time
    o = c.offset(0.0, elapsed=6.0)
    assert o == pytest.approx(6.0)
    # reconnect: new connection with unrelated PTS
    c.new_connection()
    o2 = c.offset(5000.0, elapsed=12.0)
    assert o2 == pytest.approx(12.0)
    assert c.offset(5000.04, elapsed=12.05) == pytest.approx(12.04)


def test_offset_clock_never_goes_backwards() -> None:
    c = OffsetClock(live=False)
    vals = [c.offset(p, 0.0) for p in (0.0, 0.04, 0.08, 0.02, None, 0.12)]
    assert all(b > a for a, b in itertools.pairwise(vals))


def test_offset_clock_keeps_slow_files_real_and_cuts_discontinuities() -> None:
    slides = OffsetClock(live=False)  # a 0.1 fps slideshow: 10 s between frames is real stream time
    assert [round(slides.offset(p, 0.0), 3) for p in (3.0, 13.0, 23.0, 33.0)] == [0.0, 10.0, 20.0, 30.0]
    ts = OffsetClock(live=False)  # a recording whose timestamps jump by hours (an MPEG-TS discontinuity)
    vals = [ts.offset(p, 0.0) for p in (0.0, 0.04, 7200.0, 7200.04)]
    assert vals[2] - vals[1] < 0.01 and vals[3] - vals[2] == pytest.approx(0.04, abs=1e-4)
    live = OffsetClock(live=True)  # live: a forward jump past 5 s follows the wall clock
    assert live.offset(0.0, 0.0) == 0.0 and live.offset(100.0, 1.0) == pytest.approx(1.0)


def test_decode_plan_picks_keyframes_reference_or_full() -> None:
    plan = DecodePlan(DecodeMode.AUTO, every_s=2.0)
    assert plan.skip_frame() == "NONREF"  # nothing measured yet
    for i in range(8 * 25):  # 25 fps, a keyframe every 2 s
        plan.observe_packet(i * 0.04, keyframe=i % 50 == 0)
    assert plan.keyframe_interval == pytest.approx(2.0)
    assert plan.skip_frame() == "NONKEY"
    # keyframes stop arriving: fall back at once
    plan.observe_packet(7.0 + 4.0, keyframe=False)
    assert plan.skip_frame() == "NONREF"
    assert DecodePlan(DecodeMode.AUTO, every_s=0.1).skip_frame() == "DEFAULT"
    slow = DecodePlan(DecodeMode.AUTO, every_s=1.0)  # a 0.5 fps slideshow: each frame is 2 s of picture
    for i in range(6):
        slow.observe_packet(i * 2.0, keyframe=i == 0)
    assert slow.frame_step == pytest.approx(2.0) and slow.skip_frame() == "DEFAULT"
    assert DecodePlan(DecodeMode.FULL, every_s=5).skip_frame() == "DEFAULT"
    assert DecodePlan(DecodeMode.AUTO, every_s=None).skip_frame() == "DEFAULT"
    sparse = DecodePlan(DecodeMode.KEYFRAMES, every_s=1.0)
    for i in range(10):
        sparse.observe_packet(i * 1.0, keyframe=i % 5 == 0)  # GOP 5 s > 1 s interval
    assert sparse.skip_frame() == "DEFAULT"


def test_phash_value_object() -> None:
    h = PHash(0x8F373714ACFCF4D0)
    assert str(h) == "8f373714acfcf4d0"
    assert PHash.from_hex(str(h)) == h
    assert PHash.from_bits(h.bits()) == h
    assert h - h == 0
    assert h - PHash(h.value ^ 0b1011) == 3
    with pytest.raises(ValueError):
        PHash(1 << 64)
    with pytest.raises(SamplingError):
        phash_luma(np.zeros((0, 5), np.uint8))


@pytest.mark.parametrize("size", [None, (1920, 1080), (1280, 720)])
def test_phash_agrees_with_imagehash_on_real_photos(size: tuple[int, int] | None) -> None:
    diffs = []
    for name in PHOTOS:
        rgb = photo(name)
        if size:
            rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_CUBIC)
        ref = PHash.from_hex(str(imagehash.phash(Image.fromarray(rgb))))
        diffs.append(phash_luma(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)) - ref)  # the L image imagehash hashes
    assert np.mean(diffs) <= 0.5, diffs
    assert max(diffs) <= 4, diffs


def test_phash_is_stable_under_small_changes_and_separates_photos() -> None:
    base = luma_of(photo("astronaut"))
    h = phash_luma(base)
    m = cv2.getRotationMatrix2D((256, 256), 1.0, 1.0)
    assert phash_luma(cv2.warpAffine(base, m, (512, 512), borderMode=cv2.BORDER_REFLECT)) - h <= 10
    noisy = np.clip(base.astype(np.int16) + np.random.default_rng(0).integers(-8, 9, base.shape), 0, 255).astype(np.uint8)
    assert phash_luma(noisy) - h <= 4
    assert phash_luma(cv2.resize(base, (200, 200), interpolation=cv2.INTER_AREA)) - h <= 4
    others = [phash_luma(luma_of(photo(n))) for n in ("chelsea", "coffee", "rocket", "camera")]
    assert min(o - h for o in others) > 12


def test_quality_gate_black_uniform_blur_and_change() -> None:
    cfg = SamplingConfig()
    g = QualityGate(cfg)
    black = g.measure(np.full((360, 640), 16, np.uint8))
    assert black.black and black.uniform and not black.blurred
    white = QualityGate(cfg).measure(np.full((360, 640), 200, np.uint8))
    assert white.uniform and not white.black
    sharp = luma_of(photo("astronaut"))
    q = QualityGate(cfg).measure(sharp)
    assert not q.blurred and not q.uniform and q.sharpness > cfg.blur_threshold
    blurred = QualityGate(cfg).measure(cv2.GaussianBlur(sharp, (0, 0), 12))
    assert blurred.blurred
    # a sharp subject on a blurred background is not "blurred"
    mixed = cv2.GaussianBlur(sharp, (0, 0), 12)
    mixed[100:300, 150:350] = sharp[100:300, 150:350]
    assert not QualityGate(cfg).measure(mixed).blurred
    g2 = QualityGate(cfg)
    g2.measure(sharp)
    same = g2.measure(sharp.copy())
    assert same.unchanged and same.changed == 0.0
    moved = g2.measure(np.roll(sharp, 40, axis=1))
    assert not moved.unchanged and moved.changed is not None and moved.changed > 0.1
    with pytest.raises(SamplingError):
        g2.measure(np.zeros((0,), np.uint8))


def test_deduper_radius_and_heartbeat() -> None:
    d = Deduper(radius=6, heartbeat_s=30)
    a = PHash(0)
    assert not d.is_duplicate(a, 0.0)
    assert d.is_duplicate(PHash(0b111111), 1.0)  # 6 bits: within radius
    assert not d.is_duplicate(PHash(0b1111111), 2.0)  # 7 bits: new scene, now the reference
    assert d.is_duplicate(PHash(0b1111111), 31.0)
    assert not d.is_duplicate(PHash(0b1111111), 32.5)  # heartbeat: keep one per 30 s


def test_the_sampler_phash_agrees_with_imagehash_on_decoded_720p_video() -> None:
    """What samples.jsonl says is the pHash users match against imagehash lists (≤ 0.5 bit on average)."""
    import io
    from fractions import Fraction

    from streamwatch.ingest.frame import Frame
    from streamwatch.sampling import Sample, Sampler

    buf = io.BytesIO()
    names = ["astronaut", "coffee", "rocket", "chelsea", "hubble_deep_field", "coins", "clock", "grass"]
    with av.open(buf, "w", format="mp4") as out:
        st = out.add_stream("libx264", rate=4, options={"preset": "veryfast", "crf": "23"})
        st.width, st.height, st.pix_fmt = 1280, 720, "yuv420p"
        for i, name in enumerate(names * 2):
            rgb = cv2.resize(photo(name), (1280 + 40, 720), interpolation=cv2.INTER_CUBIC)[:, (i // len(names)) * 40 :][:, :1280]
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            vf.pts, vf.time_base = i, Fraction(1, 4)
            for p in st.encode(vf):
                out.mux(p)
        for p in st.encode(None):
            out.mux(p)
    buf.seek(0)
    sampler = Sampler(SamplingConfig())
    diffs = []
    with av.open(buf) as inp:
        for n, f in enumerate(inp.decode(video=0)):
            ref = PHash.from_hex(str(imagehash.phash(f.to_image())))
            sample = next(s for s in sampler.feed(Frame("s", n, float(n), 0.0, 0.0, float(n), True, f)) if isinstance(s, Sample))
            diffs.append(sample.phash - ref)
    assert len(diffs) == 16 and sum(diffs) / len(diffs) <= 0.5 and max(diffs) <= 4
