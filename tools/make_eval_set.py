#!/usr/bin/env python3
"""A labelled eval set for ``streamwatch eval``: real photos (scikit-image) at 1280×720 with planted
captions (Pillow + Noto Sans CJK: contact spam, gambling, clean) and QR codes (segno: off-site, and the
show's own allowed domain), labelled with ``answers`` and ``rules: {rule: bool}`` as export-reviews
writes them. Deterministic for a seed.

    python tools/make_eval_set.py DIR [--frames 12] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_overlay_suite as suite

PHOTOS = ["coffee", "astronaut", "chelsea", "rocket", "camera", "cat"]
CAPTIONS = {  # caption → the rule it must raise ("" = none)
    "主播福利 加微信 abc12345 送礼物": "contact_spam",
    "QQ群 123456789 进群领福利": "contact_spam",
    "网赌平台 注册送彩金": "gambling",
    "今晚的舞台真好看 谢谢大家": "",
}
QRS = {"https://evil.example/join?g=7": "qr_code", "https://example-show.com/tickets": ""}  # the show's own domain is allowed
RULES = ("contact_spam", "gambling", "qr_code", "exposure")
FONT = suite.FONT


def generated_set(folder: Path, seed: int, n: int) -> list[dict[str, object]]:
    """Write ``n`` frames and ``labels.json`` into ``folder`` (created); the labels' frames."""
    rng = random.Random(seed)
    folder.mkdir(parents=True)
    frames = []
    for i in range(n):
        img = np.ascontiguousarray(suite.background(PHOTOS[i % len(PHOTOS)], 1280, 720, 0)[:720, :1280])
        rules = dict.fromkeys(RULES, False)
        caption = rng.choice([*CAPTIONS, None])
        if caption is not None:
            rgba = suite.caption_image(caption, rng.choice([32, 40]), band=True)
            suite.paste(img, rgba, *suite.place(rng.choice(["bottom-left", "top-left"]), rgba.shape[1], rgba.shape[0], 1280, 720))
            if CAPTIONS[caption]:
                rules[CAPTIONS[caption]] = True
        payload = rng.choice([*QRS, None])
        if payload is not None:
            rgba = suite.qr_image(payload, rng.choice([180, 240]), inverted=rng.random() < 0.3)
            suite.paste(img, rgba, *suite.place("top-right", rgba.shape[1], rgba.shape[0], 1280, 720))
            rules["qr_code"] = rules["qr_code"] or bool(QRS[payload])
        cv2.imwrite(str(folder / f"f{i}.png"), img[:, :, ::-1])
        frames.append({"image": f"f{i}.png", "answers": {"exposure": False, "setting": "indoor_stage"}, "rules": rules})
    (folder / "labels.json").write_text(json.dumps({"frames": frames}, ensure_ascii=False), encoding="utf-8")
    return frames


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--frames", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    frames = generated_set(a.out, a.seed, a.frames)
    should = {r: sum(bool(f["rules"][r]) for f in frames) for r in RULES}  # type: ignore[index]
    print(f"wrote {len(frames)} frames to {a.out}; rules that should fire: {should}")


if __name__ == "__main__":
    main()
