"""The three VLM tasks on top of the router: compliance, persona reply, live Q&A.

Each task builds its prompt (:mod:`streamwatch.vlm.prompts`), sends it down the role's failover chain
and validates the answer there, so malformed output counts as a failed attempt (retried once with a
changed request, then the next model). A cut-off answer is never a judgment: a compliance answer cut
off fails the attempt; a reply or Q&A answer still cut off on the retry is kept only up to its last
full sentence (logged), and fails when there is none. ``local`` in a chain answers from templates and
the local evidence.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np

from streamwatch.errors import VLMOutputError, VLMTruncated
from streamwatch.vlm.backend import VLMBackend, VLMRequest, fitted_jpegs
from streamwatch.vlm.local import ImageEvidence, LocalBackend
from streamwatch.vlm.output import clean_text, complete_sentences
from streamwatch.vlm.persona import Persona
from streamwatch.vlm.prompts import (
    DEFAULT_QUESTIONS,
    ComplianceAnswer,
    ComplianceQuestion,
    clean_answer,
    clean_reply,
    compliance_request,
    parse_compliance,
    parse_summary,
    qa_request,
    reply_request,
    summary_request,
)
from streamwatch.vlm.registry import LOCAL, Capability
from streamwatch.vlm.retry import attempt_of
from streamwatch.vlm.router import ModelRouter

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Reply:
    text: str
    model: str


class VLMService:
    def __init__(
        self,
        router: ModelRouter,
        *,
        questions: tuple[ComplianceQuestion, ...] = DEFAULT_QUESTIONS,
        local: LocalBackend | None = None,
        reply_tokens: int = 128,
        answer_tokens: int = 256,
        compliance_tokens: int = 384,
        deadline_s: float | None = None,
    ) -> None:
        self.router = router
        self.questions = questions
        self.local = local or LocalBackend()
        self.reply_tokens = reply_tokens
        self.answer_tokens = answer_tokens
        self.compliance_tokens = compliance_tokens
        self.deadline_s = deadline_s  # replies and answers: all models of the chain together, then the template

    def _jpegs(self, model: str, rgb: np.ndarray) -> tuple[bytes, ...]:
        """The picture fitted to the model's image limits: one JPEG, or tiles in reading order."""
        return fitted_jpegs(rgb, self.router.registry.get(model).image_limits)

    async def _encode(self, backend: VLMBackend, rgb: np.ndarray) -> tuple[bytes, ...]:
        return await asyncio.get_running_loop().run_in_executor(None, self._jpegs, backend.model, rgb)

    async def compliance(self, rgb: np.ndarray, evidence: ImageEvidence) -> ComplianceAnswer | None:
        """All questions in one call; None when the chain ends at ``local`` (no model to ask)."""

        async def ask(backend: VLMBackend) -> ComplianceAnswer | None:
            image = await self._encode(backend, rgb)
            result = await backend.generate(compliance_request(self.questions, image, evidence, self.compliance_tokens))
            return parse_compliance(result.text, self.questions, result.model)

        async def nothing() -> ComplianceAnswer | None:
            return None

        answer, _model = await self.router.run(Capability.COMPLIANCE, ask, local=nothing)
        return answer

    async def reply(self, persona: Persona, rgb: np.ndarray, evidence: ImageEvidence, fan_text: str, key: str) -> Reply:
        limit = max(persona.reply_length * 3, 40)

        async def ask(backend: VLMBackend) -> str:
            image = await self._encode(backend, rgb)
            request = reply_request(persona, evidence, fan_text, image, self.reply_tokens)
            return clean_reply(await _text_or_whole_sentences(backend, request), limit)

        async def template() -> str:
            return await self.local.reply(persona, evidence, fan_text, key)

        text, model = await self.router.run(Capability.REPLY, ask, local=template, deadline_s=self.deadline_s)
        return Reply(text, model)

    async def answer(self, question: str, rgb: np.ndarray | None, evidence: ImageEvidence) -> Reply:
        async def ask(backend: VLMBackend) -> str:
            image = await self._encode(backend, rgb) if rgb is not None else ()
            request = qa_request(question, evidence, image, self.answer_tokens)
            return clean_answer(await _text_or_whole_sentences(backend, request))

        async def template() -> str:  # models in the chain that did not answer are named, not "no VLM configured"
            return await self.local.answer(question, evidence, tuple(m for m in self.router.chains[Capability.QA] if m != LOCAL))

        text, model = await self.router.run(Capability.QA, ask, local=template, deadline_s=self.deadline_s)
        return Reply(text, model)

    async def summary(
        self,
        images: list[np.ndarray],
        facts: str,
        *,
        persona: Persona | None,
        accept: Callable[[str], bool],
        template: Callable[[], Awaitable[tuple[str, str, tuple[str, ...]]]],
        max_tokens: int = 320,
    ) -> tuple[tuple[str, str, tuple[str, ...]], str]:
        """The post-show post from the ``summary`` role: (title, body, hashtags) and the model id.

        An answer that cannot be parsed, or that ``accept`` refuses (the word lists), is asked again once
        by the router, then the next model serves; ``local`` (or a chain that ends) gives ``template()``.
        """

        async def ask(backend: VLMBackend) -> tuple[str, str, tuple[str, ...]]:
            jpegs: tuple[bytes, ...] = ()
            for img in images:
                jpegs += await self._encode(backend, img)
            result = await backend.generate(summary_request(facts, jpegs, persona, max_tokens))
            post = parse_summary(clean_text(result.text))
            if post is None:
                raise VLMOutputError("the summary answer has no title and body")
            if not accept("\n".join((post[0], post[1], " ".join(post[2])))):
                raise VLMOutputError("the summary answer failed the word lists")
            return post

        return await self.router.run(Capability.SUMMARY, ask, local=template)


async def _text_or_whole_sentences(backend: VLMBackend, request: VLMRequest) -> str:
    """The answer's text; on the last attempt, a cut-off answer's full sentences (never a half one)."""
    try:
        return (await backend.generate(request)).text
    except VLMTruncated as e:
        attempt = attempt_of(backend)
        whole = complete_sentences(e.partial)
        if attempt is None or not attempt.last or not whole:
            raise
        logger.warning(
            "%s: the %s answer was cut off again; kept up to its last full sentence (%d of %d characters)",
            backend.model,
            request.role.value if request.role else "",
            len(whole),
            len(e.partial),
        )
        return whole
