"""The command-line interface, run as a user would (subprocesses)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import Clip, load_jsonl

from streamwatch import __version__


def sw(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "streamwatch", *args], capture_output=True, text=True, timeout=120, env=env)


def test_version_and_help() -> None:
    r = sw("--version")
    assert r.returncode == 0 and __version__ in r.stdout
    r = sw("--help")
    assert r.returncode == 0
    for cmd in ("sample", "probe", "check-config"):
        assert cmd in r.stdout


def test_sample_writes_jpegs_and_a_jsonl_log(clip: Clip, tmp_path: Path) -> None:
    out = tmp_path / "out"
    r = sw("sample", str(clip.path), "--every", "1", "--out", str(out))
    assert r.returncode == 0, r.stderr
    recs = load_jsonl(out / "samples.jsonl")
    samples = [x for x in recs if x["type"] == "sample"]
    assert len(samples) == 40
    for s in samples:
        assert len(s["phash"]) == 16 and int(s["phash"], 16) >= 0
        assert s["decision"] in {"kept", "duplicate", "black", "uniform", "blurred", "frozen"}
    kept = [s for s in samples if s["decision"] == "kept"]
    assert kept and all((out / s["file"]).stat().st_size > 1000 for s in kept)
    assert len(list((out / "frames").glob("*.jpg"))) == len(kept)
    jpg = (out / kept[0]["file"]).read_bytes()
    assert jpg[:2] == b"\xff\xd8"
    health = [x for x in recs if x["type"] == "health"]
    assert {h["kind"] for h in health} >= {"state", "black", "frozen"}
    assert "40 samples" in r.stdout


def test_probe_reports_codec_size_fps_and_keyframe_interval(clip: Clip) -> None:
    r = sw("probe", str(clip.path))
    assert r.returncode == 0, r.stderr
    assert "h264" in r.stdout and "640x360" in r.stdout and "30.000" in r.stdout
    assert "every 2.00s" in r.stdout


def test_bad_sources_give_clear_errors(tmp_path: Path) -> None:
    r = sw("sample", str(tmp_path / "missing.mp4"), "--out", str(tmp_path / "o"))  # refused before anything starts: exit 2
    assert r.returncode == 2 and "missing.mp4: no such file" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "o").exists()
    r = sw("probe", "ftp://user:pw@host/x")
    assert r.returncode == 2 and "unsupported source scheme" in r.stderr and "pw@" not in r.stderr
    r = sw("probe", "rtmp://127.0.0.1:9/live/k", "--max-retries", "0", "--open-timeout", "1")
    assert r.returncode == 1 and "cannot open" in r.stderr


def test_check_config_points_at_the_bad_key(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text('[sampling]\nevery_s = 2\n[[streams]]\nid = "main"\nsource = "rtmp://127.0.0.1/live/show"\n')
    r = sw("check-config", str(good))
    assert r.returncode == 0 and "OK (1 stream)" in r.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text("[sampling]\nevery_s = 2\ndedupe_radius = 99\n[ingest]\nread_timout_s = 3\n")
    r = sw("check-config", str(bad))
    assert r.returncode == 1
    assert "sampling.dedupe_radius (line 3)" in r.stderr
    assert "ingest.read_timout_s (line 5)" in r.stderr
    syntax = tmp_path / "syntax.toml"
    syntax.write_text("[sampling\nevery_s = 2\n")
    r = sw("check-config", str(syntax))
    assert r.returncode == 1 and "line 1" in r.stderr
    import os

    env = dict(os.environ, STREAMWATCH_SAMPLING__EVERY_S="-3")
    r = sw("check-config", str(good), env=env)
    assert r.returncode == 1 and "sampling.every_s" in r.stderr


def test_check_config_and_run_refuse_a_broken_policy_with_its_line(tmp_path: Path) -> None:
    import shutil

    models = Path(__file__).resolve().parent.parent / "models"
    shutil.copytree(models, tmp_path / "m")
    policy = tmp_path / "m" / "policy.toml"
    r = sw("check-config", "--policy", str(policy))
    assert r.returncode == 0 and "rules)" in r.stdout
    lines = policy.read_text().splitlines()
    n = next(i for i, line in enumerate(lines) if line.startswith("min_confidence")) + 1
    lines[n - 1] = "min_confidence = 7"
    policy.write_text("\n".join(lines) + "\n")
    r = sw("check-config", "--policy", str(policy))
    assert r.returncode == 1 and f"rule.0.when.min_confidence (line {n})" in r.stderr
    (tmp_path / "x.mp4").write_bytes(b"")  # found on disk: the policy is what is refused
    r = sw("run", "--source", str(tmp_path / "x.mp4"), "--policy", str(policy), "--data", str(tmp_path / "d"))
    assert r.returncode == 1 and f"(line {n})" in r.stderr and "invalid policy" in r.stderr
