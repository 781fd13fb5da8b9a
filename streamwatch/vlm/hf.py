"""In-process transformers backend: ``AutoModelForImageTextToText`` from a local folder or hub id.

CUDA with bf16 when there is a GPU (``device = "auto"``), CPU float32 otherwise. Requests that arrive
together are generated as one left-padded batch (up to the model's ``max_batch``) on one worker thread
(torch releases the GIL). Thinking-mode output has its reasoning stripped. torch and transformers are
the optional ``hf`` extra and are imported only when a model of this kind loads.

Images are fitted to the model's image limits before they are queued (:mod:`streamwatch.vlm.images`).
A batch that fails is generated again one request at a time, so one image the processor cannot take
fails only its own request (:class:`~streamwatch.errors.VLMInputError` when the others succeed;
:class:`~streamwatch.errors.VLMServerError`, for the router to judge, when none does).

The processor is ``AutoProcessor`` when it loads; without torchvision (which Qwen's video processors
require) the tokenizer and image processor are used directly, with each ``<|image_pad|>`` expanded to
the image's token count, as the Qwen processors do.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from streamwatch.errors import VLMError, VLMInputError, VLMOutputError, VLMServerError, VLMTimeout, VLMTruncated, VLMUnavailable
from streamwatch.vlm.backend import VLMRequest, VLMResult, fit_request, fitted_jpegs, images_fit
from streamwatch.vlm.output import split_output
from streamwatch.vlm.registry import ModelSpec

logger = logging.getLogger(__name__)

IMAGE_PAD = "<|image_pad|>"


@dataclass
class _Loaded:
    model: Any
    tokenizer: Any
    image_processor: Any
    device: str
    merge: int
    image_token_id: int | None


@dataclass
class _Pending:
    request: VLMRequest
    future: asyncio.Future[VLMResult]


def pick_device(wanted: str) -> tuple[str, Any]:
    """(device, dtype): CUDA + bf16 when asked for or available (``auto``), else CPU + float32."""
    import torch

    if wanted == "cuda" and not torch.cuda.is_available():
        raise VLMUnavailable("device = cuda, but torch sees no CUDA device")
    if wanted in ("cuda", "auto") and torch.cuda.is_available():
        return "cuda", torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return "cpu", torch.float32


class TransformersBackend:
    def __init__(self, spec: ModelSpec) -> None:
        assert spec.path
        self.spec = spec
        self._pool = ThreadPoolExecutor(1, thread_name_prefix=f"vlm-{spec.id}")
        self._loaded: _Loaded | None = None
        self._load_lock = asyncio.Lock()
        self._pending: list[_Pending] = []
        self._worker: asyncio.Task[None] | None = None
        self.batches: list[int] = []  # sizes of the batches generated (tests, benchmarks)

    @property
    def model(self) -> str:
        return self.spec.id

    @property
    def device(self) -> str | None:
        return self._loaded.device if self._loaded else None

    def __repr__(self) -> str:
        return f"TransformersBackend({self.spec.id!r}, {self.spec.path!r})"

    async def load(self) -> None:
        async with self._load_lock:
            if self._loaded is None:
                t0 = time.perf_counter()
                self._loaded = await asyncio.get_running_loop().run_in_executor(self._pool, self._load)
                logger.info("model %s loaded on %s in %.1fs", self.spec.id, self._loaded.device, time.perf_counter() - t0)

    def _load(self) -> _Loaded:
        try:
            import torch  # noqa: F401  (the optional hf extra)
            from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoTokenizer
        except ImportError as e:
            raise VLMUnavailable(f"{self.spec.id}: the in-process backend needs the hf extra (pip install 'streamwatch[hf]'): {e}") from e
        device, dtype = pick_device(self.spec.device)
        try:
            model = AutoModelForImageTextToText.from_pretrained(self.spec.path, dtype=dtype).to(device).eval()
            tokenizer = AutoTokenizer.from_pretrained(self.spec.path, padding_side="left")
            image_processor = AutoImageProcessor.from_pretrained(self.spec.path)
        except (OSError, ValueError, KeyError) as e:
            raise VLMUnavailable(f"{self.spec.id}: cannot load {self.spec.path!r}: {e}") from e
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        token_id = tokenizer.convert_tokens_to_ids(IMAGE_PAD)
        return _Loaded(model, tokenizer, image_processor, device, int(getattr(image_processor, "merge_size", 2)), token_id)

    async def generate(self, request: VLMRequest) -> VLMResult:
        if not images_fit(request, self.spec.image_limits):
            request = await asyncio.get_running_loop().run_in_executor(None, fit_request, request, self.spec.image_limits)
        await self.load()
        future: asyncio.Future[VLMResult] = asyncio.get_running_loop().create_future()
        self._pending.append(_Pending(request, future))
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._drain())
        try:
            async with asyncio.timeout(self.spec.timeout_s):
                result = await asyncio.shield(future)
        except TimeoutError as e:
            raise VLMTimeout(f"{self.spec.id}: no answer within {self.spec.timeout_s:g}s") from e
        if result.truncated:  # never a judgment (streamwatch.vlm.output)
            raise VLMTruncated(f"{self.spec.id}: answer cut off after {result.completion_tokens} tokens", result.text, result)
        return result

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending:
            first = self._pending[0].request
            key = (len(first.images), first.temperature)
            batch = [p for p in self._pending if (len(p.request.images), p.request.temperature) == key][: self.spec.max_batch]
            for p in batch:
                self._pending.remove(p)
            try:
                results = await loop.run_in_executor(self._pool, self.generate_batch, [p.request for p in batch])
            except asyncio.CancelledError:
                for p in batch:
                    p.future.cancel()
                raise
            except Exception as e:  # one bad batch fails its requests, not the worker
                logger.warning("%s: batch of %d failed (%s: %s)", self.spec.id, len(batch), type(e).__name__, e)
                await self._one_by_one(batch, e)
                continue
            for p, r in zip(batch, results, strict=True):
                if p.future.done():
                    continue
                if r.text.strip() or r.truncated:  # a cut-off answer is raised by generate()
                    p.future.set_result(r)
                else:  # e.g. a Thinking model that used every token reasoning
                    p.future.set_exception(VLMOutputError(f"{self.spec.id}: empty answer"))

    async def _one_by_one(self, batch: list[_Pending], error: Exception) -> None:
        """After a failed batch: each request alone, so one bad input fails only its own request."""
        if len(batch) == 1 or (isinstance(error, VLMUnavailable) and not isinstance(error, VLMServerError)):  # e.g. cannot load
            results: list[VLMResult | Exception] = [error] * len(batch)
        else:
            results = []
            for p in batch:
                try:
                    results.extend(await asyncio.get_running_loop().run_in_executor(self._pool, self.generate_batch, [p.request]))
                except asyncio.CancelledError:
                    for q in batch:
                        q.future.cancel()
                    raise
                except Exception as e:
                    results.append(e)
        answered = any(isinstance(r, VLMResult) for r in results)
        for p, r in zip(batch, results, strict=True):
            if p.future.done():
                continue
            if isinstance(r, VLMResult) and (r.text.strip() or r.truncated):
                p.future.set_result(r)
            elif isinstance(r, VLMResult):
                p.future.set_exception(VLMOutputError(f"{self.spec.id}: empty answer"))
            elif isinstance(r, VLMError) and not (answered and isinstance(r, VLMServerError)):
                p.future.set_exception(r)
            elif answered:  # the model answers the others: this input is the fault
                p.future.set_exception(VLMInputError(f"{self.spec.id}: generation failed for this request only: {type(r).__name__}: {r}"))
            else:
                p.future.set_exception(VLMServerError(f"{self.spec.id}: generation failed: {type(r).__name__}: {r}"))

    def generate_batch(self, requests: list[VLMRequest]) -> list[VLMResult]:
        """Blocking: one batch, loading the model first if needed (the worker thread; tools and test servers)."""
        import torch

        if self._loaded is None:
            self._loaded = self._load()
        m = self._loaded
        t0 = time.perf_counter()
        texts: list[str] = []
        images: list[np.ndarray] = []
        for r in requests:
            content: list[dict[str, str]] = [{"type": "image"} for _ in r.images] + [{"type": "text", "text": r.prompt}]
            messages: list[dict[str, Any]] = ([{"role": "system", "content": r.system}] if r.system else []) + [
                {"role": "user", "content": content}
            ]
            texts.append(m.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))
            images.extend(_rgb(b) for b in r.images)
        inputs: dict[str, Any] = {}
        if images:
            # always H×W×3: without this, an image 1 or 3 px high is taken for channels-first
            pix = m.image_processor(images=images, return_tensors="pt", input_data_format="channels_last")
            grids = iter(pix["image_grid_thw"])
            texts = [_expand(t, grids, m.merge) for t in texts]
            inputs.update(pix)
        enc = m.tokenizer(texts, return_tensors="pt", padding=True)
        inputs.update(enc)
        inputs = {k: v.to(m.device) for k, v in inputs.items()}
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(m.model.dtype)
        temperature = requests[0].temperature
        sampling: dict[str, Any] = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
        max_new = min(max(r.max_tokens for r in requests), self.spec.max_output_tokens)
        with torch.inference_mode():
            out = m.model.generate(**inputs, max_new_tokens=max_new, pad_token_id=m.tokenizer.pad_token_id, **sampling)
        prompt_len = enc["input_ids"].shape[1]
        seconds = time.perf_counter() - t0
        self.batches.append(len(requests))
        results = []
        for i, r in enumerate(requests):
            new = out[i, prompt_len:][: r.max_tokens]
            completion = int((new != m.tokenizer.pad_token_id).sum())
            raw = m.tokenizer.decode(new, skip_special_tokens=True)
            thinks = self.spec.mode == "thinking"
            if thinks and "<think>" not in raw:
                raw = "<think>" + raw  # the chat template opened the think block in the prompt
            eos = m.tokenizer.eos_token_id
            cut = completion >= min(r.max_tokens, max_new) and not bool((new == eos).any()) if eos is not None else False
            split = split_output(raw, thinks=thinks, finish_reason="length" if cut else "stop")
            mask = enc["attention_mask"][i]
            n_image = int((enc["input_ids"][i] == m.image_token_id).sum()) if m.image_token_id is not None else 0
            results.append(
                VLMResult(
                    split.text,
                    self.spec.id,
                    split.reasoning,
                    int(mask.sum()),
                    completion,
                    n_image,
                    seconds,
                    finish_reason="length" if cut else "stop",
                    truncated=split.truncated,
                )
            )
        return results

    async def warm(self) -> None:
        """Also the router's health probe: a known-good request (a fitted grey image); an answer cut off by
        its tiny budget still shows the model answers."""
        image = fitted_jpegs(np.full((64, 64, 3), 128, np.uint8), self.spec.image_limits)
        with contextlib.suppress(VLMTruncated):
            await self.generate(VLMRequest("Reply with OK.", image, max_tokens=4, thinking=False))

    async def close(self) -> None:
        for p in self._pending:  # nobody waits on a closed model until its timeout
            if not p.future.done():
                p.future.set_exception(VLMUnavailable(f"{self.spec.id} was unloaded"))
        self._pending.clear()
        if self._worker is not None:
            self._worker.cancel()
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._loaded = None


def _expand(text: str, grids: Any, merge: int) -> str:
    """Each ``<|image_pad|>`` repeated for its image's token count (what the Qwen processors do)."""
    parts = text.split(IMAGE_PAD)
    out = [parts[0]]
    for part in parts[1:]:
        out.append(IMAGE_PAD * int(next(grids).prod() // merge**2))
        out.append(part)
    return "".join(out)


def _rgb(data: bytes) -> np.ndarray:
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise VLMInputError("a request image could not be decoded")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
