"""What a configured model's server really does (``streamwatch models check``, issue 21).

Each OpenAI-compatible model gets real requests: one image with a small JSON schema (is the schema
honoured, ignored or refused? is there a reasoning field? how long does it take?), then 2 and 4 images
in one request (how many images does it take?). Nothing is assumed from the registry: a server that
answers 200 but ignores ``response_format`` (``transformers serve``) shows as *ignored*; one that
refuses more images than ``--limit-mm-per-prompt`` (vLLM) shows the largest count it took.

The judging is pure (:func:`judge_schema`, :func:`reasoning_of`); :func:`check_model` does the HTTP.
"""

from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np

from streamwatch.ingest.url import redact_url
from streamwatch.vlm.backend import fitted_jpegs, strip_reasoning
from streamwatch.vlm.registry import ModelSpec

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"grey": {"type": "boolean"}, "colour": {"type": "string", "enum": ["grey", "red", "blue", "other"]}},
    "required": ["grey", "colour"],
    "additionalProperties": False,
}
PROMPT = 'Is this picture plain grey? Answer only with JSON like {"grey": true, "colour": "grey"}.'
IMAGE_COUNTS = (2, 4)


@dataclass(frozen=True, slots=True)
class CheckResult:
    """What one model's server did with the check requests."""

    model: str
    where: str  # endpoint, credentials redacted
    ok: bool  # the server answered the one-image request
    error: str = ""
    latency_s: tuple[float, ...] = ()  # every answered request, in order (the first includes any load)
    schema: str = "not checked"  # honoured | ignored | refused | cut off | not sent (registry: json_schema = false)
    images: str = "not checked"  # the most images one request took: "1", "2", "≥4" (and the refusal)
    reasoning: str = "none"  # reasoning_content | reasoning | <think> in content | none
    finish_reason: str = ""
    sample: str = ""  # the start of the one-image answer
    notes: tuple[str, ...] = field(default=())


def judge_schema(content: str, finish_reason: str | None, schema: dict[str, Any] = SCHEMA) -> str:
    """``honoured`` when the answer is JSON that follows ``schema``; ``cut off`` when a JSON object was begun but
    not ended at max_tokens (cannot tell); else ``ignored`` (complete JSON that breaks the schema, or no JSON)."""
    text = strip_reasoning(content)[0].strip()
    if conforms(text, schema):
        return "honoured"
    if finish_reason == "length" and text.startswith("{") and not _parses(text):
        return "cut off at max_tokens (cannot tell)"
    return "ignored"


def _parses(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def conforms(text: str, schema: dict[str, Any]) -> bool:
    """Does ``text`` parse as a JSON object with exactly the schema's properties, required ones present, types and enums right?"""
    try:
        value = json.loads(text)
    except ValueError:
        return False
    if not isinstance(value, dict):
        return False
    props: dict[str, Any] = schema["properties"]
    if set(schema.get("required", ())) - value.keys() or (schema.get("additionalProperties") is False and value.keys() - props.keys()):
        return False
    kinds: dict[str, type | tuple[type, ...]] = {
        "boolean": bool,
        "string": str,
        "number": (int, float),
        "integer": int,
        "array": list,
        "object": dict,
    }
    for key, v in value.items():
        spec = props.get(key, {})
        if "type" in spec and not isinstance(v, kinds[spec["type"]]):
            return False
        if "enum" in spec and v not in spec["enum"]:
            return False
    return True


def reasoning_of(message: dict[str, Any]) -> str:
    """Where the server put the model's reasoning, if anywhere."""
    for key in ("reasoning_content", "reasoning"):
        if isinstance(message.get(key), str) and message[key].strip():
            return key
    content = message.get("content")
    if isinstance(content, str) and "</think>" in content:
        return "<think> in content"
    return "none"


def _body(spec: ModelSpec, images: tuple[bytes, ...], schema: bool) -> dict[str, Any]:
    content: list[dict[str, Any]] = [
        {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64," + base64.b64encode(i).decode()}} for i in images
    ]
    content.append({"type": "text", "text": PROMPT})
    body: dict[str, Any] = {
        "model": spec.model_name,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": min(96, spec.max_output_tokens),
        "temperature": 0.0,
    }
    if schema:
        body["response_format"] = {"type": "json_schema", "json_schema": {"name": "check", "schema": SCHEMA, "strict": True}}
    return body


async def check_model(spec: ModelSpec, client: httpx.AsyncClient, api_key: str = "") -> CheckResult:
    """Send ``spec``'s server the check requests (an ``openai`` backend only)."""
    assert spec.endpoint and spec.model_name
    where = redact_url(spec.endpoint)
    url = spec.endpoint.rstrip("/") + "/chat/completions"
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    image = fitted_jpegs(np.full((96, 128, 3), 128, np.uint8), spec.image_limits)[:1]
    latencies: list[float] = []
    notes: list[str] = []

    async def post(body: dict[str, Any]) -> httpx.Response:
        t0 = time.perf_counter()
        r = await client.post(url, json=body, headers=headers, timeout=spec.timeout_s)
        if r.status_code == 200:
            latencies.append(round(time.perf_counter() - t0, 3))
        return r

    def detail(r: httpx.Response) -> str:
        text = r.text[:160]
        return text.replace(api_key, "***") if api_key else text

    try:
        r = await post(_body(spec, image, spec.json_schema))
        schema = "not sent (registry: json_schema = false)" if not spec.json_schema else ""
        if r.status_code == 400 and spec.json_schema:
            notes.append(f"with response_format: HTTP 400 {detail(r)}")
            schema = "refused"
            r = await post(_body(spec, image, False))
        if r.status_code != 200:
            return CheckResult(spec.id, where, False, f"HTTP {r.status_code}: {detail(r)}", tuple(latencies), notes=tuple(notes))
        try:
            choice = r.json()["choices"][0]
            message, finish = choice["message"], str(choice.get("finish_reason") or "")
            content = message.get("content") or ""
        except (ValueError, KeyError, IndexError, TypeError) as e:
            return CheckResult(spec.id, where, False, f"not a chat-completions answer ({type(e).__name__}): {detail(r)}", tuple(latencies))
        if not schema:
            schema = judge_schema(str(content), finish)
        images = "1"
        send_schema = spec.json_schema and schema != "refused"
        for n in IMAGE_COUNTS:
            many = await post(_body(spec, image * n, send_schema))
            if many.status_code != 200:
                images += f" (HTTP {many.status_code} for {n}: {detail(many)[:100]})"
                break
            images = str(n) if n < IMAGE_COUNTS[-1] else f"≥{n}"
        sample = " ".join(str(content).split())[:60]
        return CheckResult(spec.id, where, True, "", tuple(latencies), schema, images, reasoning_of(message), finish, sample, tuple(notes))
    except httpx.TimeoutException:
        return CheckResult(spec.id, where, False, f"no answer within {spec.timeout_s:g}s", tuple(latencies), notes=tuple(notes))
    except httpx.HTTPError as e:
        return CheckResult(spec.id, where, False, f"cannot reach it: {type(e).__name__}", tuple(latencies), notes=tuple(notes))


def render(results: list[CheckResult]) -> str:
    """A table for the terminal, one block per model."""
    lines = []
    for r in results:
        head = f"{r.model}  {r.where}"
        if not r.ok:
            lines.append(f"{head}\n  FAILED: {r.error}")
        else:
            lat = ", ".join(f"{s:.2f}s" for s in r.latency_s)
            lines.append(
                f"{head}\n  answers: yes (finish_reason {r.finish_reason or '?'}): {r.sample!r}\n"
                f"  json schema: {r.schema}\n  images per request: {r.images}\n  reasoning field: {r.reasoning}\n  latency: {lat}"
            )
        lines.extend(f"  note: {n}" for n in r.notes)
    return "\n".join(lines)
