"""In-process transformers backend on tiny random-weight Qwen3-VL and Qwen2.5-VL checkpoints built at
test time (real config, tokenizer, image processor, chat template and ``generate``), and the same model
served over a real OpenAI-compatible HTTP server."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

import tiny_vlm
from chat_server import ChatServer

from streamwatch.errors import VLMInputError, VLMOutputError, VLMTruncated, VLMUnavailable
from streamwatch.vlm.backend import VLMRequest, VLMResult, jpeg
from streamwatch.vlm.hf import TransformersBackend, pick_device
from streamwatch.vlm.local import ImageEvidence
from streamwatch.vlm.registry import Capability, ModelSpec, Registry, RegistrySpec
from streamwatch.vlm.router import ModelRouter
from streamwatch.vlm.service import VLMService


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("vlm")
    return {arch: tiny_vlm.build(root / arch, arch) for arch in ("qwen3_vl", "qwen2_5_vl")}


def hf_spec(path: Path, **kw: object) -> ModelSpec:
    return ModelSpec.model_validate({"id": "tiny", "backend": "hf", "path": str(path), "capabilities": ["compliance", "reply", "qa"], **kw})


def images(n: int) -> list[bytes]:
    rng = np.random.default_rng(7)
    return [jpeg(rng.integers(0, 255, (180 + 20 * i, 320, 3), dtype=np.uint8)) for i in range(n)]


@pytest.mark.parametrize("arch", ["qwen3_vl", "qwen2_5_vl"])
def test_batched_generation_on_cpu(tiny_models: dict[str, Path], arch: str) -> None:
    backend = TransformersBackend(hf_spec(tiny_models[arch], max_batch=4))
    reqs = [VLMRequest(f"what is in image {i}?", (img,), "be brief", max_tokens=8, temperature=0.0) for i, img in enumerate(images(6))]

    async def go() -> list[VLMResult]:
        await backend.load()
        out = await asyncio.gather(*(backend.generate(r) for r in reqs), return_exceptions=True)
        await backend.close()
        return out  # type: ignore[return-value]

    results = asyncio.run(go())
    # random weights may emit only whitespace: that is an "empty answer" (VLMOutputError), never a crash
    assert all(isinstance(r, VLMResult | VLMOutputError) for r in results), results
    assert max(backend.batches) > 1 and sum(backend.batches) == 6  # requests that came together were batched
    direct = TransformersBackend(hf_spec(tiny_models[arch], max_batch=6))
    batched = direct.generate_batch(reqs)
    assert direct.device == "cpu" or direct.device == "cuda"
    assert all(r.model == "tiny" and 0 < r.completion_tokens <= 8 and r.image_tokens > 0 for r in batched)
    assert len({r.image_tokens for r in batched}) > 1  # each image got its own token count (different sizes)
    # batched and alone give the same greedy answer (left padding done right)
    alone = direct.generate_batch([reqs[1]])[0]
    assert (alone.text, alone.completion_tokens, alone.image_tokens) == (
        batched[1].text,
        batched[1].completion_tokens,
        batched[1].image_tokens,
    )
    for r, got in zip(batched, results, strict=True):
        # a random model runs out of its 8 tokens: cut off (VLMTruncated, never an answer), same text
        assert isinstance(got, VLMTruncated) == r.truncated
        assert (got.text if isinstance(got, VLMResult) else got.partial if isinstance(got, VLMTruncated) else "") == r.text


def test_device_selection_without_a_gpu() -> None:
    import torch

    if torch.cuda.is_available():
        assert pick_device("auto")[0] == "cuda"
    else:
        assert pick_device("auto") == ("cpu", torch.float32)
        with pytest.raises(VLMUnavailable, match="no CUDA device"):
            pick_device("cuda")


def test_thinking_output_is_stripped(tmp_path: Path) -> None:
    path = tiny_vlm.build(tmp_path / "thinking", "qwen3_vl", thinking=True)
    backend = TransformersBackend(hf_spec(path, mode="thinking"))
    backend.generate_batch([VLMRequest("warm")])
    end = backend._loaded.tokenizer.convert_tokens_to_ids("</think>")  # type: ignore[union-attr]
    # make the random model close its think block every other token: reasoning, </think>, answer
    cfg = path / "generation_config.json"
    gen = json.loads(cfg.read_text())
    gen["sequence_bias"] = [[[end], 100.0], [[end, end], -300.0]]
    cfg.write_text(json.dumps(gen))
    backend = TransformersBackend(hf_spec(path, mode="thinking"))
    img = images(1)[0]
    r = backend.generate_batch([VLMRequest("q", (img,), max_tokens=4, temperature=0.0)])[0]
    # the first </think> closes the reasoning (what follows is the answer); the budget ran out: cut off
    assert r.text and "<think>" not in r.text and not r.text.startswith("</think>") and r.truncated
    r = backend.generate_batch([VLMRequest("q", (img,), max_tokens=5, temperature=0.0)])[0]
    assert r.truncated

    async def go() -> None:
        for budget in (4, 5):  # neither cut-off answer is ever an answer
            with pytest.raises(VLMTruncated, match="cut off"):
                await backend.generate(VLMRequest("q", (img,), max_tokens=budget, temperature=0.0))
        await backend.close()

    asyncio.run(go())


def test_tiny_model_served_over_http_answers_like_in_process(tiny_models: dict[str, Path]) -> None:
    local = TransformersBackend(hf_spec(tiny_models["qwen3_vl"], max_output_tokens=24))

    def printable(req: VLMRequest) -> str:  # random weights emit control characters: sent escaped
        return local.generate_batch([req])[0].text.encode("unicode_escape").decode("ascii") or "…"

    with ChatServer(printable) as srv:
        reg = Registry(
            RegistrySpec.model_validate(
                {
                    "models": [
                        {"id": "tiny-http", "backend": "openai", "endpoint": srv.url, "model_name": "tiny", "capabilities": ["qa"]},
                    ],
                    "roles": {"qa": ["tiny-http", "local"]},
                }
            )
        )
        router = ModelRouter(reg)
        frame = np.random.default_rng(3).integers(0, 255, (360, 640, 3), dtype=np.uint8)

        async def go() -> tuple[str, str]:
            r = await VLMService(router, answer_tokens=12).answer("what is on stage?", frame, ImageEvidence(640, 360, ("星空",)))
            await router.close()
            return r.text, r.model

        text, model = asyncio.run(go())
    assert model == "tiny-http"
    # the server decoded the same JPEG and ran the same greedy generation as the in-process backend
    from chat_server import to_request

    direct = local.generate_batch([to_request(srv.requests[0])])[0].text.encode("unicode_escape").decode("ascii")
    assert text == " ".join(direct.split())


# --- images the processors refuse (issue 12) ---------------------------------------------------------

ODD = [(24, 24), (1, 1), (332, 27), (690, 15420), (640, 360)]


def odd_picture(w: int, h: int) -> np.ndarray:
    return np.random.default_rng(w * 7 + h).integers(0, 255, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize(("arch", "patch"), [("qwen3_vl", 32), ("qwen2_5_vl", 28)])
def test_odd_images_are_fitted_and_the_processor_counts_the_planned_tokens(tiny_models: dict[str, Path], arch: str, patch: int) -> None:
    """Stickers, 1-px images, banners and long screenshots go through the real image processor; the image
    tokens it makes equal the plan's (W/patch)·(H/patch), so the patch in the registry is the model's."""
    from streamwatch.vlm.backend import fitted_jpegs
    from streamwatch.vlm.images import plan

    # the tiny processor resizes outside 64² … 256² px itself: limits that stay inside it
    spec = hf_spec(tiny_models[arch], image_side=224, image_min_side=64, image_patch=patch, image_max_tokens=256, max_batch=1)
    backend = TransformersBackend(spec)
    for w, h in ODD:
        tiles = plan(w, h, spec.image_limits)
        req = VLMRequest("describe", fitted_jpegs(odd_picture(w, h), spec.image_limits), max_tokens=2, temperature=0.0)
        r = backend.generate_batch([req])[0]
        assert len(req.images) == len(tiles)
        assert r.image_tokens == sum(t.tokens(patch) for t in tiles), (w, h, r.image_tokens)


def test_one_image_the_processor_refuses_fails_only_its_request(tiny_models: dict[str, Path]) -> None:
    """A registry entry that fits nothing lets a 1×300 strip through (aspect 300 > 200: the processor
    raises): batched with good requests, only its request fails (VLMInputError); through the router the
    model stays closed and nothing fails over."""
    lax = {"image_min_side": 1, "image_patch": 1, "image_max_aspect": 100000, "image_max_tokens": 10**9}
    spec = hf_spec(tiny_models["qwen3_vl"], max_batch=4, **lax)
    backend = TransformersBackend(spec)
    good = [VLMRequest(f"q{i}", (img,), max_tokens=2, temperature=0.0) for i, img in enumerate(images(3))]
    bad = VLMRequest("q", (jpeg(odd_picture(300, 1)),), max_tokens=2, temperature=0.0)

    async def batched() -> list[object]:
        await backend.load()
        out = await asyncio.gather(*(backend.generate(r) for r in [good[0], bad, good[1], good[2]]), return_exceptions=True)
        await backend.close()
        return out

    results = asyncio.run(batched())
    assert isinstance(results[1], VLMInputError), results[1]
    assert all(isinstance(r, VLMResult | VLMOutputError) and not isinstance(r, VLMInputError) for r in results[::2] + results[3:])

    reg = Registry(RegistrySpec.model_validate({"models": [spec.model_dump(mode="json")], "roles": {"qa": ["tiny", "local"]}}))
    router = ModelRouter(reg, breaker_failures=1)
    states: dict[str, str] = {}

    async def routed() -> tuple[BaseException | None, str]:
        error: BaseException | None = None
        try:
            await router.run(Capability.QA, lambda b: b.generate(bad), local=lambda: _local())
        except VLMInputError as e:
            error = e
        states.update(router.state())  # the refused input counted nothing against the model
        _, model = await router.run(Capability.QA, lambda b: b.generate(good[0]), local=lambda: _local())
        await router.close()
        return error, model

    async def _local() -> VLMResult:
        return VLMResult("template", "local")

    error, model = asyncio.run(routed())
    assert error is not None and "answers a probe" in str(error)
    assert states == {"tiny": "closed"}
    assert model == "tiny" or model == "local"  # random weights run out of tokens: cut off, never an answer
