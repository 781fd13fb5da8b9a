"""Measure compliance judgments instead of assuming them (``streamwatch eval``, issue 21).

A dataset is a folder of images and ``labels.json``::

    {"frames": [{"image": "a.jpg", "answers": {"exposure": false, "setting": "indoor_stage", "brands": ["Monster Energy"]}}]}

A frame may also carry ``rules: {rule_id: bool}`` (as ``export-reviews`` writes them): the local
cascade and each model's answers, through the same policy, are scored per rule
(:mod:`streamwatch.vlm.evaluate_rules`). Only the questions a frame labels are scored on it. Every
answer is turned into *positive items*: a yes to a yes/no question is ``exposure``; a choice is
``setting:outdoor``; each list entry is ``brands:monster energy`` (case and surrounding space
ignored); text answers are not scored. Per question, precision = right items / items answered,
recall = right items / items labelled. A frame the model failed on (error, timeout, unusable output)
counts as a failure and in no precision or recall.

The scoring and the HTML are pure (:func:`items`, :func:`score`, :func:`render_html`); the command
(:mod:`streamwatch.cli_eval`) runs each model over the frames.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Any

from streamwatch.errors import ConfigError
from streamwatch.vlm.evaluate_rules import RuleScore, rules_wrong, score_rules
from streamwatch.vlm.prompts import ComplianceQuestion

Value = bool | str | list[str] | tuple[str, ...] | None


@dataclass(frozen=True, slots=True)
class Frame:
    image: Path
    truth: Mapping[str, Value]
    rules: Mapping[str, bool] = field(default_factory=dict)  # rule id → should it fire on this frame


@dataclass(frozen=True, slots=True)
class Outcome:
    """One model's answer to one frame: ``answers`` (None: it failed, ``error`` says why) and the seconds it took."""

    frame: Frame
    answers: Mapping[str, Value] | None
    seconds: float
    error: str = ""
    rules: frozenset[str] | None = None  # the policy's frame rules the answer (or the cascade) raised
    tokens: int | None = None  # output tokens the server reported for this frame (all attempts), None: no usage


@dataclass(frozen=True, slots=True)
class QuestionScore:
    question: str
    right: int
    answered: int
    labelled: int

    @property
    def precision(self) -> float | None:
        return self.right / self.answered if self.answered else None

    @property
    def recall(self) -> float | None:
        return self.right / self.labelled if self.labelled else None


@dataclass(frozen=True, slots=True)
class ModelScore:
    model: str
    frames: int
    failures: int
    p50_s: float | None
    p95_s: float | None
    questions: tuple[QuestionScore, ...] = field(default=())
    rules: tuple[RuleScore, ...] = field(default=())
    output_tokens: float | None = None  # mean per frame (answered or not), where the server reports usage
    misjudged: tuple[Outcome, ...] = field(default=(), repr=False)


def load_dataset(folder: Path) -> list[Frame]:
    """The frames of ``folder/labels.json``; ConfigError with the reason when it is not usable."""
    path = folder / "labels.json"
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        frames = [Frame(folder / f["image"], dict(f.get("answers", {})), _rules(f.get("rules", {}))) for f in raw["frames"]]
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror or e}") from e
    except (ValueError, KeyError, TypeError) as e:
        shape = '{"frames": [{"image": FILE, "answers": {QUESTION: VALUE}, "rules": {RULE: true|false}}]}'
        raise ConfigError(f"{path}: expected {shape} ({e})") from e
    missing = [str(f.image.name) for f in frames if not f.image.is_file()]
    if missing:
        raise ConfigError(f"{path}: images not found: {', '.join(missing[:5])}")
    return frames


def _rules(raw: object) -> dict[str, bool]:
    if not isinstance(raw, dict) or not all(isinstance(v, bool) for v in raw.values()):
        raise TypeError(f"rules must map rule ids to true or false, not {raw!r}")
    return {str(k): v for k, v in raw.items()}


def items(question: str, value: Value) -> set[str]:
    """The positive items of one answer (see the module docstring)."""
    if value is True:
        return {question}
    if isinstance(value, list | tuple):
        return {f"{question}:{' '.join(str(v).split()).lower()}" for v in value if str(v).strip()}
    if isinstance(value, str) and value.strip():
        return {f"{question}:{value.strip().lower()}"}
    return set()


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (``q`` in 0..100), None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))
    return ordered[int(rank) - 1]


def score(model: str, outcomes: Sequence[Outcome], questions: Sequence[ComplianceQuestion]) -> ModelScore:
    scored = [q.id for q in questions if q.kind != "text"]
    counts = {q: [0, 0, 0] for q in scored}  # right, answered, labelled
    misjudged: list[Outcome] = []
    for o in outcomes:
        if o.answers is None:
            misjudged.append(o)
            continue
        wrong = False
        for q in scored:
            if q not in o.frame.truth:
                continue
            truth, said = items(q, o.frame.truth[q]), items(q, o.answers.get(q))
            counts[q][0] += len(truth & said)
            counts[q][1] += len(said)
            counts[q][2] += len(truth)
            wrong = wrong or truth != said
        if wrong or rules_wrong(o.frame.rules, o.rules):
            misjudged.append(o)
    seconds = [o.seconds for o in outcomes if o.answers is not None]
    tokens = [o.tokens for o in outcomes if o.tokens]  # failed frames spent theirs too
    return ModelScore(
        model,
        len(outcomes),
        sum(o.answers is None for o in outcomes),
        percentile(seconds, 50),
        percentile(seconds, 95),
        tuple(QuestionScore(q, *counts[q]) for q in scored),
        score_rules([(o.frame.rules, o.rules) for o in outcomes if o.answers is not None]),
        sum(tokens) / len(tokens) if tokens else None,
        tuple(misjudged),
    )


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.0%}"


def _s(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}s"


def _rows(scores: Sequence[ModelScore]) -> list[tuple[str, str, str, str, str]]:
    """(what, model, precision, recall, counts): per question, then per rule, each model side by side."""
    out = []
    for q in dict.fromkeys(x.question for s in scores for x in s.questions):
        for s in scores:
            for x in s.questions:
                if x.question == q:
                    out.append((q, s.model, _pct(x.precision), _pct(x.recall), f"{x.right}/{x.answered}/{x.labelled}"))
    for r in dict.fromkeys(x.rule for s in scores for x in s.rules):
        for s in scores:
            for y in s.rules:
                if y.rule == r:
                    out.append((f"rule {r}", s.model, _pct(y.precision), _pct(y.recall), f"{y.right}/{y.fired}/{y.positive}"))
    return out


def _tokens(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f}"


def render_text(scores: Sequence[ModelScore]) -> str:
    """Side by side, one row per question (or rule) and model; then each model's failures, latency and tokens."""
    lines = [f"{'question / rule':<24} {'model':<20} {'precision':>9} {'recall':>7} {'right/said/labelled':>20}"]
    lines.extend(f"{w:<24} {m:<20} {p:>9} {r:>7} {c:>20}" for w, m, p, r, c in _rows(scores))
    lines.append("")
    lines.append(f"{'model':<20} {'frames':>6} {'failures':>8} {'p50':>7} {'p95':>7} {'out tokens/frame':>16}")
    lines.extend(
        f"{s.model:<20} {s.frames:>6} {s.failures:>8} {_s(s.p50_s):>7} {_s(s.p95_s):>7} {_tokens(s.output_tokens):>16}" for s in scores
    )
    return "\n".join(lines)


def render_html(scores: Sequence[ModelScore], thumbnails: Mapping[Path, bytes]) -> str:
    """The tables and, per model, the misjudged frames with the labels and the model's answer (JPEG thumbnails)."""
    out = ["<!doctype html><meta charset='utf-8'><title>streamwatch eval</title>", "<h1>streamwatch eval</h1>"]
    head = "<th>question / rule</th><th>model</th><th>precision</th><th>recall</th><th>right/said/labelled</th>"
    out.append(f"<table id='scores'><tr>{head}</tr>")
    out.extend(f"<tr><td>{escape(w)}</td><td>{escape(m)}</td><td>{p}</td><td>{r}</td><td>{c}</td></tr>" for w, m, p, r, c in _rows(scores))
    head = "<th>model</th><th>frames</th><th>failures</th><th>p50</th><th>p95</th><th>out tokens/frame</th>"
    out.append(f"</table><table id='models'><tr>{head}</tr>")
    out.extend(
        f"<tr><td>{escape(s.model)}</td><td>{s.frames}</td><td>{s.failures}</td><td>{_s(s.p50_s)}</td><td>{_s(s.p95_s)}</td>"
        f"<td>{_tokens(s.output_tokens)}</td></tr>"
        for s in scores
    )
    out.append("</table>")
    for s in scores:
        out.append(f"<h2>Misjudged by {escape(s.model)} ({len(s.misjudged)})</h2><table class='misjudged'>")
        for o in s.misjudged:
            thumb = thumbnails.get(o.frame.image)
            img = f"<img alt='frame' src='data:image/jpeg;base64,{base64.b64encode(thumb).decode()}'>" if thumb else ""
            said = escape(o.error) if o.answers is None else escape(json.dumps(dict(o.answers), ensure_ascii=False, default=list))
            if o.rules is not None and o.frame.rules:
                said += escape(f"; rules fired: {', '.join(sorted(o.rules)) or 'none'}")
            truth = escape(json.dumps({**o.frame.truth, **({"rules": dict(o.frame.rules)} if o.frame.rules else {})}, ensure_ascii=False))
            out.append(f"<tr><td>{img}<br>{escape(o.frame.image.name)}</td><td>labels: {truth}</td><td>answer: {said}</td></tr>")
        out.append("</table>")
    return "\n".join(out)


def answers_of(answer: Any, questions: Sequence[ComplianceQuestion]) -> dict[str, Value]:
    """A :class:`~streamwatch.vlm.prompts.ComplianceAnswer` as plain values per question id."""
    return {q.id: answer.get(q.id) for q in questions}
