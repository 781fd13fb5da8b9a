#!/usr/bin/env python3
"""Overlay recall and onset delay, per kind: the region-level change signal against the global-pHash gate.

The overlay suite runs through the real daemon cascade (``streamwatch analyze`` path) twice:

- the first part (tools/make_overlay_suite.py: still and slowly panning photos at 540p–1080p with
  captions 20–34 px and QR codes 80–250 px, dark-on-light and inverted, near an edge);
- the second part (tools/overlay_kinds.py: still, panning, zooming and shaking cameras with
  translucent captions, marquees, 16 px corner text, vertical text at an edge, skewed QR codes and
  QR codes with a logo, and clean look-alikes of each kind).

Gates: baseline = the global-pHash gate (``sampling.regions = false``, ``analysis.regional = false``):
dedupe, frozen detection and result cache keyed on the 64-bit pHash alone; streamwatch = region-level
change signal + region-aware reuse and changed-region analysis (defaults). Same analyzers in both runs.

An overlay is caught when its rule alerts within 2 s of its first frame; a false alert is one that no
planted overlay on screen explains (it is counted against the clean look-alike on screen then, if
any). Target: 100% recall, onset ≤ 2 s, no false alerts. Run: ``python tools/bench/overlays.py``.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))

from make_overlay_suite import SUITE, write_clip  # noqa: E402
from overlay_kinds import KINDS  # noqa: E402

from streamwatch.app import Daemon  # noqa: E402
from streamwatch.config import load_settings  # noqa: E402
from streamwatch.events.model import AlertEvent  # noqa: E402
from streamwatch.events.store import EventStore  # noqa: E402

CONTENT = {"contact_spam", "gambling", "unauthorized_brand", "qr_code", "exposure"}
GATES: dict[str, dict[str, Any]] = {
    "baseline (global pHash gate)": {"sampling": {"regions": False}, "analysis": {"regional": False}},
    "streamwatch (region change signal)": {},
}


def run(clip: Path, data: Path, over: dict[str, Any]) -> tuple[list[tuple[str, float]], int]:
    settings = load_settings(None, {"data_dir": data, "streams": [{"id": "b", "source": str(clip)}], **over})
    daemon = Daemon(settings, serve=False)
    asyncio.run(daemon.run())
    store = EventStore(data)
    try:
        alerts = [(e.rule, e.offset) for e in store.events("b") if isinstance(e, AlertEvent) and e.rule in CONTENT]
    finally:
        store.close()
    return alerts, daemon.cascade.frames


def kind(o: dict[str, Any]) -> str:
    return str(o.get("case") or o["kind"])  # the first part's plain captions and QR codes: "caption", "qr"


def score(overlays: list[dict[str, Any]], alerts: list[tuple[str, float]], per: dict[str, dict[str, Any]]) -> None:
    """Add one clip's catches, onsets and false alerts to ``per`` (by kind)."""
    on = [o for o in overlays if o["expect"]]
    for o in on:
        k = per[kind(o)]
        hits = [t - o["start"] for r, t in alerts if r == o["expect"] and -0.05 <= t - o["start"] <= 2.0]
        k["total"] += 1
        if hits:
            k["delays"].append(max(min(hits), 0.0))
        else:
            k["missed"].append(f"{o['expect']}@{o['start']}({o['kind']} {o['size']}px)")
    for r, t in alerts:
        if any(o["expect"] == r and o["start"] - 0.05 <= t <= o["end"] + 1.0 for o in on):
            continue
        clean = [o for o in overlays if not o["expect"] and o["start"] - 0.05 <= t <= o["end"] + 1.0]
        per[kind(clean[0]) if clean else "(none on screen)"]["false"] += 1


def main() -> None:
    clips = [*SUITE, *KINDS]
    with tempfile.TemporaryDirectory() as tmp:
        paths = [(c, Path(tmp) / f"{c.name}.mp4") for c in clips]
        labels = {c.name: write_clip(c, path) for c, path in paths}
        results: dict[str, tuple[dict[str, dict[str, Any]], dict[str, int]]] = {}
        for g, (gate, over) in enumerate(GATES.items()):
            per: dict[str, dict[str, Any]] = defaultdict(lambda: {"total": 0, "delays": [], "missed": [], "false": 0})
            frames = {"suite": 0, "kinds": 0}
            for c, path in paths:
                alerts, n = run(path, Path(tmp) / f"d-{g}-{c.name}", over)
                frames["kinds" if c in KINDS else "suite"] += n
                score(labels[c.name]["overlays"], alerts, per)  # type: ignore[arg-type]
            results[gate] = (dict(per), frames)
    n_on = sum(1 for c in clips for o in c.overlays if o.expect)
    n_clean = sum(1 for c in clips for o in c.overlays if not o.expect)
    print(f"overlay suite: {len(clips)} clips, {n_on} planted overlays, {n_clean} clean look-alikes")
    summary = {}
    for gate, (per, frames) in results.items():
        caught = sum(len(k["delays"]) for k in per.values())
        total = sum(k["total"] for k in per.values())
        false = sum(k["false"] for k in per.values())
        delays = [d for k in per.values() for d in k["delays"]]
        summary[gate] = (caught, total, false, delays)
        onset = f"onset mean {statistics.mean(delays):.2f} s, max {max(delays):.2f} s" if delays else "no onsets"
        print(f"\n{gate}: recall {caught}/{total} = {caught / max(total, 1):.1%}; {onset}; false alerts {false}; "
              f"frames through the models {sum(frames.values())} (first part {frames['suite']}, kinds {frames['kinds']})")  # fmt: skip
        for name in sorted(per):
            k = per[name]
            d = k["delays"]
            on = f"onset {statistics.mean(d):.2f} / {max(d):.2f} s" if d else "onset -"
            rec = f"{len(d)}/{k['total']}" if k["total"] else "-"
            missed = f"  missed: {', '.join(k['missed'])}" if k["missed"] else ""
            print(f"  {name:17s} recall {rec:6s} {on:22s} false {k['false']}{missed}")
    caught, total, false, delays = summary[list(GATES)[-1]]
    ok = caught == total and false == 0 and (not delays or max(delays) <= 2.0)
    print(f"\ntarget 100% recall, onset <= 2 s, no false alerts: {'MET' if ok else 'NOT MET'}")


if __name__ == "__main__":
    main()
