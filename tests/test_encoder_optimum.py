"""The optimum exporter path (``export-encoder --exporter optimum``), in its own environment.

optimum-onnx needs transformers < 4.58 while the rest of streamwatch runs on transformers 5, so
``make test-optimum`` (run by .ci/run) builds the tiny checkpoints with the main environment and runs
this file in ``.venv-optimum``; in the main environment it is skipped for want of optimum.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("optimum.exporters.onnx", reason="optimum-onnx lives in .venv-optimum: make test-optimum")

from streamwatch.analysis.encoder import Encoder
from streamwatch.analysis.encoder_export import export_encoder, sample_images


@pytest.mark.parametrize("arch", ["clip", "siglip"])
def test_optimum_export_verifies_and_runs(arch: str, tmp_path: Path) -> None:
    root = os.environ.get("STREAMWATCH_TINY_ENCODERS")
    if not root:
        pytest.fail("set STREAMWATCH_TINY_ENCODERS to the folder make test-optimum builds")
    m = export_encoder(str(Path(root) / arch), tmp_path / arch, exporter="optimum", int8=True)
    v = m["verification"]
    assert m["exporter"].startswith("optimum-onnx")
    assert max(v["vision_max_abs_diff"], v["text_max_abs_diff"], v["batch_max_abs_diff"]) <= 1e-4
    enc = Encoder(tmp_path / arch, device="cpu")
    e = enc.embed_images(sample_images(3))
    assert e.shape == (3, m["embedding_dim"]) and np.allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    assert enc.embed_texts(["a concert stage"]).shape == (1, m["embedding_dim"])
