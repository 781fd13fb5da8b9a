"""The overlay suite end to end: small captions and QR codes that come and go on calm pictures.

Generated clips (tools/make_overlay_suite.py): still and slowly panning photos at 540p–1080p with
captions 20–34 px (contact spam, gambling, brands, clean captions) and QR codes 80–250 px
(dark-on-light and inverted, near an edge). Every planted overlay must alert exactly once within 2 s
of its first frame, in ``analyze`` and in ``run`` over RTMP; clean captions raise nothing; no frozen
period spans an overlay appearing or disappearing.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import Nginx, publish, stop

from streamwatch.cli import main
from streamwatch.events.model import AlertEvent, HealthEvent, HealthKind
from streamwatch.events.store import EventStore

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
from make_overlay_suite import SUITE, write_clip

CONTENT_RULES = {"contact_spam", "gambling", "unauthorized_brand", "qr_code", "exposure"}
ONSET_S = 2.0


@pytest.fixture(scope="session")
def suite(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, dict[str, Any]]]:
    d = tmp_path_factory.mktemp("overlays")
    return {c.name: (d / f"{c.name}.mp4", write_clip(c, d / f"{c.name}.mp4")) for c in SUITE}


def check(alerts: list[tuple[str, float]], labels: dict[str, Any], *, slack: float = 0.0) -> None:
    """Each planted overlay: one alert of its rule within ONSET_S (+ slack) of its first frame; nothing else."""
    planted = [o for o in labels["overlays"] if o["expect"]]
    content = [(r, t) for r, t in alerts if r in CONTENT_RULES]
    for o in planted:
        hits = [t for r, t in content if r == o["expect"]]
        assert len(hits) == 1, f"{labels['name']}: {o['expect']} ({o['kind']} {o['size']} px at {o['start']} s): alerts at {hits}"
        assert -slack <= hits[0] - o["start"] <= ONSET_S + slack, (
            f"{labels['name']}: {o['expect']} alert at {hits[0]}, shown at {o['start']}"
        )
    wanted = {o["expect"] for o in planted}
    extra = [(r, t) for r, t in content if r not in wanted]
    assert not extra, f"{labels['name']}: alerts nobody planted (clean captions must stay silent): {extra}"


def check_frozen(health: list[HealthEvent], labels: dict[str, Any], every_s: float = 1.0) -> None:
    """No frozen period spans an overlay appearing or disappearing (it ends at the first sample after)."""
    changes = [t for o in labels["overlays"] for t in (o["start"], o["end"])]
    frozen = [h for h in health if h.kind is HealthKind.FROZEN]
    starts = [h.offset for h in frozen if h.active]
    ends = [h.offset for h in frozen if h.active is False]
    for s, e in zip(starts, ends, strict=False):
        inside = [c for c in changes if s < c and e > c + every_s + 0.1]
        assert not inside, f"{labels['name']}: frozen {s}–{e} s while overlays changed at {inside}"


@pytest.mark.parametrize("name", [c.name for c in SUITE])
def test_analyze_alerts_on_every_overlay_once_within_two_seconds(
    suite: dict[str, tuple[Path, dict[str, Any]]], name: str, tmp_path: Path
) -> None:
    clip, labels = suite[name]
    assert main(["analyze", str(clip), "-o", str(tmp_path / "r.json"), "--data", str(tmp_path / "d"), "-q"]) == 0
    store = EventStore(tmp_path / "d")
    try:
        events = list(store.events("recording"))
    finally:
        store.close()
    alerts = [e for e in events if isinstance(e, AlertEvent)]
    check([(a.rule, a.offset) for a in alerts], labels)
    check_frozen([e for e in events if isinstance(e, HealthEvent)], labels)
    assert not [a for a in alerts if a.rule == "stream_frozen"], "a still picture with overlays changing every few seconds is not frozen"
    for a in alerts:
        if a.rule in CONTENT_RULES:
            assert a.evidence.bbox is not None  # the detection's box, in the evidence frame's pixels


def test_run_over_rtmp_alerts_on_every_overlay_within_two_seconds(
    suite: dict[str, tuple[Path, dict[str, Any]]], nginx: Nginx, tmp_path: Path
) -> None:
    from streamwatch.app import Daemon
    from streamwatch.config import load_settings

    clip, labels = suite["still-720p"]
    url = nginx.rtmp("overlays")
    settings = load_settings(
        None,
        {
            "data_dir": tmp_path / "d",
            "streams": [{"id": "live", "source": url}],
            "ingest": {"open_timeout_s": 30},  # the daemon waits on nginx for the publisher
        },
    )
    daemon = Daemon(settings, serve=False)
    t_pub: list[float] = []

    async def scenario() -> None:
        task = asyncio.create_task(daemon.run())
        await asyncio.wait_for(daemon.ready.wait(), 60)
        await asyncio.sleep(1.0)  # the play request is waiting on nginx
        t_pub.append(time.time())
        pub = await asyncio.to_thread(publish, clip, url)
        try:
            await asyncio.to_thread(pub.wait, float(labels["duration"]) + 30)
            await asyncio.sleep(3.0)  # the last frames through analysis
        finally:
            stop(pub)
            daemon.stop()
            await asyncio.wait_for(task, 60)

    asyncio.run(scenario())
    store = EventStore(tmp_path / "d")
    try:
        alerts = [e for e in store.events("live") if isinstance(e, AlertEvent)]
    finally:
        store.close()
    # clip time of each alert from the wall time its frame arrived (ffmpeg -re sends clip time t at t_pub + t)
    check([(a.rule, a.at - t_pub[0]) for a in alerts], labels, slack=0.6)
