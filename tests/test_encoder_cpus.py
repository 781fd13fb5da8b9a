"""Reduced-precision encoder variants on CPUs other than the export machine's.

ONNX Runtime's int8 kernels differ by instruction set: u8s8 products saturate in 16-bit lanes on x86
CPUs without VNNI. QEMU's user-mode emulator runs this very venv as an AVX2-only Haswell (no AVX-512,
no VNNI), so the suite checks both kinds of CPU on whichever machine it runs: the exported int8
variant keeps its promised cosine on both, and the runtime measures a variant on the CPU that loads
it and refuses one that falls short (here: the s8-weight quantisation the exporter used before,
which saturated to 0.94 on an AVX2-only CPU).
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

import tiny_encoder

from streamwatch.analysis.encoder import Encoder, load_manifest
from streamwatch.analysis.encoder_export import export_encoder, sample_images, sha256
from streamwatch.analysis.variant_check import CACHE_FILE, cpu_signature

QEMU = shutil.which("qemu-x86_64")
HASWELL = [QEMU or "qemu-x86_64", "-cpu", "Haswell"]

# run inside the emulated CPU: load the variant through the runtime, report what it decided
PROBE = """
import json, logging, sys
import numpy as np
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
from streamwatch.analysis.encoder import Encoder
from streamwatch.analysis.encoder_export import sample_images
enc = Encoder(sys.argv[1], device="cpu", variant="int8")
fp = Encoder(sys.argv[1], device="cpu")
imgs = sample_images(4)
cos = (enc.embed_images(imgs) * fp.embed_images(imgs)).sum(1)
c = enc.variant_check
print(json.dumps({"variant": enc.variant, "cpu": c.cpu, "measured": c.cosine_min, "cached": c.cached, "cos": float(cos.min())}))
"""


@pytest.fixture(scope="module")
def siglip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("enc-cpus")
    out = root / "siglip"
    export_encoder(str(tiny_encoder.build(root / "ckpt", "siglip")), out, exporter="dynamo", int8=True)
    return out


def _with_variant(src: Path, dst: Path, make: str) -> Path:
    """A copy of the export whose int8 variant is replaced: ``s8`` (u8s8 kernels) or ``noisy`` (damaged weights)."""
    import onnx
    from onnx import numpy_helper

    shutil.copytree(src, dst)
    (dst / "vision.int8.onnx").unlink()
    model = onnx.load(str(dst / "vision.onnx"))
    del model.graph.value_info[:]
    if make == "noisy":
        rng = np.random.default_rng(3)
        for init in model.graph.initializer:
            w = numpy_helper.to_array(init)
            if w.dtype == np.float32 and w.ndim == 2:
                init.CopyFrom(numpy_helper.from_array((w + rng.normal(0, 3 * (w.std() + 1e-3), w.shape)).astype(np.float32), init.name))
        onnx.save(model, str(dst / "vision.int8.onnx"))
    else:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        onnx.save(model, str(dst / "bare.onnx"))
        quantize_dynamic(str(dst / "bare.onnx"), str(dst / "vision.int8.onnx"), weight_type=QuantType.QInt8)
        (dst / "bare.onnx").unlink()
    manifest = json.loads((dst / "manifest.json").read_text())
    manifest["files"]["vision.int8.onnx"] = sha256(dst / "vision.int8.onnx")
    (dst / "manifest.json").write_text(json.dumps(manifest))
    return dst


def _on_haswell(folder: Path) -> tuple[dict[str, object], str]:
    proc = subprocess.run([*HASWELL, sys.executable, "-c", PROBE, str(folder)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = "\n".join(line for line in proc.stderr.splitlines() if "TCG doesn't support" not in line)
    return json.loads(proc.stdout.strip().splitlines()[-1]), log


def test_the_export_promises_and_keeps_its_int8_accuracy_here(siglip: Path) -> None:
    m = json.loads((siglip / "manifest.json").read_text())
    v = m["variants"]["int8"]
    assert v["cosine_min"] >= v["required_cosine"] == 0.99 and v["measured_on"] == cpu_signature()
    assert "u8 weights per channel" in v["quantization"] and "probe.npz" in m["files"]
    enc = Encoder(siglip, device="cpu", variant="int8")
    assert enc.variant == "int8" and enc.variant_check is not None and enc.variant_check.ok
    assert enc.variant_check.source == "export" and enc.variant_check.probes == 6
    # remembered per CPU: the second load does not measure again
    again = Encoder(siglip, device="cpu", variant="int8")
    assert again.variant_check is not None and again.variant_check.cached
    assert cpu_signature() in "".join(json.loads((siglip / CACHE_FILE).read_text()))


@pytest.mark.skipif(QEMU is None, reason="qemu-x86_64 (Debian qemu-user) is not installed: tools/system-deps.sh test installs it")
def test_int8_variant_keeps_its_accuracy_on_an_avx2_only_cpu(siglip: Path, tmp_path: Path) -> None:
    folder = shutil.copytree(siglip, tmp_path / "copy")
    (folder / CACHE_FILE).unlink(missing_ok=True)
    got, log = _on_haswell(folder)
    assert got["cpu"] == "x86_64/avx2/ort-" + cpu_signature().rsplit("/ort-", 1)[1]  # no VNNI, no AVX-512 seen
    assert got["variant"] == "int8" and not got["cached"] and float(got["measured"]) >= 0.99  # type: ignore[arg-type]
    assert float(got["cos"]) >= 0.99, got  # type: ignore[arg-type]
    assert "int8 variant kept" in log


@pytest.mark.skipif(QEMU is None, reason="qemu-x86_64 (Debian qemu-user) is not installed: tools/system-deps.sh test installs it")
def test_a_saturating_int8_variant_is_refused_on_an_avx2_only_cpu(siglip: Path, tmp_path: Path) -> None:
    folder = _with_variant(siglip, tmp_path / "s8", "s8")
    (folder / CACHE_FILE).unlink(missing_ok=True)
    got, log = _on_haswell(folder)
    assert got["variant"] is None and float(got["measured"]) < 0.99, got  # type: ignore[arg-type]
    assert float(got["cos"]) > 0.9999  # fp32 runs instead: the embeddings are the fp32 ones
    assert "int8 variant refused: cosine to fp32 0.9" in log and "< 0.9900 on this CPU (x86_64/avx2/" in log
    assert "using fp32 vision.onnx" in log
    # the verdict is per CPU: this CPU's own measurement of the same file is not taken from Haswell's
    enc = Encoder(folder, device="cpu", variant="int8")
    assert enc.variant_check is not None and not enc.variant_check.cached


def test_a_variant_that_falls_short_is_refused_with_a_log_line(siglip: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = _with_variant(siglip, tmp_path / "noisy", "noisy")
    load_manifest(folder)  # still a valid export: the digests match
    imgs = sample_images(3)
    fp32 = Encoder(folder, device="cpu").embed_images(imgs)
    with caplog.at_level(logging.INFO, logger="streamwatch.analysis.encoder"):
        enc = Encoder(folder, device="cpu", variant="int8")
    assert enc.variant is None and enc.variant_check is not None and not enc.variant_check.ok
    assert np.allclose(enc.embed_images(imgs), fp32, atol=1e-6)
    assert any("int8 variant refused" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="streamwatch.analysis.encoder"):
        enc2 = Encoder(folder, device="cpu", variant="int8")
    assert enc2.variant is None and enc2.variant_check is not None and enc2.variant_check.cached
    assert any("remembered" in r.getMessage() for r in caplog.records)
    # an export without probe photos (older ones) is measured on generated pictures
    (folder / CACHE_FILE).unlink()
    (folder / "probe.npz").unlink()
    manifest = json.loads((folder / "manifest.json").read_text())
    del manifest["files"]["probe.npz"]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    enc3 = Encoder(folder, device="cpu", variant="int8")
    assert enc3.variant is None and enc3.variant_check is not None and enc3.variant_check.source == "generated"
