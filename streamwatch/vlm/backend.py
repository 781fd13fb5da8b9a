"""The one interface every vision-language backend implements, and its typed request/result records.

A backend turns a :class:`VLMRequest` (system prompt, user prompt, JPEG images, an optional JSON
schema) into a :class:`VLMResult` (the answer text with any reasoning stripped, token counts, time).
Prompts and parsing are the caller's business (:mod:`streamwatch.vlm.prompts`); failover, retries and
the circuit breaker are the router's (:mod:`streamwatch.vlm.router`). Backends raise only
:class:`~streamwatch.errors.VLMUnavailable`, :class:`~streamwatch.errors.VLMTimeout` or
:class:`~streamwatch.errors.VLMOutputError`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np

from streamwatch.errors import VLMError, VLMOutputError


@dataclass(frozen=True, slots=True)
class VLMRequest:
    prompt: str
    images: tuple[bytes, ...] = ()  # JPEG-encoded
    system: str = ""
    max_tokens: int = 256
    schema: str | None = None  # JSON schema (JSON text) the answer must follow, when the server can enforce it
    temperature: float = 0.2


@dataclass(frozen=True, slots=True)
class VLMResult:
    text: str  # the answer, reasoning stripped
    model: str  # registry id of the model that produced it
    reasoning: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    image_tokens: int = 0  # when the backend can tell (in-process models)
    seconds: float = 0.0


class VLMBackend(Protocol):
    """A loaded model behind one registry entry."""

    @property
    def model(self) -> str:
        """Registry id."""
        ...

    async def generate(self, request: VLMRequest) -> VLMResult: ...

    async def warm(self) -> None:
        """Load (if needed) and answer one tiny request, so the first real request is not slow."""
        ...

    async def close(self) -> None: ...


# --- shared helpers (pure) -------------------------------------------------------------------------

_THINK = re.compile(r"<think>(.*?)</think>", re.S)
_BOX = re.compile(r"<\|begin_of_box\|>(.*?)<\|end_of_box\|>", re.S)  # GLM-4.xV answer box
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.S)  # GLM-4.1V-Thinking


def strip_reasoning(text: str) -> tuple[str, str]:
    """Split a Thinking-mode output into (answer, reasoning).

    Handles ``<think>…</think>`` (Qwen3-VL Thinking, GLM), a bare ``…</think>`` (chat templates that
    open the think block in the prompt), GLM's ``<answer>`` and ``<|begin_of_box|>`` wrappers, and
    an unterminated ``<think>`` (the model ran out of tokens while reasoning: no answer).
    """
    reasoning: list[str] = []
    if "</think>" in text:
        head, _, text = text.rpartition("</think>")
        reasoning.append(head.replace("<think>", "").replace("</think>", "").strip())
    elif "<think>" in text:
        head, _, rest = text.partition("<think>")
        reasoning.append(rest.strip())
        text = head
    reasoning.extend(m.strip() for m in _THINK.findall(text))
    text = _THINK.sub("", text)
    for pattern in (_ANSWER, _BOX):
        m = pattern.search(text)
        if m:
            text = m.group(1)
    return text.strip(), "\n".join(r for r in reasoning if r)


def usable_text(text: str, model: str) -> str:
    """The answer, or :class:`VLMOutputError` when nothing is left after stripping the reasoning."""
    if not text.strip():
        raise VLMOutputError(f"{model}: empty answer")
    return text


def jpeg(rgb: np.ndarray, max_side: int = 512, quality: int = 85) -> bytes:
    """Encode an RGB image for a VLM request, long side at most ``max_side`` (tokens scale with pixels)."""
    h, w = rgb.shape[:2]
    scale = min(1.0, max_side / max(h, w))
    if scale < 1.0:
        rgb = cv2.resize(rgb, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise VLMError("could not encode the image as JPEG")
    return buf.tobytes()
