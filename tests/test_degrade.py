"""Overload (issue 22): the governor's thresholds and hysteresis, the named degradation order, calm
streams, and the analysis queue's drop choice (never an escalated or overlay frame).

The decisions are pure (runtime/degrade.py) and fed made-up clocks; the queue and the frame
classification run on real :class:`~streamwatch.sampling.sampler.Sampler` decisions over real PyAV
frames (a photo, the same photo with a QR code pasted in a corner, another photo).
"""

from __future__ import annotations

import asyncio
import itertools

import av
import cv2
import numpy as np
import pytest
import skimage.data

from streamwatch.config import OverloadConfig, SamplingConfig
from streamwatch.events.model import HealthEvent, HealthKind
from streamwatch.i18n import describe_health
from streamwatch.ingest.frame import Frame
from streamwatch.runtime.degrade import (
    MAX_LEVEL,
    ORDER,
    Activity,
    Governor,
    Keep,
    Thresholds,
    classify,
    pick_drop,
    widened,
)
from streamwatch.runtime.overload import AnalysisQueue, OverloadWatch
from streamwatch.sampling.sampler import Sample, Sampler

T = Thresholds(lag_s=2.0, after_s=3.0, recover_s=10.0, recover_share=0.5)


def feed(g: Governor, lags: list[float], start: float = 0.0) -> list[tuple[float, int, int]]:
    """One look per second; (time, old, new) of each step taken."""
    out = []
    for i, lag in enumerate(lags):
        c = g.update(start + i, lag)
        if c is not None:
            out.append((start + i, c.old, c.new))
    return out


# --- the governor ---------------------------------------------------------------------------------


def test_one_slow_frame_is_not_an_episode() -> None:
    g = Governor(T)
    assert feed(g, [0.5, 9.0, 0.5, 0.5, 8.0, 8.0, 1.0, 0.4] * 5) == []
    assert g.level == 0 and g.since is None


def test_sustained_lag_steps_one_level_per_window_up_to_the_deepest() -> None:
    g = Governor(T)
    steps = feed(g, [3.0] * 20)
    # over the line from t=0: step 1 at t=3, then one more per full window of lag still over the line
    assert steps == [(3.0, 0, 1), (6.0, 1, 2), (9.0, 2, 3)]
    assert g.level == MAX_LEVEL == 3
    assert g.since == 3.0


def test_the_deepest_step_can_be_capped() -> None:
    g = Governor(Thresholds(lag_s=2.0, after_s=1.0, recover_s=2.0, max_level=1))
    assert [s[2] for s in feed(g, [5.0] * 10)] == [1]
    g0 = Governor(Thresholds(lag_s=2.0, after_s=1.0, recover_s=2.0, max_level=0))
    assert feed(g0, [5.0] * 10) == []  # (said nothing: level 0 is no episode)


def test_recovery_undoes_one_step_at_a_time_and_the_last_one_ends_the_episode() -> None:
    g = Governor(T)
    feed(g, [3.0] * 10)
    assert g.level == 3
    changes = []
    for i in range(60):
        c = g.update(10.0 + i, 0.3)
        if c is not None:
            changes.append(c)
    assert [(c.at, c.old, c.new) for c in changes] == [(20.0, 3, 2), (30.0, 2, 1), (40.0, 1, 0)]
    assert not changes[0].ended and changes[-1].ended and not changes[-1].began
    assert changes[-1].since == 3.0 and changes[-1].peak_level == 3 and changes[-1].peak_lag_s == 3.0
    assert g.since is None


def test_lag_between_the_lines_holds_the_level_no_flapping() -> None:
    g = Governor(T)
    feed(g, [3.0] * 4)  # step 1 at t=3
    assert g.level == 1
    # 1.5 s: under the threshold but over the recover line (1.0 s) → the level holds, however long
    assert feed(g, [1.5] * 60, start=4.0) == []
    assert g.level == 1
    # lag hovering around the threshold: alternating looks never sustain a window either way
    assert feed(g, [2.5, 0.8] * 30, start=64.0) == []
    assert g.level == 1


def test_a_spike_during_recovery_restarts_the_recover_window() -> None:
    g = Governor(T)
    feed(g, [3.0] * 4)
    steps = feed(g, [0.2] * 9 + [2.5] + [0.2] * 11, start=4.0)  # 9 s under, a spike at t=13, under again
    assert steps == [(24.0, 1, 0)]  # under from t=14 again, 10 s later


def test_the_episode_opens_once_with_the_lag_seen() -> None:
    g = Governor(T)
    c = [g.update(float(t), 2.5 + t) for t in range(4)]
    assert c[:3] == [None, None, None] and c[3] is not None
    assert c[3].began and c[3].lag_s == 5.5 and c[3].step.name == "calm_x2"


# --- the order, calm streams --------------------------------------------------------------------


def test_the_order_is_named_and_widens_calm_streams_first() -> None:
    assert [s.name for s in ORDER] == ["normal", "calm_x2", "calm_x4", "all_x2"]
    assert [(s.factor(True), s.factor(False)) for s in ORDER] == [(1, 1), (2, 1), (4, 1), (4, 2)]
    for a, b in itertools.pairwise(ORDER):  # each step degrades at least as much as the one before
        assert b.calm >= a.calm and b.busy >= a.busy and (b.calm, b.busy) != (a.calm, a.busy)


def test_a_widened_step_never_passes_the_heartbeat() -> None:
    assert widened(1.0, 1, 30.0) == 1.0
    assert widened(1.0, 4, 30.0) == 4.0
    assert widened(10.0, 4, 30.0) == 30.0  # a still picture is still looked at once per heartbeat
    assert widened(45.0, 4, 30.0) == 45.0  # a stream's own step longer than the heartbeat stays its own


def test_a_stream_is_calm_without_recent_alerts_and_with_few_changed_tiles() -> None:
    a = Activity(calm_after_s=30.0, calm_tiles=0.25)
    assert a.calm("s", 0.0)  # nothing seen yet
    for t in range(10):
        a.on_kept("s", float(t), 0.05)
        a.on_kept("busy", float(t), 0.6)
    assert a.calm("s", 10.0) and not a.calm("busy", 10.0)
    a.on_alert("s", 12.0)
    assert a.hot("s", 13.0) and not a.calm("s", 13.0)
    assert not a.hot("s", 42.0) and a.calm("s", 42.0)  # 30 s after the alert, and the busy frames aged out
    assert a.calm("busy", 45.0)
    a.forget("s")
    assert not a.hot("s", 13.0)


# --- the drop choice ------------------------------------------------------------------------------


def test_classify_protects_overlays_and_escalated_streams() -> None:
    assert classify(True, 1, 4, hot=False) is Keep.OVERLAY  # same picture (pHash within radius), a tile new
    assert classify(True, 12, 4, hot=False) is Keep.CHANGED  # a new scene
    assert classify(False, 9, 4, hot=False) is Keep.UNCHANGED  # a pHash move, nothing new in any tile
    assert classify(False, None, 4, hot=False) is Keep.CHANGED  # the stream's first frame
    assert classify(False, 0, 4, hot=True) is Keep.ESCALATED
    assert Keep.OVERLAY.protected and Keep.ESCALATED.protected and not Keep.CHANGED.protected


def test_a_full_queue_drops_the_oldest_unchanged_then_the_oldest_other_never_a_protected_frame() -> None:
    u, c, o, e = Keep.UNCHANGED, Keep.CHANGED, Keep.OVERLAY, Keep.ESCALATED
    assert pick_drop([o, c, u, u], c) == pick_drop([o, c, u, u], o)
    d = pick_drop([o, c, u, u], c)
    assert d is not None and (d.index, d.reason) == (2, "unchanged")
    d = pick_drop([e, c, o, c], u)
    assert d is not None and (d.index, d.reason) == (4, "unchanged")  # the newcomer is the least worth
    d = pick_drop([e, c, o, c], o)
    assert d is not None and (d.index, d.reason) == (1, "oldest")
    assert pick_drop([o, e, o, o], o) is None and pick_drop([e], e) is None  # the producer waits instead
    d = pick_drop([o, e, o, o], c)
    assert d is not None and d.index == 4


def photo(name: str, w: int = 1280, h: int = 720) -> np.ndarray:
    a = np.asarray(getattr(skimage.data, name)())
    a = np.stack([a] * 3, -1) if a.ndim == 2 else a[..., :3]
    return np.ascontiguousarray(cv2.resize(a, (w, h), interpolation=cv2.INTER_AREA))


def with_qr(rgb: np.ndarray) -> np.ndarray:
    import segno

    dark = np.asarray(list(segno.make("https://evil.example/join", error="m").matrix_iter(scale=6, border=2)), bool)
    qr = np.repeat(np.where(dark, 0, 255).astype(np.uint8)[..., None], 3, -1)
    out = rgb.copy()
    out[40 : 40 + qr.shape[0], -40 - qr.shape[1] : -40] = qr
    return out


def samples(pictures: list[tuple[float, np.ndarray]], stream: str = "s") -> list[Sample]:
    """The sampler's kept frames over real PyAV frames (offset, picture)."""
    sampler = Sampler(SamplingConfig(heartbeat_s=5.0))
    out = []
    for n, (t, rgb) in enumerate(pictures):
        vf = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
        for s in sampler.feed(Frame(stream, n, t, 1000.0 + t, t, t, True, vf)):
            if isinstance(s, Sample) and s.kept:
                out.append(s)
    return out


@pytest.fixture(scope="module")
def kept() -> dict[str, Sample]:
    coffee, rocket = photo("coffee"), photo("rocket")
    got = samples([(0.0, coffee), (1.0, coffee), (2.0, with_qr(coffee)), (3.0, rocket), (9.0, rocket)])
    assert [s.offset for s in got] == [0.0, 2.0, 3.0, 9.0]  # 1.0: a duplicate; 9.0: the heartbeat
    return dict(zip(["first", "overlay", "scene", "heartbeat"], got, strict=True))


def watch() -> OverloadWatch:
    return OverloadWatch(OverloadConfig(), heartbeat_s=5.0, radius=SamplingConfig().dedupe_radius)


def test_the_sampler_decisions_classify_as_expected(kept: dict[str, Sample]) -> None:
    w = watch()
    assert {k: w.keep_of(s) for k, s in kept.items()} == {
        "first": Keep.CHANGED,
        "overlay": Keep.OVERLAY,  # the QR code pasted: a region-change keep
        "scene": Keep.CHANGED,
        "heartbeat": Keep.UNCHANGED,
    }
    w.on_alert("s")
    assert w.keep_of(kept["heartbeat"]) is Keep.ESCALATED  # a stream with a fresh alert keeps every frame


def test_a_live_queue_under_pressure_keeps_overlay_frames_and_counts_drops_by_reason(kept: dict[str, Sample]) -> None:
    async def scenario() -> tuple[list[float | None], dict[str, int], bool]:
        drops: dict[str, int] = {}
        q = AnalysisQueue(2, live=lambda: True, on_drop=lambda r: drops.__setitem__(r, drops.get(r, 0) + 1))
        w = watch()
        order = ["overlay", "heartbeat", "scene", "heartbeat", "first", "overlay"]
        for name in order[:5]:
            await q.put(kept[name], w.keep_of(kept[name]))
        # heartbeat dropped for scene, then the newer heartbeat itself, then scene for first: [overlay, first]
        await q.put(kept["scene"], Keep.CHANGED)  # "first" (the older unprotected frame) goes
        await asyncio.wait_for(q.put(kept["overlay"], Keep.OVERLAY), 5)  # "scene" goes: [overlay, overlay]
        blocked = asyncio.create_task(q.put(kept["overlay"], Keep.OVERLAY))  # both queued are overlays: it waits
        await asyncio.sleep(0.05)
        waited = not blocked.done()
        got = [await q.get()]
        await asyncio.wait_for(blocked, 5)
        q.end()
        while (s := await q.get()) is not None:
            got.append(s.offset)
        got.append(None)
        return got, drops, waited

    got, drops, waited = asyncio.run(scenario())
    assert waited
    assert [getattr(s, "offset", s) for s in got] == [2.0, 2.0, 2.0, None]  # every overlay frame analysed, in order
    assert drops == {"unchanged": 2, "oldest": 3}


def test_a_file_queue_never_drops() -> None:
    coffee = photo("coffee")
    frames = samples([(float(t), coffee if t % 2 else with_qr(coffee)) for t in range(6)])

    async def scenario() -> list[float]:
        q = AnalysisQueue(1, live=lambda: False, on_drop=lambda r: pytest.fail(f"dropped ({r})"))

        async def produce() -> None:
            for s in frames:
                await q.put(s, Keep.UNCHANGED)
            q.end()

        task = asyncio.create_task(produce())
        out = []
        while (s := await q.get()) is not None:
            out.append(s.offset)
        await task
        return out

    assert asyncio.run(scenario()) == [s.offset for s in frames] and len(frames) >= 5


# --- what it says ---------------------------------------------------------------------------------


def test_the_events_name_the_lag_the_step_and_this_streams_sampling_in_both_languages(kept: dict[str, Sample]) -> None:
    w = watch()
    w.register("calm", 1.0)
    w.register("busy", 1.0)
    w.on_alert("busy")
    w.finished("busy", 4.2)
    for t in range(4):
        c = w.look(float(t), 1000.0)
        w.finished("busy", 4.2)
    assert c is not None and c.began and w.as_json()["level"] == 1 and w.as_json()["step"] == "calm_x2"
    assert w.every_s("calm") == 2.0 and w.every_s("busy") == 1.0
    text = w.reason("calm")
    assert "4.2s behind" in text and "calm_x2" in text and "sampled every 2s" in text and "never dropped" in text
    ev = HealthEvent(stream="calm", at=0.0, offset=0.0, kind=HealthKind.OVERLOADED, active=True, reason=text)
    assert describe_health(ev, "zh").startswith("分析过载") and describe_health(ev, "en").startswith("overloaded")
    end = HealthEvent(stream="calm", at=0.0, offset=0.0, kind=HealthKind.OVERLOADED, active=False, duration_s=12.5, reason="x")
    assert "12.5" in describe_health(end, "en") and "恢复" in describe_health(end, "zh")
    assert w.as_json()["streams"]["calm"] == {"every_s": 2.0, "calm": True, "kept": {}}
    assert w.leave("calm", 5.0) is None  # (only a stream told of the episode has a period to end)
    assert w.lag(1000.0) == 4.2  # the busy stream's last frame, once
    w.finished("file", 60.0)  # a stream not registered (a file) is never behind
    assert w.lag(1000.0) == 0.0


def _overloaded(active: bool, at: float, offset: float, **kw: object) -> HealthEvent:
    return HealthEvent(stream="s1", at=at, offset=offset, kind=HealthKind.OVERLOADED, active=active, **kw)  # type: ignore[arg-type]


def test_an_overload_rule_alerts_after_min_s_of_wall_time_and_the_report_has_the_period() -> None:
    from streamwatch.analysis.policy import Policy, PolicySpec
    from streamwatch.analysis.rules import RuleEngine
    from streamwatch.report.build import _periods

    spec = {
        "version": 1,
        "rule": [
            {
                "id": "box_overloaded",
                "severity": "medium",
                "message": "overloaded since {started}",
                "when": {"health": "overloaded", "min_s": 60},
            }
        ],
    }
    engine = RuleEngine(Policy(PolicySpec.model_validate(spec), {}))
    start = _overloaded(True, 1000.0, 62.0, reason="analysis 5.9s behind (over 2s for 3s); step 1 (calm_x2 …)")
    engine.on_health(start)
    assert engine.tick("s1", 1030.0, 200.0) == []  # wall time counts (a stream's samples thin out meanwhile)
    assert [(o, d.rule, d.message) for o, d in engine.tick("s1", 1060.5, 70.0)] == [(62.0, "box_overloaded", "overloaded since 00:01:02")]
    assert engine.tick("s1", 1100.0, 90.0) == []  # once per episode
    end = _overloaded(False, 1131.0, 93.0, duration_s=131.0, reason="worst 5.9s behind, step 3 (all_x2)")
    engine.on_health(end)
    periods = _periods([start, end], until=2000.0)
    assert [(p.kind, p.start, p.duration, p.open) for p in periods] == [("overloaded", 62.0, 131.0, False)]
    assert "calm_x2" in periods[0].detail
    assert end.describe() == "overload over, sampling back to normal after 131.0s: worst 5.9s behind, step 3 (all_x2)"
    assert end.describe("zh").startswith("分析负载已恢复")


def test_max_level_0_says_the_overload_and_degrades_nothing() -> None:
    w = OverloadWatch(OverloadConfig(max_level=0, after_s=2.0), heartbeat_s=30.0, radius=4)
    w.register("s", 1.0)
    changes = []
    for t in range(6):
        w.finished("s", 3.0)
        changes.append(w.look(float(t), 1000.0))
    began = [c for c in changes if c is not None]
    assert len(began) == 1 and began[0].began  # the episode is said (once: there is no deeper step)
    assert w.every_s("s") == 1.0 and w.as_json()["level"] == 0 and w.as_json()["overloaded"] is True
    assert "step 0 (normal" in w.reason("s")
