"""ONNX vision encoder runtime (CLIP / Chinese-CLIP / SigLIP exported by ``streamwatch export-encoder``).

No torch: the manifest says how to preprocess (the transformers PIL processor's steps: resize with
PIL, centre crop, rescale, normalise — reproduced exactly), how to pad text, and the SHA-256 of each
file; a corrupted or mismatched model is refused at load. ``embed_images`` gives L2-normalised
embeddings (one per frame), ``embed_texts`` the same for label prompts and search queries.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from streamwatch.analysis.base import onnx_session
from streamwatch.analysis.encoder_export import FORMAT, sha256
from streamwatch.analysis.labels import Label, LabelIndex
from streamwatch.analysis.model import Detection, FrameAnalysis
from streamwatch.analysis.variant_check import VariantCheck, check_variant
from streamwatch.errors import AnalysisError, ModelLoadError
from streamwatch.events.store import EventStore

logger = logging.getLogger(__name__)

_RESAMPLE = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3, "box": 4, "hamming": 5}


class _ManifestPart(BaseModel):  # extra ignored: manifests also carry versions, verification, timings
    model_config = ConfigDict(extra="ignore", frozen=True)


class ImageSpec(_ManifestPart):
    resize: dict[str, int] | None
    resample: Literal["nearest", "lanczos", "bilinear", "bicubic", "box", "hamming"] = "bicubic"
    center_crop: dict[str, int] | None = None
    rescale: float = 1 / 255
    mean: Annotated[list[float], Field(min_length=3, max_length=3)]
    std: Annotated[list[float], Field(min_length=3, max_length=3)]
    input: str = "pixel_values"
    output: str = "image_embeds"


class TextSpec(_ManifestPart):
    inputs: list[str]
    output: str = "text_embeds"
    max_length: Annotated[int, Field(ge=1, le=4096)]
    padding: Literal["max_length"] = "max_length"
    pad_id: int = 0


class Manifest(_ManifestPart):
    format: Literal["streamwatch.encoder/1"]
    name: str
    architecture: str
    embedding_dim: Annotated[int, Field(ge=1)]
    image: ImageSpec
    text: TextSpec
    scoring: Literal["softmax", "sigmoid"]
    logit_scale: float
    logit_bias: float = 0.0
    files: dict[str, str]
    variants: dict[str, dict[str, Any]] = {}


def load_manifest(folder: Path, *, verify: bool = True) -> Manifest:
    """Read and check ``folder/manifest.json``; with ``verify``, every file's SHA-256 too."""
    path = folder / "manifest.json"
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        manifest = Manifest.model_validate(raw)
    except OSError as e:
        raise ModelLoadError(f"no encoder at {folder}: cannot read manifest.json ({e.strerror or e})") from e
    except (json.JSONDecodeError, ValidationError) as e:
        raise ModelLoadError(f"{path}: not a {FORMAT} manifest: {e}") from e
    if verify:
        for name, digest in manifest.files.items():
            file = folder / name
            if not file.is_file():
                raise ModelLoadError(f"encoder {manifest.name}: {name} is missing from {folder}")
            if sha256(file) != digest:
                raise ModelLoadError(f"encoder {manifest.name}: {name} does not match its manifest (corrupted, or from another export)")
    return manifest


class Preprocessor:
    """The model's image processor, reproduced with PIL + numpy (RGB uint8 H×W×3 → float32 3×h×w)."""

    def __init__(self, spec: ImageSpec) -> None:
        self.spec = spec
        self.mean = np.asarray(spec.mean, np.float32).reshape(3, 1, 1)
        self.std = np.asarray(spec.std, np.float32).reshape(3, 1, 1)

    def size_for(self, h: int, w: int) -> tuple[int, int]:
        r = self.spec.resize
        if not r:
            return h, w
        if "shortest_edge" in r:
            short, long = (h, w) if h <= w else (w, h)
            new_short, new_long = r["shortest_edge"], int(r["shortest_edge"] * long / short)
            return (new_short, new_long) if h <= w else (new_long, new_short)
        return r["height"], r["width"]

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        from PIL import Image

        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise AnalysisError(f"the encoder takes RGB uint8 images, not {rgb.dtype} {rgb.shape}")
        h, w = rgb.shape[:2]
        nh, nw = self.size_for(h, w)
        if (nh, nw) != (h, w):
            rgb = np.asarray(Image.fromarray(rgb).resize((nw, nh), resample=_RESAMPLE[self.spec.resample]))
        crop = self.spec.center_crop
        if crop:
            ch, cw = crop["height"], crop["width"]
            top, left = max(0, (rgb.shape[0] - ch) // 2), max(0, (rgb.shape[1] - cw) // 2)
            rgb = rgb[top : top + ch, left : left + cw]
            if rgb.shape[:2] != (ch, cw):  # smaller than the crop: pad (as the processor does), centred
                pad = np.zeros((ch, cw, 3), np.uint8)
                y, x = (ch - rgb.shape[0]) // 2, (cw - rgb.shape[1]) // 2
                pad[y : y + rgb.shape[0], x : x + rgb.shape[1]] = rgb
                rgb = pad
        chw = (rgb.transpose(2, 0, 1).astype(np.float64) * self.spec.rescale).astype(np.float32)
        return np.asarray((chw - self.mean) / self.std, dtype=np.float32)


class Encoder:
    """One exported encoder: image and text embeddings (blocking; call from a thread pool)."""

    def __init__(
        self, folder: Path, *, device: str = "auto", variant: str | None = None, threads: int = 0, io_binding: bool | None = None
    ) -> None:
        self.folder = Path(folder)
        self.manifest = m = load_manifest(self.folder)
        vision = "vision.onnx"
        self.preprocess = Preprocessor(m.image)
        self.variant: str | None = None
        self.variant_check: VariantCheck | None = None
        if variant:
            if variant not in m.variants:
                raise ModelLoadError(f"encoder {m.name} has no {variant!r} variant (has: {', '.join(m.variants) or 'none'})")
            vision = str(m.variants[variant]["file"])
        self.vision = onnx_session(self.folder / vision, device, threads)
        self._check_io(self.vision, [m.image.input], m.image.output, vision)
        if variant:
            self.variant_check = self._check_variant(variant, vision, device, threads)
            if self.variant_check.ok:
                self.variant = variant
            else:
                vision = "vision.onnx"
                self.vision = onnx_session(self.folder / vision, device, threads)
        self.providers = tuple(self.vision.get_providers())
        # on a GPU, bind the batch and the embeddings (no extra staging copies inside onnxruntime)
        self.io_binding = self.providers[0] != "CPUExecutionProvider" if io_binding is None else io_binding
        self._text: Any = None
        self._tokenizer: Any = None
        self.device = device

    def _check_variant(self, variant: str, file: str, device: str, threads: int) -> VariantCheck:
        """Measure the variant against fp32 on this CPU (once per CPU; see variant_check) and log the verdict."""
        m = self.manifest

        def embed(images: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
            fp32 = onnx_session(self.folder / "vision.onnx", device, threads)
            pixels = np.stack([self.preprocess(img) for img in images])
            ref = np.asarray(fp32.run(None, {m.image.input: pixels})[0], dtype=np.float32)
            return ref, np.asarray(self.vision.run(None, {m.image.input: pixels})[0], dtype=np.float32)

        digest = m.files.get(file) or sha256(self.folder / file)
        check = check_variant(self.folder, variant, m.variants[variant], digest, embed)
        how = "remembered" if check.cached else f"measured on {check.probes} {check.source} pictures"
        if check.ok:
            logger.info(
                "encoder %s: %s variant kept: cosine to fp32 %.4f >= %.4f on this CPU (%s; %s)",
                m.name, variant, check.cosine_min, check.required, check.cpu, how,
            )  # fmt: skip
        else:
            logger.warning(
                "encoder %s: %s variant refused: cosine to fp32 %.4f < %.4f on this CPU (%s; %s); using fp32 vision.onnx",
                m.name, variant, check.cosine_min, check.required, check.cpu, how,
            )  # fmt: skip
        return check

    def _check_io(self, session: Any, inputs: list[str], output: str, name: str) -> None:
        got_in = [i.name for i in session.get_inputs()]
        outs = session.get_outputs()
        if got_in != inputs or [o.name for o in outs] != [output]:
            raise ModelLoadError(
                f"encoder {self.manifest.name}: {name} has inputs {got_in} and outputs {[o.name for o in outs]}, not {inputs} → {output}"
            )
        dim = outs[0].shape[-1]
        if isinstance(dim, int) and dim != self.manifest.embedding_dim:
            raise ModelLoadError(
                f"encoder {self.manifest.name}: {name} gives {dim}-d embeddings, the manifest says {self.manifest.embedding_dim}"
            )

    @property
    def dim(self) -> int:
        return self.manifest.embedding_dim

    def embed_images(self, images: list[np.ndarray]) -> np.ndarray:
        """(N, D) float32, unit length."""
        if not images:
            return np.zeros((0, self.dim), np.float32)
        batch = np.stack([self.preprocess(img) for img in images])
        return _unit(self.run_vision(batch))

    def run_vision(self, pixels: np.ndarray) -> np.ndarray:
        """The vision model on preprocessed pixels (N, 3, H, W) → raw (N, D) embeddings."""
        if not self.io_binding:
            return np.asarray(self.vision.run(None, {self.manifest.image.input: pixels})[0], dtype=np.float32)
        binding = self.vision.io_binding()
        binding.bind_cpu_input(self.manifest.image.input, np.ascontiguousarray(pixels, dtype=np.float32))
        on_gpu = self.providers[0] in ("CUDAExecutionProvider", "TensorrtExecutionProvider")
        binding.bind_output(self.manifest.image.output, "cuda" if on_gpu else "cpu")
        self.vision.run_with_iobinding(binding)
        return np.asarray(binding.copy_outputs_to_cpu()[0], dtype=np.float32)

    def _load_text(self) -> None:
        from tokenizers import Tokenizer

        t = self.manifest.text
        try:
            tok = Tokenizer.from_file(str(self.folder / "tokenizer.json"))
        except Exception as e:  # tokenizers raises its own Exception subclass
            raise ModelLoadError(f"encoder {self.manifest.name}: cannot read tokenizer.json: {e}") from e
        tok.enable_truncation(t.max_length)
        tok.enable_padding(length=t.max_length, pad_id=t.pad_id)
        session = onnx_session(self.folder / "text.onnx", self.device)
        self._check_io(session, t.inputs, t.output, "text.onnx")
        self._tokenizer, self._text = tok, session

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        """(N, D) float32, unit length: label prompts and search queries."""
        if self._text is None:
            self._load_text()
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        enc = self._tokenizer.encode_batch(texts)
        feeds = {"input_ids": np.asarray([e.ids for e in enc], np.int64)}
        if "attention_mask" in self.manifest.text.inputs:
            feeds["attention_mask"] = np.asarray([e.attention_mask for e in enc], np.int64)
        return _unit(np.asarray(self._text.run(None, feeds)[0], dtype=np.float32))

    def scores(self, image_embeds: np.ndarray, text_embeds: np.ndarray) -> np.ndarray:
        """Label probabilities: softmax over labels (CLIP) or independent sigmoids (SigLIP)."""
        logits = self.manifest.logit_scale * image_embeds @ text_embeds.T + self.manifest.logit_bias
        if self.manifest.scoring == "sigmoid":
            return np.asarray(1.0 / (1.0 + np.exp(-logits)), np.float32)
        logits = logits - logits.max(axis=1, keepdims=True)
        e = np.exp(logits)
        return np.asarray(e / e.sum(axis=1, keepdims=True), np.float32)


def _unit(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return np.asarray(x / np.maximum(n, 1e-12), dtype=np.float32)


# --- zero-shot labels and the cascade tier ------------------------------------------------------------


class LabelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: Annotated[str, Field(pattern=r"^[a-z0-9_]+$", description="Label id (detections, policy `label` rules, tags).")]
    prompts: Annotated[list[str], Field(description="Text prompts; their embeddings are averaged.")] = []
    threshold: Annotated[float, Field(ge=-1, le=1, description="Cosine the prompt score must reach.")] = 0.25
    prototypes: Annotated[str | None, Field(description="Folder of reference images (relative to the labels file).")] = None
    prototype_threshold: Annotated[float, Field(ge=-1, le=1, description="Cosine to the nearest reference image.")] = 0.85


class LabelsFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    label: list[LabelConfig] = []


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


def load_labels(path: Path, encoder: Encoder) -> LabelIndex:
    """Read a labels file (TOML ``[[label]]`` tables) and embed its prompts and prototype images."""
    import cv2

    from streamwatch.config import load_toml_model

    spec = load_toml_model(path, LabelsFile, "labels file", ModelLoadError)
    labels = []
    for cfg in spec.label:
        vec = LabelIndex.prompt_vector(encoder.embed_texts(cfg.prompts)) if cfg.prompts else None
        protos = None
        if cfg.prototypes:
            folder = path.parent / cfg.prototypes
            files = sorted(p for p in folder.glob("*") if p.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else []
            if not files:
                raise ModelLoadError(f"{path}: label {cfg.id!r}: no images in {folder}")
            images = []
            for f in files:
                img = cv2.imread(str(f), cv2.IMREAD_COLOR)
                if img is None:
                    raise ModelLoadError(f"{path}: label {cfg.id!r}: cannot read {f}")
                images.append(np.ascontiguousarray(img[..., ::-1]))
            protos = encoder.embed_images(images)
        if vec is None and protos is None:
            raise ModelLoadError(f"{path}: label {cfg.id!r} needs prompts or prototypes")
        labels.append(Label(cfg.id, vec, cfg.threshold, protos, cfg.prototype_threshold))
    return LabelIndex(labels, encoder.dim)


class EncoderTier:
    """The encoder as the cascade's middle tier: embeddings plus zero-shot labels (blocking)."""

    name = "encoder"

    def __init__(self, encoder: Encoder, labels: LabelIndex | None = None) -> None:
        self.encoder = encoder
        self.labels = labels or LabelIndex([], encoder.dim)
        self.dim = encoder.dim
        self.model = encoder.manifest.name

    def encode(self, images: list[np.ndarray]) -> tuple[np.ndarray, list[tuple[Detection, ...]]]:
        embeds = self.encoder.embed_images(images)
        return embeds, self.labels.detect(embeds)


def thumbnail_record(
    store: EventStore, fa: FrameAnalysis, image: np.ndarray, model: str, side: int = 320
) -> tuple[str, float, float, str | None, str, tuple[str, ...], np.ndarray]:
    """Blocking: save a thumbnail (long side ``side`` px) of an analysed frame in ``store``; return the
    search-index row (stream, offset, at, thumb path, model, labels, embedding) without adding it."""
    import cv2

    h, w = image.shape[:2]
    scale = min(1.0, side / max(h, w))
    small = cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA) if scale < 1 else image
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(small, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 80])
    thumb = store.save_image(fa.stream, buf.tobytes()) if ok else None
    labels = tuple(dict.fromkeys(d.label for d in fa.by("encoder")))
    assert fa.embedding is not None
    return fa.stream, fa.offset, fa.at, thumb, model, labels, fa.embedding


def index_frame(store: EventStore, fa: FrameAnalysis, image: np.ndarray, model: str, side: int = 320) -> int:
    """Blocking: keep an analysed frame for search and summaries — a thumbnail (long side ``side`` px) and
    its embedding and labels."""
    return store.add_frame(*thumbnail_record(store, fa, image, model, side))
