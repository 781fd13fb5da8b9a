"""The VLM client against scripted real HTTP servers on 127.0.0.1, one defect shape per case (issue 21):
answers cut off by the budget, reasoning-only answers, `</think>` in an instruct reply, an ignored
response_format, a 400 image-count refusal, slow servers against the deadline, retries that change
the request, breakers per (model, role) and the router's typed status."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import numpy as np
import pytest
from chat_server import Answer, ChatServer

from streamwatch.vlm.breaker import BreakerState
from streamwatch.vlm.local import ImageEvidence
from streamwatch.vlm.persona import Persona
from streamwatch.vlm.prompts import clean_answer
from streamwatch.vlm.registry import Capability, Registry, RegistrySpec
from streamwatch.vlm.router import ModelRouter
from streamwatch.vlm.service import VLMService

GOOD = {
    "exposure": False,
    "setting": "indoor_stage",
    "brands": ["Pepsi"],
    "text": ["加微信 abc123"],
    "outfit": "",
    "objects": [],
    "confidence": 0.7,
}
GOOD_TEXT = json.dumps(GOOD, ensure_ascii=False)
PERSONA = Persona(id="p", name="星喵", reply_length=20)
EV = ImageEvidence(640, 360)


def spec(mid: str, url: str, **kw: Any) -> dict[str, Any]:
    return {"id": mid, "backend": "openai", "endpoint": url, "model_name": mid, "capabilities": ["compliance", "reply", "qa"], **kw}


def router(models: list[dict[str, Any]], roles: dict[str, list[str]], **kw: Any) -> ModelRouter:
    return ModelRouter(Registry(RegistrySpec.model_validate({"models": models, "roles": roles})), **kw)


def picture(w: int = 640, h: int = 360) -> np.ndarray:
    rng = np.random.default_rng(w * 31 + h)
    return rng.integers(0, 255, (h, w, 3), dtype=np.uint8)


def last_body(srv: ChatServer) -> dict[str, Any]:
    with srv.lock:
        return srv.requests[-1]


def prompt_of(body: dict[str, Any]) -> str:
    return str(body["messages"][-1]["content"][-1]["text"])


# --- 1: cut off is never a judgment; retried with a larger budget and thinking off, then failover ---------

CUT_SHAPES = [
    Answer(GOOD_TEXT[: GOOD_TEXT.index('"text"')], "length"),  # the budget ate the on-screen text answer
    Answer(GOOD_TEXT, "length"),  # closed, but the server says the budget ran out
    Answer("<think>The image shows a stage. Let me check the text on", "stop"),  # reasoning never ended
    Answer("", "length", reasoning_content="The image shows a stage, I need to check"),  # vLLM reasoning parser
    Answer("", "length", reasoning="The image shows"),  # Ollama
]


@pytest.mark.parametrize("shape", CUT_SHAPES, ids=["cut-json", "length-closed", "open-think", "reasoning-content", "ollama"])
def test_a_cut_off_compliance_answer_is_retried_bigger_without_thinking_then_fails_over(shape: Answer) -> None:
    def thinking_model(_req: Any) -> Answer:
        body = last_body(a)
        return Answer(GOOD_TEXT) if body.get("chat_template_kwargs") == {"enable_thinking": False} else shape

    with ChatServer(thinking_model) as a, ChatServer(lambda _r: shape) as broken, ChatServer(lambda _r: GOOD_TEXT) as b:
        kw = {"mode": "thinking", "server": "vllm", "think": ["compliance", "qa"], "max_output_tokens": 4096}
        r = router(
            [spec("a", a.url, **kw), spec("broken", broken.url, **kw), spec("b", b.url)],
            {"compliance": ["a", "local"], "qa": ["broken", "b", "local"]},
        )
        svc = VLMService(r, compliance_tokens=300)

        async def go() -> Any:
            answer = await svc.compliance(picture(), EV)
            reply = await svc.answer("what is on screen?", picture(), EV)
            await r.close()
            return answer, reply

        answer, reply = asyncio.run(go())
    first, second = a.requests
    assert first["chat_template_kwargs"] == {"enable_thinking": True} and first["max_tokens"] == 300
    assert second["chat_template_kwargs"] == {"enable_thinking": False} and second["max_tokens"] == 600
    assert answer.model == "a" and answer.get("text") == ("加微信 abc123",) and answer.confidence == 0.7
    # always cut off: asked twice, never taken as an answer (not even cut at a sentence), then the next model
    assert broken.count == 2 and reply.model == "b"
    status = r.status()
    assert status.of("broken", Capability.QA).unusable_in_row == 2  # type: ignore[union-attr]
    assert "cut off" in status.role(Capability.QA).fallback_reason  # type: ignore[union-attr]
    assert status.role(Capability.COMPLIANCE).fallback_reason == ""  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("cut", "expected_model", "expected"),
    [
        ("今天的舞台真漂亮！谢谢你的图片。你穿的外", "m", "今天的舞台真漂亮！谢谢你的图片。"),
        ("The lights are amazing! See you ton", "m", "The lights are amazing!"),
        ("没有一个完整的句子就被截断了因为预算用完", "local", None),
    ],
)
def test_a_reply_cut_off_twice_keeps_only_whole_sentences(cut: str, expected_model: str, expected: str | None) -> None:
    with ChatServer(lambda _r: Answer(cut, "length")) as srv:
        r = router([spec("m", srv.url)], {"reply": ["m", "local"]})

        async def go() -> Any:
            out = await VLMService(r).reply(PERSONA, picture(), EV, "", "k")
            await r.close()
            return out

        reply = asyncio.run(go())
    assert srv.count == 2 and reply.model == expected_model
    if expected is not None:
        assert reply.text == expected


# --- 6: reasoning split only where produced --------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "expected"),
    [
        (Answer("", reasoning_content="Two singers on a stage."), "Two singers on a stage."),  # answer left in the reasoning
        (Answer("", reasoning="I look.</think>Two singers on a stage."), "Two singers on a stage."),  # Ollama qwen3-vl
        (Answer("Two singers on a stage.", reasoning_content="thinking about it"), "Two singers on a stage."),
        (Answer("<think>stage</think>Two singers on a stage."), "Two singers on a stage."),
        (
            Answer("Tags like </think> end reasoning; here </think> appears twice."),
            "Tags like </think> end reasoning; here </think> appears twice.",
        ),
    ],
)
def test_reasoning_is_read_where_the_server_puts_it_and_instruct_answers_stay_whole(shape: Answer, expected: str) -> None:
    with ChatServer(lambda _r: shape) as srv:
        r = router([spec("m", srv.url)], {"qa": ["m", "local"]})

        async def go() -> Any:
            out = await VLMService(r).answer("what?", None, EV)
            await r.close()
            return out

        answer = asyncio.run(go())
    assert (answer.text, answer.model, srv.count) == (expected, "m", 1)


# --- 5: cleaned output ---------------------------------------------------------------------------------------


def test_replies_reach_fans_without_control_or_replacement_characters_and_capped() -> None:
    dirty = "今天的\x07舞台真漂亮！\x1b[31m谢谢你的\ufffd图片。" + "你穿的外套好可爱～" * 20
    garbled = "".join(c + "\ufffd\x01" for c in "谢谢你的图片好开心")
    answers = iter([dirty, garbled, garbled, "A" * 5000 + ". Then more text"])
    with ChatServer(lambda _r: next(answers)) as srv:
        r = router([spec("m", srv.url)], {"reply": ["m", "local"], "qa": ["m", "local"]})
        svc = VLMService(r)

        async def go() -> Any:
            one = await svc.reply(PERSONA, picture(), EV, "", "k1")
            two = await svc.reply(PERSONA, picture(), EV, "", "k2")  # garbled twice: the template
            three = await svc.answer("what?", None, EV)
            await r.close()
            return one, two, three

        one, two, three = asyncio.run(go())
    assert one.model == "m" and "\x07" not in one.text and "\ufffd" not in one.text and "\x1b" not in one.text
    assert len(one.text) <= 60 and one.text[-1] in "！。～"
    assert two.model == "local"
    assert three.model == "m" and len(three.text) <= 600 and three.text.endswith("…")
    assert srv.count == 4
    crlf = "第一行写得很好。\r\n" * 30  # line breaks in disguise are not garbage
    assert "\r" not in clean_answer(crlf) and clean_answer(crlf).startswith("第一行写得很好。\n")


# --- 7: a schema the server ignores is detected and remembered ---------------------------------------------


@pytest.mark.parametrize(
    "ignored",
    [
        "Sure! Here is the JSON: " + GOOD_TEXT,
        "```json\n" + GOOD_TEXT + "\n```",
        json.dumps({k: v for k, v in GOOD.items() if k != "confidence"}),
        "The stage shows a performer.",
    ],
    ids=["prose", "fence", "missing-key", "no-json"],
)
def test_an_ignored_response_format_is_detected_and_json_asked_by_instruction(ignored: str) -> None:
    answers = iter([ignored, GOOD_TEXT, GOOD_TEXT])
    with ChatServer(lambda _r: next(answers)) as srv:  # like transformers serve: 200, response_format ignored
        r = router([spec("m", srv.url)], {"compliance": ["m", "local"]})
        svc = VLMService(r)

        async def go() -> Any:
            one = await svc.compliance(picture(), EV)
            two = await svc.compliance(picture(), EV)
            await r.close()
            return one, two

        one, two = asyncio.run(go())
    first, second, third = srv.requests
    assert "response_format" in first and "JSON schema" not in prompt_of(first)
    for later in (second, third):  # remembered for the model: asked by instruction, then validated
        assert "response_format" not in later and "follows this JSON schema" in prompt_of(later)
    assert one.get("brands") == ("Pepsi",) and two.get("brands") == ("Pepsi",)


# --- 3: one deadline per request ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "timeout_s"),
    [
        (Answer("not json", delay_s=0.45), 0.7),  # bad output late: no time left for a retry
        (Answer(GOOD_TEXT, delay_s=3.0), 0.5),  # a hang: cut at the deadline, never sent again
        (Answer(GOOD_TEXT[:40], "length", delay_s=0.4), 0.6),  # cut off late: no retry either
    ],
)
def test_timeout_s_is_one_deadline_from_the_moment_a_model_is_asked(shape: Answer, timeout_s: float) -> None:
    with ChatServer(lambda _r: shape) as srv:
        r = router([spec("m", srv.url, timeout_s=timeout_s)], {"compliance": ["m", "local"]})
        r.start()  # clients created up front, as the daemon does

        async def go() -> tuple[Any, float]:
            t0 = time.perf_counter()
            out = await VLMService(r).compliance(picture(), EV)
            took = time.perf_counter() - t0
            await r.close()
            return out, took

        out, took = asyncio.run(go())
    assert out is None  # local: no judgment
    assert srv.count == 1, "a retry was started without time left"
    assert took < timeout_s + 0.35, took


def test_the_wait_for_a_slot_counts_against_the_deadline() -> None:
    with ChatServer(lambda r: Answer("slow answer.", delay_s=1.5 if "first" in r.prompt else 0.6)) as srv:
        r = router([spec("m", srv.url, timeout_s=0.6, concurrency=1)], {"qa": ["m", "local"]})
        r.start()
        svc = VLMService(r)

        async def go() -> list[tuple[str, float]]:
            async def ask(q: str, delay: float) -> tuple[str, float]:
                await asyncio.sleep(delay)
                t0 = time.perf_counter()
                out = await svc.answer(q, None, EV)
                return out.model, time.perf_counter() - t0

            got = await asyncio.gather(ask("first", 0.0), ask("second", 0.05))
            await r.close()
            return list(got)

        (m1, t1), (m2, t2) = asyncio.run(go())
    # the second waited ~0.55 s for the only slot: if only the HTTP call were timed it would end ~1.15 s
    # after it was asked; the deadline counts the wait, so the template answers within its 0.6 s
    assert m1 == "local" and m2 == "local"
    assert t1 < 0.9 and t2 < 0.9, (t1, t2)


def test_a_whole_chain_deadline_bounds_what_a_fan_waits_for() -> None:
    with ChatServer(lambda _r: Answer("late.", delay_s=2.0)) as a, ChatServer(lambda _r: Answer("also late.", delay_s=2.0)) as b:
        r = router([spec("a", a.url, timeout_s=0.5), spec("b", b.url, timeout_s=5.0)], {"reply": ["a", "b", "local"]})
        r.start()

        async def go() -> tuple[Any, float]:
            t0 = time.perf_counter()
            out = await VLMService(r, deadline_s=0.8).reply(PERSONA, picture(), EV, "", "k")
            took = time.perf_counter() - t0
            await r.close()
            return out, took

        out, took = asyncio.run(go())
    # a had its 0.5 s, b only what was left of the 0.8 s (not its own 5 s): then the template
    assert out.model == "local" and a.count == 1 and b.count == 1
    assert took < 1.05, took


# --- 4: a retry changes the request --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "changed"),
    [
        ("not json at all", {"temperature"}),
        ('{"exposure": "perhaps"}', {"temperature"}),
        (Answer(GOOD_TEXT[:50], "length"), {"max_tokens"}),
    ],
)
def test_a_retry_is_never_the_byte_identical_request(bad: str | Answer, changed: set[str]) -> None:
    answers = iter([bad, GOOD_TEXT])
    with ChatServer(lambda _r: next(answers)) as srv:
        r = router([spec("m", srv.url, json_schema=False)], {"compliance": ["m", "local"]})

        async def go() -> Any:
            out = await VLMService(r).compliance(picture(), EV)
            await r.close()
            return out

        out = asyncio.run(go())
    first, second = srv.requests
    assert out is not None and out.model == "m"
    assert json.dumps(first, sort_keys=True) != json.dumps(second, sort_keys=True)
    assert prompt_of(first) != prompt_of(second)
    assert {k for k in ("temperature", "max_tokens") if first[k] != second[k]} == changed
    assert first["messages"][-1]["content"][:-1] == second["messages"][-1]["content"][:-1]  # same images


# --- 8: breakers per (model, role) ---------------------------------------------------------------------------


def test_breakers_count_per_model_and_role() -> None:
    def model(req: Any) -> str:
        return "I can't produce JSON, sorry." if "JSON" in req.prompt or "json" in req.system.lower() else "A warm reply."

    with ChatServer(model) as srv:
        r = router([spec("m", srv.url)], {"compliance": ["m", "local"], "reply": ["m", "local"]}, breaker_failures=2)
        svc = VLMService(r)

        async def go() -> list[str]:
            out = []
            for role in ("compliance", "reply", "reply", "compliance", "compliance", "reply"):  # fail, ok, ok, fail …
                if role == "compliance":
                    out.append("none" if await svc.compliance(picture(), EV) is None else "answer")
                else:
                    out.append((await svc.reply(PERSONA, picture(), EV, "", str(len(out)))).model)
            await r.close()
            return out

        out = asyncio.run(go())
        status = r.status()
    assert out == ["none", "m", "m", "none", "none", "m"]
    comp, reply = status.of("m", Capability.COMPLIANCE), status.of("m", Capability.REPLY)
    assert comp is not None and reply is not None
    assert comp.breaker is BreakerState.OPEN and comp.unusable_in_row == 4 and comp.last_failure
    assert reply.breaker is BreakerState.CLOSED and reply.unusable_in_row == 0
    assert "circuit open for compliance" in status.role(Capability.COMPLIANCE).fallback_reason  # type: ignore[union-attr]
    # the third compliance request was not sent at all (circuit open), replies kept going
    assert srv.count == 2 + 1 + 1 + 2 + 0 + 1


# --- 2: images per request, learned from a 400 and from the registry ------------------------------------------


@pytest.mark.parametrize("size", [(690, 15420), (15420, 690), (300, 4000)])
def test_a_refused_image_count_is_learned_and_the_tiles_merged(size: tuple[int, int]) -> None:
    with ChatServer(lambda r: f"{len(r.images)} image(s) seen.", max_images=1) as srv:
        r = router([spec("m", srv.url)], {"qa": ["m", "local"]})
        svc = VLMService(r)

        async def go() -> list[Any]:
            out = [await svc.answer("what does it say?", picture(*size), EV) for _ in range(2)]
            await r.close()
            return out

        one, two = asyncio.run(go())
    tiles = len(srv.requests[0]["messages"][-1]["content"]) - 1
    assert tiles > 1  # the picture went as tiles first
    assert [len(b["messages"][-1]["content"]) - 1 for b in srv.requests] == [tiles, 1, 1]  # refused, merged; then merged at once
    assert one.model == two.model == "m" and one.text == "1 image(s) seen."
    assert f"The {tiles} parts of the picture were placed side by side" in prompt_of(srv.requests[1])
    w, h = srv.sizes[-1][0]  # type: ignore[misc]
    assert max(w, h) <= 512 * 4 and min(w, h) >= 32


def test_the_registry_image_count_is_kept_from_the_start() -> None:
    with ChatServer(lambda r: f"{len(r.images)} images.", max_images=2) as srv:
        r = router([spec("m", srv.url, image_max_count=2)], {"qa": ["m", "local"]})

        async def go() -> Any:
            out = await VLMService(r).answer("what?", picture(690, 15420), EV)
            await r.close()
            return out

        out = asyncio.run(go())
    assert srv.count == 1 and out.text == "2 images."
