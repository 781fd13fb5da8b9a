#!/usr/bin/env python3
"""Vision encoder throughput: ONNX Runtime (fp32, int8) vs the same model in torch eager, same run.

Frames/s and ms per batch for batch 1, 8 and 32 on the vision tower (preprocessed pixels in, unit
embeddings out). Default model: CLIP ViT-B/32's exact shape with random weights built on the spot
(the compute of the real openai/clip-vit-base-patch32; nothing downloaded); ``--source`` takes any
CLIP / Chinese-CLIP / SigLIP folder or hub id; ``--size tiny`` the 2-layer test model.

    python tools/bench/encoder.py [--source DIR] [--size base|tiny] [--device cpu|cuda] [--runs 10]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))

from streamwatch.analysis.encoder import Encoder  # noqa: E402
from streamwatch.analysis.encoder_export import export_encoder, sample_images  # noqa: E402


def timed(fn, runs: int) -> float:  # type: ignore[no-untyped-def]
    fn()  # warm-up
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", help="checkpoint folder or hub id (default: a random-weight model built here)")
    ap.add_argument("--size", default="base", choices=["base", "tiny"])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--batches", default="1,8,32")
    a = ap.parse_args()
    import torch
    from transformers import AutoImageProcessor, AutoModel

    with tempfile.TemporaryDirectory() as tmp:
        source = a.source
        if source is None:
            import tiny_encoder

            source = str(tiny_encoder.build(Path(tmp) / "ckpt", "clip", size=a.size))
        t0 = time.perf_counter()
        manifest = export_encoder(source, Path(tmp) / "enc", exporter="legacy", int8=True, fp16=a.device == "cuda")
        what = a.source or f"random CLIP ({a.size})"
        print(f"model: {what}, {manifest['embedding_dim']}-d, exported + verified in {time.perf_counter() - t0:.1f}s")
        model = AutoModel.from_pretrained(source).eval().to(a.device)
        proc = AutoImageProcessor.from_pretrained(source)
        photos = sample_images(8)
        fp32 = Encoder(Path(tmp) / "enc", device=a.device)
        int8 = Encoder(Path(tmp) / "enc", device="cpu", variant="int8")
        print(f"onnxruntime providers: {fp32.providers[0]}; torch {torch.__version__} on {a.device}, {torch.get_num_threads()} threads")
        cols = ("batch", "torch eager ms", "ORT fp32 ms", "ORT int8 ms", "fp32 frames/s", "vs torch", "int8 vs fp32")
        print(" ".join(f"{c:>{w}}" for c, w in zip(cols, (5, 15, 12, 12, 14, 9, 13), strict=True)))
        for b in (int(x) for x in a.batches.split(",")):
            imgs = (photos * (b // len(photos) + 1))[:b]
            pixels = np.stack([fp32.preprocess(im) for im in imgs])
            pt = torch.from_numpy(pixels).to(a.device)

            def run_torch(pt: torch.Tensor = pt) -> None:
                with torch.inference_mode():
                    out = model.get_image_features(pixel_values=pt)
                    feats = out if isinstance(out, torch.Tensor) else out.pooler_output
                    torch.nn.functional.normalize(feats, dim=-1).cpu()

            t_torch = timed(run_torch, a.runs)
            t_fp32 = timed(lambda: fp32.run_vision(pixels), a.runs)  # noqa: B023  (I/O binding on a GPU)
            t_int8 = timed(lambda: int8.run_vision(pixels), a.runs)  # noqa: B023
            row = f"{b:>5} {t_torch:>15.1f} {t_fp32:>12.1f} {t_int8:>12.1f} {b / t_fp32 * 1000:>14.1f}"
            print(f"{row} {t_torch / t_fp32:>8.2f}x {t_fp32 / t_int8:>12.2f}x")
        del proc
        v = manifest["variants"]["int8"]
        print(f"int8 accuracy: cosine to fp32 min {v['cosine_min']:.4f}, mean {v['cosine_mean']:.4f}")
        print("preprocessing (PIL resize + crop + normalise, per frame): "
              f"{timed(lambda: [fp32.preprocess(im) for im in photos], a.runs) / len(photos):.2f} ms")  # fmt: skip


if __name__ == "__main__":
    main()
