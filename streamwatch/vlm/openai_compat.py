"""OpenAI-compatible chat-completions backend (vLLM, SGLang, LMDeploy, Ollama, llama.cpp, hosted APIs).

Images go as base64 JPEG data URLs, fitted to the model's image limits first (minimum side, patch
multiple, tokens: :mod:`streamwatch.vlm.images`; images already fitted by the caller pass untouched).
A refusal of the input (HTTP 400, 413, 415, 422) raises :class:`~streamwatch.errors.VLMInputError`;
HTTP 5xx raises :class:`~streamwatch.errors.VLMServerError` (the router decides whether the model or
the input failed); other statuses :class:`~streamwatch.errors.VLMUnavailable`. A JSON schema goes
as ``response_format`` when the registry says the server supports it; a server that refuses it with
HTTP 400 is asked again without, once, and one that answers 200 but ignores it (an answer that is not
JSON or does not validate) is detected: both are remembered, and JSON is then asked for by instruction.
A refusal of too many images (vLLM's ``At most 1 image(s) may be provided in one request.``) is
remembered too, like the registry's ``image_max_count``: the images are merged into collages
(:mod:`streamwatch.vlm.collage`) and the request sent again. Reasoning is split off only where the
model or server produces it, and an answer cut off by the token budget raises
:class:`~streamwatch.errors.VLMTruncated` (:mod:`streamwatch.vlm.output`). Requests in flight are
bounded by the model's ``concurrency``; the router's deadline covers the wait for a slot too. The API
key comes from the environment variable the registry names and appears in no log line, error or repr.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from typing import Any

import httpx
import numpy as np

from streamwatch.errors import VLMError, VLMInputError, VLMOutputError, VLMServerError, VLMTimeout, VLMTruncated, VLMUnavailable
from streamwatch.ingest.url import redact_url
from streamwatch.vlm.backend import VLMRequest, VLMResult, fit_request, fitted_jpegs, images_fit, usable_text
from streamwatch.vlm.collage import merge_to_count
from streamwatch.vlm.openai_wire import build_body, image_limit_in, read_choice
from streamwatch.vlm.output import split_output
from streamwatch.vlm.registry import ModelSpec
from streamwatch.vlm.schema import follows

logger = logging.getLogger(__name__)

INPUT_REFUSED = frozenset({400, 413, 415, 422})  # bad request, payload too large, unsupported media, unprocessable


class OpenAIBackend:
    def __init__(self, spec: ModelSpec, *, client: httpx.AsyncClient | None = None) -> None:
        assert spec.endpoint and spec.model_name
        self.spec = spec
        self._url = spec.endpoint.rstrip("/") + "/chat/completions"
        self._where = redact_url(spec.endpoint)
        key = os.environ.get(spec.api_key_env, "") if spec.api_key_env else ""
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._client = client or httpx.AsyncClient(
            headers=headers,
            timeout=httpx.Timeout(spec.timeout_s, connect=min(5.0, spec.timeout_s)),
            limits=httpx.Limits(max_connections=spec.concurrency, max_keepalive_connections=spec.concurrency),
        )
        self._slots = asyncio.Semaphore(spec.concurrency)
        self.structured_output = spec.json_schema  # False once the server refused or ignored response_format
        self.max_images = spec.image_max_count  # images per request; learned from a refusal when unset

    @property
    def model(self) -> str:
        return self.spec.id

    def __repr__(self) -> str:
        return f"OpenAIBackend({self.spec.id!r}, {self._where})"

    async def _refit(self, request: VLMRequest) -> VLMRequest:
        loop = asyncio.get_running_loop()
        if not images_fit(request, self.spec.image_limits):
            request = await loop.run_in_executor(None, fit_request, request, self.spec.image_limits)
        if self.max_images is not None and len(request.images) > self.max_images:
            request = await loop.run_in_executor(None, merge_to_count, request, self.max_images, self.spec.image_limits)
        return request

    async def generate(self, request: VLMRequest) -> VLMResult:
        t0 = time.perf_counter()
        request = await self._refit(request)
        async with self._slots:
            with_schema = self.structured_output and request.schema is not None
            response = await self._post(build_body(self.spec, request, with_schema=with_schema))
            limit = image_limit_in(response.text) if response.status_code in INPUT_REFUSED else None
            if limit is not None and len(request.images) > limit:  # fewer images per request than sent
                logger.warning("%s takes at most %d image(s) per request: merging the images from now on", self.spec.id, limit)
                self.max_images = limit
                request = await self._refit(request)
                response = await self._post(build_body(self.spec, request, with_schema=with_schema))
            if response.status_code == 400 and with_schema:  # perhaps the server does not do structured output
                response = await self._post(build_body(self.spec, request, with_schema=False))
                if response.status_code == 200:  # it was the schema (not the input): remember
                    logger.warning("%s refused response_format; asking for JSON by instruction from now on", self.spec.id)
                    self.structured_output = with_schema = False
        return self._result(response, request, with_schema, time.perf_counter() - t0)

    async def _post(self, body: dict[str, Any]) -> httpx.Response:
        try:
            return await self._client.post(self._url, json=body)
        except httpx.TimeoutException as e:
            raise VLMTimeout(f"{self.spec.id}: no answer from {self._where} within {self.spec.timeout_s:g}s") from e
        except httpx.HTTPError as e:
            raise VLMUnavailable(f"{self.spec.id}: cannot reach {self._where}: {type(e).__name__}") from e

    def _result(self, response: httpx.Response, request: VLMRequest, with_schema: bool, seconds: float) -> VLMResult:
        mid = self.spec.id
        if response.status_code != 200:
            detail = response.text[:200].replace(os.environ.get(self.spec.api_key_env or "", "\0") or "\0", "***")
            status = response.status_code
            kind: type[VLMError] = VLMInputError if status in INPUT_REFUSED else VLMServerError if 500 <= status < 600 else VLMUnavailable
            raise kind(f"{mid}: HTTP {status} from {self._where}: {detail}")
        try:
            choice = read_choice(response.json())
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as e:
            raise VLMOutputError(f"{mid}: not a chat-completions response: {response.text[:80]!r}") from e
        out = split_output(
            choice.content, reasoning_field=choice.reasoning, thinks=self.spec.mode == "thinking", finish_reason=choice.finish_reason
        )
        result = VLMResult(
            out.text,
            mid,
            reasoning=out.reasoning,
            prompt_tokens=choice.prompt_tokens,
            completion_tokens=choice.completion_tokens,
            seconds=seconds,
            finish_reason=choice.finish_reason,
            truncated=out.truncated,
            recovered=out.recovered,
        )
        if out.truncated:
            raise VLMTruncated(f"{mid}: answer cut off: {out.why} after {choice.completion_tokens} tokens", out.text, result)
        if out.recovered:
            logger.info("%s left its answer in the reasoning (empty content): recovered", mid)
        if with_schema and request.schema is not None:
            problems = follows(out.text, request.schema)
            if problems:  # a 200 that ignored response_format: remember, ask by instruction from now on
                logger.warning("%s ignored response_format (%s); asking for JSON by instruction from now on", mid, problems[0])
                self.structured_output = False
                raise VLMOutputError(f"{mid}: the server ignored the JSON schema: {'; '.join(problems[:3])}")
        usable_text(out.text, mid)
        return result

    async def warm(self) -> None:
        """Also the router's health probe: a known-good request (a fitted grey image, thinking off); an
        answer cut off by its tiny budget still shows the model answers."""
        image = fitted_jpegs(np.full((64, 64, 3), 128, np.uint8), self.spec.image_limits)
        with contextlib.suppress(VLMTruncated):
            await self.generate(VLMRequest("Reply with OK.", image, max_tokens=8, thinking=False))

    async def close(self) -> None:
        await self._client.aclose()
