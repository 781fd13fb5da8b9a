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


def select_providers(device: str, available: list[str]) -> tuple[list[str], str | None]:
    """ONNX Runtime providers for ``device`` (auto | cpu | cuda | tensorrt), best first, and a note when
    what was asked for is not available (the session then runs on what is)."""
    want = {"tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider"], "cuda": ["CUDAExecutionProvider"]}
    want["auto"] = want["cuda"]
    chosen = [p for p in want.get(device, []) if p in available] + ["CPUExecutionProvider"]
    missing = [p for p in want.get(device, []) if p not in available]
    note = None
    if device in ("cuda", "tensorrt") and missing:
        note = f"device={device} but this onnxruntime lacks {', '.join(missing)} (install onnxruntime-gpu); using {chosen[0]}"
    return chosen, note


def onnx_session(path: Path | str, device: str = "auto", threads: int = 0) -> Any:
    """An ONNX Runtime session on the best provider ``device`` allows; ``get_providers()`` says which.

    A GPU asked for but not available falls back to the CPU and logs why (the session's providers
    tell the caller what it got).
    """
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise ModelLoadError("onnxruntime is not installed (pip install onnxruntime, or onnxruntime-gpu)") from e
    providers, note = select_providers(device, ort.get_available_providers())
    if note:
        logger.warning("%s: %s", Path(path).name, note)
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    # idle intra-op workers (a per-call budget above 1) sleep instead of spinning on cores the streams need
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    opts.log_severity_level = 3  # a CUDA provider that cannot start logs an error and falls back to CPU
    try:
        session = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
    except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph/NoSuchFile types
        raise ModelLoadError(f"cannot load ONNX model {path}: {e}") from e
    if providers[0] != "CPUExecutionProvider" and providers[0] not in session.get_providers():
        logger.warning(
            "%s: %s did not start (see onnxruntime's log); running on %s", Path(path).name, providers[0], session.get_providers()[0]
        )
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
