"""The example config (streamwatch.example.toml, `streamwatch init`) and what `check-config` catches."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from streamwatch.config import Settings
from streamwatch.config_example import render_example

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "streamwatch.example.toml"


def sw(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))  # this checkout's streamwatch, from any folder
    return subprocess.run([sys.executable, "-m", "streamwatch", *args], capture_output=True, text=True, timeout=120, cwd=cwd, env=env)


def test_the_shipped_example_is_current_and_check_config_accepts_it() -> None:
    assert EXAMPLE.read_text(encoding="utf-8") == render_example(), "regenerate: streamwatch init streamwatch.example.toml --force"
    r = sw("check-config", str(EXAMPLE))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"{EXAMPLE}: OK (1 stream)") and "encoder: off" in r.stdout


def _fields(model: type[BaseModel], prefix: str = "") -> list[str]:
    out = []
    for key, info in model.model_fields.items():
        out.append(f"{prefix}{key}")
        ann: Any = info.annotation
        for sub in (ann, *getattr(ann, "__args__", ())):
            if isinstance(sub, type) and issubclass(sub, BaseModel):
                out += _fields(sub, f"{prefix}{key}.")
    return out


def test_every_section_and_field_is_in_the_example_with_its_description() -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    for dotted in _fields(Settings):
        key = dotted.rsplit(".", 1)[-1]
        assert re.search(rf"^(# )?(\[\[?{re.escape(dotted)}\]\]?|{re.escape(key)} =)", text, re.M), dotted
    for name, info in Settings.model_fields.items():
        assert info.description and info.description in text, name


def test_every_commented_example_is_valid_when_uncommented() -> None:
    lines = []
    for line in EXAMPLE.read_text(encoding="utf-8").splitlines():
        m = re.match(r"^# (\[\[[\w.]+\]\]|\w+ = .*)$", line)
        lines.append(m.group(1) if m else line)
    values = tomllib.loads("\n".join(lines))
    s = Settings.model_validate(values)  # the schema (paths are not opened here)
    assert s.server.api_port == 8766 and len(s.server.tokens) == 3 and s.server.tokens[2].relay
    assert s.vlm.roles["reply"] == ["qwen3-vl-4b", "local"] and s.vlm.questions and s.vlm.questions[0].id == "exposure"
    assert s.analysis.encoder.path == Path("models/encoders/clip-vit-base-patch32")


def test_init_writes_the_example_and_refuses_to_overwrite(tmp_path: Path) -> None:
    r = sw("init", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "streamwatch.toml").read_text(encoding="utf-8") == render_example()
    assert "streamwatch.toml" in r.stdout
    target = tmp_path / "conf" / "live.toml"
    assert sw("init", str(target)).returncode == 0
    target.write_text("# mine\n")
    r = sw("init", str(target))
    assert r.returncode == 1 and "exists" in r.stderr and "--force" in r.stderr
    assert target.read_text() == "# mine\n"
    assert sw("init", str(target), "--force").returncode == 0
    assert target.read_text(encoding="utf-8") == render_example()


def test_check_config_refuses_a_missing_encoder_instead_of_ok(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[analysis.encoder]\npath = "{tmp_path / "nowhere"}"\n')
    r = sw("check-config", str(cfg))
    assert r.returncode == 1 and "OK" not in r.stdout
    assert "analysis.encoder.path" in r.stderr and "nowhere" in r.stderr and "export-encoder" in r.stderr


def test_a_policy_labels_or_persona_file_given_as_config_says_what_to_use() -> None:
    r = sw("check-config", "models/policy.toml")
    assert r.returncode == 1
    assert "is a policy file" in r.stderr and "check-config --policy models/policy.toml" in r.stderr
    r = sw("check-config", "--policy", "models/policy.toml")
    assert r.returncode == 0 and "policy models/policy.toml: OK" in r.stdout
    assert "labels file" in sw("check-config", "models/labels.toml").stderr
    assert "persona file" in sw("check-config", "models/personas/xingmiao.toml").stderr
    assert "TOML" in sw("check-config", "models/registry.json").stderr
    r = sw("run", "-c", "models/policy.toml")  # the same hint wherever a config is read
    assert r.returncode == 1 and "is a policy file" in r.stderr


@pytest.mark.timeout(300)
def test_check_config_verifies_an_exported_encoder(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    sys.path.insert(0, str(ROOT / "tools"))
    import tiny_encoder

    from streamwatch.analysis.encoder_export import export_encoder

    enc = tmp_path / "enc"
    export_encoder(str(tiny_encoder.build(tmp_path / "ckpt", "clip")), enc, name="tiny-clip", exporter="legacy", int8=True)
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[analysis.encoder]\npath = "{enc}"\nvariant = "int8"\n')
    r = sw("check-config", str(cfg))
    assert r.returncode == 0, r.stderr
    assert "encoder tiny-clip (int8): OK" in r.stdout
    cfg.write_text(f'[analysis.encoder]\npath = "{enc}"\nvariant = "fp16"\n')
    r = sw("check-config", str(cfg))
    assert r.returncode == 1 and "no 'fp16' variant" in r.stderr
    (enc / "vision.onnx").write_bytes(b"corrupted")
    cfg.write_text(f'[analysis.encoder]\npath = "{enc}"\n')
    r = sw("check-config", str(cfg))
    assert r.returncode == 1 and "does not match its manifest" in r.stderr


def test_every_command_and_option_the_readme_shows_exists(capsys: pytest.CaptureFixture[str]) -> None:
    from streamwatch.cli import main

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = text.split("## Commands", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    seen = 0
    for line in block.splitlines():
        words = line.split("#", 1)[0].split()
        if len(words) < 2 or words[0] != "streamwatch" or words[1].startswith("-"):
            continue
        cmd = words[1:3] if words[1] in ("models", "streams") else words[1:2]
        with pytest.raises(SystemExit):
            main([*cmd, "--help"])
        helptext = capsys.readouterr().out
        for opt in re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", line.split("#", 1)[0]):
            assert opt in helptext, f"README: `{' '.join(cmd)} {opt}` is not an option"
        seen += 1
    assert seen >= 12
    assert ". .venv/bin/activate" in text and "artifacts/demo/" in text and "ARGS=--hold" in text
