"""Images VLM servers refuse, against a real OpenAI-compatible server on 127.0.0.1 that decodes every
data URL and refuses images below 32 px like vLLM / Ollama do: fitted images are all answered, a
refusal (4xx, or a 5xx for one image while the model answers others) fails only its own request, the
circuit breaker stays closed and no weaker model is asked for the stream."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from chat_server import ChatServer

from streamwatch.errors import VLMInputError, VLMServerError
from streamwatch.vlm.backend import VLMRequest, jpeg
from streamwatch.vlm.local import ImageEvidence
from streamwatch.vlm.openai_compat import OpenAIBackend
from streamwatch.vlm.registry import Capability, ModelSpec, Registry, RegistrySpec
from streamwatch.vlm.router import ModelRouter
from streamwatch.vlm.service import VLMService

MODELS = Path(__file__).resolve().parents[1] / "models"
ODD = [(24, 24), (1, 1), (332, 27), (27, 332), (690, 15420), (15420, 690), (3, 2000), (640, 360)]
LAX = {"image_min_side": 1, "image_patch": 1, "image_max_aspect": 100000, "image_max_tokens": 10**9}  # a registry entry that fits nothing


def spec(mid: str, url: str, **kw: Any) -> dict[str, Any]:
    return {"id": mid, "backend": "openai", "endpoint": url, "model_name": mid, "capabilities": ["compliance", "reply", "qa"], **kw}


def registry(models: list[dict[str, Any]], roles: dict[str, list[str]]) -> Registry:
    return Registry(RegistrySpec.model_validate({"models": models, "roles": roles}))


def picture(w: int, h: int, seed: int = 0) -> np.ndarray:
    """A picture with structure (stripes of text-like blocks), not noise."""
    img = np.full((h, w, 3), 235, np.uint8)
    rng = np.random.default_rng(seed)
    for y in range(0, h, 40):
        cv2.rectangle(img, (int(rng.integers(0, max(1, w // 4))), y + 8), (int(rng.integers(w // 2, w + 1)), y + 24), (30, 30, 30), -1)
    return img


async def finish(router: ModelRouter, state: dict[str, str]) -> None:
    """Close the router, keeping its breakers' last states in ``state``."""
    state.update(router.state())
    await router.close()


def answer_sizes(srv: ChatServer) -> list[tuple[int, int]]:
    return [s for sizes in srv.sizes for s in sizes if s is not None]


@pytest.mark.parametrize(("patch", "status"), [(32, 500), (28, 400)])
def test_every_odd_image_is_answered_and_the_breaker_stays_closed(patch: int, status: int) -> None:
    with (
        ChatServer(lambda r: f"{len(r.images)} images", refuse_below=32, refuse_status=status) as strong,
        ChatServer(lambda r: "weak") as weak,
    ):
        reg = registry([spec("strong", strong.url, image_patch=patch), spec("weak", weak.url)], {"qa": ["strong", "weak", "local"]})
        state: dict[str, str] = {}
        router = ModelRouter(reg, breaker_failures=1)
        svc = VLMService(router)

        async def go() -> list[tuple[str, str]]:
            replies = await asyncio.gather(
                *(svc.answer("what does it say?", picture(w, h, i), ImageEvidence(w, h)) for i, (w, h) in enumerate(ODD))
            )
            await finish(router, state)
            return [(r.text, r.model) for r in replies]

        out = asyncio.run(go())
        assert [m for _t, m in out] == ["strong"] * len(ODD)  # every one answered by the model asked
        assert strong.refused == 0 and weak.count == 0
        assert state == {"strong": "closed"}
        sizes = answer_sizes(strong)
        assert all(min(s) >= 32 and s[0] % patch == 0 and s[1] % patch == 0 for s in sizes), sizes
        assert out[ODD.index((690, 15420))][0] == "4 images"  # the long screenshot went as tiles
        assert out[ODD.index((640, 360))][0] == "1 images"
        tiled = [r for r in strong.requests if len(r["messages"][-1]["content"]) == 5]
        assert tiled and all("4 consecutive parts" in r["messages"][-1]["content"][-1]["text"] for r in tiled)


def test_a_refused_image_fails_its_request_only_while_the_model_answers_others() -> None:
    """The model's registry entry lets the odd images through unfitted: the server's 500 for them is
    judged by a probe, raised as VLMInputError for that request, and never opens the breaker."""
    with ChatServer(lambda r: "strong", refuse_below=32, refuse_status=500) as strong, ChatServer(lambda r: "weak") as weak:
        reg = registry([spec("strong", strong.url, **LAX), spec("weak", weak.url)], {"compliance": ["strong", "weak", "local"]})
        state: dict[str, str] = {}
        router = ModelRouter(reg, breaker_failures=2)
        outcomes: list[tuple[str, str]] = []
        router.observe = lambda m, o, _s: outcomes.append((m, o))
        svc = VLMService(router)

        async def one(w: int, h: int, i: int) -> str:
            try:
                await svc.answer("q", picture(w, h, i), ImageEvidence(w, h))
            except VLMInputError as e:
                return f"refused: {e}"
            return "answered"

        async def go() -> list[str]:
            # stickers and good frames interleaved: more refusals than breaker_failures, concurrently
            jobs = [one(24, 24, i) if i % 2 == 0 else one(640, 360, i) for i in range(8)]
            out = list(await asyncio.gather(*jobs))
            out.append(await one(640, 360, 99))  # still served by the strong model afterwards
            await finish(router, state)
            return out

        out = asyncio.run(go())
    assert out[1:8:2] == ["answered"] * 4 and out[-1] == "answered"
    assert all(o.startswith("refused: strong failed this request twice but answers a probe") for o in out[0:8:2]), out
    assert "HTTP 500" in out[0] and "larger than factor 32" in out[0]  # the server's words, against that request
    assert state == {"strong": "closed"}
    assert weak.count == 0  # no failover to the weaker model, for this request or the stream
    assert ("strong", "refused") in outcomes and ("weak", "ok") not in outcomes


def test_a_real_4xx_refusal_is_reported_against_that_request_only() -> None:
    with ChatServer(lambda r: "strong") as strong, ChatServer(lambda r: "weak") as weak:
        reg = registry([spec("strong", strong.url), spec("weak", weak.url)], {"reply": ["strong", "weak", "local"]})
        state: dict[str, str] = {}
        router = ModelRouter(reg, breaker_failures=1)

        async def go() -> tuple[list[Any], Any]:
            strong.script = ["ok", "400", "ok", "ok"]
            results = await asyncio.gather(
                *(router.run(Capability.REPLY, lambda b, req=req: b.generate(req)) for req in reqs),
                return_exceptions=True,
            )
            after = await router.run(Capability.REPLY, lambda b: b.generate(reqs[0]))
            await finish(router, state)
            return results, after

        img = jpeg(picture(640, 360))
        reqs = [VLMRequest(f"request {i}", (img,)) for i in range(4)]
        results, after = asyncio.run(go())
    refused = [r for r in results if isinstance(r, VLMInputError)]
    assert len(refused) == 1 and "HTTP 400" in str(refused[0])
    assert sum(1 for r in results if not isinstance(r, BaseException) and r[1] == "strong") == 3
    assert strong.count == 4 + 1  # the refused request was not retried; nothing was probed
    assert after[1] == "strong" and weak.count == 0
    assert state == {"strong": "closed"}


def test_a_refused_input_keeps_the_json_schema_on() -> None:
    """A 400 for the image, not the schema: asking again without the schema is also refused, so the
    server is not marked as unable to do structured output."""
    with ChatServer(lambda r: '{"exposure": false}', refuse_below=32, refuse_status=400) as srv:
        backend = OpenAIBackend(ModelSpec.model_validate(spec("m", srv.url, **LAX)))
        schema = '{"type": "object"}'

        async def go() -> None:
            with pytest.raises(VLMInputError, match="HTTP 400"):
                await backend.generate(VLMRequest("q", (jpeg(picture(24, 24)),), schema=schema))
            await backend.generate(VLMRequest("q", (jpeg(picture(64, 64)),), schema=schema))
            await backend.close()

        asyncio.run(go())
    assert ["response_format" in r for r in srv.requests] == [True, False, True]


def test_a_model_that_is_down_still_opens_the_breaker_and_fails_over() -> None:
    """The probe tells the cases apart: a server that answers 500 to everything is the model's fault."""
    with ChatServer(lambda r: "strong") as strong, ChatServer(lambda r: "weak") as weak:
        reg = registry([spec("strong", strong.url), spec("weak", weak.url)], {"qa": ["strong", "weak", "local"]})
        state: dict[str, str] = {}
        router = ModelRouter(reg, breaker_failures=1)
        strong.script = ["500"] * 3

        async def go() -> tuple[str, str]:
            r = await VLMService(router).answer("q", picture(24, 24), ImageEvidence(24, 24))
            await finish(router, state)
            return r.text, r.model

        assert asyncio.run(go()) == ("weak", "weak")
        assert strong.count == 3  # two attempts and one failed probe
        assert state["strong"] == "open"


def test_the_backend_fits_images_it_is_given_directly() -> None:
    """Callers that build requests themselves (tools, benchmarks) get the same fitting."""
    with ChatServer(lambda r: "ok", refuse_below=32) as srv:
        backend = OpenAIBackend(ModelSpec.model_validate(spec("m", srv.url, image_patch=28)))

        async def go() -> list[str]:
            out = []
            for w, h in ODD:
                out.append((await backend.generate(VLMRequest("q", (jpeg(picture(w, h)),)))).text)
            await backend.close()
            return out

        assert asyncio.run(go()) == ["ok"] * len(ODD)
        assert srv.refused == 0
        sizes = answer_sizes(srv)
        assert all(min(s) >= 32 for s in sizes), sizes
        assert (512, 288) in sizes  # an image that already fits is sent as it is (the server snaps it to its patch)


def test_audience_screenshots_and_stickers_get_model_replies(tmp_path: Path) -> None:
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
    with ChatServer(lambda r: f"谢谢你的{len(r.images)}张图", refuse_below=32) as srv:
        state: dict[str, str] = {}
        router = ModelRouter(registry([spec("m", srv.url)], {"reply": ["m", "local"]}))
        pool = ThreadPoolExecutor(2)

        async def go() -> list[Any]:
            cascade = Cascade([create("qr", AnalyzerSettings(device="cpu"))], pool)
            responder = AudienceResponder(cascade, lambda _s: policy, persona, service=VLMService(router))
            out = []
            for i, (w, h) in enumerate([(24, 24), (332, 27), (690, 15420)]):
                data = cv2.imencode(".png", picture(w, h, i))[1].tobytes()
                sub = Submission(f"sub{i}", "s1", "fan-app", "小明", "", data, "image/png", w, h, "t.png", time.time())
                out.append(await responder.reply(sub))
            await cascade.close()
            await finish(router, state)
            return out

        replies = asyncio.run(go())
        pool.shutdown()
    assert [r.model for r in replies] == ["m", "m", "m"], replies
    assert replies[2].text == "谢谢你的4张图"  # the screenshot reached the model as tiles, not as a 23-px strip
    assert srv.refused == 0
    widths = [s[0] for s in srv.sizes[2]]
    assert all(w >= 150 for w in widths), widths  # legible tiles


def test_server_errors_are_typed() -> None:
    with ChatServer(lambda r: "x") as srv:
        backend = OpenAIBackend(ModelSpec.model_validate(spec("m", srv.url)))
        srv.script = ["500", "503", "400"]

        async def go() -> list[type[BaseException]]:
            out: list[type[BaseException]] = []
            for _ in range(3):
                try:
                    await backend.generate(VLMRequest("q"))
                except Exception as e:
                    out.append(type(e))
            await backend.close()
            return out

        assert asyncio.run(go()) == [VLMServerError, VLMServerError, VLMInputError]
