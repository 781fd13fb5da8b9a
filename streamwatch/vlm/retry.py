"""What a second attempt changes. Pure, apart from the thin backend wrapper the router hands a task.

A retry of a failed answer never repeats the byte-identical request:

- after a **cut-off** answer (:class:`~streamwatch.errors.VLMTruncated`): twice the token budget,
  thinking off, and an instruction to answer directly;
- after an **unusable** answer (bad JSON, wrong schema, garbage): the temperature up by 0.3 (at least
  0.3, at most 1.0) and a stricter instruction naming what was wrong;
- after a server error: the same request (the server, not the request, failed).

Every attempt runs inside the request's one deadline (:attr:`Attempt.deadline`, event-loop time).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from streamwatch.vlm.backend import VLMBackend, VLMRequest, VLMResult

TRUNCATED = "truncated"
BAD_OUTPUT = "bad_output"


@dataclass(frozen=True, slots=True)
class Attempt:
    number: int  # 1, then 2 for the one retry
    deadline: float  # event-loop time by which the request must be answered
    after: str = ""  # why the previous attempt failed: truncated | bad_output | timeout | error
    detail: str = ""  # the previous attempt's error, for the stricter instruction

    @property
    def last(self) -> bool:
        return self.number >= 2


def retry_request(req: VLMRequest, attempt: Attempt) -> VLMRequest:
    """``req`` as attempt ``attempt`` sends it."""
    if attempt.number < 2:
        return req
    if attempt.after == TRUNCATED:
        return dataclasses.replace(
            req,
            max_tokens=req.max_tokens * 2,
            thinking=False,
            prompt=req.prompt + "\n\nYour previous answer was cut off. Answer directly and briefly, without reasoning first.",
        )
    if attempt.after == BAD_OUTPUT:
        what = (
            "Reply with only the JSON object, with exactly the keys asked for and nothing else."
            if req.schema
            else "Reply with only the answer."
        )
        why = attempt.detail.split(": ", 1)[-1][:120]
        return dataclasses.replace(
            req,
            temperature=round(min(1.0, max(0.3, req.temperature + 0.3)), 3),
            prompt=req.prompt + f"\n\nYour previous answer could not be used ({why}). {what}",
        )
    return req


class RetryingBackend:
    """The backend as one attempt sees it: its requests adjusted for that attempt (:func:`retry_request`)."""

    def __init__(self, inner: VLMBackend, attempt: Attempt) -> None:
        self.inner = inner
        self.attempt = attempt

    @property
    def model(self) -> str:
        return self.inner.model

    async def generate(self, request: VLMRequest) -> VLMResult:
        return await self.inner.generate(retry_request(request, self.attempt))

    async def warm(self) -> None:
        await self.inner.warm()

    async def close(self) -> None:
        await self.inner.close()


def attempt_of(backend: VLMBackend) -> Attempt | None:
    """The attempt a task's backend belongs to (None outside the router)."""
    return backend.attempt if isinstance(backend, RetryingBackend) else None
