"""OpenAI-compatible chat-completions backend (vLLM, SGLang, LMDeploy, Ollama, llama.cpp, hosted APIs).

Images go as base64 JPEG data URLs, fitted to the model's image limits first (minimum side, patch
multiple, tokens: :mod:`streamwatch.vlm.images`; images already fitted by the caller pass untouched).
A refusal of the input (HTTP 400, 413, 415, 422) raises :class:`~streamwatch.errors.VLMInputError`;
HTTP 5xx raises :class:`~streamwatch.errors.VLMServerError` (the router decides whether the model or
the input failed); other statuses :class:`~streamwatch.errors.VLMUnavailable`. A JSON schema goes
as ``response_format`` when the registry says the server supports it (a server that refuses it with
HTTP 400 is asked again without, once, and remembered when that succeeds). Requests in flight are
bounded by the model's ``concurrency``; every request has the model's timeout. The API key comes
from the environment variable the registry names and appears in no log line, error or repr.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import time
from typing import Any

import httpx
import numpy as np

from streamwatch.errors import VLMError, VLMInputError, VLMOutputError, VLMServerError, VLMTimeout, VLMUnavailable
from streamwatch.ingest.url import redact_url
from streamwatch.vlm.backend import VLMRequest, VLMResult, fit_request, fitted_jpegs, images_fit, strip_reasoning, usable_text
from streamwatch.vlm.registry import ModelSpec

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
        self._schema_ok = spec.json_schema

    @property
    def model(self) -> str:
        return self.spec.id

    def __repr__(self) -> str:
        return f"OpenAIBackend({self.spec.id!r}, {self._where})"

    def _body(self, req: VLMRequest, with_schema: bool) -> dict[str, Any]:
        content: list[dict[str, Any]] = [
            {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64," + base64.b64encode(img).decode()}} for img in req.images
        ]
        content.append({"type": "text", "text": req.prompt})
        messages: list[dict[str, Any]] = [{"role": "system", "content": req.system}] if req.system else []
        messages.append({"role": "user", "content": content})
        body: dict[str, Any] = {
            "model": self.spec.model_name,
            "messages": messages,
            "max_tokens": min(req.max_tokens, self.spec.max_output_tokens),
            "temperature": req.temperature,
        }
        if req.schema and with_schema:
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "answer", "schema": json.loads(req.schema), "strict": True},
            }
        return body

    async def generate(self, request: VLMRequest) -> VLMResult:
        if not images_fit(request, self.spec.image_limits):
            request = await asyncio.get_running_loop().run_in_executor(None, fit_request, request, self.spec.image_limits)
        async with self._slots:
            t0 = time.perf_counter()
            with_schema = self._schema_ok and request.schema is not None
            response = await self._post(self._body(request, with_schema))
            if response.status_code == 400 and with_schema:  # perhaps the server does not do structured output
                response = await self._post(self._body(request, False))
                if response.status_code == 200:  # it was the schema (not the input): remember
                    logger.warning("%s refused response_format; asking without a schema from now on", self.spec.id)
                    self._schema_ok = False
            return self._result(response, time.perf_counter() - t0)

    async def _post(self, body: dict[str, Any]) -> httpx.Response:
        try:
            return await self._client.post(self._url, json=body)
        except httpx.TimeoutException as e:
            raise VLMTimeout(f"{self.spec.id}: no answer from {self._where} within {self.spec.timeout_s:g}s") from e
        except httpx.HTTPError as e:
            raise VLMUnavailable(f"{self.spec.id}: cannot reach {self._where}: {type(e).__name__}") from e

    def _result(self, response: httpx.Response, seconds: float) -> VLMResult:
        if response.status_code != 200:
            detail = response.text[:200].replace(os.environ.get(self.spec.api_key_env or "", "\0") or "\0", "***")
            status = response.status_code
            kind: type[VLMError] = VLMInputError if status in INPUT_REFUSED else VLMServerError if 500 <= status < 600 else VLMUnavailable
            raise kind(f"{self.spec.id}: HTTP {status} from {self._where}: {detail}")
        try:
            data = response.json()
            message = data["choices"][0]["message"]
            raw = message.get("content") or ""
            reasoning = message.get("reasoning_content") or message.get("reasoning") or ""
            usage = data.get("usage") or {}
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as e:
            raise VLMOutputError(f"{self.spec.id}: not a chat-completions response: {response.text[:80]!r}") from e
        if not isinstance(raw, str):
            raise VLMOutputError(f"{self.spec.id}: message content is not text")
        text, thought = strip_reasoning(raw)
        return VLMResult(
            usable_text(text, self.spec.id),
            self.spec.id,
            reasoning=(str(reasoning) + "\n" + thought).strip(),
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            seconds=seconds,
        )

    async def warm(self) -> None:
        """Also the router's health probe: a known-good request (a fitted grey image)."""
        await self.generate(
            VLMRequest("Reply with OK.", fitted_jpegs(np.full((64, 64, 3), 128, np.uint8), self.spec.image_limits), max_tokens=4)
        )

    async def close(self) -> None:
        await self._client.aclose()
