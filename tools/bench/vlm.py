#!/usr/bin/env python3
"""Compliance prompt cost: all questions in one call vs one call per question, same model, same frames.

For each frame (real photos from scikit-image at 512 px) the four compliance questions (exposure,
setting, brands, on-screen text) are asked (a) in one call answered as one JSON object (streamwatch)
and (b) one question per call, sequentially (baseline). Prints p50/p95 seconds per frame, frames/s,
the ratio (target: ≥ 2.5× fewer seconds per frame), and image tokens at 512 px.

    python tools/bench/vlm.py --url http://127.0.0.1:8000/v1 --model Qwen/Qwen3-VL-8B-Instruct
    python tools/bench/vlm.py --path /models/Qwen3-VL-4B-Instruct       # in-process transformers
    python tools/bench/vlm.py                                          # a tiny random-weight Qwen3-VL (machinery only)

``--router``: the VLM tier against a real server through streamwatch's router and client (compliance,
reply, Q&A round-robin): failures by kind, end-to-end p50/p95 vs ``timeout_s``, retries that changed
the request (:mod:`vlm_router`). ``--start hf|llama`` serves a tiny random-weight checkpoint itself
(``transformers serve`` via tools/hf_serve.py, or llama-server built by ``make llama-server``):

    python tools/bench/vlm.py --router --start hf --requests 30 --max-tokens 48
    python tools/bench/vlm.py --router --url http://127.0.0.1:8000/v1 --model Qwen/Qwen3-VL-8B-Instruct --server vllm

Answer budgets are those of real answers: ``--tokens-all`` (a compact JSON object, default 64) and
``--tokens-one`` (one short answer, default 16). A random-weight model never stops early, so both
paths spend their whole budget: the fair worst case for the one-call prompt.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))

from streamwatch.errors import VLMTruncated  # noqa: E402
from streamwatch.vlm.backend import VLMBackend, VLMRequest, VLMResult, jpeg  # noqa: E402
from streamwatch.vlm.local import ImageEvidence  # noqa: E402
from streamwatch.vlm.prompts import DEFAULT_QUESTIONS, compliance_request  # noqa: E402
from streamwatch.vlm.registry import ModelSpec  # noqa: E402

PHOTOS = ["astronaut", "coffee", "chelsea", "rocket", "camera", "cat", "horse", "coins"]


def frames(n: int, side: int) -> list[bytes]:
    import skimage.data
    from skimage.util import img_as_ubyte

    out = []
    for i in range(n):
        img = img_as_ubyte(getattr(skimage.data, PHOTOS[i % len(PHOTOS)])())
        if img.ndim == 2:
            img = np.stack([img] * 3, axis=-1)
        out.append(jpeg(np.ascontiguousarray(img[..., :3]), side))
    return out


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(xs, q))


async def run(backend: VLMBackend, images: list[bytes], tokens_all: int, tokens_one: int) -> tuple[list[float], list[float], int]:
    questions = DEFAULT_QUESTIONS[:4]
    ev = ImageEvidence(512, 512)
    await backend.warm()
    one_call, per_question = [], []
    image_tokens = 0
    for img in images:
        t0 = time.perf_counter()
        r = await _answer(backend, _budget(compliance_request(questions, img, ev, tokens_all), tokens_all))
        one_call.append(time.perf_counter() - t0)
        image_tokens = image_tokens or r.image_tokens
        t0 = time.perf_counter()
        for q in questions:
            await _answer(backend, _budget(compliance_request((q,), img, ev, tokens_one), tokens_one))
        per_question.append(time.perf_counter() - t0)
    return one_call, per_question, image_tokens


async def _answer(backend: VLMBackend, req: VLMRequest) -> VLMResult:
    """The backend's result; one cut off by the benchmark's small budget counts too (timing, tokens)."""
    try:
        return await backend.generate(req)
    except VLMTruncated as e:
        if isinstance(e.result, VLMResult):
            return e.result
        raise


def _budget(req: VLMRequest, tokens: int) -> VLMRequest:
    return VLMRequest(req.prompt, req.images, req.system, tokens, req.schema, 0.0)


async def prompt_tokens_of_image(backend: VLMBackend, img: bytes) -> int:
    """OpenAI-compatible servers: prompt tokens with the image minus without it."""
    with_img = await _answer(backend, VLMRequest("Describe.", (img,), max_tokens=1))
    without = await _answer(backend, VLMRequest("Describe.", (), max_tokens=1))
    return with_img.prompt_tokens - without.prompt_tokens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", help="OpenAI-compatible base URL (…/v1)")
    ap.add_argument("--model", default="default", help="the server's model name (with --url)")
    ap.add_argument("--api-key-env", help="environment variable with the API key (with --url)")
    ap.add_argument("--path", type=Path, help="local model folder for the in-process backend")
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--side", type=int, default=512)
    ap.add_argument("--tokens-all", type=int, default=64)
    ap.add_argument("--tokens-one", type=int, default=16)
    ap.add_argument("--router", action="store_true", help="failures, latency and retries through the router (see above)")
    ap.add_argument("--start", choices=["hf", "llama"], help="--router: start a real server with a tiny checkpoint")
    ap.add_argument("--requests", type=int, default=30, help="--router: requests (compliance, reply, Q&A in turn)")
    ap.add_argument("--timeout-s", type=float, default=30.0, help="--router: the model's timeout_s")
    ap.add_argument("--max-tokens", type=int, default=256, help="--router: the model's max_output_tokens")
    ap.add_argument("--server", help="--router: the registry's server family (vllm, sglang, llamacpp, transformers, …)")
    a = ap.parse_args()
    if a.router:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import vlm_router

        with tempfile.TemporaryDirectory() as tmp:
            if a.start:
                with vlm_router.started(a.start, Path(tmp)) as (url, name):
                    server = a.server or {"hf": "transformers", "llama": "llamacpp"}[a.start]
                    vlm_router.run(url, name, a.requests, a.timeout_s, a.max_tokens, server, a.api_key_env)
            elif a.url:
                vlm_router.run(a.url, a.model, a.requests, a.timeout_s, a.max_tokens, a.server, a.api_key_env)
            else:
                ap.error("--router needs --url or --start")
        return
    with tempfile.TemporaryDirectory() as tmp:
        backend: VLMBackend
        if a.url:
            from streamwatch.vlm.openai_compat import OpenAIBackend

            spec = ModelSpec(id="bench", backend="openai", endpoint=a.url, model_name=a.model, api_key_env=a.api_key_env,
                             capabilities=["compliance"], image_side=a.side, timeout_s=120)  # fmt: skip
            backend = OpenAIBackend(spec)
            what = f"{a.model} at {a.url}"
        else:
            from streamwatch.vlm.hf import TransformersBackend

            path = a.path
            if path is None:
                import tiny_vlm

                path = tiny_vlm.build(Path(tmp) / "tiny")
            spec = ModelSpec(id="bench", backend="hf", path=str(path), capabilities=["compliance"], max_batch=1, timeout_s=600)
            backend = TransformersBackend(spec)
            what = f"in-process {'tiny random Qwen3-VL' if a.path is None else a.path}"
        images = frames(a.frames, a.side)

        async def go() -> tuple[list[float], list[float], int]:
            out = await run(backend, images, a.tokens_all, a.tokens_one)
            tokens = out[2] or (await prompt_tokens_of_image(backend, images[0]) if a.url else 0)
            device = getattr(backend, "device", None)
            await backend.close()
            print(f"model: {what}" + (f" on {device}" if device else ""))
            return out[0], out[1], tokens

        one, each, tokens = asyncio.run(go())
    print(f"{len(images)} frames at {a.side} px, 4 questions; budgets: {a.tokens_all} tokens (one call), {a.tokens_one} per question")
    print(f"{'path':<40} {'p50 s/frame':>12} {'p95 s/frame':>12} {'frames/s':>9}")
    for name, xs in (("baseline: one call per question (×4)", each), ("streamwatch: all questions in one call", one)):
        print(f"{name:<40} {pct(xs, 50):>12.3f} {pct(xs, 95):>12.3f} {len(xs) / sum(xs):>9.2f}")
    ratio = statistics.mean(each) / statistics.mean(one)
    print(f"seconds per frame: {ratio:.2f}x fewer (target >= 2.5x: {'MET' if ratio >= 2.5 else 'NOT MET'})")
    print(f"image tokens at {a.side} px: {tokens or 'unknown (the server reports no usage)'}")


if __name__ == "__main__":
    main()
