"""Run Hugging Face's ``transformers serve`` (an OpenAI-compatible server) on a machine without torchvision.

``transformers serve`` loads every model's processor with ``AutoProcessor.from_pretrained``; without
torchvision that fails for every Qwen-VL checkpoint (``Qwen3VLVideoProcessor requires the Torchvision
library``) and every chat request is an HTTP 500. torchvision is not installable beside the CPU torch
here (../shared/notes/ml-stack.md), so this launcher patches the server's processor loader to fall
back to assembling the processor from its parts (tokenizer, image processor, the video processor
class imported directly), then runs the server in this process:

    HF_HUB_OFFLINE=1 python tools/hf_serve.py --port 8000 [--host 127.0.0.1] [FORCE_MODEL] [other `transformers serve` options]

The request's ``model`` is a local checkpoint folder (e.g. one written by ``tools/tiny_vlm.py``).
Needs ``pip install 'transformers[serving]'`` (the ``serve`` extra of streamwatch). What this server
does with streamwatch's requests (it ignores ``response_format`` and temperature) is in the README.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

logger = logging.getLogger("hf_serve")


def assemble_processor(folder: str) -> Any:
    """The processor of a local checkpoint, built from its parts (what ``AutoProcessor`` does, minus torchvision)."""
    import transformers
    from transformers import AutoImageProcessor, AutoTokenizer

    patch_video_processor_mixin()
    path = Path(folder)
    config = json.loads((path / "processor_config.json").read_text(encoding="utf-8")) if (path / "processor_config.json").is_file() else {}
    model_type = json.loads((path / "config.json").read_text(encoding="utf-8"))["model_type"]
    name = config.get("processor_class") or "".join(p.capitalize() for p in model_type.split("_")).replace("Vl", "VL") + "Processor"
    cls = getattr(transformers, name)
    parts: dict[str, Any] = {
        "tokenizer": AutoTokenizer.from_pretrained(folder),
        "image_processor": AutoImageProcessor.from_pretrained(folder),
    }
    if "video_processor" in cls.get_attributes():
        module = importlib.import_module(f"transformers.models.{model_type}.video_processing_{model_type}")
        video_cls = next(getattr(module, n) for n in dir(module) if n.endswith("VideoProcessor") and n != "BaseVideoProcessor")
        parts["video_processor"] = video_cls(**{k: v for k, v in config.get("video_processor", {}).items() if k == "patch_size"})
    template = path / "chat_template.jinja"
    return cls(**parts, chat_template=template.read_text(encoding="utf-8") if template.is_file() else None)


def patch_video_processor_mixin() -> None:
    """transformers bug without torchvision: processing_utils' module object lacks the real VideoProcessorMixin."""
    import transformers.processing_utils as pu
    import transformers.video_processing_utils as vpu

    pu.transformers_module.VideoProcessorMixin = vpu.VideoProcessorMixin


def patch_server() -> None:
    """Make ``ModelManager._load_processor`` fall back to :func:`assemble_processor` when torchvision is missing."""
    from transformers.cli.serving import model_manager

    original = model_manager.ModelManager._load_processor

    def load_processor(self: Any, model_id_and_revision: str, gguf_file: str | None = None) -> Any:
        try:
            return original(self, model_id_and_revision, gguf_file=gguf_file)
        except ImportError as e:
            folder = model_manager.split_revision(model_id_and_revision)[0]
            if "Torchvision" not in str(e) or not Path(folder).is_dir():
                raise
            logger.warning("%s: no torchvision; assembling the processor from its parts", folder)
            return assemble_processor(folder)

    model_manager.ModelManager._load_processor = load_processor


def main(argv: list[str]) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # /v1/models scans the hub cache and 500s offline otherwise
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    patch_server()
    from transformers.cli.transformers import app

    app(["serve", *argv], prog_name="hf_serve")


if __name__ == "__main__":
    main(sys.argv[1:])
