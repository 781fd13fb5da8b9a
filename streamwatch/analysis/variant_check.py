"""Check a reduced-precision encoder variant against fp32 on the CPU it is about to run on.

An int8 model's accuracy depends on the instruction set that runs it: ONNX Runtime's u8s8 kernels
multiply-add pairs into 16-bit lanes on x86 CPUs without VNNI (AVX2 only) and can saturate there,
while VNNI CPUs accumulate in 32 bits. A variant measured on the export machine (cosine 0.9999 to
fp32) can fall to 0.94 on another CPU. So the runtime measures the variant itself, once per CPU:

- the probe pictures are the export's own (``probe.npz``: the real photos it was verified on, RGB
  uint8) or, for older exports, generated ones (gradients, edges, noise; seeded);
- fp32 and the variant embed them on this CPU; the worst cosine must reach the variant's
  ``required_cosine`` (the manifest's, else 0.99 for int8 and 0.999 for fp16);
- the result is remembered per (variant file digest, CPU signature, ONNX Runtime version) in
  ``variant-checks.json`` beside the model (in memory only where the folder is read-only).

Pure except :func:`load_cache` / :func:`save_cache` (the JSON file) and :func:`cpu_signature`
(``/proc/cpuinfo``).
"""

from __future__ import annotations

import json
import logging
import platform
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

CACHE_FILE = "variant-checks.json"
PROBE_FILE = "probe.npz"
DEFAULT_REQUIRED = {"int8": 0.99, "fp16": 0.999}
# the flags that change which int8 / fp16 kernels ONNX Runtime's MLAS picks on x86 and ARM
_KERNEL_FLAGS = ("avx2", "avx512f", "avx512bw", "avx512vnni", "avxvnni", "avx512bf16", "amxint8", "amxbf16", "asimddp", "i8mm")


@dataclass(frozen=True, slots=True)
class VariantCheck:
    """One variant measured against fp32: ``cosine_min`` over the probe pictures, ``ok`` when it reaches ``required``."""

    variant: str
    cosine_min: float
    required: float
    cpu: str
    probes: int
    source: str  # "export" (the export's probe photos) or "generated"
    cached: bool = False

    @property
    def ok(self) -> bool:
        return self.cosine_min >= self.required


def cpu_flags() -> set[str]:
    """The CPU features this process sees (numpy's CPUID probe, as the kernels see them; /proc/cpuinfo else)."""
    try:
        from numpy._core._multiarray_umath import __cpu_features__  # type: ignore[import-not-found]  # numpy 2

        return {str(k).lower() for k, v in __cpu_features__.items() if v}
    except ImportError:  # pragma: no cover - numpy 1.x / a build without the probe
        pass
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith(("flags", "Features")):
                return {f.replace("_", "") for f in line.split(":", 1)[1].split()}
    except OSError:
        pass
    return set()


def cpu_signature() -> str:
    """``machine/flag,flag,…/ort-VERSION``: what decides which kernels run (e.g. ``x86_64/avx2/ort-1.32.0``)."""
    try:
        import onnxruntime as ort

        version = str(ort.__version__)
    except ImportError:  # pragma: no cover - onnxruntime is a dependency
        version = "none"
    flags = cpu_flags()
    kept = ",".join(f for f in _KERNEL_FLAGS if f in flags) or "baseline"
    return f"{platform.machine()}/{kept}/ort-{version}"


def generated_probes(n: int = 6, size: int = 256, seed: int = 7) -> list[np.ndarray]:
    """``n`` RGB uint8 pictures with a stage's range of content: smooth gradients, hard edges, fine noise, flat dark."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    out = []
    for i in range(n):
        base = np.stack([xx, yy, (xx + yy) / 2], axis=-1) * 255.0
        if i % 3 == 1:  # bright blocks on dark: captions, logos
            base *= 0.15
            for _ in range(6):
                y, x = rng.integers(0, size - 48, 2)
                base[y : y + 40, x : x + 80] = rng.integers(120, 256, 3)
        if i % 3 == 2:  # texture
            base = base * 0.5 + rng.normal(128, 60, (size, size, 3))
        out.append(np.clip(np.roll(base, i * 17, axis=1), 0, 255).astype(np.uint8))
    return out


def compare(variant: str, required: float, cpu: str, ref: np.ndarray, got: np.ndarray, source: str) -> VariantCheck:
    """Worst cosine between row pairs of ``ref`` (fp32) and ``got`` (the variant), both (N, D)."""
    ref = ref / np.maximum(np.linalg.norm(ref, axis=1, keepdims=True), 1e-12)
    got = got / np.maximum(np.linalg.norm(got, axis=1, keepdims=True), 1e-12)
    cos = (ref.astype(np.float64) * got.astype(np.float64)).sum(1)
    worst = float(np.nan_to_num(cos, nan=-1.0).min()) if len(cos) else -1.0
    return VariantCheck(variant, worst, required, cpu, len(cos), source)


def required_cosine(variant: str, info: dict[str, Any]) -> float:
    """The manifest's ``required_cosine`` for the variant, else the default for its kind."""
    value = info.get("required_cosine")
    return float(value) if isinstance(value, int | float) else DEFAULT_REQUIRED.get(variant, 0.99)


def load_cache(folder: Path) -> dict[str, Any]:
    try:
        data = json.loads((folder / CACHE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def save_cache(folder: Path, cache: dict[str, Any]) -> None:
    try:
        (folder / CACHE_FILE).write_text(json.dumps(cache, indent=1, sort_keys=True), encoding="utf-8")
    except OSError as e:  # a read-only model folder: measured again next start
        logger.debug("cannot remember the variant check in %s: %s", folder, e)


def load_probes(folder: Path) -> tuple[list[np.ndarray], str]:
    """The export's probe photos (RGB uint8) when it wrote them, else generated ones."""
    try:
        with np.load(folder / PROBE_FILE) as npz:
            images = [np.ascontiguousarray(npz[k]) for k in sorted(npz.files)]
        if images and all(i.ndim == 3 and i.shape[2] == 3 and i.dtype == np.uint8 for i in images):
            return images, "export"
    except (OSError, ValueError, KeyError):
        pass
    return generated_probes(), "generated"


def check_variant(
    folder: Path,
    variant: str,
    info: dict[str, Any],
    digest: str,
    embed: Callable[[list[np.ndarray]], tuple[np.ndarray, np.ndarray]],
) -> VariantCheck:
    """Measure ``variant`` on this CPU, or read the remembered result.

    ``embed(images)`` returns (fp32 embeddings, variant embeddings), each (N, D); it is only called
    when this (variant, file, CPU) has not been measured before.
    """
    cpu = cpu_signature()
    key = f"{variant}:{digest[:16]}:{cpu}"
    required = required_cosine(variant, info)
    cache = load_cache(folder)
    hit = cache.get(key)
    if isinstance(hit, dict) and isinstance(hit.get("cosine_min"), int | float):
        return VariantCheck(variant, float(hit["cosine_min"]), required, cpu, int(hit.get("probes", 0)), str(hit.get("source", "")), True)
    images, source = load_probes(folder)
    ref, got = embed(images)
    result = compare(variant, required, cpu, ref, got, source)
    record = asdict(result)
    record.pop("cached", None)
    cache[key] = record
    save_cache(folder, cache)
    return result
