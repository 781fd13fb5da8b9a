"""Built-in local analyzers: nudity (NudeNet's YOLOv8 ONNX), on-screen text (RapidOCR PP-OCRv4), QR codes (zxing-cpp)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from streamwatch.analysis.base import Analyzer, onnx_session, register
from streamwatch.analysis.model import BBox, Detection
from streamwatch.errors import AnalysisError, ModelLoadError

logger = logging.getLogger(__name__)

NUDENET_LABELS = (
    "FEMALE_GENITALIA_COVERED", "FACE_FEMALE", "BUTTOCKS_EXPOSED", "FEMALE_BREAST_EXPOSED", "FEMALE_GENITALIA_EXPOSED",
    "MALE_BREAST_EXPOSED", "ANUS_EXPOSED", "FEET_EXPOSED", "BELLY_COVERED", "FEET_COVERED", "ARMPITS_COVERED",
    "ARMPITS_EXPOSED", "FACE_MALE", "BELLY_EXPOSED", "MALE_GENITALIA_EXPOSED", "ANUS_COVERED", "FEMALE_BREAST_COVERED",
    "BUTTOCKS_COVERED",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class AnalyzerSettings:
    device: str = "auto"  # auto | cpu | cuda
    threads: int = 0  # ONNX Runtime intra-op threads (0 = its default)
    nudity_model: Path | None = None  # default: nudenet/320n.onnx from the installed package
    nudity_min_score: float = 0.25
    ocr_max_side: int = 960
    ocr_min_score: float = 0.5


def nudenet_model_path() -> Path:
    try:
        path = Path(str(resources.files("nudenet").joinpath("320n.onnx")))
    except ModuleNotFoundError as e:
        raise ModelLoadError("the nudity analyzer needs the nudenet package (pip install nudenet)") from e
    if not path.is_file():
        raise ModelLoadError(f"{path} is missing from the nudenet package")
    return path


class NudityDetector:
    """YOLOv8n (320 px) from NudeNet in our own session: letterbox, one batched run, decode, NMS."""

    name = "nudity"
    size = 320
    batched = True  # one ONNX run for the whole batch

    def __init__(self, s: AnalyzerSettings) -> None:
        self.session = onnx_session(s.nudity_model or nudenet_model_path(), s.device, s.threads)
        self.providers = tuple(self.session.get_providers())
        self.input = self.session.get_inputs()[0].name
        self.min_score = s.nudity_min_score
        logger.info("nudity detector on %s", ", ".join(self.providers))

    def _prepare(self, img: np.ndarray) -> tuple[np.ndarray, float]:
        h, w = img.shape[:2]
        side = max(h, w)
        square = np.zeros((side, side, 3), np.uint8)  # pad right/bottom, as NudeNet was trained
        square[:h, :w] = img
        small = cv2.resize(square, (self.size, self.size), interpolation=cv2.INTER_LINEAR)  # as in training
        return small, side / self.size

    def analyze(self, images: Sequence[np.ndarray]) -> list[tuple[Detection, ...]]:
        if not images:
            return []
        prepared = [self._prepare(img) for img in images]
        # NudeNet's own pipeline (imread BGR → cvtColor(RGBA2BGR), which swaps a 3-channel image →
        # blobFromImage(swapRB=True)) hands the model BGR; match it so scores agree with NudeNet's.
        batch = np.stack([p[0] for p in prepared])[..., ::-1].astype(np.float32).transpose(0, 3, 1, 2) / 255.0
        try:
            out = self.session.run(None, {self.input: batch})[0]  # (N, 4 + classes, anchors)
        except Exception as e:
            raise AnalysisError(f"nudity model failed: {e}") from e
        return [self._decode(o.T, scale, img.shape) for o, (_, scale), img in zip(out, prepared, images, strict=True)]

    def _decode(self, rows: np.ndarray, scale: float, shape: tuple[int, ...]) -> tuple[Detection, ...]:
        scores = rows[:, 4:]
        cls = scores.argmax(1)
        best = scores[np.arange(len(rows)), cls]
        keep = best >= self.min_score
        if not keep.any():
            return ()
        rows, cls, best = rows[keep], cls[keep], best[keep]
        cx, cy, bw, bh = (rows[:, i] * scale for i in range(4))
        boxes = np.stack([cx - bw / 2, cy - bh / 2, bw, bh], 1)
        idx = cv2.dnn.NMSBoxes(boxes.tolist(), best.tolist(), self.min_score, 0.45)
        h, w = shape[:2]
        out = []
        for i in np.array(idx).reshape(-1):
            x, y, bw_, bh_ = boxes[i]
            bbox: BBox = (max(0, int(x)), max(0, int(y)), min(w, int(x + bw_)), min(h, int(y + bh_)))
            out.append(Detection("nudity", NUDENET_LABELS[int(cls[i])], round(float(best[i]), 4), bbox))
        return tuple(sorted(out, key=lambda d: -d.confidence))


class TextReader:
    """PP-OCRv4 (Chinese + English) through rapidocr-onnxruntime, with limits tuned for speed.
    Crops of changed regions are fine (text lines are read where they are)."""

    name = "ocr"
    regional = True

    def __init__(self, s: AnalyzerSettings) -> None:
        try:
            from rapidocr_onnxruntime import RapidOCR
        except ImportError as e:
            raise ModelLoadError("the OCR analyzer needs rapidocr-onnxruntime (pip install rapidocr-onnxruntime)") from e
        cuda = s.device == "cuda"
        kw: dict[str, object] = {
            "det_limit_type": "max",  # the default "min" upscales every frame
            "det_limit_side_len": s.ocr_max_side,
            "use_cls": False,  # on-screen captions are upright
            "text_score": s.ocr_min_score,
            "det_use_cuda": cuda,
            "rec_use_cuda": cuda,
        }
        if s.threads:
            kw["intra_op_num_threads"] = s.threads
        try:
            self.engine = RapidOCR(**kw)
        except Exception as e:
            raise ModelLoadError(f"cannot start RapidOCR: {e}") from e
        if not cuda:  # RapidOCR turns ONNX Runtime's CPU memory arena off: ~18% more CPU per detection run
            for infer in (self.engine.text_det.infer, self.engine.text_rec.session):
                infer.session = onnx_session(infer.session._model_path, "cpu", s.threads)
        self.providers: tuple[str, ...] = ("CUDAExecutionProvider",) if cuda else ("CPUExecutionProvider",)
        self._cpu = threading.local()  # this thread's CPU seconds of the last call, by part
        self.engine.text_det = _Timed(self.engine.text_det, "ocr_detection", self._cpu)
        self.engine.text_rec = _Timed(self.engine.text_rec, "ocr_recognition", self._cpu)

    def analyze(self, images: Sequence[np.ndarray]) -> list[tuple[Detection, ...]]:
        self._cpu.parts = {"ocr_detection": 0.0, "ocr_recognition": 0.0}
        return [self._one(img) for img in images]

    def cpu_split(self) -> dict[str, float]:
        """CPU seconds of this thread's last :meth:`analyze`: text detection, text recognition."""
        return dict(getattr(self._cpu, "parts", {}))

    def _one(self, img: np.ndarray) -> tuple[Detection, ...]:
        try:
            result, _ = self.engine(np.ascontiguousarray(img[:, :, ::-1]))  # RapidOCR takes BGR
        except Exception as e:
            raise AnalysisError(f"OCR failed: {e}") from e
        out = []
        for box, text, score in result or ():
            pts = np.asarray(box, np.float32)
            x1, y1 = pts.min(0)
            x2, y2 = pts.max(0)
            out.append(Detection("ocr", "text", round(float(score), 4), (int(x1), int(y1), int(x2), int(y2)), str(text)))
        return tuple(out)


class _Timed:
    """A RapidOCR stage (text_det, text_rec) whose calls add this thread's CPU time to ``local.parts[part]``."""

    def __init__(self, inner: Callable[..., Any], part: str, local: threading.local) -> None:
        self._inner, self._part, self._local = inner, part, local

    def __call__(self, *args: Any, **kw: Any) -> Any:
        t0 = time.thread_time()
        try:
            return self._inner(*args, **kw)
        finally:
            parts = getattr(self._local, "parts", None)
            if parts is not None:
                parts[self._part] = parts.get(self._part, 0.0) + time.thread_time() - t0

    def __getattr__(self, name: str) -> Any:  # RapidOCR reaches into its stages (postprocess_op …)
        return getattr(self._inner, name)


class QRReader:
    """QR codes (also Micro QR and rMQR) with zxing-cpp: several per frame, light-on-dark too, read at
    the source resolution (or on a changed region's crop) so modules stay readable. A code that is
    found but cannot be decoded (damaged, partly covered) is ``qr_undecoded``."""

    name = "qr"
    providers: tuple[str, ...] = ("zxing-cpp",)
    regional = True  # crops of changed regions are fine
    source_resolution = True  # whole frames at the source resolution, not the analysis size

    def __init__(self, s: AnalyzerSettings) -> None:
        try:
            import zxingcpp
        except ImportError as e:
            raise ModelLoadError("the QR analyzer needs zxing-cpp (pip install zxing-cpp)") from e
        self._zx = zxingcpp
        self._formats = zxingcpp.barcode_formats_from_str("QRCode,MicroQRCode,rMQRCode")

    def analyze(self, images: Sequence[np.ndarray]) -> list[tuple[Detection, ...]]:
        return [self._one(img) for img in images]

    def _one(self, img: np.ndarray) -> tuple[Detection, ...]:
        gray = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY) if img.ndim == 3 else img
        try:
            found = self._zx.read_barcodes(gray, formats=self._formats, return_errors=True)
        except (RuntimeError, ValueError) as e:
            raise AnalysisError(f"QR detection failed: {e}") from e
        out: list[Detection] = []
        for code in found:
            p = code.position
            xs = (p.top_left.x, p.top_right.x, p.bottom_right.x, p.bottom_left.x)
            ys = (p.top_left.y, p.top_right.y, p.bottom_right.y, p.bottom_left.y)
            bbox: BBox = (int(min(xs)), int(min(ys)), int(max(xs)), int(max(ys)))
            if any(_overlap(bbox, d.bbox) > 0.5 for d in out):
                continue  # the same code found twice (e.g. normal and inverted pass)
            if code.valid and code.text:
                out.append(Detection("qr", "qr", 1.0, bbox, str(code.text)))
            else:  # found but unreadable: still worth a look
                out.append(Detection("qr", "qr_undecoded", 0.5, bbox, None))
        return tuple(out)


def _overlap(a: BBox, b: BBox | None) -> float:
    """Intersection over the smaller box's area."""
    if b is None:
        return 0.0
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    small = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return iw * ih / max(small, 1)


@register("nudity")
def _nudity(s: AnalyzerSettings) -> Analyzer:
    return NudityDetector(s)


@register("ocr")
def _ocr(s: AnalyzerSettings) -> Analyzer:
    return TextReader(s)


@register("qr")
def _qr(s: AnalyzerSettings) -> Analyzer:
    return QRReader(s)
