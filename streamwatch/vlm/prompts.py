"""Prompts and answer parsing for the three VLM tasks. Pure: no I/O, no asyncio.

- compliance: every configured question in one call, answered as one JSON object against a schema
  built from the questions; malformed JSON is repaired where it can be (code fences, prose around
  the object, trailing commas, single quotes, Python literals) and otherwise raises
  :class:`~streamwatch.errors.VLMOutputError` so the router retries or fails over;
- reply: the persona and the image's evidence (OCR text, …) → a warm, specific reply;
- qa: a question about the latest frame, with its OCR text as context.
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass
from typing import Literal

from streamwatch.analysis.model import Detection
from streamwatch.errors import VLMOutputError
from streamwatch.vlm.backend import VLMRequest
from streamwatch.vlm.local import ImageEvidence
from streamwatch.vlm.persona import Persona

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
        (label ``setting:outdoor``); text rules also read the list and text answers."""
        source = f"vlm:{self.model}"
        out: list[Detection] = []
        for a in self.answers:
            if a.value is True:
                out.append(Detection(source, a.question, 1.0))
            elif a.kind == "choice" and isinstance(a.value, str):
                out.append(Detection(source, f"{a.question}:{a.value}", 1.0))
            elif isinstance(a.value, tuple):
                out.extend(Detection(source, a.question, 1.0, text=v) for v in a.value)
            elif a.kind == "text" and isinstance(a.value, str) and a.value:
                out.append(Detection(source, a.question, 1.0, text=a.value))
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
    schema = {"type": "object", "properties": props, "required": [q.id for q in questions], "additionalProperties": False}
    return json.dumps(schema, ensure_ascii=False, separators=(",", ":"))


def _context(evidence: ImageEvidence) -> str:
    bits = []
    if evidence.text_lines:
        bits.append("On-screen text read by OCR: " + " / ".join(f"“{t}”" for t in evidence.text_lines[:12]))
    if evidence.qr:
        bits.append("QR codes: " + ", ".join(evidence.qr[:4]))
    if evidence.labels:
        bits.append("Local detector labels: " + ", ".join(evidence.labels[:12]))
    return "\n".join(bits)


Images = bytes | tuple[bytes, ...] | None  # one JPEG, or a picture fitted as tiles (VLMService), or none


def _images(images: Images) -> tuple[bytes, ...]:
    return () if images is None else (images,) if isinstance(images, bytes) else images


def _parts(images: tuple[bytes, ...]) -> str:
    """What the prompt says about a picture sent as several tiles (see :mod:`streamwatch.vlm.images`)."""
    if len(images) < 2:
        return ""
    return f"The picture is long, so it comes as {len(images)} consecutive parts in reading order; treat them as one image.\n"


def compliance_request(questions: tuple[ComplianceQuestion, ...], images: Images, evidence: ImageEvidence, max_tokens: int) -> VLMRequest:
    images = _images(images)
    lines = [f'- "{q.id}" ({_kind_hint(q)}): {q.question}' for q in questions]
    context = _context(evidence)
    prompt = (
        "You review one frame of a live stream for a moderation team. Answer every question about the image.\n"
        + _parts(images)
        + "\n".join(lines)
        + ("\n\nContext from local detectors (may be incomplete or wrong):\n" + context if context else "")
        + "\n\nReply with one JSON object with exactly these keys and nothing else."
    )
    system = "You are a careful content-compliance reviewer. Answer only with JSON."
    return VLMRequest(prompt, images, system, max_tokens, compliance_schema(questions), 0.0)


def _kind_hint(q: ComplianceQuestion) -> str:
    if q.kind == "choice":
        return "one of " + "|".join(q.options)
    return {"bool": "true/false", "list": "list of strings", "text": "string"}[q.kind]


def single_question_request(q: ComplianceQuestion, image: bytes, evidence: ImageEvidence, max_tokens: int) -> VLMRequest:
    """The same question alone (the benchmark's one-call-per-question baseline)."""
    return compliance_request((q,), image, evidence, max_tokens)


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
    candidate = text[start : end + 1] if end is not None else text[start:] + "}"
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
        return tuple(dict.fromkeys(s for s in (str(i).strip() for i in items if i is not None) if s and s.lower() not in _FALSE))[:20]
    return "" if raw is None else str(raw).strip()[:200]


def parse_compliance(text: str, questions: tuple[ComplianceQuestion, ...], model: str) -> ComplianceAnswer:
    data = extract_json(text)
    lowered = {str(k).strip().lower(): v for k, v in data.items()}
    missing = [q.id for q in questions if q.id.lower() not in lowered]
    if len(missing) == len(questions) or (missing and any(q.kind == "bool" for q in questions if q.id in missing)):
        raise VLMOutputError(f"the answer lacks {', '.join(missing)}")
    return ComplianceAnswer(tuple(Answer(q.id, q.kind, _coerce(q, lowered.get(q.id.lower()))) for q in questions), model)


# --- replies and answers -----------------------------------------------------------------------------


def reply_request(persona: Persona, evidence: ImageEvidence, fan_text: str, images: Images, max_tokens: int) -> VLMRequest:
    images = _images(images)
    p = persona
    system = (
        f"You are {p.name}, a virtual idol, replying live to a fan who sent you an image. {p.personality}\n"
        f"Tone: {p.tone}. Reply in {p.language}, about {p.reply_length} characters, one short paragraph"
        + (", emoji welcome" if p.emoji else ", no emoji")
        + ".\n"
        + (f"Catchphrases you like to use: {' / '.join(p.catchphrases)}.\n" if p.catchphrases else "")
        + (f"You love: {', '.join(p.likes)}.\n" if p.likes else "")
        + (f"Never talk about: {', '.join(p.taboo)}. Never repeat contact details, links or QR codes.\n" if p.taboo else "")
        + ("Example replies:\n" + "\n".join(f"- {e}" for e in p.examples[:4]) if p.examples else "")
    )
    context = _context(evidence)
    prompt = (
        _parts(images)
        + "Reply warmly and specifically to what is in this image"
        + (f' (the fan wrote: "{fan_text[:200]}")' if fan_text else "")
        + "."
        + ("\n" + context if context else "")
        + "\nOnly the reply text."
    )
    return VLMRequest(prompt, images, system, max_tokens, None, 0.7)


def qa_request(question: str, evidence: ImageEvidence, images: Images, max_tokens: int) -> VLMRequest:
    images = _images(images)
    context = _context(evidence)
    prompt = (
        "This is the latest frame of a live stream. Answer the moderator's question about it briefly and factually.\n"
        + _parts(images)
        + (context + "\n" if context else "")
        + f"Question: {question[:500]}"
    )
    return VLMRequest(prompt, images, "You describe live video frames accurately and concisely.", max_tokens, None, 0.0)


def clean_reply(text: str, limit: int) -> str:
    """One paragraph, no surrounding quotes, at most ``limit`` characters."""
    text = " ".join(text.split()).strip().strip('"“”「」')
    return text[:limit]


def summary_request(facts: str, images: Images, persona: Persona | None, max_tokens: int) -> VLMRequest:
    """The post-show summary post: a few frames of the show and its facts (tags, timeline) → title, a few
    sentences and hashtags in Chinese, optionally in the persona's voice."""
    images = _images(images)
    system = (
        "You write short social-media posts (Weibo / Xiaohongshu) that sum up a live show that just ended. "
        "Write in Simplified Chinese. First line: a title of at most 20 characters. Then 2-4 sentences. "
        "Last line: 3-5 hashtags written as #tag#. No contact details, links, QR codes, prices or brand names."
    )
    if persona is not None:
        system += f"\nWrite as {persona.name}, in this tone: {persona.tone}. {persona.personality}"
    prompt = f"These {len(images)} images are moments from the show, in order.\n" + facts + "\nOnly the post."
    return VLMRequest(prompt, images, system, max_tokens, None, 0.7)


def parse_summary(text: str) -> tuple[str, str, tuple[str, ...]] | None:
    """(title, body, hashtags) of a summary answer: the title on the first line, hashtags as ``#tag#`` or
    ``#tag`` anywhere after it; None when there is no title or no body."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    if len(lines) < 2:
        return None
    rest = " ".join(lines[1:])
    tags = tuple(dict.fromkeys(t.strip() for t in re.findall(r"#([^#\s]{1,20})#?", rest) if t.strip()))
    body = " ".join(re.sub(r"#[^#\s]{1,20}#?", "", ln).strip() for ln in lines[1:]).strip()
    title = lines[0].lstrip("#").strip().strip("《》【】*")
    if not title or not body:
        return None
    return title[:40], body[:400], tags[:6]
