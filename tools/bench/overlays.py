#!/usr/bin/env python3
"""Overlay recall and onset delay: the region-level change signal against the global-pHash gate.

The overlay suite (tools/make_overlay_suite.py: still and slowly panning photos at 540p–1080p with
captions 20–34 px and QR codes 80–250 px, dark-on-light and inverted, near an edge, each shown for
2–6 s) runs through the real daemon cascade (``streamwatch analyze`` path) twice:

- baseline: the global-pHash gate (``sampling.regions = false``, ``analysis.regional = false``): dedupe,
  frozen detection and result cache keyed on the 64-bit pHash alone, as before the change signal;
- streamwatch: region-level change signal + region-aware reuse and changed-region analysis (defaults).

An overlay is caught when its rule alerts within 2 s of its first frame. Both runs use the same
analyzers (zxing-cpp for QR), so the difference is the gating alone. Target: 100% recall, onset ≤ 2 s,
clean captions silent. Run: ``python tools/bench/overlays.py``.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))

from make_overlay_suite import SUITE, write_clip  # noqa: E402

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


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        clips = [(c, Path(tmp) / f"{c.name}.mp4") for c in SUITE]
        labels = {c.name: write_clip(c, path) for c, path in clips}
        results: dict[str, dict[str, Any]] = {}
        for gate, over in GATES.items():
            caught, missed, delays, false, frames = 0, [], [], 0, 0
            for c, path in clips:
                alerts, n = run(path, Path(tmp) / f"d-{len(results)}-{c.name}", over)
                frames += n
                overlays: list[dict[str, Any]] = labels[c.name]["overlays"]  # type: ignore[assignment]
                for o in overlays:
                    if not o["expect"]:
                        continue
                    hits = [t - o["start"] for r, t in alerts if r == o["expect"] and -0.05 <= t - o["start"] <= 2.0]
                    if hits:
                        caught += 1
                        delays.append(min(hits))
                    else:
                        missed.append(f"{c.name}:{o['expect']}@{o['start']}({o['kind']} {o['size']}px)")
                wanted = {o["expect"] for o in overlays}
                false += len([a for a in alerts if a[0] not in wanted])
            total = caught + len(missed)
            results[gate] = {"recall": caught / total, "caught": caught, "total": total, "delays": delays, "missed": missed,
                             "false": false, "frames": frames}  # fmt: skip
    print(f"overlay suite: {len(SUITE)} clips, {results[next(iter(GATES))]['total']} planted overlays (+ clean captions)")
    for gate, r in results.items():
        d = r["delays"]
        onset = f"onset mean {statistics.mean(d):.2f} s, max {max(d):.2f} s" if d else "no onsets"
        print(f"{gate:38s} recall {r['caught']:2d}/{r['total']} = {r['recall']:5.1%}  {onset}; "
              f"false alerts {r['false']}; frames through the models {r['frames']}")  # fmt: skip
        if r["missed"]:
            print(f"  missed: {', '.join(r['missed'])}")
    base, new = results.values()
    print(f"recall: {new['recall']:.0%} vs {base['recall']:.0%} for the baseline "
          f"({new['caught'] - base['caught']} more overlays caught)")  # fmt: skip
    ok = new["recall"] == 1.0 and new["false"] == 0 and max(new["delays"]) <= 2.0
    print(f"target 100% recall, onset <= 2 s, clean captions silent: {'MET' if ok else 'NOT MET'}")


if __name__ == "__main__":
    main()
