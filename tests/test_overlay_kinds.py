"""The overlay suite's second part: how spammers answer a caught caption, on moving cameras.

Generated clips (tools/overlay_kinds.py, written by tools/make_overlay_suite.py): still, panning,
zooming and shaking pictures with translucent captions, marquees, 16 px corner text, vertical text
along an edge, skewed QR codes and QR codes with a logo, plus clean look-alikes of each kind. Every
planted variant must alert (its labelled rule) within 2 s of its first frame; every alert must be
explained by a planted overlay on screen; clean look-alikes raise nothing.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from streamwatch.analysis.reuse import PlanKind, Reference, References
from streamwatch.cli import main
from streamwatch.events.model import AlertEvent
from streamwatch.events.store import EventStore
from streamwatch.sampling.dedupe import Deduper
from streamwatch.sampling.phash import PHash, phash_luma
from streamwatch.sampling.regions import signature_of

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
from make_overlay_suite import Overlay, background, overlay_rgba, paste, place, write_clip
from overlay_kinds import KINDS, RED

pytestmark = pytest.mark.timeout(900)  # the first test's setup encodes and analyses all four clips (~2 min on 2 cores)
CONTENT_RULES = {"contact_spam", "gambling", "unauthorized_brand", "qr_code", "exposure"}
ONSET_S = 2.0
CASES = sorted({o.case for c in KINDS for o in c.overlays})


@pytest.fixture(scope="session")
def analysed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[dict[str, Any], list[tuple[str, float]]]]:
    """Each clip of the suite through ``streamwatch analyze``: its labels and its content alerts (rule, clip time)."""
    d = tmp_path_factory.mktemp("overlay-kinds")
    out = {}
    for c in KINDS:
        clip = d / f"{c.name}.mp4"
        labels = write_clip(c, clip)
        data = d / f"data-{c.name}"
        assert main(["analyze", str(clip), "-o", str(d / f"{c.name}.json"), "--data", str(data), "-q"]) == 0
        store = EventStore(data)
        try:
            alerts = [(e.rule, e.offset) for e in store.events("recording") if isinstance(e, AlertEvent) and e.rule in CONTENT_RULES]
        finally:
            store.close()
        out[c.name] = (labels, alerts)
    return out


@pytest.mark.parametrize("case", CASES)
def test_each_variant_alerts_within_two_seconds_of_onset_and_its_look_alike_stays_silent(
    analysed: dict[str, tuple[dict[str, Any], list[tuple[str, float]]]], case: str
) -> None:
    seen = 0
    for name, (labels, alerts) in analysed.items():
        for o in labels["overlays"]:
            if o["case"] != case:
                continue
            seen += 1
            shown = f"{name} ({labels['camera']}): {case} {o['text']!r} {o['size']} px at {o['start']} s"
            if o["expect"]:
                hits = [round(t - o["start"], 2) for r, t in alerts if r == o["expect"] and -0.05 <= t - o["start"] <= ONSET_S]
                assert hits, f"{shown}: no {o['expect']} alert within {ONSET_S} s (alerts: {alerts})"
            else:  # a clean look-alike: no alert while it is on screen that no planted overlay explains
                planted = [p for p in labels["overlays"] if p["expect"]]
                stray = [(r, t) for r, t in alerts if o["start"] - 0.05 <= t <= o["end"] + 1.0
                         and not any(p["expect"] == r and p["start"] - 0.05 <= t <= p["end"] + 1.0 for p in planted)]  # fmt: skip
                assert not stray, f"{shown} is clean but raised {stray}"
    assert seen >= 2, f"the suite plants {case} only {seen} time(s)"


@pytest.mark.parametrize("name", [c.name for c in KINDS])
def test_every_alert_is_explained_by_a_planted_overlay_on_screen(
    analysed: dict[str, tuple[dict[str, Any], list[tuple[str, float]]]], name: str
) -> None:
    labels, alerts = analysed[name]
    planted = [o for o in labels["overlays"] if o["expect"]]
    false = [(r, t) for r, t in alerts if not any(o["expect"] == r and o["start"] - 0.05 <= t <= o["end"] + 1.0 for o in planted)]
    assert not false, f"{name}: alerts nobody planted: {false}"


def test_an_edge_caption_appearing_during_a_pan_is_new_content_at_once() -> None:
    """A pan keeps the reference fresh (each moved frame is kept), so the strip that slid in at the edge
    since the reference is one sample wide: a vertical caption at the right edge is not hidden in it."""
    w, h, speed = 1280, 720, 16  # px per second, sampled every second
    bg = background("astronaut", w, h, speed * 12)
    caption = overlay_rgba(Overlay(0, 1, "caption", "加微信领红包", 28, "right-edge", case="vertical", vertical=True, color=RED))
    x, y = place("right-edge", caption.shape[1], caption.shape[0], w, h)
    dedupe = Deduper()
    for second in range(5):  # without the fresh reference, 4 s of pan (16 px of the reduced picture) hide the edge
        frame = np.ascontiguousarray(bg[:h, second * speed : second * speed + w]).copy()
        if second == 4:
            paste(frame, caption, x, y)
        verdict = dedupe.judge(PHash(0), float(second), signature_of(frame))
        if second == 4:
            assert verdict.change is not None and verdict.change.any, "the caption at the edge went unseen"
            _rows, cols = np.nonzero(verdict.change.changed)
            assert cols.min() >= verdict.change.changed.shape[1] - 2  # in the rightmost tiles only
        elif second:
            assert verdict.new and verdict.change is not None and verdict.change.shift[0] < 0  # the pan keeps the reference fresh
            assert not verdict.change.any  # a pan alone is no new content


def test_what_slides_in_during_a_pan_is_analysed_once_the_camera_moved_a_tile() -> None:
    """The cascade's reference follows the moving picture (no blind edge), and what slid in since the last
    model run is analysed as a strip along that edge once it is a tile wide: not every second, not never."""
    w, h, speed = 640, 360, 6  # px per second: 3 px of the 320×180 reduced picture per sample
    bg = background("astronaut", w, h, speed * 20)
    refs = References()
    plans = []
    for second in range(10):
        frame = np.ascontiguousarray(bg[:h, second * speed : second * speed + w])
        sig = signature_of(frame)
        plan = refs.plan(phash_luma(sig), sig, (w, h), float(second))
        plans.append(plan)
        if plan.kind is PlanKind.HIT:
            assert plan.reference is not None
            refs.put(Reference(plan.reference.phash, sig, (), (w, h), 0.0, None, plan.drift))
        else:
            refs.put(Reference(phash_luma(sig), sig, (), (w, h), float(second), None, plan.drift))
    kinds = [p.kind for p in plans]
    assert kinds[0] is PlanKind.FULL and kinds.count(PlanKind.REGIONS) >= 1, kinds
    strip = next(p for p in plans if p.kind is PlanKind.REGIONS)
    assert all(b[0] >= 0.8 and b[2] == 1.0 for b in strip.boxes), strip.boxes  # along the right edge only
    assert all(p.kind is PlanKind.HIT for p in plans[1 : plans.index(strip)])  # the pan alone before that
    assert max(abs(v) for v in plans[-1].drift) < 20  # counted again from the strip's model run
