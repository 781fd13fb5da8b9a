"""Prompts and answer parsing for the three VLM tasks. Pure: no I/O, no asyncio.

- compliance: every configured question in one call, answered as one JSON object against a schema
  built from the questions (questions and parsing: :mod:`streamwatch.vlm.compliance`);
- reply: the persona and the image's evidence (OCR text, …) → a warm, specific reply;
- qa: a question about the latest frame, with its OCR text as context.

Replies and answers are cleaned (:func:`clean_reply`, :func:`clean_answer`): no control or
replacement characters, a length cap that cuts at the last full sentence.
"""

from __future__ import annotations

import re

from streamwatch.vlm.backend import VLMRequest, usable_text
from streamwatch.vlm.compliance import (
    CONFIDENCE,
    DEFAULT_QUESTIONS,
    Answer,
    ComplianceAnswer,
    ComplianceQuestion,
    compliance_schema,
    extract_json,
    parse_compliance,
)
from streamwatch.vlm.local import ImageEvidence
from streamwatch.vlm.output import clean_text, last_sentence_cut
from streamwatch.vlm.persona import Persona
from streamwatch.vlm.registry import Capability

__all__ = [
    "DEFAULT_QUESTIONS",
    "Answer",
    "ComplianceAnswer",
    "ComplianceQuestion",
    "compliance_schema",
    "extract_json",
    "parse_compliance",
]


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
    lines.append(f'- "{CONFIDENCE}" (number 0-1): how sure you are of these answers.')
    context = _context(evidence)
    prompt = (
        "You review one frame of a live stream for a moderation team. Answer every question about the image.\n"
        + _parts(images)
        + "\n".join(lines)
        + ("\n\nContext from local detectors (may be incomplete or wrong):\n" + context if context else "")
        + "\n\nReply with one JSON object with exactly these keys and nothing else."
    )
    system = "You are a careful content-compliance reviewer. Answer only with JSON."
    return VLMRequest(prompt, images, system, max_tokens, compliance_schema(questions), 0.0, Capability.COMPLIANCE)


def _kind_hint(q: ComplianceQuestion) -> str:
    if q.kind == "choice":
        return "one of " + "|".join(q.options)
    return {"bool": "true/false", "list": "list of strings", "text": "string"}[q.kind]


def single_question_request(q: ComplianceQuestion, image: bytes, evidence: ImageEvidence, max_tokens: int) -> VLMRequest:
    """The same question alone (the benchmark's one-call-per-question baseline)."""
    return compliance_request((q,), image, evidence, max_tokens)


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
    return VLMRequest(prompt, images, system, max_tokens, None, 0.7, Capability.REPLY)


def qa_request(question: str, evidence: ImageEvidence, images: Images, max_tokens: int) -> VLMRequest:
    images = _images(images)
    context = _context(evidence)
    prompt = (
        "This is the latest frame of a live stream. Answer the moderator's question about it briefly and factually.\n"
        + _parts(images)
        + (context + "\n" if context else "")
        + f"Question: {question[:500]}"
    )
    system = "You describe live video frames accurately and concisely."
    return VLMRequest(prompt, images, system, max_tokens, None, 0.0, Capability.QA)


def clean_reply(text: str, limit: int) -> str:
    """One paragraph, no surrounding quotes, no control or replacement characters, at most ``limit``
    characters ending at a full sentence (:func:`~streamwatch.vlm.output.last_sentence_cut`).
    Raises :class:`~streamwatch.errors.VLMOutputError` for a garbled or empty reply."""
    text = clean_text(text, one_line=True).strip('"“”「」 ')
    return usable_text(last_sentence_cut(text, limit)[0], "the reply")


ANSWER_LIMIT = 600  # characters of a Q&A answer shown to the moderators


def clean_answer(text: str, limit: int = ANSWER_LIMIT) -> str:
    """A Q&A answer: cleaned like a reply (line breaks kept), at most ``limit`` characters at a full sentence."""
    return usable_text(last_sentence_cut(clean_text(text), limit)[0], "the answer")


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
    return VLMRequest(prompt, images, system, max_tokens, None, 0.7, Capability.SUMMARY)


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
