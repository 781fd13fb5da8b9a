"""The analyzer protocol, the ONNX Runtime session helper and the explicit registry.

Analyzers are blocking (ONNX Runtime and OpenCV release the GIL): call them from a thread pool.
They take RGB ``uint8`` images (H×W×3) in a batch and return one tuple of detections per image,
with boxes in that image's pixels.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from streamwatch.analysis.model import Detection
from streamwatch.errors import AnalysisError, ModelLoadError

if TYPE_CHECKING:
    from streamwatch.analysis.detectors import AnalyzerSettings

logger = logging.getLogger(__name__)


class Analyzer(Protocol):
    name: str
    providers: tuple[str, ...]  # execution providers really in use (ONNX Runtime), or ("opencv",)

    def analyze(self, images: Sequence[np.ndarray]) -> list[tuple[Detection, ...]]: ...


def onnx_session(path: Path | str, device: str = "auto", threads: int = 0) -> Any:
    """An ONNX Runtime session on CUDA when asked/available, else CPU; ``get_providers()`` says which."""
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise ModelLoadError("onnxruntime is not installed (pip install onnxruntime, or onnxruntime-gpu)") from e
    available = ort.get_available_providers()
    if device == "cuda" and "CUDAExecutionProvider" not in available:
        raise ModelLoadError("device=cuda but this onnxruntime has no CUDA provider (install onnxruntime-gpu)")
    providers = ["CPUExecutionProvider"]
    if device in ("auto", "cuda") and "CUDAExecutionProvider" in available:
        providers.insert(0, "CUDAExecutionProvider")
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    opts.log_severity_level = 3  # a CUDA provider that cannot start logs an error and falls back to CPU
    try:
        session = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
    except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph/NoSuchFile types
        raise ModelLoadError(f"cannot load ONNX model {path}: {e}") from e
    if device == "cuda" and "CUDAExecutionProvider" not in session.get_providers():
        raise ModelLoadError(f"{path}: the CUDA provider did not start (see onnxruntime's log)")
    return session


Factory = Callable[["AnalyzerSettings"], Analyzer]
REGISTRY: dict[str, Factory] = {}


def register(name: str) -> Callable[[Factory], Factory]:
    def deco(fn: Factory) -> Factory:
        REGISTRY[name] = fn
        return fn

    return deco


def create(name: str, settings: AnalyzerSettings) -> Analyzer:
    """Build the analyzer ``name`` (``nudity``, ``ocr``, ``qr``)."""
    from streamwatch.analysis import detectors  # noqa: F401  (registers the built-in analyzers)

    factory = REGISTRY.get(name)
    if factory is None:
        raise AnalysisError(f"unknown analyzer {name!r}; known: {', '.join(sorted(REGISTRY))}")
    return factory(settings)
