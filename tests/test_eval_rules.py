"""`streamwatch eval` scores the local cascade (nudity, OCR word lists, QR) per policy rule, side by side with
the rules a model's answers raise through the same policy, and counts each model's output tokens (issue 21).

The dataset is generated (tools/make_eval_set.py): real photos (scikit-image) with planted QR codes (segno; off-site and allowed
domains) and captions (Pillow + Noto Sans CJK: contact spam, gambling, clean), labelled with
``rules: {rule: bool}`` as export-reviews writes them. Expected counts come from the construction."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import pytest
from chat_server import ChatServer

from streamwatch.cli import main
from streamwatch.vlm.backend import VLMRequest
from streamwatch.vlm.evaluate_rules import rules_wrong, score_rules

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from make_eval_set import FONT, RULES, generated_set

MODEL_TEXT = "加微信 abc12345"  # the stand-in model reads this on every frame


@pytest.mark.parametrize("seed", range(6))
def test_rule_scores_count_frames(seed: int) -> None:
    rng = random.Random(seed)
    frames = []
    for _ in range(rng.randint(3, 30)):
        truth = {r: rng.random() < 0.4 for r in rng.sample(RULES, rng.randint(0, 4))}
        fired = None if rng.random() < 0.1 else frozenset(r for r in RULES if rng.random() < 0.4)
        frames.append((truth, fired))
    scores = {s.rule: s for s in score_rules(frames)}
    assert set(scores) == {r for t, _ in frames for r in t}
    for rule, s in scores.items():
        seen = [(t[rule], rule in f) for t, f in frames if f is not None and rule in t]
        assert (s.right, s.fired, s.positive, s.labelled) == (
            sum(a and b for a, b in seen), sum(b for _, b in seen), sum(a for a, _ in seen), len(seen)
        )  # fmt: skip
        assert s.recall == (s.right / s.positive if s.positive else None)
    for t, f in frames:
        assert rules_wrong(t, f) == (f is not None and any((r in f) != v for r, v in t.items()))


def reader(req: VLMRequest) -> str:
    """A stand-in model: no exposure, and it reads the same contact text on every frame."""
    answer = {
        "exposure": False,
        "setting": "indoor_stage",
        "brands": [],
        "text": [MODEL_TEXT],
        "outfit": "",
        "objects": [],
        "confidence": 0.9,
    }
    return json.dumps(answer, ensure_ascii=False)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("seed", [0, 1])
def test_eval_scores_the_local_cascade_per_rule_beside_a_model(seed: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("rapidocr_onnxruntime")
    pytest.importorskip("zxingcpp")
    if not FONT.exists():
        pytest.skip("Noto Sans CJK missing (Debian fonts-noto-cjk)")
    frames = generated_set(tmp_path / "set", seed, 8)
    with ChatServer(reader) as srv:
        models = [{"id": "reader", "backend": "openai", "endpoint": srv.url, "model_name": "r", "capabilities": ["compliance"]}]
        (tmp_path / "registry.json").write_text(json.dumps({"models": models}))
        config = tmp_path / "c.toml"
        config.write_text(f'[vlm]\nregistry = "{tmp_path / "registry.json"}"\n[analysis]\nanalyzers = ["nudity", "ocr", "qr"]\n')
        html = tmp_path / "eval.html"
        assert main(["eval", str(tmp_path / "set"), "--models", "reader", "-c", str(config), "-o", str(html)]) == 0
    out = capsys.readouterr().out
    rows = {
        (p[1], p[2] if p[2] != "local" else "local cascade"): p[-3:] for line in out.splitlines() if (p := line.split())[:1] == ["rule"]
    }
    n = len(frames)
    for rule in ("contact_spam", "gambling", "qr_code"):
        positive = sum(bool(f["rules"][rule]) for f in frames)  # type: ignore[index]
        # the cascade reads every planted caption and code, and raises nothing on the clean ones and the allowed domain
        assert rows[(rule, "local cascade")][2] == f"{positive}/{positive}/{positive}", (rule, out)
    # exposure: labelled no everywhere (photos without nudity): nothing right to find
    assert rows[("exposure", "local cascade")][2].endswith("/0") and rows[("exposure", "local cascade")][2].startswith("0/")
    # the model's answers through the same policy: its contact text raises contact_spam on every frame, nothing else
    contact = sum(bool(f["rules"]["contact_spam"]) for f in frames)  # type: ignore[index]
    assert rows[("contact_spam", "reader")][2] == f"{contact}/{n}/{contact}"
    assert rows[("qr_code", "reader")][2] == f"0/0/{sum(bool(f['rules']['qr_code']) for f in frames)}"  # type: ignore[index]
    summary = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.startswith(("reader ", "local cascade "))}
    tokens = len(reader(VLMRequest("")))  # the scripted server reports the content's length as its output tokens
    assert summary["reader"][:2] == [str(n), "0"] and summary["reader"][-1] == str(tokens)
    assert summary["local"][1:3] == [str(n), "0"] and summary["local"][-1] == "-"  # "local cascade": no tokens
    page = html.read_text()
    wrong = sum({r for r, v in f["rules"].items() if v} != {"contact_spam"} for f in frames)  # type: ignore[attr-defined]
    assert "rule contact_spam" in page and f"Misjudged by reader ({wrong})" in page and "rules fired: contact_spam" in page
