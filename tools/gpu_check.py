#!/usr/bin/env python3
"""Every CUDA path this project has that a GPU machine with torch can exercise offline, with figures.

Run through tools/gpu_check.sh (which checks for CUDA first). Nothing is downloaded: the models are
tiny random-weight checkpoints built on the spot (tools/tiny_vlm.py, tools/tiny_encoder.py).

1. VLM, in-process transformers backend (streamwatch/vlm/hf.py) on a tiny Qwen3-VL: loads on CUDA in
   bf16; generate_batch at batch 1 / 4 / 8 (seconds per batch, frames/s) vs 8 requests one by one;
   the async path batches requests that arrive together; greedy answers alone vs in a batch.
2. Vision encoder: export (streamwatch/analysis/encoder_export.py, verified against torch at export)
   with an fp16 variant, then the exported ONNX run by ONNX Runtime on CUDA (when the device image
   has onnxruntime-gpu; the providers used are recorded) compared with the same checkpoint in torch
   on CUDA: max abs diff and cosine of the unit embeddings; ms per batch for the tiny test model and
   for CLIP ViT-B/32's shape (random weights) at batch 1 / 8 / 32.

Writes OUT/figures.json and OUT/figures.md; exit 0 when every check passed, 1 when one failed, 2
without CUDA.

    python tools/gpu_check.py [--out DIR]      # default: $OUT, else artifacts/gpu-check
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(ROOT))


DEVICE = "cuda"  # --device cpu runs the same code paths on a CPU machine (to try this script, no figures)


def sync() -> None:
    import torch

    if DEVICE == "cuda":
        torch.cuda.synchronize()


def median_s(fn: Any, runs: int = 3) -> float:
    fn()  # warm-up
    sync()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def photos(n: int, side: int = 512) -> list[bytes]:
    from streamwatch.analysis.encoder_export import sample_images
    from streamwatch.vlm.backend import jpeg

    imgs = sample_images(8)
    return [jpeg(np.ascontiguousarray(imgs[i % len(imgs)]), side) for i in range(n)]


def check_vlm(tmp: Path, fig: dict[str, Any], fails: list[str]) -> None:
    import tiny_vlm
    import torch

    from streamwatch.vlm.backend import VLMRequest
    from streamwatch.vlm.hf import TransformersBackend
    from streamwatch.vlm.registry import ModelSpec

    path = tiny_vlm.build(tmp / "qwen3_vl", "qwen3_vl")
    spec = ModelSpec.model_validate(
        {"id": "tiny-qwen3-vl", "backend": "hf", "path": str(path), "capabilities": ["compliance", "reply", "qa"],
         "device": DEVICE, "max_batch": 8, "max_output_tokens": 64, "timeout_s": 300}
    )  # fmt: skip
    be = TransformersBackend(spec)
    imgs = photos(8)
    system = "You are a careful moderator."
    reqs = [VLMRequest(f"What is in picture {i}? Answer briefly.", (img,), system=system, max_tokens=32, temperature=0.0)
            for i, img in enumerate(imgs)]  # fmt: skip
    t0 = time.perf_counter()
    be.generate_batch(reqs[:1])
    loaded = be._loaded
    assert loaded is not None
    dtype = str(loaded.model.dtype)
    where = next(loaded.model.parameters()).device.type
    v: dict[str, Any] = {"load_and_first_s": round(time.perf_counter() - t0, 2), "device": be.device, "dtype": dtype, "weights_on": where}
    if be.device != DEVICE or where != DEVICE:
        fails.append(f"vlm: the model runs on {be.device}/{where}, not {DEVICE}")
    if DEVICE == "cuda" and dtype != "torch.bfloat16" and torch.cuda.is_bf16_supported():
        fails.append(f"vlm: dtype {dtype}, expected torch.bfloat16")
    per_batch = {}
    for bs in (1, 4, 8):
        s = median_s(lambda bs=bs: be.generate_batch(reqs[:bs]))
        per_batch[bs] = {"s_per_batch": round(s, 4), "frames_per_s": round(bs / s, 1)}
    v["generate_batch"] = per_batch
    seq = median_s(lambda: [be.generate_batch([r]) for r in reqs])
    v["eight_one_by_one_s"] = round(seq, 4)
    v["batch8_vs_one_by_one"] = round(seq / per_batch[8]["s_per_batch"], 2)
    alone = [be.generate_batch([r])[0].text for r in reqs]
    together = [r.text for r in be.generate_batch(reqs)]
    v["greedy_same_alone_and_batched"] = f"{sum(a == b for a, b in zip(alone, together, strict=True))}/8"

    async def arrive_together() -> int:
        be.batches.clear()
        await asyncio.gather(*(be.generate(r) for r in reqs), return_exceptions=True)
        return max(be.batches)

    v["async_largest_batch"] = asyncio.run(arrive_together())
    if v["async_largest_batch"] < 2:
        fails.append("vlm: requests that arrived together were not batched")
    if DEVICE == "cuda":
        v["max_memory_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    fig["vlm"] = v


def check_encoder(tmp: Path, fig: dict[str, Any], fails: list[str], size: str = "tiny") -> None:
    """Export (verified against torch at export), then the ONNX files vs the checkpoint in torch on the
    device; ``size="base"``: CLIP ViT-B/32's shape with random weights, for timings at batch 1/8/32."""
    import onnxruntime as ort
    import tiny_encoder
    import torch
    from transformers import AutoModel

    from streamwatch.analysis.encoder import Encoder
    from streamwatch.analysis.encoder_export import export_encoder, sample_images

    torch.backends.cuda.matmul.allow_tf32 = False  # compare fp32 with fp32 (TF32 would cost ~1e-3)
    torch.backends.cudnn.allow_tf32 = False
    ckpt = tiny_encoder.build(tmp / f"ckpt-{size}", "clip", size=size)
    t0 = time.perf_counter()
    manifest = export_encoder(str(ckpt), tmp / f"enc-{size}", name=f"{size}-clip", fp16=True)
    e: dict[str, Any] = {"export_s": round(time.perf_counter() - t0, 2), "exporter": manifest.get("exporter")}
    e["export_verification"] = {k: manifest["verification"][k] for k in ("vision_max_abs_diff", "text_max_abs_diff", "batch_sizes")}
    e["ort_available_providers"] = ort.get_available_providers()
    enc = Encoder(tmp / f"enc-{size}", device=DEVICE)
    e["ort_providers_used"] = list(enc.providers)
    if DEVICE == "cuda" and enc.providers[0] != "CUDAExecutionProvider":
        e["note"] = "onnxruntime-gpu is not in this image (or found no CUDA): ONNX ran on the CPU, torch on CUDA"
    model = AutoModel.from_pretrained(str(ckpt), dtype=torch.float32).eval().to(DEVICE)
    e["torch_device"] = DEVICE
    imgs = (sample_images(8) * 4)[:32]

    def torch_embeds(p: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            out = model.get_image_features(pixel_values=torch.from_numpy(p).to(DEVICE))
            feats = out if isinstance(out, torch.Tensor) else out.pooler_output
            return np.asarray(torch.nn.functional.normalize(feats, dim=-1).float().cpu().numpy())

    ref = torch_embeds(np.stack([enc.preprocess(im) for im in imgs[:16]]))
    got = enc.embed_images(imgs[:16])
    diff = float(np.abs(ref - got).max())
    e["onnx_fp32_vs_torch"] = {"max_abs_diff": diff, "cosine_min": round(float((ref * got).sum(axis=1).min()), 6)}
    if diff > 1e-3:
        fails.append(f"encoder {size}: ONNX ({enc.providers[0]}) vs torch on {DEVICE} differ by {diff:.1e}")
    fp16 = None
    try:
        fp16 = Encoder(tmp / f"enc-{size}", device=DEVICE, variant="fp16")
        got16 = fp16.embed_images(imgs[:16])
        e["onnx_fp16_vs_torch"] = {"cosine_min": round(float((ref * got16).sum(axis=1).min()), 6), "providers": list(fp16.providers)}
    except Exception as ex:  # the fp16 variant on a CPU provider may be unsupported; record, do not hide
        e["fp16_error"] = f"{type(ex).__name__}: {ex}"
        if enc.providers[0] == "CUDAExecutionProvider":
            fails.append(f"encoder {size}: fp16 variant failed on CUDA: {ex}")
    timings: dict[int, dict[str, float]] = {}
    for bs in (1, 8, 32) if size == "base" else (16,):
        pixels = np.stack([enc.preprocess(im) for im in imgs[:bs]])
        row = {
            "torch_fp32_ms": median_s(lambda p=pixels: torch_embeds(p)) * 1000,
            "onnx_fp32_ms": median_s(lambda p=pixels: enc.run_vision(p)) * 1000,
        }
        if fp16 is not None:
            row["onnx_fp16_ms"] = median_s(lambda p=pixels, f=fp16: f.run_vision(p)) * 1000
        timings[bs] = {k: round(v, 2) for k, v in row.items()}
    e["ms_per_batch"] = timings
    fig[f"encoder_{size}"] = e


def environment() -> dict[str, Any]:
    import torch
    import transformers

    gpu = torch.cuda.get_device_properties(0) if DEVICE == "cuda" else None
    try:
        import onnxruntime as ort

        ort_version = ort.__version__
    except ImportError:
        ort_version = None
    return {
        "gpu": gpu.name if gpu else f"none (--device {DEVICE})",
        "gpu_memory_gb": round(gpu.total_memory / 2**30, 1) if gpu else None,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "bf16": torch.cuda.is_bf16_supported(),
        "transformers": transformers.__version__,
        "onnxruntime": ort_version,
        "python": sys.version.split()[0],
        "when": time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime()),
    }


def markdown(fig: dict[str, Any], fails: list[str]) -> str:
    lines = ["# streamwatch GPU check", "", f"Result: {'PASS' if not fails else 'FAIL'}", ""]
    lines += [f"- FAILED: {f}" for f in fails]
    for section, values in fig.items():
        lines += ["", f"## {section}", "", "```json", json.dumps(values, indent=1, ensure_ascii=False), "```"]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or ROOT / "artifacts" / "gpu-check"))
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="cpu: try the script's code paths without a GPU")
    a = ap.parse_args()
    global DEVICE
    DEVICE = a.device
    import torch

    if DEVICE == "cuda" and not torch.cuda.is_available():
        print(f"gpu_check: torch {torch.__version__} sees no CUDA device: this check needs an NVIDIA GPU", file=sys.stderr)
        return 2
    a.out.mkdir(parents=True, exist_ok=True)
    fig: dict[str, Any] = {"environment": environment()}
    fails: list[str] = []
    with tempfile.TemporaryDirectory(prefix="streamwatch-gpu-") as tmp:
        checks = (
            ("vlm", check_vlm),
            ("encoder_tiny", check_encoder),
            ("encoder_base", lambda t, f, x: check_encoder(t, f, x, size="base")),
        )
        for name, check in checks:
            t0 = time.perf_counter()
            try:
                check(Path(tmp), fig, fails)
            except Exception as e:
                fails.append(f"{name}: {type(e).__name__}: {e}")
                fig[f"{name}_traceback"] = traceback.format_exc().splitlines()[-12:]
            print(f"gpu_check: {name} done in {time.perf_counter() - t0:.1f}s", flush=True)
    fig["failures"] = fails
    (a.out / "figures.json").write_text(json.dumps(fig, indent=1, ensure_ascii=False) + "\n")
    (a.out / "figures.md").write_text(markdown(fig, fails))
    print(markdown(fig, fails))
    print(f"gpu_check: figures in {a.out / 'figures.md'} and figures.json")
    return 1 if fails else 0


if __name__ == "__main__":
    raise SystemExit(main())
