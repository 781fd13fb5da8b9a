"""The compliance questions, their JSON schema, and the parsing of a model's answer. Pure.

All configured questions go in one call and come back as one JSON object. The answer is read
strictly: code fences, prose around the object, trailing commas, single quotes and Python literals are
accepted, but **a cut-off object is never completed** — JSON that does not close raises
:class:`~streamwatch.errors.VLMTruncated` (a missing key would otherwise read as "nothing seen").
Every yes-answer carries the model's own ``confidence`` (a required key of the schema, 0–1); an
answer without one is given confidence 0, never a made-up constant. Text values are cleaned of
control and replacement characters.
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass
from typing import Literal

from streamwatch.analysis.model import Detection
from streamwatch.errors import VLMOutputError, VLMTruncated
from streamwatch.vlm.output import clean_text

CONFIDENCE = "confidence"  # the key of the model's own confidence in its yes-answers

Kind = Literal["bool", "choice", "list", "text"]
Value = bool | str | tuple[str, ...] | None


@dataclass(frozen=True, slots=True)
class ComplianceQuestion:
    id: str
    question: str
    kind: Kind = "bool"
    options: tuple[str, ...] = ()  # choice


DEFAULT_QUESTIONS: tuple[ComplianceQuestion, ...] = (
    ComplianceQuestion("exposure", "Does anyone on screen show exposed private body parts or wear clearly revealing clothing?"),
    ComplianceQuestion(
        "setting", "Where is this: an indoor stage, a studio, outdoors, or other?", "choice", ("indoor_stage", "studio", "outdoor", "other")
    ),
    ComplianceQuestion("brands", "Which logos or brand names are visible? Empty list if none.", "list"),
    ComplianceQuestion("text", "What text is visible on screen? One string per line, empty list if none.", "list"),
    ComplianceQuestion("outfit", "The main performer's outfit in a few words (empty if nobody is visible).", "text"),
    ComplianceQuestion("objects", "Up to five main objects visible.", "list"),
)


@dataclass(frozen=True, slots=True)
class Answer:
    question: str  # question id
    kind: Kind
    value: Value


@dataclass(frozen=True, slots=True)
class ComplianceAnswer:
    answers: tuple[Answer, ...]
    model: str
    confidence: float = 0.0  # the model's own, 0–1 (0 when it gave none)

    def get(self, qid: str) -> Value:
        return next((a.value for a in self.answers if a.question == qid), None)

    @property
    def tags(self) -> tuple[str, ...]:
        """Scene tags for the report and search: ``setting=indoor_stage``, ``outfit=red dress``, ``objects=guitar`` …"""
        out: list[str] = []
        for a in self.answers:
            if isinstance(a.value, tuple):
                out.extend(f"{a.question}={v}" for v in a.value)
            elif isinstance(a.value, str) and a.value:
                out.append(f"{a.question}={a.value}")
            elif a.value is True:
                out.append(a.question)
        return tuple(out)

    def detections(self) -> tuple[Detection, ...]:
        """Answers as detections for the policy: ``detector = "vlm"`` rules match yes-answers and choices
        (label ``setting:outdoor``); text rules also read the list and text answers. Their confidence is
        the model's own (:attr:`confidence`)."""
        source, c = f"vlm:{self.model}", self.confidence
        out: list[Detection] = []
        for a in self.answers:
            if a.value is True:
                out.append(Detection(source, a.question, c))
            elif a.kind == "choice" and isinstance(a.value, str):
                out.append(Detection(source, f"{a.question}:{a.value}", c))
            elif isinstance(a.value, tuple):
                out.extend(Detection(source, a.question, c, text=v) for v in a.value)
            elif a.kind == "text" and isinstance(a.value, str) and a.value:
                out.append(Detection(source, a.question, c, text=a.value))
        return tuple(out)


def compliance_schema(questions: tuple[ComplianceQuestion, ...]) -> str:
    props: dict[str, object] = {}
    for q in questions:
        if q.kind == "bool":
            props[q.id] = {"type": "boolean", "description": q.question}
        elif q.kind == "choice":
            props[q.id] = {"type": "string", "enum": list(q.options), "description": q.question}
        elif q.kind == "list":
            props[q.id] = {"type": "array", "items": {"type": "string"}, "maxItems": 20, "description": q.question}
        else:
            props[q.id] = {"type": "string", "description": q.question}
    # no minimum/maximum: not every structured-output engine takes numeric bounds (parsing clamps)
    props[CONFIDENCE] = {"type": "number", "description": "How sure you are of these answers, from 0 (guessing) to 1 (certain)."}
    required = [q.id for q in questions] + [CONFIDENCE]
    schema = {"type": "object", "properties": props, "required": required, "additionalProperties": False}
    return json.dumps(schema, ensure_ascii=False, separators=(",", ":"))


# --- parsing -----------------------------------------------------------------------------------------

_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.S)
_TRAILING_COMMA = re.compile(r",\s*([}\]])")


def extract_json(text: str) -> dict[str, object]:
    """The first JSON object in a model's answer, repaired where that is safe."""
    m = _FENCE.search(text)
    if m:
        text = m.group(1)
    start = text.find("{")
    if start < 0:
        raise VLMOutputError("no JSON object in the answer")
    end = _matching_brace(text, start)
    if end is None:  # cut off: never completed into an answer
        raise VLMTruncated(f"the JSON object in the answer never closes: {text[start:][-60:]!r}", text[start:])
    candidate = text[start : end + 1]
    for attempt in (candidate, _TRAILING_COMMA.sub(r"\1", candidate)):
        try:
            value = json.loads(attempt)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            return value
    try:  # single quotes / True / None: a Python literal is unambiguous enough
        value = ast.literal_eval(_TRAILING_COMMA.sub(r"\1", candidate))
    except (ValueError, SyntaxError, MemoryError, RecursionError) as e:
        raise VLMOutputError(f"malformed JSON in the answer: {candidate[:80]!r}") from e
    if not isinstance(value, dict):
        raise VLMOutputError("the answer is not a JSON object")
    return value


def _matching_brace(text: str, start: int) -> int | None:
    depth, in_str, esc = 0, False, False
    for i in range(start, len(text)):
        c = text[i]
        if in_str:
            esc = (c == "\\") and not esc
            if c == '"' and not esc:
                in_str = False
            continue
        if c == '"':
            in_str = True
        elif c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return i
    return None


_TRUE = {"true", "yes", "y", "1", "是", "有"}
_FALSE = {"false", "no", "n", "0", "否", "没有", "无", "none", ""}


def _coerce(q: ComplianceQuestion, raw: object) -> Value:
    if q.kind == "bool":
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.strip().lower() in _TRUE | _FALSE:
            return raw.strip().lower() in _TRUE
        raise VLMOutputError(f"{q.id}: expected true/false, got {raw!r:.60}")
    if q.kind == "choice":
        value = str(raw).strip().lower().replace(" ", "_") if raw is not None else ""
        return value if value in q.options else ("other" if "other" in q.options else None)
    if q.kind == "list":
        if raw is None:
            return ()
        items = raw if isinstance(raw, list) else [p for p in re.split(r"[,;，、\n]", str(raw))]
        cleaned = (clean_text(str(i), one_line=True)[:200] for i in items if i is not None)
        return tuple(dict.fromkeys(s for s in cleaned if s and s.lower() not in _FALSE))[:20]
    return "" if raw is None else clean_text(str(raw), one_line=True)[:200]


def parse_compliance(text: str, questions: tuple[ComplianceQuestion, ...], model: str) -> ComplianceAnswer:
    data = extract_json(text)
    lowered = {str(k).strip().lower(): v for k, v in data.items()}
    missing = [q.id for q in questions if q.id.lower() not in lowered]
    if len(missing) == len(questions) or (missing and any(q.kind == "bool" for q in questions if q.id in missing)):
        raise VLMOutputError(f"the answer lacks {', '.join(missing)}")
    answers = tuple(Answer(q.id, q.kind, _coerce(q, lowered.get(q.id.lower()))) for q in questions)
    return ComplianceAnswer(answers, model, _confidence(lowered.get(CONFIDENCE)))


def _confidence(raw: object) -> float:
    """The model's own confidence: a number 0–1 (or a percentage); 0 when it gave none."""
    if isinstance(raw, str):
        try:
            raw = float(raw.strip().rstrip("%")) / (100 if raw.strip().endswith("%") else 1)
        except ValueError:
            return 0.0
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or raw != raw:
        return 0.0
    value = float(raw) / 100 if 1 < raw <= 100 else float(raw)
    return min(1.0, max(0.0, value))
