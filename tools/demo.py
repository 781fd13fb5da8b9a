#!/usr/bin/env python3
"""`make demo`: generate the labelled concert-like clip and run `streamwatch sample` on it.

(Later issues turn this into the full daemon demo: RTMP listener, live alerts, overlay, report.)
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import make_sample_stream  # noqa: E402


def main() -> int:
    out = ROOT / "artifacts" / "demo"
    out.mkdir(parents=True, exist_ok=True)
    clip = out / "concert.mp4"
    if not clip.exists():
        print(f"generating {clip} …")
        make_sample_stream.write_clip(clip, width=1280, height=720, fps=30, gop_s=2.0)
    subprocess.run([sys.executable, "-m", "streamwatch", "probe", str(clip)], check=True)
    subprocess.run([sys.executable, "-m", "streamwatch", "sample", str(clip), "--every", "1", "--out", str(out / "samples")], check=True)
    records = [json.loads(line) for line in (out / "samples" / "samples.jsonl").read_text().splitlines()]
    decisions = Counter(r["decision"] for r in records if r["type"] == "sample")
    print("decisions:", dict(decisions))
    for r in records:
        if r["type"] == "health" and r["kind"] != "state":
            print(f"  health at {r['offset']:6.1f}s: {r['text']}")
    print(f"kept frames: {out / 'samples' / 'frames'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
