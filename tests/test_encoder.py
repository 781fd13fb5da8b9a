"""ONNX vision encoder: export of tiny random CLIP, Chinese-CLIP and SigLIP checkpoints (both torch
exporters), self-verification, manifest, refusal of corrupted or mismatched files, preprocessing
parity with the transformers processor, runtime parity with torch, variants, provider fallback."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("torch")

import tiny_encoder

from streamwatch.analysis.base import select_providers
from streamwatch.analysis.encoder import Encoder, load_manifest
from streamwatch.analysis.encoder_export import export_encoder, sample_images
from streamwatch.errors import ModelLoadError

ARCHS = ("clip", "chinese_clip", "siglip")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ckpt")
    return {a: tiny_encoder.build(root / a, a) for a in ARCHS}


@pytest.fixture(scope="module")
def exported(checkpoints: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("enc")
    out = {}
    for a in ARCHS:
        export_encoder(str(checkpoints[a]), root / a, exporter="dynamo", int8=True, fp16=True)
        out[a] = root / a
    return out


@pytest.mark.parametrize("arch", ARCHS)
def test_export_verifies_itself_and_writes_a_complete_manifest(exported: dict[str, Path], arch: str) -> None:
    m = json.loads((exported[arch] / "manifest.json").read_text())
    v = m["verification"]
    assert v["vision_max_abs_diff"] <= 1e-4 and v["text_max_abs_diff"] <= 1e-4 and v["batch_max_abs_diff"] <= 1e-4
    assert v["vision_min_cosine"] > 0.9999 and v["batch_sizes"] == [1, 6, 16]
    assert m["architecture"] == arch and m["embedding_dim"] in (16, 32) and m["opset"] == 18
    assert set(m["files"]) == {"vision.onnx", "text.onnx", "tokenizer.json", "probe.npz", "vision.int8.onnx", "vision.fp16.onnx"}
    assert m["image"]["mean"] and m["image"]["resize"] and m["text"]["max_length"] > 0
    assert m["scoring"] == ("sigmoid" if arch == "siglip" else "softmax") and m["logit_scale"] > 0
    assert m["variants"]["int8"]["cosine_min"] > 0.99 and m["variants"]["fp16"]["cosine_min"] > 0.999
    load_manifest(exported[arch])  # checksums verify


def test_the_legacy_exporter_works_too(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    for a in ARCHS:
        m = export_encoder(str(checkpoints[a]), tmp_path / a, exporter="legacy")
        assert m["verification"]["vision_max_abs_diff"] <= 1e-4 and "dynamo=False" in m["exporter"]


@pytest.mark.parametrize("arch", ARCHS)
def test_preprocessing_matches_the_transformers_processor(checkpoints: dict[str, Path], exported: dict[str, Path], arch: str) -> None:
    from transformers import AutoImageProcessor

    proc = AutoImageProcessor.from_pretrained(checkpoints[arch])
    enc = Encoder(exported[arch], device="cpu")
    for img in sample_images(8):
        ref = proc(images=[img], return_tensors="np")["pixel_values"][0]
        got = enc.preprocess(img)
        assert got.shape == ref.shape and np.abs(got - ref).max() <= 1e-5, arch


@pytest.mark.parametrize("arch", ARCHS)
def test_runtime_embeddings_match_torch(checkpoints: dict[str, Path], exported: dict[str, Path], arch: str) -> None:
    import torch
    from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(checkpoints[arch]).eval()
    proc = AutoImageProcessor.from_pretrained(checkpoints[arch])
    tok = AutoTokenizer.from_pretrained(checkpoints[arch])
    enc = Encoder(exported[arch], device="cpu")
    images = sample_images(5)

    def feats(out: Any) -> Any:
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    with torch.inference_mode():
        ref = feats(model.get_image_features(pixel_values=proc(images=images, return_tensors="pt")["pixel_values"]))
        ref = torch.nn.functional.normalize(ref, dim=-1).numpy()
        texts = ["a concert stage", "一只猫", "a brand logo on a shirt"]
        t = tok(texts, padding="max_length", max_length=enc.manifest.text.max_length, truncation=True, return_tensors="pt")
        kw = {"attention_mask": t["attention_mask"]} if arch != "siglip" else {}
        tref = torch.nn.functional.normalize(feats(model.get_text_features(input_ids=t["input_ids"], **kw)), dim=-1).numpy()
    got = enc.embed_images(images)
    assert got.shape == ref.shape and np.abs(got - ref).max() <= 1e-4
    assert np.abs(enc.embed_texts(texts) - tref).max() <= 1e-4
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    p = enc.scores(got, enc.embed_texts(texts))
    assert p.shape == (5, 3) and ((p >= 0) & (p <= 1)).all()
    if arch != "siglip":
        assert np.allclose(p.sum(1), 1.0, atol=1e-5)
    # dynamic batch: one at a time gives the same as the batch
    assert np.abs(enc.embed_images(images[:1]) - got[:1]).max() <= 1e-5
    q = Encoder(exported[arch], device="cpu", variant="int8").embed_images(images)
    assert (q * got).sum(1).min() > 0.99


def test_corrupted_or_mismatched_models_are_refused(exported: dict[str, Path], tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(exported["clip"], bad)
    data = bytearray((bad / "vision.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bad / "vision.onnx").write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match=r"vision\.onnx does not match its manifest"):
        Encoder(bad)
    # a text model in place of the vision model, with a manifest that vouches for it: the I/O check refuses it
    swapped = tmp_path / "swapped"
    shutil.copytree(exported["clip"], swapped)
    shutil.copy(swapped / "text.onnx", swapped / "vision.onnx")
    m = json.loads((swapped / "manifest.json").read_text())
    m["files"]["vision.onnx"] = m["files"]["text.onnx"]
    (swapped / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ModelLoadError, match="has inputs"):
        Encoder(swapped)
    (swapped / "manifest.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="manifest"):
        Encoder(swapped)
    with pytest.raises(ModelLoadError, match="no encoder"):
        Encoder(tmp_path / "nowhere")
    with pytest.raises(ModelLoadError, match=r"no 'int4' variant"):
        Encoder(exported["clip"], variant="int4")


def test_provider_selection_falls_back_and_says_so(exported: dict[str, Path], caplog: pytest.LogCaptureFixture) -> None:
    cpu = ["CPUExecutionProvider"]
    gpu = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert select_providers("cpu", gpu) == (cpu, None)
    assert select_providers("auto", gpu) == (["CUDAExecutionProvider", *cpu], None)
    assert select_providers("tensorrt", gpu) == (gpu, None)
    assert select_providers("auto", cpu) == (cpu, None)  # auto: CPU is what was asked for on a CPU machine
    providers, note = select_providers("cuda", cpu)
    assert providers == cpu and note is not None and "CUDAExecutionProvider" in note and "using CPUExecutionProvider" in note
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with caplog.at_level(logging.WARNING):
            enc = Encoder(exported["clip"], device="cuda")
        assert enc.providers == ("CPUExecutionProvider",)
        assert any("device=cuda" in r.getMessage() for r in caplog.records)


def test_export_cli(checkpoints: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from streamwatch.cli import main

    assert main(["export-encoder", str(checkpoints["siglip"]), "-o", str(tmp_path / "s"), "--name", "tiny-siglip", "--int8"]) == 0
    out = capsys.readouterr().out
    assert "siglip → " in out and "max abs diff" in out and "int8: vision.int8.onnx" in out
    assert load_manifest(tmp_path / "s").name == "tiny-siglip"
    (tmp_path / "notamodel").mkdir()
    (tmp_path / "notamodel" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    assert main(["export-encoder", str(tmp_path / "notamodel"), "-o", str(tmp_path / "x")]) == 1
    assert "not a CLIP, Chinese-CLIP or SigLIP model" in capsys.readouterr().err


def test_io_binding_gives_the_same_embeddings(exported: dict[str, Path]) -> None:
    plain = Encoder(exported["clip"], device="cpu")
    bound = Encoder(exported["clip"], device="cpu", io_binding=True)  # the GPU path's binding calls, on the CPU
    assert not plain.io_binding and bound.io_binding
    images = sample_images(4)
    assert np.abs(plain.embed_images(images) - bound.embed_images(images)).max() <= 1e-6
