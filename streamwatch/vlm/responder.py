"""Answers audience images and questions: input safety through the local cascade and policy, the
persona reply from the ``reply`` role's model, output safety through the same word lists (a failing
reply is regenerated once, then replaced by a safe template), live answers from the ``qa`` role's
model about the latest kept frame. A VLM tier that cannot answer at all falls back to the local
templates: a fan is never left without a reply.

Implements :class:`streamwatch.server.submit.Responder`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import cv2
import numpy as np

from streamwatch.analysis.cache import PHashCache
from streamwatch.analysis.cascade import Cascade
from streamwatch.analysis.model import AlertDraft, AnalyzedFrame
from streamwatch.analysis.policy import Policy
from streamwatch.analysis.rules import RuleEngine, text_is_clean
from streamwatch.errors import VLMError
from streamwatch.events.model import AnswerEvent, RejectedEvent, ReplyEvent
from streamwatch.sampling.phash import PHash, phash_luma
from streamwatch.sampling.regions import signature_of
from streamwatch.server.submit import InferRequest, InferResult, Question, Submission, rejection
from streamwatch.vlm.local import ImageEvidence, LocalBackend
from streamwatch.vlm.persona import Persona
from streamwatch.vlm.service import Reply, VLMService

logger = logging.getLogger(__name__)

AUDIENCE = "audience"  # cache namespace for submitted images


class AudienceResponder:
    def __init__(
        self,
        cascade: Cascade,
        policy_for: Callable[[str], Policy],
        persona: Persona,
        *,
        service: VLMService | None = None,
        latest: Callable[[str], AnalyzedFrame | None] = lambda _s: None,
        offsets: Callable[[str], float] = lambda _s: 0.0,
        duplicate_ttl_s: float = 600.0,
        max_side: int = 960,
        dedupe: bool = True,
    ) -> None:
        self.cascade = cascade
        self.policy_for = policy_for
        self.persona = persona
        self.service = service
        self.local = service.local if service else LocalBackend()
        self.latest = latest
        self.offsets = offsets
        self.max_side = max_side
        self.dedupe = dedupe  # False: duplicates were checked before (a cluster gateway)
        self._seen: PHashCache[str] = PHashCache(radius=4, ttl_s=duplicate_ttl_s, max_entries=4096)

    def _rejected(self, sub: Submission, reason: str, message: str) -> RejectedEvent:
        return rejection(sub, reason, message, self.offsets(sub.stream))

    async def reply(self, sub: Submission) -> ReplyEvent | RejectedEvent:
        loop = asyncio.get_running_loop()
        rgb = await loop.run_in_executor(None, _decode_rgb, sub.image, self.max_side)
        if rgb is None:
            return self._rejected(sub, "bad_image", "the image could not be decoded")
        h = phash_luma(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))
        now = time.monotonic()
        if self.dedupe:
            if self._seen.get(h, now) is not None:
                return self._rejected(sub, "duplicate", "this image was already answered recently")
            self._seen.put(h, sub.id, now)
        evidence, refusal = await self._screen(rgb, h, sub.stream, sub.received_at)
        if refusal is not None:
            return self._rejected(sub, refusal.rule, refusal.message)
        reply = await self._persona_reply(rgb, evidence, sub.text, sub.id, sub.stream)
        return ReplyEvent(
            stream=sub.stream,
            at=time.time(),
            offset=self.offsets(sub.stream),
            submission=sub.id,
            submitter=sub.submitter,
            text=reply.text,
            user=sub.user,
            image=sub.thumb,
            persona=self.persona.id,
            model=reply.model,
        )

    async def _screen(self, rgb: np.ndarray, h: PHash, stream: str, received_at: float) -> tuple[ImageEvidence, AlertDraft | None]:
        """Local detectors + the stream's policy on an audience image: its evidence, and the first refusal."""
        fa = await self.cascade.analyze(AUDIENCE, rgb, h, offset=0.0, at=received_at, received_at=received_at, signature=signature_of(rgb))
        # judged on its own: a fresh engine, so no cooldown lets a second bad image through
        drafts = [d for d in RuleEngine(self.policy_for(stream)).evaluate(fa) if d.evidence_kind != "health"]
        return ImageEvidence.from_detections(fa.width, fa.height, fa.detections), (drafts[0] if drafts else None)

    async def _persona_reply(self, rgb: np.ndarray, evidence: ImageEvidence, fan_text: str, key: str, stream: str) -> Reply:
        """The reply model's answer, checked against the word lists: regenerated once, then a safe template."""
        reply = await self._reply(rgb, evidence, fan_text, key)
        if not text_is_clean(self.policy_for(stream), stream, reply.text):
            logger.warning("reply by %s failed the output check; regenerating once", reply.model)
            reply = await self._reply(rgb, evidence, fan_text, key)
            if not text_is_clean(self.policy_for(stream), stream, reply.text):
                reply = Reply(self.local.safe_reply(self.persona), "local")
        return reply

    async def _reply(self, rgb: np.ndarray, evidence: ImageEvidence, fan_text: str, key: str) -> Reply:
        if self.service is not None:
            try:
                return await self.service.reply(self.persona, rgb, evidence, fan_text, key)
            except VLMError as e:
                logger.error("no model could reply to %s, using the template: %s", key, e)
        return Reply(await self.local.reply(self.persona, evidence, fan_text, key), "local")

    async def infer(self, req: InferRequest) -> InferResult:
        """``POST /vlm/infer``: screen the image, then answer the question about it (or reply in persona)."""
        loop = asyncio.get_running_loop()
        rgb = await loop.run_in_executor(None, _decode_rgb, req.image, self.max_side)
        if rgb is None:
            return InferResult(None, rejected="bad_image", message="the image could not be decoded")
        h = phash_luma(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))
        evidence, refusal = await self._screen(rgb, h, req.stream, time.time())
        if refusal is not None:
            return InferResult(None, rejected=refusal.rule, message=refusal.message)
        if not req.question:
            reply = await self._persona_reply(rgb, evidence, "", req.id, req.stream)
        else:
            reply = await self._answer(req.question, rgb, evidence, req.id)
        return InferResult(reply.text, reply.model)

    async def _answer(self, question: str, rgb: np.ndarray | None, evidence: ImageEvidence, key: str) -> Reply:
        """The qa model's answer; the local evidence's when no model can answer."""
        if self.service is not None:
            try:
                return await self.service.answer(question, rgb, evidence)
            except VLMError as e:
                logger.error("no model could answer %s, using the local evidence: %s", key, e)
        return Reply(await self.local.answer(question, evidence), "local")

    async def answer(self, q: Question) -> AnswerEvent:
        latest = self.latest(q.stream)
        fa = latest.analysis if latest else None
        evidence = ImageEvidence.from_detections(fa.width, fa.height, fa.detections) if fa else ImageEvidence(0, 0)
        reply = await self._answer(q.question, latest.image if latest else None, evidence, q.id)
        return AnswerEvent(
            stream=q.stream,
            at=time.time(),
            offset=self.offsets(q.stream),
            question=q.question,
            text=reply.text,
            asker=q.asker,
            ref=q.ref or "",
            model=reply.model,
        )


def _decode_rgb(data: bytes, max_side: int) -> np.ndarray | None:
    """The submitted image as RGB, long side at most ``max_side``; a long picture (aspect ratio over 3,
    e.g. a scrolling screenshot) is instead kept within ``max_side``² pixels, so the VLM's tiles of it
    stay legible (:mod:`streamwatch.vlm.images`). None when it cannot be decoded."""
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        return None
    h, w = img.shape[:2]
    long, short = max(h, w), min(h, w)
    scale = min(1.0, max_side / long if long <= 3 * short else max_side / (h * w) ** 0.5)
    if scale < 1.0:
        img = cv2.resize(img, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(cv2.cvtColor(img, cv2.COLOR_BGR2RGB))
