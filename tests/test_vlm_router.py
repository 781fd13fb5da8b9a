"""VLM backends and routing against a real OpenAI-compatible HTTP server on 127.0.0.1: request format,
faults (500, timeouts, garbage, malformed JSON, schema refusal), retries, failover order, circuit
breaker, schema repair, hot switching under load; registry validation."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from chat_server import ChatServer

from streamwatch.errors import RegistryError, VLMOutputError, VLMTruncated, VLMUnavailable
from streamwatch.vlm.backend import VLMRequest, VLMResult, jpeg, strip_reasoning
from streamwatch.vlm.breaker import BreakerState, CircuitBreaker
from streamwatch.vlm.local import ImageEvidence
from streamwatch.vlm.openai_compat import OpenAIBackend
from streamwatch.vlm.prompts import DEFAULT_QUESTIONS, extract_json, parse_compliance
from streamwatch.vlm.registry import Capability, ModelSpec, Registry, RegistrySpec, load_registry
from streamwatch.vlm.router import ModelRouter, SwitchRefused
from streamwatch.vlm.service import VLMService

MODELS = Path(__file__).resolve().parents[1] / "models"
GOOD = json.dumps(
    {
        "exposure": False,
        "setting": "indoor_stage",
        "brands": ["Pepsi"],
        "text": ["今晚见"],
        "outfit": "white dress",
        "objects": ["microphone"],
        "confidence": 0.8,
    }
)


def spec(mid: str, url: str, **kw: Any) -> dict[str, Any]:
    return {"id": mid, "backend": "openai", "endpoint": url, "model_name": mid, "capabilities": ["compliance", "reply", "qa"], **kw}


def registry(models: list[dict[str, Any]], roles: dict[str, list[str]]) -> Registry:
    return Registry(RegistrySpec.model_validate({"models": models, "roles": roles}))


def frame() -> np.ndarray:
    img = np.full((360, 640, 3), 40, np.uint8)
    cv2.rectangle(img, (100, 80), (400, 300), (200, 120, 30), -1)
    return img


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


# --- registry ---------------------------------------------------------------------------------------


def test_shipped_registry_loads_and_config_roles_override_it() -> None:
    r = load_registry(MODELS / "registry.json")
    assert r.roles[Capability.REPLY] == ["local"]
    assert {"qwen3-vl-8b", "glm-4.6v-flash", "qwen3-vl-2b-local", "local"} <= set(r.models)
    r = load_registry(MODELS / "registry.json", {"compliance": ["qwen3-vl-8b", "qwen3-vl-4b", "local"]})
    assert r.roles[Capability.COMPLIANCE] == ["qwen3-vl-8b", "qwen3-vl-4b", "local"]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("{not json", "not valid JSON"),
        (
            {"models": [{"id": "a", "backend": "openai", "capabilities": ["qa"]}]},
            "models[0]: an openai backend needs endpoint and model_name",
        ),
        ({"models": [{"id": "a", "backend": "hf", "capabilities": ["qa"], "path": "x", "speed": 1}]}, "models[0].speed: Extra inputs"),
        ({"models": [{"id": "a", "backend": "openai", "endpoint": "ftp://x", "model_name": "m", "capabilities": ["qa"]}]}, "http(s) URL"),
        ({"models": [{"id": "a", "backend": "hf", "path": "x", "capabilities": ["dance"]}]}, "models[0].capabilities[0]"),
        (
            {"models": [{"id": "a", "backend": "hf", "path": "x", "capabilities": ["qa"]}] * 2},
            "models[1].id: model id 'a' is defined twice",
        ),
        ({"roles": {"qa": ["nope", "local"]}}, "roles.qa[0]: unknown model 'nope'"),
        (
            {"models": [{"id": "a", "backend": "hf", "path": "x", "capabilities": ["qa"]}], "roles": {"reply": ["a"]}},
            "does not have the 'reply'",
        ),
        ({"roles": {"qa": []}}, "roles.qa: the chain is empty"),
    ],
)
def test_bad_registries_name_the_place(tmp_path: Path, raw: Any, expected: str) -> None:
    p = tmp_path / "registry.json"
    p.write_text(raw if isinstance(raw, str) else json.dumps(raw))
    with pytest.raises(RegistryError) as e:
        load_registry(p)
    assert expected in str(e.value)
    assert str(p) in str(e.value)


# --- pure parsing -----------------------------------------------------------------------------------


def test_reasoning_is_stripped_from_thinking_outputs() -> None:
    assert strip_reasoning('<think>the user wants JSON</think>\n{"a": 1}') == ('{"a": 1}', "the user wants JSON")
    assert strip_reasoning("template opened it…\n</think>\n\nanswer") == ("answer", "template opened it…")
    assert strip_reasoning("<think>ran out of tokens while thinking") == ("", "ran out of tokens while thinking")
    assert strip_reasoning("<think>x</think><answer>是的<|begin_of_box|>yes<|end_of_box|></answer>")[0] == "yes"
    assert strip_reasoning("plain answer") == ("plain answer", "")


def test_malformed_json_is_repaired_or_refused() -> None:
    assert extract_json('Sure! ```json\n{"exposure": false, "brands": ["A",],}\n```') == {"exposure": False, "brands": ["A"]}
    assert extract_json("Here: {'exposure': True, 'text': None} hope it helps") == {"exposure": True, "text": None}
    with pytest.raises(VLMTruncated):  # cut off: never completed into an answer
        extract_json('{"text": ["a } b"], "exposure": "no"')
    for bad in ("no json here", "[1, 2]", "{exposure: maybe"):
        with pytest.raises(VLMOutputError):
            extract_json(bad)
    a = parse_compliance(
        '{"Exposure": "yes", "setting": "Indoor Stage", "brands": "Pepsi, 无", "text": [], "outfit": null, "objects": []}',
        DEFAULT_QUESTIONS,
        "m",
    )
    assert a.get("exposure") is True and a.get("setting") == "indoor_stage" and a.get("brands") == ("Pepsi",)
    assert [d.label for d in a.detections()] == ["exposure", "setting:indoor_stage", "brands"]
    assert a.detections()[0].source == "vlm:m"
    assert "setting=indoor_stage" in a.tags
    with pytest.raises(VLMOutputError, match="exposure"):
        parse_compliance('{"setting": "outdoor"}', DEFAULT_QUESTIONS, "m")
    with pytest.raises(VLMOutputError):
        parse_compliance(
            '{"exposure": "perhaps", "setting": "x", "brands": [], "text": [], "outfit": "", "objects": []}', DEFAULT_QUESTIONS, "m"
        )


def test_breaker_opens_probes_once_and_closes() -> None:
    b = CircuitBreaker(failures=2, cooldown_s=10)
    assert b.allow(0) and not b.failure(0) and b.allow(0)
    assert b.failure(1) and b.state is BreakerState.OPEN
    assert not b.allow(5)
    assert b.allow(11) and b.state is BreakerState.HALF_OPEN
    assert not b.allow(11)  # one probe at a time
    assert b.failure(12) and not b.allow(13)  # the probe failed: open again
    assert b.allow(23)
    b.success()
    assert b.state is BreakerState.CLOSED and b.allow(23) and b.allow(23)


# --- the HTTP backend -------------------------------------------------------------------------------


def test_openai_backend_request_format_key_and_schema_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_VLM_KEY", "sk-very-secret-123")
    with ChatServer(lambda r: GOOD) as srv:

        async def go() -> tuple[VLMResult, VLMResult, str]:
            b = OpenAIBackend(ModelSpec.model_validate(spec("m1", srv.url, api_key_env="TEST_VLM_KEY")))
            svc_img = jpeg(frame(), 256)
            schema = json.dumps({"type": "object"})
            r1 = await b.generate(VLMRequest("describe", (svc_img,), "sys", 64, schema))
            srv.script = ["400_schema"]
            r2 = await b.generate(VLMRequest("describe", (svc_img,), "sys", 64, schema))
            srv.script = ["503"]
            with pytest.raises(VLMUnavailable) as e:
                await b.generate(VLMRequest("x"))
            await b.close()
            return r1, r2, str(e.value) + repr(b)

        r1, r2, text = asyncio.run(go())
    assert r1.text == GOOD and r1.model == "m1" and r1.prompt_tokens == 100
    first = srv.requests[0]
    assert first["model"] == "m1" and first["messages"][0] == {"role": "system", "content": "sys"}
    image = first["messages"][1]["content"][0]["image_url"]["url"]
    decoded = cv2.imdecode(np.frombuffer(base64.b64decode(image.split(",", 1)[1]), np.uint8), cv2.IMREAD_COLOR)
    assert max(decoded.shape[:2]) == 256  # resized to the model's image side
    assert first["response_format"]["type"] == "json_schema"
    assert srv.headers[0]["Authorization"] == "Bearer sk-very-secret-123"
    # 400 with a schema → asked again without, and remembered
    assert "response_format" in srv.requests[1] and "response_format" not in srv.requests[2] and r2.text == GOOD
    assert "response_format" not in srv.requests[3]
    assert "HTTP 503" in text and "sk-very-secret" not in text


def test_failover_retry_once_breaker_and_probe_back() -> None:
    clock = Clock()
    with ChatServer(lambda r: "from A") as a, ChatServer(lambda r: "from B") as b:
        reg = registry([spec("a", a.url), spec("b", b.url)], {"qa": ["a", "b", "local"]})
        router = ModelRouter(reg, breaker_failures=1, breaker_cooldown_s=30, clock=clock)
        svc = VLMService(router)

        async def ask() -> tuple[str, str]:
            r = await svc.answer("what is on stage?", frame(), ImageEvidence(640, 360))
            return r.text, r.model

        async def go() -> list[tuple[str, str]]:
            out = [await ask()]  # A healthy
            a.script = ["500", "garbage"]
            out.append(await ask())  # A fails twice (retry once) → B
            out.append(await ask())  # A's circuit is open: straight to B
            clock.t += 31
            out.append(await ask())  # cool-down over: one probe to A, which answers
            a.script = ["500"] * 4
            b.script = ["503"] * 4
            clock.t += 100
            out.append(await ask())  # both down → the local template
            out.append((str(router.state()), ""))
            await router.close()
            return out

        out = asyncio.run(go())
        assert out[0] == ("from A", "a")
        assert out[1] == ("from B", "b") and out[2] == ("from B", "b")
        # retried exactly once per failing request, skipped while open; two 500s in a row are followed by
        # one known-good probe (which also fails here, so the failure is the model's, not the input's)
        assert a.count == 1 + 2 + 0 + 1 + 2 + 1
        assert out[3] == ("from A", "a")
        assert out[4][1] == "local" and "local analyzers only" in out[4][0]
        assert out[5][0] == str({"a": "open", "b": "open"})


def test_timeouts_are_bounded_and_fail_over() -> None:
    with ChatServer(lambda r: "late", hang_s=3.0) as a, ChatServer(lambda r: "on time") as b:
        reg = registry([spec("a", a.url, timeout_s=0.4), spec("b", b.url)], {"qa": ["a", "b"]})
        router = ModelRouter(reg)
        a.script = ["timeout", "timeout"]

        async def go() -> tuple[str, str, float]:
            t0 = time.perf_counter()
            r = await VLMService(router).answer("q", None, ImageEvidence(0, 0))
            await router.close()
            return r.text, r.model, time.perf_counter() - t0

        text, model, took = asyncio.run(go())
    assert (text, model) == ("on time", "b")
    assert took < 2.0, took  # two 0.4 s timeouts, not two 3 s hangs


def test_compliance_all_questions_one_call_with_schema_and_repair() -> None:
    answers = iter(["not json", "```json\n" + GOOD[:-1] + ",}\n```", GOOD])
    with ChatServer(lambda r: next(answers)) as srv:
        router = ModelRouter(registry([spec("m", srv.url)], {"compliance": ["m"]}))
        svc = VLMService(router)
        ev = ImageEvidence(640, 360, ("扫码加群",), (), ())

        async def go() -> Any:
            one = await svc.compliance(frame(), ev)  # bad, then repaired on the retry
            two = await svc.compliance(frame(), ev)
            await router.close()
            return one, two

        one, two = asyncio.run(go())
    assert srv.count == 3
    assert one.model == "m" and one.get("brands") == ("Pepsi",) and one.get("setting") == "indoor_stage"
    assert two.get("text") == ("今晚见",)
    body = srv.requests[0]
    schema = body["response_format"]["json_schema"]["schema"]
    assert set(schema["required"]) == {q.id for q in DEFAULT_QUESTIONS} | {"confidence"}
    prompt = body["messages"][1]["content"][-1]["text"]
    assert "扫码加群" in prompt and all(q.id in prompt for q in DEFAULT_QUESTIONS)


# --- hot switch under load --------------------------------------------------------------------------


class FakeBackend:
    """In-process backend that records whether it answered before its warm-up finished."""

    def __init__(self, s: ModelSpec, warm_s: float = 0.0) -> None:
        self.spec = s
        self.warm_s = warm_s
        self.warmed = False
        self.closed = False
        self.answered_cold = 0
        self.answered = 0

    @property
    def model(self) -> str:
        return self.spec.id

    async def generate(self, request: VLMRequest) -> VLMResult:
        if self.closed:
            raise VLMUnavailable("closed")
        if not self.warmed:
            self.answered_cold += 1
        await asyncio.sleep(0.02)
        self.answered += 1
        return VLMResult(f"answer by {self.spec.id}", self.spec.id)

    async def warm(self) -> None:
        await asyncio.sleep(self.warm_s)
        if self.spec.id == "broken":
            raise VLMUnavailable("weights missing")
        self.warmed = True

    async def close(self) -> None:
        self.closed = True


def test_switch_under_load_loses_nothing_and_never_uses_a_half_loaded_model() -> None:
    made: dict[str, FakeBackend] = {}

    def factory(s: ModelSpec) -> FakeBackend:
        made[s.id] = FakeBackend(s, warm_s=0.3)
        made[s.id].warmed = s.id == "old"  # the running model is warm
        return made[s.id]

    models = [{"id": m, "backend": "hf", "path": m, "capabilities": ["qa"]} for m in ("old", "new", "broken")]
    router = ModelRouter(registry(models, {"qa": ["old"]}), factory=factory, min_switch_interval_s=60)  # type: ignore[arg-type]
    svc = VLMService(router)

    async def go() -> tuple[list[str], Any]:
        router.start()
        answers: list[str] = []

        async def client() -> None:
            for _ in range(30):
                answers.append((await svc.answer("q", None, ImageEvidence(0, 0))).model)

        clients = [asyncio.create_task(client()) for _ in range(20)]
        await asyncio.sleep(0.1)
        result = await router.switch(Capability.QA, "new")
        with pytest.raises(SwitchRefused, match="next switch is allowed"):
            await router.switch(Capability.QA, "old")
        await asyncio.gather(*clients)
        await router.close()
        return answers, result

    answers, result = asyncio.run(go())
    assert len(answers) == 600  # nothing lost
    assert made["new"].answered_cold == 0 and made["old"].answered_cold == 0
    assert answers.count("new") > 0 and answers.count("old") > 0
    assert answers[-20:] == ["new"] * 20  # after the swap, every request goes to the new model
    assert result.old == "old" and result.new == "new" and result.seconds >= 0.3


def test_failed_switch_keeps_the_old_model() -> None:
    models = [{"id": m, "backend": "hf", "path": m, "capabilities": ["qa"]} for m in ("old", "broken")]
    router = ModelRouter(registry(models, {"qa": ["old"]}), factory=lambda s: FakeBackend(s))  # type: ignore[arg-type,return-value]

    async def go() -> str:
        with pytest.raises(VLMUnavailable, match="stays on 'old'"):
            await router.switch(Capability.QA, "broken")
        with pytest.raises(RegistryError, match="unknown model 'nope'"):
            await router.switch(Capability.QA, "nope")
        with pytest.raises(SwitchRefused, match="capability"):
            await router.switch(Capability.REPLY, "old")
        return (await VLMService(router).answer("q", None, ImageEvidence(0, 0))).model

    assert asyncio.run(go()) == "old"
    assert router.chains[Capability.QA] == ["old"]


# --- persona replies through the reply role ---------------------------------------------------------


def test_reply_model_output_is_checked_regenerated_once_then_templated(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from streamwatch.analysis.base import create
    from streamwatch.analysis.cascade import Cascade
    from streamwatch.analysis.detectors import AnalyzerSettings
    from streamwatch.analysis.policy import load_policy
    from streamwatch.server.submit import Submission
    from streamwatch.vlm.persona import load_persona
    from streamwatch.vlm.responder import AudienceResponder

    policy = load_policy(MODELS / "policy.toml")
    persona = load_persona(MODELS / "personas/xingmiao.toml")
    script = ["加微信 xiaomei88 找我玩", "好可爱的小猫！星喵最喜欢猫咪啦", "扫码加群 QQ123456789", "加V信 abc123456", "谢谢你"]
    with ChatServer(lambda r: script.pop(0)) as srv:
        router = ModelRouter(registry([spec("m", srv.url)], {"reply": ["m", "local"]}))
        pool = ThreadPoolExecutor(2)

        async def go() -> list[Any]:
            cascade = Cascade([create("qr", AnalyzerSettings(device="cpu"))], pool)
            responder = AudienceResponder(cascade, lambda _s: policy, persona, service=VLMService(router))
            out = []
            for i in range(3):
                img = frame().copy()
                cv2.circle(img, (500, 60 + 90 * i), 40, (255, 255, 255), -1)  # three different images (no duplicates)
                data = cv2.imencode(".jpg", img)[1].tobytes()
                sub = Submission(f"sub{i}", "s1", "fan-app", "小明", "送你的", data, "image/jpeg", 640, 360, "t.jpg", time.time())
                if i == 2:
                    srv.script = ["500"] * 4
                out.append(await responder.reply(sub))
            await cascade.close()
            await router.close()
            return out

        first, second, third = asyncio.run(go())
        pool.shutdown()
        prompts = [r["messages"][0]["content"] for r in srv.requests if r["messages"][0]["role"] == "system"]  # not the probe
    assert len(prompts) == 2 + 2 + 2
    # 1st: banned text → regenerated once → clean, from the model
    assert (first.model, first.text) == ("m", "好可爱的小猫！星喵最喜欢猫咪啦")
    # 2nd: banned twice → the safe template
    assert second.model == "local" and "xiaomei" not in second.text and "QQ" not in second.text and persona.name in second.text
    # 3rd: the model is down → the local template answers (retried once first, then one probe that fails too)
    assert third.model == "local" and third.text
    assert srv.count == 2 + 2 + 2 + 1
    assert all(persona.name in p and persona.catchphrases[0] in p for p in prompts)  # the persona is in the system prompt
