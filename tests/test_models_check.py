"""`streamwatch models check`'s judging (issue 21): a schema honoured, ignored, refused or cut off; how many
images one request takes; where the reasoning is. Generated answers of several shapes, and real HTTP
servers on 127.0.0.1 that refuse a schema (HTTP 400) or more than N images (vLLM's message)."""

from __future__ import annotations

import asyncio
import json
import random

import httpx
import pytest
from chat_server import ChatServer

from streamwatch.vlm.check import SCHEMA, CheckResult, check_model, conforms, judge_schema, reasoning_of, render
from streamwatch.vlm.registry import ModelSpec

COLOURS = SCHEMA["properties"]["colour"]["enum"]


def valid(rng: random.Random) -> dict[str, object]:
    return {"grey": rng.random() < 0.5, "colour": rng.choice(COLOURS)}


@pytest.mark.parametrize("seed", range(20))
def test_answers_of_every_shape_are_judged(seed: int) -> None:
    rng = random.Random(seed)
    good = valid(rng)
    text = json.dumps(good, ensure_ascii=False, indent=rng.choice([None, 2]))
    assert judge_schema(text, "stop") == "honoured"
    assert judge_schema(f"<think>{'let me look. ' * rng.randint(1, 5)}</think>\n{text}", "stop") == "honoured"
    # cut off inside the object at max_tokens: cannot tell whether the server would have finished it
    cut = text[: rng.randint(1, len(text) - 1)]
    assert judge_schema(cut, "length") == "cut off at max_tokens (cannot tell)"
    assert judge_schema(cut, "stop") == "ignored"
    # every way of breaking the schema is "ignored", whatever the finish reason
    gone = rng.choice(list(good))
    broken = [
        {k: v for k, v in good.items() if k != gone},  # a required key missing
        {**good, "extra": 1},  # additionalProperties: false
        {**good, "grey": rng.choice(["yes", 1, None])},  # wrong type
        {**good, "colour": "purple-" + str(seed)},  # not in the enum
        [good],  # not an object
    ]
    for b in broken:
        assert not conforms(json.dumps(b), SCHEMA)
        assert judge_schema(json.dumps(b), rng.choice(["stop", "length"])) == "ignored"
    noise = "".join(chr(rng.randint(1, 0x4E00)) for _ in range(rng.randint(1, 40))).lstrip("{")
    assert judge_schema(noise, rng.choice(["stop", "length"])) == "ignored"


@pytest.mark.parametrize(
    ("message", "where"),
    [
        ({"content": "{}", "reasoning_content": "hmm"}, "reasoning_content"),
        ({"content": "{}", "reasoning": "hmm"}, "reasoning"),
        ({"content": "<think>hmm</think>{}"}, "<think> in content"),
        ({"content": "hmm</think>{}"}, "<think> in content"),
        ({"content": "{}", "reasoning_content": "  "}, "none"),
        ({"content": None, "reasoning": None}, "none"),
    ],
)
def test_where_the_reasoning_is(message: dict[str, object], where: str) -> None:
    assert reasoning_of(message) == where


def spec(url: str, **kw: object) -> ModelSpec:
    return ModelSpec.model_validate({"id": "m", "backend": "openai", "endpoint": url, "model_name": "m", "capabilities": ["qa"], **kw})


def run(s: ModelSpec) -> CheckResult:
    async def go() -> CheckResult:
        async with httpx.AsyncClient() as client:
            return await check_model(s, client)

    return asyncio.run(go())


@pytest.mark.parametrize("limit", [1, 2, 3])
def test_image_limits_and_a_refused_schema_over_http(limit: int) -> None:
    answer = json.dumps({"grey": True, "colour": "grey"})
    with ChatServer(lambda r: answer, max_images=limit) as srv:
        srv.script = ["400_schema"]
        result = run(spec(srv.url))
    shown = {1: "1", 2: "2", 3: "2"}[limit]  # the counts tried are 1, 2, 4
    assert result.ok and result.schema == "refused" and len(result.latency_s) == int(shown)  # the answered requests
    assert result.images.startswith(shown + " (HTTP 400") and "At most" in result.images
    assert all("response_format" not in r for r in srv.requests[1:])  # once refused, never sent again
    assert "json schema: refused" in render([result])


def test_honoured_schema_many_images_and_an_unreachable_model() -> None:
    with ChatServer(lambda r: "<think>grey everywhere</think>" + json.dumps({"grey": True, "colour": "grey"})) as srv:
        result = run(spec(srv.url))
        assert result.ok and result.schema == "honoured" and result.images == "≥4" and result.reasoning == "<think> in content"
        assert all("response_format" in r for r in srv.requests)
        off = run(spec(srv.url, json_schema=False))
        assert off.schema.startswith("not sent") and "response_format" not in srv.requests[-1]
    dead = run(spec("http://127.0.0.1:9/v1", timeout_s=3))
    assert not dead.ok and "cannot reach" in dead.error and "FAILED" in render([dead])
