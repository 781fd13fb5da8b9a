"""What a newcomer meets first: `analyze` (report format and place, no temporary data left behind) and
`run --realtime` on a file, run as a user would (subprocesses, a generated clip)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import Clip

ROOT = Path(__file__).resolve().parents[1]


def sw(*args: str, cwd: Path, tmpdir: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    tmpdir.mkdir(exist_ok=True)
    env = dict(os.environ, PYTHONPATH=str(ROOT), TMPDIR=str(tmpdir))  # this checkout; temp files where we can see them
    return subprocess.run([sys.executable, "-m", "streamwatch", *args], capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env)


@pytest.fixture
def recording(short_clip: Clip, tmp_path: Path) -> Path:
    rec = tmp_path / "recordings" / "show.flv"
    rec.parent.mkdir()
    shutil.copy(short_clip.path, rec)
    return rec


def test_analyze_names_its_format_and_place_and_leaves_no_temporary_data(recording: Path, tmp_path: Path) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    tmp = tmp_path / "tmp"
    # an extension that names no format: refused at once, before any work
    r = sw("analyze", str(recording), "-o", "a.txt", cwd=cwd, tmpdir=tmp, timeout=60)
    assert r.returncode == 1 and "cannot tell the report format from 'a.txt'" in r.stderr and "--format" in r.stderr
    r = sw("analyze", str(recording), "-o", "a.json", "--format", "csv", cwd=cwd, tmpdir=tmp, timeout=60)
    assert r.returncode == 1 and "make them agree" in r.stderr
    assert not list(cwd.iterdir()) and not list(tmp.glob("streamwatch-*"))

    # the format from the extension
    r = sw("analyze", str(recording), "-o", "out/r.json", "-q", cwd=cwd, tmpdir=tmp)
    assert r.returncode == 0, r.stderr
    report = json.loads((cwd / "out" / "r.json").read_text())
    assert report["stream"] == "recording"
    assert str((cwd / "out" / "r.json").resolve()) in r.stdout and "json report" in r.stdout
    assert not list(tmp.glob("streamwatch-*")), "temporary event store left behind"  # (onnxruntime leaves a .ses file)

    # without -o: beside the recording, in the format asked for; said where
    r = sw("analyze", str(recording), "--format", "csv", "-q", cwd=cwd, tmpdir=tmp)
    assert r.returncode == 0, r.stderr
    csv = recording.with_name("show-report.csv")
    assert "," in csv.read_text().splitlines()[0]  # a CSV header
    assert str(csv.resolve()) in r.stdout and "not kept" in r.stdout
    assert r.stdout.strip().endswith("events not kept: add --data DIR to keep them") and "((" not in r.stdout
    assert re.match(r"^\d+ alerts? in ", r.stdout) and " 1 alerts " not in r.stdout

    # the progress bar ends at 100 % on its own line: the summary is never written into it
    r = sw("analyze", str(recording), "--format", "csv", cwd=cwd, tmpdir=tmp)
    assert r.returncode == 0, r.stderr
    last = re.split(r"[\r\n]", r.stderr.rstrip("\n"))[-1]
    assert r.stderr.endswith("\n") and "100%|" in last, repr(r.stderr[-300:])
    done, total = re.search(r"\| ([\d.]+)/([\d.]+) ", last).groups()  # type: ignore[union-attr]
    assert done == total
    assert sorted(p.name for p in cwd.iterdir()) == ["out"] and not list(tmp.glob("streamwatch-*"))

    # --data keeps the store, and says so
    r = sw("analyze", str(recording), "-o", "x.txt", "--format", "html", "--data", "kept", "-q", cwd=cwd, tmpdir=tmp)
    assert r.returncode == 0, r.stderr
    assert (cwd / "x.txt").read_text().lstrip().lower().startswith("<!doctype html")
    assert (cwd / "kept" / "events.sqlite3").is_file() and "kept in kept" in r.stdout


def test_run_paces_a_file_in_real_time_with_realtime(recording: Path, tmp_path: Path) -> None:
    """`run --realtime` on a 12 s file lasts about 12 s (a lower bound only: a slow machine is never too fast)."""
    r = sw("run", "--help", cwd=tmp_path, tmpdir=tmp_path / "tmp", timeout=60)
    assert "--realtime" in r.stdout
    t0 = time.monotonic()
    args = ("run", "--source", str(recording), "--realtime", "--port", "0", "--data", str(tmp_path / "d"))
    r = sw(*args, cwd=tmp_path, tmpdir=tmp_path / "tmp")
    wall = time.monotonic() - t0
    assert r.returncode == 0, r.stderr[-3000:]
    assert wall >= 10.5, f"a 12 s file took {wall:.1f} s with --realtime"
