"""The OpenAI chat-completions wire format, per server family. Pure: requests in, JSON bodies out, and back.

Thinking is switched per request the way each family takes it:

| server | thinking off | thinking on |
|---|---|---|
| vLLM, SGLang, LMDeploy | ``chat_template_kwargs: {"enable_thinking": false}`` | ``… true`` |
| Ollama (``/v1``) | ``reasoning_effort: "none"`` | nothing (the model's default) |
| llama.cpp ``llama-server`` | nothing per request: the server's ``--reasoning-format`` flag | |
| transformers serve, hosted APIs, other | nothing | nothing |

Reasoning comes back in ``reasoning_content`` (vLLM, SGLang, llama.cpp with ``--reasoning-format
deepseek``), ``reasoning`` (Ollama, vLLM ≥ 0.10) or the content itself (``<think>…</think>``).
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass
from typing import Any

from streamwatch.vlm.backend import VLMRequest
from streamwatch.vlm.registry import ModelSpec
from streamwatch.vlm.schema import instruction

# vLLM: "At most 1 image(s) may be provided in one request."; others: "too many images (max 2)", "maximum of 2 images"
_IMAGE_LIMIT = (
    re.compile(r"at most (\d+) image", re.I),
    re.compile(r"(?:max(?:imum)?(?: number)?(?: of)?|limit(?: of)?|only)\s*(?:is\s*)?(\d+)\s*images?", re.I),
    re.compile(r"too many images?[^0-9]{0,40}?(\d+)", re.I),
)


def image_limit_in(detail: str) -> int | None:
    """The number of images per request a refusal's text states (None when it states none)."""
    for pattern in _IMAGE_LIMIT:
        m = pattern.search(detail)
        if m and int(m.group(1)) >= 1:
            return int(m.group(1))
    return None


def thinking_fields(server: str, on: bool | None) -> dict[str, Any]:
    """The body fields that switch reasoning on or off on this server family (none when ``on`` is None)."""
    if on is None:
        return {}
    if server in ("vllm", "sglang", "lmdeploy"):
        return {"chat_template_kwargs": {"enable_thinking": on}}
    if server == "ollama" and not on:
        return {"reasoning_effort": "none"}
    return {}


def build_body(spec: ModelSpec, req: VLMRequest, *, with_schema: bool) -> dict[str, Any]:
    """The chat-completions body; a schema not sent as ``response_format`` is asked for in the prompt."""
    content: list[dict[str, Any]] = [
        {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64," + base64.b64encode(img).decode()}} for img in req.images
    ]
    prompt = req.prompt + (instruction(req.schema) if req.schema and not with_schema else "")
    content.append({"type": "text", "text": prompt})
    messages: list[dict[str, Any]] = [{"role": "system", "content": req.system}] if req.system else []
    messages.append({"role": "user", "content": content})
    body: dict[str, Any] = {
        "model": spec.model_name,
        "messages": messages,
        "max_tokens": min(req.max_tokens, spec.max_output_tokens),
        "temperature": req.temperature,
    }
    if req.schema and with_schema:
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "answer", "schema": json.loads(req.schema), "strict": True},
        }
    on = req.thinking if req.thinking is not None else spec.thinks(req.role)
    body.update(thinking_fields(spec.server, on if spec.mode == "thinking" else None))
    return body


@dataclass(frozen=True, slots=True)
class Choice:
    content: str
    reasoning: str  # reasoning_content or reasoning
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


def read_choice(data: Any) -> Choice:
    """The first choice of a chat-completions response; KeyError/TypeError/IndexError when it is not one."""
    choice = data["choices"][0]
    message = choice["message"]
    content = message.get("content") or ""
    reasoning = message.get("reasoning_content") or message.get("reasoning") or ""
    if not isinstance(content, str) or not isinstance(reasoning, str):
        raise TypeError("message content is not text")
    usage = data.get("usage") or {}
    return Choice(
        content,
        reasoning,
        str(choice.get("finish_reason") or "stop"),
        int(usage.get("prompt_tokens") or 0),
        int(usage.get("completion_tokens") or 0),
    )
