"""The always-present backend: no model, replies and answers from templates and the local evidence.

It keeps the product working with no VLM configured (the demo's default): a reply in the persona's
voice that mentions what the detectors saw (on-screen text), and answers about the live frame that
report what OCR, QR and the detectors found.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from streamwatch.analysis.model import Detection
from streamwatch.vlm.persona import Persona


@dataclass(frozen=True, slots=True)
class ImageEvidence:
    """What the local analyzers found in an image: the context a backend answers from."""

    width: int
    height: int
    text_lines: tuple[str, ...] = ()
    labels: tuple[str, ...] = ()
    qr: tuple[str, ...] = ()

    @classmethod
    def from_detections(cls, width: int, height: int, dets: tuple[Detection, ...]) -> ImageEvidence:
        return cls(
            width,
            height,
            tuple(d.text for d in dets if d.source == "ocr" and d.text),
            tuple(dict.fromkeys(d.label for d in dets if d.source not in ("ocr", "qr"))),
            tuple(d.text for d in dets if d.source == "qr" and d.text),
        )


def _pick(options: list[str], key: str) -> str:
    if not options:
        return ""
    return options[int(hashlib.sha1(key.encode()).hexdigest(), 16) % len(options)]


class LocalBackend:
    name = "local"

    async def reply(self, persona: Persona, evidence: ImageEvidence, fan_text: str, key: str) -> str:
        parts = []
        if evidence.text_lines:
            parts.append(f"我看到上面写着「{evidence.text_lines[0][:20]}」")
        base = _pick(persona.examples, key) or f"谢谢你的图片！{persona.name}好开心"
        parts.append(base)
        if fan_text:
            parts.append(f"你说的“{fan_text[:20]}”{persona.name}收到啦")
        phrase = _pick(persona.catchphrases, key + "!")
        text = "，".join(parts)
        if phrase and phrase not in text:
            text += phrase
        return text[: max(persona.reply_length * 2, 20)]

    async def answer(self, question: str, evidence: ImageEvidence, failing: tuple[str, ...] = ()) -> str:
        """``failing``: the configured models that did not answer (the note says so instead of "no VLM configured")."""
        note = (
            f"local analyzers only; the VLM ({', '.join(failing)}) did not answer" if failing else "local analyzers only; no VLM configured"
        )
        if not (evidence.text_lines or evidence.labels or evidence.qr):
            return f"No text, QR code or flagged content is visible in the latest frame ({note})."
        bits = []
        if evidence.text_lines:
            bits.append("on-screen text: " + " / ".join(f"“{t}”" for t in evidence.text_lines[:5]))
        if evidence.qr:
            bits.append("QR codes: " + ", ".join(evidence.qr))
        if evidence.labels:
            bits.append("detections: " + ", ".join(evidence.labels))
        return "In the latest frame — " + "; ".join(bits) + f" ({note})."

    def safe_reply(self, persona: Persona) -> str:
        return f"谢谢你的分享！{persona.name}收到啦"
