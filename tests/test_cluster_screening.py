"""Cluster-wide screening of fans' images: the pure parts on generated cases, then the KV parts raced
from two connections on a real 3-node JetStream cluster, and the work queue's wire format."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from typing import Any

import cv2
import nats
import numpy as np
import pytest

from streamwatch.cluster.connect import kv_bucket
from streamwatch.cluster.events import jetstream
from streamwatch.cluster.requests import RequestError, decode_question, decode_submission, encode_question, encode_submission, shrink
from streamwatch.cluster.screening import BANDS, RADIUS, FanLimits, Seen, SeenImages, bands, earlier_match, take
from streamwatch.sampling.phash import PHash
from streamwatch.server.submit import Question, Submission


def flip(h: PHash, bits: list[int]) -> PHash:
    v = h.value
    for b in bits:
        v ^= 1 << b
    return PHash(v)


def band_edges() -> list[int]:
    """Bit positions (LSB = 0) at the edges of each band: the shapes most likely to break a band scheme."""
    out, top = [], 64
    for width in BANDS:
        out += [top - 1, top - width]
        top -= width
    return out


def near_pairs(rng: random.Random, n: int) -> list[tuple[PHash, PHash]]:
    """Pairs within RADIUS bits: flips spread over bands, packed in one band, on band edges, none."""
    pairs = []
    for i in range(n):
        h = PHash(rng.getrandbits(64))
        shape = i % 4
        r = rng.randint(1, RADIUS)
        if shape == 0:
            bits = rng.sample(range(64), r)
        elif shape == 1:
            bits = rng.sample(range(12), r)  # all in the last band
        elif shape == 2:
            bits = rng.sample(band_edges(), r)
        else:
            bits = []
        pairs.append((h, flip(h, bits)))
    return pairs


@pytest.mark.parametrize(("rate", "burst"), [(0.1, 1), (6 / 60, 3), (2.0, 5), (0.5, 10)])
def test_token_bucket_counts_a_burst_then_refills_at_the_rate(rate: float, burst: int) -> None:
    tokens: float | None = None
    t = 1000.0
    allowed = 0
    for _ in range(burst * 3):  # all at once
        ok, tokens = take(tokens, t, t, rate, burst)
        allowed += ok
    assert allowed == burst
    for k in (1, 2):
        later = t + k / rate + 1e-6
        got, left, last = 0, tokens, t
        for _ in range(burst * 3):
            ok, left = take(left, last, later, rate, burst)
            last = later
            got += ok
        assert got == min(k, burst), (k, got)
    ok, left = take(tokens, t, t + 10 * burst / rate, rate, burst)  # a long pause: never more than the burst
    assert ok and left == pytest.approx(burst - 1)


def test_two_near_identical_images_one_is_the_duplicate_in_any_write_order() -> None:
    rng = random.Random(23)
    now = 5000.0
    for a, b in near_pairs(rng, 200):
        sa, sb = Seen(a, "a", now), Seen(b, "b", now)
        shared = [i for i, (x, y) in enumerate(zip(bands(a), bands(b), strict=True)) if x == y]
        assert shared, "within RADIUS bits two hashes share a band"
        for _ in range(4):  # each band key's list has its own order of the two writes
            a_first = [rng.random() < 0.5 for _ in BANDS]
            before_a = [[sb] if not first and i in shared else [] for i, first in enumerate(a_first)]
            before_b = [[sa] if first and i in shared else [] for i, first in enumerate(a_first)]
            dup_a, dup_b = earlier_match(a, before_a, now, 60), earlier_match(b, before_b, now, 60)
            assert (dup_a is None) != (dup_b is None), (a, b, a_first)
            assert (dup_a is None) == a_first[shared[0]]  # the lowest shared band decides


def test_far_or_expired_images_are_not_duplicates() -> None:
    rng = random.Random(5)
    now = 100.0
    for _ in range(200):
        h = PHash(rng.getrandbits(64))
        far = flip(h, rng.sample(range(64), rng.randint(RADIUS + 1, 30)))
        lists: list[list[Seen]] = [[Seen(far, "far", now)] for _ in BANDS]
        assert earlier_match(h, lists, now, 60) is None
        old = [[Seen(h, "old", now - 61)] for _ in BANDS]
        assert earlier_match(h, old, now, 60) is None
        assert earlier_match(h, [[Seen(h, "same", now - 59)] for _ in BANDS], now, 60) is not None


def picture(seed: int, w: int, h: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return cv2.resize(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8), (w, h), interpolation=cv2.INTER_CUBIC)


@pytest.mark.parametrize(
    ("w", "h", "text", "user"), [(640, 360, "送给星喵 🎉", "小明"), (3000, 400, "", ""), (200, 2400, "x" * 500, "fan\n2")]
)
def test_image_requests_round_trip_within_max_side(w: int, h: int, text: str, user: str) -> None:
    jpeg, _ = shrink(picture(w + h, w, h), 960)
    img = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    long, short = max(w, h), min(w, h)
    if long <= 3 * short:
        assert max(img.shape[:2]) <= 960
    else:  # a long picture keeps its detail: within max_side² pixels
        assert img.shape[0] * img.shape[1] <= 960 * 960 * 1.01 and max(img.shape[:2]) > 960
    sub = Submission(uuid.uuid4().hex[:16], "show.1", "fans", user, text, b"orig", "image/png", w, h, "show.1/x.jpg", time.time())
    back = decode_submission(encode_submission(sub, jpeg))
    assert back.image == jpeg and back.mime == "image/jpeg"
    assert (back.id, back.stream, back.user, back.text, back.width, back.height, back.thumb) == (
        sub.id, sub.stream, user, text, w, h, sub.thumb,
    )  # fmt: skip
    q = Question(sub.id, "show.1", "desk", text or "台上是谁?", None if user else "r1", 12.5)
    assert decode_question(encode_question(q)) == q


@pytest.mark.parametrize("data", [b"", b"\n", b"{}\n\xff\xd8", b"not json\n", b'{"id": 1}\n'])
def test_unreadable_requests_are_refused(data: bytes) -> None:
    with pytest.raises(RequestError):
        decode_submission(data)
    with pytest.raises(RequestError):
        decode_question(data)


@pytest.mark.timeout(180)
def test_rate_limits_and_duplicates_hold_across_two_gateways(nats3: Any) -> None:
    """Two connections (two gateways) race: each fan gets exactly its burst; of each group of
    near-identical images exactly one is new, whatever the interleaving."""

    async def go() -> None:
        conns = [await nats.connect(servers=nats3.urls) for _ in range(2)]
        try:
            js = [jetstream(nc) for nc in conns]
            prefix = f"scr{uuid.uuid4().hex[:6]}"
            fans = [FanLimits(await kv_bucket(j, f"{prefix}-fans", ttl_s=60, replicas=3), 6.0, 3) for j in js]
            seen = [SeenImages(await kv_bucket(j, f"{prefix}-seen", ttl_s=120, replicas=3), 120) for j in js]
            now = time.time()
            calls = [fans[i % 2].allow("fans", f"user{u}", now) for u in range(5) for i in range(8)]
            got = await asyncio.gather(*calls)
            for u in range(5):
                assert sum(got[u * 8 : (u + 1) * 8]) == 3, got
            assert not await fans[0].allow("fans", "user0", now + 1)
            assert await fans[1].allow("fans", "user0", now + 11)  # 6 a minute: one more after 10 s

            rng = random.Random(7)
            # a near copy racing its original: exactly one is new (the lowest band they share orders them);
            # the same picture three times at once: exactly one is new
            groups = [[a, b] for a, b in near_pairs(rng, 16)] + [[h, h, h] for h in (PHash(rng.getrandbits(64)) for _ in range(6))]
            checks = [seen[k % 2].check(h, f"g{g}-{k}", time.time()) for g, grp in enumerate(groups) for k, h in enumerate(grp)]
            out = iter(await asyncio.gather(*checks))
            for g, grp in enumerate(groups):
                verdicts = [next(out) for _ in grp]
                assert sum(v is None for v in verdicts) == 1, (g, verdicts)
            fresh = PHash(rng.getrandbits(64))
            assert await seen[0].check(fresh, "fresh", time.time()) is None
            assert (await seen[1].check(fresh, "again", time.time())) is not None
        finally:
            for nc in conns:
                await nc.close()

    asyncio.run(go())


@pytest.mark.parametrize(("ack_wait", "window", "ok"), [(30, 120, True), (119, 120, True), (120, 120, False), (300, 120, False)])
def test_an_ack_wait_past_the_dedupe_window_is_refused_at_load(ack_wait: float, window: float, ok: bool) -> None:
    from streamwatch.config import load_settings
    from streamwatch.errors import ConfigError

    cluster = {"nats": ["nats://127.0.0.1:4222"], "request_ack_wait_s": ack_wait, "dedupe_window_s": window}
    if ok:
        assert load_settings(None, {"cluster": cluster}).cluster.request_ack_wait_s == ack_wait
    else:
        with pytest.raises(ConfigError, match="dedupe_window_s"):
            load_settings(None, {"cluster": cluster})
