"""Export a CLIP, Chinese-CLIP or SigLIP checkpoint to ONNX for the encoder runtime (needs the hf extra).

Writes ``vision.onnx`` (pixel_values → L2-normalised image_embeds, dynamic batch), ``text.onnx``
(input_ids [+ attention_mask] → L2-normalised text_embeds), ``tokenizer.json`` and ``manifest.json``
— with ``torch.onnx.export`` (dynamo or legacy) or optimum-onnx's exporter —
(everything the runtime needs so it never imports torch: preprocessing, text padding, embedding size,
logit scale/bias, opset, exporter, SHA-256 of each file, and the verification figures). Every export
checks ONNX Runtime against torch on real photos and at batch sizes 1 and 16, and fails loudly when
they disagree. Optional variants: ``vision.int8.onnx`` (dynamic int8, CPU: u8 weights per channel,
no u8s8 saturation on AVX2-only CPUs) and ``vision.fp16.onnx`` (GPU), each with its measured cosine to the fp32
embeddings and the cosine it must keep; ``probe.npz`` keeps the verification photos (shrunk) so the
runtime measures a variant again on the CPU that runs it (``variant_check``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from streamwatch.analysis.variant_check import DEFAULT_REQUIRED, PROBE_FILE, cpu_signature
from streamwatch.errors import ModelLoadError

logger = logging.getLogger(__name__)

FORMAT = "streamwatch.encoder/1"
MAX_ABS_DIFF = 1e-4
ARCHS = ("clip", "chinese_clip", "siglip")


class ExportError(ModelLoadError):
    """The export failed or its ONNX output does not match torch."""


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sample_images(n: int = 6) -> list[np.ndarray]:
    """Real photos (scikit-image) of different sizes and aspect ratios, RGB uint8."""
    import skimage.data
    from skimage.util import img_as_ubyte

    names = ["astronaut", "coffee", "chelsea", "rocket", "camera", "horse", "cat", "coins"]
    out = []
    for name in names[:n]:
        img = img_as_ubyte(getattr(skimage.data, name)())  # type: ignore[no-untyped-call]
        if img.ndim == 2:
            img = np.stack([img] * 3, axis=-1)
        out.append(np.ascontiguousarray(img[..., :3]))
    return out


def image_spec(proc: Any) -> dict[str, Any]:
    """The transformers image processor's settings, as the runtime's preprocessing reproduces them."""
    size = dict(proc.size) if proc.do_resize else None
    crop = dict(proc.crop_size) if getattr(proc, "do_center_crop", False) and getattr(proc, "crop_size", None) else None
    resample = int(getattr(proc.resample, "value", proc.resample))
    names = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
    return {
        "resize": size,  # {"shortest_edge": N} or {"height": H, "width": W}
        "resample": names.get(resample, "bicubic"),
        "center_crop": crop,
        "rescale": float(proc.rescale_factor) if proc.do_rescale else 1.0,
        "mean": [float(x) for x in proc.image_mean] if proc.do_normalize else [0.0, 0.0, 0.0],
        "std": [float(x) for x in proc.image_std] if proc.do_normalize else [1.0, 1.0, 1.0],
    }


def export_encoder(
    source: str,
    out: Path,
    *,
    name: str | None = None,
    exporter: str = "dynamo",
    opset: int = 18,
    int8: bool = False,
    fp16: bool = False,
) -> dict[str, Any]:
    """Export ``source`` (hub id or folder) into ``out``; returns the manifest. Raises :class:`ExportError`."""
    try:
        import torch
        import transformers
        from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoTokenizer
    except ImportError as e:
        raise ExportError(f"exporting needs torch and transformers (pip install 'streamwatch[hf]'): {e}") from e
    t0 = time.perf_counter()
    try:
        config = AutoConfig.from_pretrained(source)
        arch = config.model_type
        if arch not in ARCHS:
            raise ExportError(f"{source}: model type {arch!r} is not a CLIP, Chinese-CLIP or SigLIP model")
        model = AutoModel.from_pretrained(source, dtype=torch.float32).eval()
        tokenizer = AutoTokenizer.from_pretrained(source)
        processor = AutoImageProcessor.from_pretrained(source)
    except (OSError, ValueError, KeyError) as e:
        raise ExportError(f"cannot load {source!r}: {e}") from e
    if not getattr(tokenizer, "is_fast", False):
        raise ExportError(f"{source}: the runtime needs a fast tokenizer (tokenizer.json); this one is {type(tokenizer).__name__}")
    out.mkdir(parents=True, exist_ok=True)
    wrappers = _wrappers(torch, model)
    spec = image_spec(processor)
    siglip = arch == "siglip"
    max_len = int(getattr(model.config.text_config, "max_position_embeddings", 77))
    max_len = min(max_len, int(getattr(tokenizer, "model_max_length", max_len) or max_len))
    text_inputs = ["input_ids"] if siglip else ["input_ids", "attention_mask"]

    images = sample_images()
    pixels = processor(images=images, return_tensors="pt")["pixel_values"]
    prompts = ["a photo of a cat", "a concert stage", "一只猫在舞台上", "a brand logo"]
    # text is always padded to max_length: one static sequence shape exports cleanly with both exporters
    # (dynamo specialises CLIP's position-id slice otherwise) and costs little at query time
    enc = tokenizer(prompts, padding="max_length", max_length=max_len, truncation=True, return_tensors="pt")
    text_args = tuple(enc[k] for k in text_inputs)

    vision_path, text_path = out / "vision.onnx", out / "text.onnx"
    if exporter == "optimum":
        _export_optimum(source, out, text_inputs, opset)
    else:
        _export(torch, wrappers[0], (pixels[:2],), vision_path, ["pixel_values"], ["image_embeds"], {0: "batch"}, exporter, opset)
        _export(torch, wrappers[1], tuple(t[:2] for t in text_args), text_path, text_inputs, ["text_embeds"], {0: "batch"}, exporter, opset)

    with torch.inference_mode():
        ref_img = wrappers[0](pixels).numpy()
        ref_txt = wrappers[1](*text_args).numpy()
    got_img = _run(vision_path, {"pixel_values": pixels.numpy()})
    got_txt = _run(text_path, {k: enc[k].numpy() for k in text_inputs})
    check: dict[str, Any] = {
        "images": len(images),
        "vision_max_abs_diff": float(np.abs(ref_img - got_img).max()),
        "vision_min_cosine": float((ref_img * got_img).sum(1).min()),
        "text_max_abs_diff": float(np.abs(ref_txt - got_txt).max()),
        "text_min_cosine": float((ref_txt * got_txt).sum(1).min()),
    }
    # dynamic batch: 1 and 16 give the same embeddings as the batch above
    big = np.concatenate([pixels.numpy()] * 3)[:16]
    one = _run(vision_path, {"pixel_values": pixels.numpy()[:1]})
    sixteen = _run(vision_path, {"pixel_values": big})
    check["batch_sizes"] = [1, len(images), 16]
    check["batch_max_abs_diff"] = float(max(np.abs(one - got_img[:1]).max(), np.abs(sixteen[: len(images)] - got_img).max()))
    worst = max(check["vision_max_abs_diff"], check["text_max_abs_diff"], check["batch_max_abs_diff"])
    if worst > MAX_ABS_DIFF:
        raise ExportError(f"ONNX output does not match torch: max abs diff {worst:.2e} > {MAX_ABS_DIFF:g} ({json.dumps(check)})")

    variants: dict[str, Any] = {}
    write_probes(out / PROBE_FILE, images)
    if int8:
        variants["int8"] = _int8(vision_path, out / "vision.int8.onnx", pixels.numpy(), got_img)
    if fp16:
        variants["fp16"] = _fp16(vision_path, out / "vision.fp16.onnx", pixels.numpy(), got_img)
    tokenizer.backend_tokenizer.save(str(out / "tokenizer.json"))
    scale = float(model.logit_scale.detach().exp()) if hasattr(model, "logit_scale") else 100.0
    bias = float(model.logit_bias.detach()) if hasattr(model, "logit_bias") else 0.0
    files = ["vision.onnx", "text.onnx", "tokenizer.json", PROBE_FILE, *(v["file"] for v in variants.values())]
    manifest = {
        "format": FORMAT,
        "name": name or out.name,
        "source": str(source),
        "architecture": arch,
        "embedding_dim": int(got_img.shape[1]),
        "image": {**spec, "input": "pixel_values", "output": "image_embeds", "channels": "RGB"},
        "text": {
            "inputs": text_inputs,
            "output": "text_embeds",
            "max_length": max_len,
            "padding": "max_length",
            "pad_id": int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0),
        },
        "scoring": "sigmoid" if siglip else "softmax",
        "logit_scale": scale,
        "logit_bias": bias,
        "opset": opset,
        "exporter": _exporter_name(exporter),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "files": {f: sha256(out / f) for f in files},
        "verification": check,
        "variants": variants,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, ensure_ascii=False, indent=1), encoding="utf-8")
    logger.info("exported %s to %s: %s", source, out, json.dumps(check))
    return manifest


def _wrappers(torch: Any, model: Any) -> tuple[Any, Any]:
    nn = torch.nn

    def features(out: Any) -> Any:
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    class Vision(nn.Module):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, pixel_values: Any) -> Any:
            return nn.functional.normalize(features(self.model.get_image_features(pixel_values=pixel_values)), dim=-1)

    class Text(nn.Module):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any = None) -> Any:
            kw = {"attention_mask": attention_mask} if attention_mask is not None else {}
            return nn.functional.normalize(features(self.model.get_text_features(input_ids=input_ids, **kw)), dim=-1)

    return Vision().eval(), Text().eval()


def _export(
    torch: Any,
    module: Any,
    args: tuple[Any, ...],
    path: Path,
    inputs: list[str],
    outputs: list[str],
    dyn: dict[int, str],
    exporter: str,
    opset: int,
) -> None:
    try:
        if exporter == "dynamo":
            dims = {i: torch.export.Dim(n if n != "batch" else "batch", min=1, max=4096) for i, n in dyn.items()}
            shapes = {name: dims for name in inputs}
            torch.onnx.export(module, args, str(path), input_names=inputs, output_names=outputs, dynamic_shapes=shapes,
                              dynamo=True, external_data=False, opset_version=opset)  # fmt: skip
        elif exporter == "legacy":
            axes = {name: dict(dyn) for name in inputs}
            torch.onnx.export(module, args, str(path), input_names=inputs, output_names=outputs, dynamic_axes=axes,
                              dynamo=False, opset_version=opset)  # fmt: skip
        else:
            raise ExportError(f"unknown exporter {exporter!r} (dynamo, legacy or optimum)")
    except ExportError:
        raise
    except Exception as e:  # the exporters raise many kinds; the message is what matters
        raise ExportError(f"torch.onnx.export failed for {path.name}: {type(e).__name__}: {e}") from e


def _exporter_name(exporter: str) -> str:
    if exporter == "optimum":
        import importlib.metadata as md

        return f"optimum-onnx {md.version('optimum-onnx')} (zero-shot-image-classification, split)"
    return f"torch.onnx.export(dynamo={exporter == 'dynamo'})"


def _export_optimum(source: str, out: Path, text_inputs: list[str], opset: int) -> None:
    """optimum's exporter on the whole model, then the vision and text halves cut out of its graph.

    optimum-onnx needs transformers < 4.58 (ml-stack notes): it lives in its own environment.
    """
    import tempfile

    try:
        import onnx
        from optimum.exporters.onnx import main_export
    except ImportError as e:
        raise ExportError(f"--exporter optimum needs optimum-onnx (which needs transformers < 4.58): {e}") from e
    with tempfile.TemporaryDirectory() as tmp:
        try:
            main_export(source, output=tmp, task="zero-shot-image-classification", opset=opset, no_post_process=True, do_validation=False)
        except Exception as e:  # optimum raises many kinds
            raise ExportError(f"optimum export failed: {type(e).__name__}: {e}") from e
        whole = str(Path(tmp) / "model.onnx")
        onnx.utils.extract_model(whole, str(out / "vision.onnx"), ["pixel_values"], ["image_embeds"])
        onnx.utils.extract_model(whole, str(out / "text.onnx"), text_inputs, ["text_embeds"])


def _run(path: Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, feeds)[0])


def write_probes(path: Path, images: list[np.ndarray], side: int = 256) -> None:
    """The verification photos, shrunk to ``side`` px on the long side, for the runtime's check of a variant on its own CPU."""
    import cv2

    small = {}
    for i, img in enumerate(images):
        f = side / max(img.shape[:2])
        size = (max(1, round(img.shape[1] * f)), max(1, round(img.shape[0] * f)))
        small[f"p{i:02d}"] = cv2.resize(img, size, interpolation=cv2.INTER_AREA) if f < 1 else img
    np.savez_compressed(path, **small)  # type: ignore[arg-type]


def _variant_figures(file: Path, pixels: np.ndarray, ref: np.ndarray, variant: str) -> dict[str, Any]:
    got = _run(file, {"pixel_values": pixels.astype(np.float32)}).astype(np.float32)
    got /= np.linalg.norm(got, axis=1, keepdims=True)
    cos = (got * ref).sum(1)
    return {
        "file": file.name,
        "cosine_min": float(cos.min()),
        "cosine_mean": float(cos.mean()),
        "required_cosine": DEFAULT_REQUIRED[variant],  # the runtime measures it again on its own CPU
        "measured_on": cpu_signature(),
    }


def _int8(src: Path, dst: Path, pixels: np.ndarray, ref: np.ndarray) -> dict[str, Any]:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # the dynamo exporter leaves value_info shapes that the quantiser's shape inference rejects
    # ("inferred shape and existing shape differ"): quantise a copy without them
    model = onnx.load(str(src))
    del model.graph.value_info[:]
    bare = dst.with_suffix(".bare.onnx")
    onnx.save(model, str(bare))
    try:
        # u8 weights per output channel: ONNX Runtime's u8s8 kernels (s8 weights) add pairs of products in
        # 16-bit lanes on x86 CPUs without VNNI (AVX2 only) and saturate there: the tiny SigLIP's cosine to
        # fp32 was 0.941 on an AVX2-only CPU (QEMU's Haswell model) and 0.999 on a VNNI one. u8u8 gave
        # 0.99957 on both (7-bit s8 weights, reduce_range: 0.9974 on both); tests/test_encoder_cpus.py
        quantize_dynamic(str(bare), str(dst), weight_type=QuantType.QUInt8, per_channel=True)
    finally:
        bare.unlink(missing_ok=True)
    return {**_variant_figures(dst, pixels, ref, "int8"), "quantization": "dynamic, u8 weights per channel"}


def _fp16(src: Path, dst: Path, pixels: np.ndarray, ref: np.ndarray) -> dict[str, Any]:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    onnx.save(model, str(dst))
    return _variant_figures(dst, pixels, ref, "fp16")
