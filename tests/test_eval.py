"""`streamwatch eval` (issue 21): compliance answers scored per question over a generated labelled dataset:
precision and recall counted independently from the construction, failures, latency, the HTML with
the misjudged frames; a real HTTP stand-in model that judges by colour, and a model that cannot be reached."""

from __future__ import annotations

import json
import random
from pathlib import Path

import cv2
import numpy as np
import pytest
from chat_server import ChatServer

from streamwatch.cli import main
from streamwatch.vlm.backend import VLMRequest
from streamwatch.vlm.evaluate import Frame, Outcome, items, percentile, score
from streamwatch.vlm.prompts import DEFAULT_QUESTIONS

BRANDS = ["Monster Energy", "Red Bull", "Nike", "星巴克"]


@pytest.mark.parametrize("seed", range(8))
def test_precision_and_recall_per_question(seed: int) -> None:
    rng = random.Random(seed)
    outcomes, tp, fp, fn, brand_right, brand_said, brand_labelled, failures = [], 0, 0, 0, 0, 0, 0, 0
    for i in range(rng.randint(5, 40)):
        truth_x, said_x = rng.random() < 0.4, rng.random() < 0.4
        truth_b = rng.sample(BRANDS, rng.randint(0, 3))
        said_b = rng.sample(BRANDS, rng.randint(0, 3))
        frame = Frame(Path(f"f{i}.jpg"), {"exposure": truth_x, "brands": truth_b})
        if rng.random() < 0.15:  # a failed request: counted apart, in no precision or recall
            outcomes.append(Outcome(frame, None, 1.0, "timeout"))
            failures += 1
            continue
        noisy = [f"  {b.upper()} " if rng.random() < 0.5 else b for b in said_b]  # case and spaces do not matter
        outcomes.append(Outcome(frame, {"exposure": said_x, "brands": noisy, "setting": "outdoor"}, rng.uniform(0.1, 2.0)))
        tp += truth_x and said_x
        fp += said_x and not truth_x
        fn += truth_x and not said_x
        brand_right += len(set(truth_b) & set(said_b))
        brand_said += len(said_b)
        brand_labelled += len(truth_b)
    s = score("m", outcomes, DEFAULT_QUESTIONS)
    q = {x.question: x for x in s.questions}
    assert "outfit" not in q  # text answers are not scored
    assert (q["exposure"].right, q["exposure"].answered, q["exposure"].labelled) == (tp, tp + fp, tp + fn)
    assert (q["brands"].right, q["brands"].answered, q["brands"].labelled) == (brand_right, brand_said, brand_labelled)
    assert q["setting"].labelled == 0 and q["setting"].answered == 0  # not labelled on any frame: not scored
    assert s.failures == failures and s.frames == len(outcomes)
    ok = sorted(o.seconds for o in outcomes if o.answers is not None)
    assert s.p50_s == (ok[(len(ok) + 1) // 2 - 1] if ok else None)
    assert q["exposure"].precision == (tp / (tp + fp) if tp + fp else None)


@pytest.mark.parametrize("values", [[1.0], [3.0, 1.0], [5.0, 1.0, 4.0, 2.0, 3.0]])
def test_nearest_rank_percentiles(values: list[float]) -> None:
    ordered = sorted(values)
    assert percentile(values, 100) == ordered[-1] and percentile(values, 1) == ordered[0]
    assert percentile(values, 50) in ordered and percentile([], 50) is None


def test_items_normalise_answers() -> None:
    assert items("x", True) == {"x"} and items("x", False) == items("x", None) == set()
    assert items("setting", " Outdoor ") == {"setting:outdoor"}
    assert items("brands", ["Red  Bull", "", "NIKE"]) == {"brands:red bull", "brands:nike"}


def judge(req: VLMRequest) -> str:
    """A stand-in model that says 'exposure' when the picture is mostly red."""
    rgb = cv2.imdecode(np.frombuffer(req.images[0], np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]
    red = float(rgb[:, :, 0].mean()) > float(rgb[:, :, 2].mean())
    answer = {"exposure": red, "setting": "indoor_stage", "brands": [], "text": [], "outfit": "", "objects": [], "confidence": 0.9}
    return json.dumps(answer)


def test_eval_command_on_a_generated_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(3)
    data = tmp_path / "set"
    data.mkdir()
    frames, wrong = [], 0
    for i in range(12):
        red = i % 3 == 0
        img = np.full((120, 160, 3), (200, 40, 40) if red else (40, 40, 200), np.uint8)
        img = np.clip(img.astype(int) + rng.integers(-20, 20, img.shape), 0, 255).astype(np.uint8)
        cv2.imwrite(str(data / f"f{i}.jpg"), img[:, :, ::-1])
        label = red if i not in (3, 4) else not red  # two frames the colour judge gets wrong (one FN, one FP)
        wrong += label != red
        frames.append({"image": f"f{i}.jpg", "answers": {"exposure": label, "setting": "indoor_stage"}})
    (data / "labels.json").write_text(json.dumps({"frames": frames}))
    with ChatServer(judge) as srv:
        models = [
            {"id": "colour", "backend": "openai", "endpoint": srv.url, "model_name": "c", "capabilities": ["compliance"]},
            {"id": "dead", "backend": "openai", "endpoint": "http://127.0.0.1:9/v1", "model_name": "d", "capabilities": ["compliance"]},
        ]
        registry = tmp_path / "registry.json"
        registry.write_text(json.dumps({"models": models}))
        config = tmp_path / "c.toml"
        config.write_text(f'[vlm]\nregistry = "{registry}"\n')
        html = tmp_path / "eval.html"
        assert main(["eval", str(data), "--models", "colour,dead", "--no-cascade", "-c", str(config), "-o", str(html)]) == 0
        asked = srv.count
    out = capsys.readouterr().out
    red_labels = sum(f["answers"]["exposure"] for f in frames)
    said_red = sum(1 for i in range(12) if i % 3 == 0)
    right = said_red - 1  # frame 3 is red but labelled no
    rows = {tuple(line.split()[:2]): line.split()[2:] for line in out.splitlines() if line.startswith(("exposure", "setting"))}
    assert rows[("exposure", "colour")][2] == f"{right}/{said_red}/{red_labels}"
    assert rows[("exposure", "colour")][:2] == [f"{right / said_red:.0%}", f"{right / red_labels:.0%}"]
    assert rows[("setting", "colour")][2] == "12/12/12"
    assert rows[("exposure", "dead")] == ["-", "-", "0/0/0"]  # failed frames count as failures, in no precision or recall
    assert asked == 12  # one request per frame: the judge never failed
    summary = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.startswith(("colour ", "dead "))}
    assert summary["colour"][:2] == ["12", "0"] and summary["dead"][:2] == ["12", "12"]  # every dead frame is a failure
    page = html.read_text()
    assert f"Misjudged by colour ({wrong})" in page and "Misjudged by dead (12)" in page
    assert page.count("data:image/jpeg;base64,") == wrong + 12 and "cannot reach" in page


@pytest.mark.parametrize("seed", range(4))
def test_export_reviews_makes_a_dataset_eval_reads(seed: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Random alerts (the compliance model's and the local cascade's) on a few frames, some reviewed (the latest
    review wins), through `export-reviews` into a dataset that `eval` scores."""
    from streamwatch.events.model import AlertEvent, Evidence, ReviewAction, ReviewEvent, Severity
    from streamwatch.events.store import EventStore

    rng = random.Random(seed)
    store = EventStore(tmp_path / "d")
    frames = []
    for i in range(4):
        _, buf = cv2.imencode(".jpg", np.full((90, 120, 3), (40 * i, 200, 40), np.uint8))
        frames.append(store.save_image("s", buf.tobytes()))
    kinds = [("vlm:judge", "vlm_exposure", ("exposure",)), ("vlm:judge", "vlm_outdoor", ("setting:outdoor",)), ("qr", "qr_code", ("qr",))]
    alerts = []
    for i in range(12):
        kind, rule, labels = rng.choice(kinds)
        ev = AlertEvent(
            stream="s", at=100.0 + i, offset=float(i), rule=rule, severity=Severity.HIGH, message="m", confidence=0.9,
            evidence=Evidence(kind, labels=labels, frame=rng.choice(frames)),
        )  # fmt: skip
        alerts.append(store.append([ev])[0].event())
    expected: dict[str, dict[str, object]] = {}
    rules: dict[str, dict[str, bool]] = {}
    for a in alerts:
        assert isinstance(a, AlertEvent)
        if rng.random() < 0.3:
            continue  # never reviewed: says nothing
        actions = [rng.choice(list(ReviewAction)) for _ in range(rng.randint(1, 2))]
        store.append(
            [ReviewEvent(stream="s", at=200.0, offset=a.offset, alert_id=a.id, action=x, by="mod", note=f"n{a.id}") for x in actions]
        )
        confirmed = actions[-1] is ReviewAction.CONFIRM
        frame = a.evidence.frame
        assert frame is not None
        rules.setdefault(frame, {})[a.rule] = rules.get(frame, {}).get(a.rule, False) or confirmed
        answers = expected.setdefault(frame, {})
        if a.rule == "vlm_exposure":
            answers["exposure"] = confirmed
        elif a.rule == "vlm_outdoor" and confirmed:
            answers["setting"] = "outdoor"
    store.close()
    out = tmp_path / "set"
    assert main(["export-reviews", "s", "--data", str(tmp_path / "d"), "-o", str(out)]) == 0
    labels = json.loads((out / "labels.json").read_text())["frames"]
    assert len(labels) == len(rules) and "reviewed frames" in capsys.readouterr().out
    by_alerts = {tuple(f["alerts"]): f for f in labels}
    for f in labels:
        assert (out / f["image"]).is_file()
    got = {next(a.evidence.frame for a in alerts if a.id == f["alerts"][0]): f for f in by_alerts.values()}  # type: ignore[union-attr]
    assert {k: v["answers"] for k, v in got.items()} == {k: expected.get(k, {}) for k in rules}
    assert {k: v["rules"] for k, v in got.items()} == rules
    # eval reads it: a stand-in that always says "no exposure, indoor stage" is scored against the desk's decisions
    said_no = json.dumps({"exposure": False, "setting": "indoor_stage", "brands": [], "text": [], "outfit": "", "objects": []})
    with ChatServer(lambda r: said_no) as srv:
        registry = tmp_path / "registry.json"
        model = {"id": "judge", "backend": "openai", "endpoint": srv.url, "model_name": "j", "capabilities": ["compliance"]}
        registry.write_text(json.dumps({"models": [model]}))
        config = tmp_path / "c.toml"
        config.write_text(f'[vlm]\nregistry = "{registry}"\n')
        assert main(["eval", str(out), "--models", "judge", "-c", str(config)]) == 0
    table = capsys.readouterr().out
    confirmed_x = sum(1 for a in expected.values() if a.get("exposure") is True)
    row = next(line.split() for line in table.splitlines() if line.startswith("exposure"))
    assert row[-1] == f"0/0/{confirmed_x}"  # never says yes: no item answered, every confirmed exposure missed
