"""The VLM tier against real OpenAI-compatible servers (issue 21), serving tiny random-weight checkpoints
built offline by tools/tiny_vlm.py:

- ``transformers serve`` (tools/hf_serve.py, no torchvision) with the tiny Qwen3-VL: always run. It
  ignores ``response_format`` and the random weights write noise, so no compliance answer can be
  parsed: what is checked is what streamwatch does about it: no judgment (scene, alert) comes from the
  noise, and the failure is visible (``model`` health events naming the model, in the report too).
  Replies and answers name the model that wrote them; when it fails, the fallback says so.
- llama.cpp ``llama-server`` with the tiny Qwen2.5-VL as GGUF + mmproj: skipped with the reason when
  ``make llama-server`` has not built the binary (the build takes 20-40 min on 2 cores).
- ``streamwatch models check`` against each: what the server really does with a schema and several images.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("fastapi", reason="transformers serve needs the serving extra: pip install 'transformers[serving]'")
pytest.importorskip("uvicorn", reason="transformers serve needs the serving extra: pip install 'transformers[serving]'")

import tiny_vlm
from real_servers import Server, hf_serve, llama_server, llama_server_binary

from streamwatch.app import Daemon
from streamwatch.cli import main
from streamwatch.config import load_settings
from streamwatch.events.model import AlertEvent, HealthEvent, HealthKind, SceneEvent
from streamwatch.events.store import EventStore
from streamwatch.report.build import build_report
from streamwatch.report.html import render_html
from streamwatch.report.tabular import report_dict
from streamwatch.runtime.model_health import ModelHealth, ModelWatch, router_snapshot
from streamwatch.vlm.local import ImageEvidence
from streamwatch.vlm.persona import Persona
from streamwatch.vlm.registry import Capability, Registry, RegistrySpec
from streamwatch.vlm.router import ModelRouter
from streamwatch.vlm.service import VLMService

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from make_concert_clip import write_concert_clip

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def tiny_qwen3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_vlm.build(tmp_path_factory.mktemp("tiny") / "qwen3_vl", "qwen3_vl")


@pytest.fixture(scope="module")
def hf_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with hf_serve(tmp_path_factory.mktemp("hf-serve") / "server.log") as srv:
        yield srv


def model_entry(mid: str, url: str, name: str, **kw: Any) -> dict[str, Any]:
    # a small output budget keeps each attempt of the noise-writing model short (it always runs to max_tokens)
    return {
        "id": mid,
        "backend": "openai",
        "endpoint": url,
        "model_name": name,
        "capabilities": ["compliance", "reply", "qa"],
        "max_output_tokens": 48,
        "timeout_s": 60,
        **kw,
    }


def frame(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.full((240, 320, 3), (40, 60, 90), np.uint8)
    img[60:180, 80:240] = rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)
    return img


def test_transformers_serve_compliance_noise_is_no_judgment_and_the_failure_is_visible(
    tiny_qwen3: Path, hf_server: Server, tmp_path: Path
) -> None:
    clip = tmp_path / "concert.mp4"
    write_concert_clip(clip)
    registry = tmp_path / "registry.json"
    model = model_entry("tiny-hf", hf_server.url, str(tiny_qwen3))
    registry.write_text(json.dumps({"models": [model], "roles": {"compliance": ["tiny-hf", "local"]}}))
    settings = load_settings(
        None,
        {
            "data_dir": tmp_path / "d",
            "streams": [{"id": "s", "source": str(clip)}],
            "analysis": {"analyzers": ["qr"]},
            "vlm": {"registry": registry, "compliance_every_s": 5, "breaker_cooldown_s": 600, "unusable_notice_after": 3},
        },
    )
    daemon = Daemon(settings, serve=False)
    asyncio.run(daemon.run())
    log = hf_server.log()
    store = EventStore(tmp_path / "d")
    events = list(store.events("s"))
    store.close()
    value = daemon.metrics.registry.get_sample_value
    attempts = {o: value("streamwatch_vlm_requests_total", {"model": "tiny-hf", "outcome": o}) or 0 for o in ("ok", "bad_output", "error")}
    # the requests reached the real server, with a schema it ignored
    assert f"Model: {tiny_qwen3}" in log and "Ignoring unsupported fields in the request: {'response_format'}" in log
    assert attempts["bad_output"] + attempts["error"] >= 2, attempts
    # the noise became no judgment: no scene tags and no alert from the model
    assert attempts["ok"] == 0, attempts
    assert not [e for e in events if isinstance(e, SceneEvent)]
    assert not [e for e in events if isinstance(e, AlertEvent) and e.evidence.kind.startswith("vlm:")]
    # ...and the failure is visible on the stream: the model named, compliance falling back to local
    health = [e for e in events if isinstance(e, HealthEvent) and e.kind is HealthKind.MODEL]
    failing = [e.reason for e in health if e.active]
    assert failing and all("tiny-hf" in r for r in failing), health
    assert any("compliance: falls back from tiny-hf to local" in r for r in failing), failing
    assert any("circuit open" in r for r in failing), failing
    assert all(e.describe().startswith("model failing") for e in health if e.active)
    # in the report too
    report = build_report("s", events)
    assert report_dict(report)["summary"]["model_failures"] == len(failing) and report_dict(report)["summary"]["model_switches"] == 0
    html = render_html(report, {})
    assert "id='model-health'" in html and "falls back from tiny-hf" in html


def test_transformers_serve_replies_and_answers_name_their_model(tiny_qwen3: Path, hf_server: Server) -> None:
    """Reply and Q&A through the daemon's router and service: every result names the model that wrote it; a
    result from ``local`` comes with a health notice naming the failing model, and its text says so."""
    dead = model_entry("dead", "http://127.0.0.1:9/v1", "x")
    spec = RegistrySpec.model_validate(
        {
            "models": [model_entry("tiny-hf", hf_server.url, str(tiny_qwen3)), dead],
            "roles": {"reply": ["tiny-hf", "local"], "qa": ["tiny-hf", "local"], "compliance": ["dead", "local"]},
        }
    )
    persona = Persona(id="p", name="星星")

    async def go() -> tuple[list[tuple[str, str]], list[str], str]:
        watch = ModelWatch(ModelHealth(unusable_after=2))
        router = ModelRouter(Registry(spec), observe=watch.observe)
        watch.attach(lambda: router_snapshot(router))
        service = VLMService(router, reply_tokens=32, answer_tokens=32)
        out = []
        for i in range(3):
            ev = ImageEvidence(320, 240, ("扫码加群",) if i % 2 else ())
            reply = await service.reply(persona, frame(i), ev, f"fan {i}", f"k{i}")
            answer = await service.answer(f"what is on screen {i}?", frame(i + 10), ev)
            out += [(reply.model, reply.text), (answer.model, answer.text)]
        # a chain whose only model cannot be reached: the local answer names it, not "no VLM configured"
        router.chains[Capability.QA] = ["dead", "local"]
        fallback = await service.answer("anyone there?", frame(99), ImageEvidence(320, 240))
        watch.check()
        await router.close()
        return out, [n.reason for n in watch.recent if n.active], fallback.text

    results, failing, fallback = asyncio.run(go())
    for model, text in results:
        assert model in ("tiny-hf", "local") and text.strip()
        if model == "local":  # the model failed: visible as a notice that names it
            assert any("tiny-hf" in r for r in failing), (results, failing)
    assert "the VLM (dead) did not answer" in fallback and "no VLM configured" not in fallback


def test_transformers_serve_live_qa_through_the_daemon(tiny_qwen3: Path, hf_server: Server, tmp_path: Path) -> None:
    """`ask` over the daemon's WebSocket, answered through the real server: the answer event names its model;
    an answer from ``local`` comes with a ``model`` health event naming the failing model on the stream."""
    import threading
    import time

    from conftest import free_port
    from evserver import TOKENS
    from test_vlm_switch import ask

    registry = tmp_path / "registry.json"
    model = model_entry("tiny-hf", hf_server.url, str(tiny_qwen3))
    registry.write_text(json.dumps({"models": [model], "roles": {"qa": ["tiny-hf", "local"]}}))
    settings = load_settings(
        None,
        {
            "data_dir": tmp_path / "d",
            "streams": [{"id": "s", "source": f"rtmp://127.0.0.1:{free_port()}/live/x", "listen": True}],
            "server": {"port": 0, "tokens": [{"name": f"{r}-client", "role": r, "secret": s} for r, s in TOKENS.items()]},
            "analysis": {"analyzers": ["qr"]},
            "vlm": {"registry": registry, "unusable_notice_after": 2},
        },
    )
    daemon = Daemon(settings)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=lambda: loop.run_until_complete(daemon.run()), daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not daemon.ready.is_set():
            assert time.monotonic() < deadline and thread.is_alive()
            time.sleep(0.05)
        assert daemon.server is not None
        url = f"ws://127.0.0.1:{daemon.server.port}/ws"
        answers = [asyncio.run(ask(url, f"who is on stage, {i}?")) for i in range(3)]
        time.sleep(1.5)  # the model watch publishes within a second
    finally:
        loop.call_soon_threadsafe(daemon.stop)
        thread.join(30)
    store = EventStore(tmp_path / "d")
    health = [e for e in store.events("s") if isinstance(e, HealthEvent) and e.kind is HealthKind.MODEL]
    store.close()
    assert f"Model: {tiny_qwen3}" in hf_server.log()  # the questions reached the real server
    for a in answers:
        assert a["model"] in ("tiny-hf", "local") and a["text"].strip()
        if a["model"] == "local":
            assert any(e.active and "tiny-hf" in e.reason for e in health), (answers, health)
            assert "no VLM configured" not in a["text"] and "tiny-hf" in a["text"]


def test_models_check_against_transformers_serve(
    tiny_qwen3: Path, hf_server: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    registry = tmp_path / "registry.json"
    dead = model_entry("dead", "http://127.0.0.1:9/v1", "x", timeout_s=5)
    registry.write_text(json.dumps({"models": [model_entry("tiny-hf", hf_server.url, str(tiny_qwen3)), dead]}))
    config = tmp_path / "c.toml"
    config.write_text(f'[vlm]\nregistry = "{registry}"\n')
    assert main(["models", "list", "-c", str(config)]) == 0
    listed = capsys.readouterr().out
    assert "not contacted" in listed and "models check" in listed  # the list claims nothing about the endpoints
    assert main(["models", "check", "-c", str(config)]) == 1  # one model fails
    out = capsys.readouterr().out
    block = out.split("dead  ")[0]
    assert "tiny-hf" in block and "answers: yes" in block
    assert "json schema: ignored" in block  # transformers serve ignores response_format
    assert "images per request: ≥4" in block and "reasoning field: none" in block
    assert "dead  http://127.0.0.1:9/v1\n  FAILED: cannot reach it" in out and "1 of 2 answered; failing: dead" in out


# --- llama.cpp llama-server --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    convert = tiny_vlm.default_convert_script()
    if convert is None:
        pytest.skip("no llama.cpp sources: `make llama-server` downloads them (and builds llama-server)")
    folder = tiny_vlm.build(tmp_path_factory.mktemp("tiny") / "qwen2_5_vl", "qwen2_5_vl", vision_depth=4)
    return tiny_vlm.to_gguf(folder, convert)


@pytest.fixture(scope="module")
def gguf(converted: tuple[Path, Path]) -> tuple[Path, Path]:
    if llama_server_binary() is None:
        pytest.skip("llama-server is not built: `make llama-server` builds it (20-40 min on 2 cores) and caches it")
    return converted


def test_tiny_qwen2_5_vl_converts_to_gguf_with_its_vision_tower(converted: tuple[Path, Path]) -> None:
    convert = tiny_vlm.default_convert_script()
    assert convert is not None
    sys.path.insert(0, str(convert.parent / "gguf-py"))
    from gguf import GGUFReader

    def field(path: Path, key: str) -> Any:
        f = GGUFReader(path).fields[key]
        return f.contents()

    text, mmproj = converted
    assert field(text, "general.architecture") == "qwen2vl"
    assert field(text, "tokenizer.ggml.pre") == "qwen2"  # the tiny tokenizer's unknown hash, reported as qwen2
    assert field(mmproj, "general.architecture") == "clip"
    assert field(mmproj, "clip.vision.block_count") == 4 and field(mmproj, "clip.projector_type") == "qwen2.5vl_merger"
    assert field(mmproj, "clip.vision.n_wa_pattern") == 2  # full attention every 2nd block: fullatt_block_indexes [1, 3]


@pytest.fixture(scope="module")
def llama(gguf: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    binary = llama_server_binary()
    assert binary is not None
    with llama_server(binary, gguf[0], gguf[1], tmp_path_factory.mktemp("llama") / "server.log") as srv:
        yield srv


def test_llama_server_enforces_the_schema_and_names_the_model(llama: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    registry = tmp_path / "registry.json"
    registry.write_text(json.dumps({"models": [model_entry("tiny-gguf", llama.url, "tiny", max_output_tokens=256)]}))
    config = tmp_path / "c.toml"
    config.write_text(f'[vlm]\nregistry = "{registry}"\n')
    assert main(["models", "check", "-c", str(config)]) == 0
    out = capsys.readouterr().out
    assert "json schema: honoured" in out and "answers: yes" in out  # a grammar: schema-valid JSON even from random weights

    async def go() -> list[str]:
        spec = RegistrySpec.model_validate({"models": [model_entry("tiny-gguf", llama.url, "tiny", max_output_tokens=256)]})
        router = ModelRouter(Registry(spec))
        service = VLMService(router, reply_tokens=32, answer_tokens=32)
        reply = await service.reply(Persona(id="p", name="星星"), frame(1), ImageEvidence(320, 240), "hi", "k")
        answer = await service.answer("what is on screen?", frame(2), ImageEvidence(320, 240))
        await router.close()
        return [reply.model, answer.model]

    assert set(asyncio.run(go())) <= {"tiny-gguf", "local"}


def eval_set(folder: Path, n: int = 6) -> Path:
    """Generated labelled frames: a red square means exposure (the labels are the construction, not a model's)."""
    import cv2

    folder.mkdir()
    frames = []
    for i in range(n):
        img = frame(i)
        red = i % 2 == 0
        if red:
            img[80:160, 120:200] = (220, 30, 30)
        cv2.imwrite(str(folder / f"f{i}.jpg"), img[:, :, ::-1])
        frames.append({"image": f"f{i}.jpg", "answers": {"exposure": red, "setting": "indoor_stage"}})
    (folder / "labels.json").write_text(json.dumps({"frames": frames}))
    return folder


def test_eval_with_the_tiny_models(tiny_qwen3: Path, hf_server: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`streamwatch eval` against the real servers: transformers serve's noise is a failure on every frame (never a
    judgment); llama-server's grammar-valid answers are scored (when it is built)."""
    data = eval_set(tmp_path / "set")
    models = [model_entry("tiny-hf", hf_server.url, str(tiny_qwen3))]
    ids = ["tiny-hf"]
    llama_ctx = contextlib.ExitStack()
    binary, convert = llama_server_binary(), tiny_vlm.default_convert_script()
    with llama_ctx:
        if binary is not None and convert is not None:
            folder = tiny_vlm.build(tmp_path / "qwen2_5_vl", "qwen2_5_vl", vision_depth=4)
            text, mmproj = tiny_vlm.to_gguf(folder, convert)
            srv = llama_ctx.enter_context(llama_server(binary, text, mmproj, tmp_path / "llama.log"))
            models.append(model_entry("tiny-gguf", srv.url, "tiny", max_output_tokens=512))
            ids.append("tiny-gguf")
        registry = tmp_path / "registry.json"
        registry.write_text(json.dumps({"models": models}))
        config = tmp_path / "c.toml"
        config.write_text(f'[vlm]\nregistry = "{registry}"\n')
        assert main(["eval", str(data), "--models", ",".join(ids), "-c", str(config), "-o", str(tmp_path / "eval.html")]) == 0
    out = capsys.readouterr().out
    print(out)  # the table for the README
    summary = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.split()[:1] in (["tiny-hf"], ["tiny-gguf"])}
    assert summary["tiny-hf"][:2] == ["6", "6"]  # every frame failed: noise is no answer
    rows = {tuple(line.split()[:2]): line.split()[2:] for line in out.splitlines() if line.startswith(("exposure", "setting"))}
    assert rows[("exposure", "tiny-hf")] == ["-", "-", "0/0/0"]
    if "tiny-gguf" in summary:  # the grammar makes every answer parse: scored, whatever it says
        assert summary["tiny-gguf"][:2] == ["6", "0"]
        assert rows[("exposure", "tiny-gguf")][2].endswith("/3")
    assert "Misjudged by tiny-hf (6)" in (tmp_path / "eval.html").read_text()
