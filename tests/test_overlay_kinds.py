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


def test_the_cascade_sees_an_edge_caption_during_a_pan_where_its_reference_is_blind() -> None:
    """The reference analysis is seconds old during a pan, and its comparison is blind along the edge
    where picture slid in since; the edge is compared with the previous frame, so a vertical caption
    appearing there is a changed region at once (not once the camera has moved a whole tile)."""
    w, h, speed = 1280, 720, 16
    bg = background("astronaut", w, h, speed * 12)
    caption = overlay_rgba(Overlay(0, 1, "caption", "加微信领红包", 28, "right-edge", case="vertical", vertical=True, color=RED))
    x, y = place("right-edge", caption.shape[1], caption.shape[0], w, h)
    refs = References()
    plans = []
    for second in range(5):
        frame = np.ascontiguousarray(bg[:h, second * speed : second * speed + w]).copy()
        if second == 4:
            paste(frame, caption, x, y)
        sig = signature_of(frame)
        plan = refs.plan(phash_luma(sig), sig, (w, h), float(second))
        refs.seen(sig)
        if plan.kind is not PlanKind.HIT:
            refs.put(Reference(phash_luma(sig), sig, (), (w, h), float(second)))
        plans.append(plan)
    assert [p.kind for p in plans[:4]] == [PlanKind.FULL, PlanKind.HIT, PlanKind.HIT, PlanKind.HIT]  # a pan alone: reuse
    edge = plans[4]
    assert edge.change is not None and max(abs(v) for v in edge.change.shift) < 20  # the reference is blind at the edge
    assert edge.kind is PlanKind.REGIONS, "the caption at the edge went unseen"
    assert all(b[0] >= 0.8 and b[2] == 1.0 for b in edge.boxes), edge.boxes  # read at the right edge only
