"""First run: the system-package step of `make demo` / `make test`, packaging metadata, the repo's hygiene.

tools/system-deps.sh runs here against a PATH of stand-ins: a fake `id` (root or not), a fake
`apt-get` / `sudo` that record their arguments, and a fake Python without ensurepip, so each branch
(install as root, install through sudo, stop with the apt-get line) runs for real without touching the
machine's packages.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tools" / "system-deps.sh"


def _exe(path: Path, body: str) -> None:
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)


def _bin(tmp: Path, *, uid: int, sudo: bool = False, have: tuple[str, ...] = (), ensurepip: bool = True) -> Path:
    """A bin folder with only the named real tools, fake id/apt-get/sudo, and a python3 stand-in."""
    b = tmp / "bin"
    b.mkdir()
    log = tmp / "calls.log"
    _exe(b / "id", f'[ "$1" = "-u" ] && echo {uid}')
    _exe(b / "apt-get", f'echo "apt-get $*" >> {log}')
    _exe(b / "systemctl", f'echo "systemctl $*" >> {log}')
    if sudo:
        _exe(b / "sudo", f'echo "sudo $1" >> {log}; exec "$@"')
    for tool in ("env", *have):
        real = shutil.which(tool)
        assert real, tool
        (b / tool).symlink_to(real)
    py = sys.executable
    if ensurepip:
        (b / "python3").symlink_to(py)
    else:  # Debian's python3 without the python3-venv package: `import ensurepip` fails
        _exe(b / "python3", f'case "$*" in *ensurepip*) exit 1 ;; esac; exec {py} "$@"')
    return b


def _run(b: Path, *groups: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": str(b), "HOME": str(b.parent), "PY": "python3"}
    return subprocess.run(["/bin/sh", str(SCRIPT), *groups], capture_output=True, text=True, env=env, timeout=60)


def _calls(tmp: Path) -> list[str]:
    log = tmp / "calls.log"
    return log.read_text().splitlines() if log.exists() else []


def test_as_root_missing_packages_are_installed_with_apt_get(tmp_path: Path) -> None:
    b = _bin(tmp_path, uid=0, ensurepip=False)  # no ffmpeg, nginx, chromium on this PATH
    r = _run(b, "venv", "test")
    assert r.returncode == 0, r.stderr
    calls = _calls(tmp_path)
    assert calls[0] == "apt-get update -qq"
    install = calls[1].split()
    assert install[:4] == ["apt-get", "install", "-y", "-qq"]
    assert {"python3-venv", "ffmpeg", "nginx", "chromium"} <= set(install)
    assert len(install) == len(set(install))  # ffmpeg is wanted twice (demo, test) but listed once
    assert any(c.startswith("systemctl disable --now nginx") for c in calls)  # no nginx on port 80


def test_without_root_or_sudo_it_stops_at_once_with_the_apt_get_line(tmp_path: Path) -> None:
    b = _bin(tmp_path, uid=1000)
    r = _run(b, "venv", "demo")
    assert r.returncode == 1
    assert _calls(tmp_path) == []  # nothing tried
    line = next(x.strip() for x in r.stderr.splitlines() if "apt-get install" in x)
    assert line.startswith("apt-get update && apt-get install -y ")
    assert "ffmpeg" in line.split() and "python3-venv" not in line.split()
    assert "root" in r.stderr


def test_without_root_but_with_sudo_it_installs_through_sudo(tmp_path: Path) -> None:
    b = _bin(tmp_path, uid=1000, sudo=True)
    r = _run(b, "demo")
    assert r.returncode == 0, r.stderr
    calls = _calls(tmp_path)
    assert calls[0] == "sudo env" and calls[1] == "apt-get update -qq"
    assert calls[3].startswith("apt-get install -y -qq ") and "ffmpeg" in calls[3].split()


def test_the_demo_asks_only_for_what_the_demo_needs(tmp_path: Path) -> None:
    b = _bin(tmp_path, uid=1000)
    demo = _run(b, "demo").stderr
    test = _run(b, "test").stderr
    assert "nginx" not in demo and "chromium" not in demo
    assert "nginx" in test and "chromium" in test


@pytest.mark.skipif(not all(shutil.which(t) for t in ("ffmpeg", "nginx", "chromium")), reason="needs this machine's packages")
def test_nothing_is_installed_when_everything_is_there(tmp_path: Path) -> None:
    b = _bin(tmp_path, uid=0, have=("ffmpeg", "nginx", "chromium", "qemu-x86_64", "mosquitto"))
    r = _run(b, "venv", "demo", "test")
    assert r.returncode == 0, r.stderr
    assert _calls(tmp_path) == [] and r.stderr == ""


def test_too_old_a_python_is_named(tmp_path: Path) -> None:
    b = tmp_path / "bin"
    b.mkdir()
    _exe(b / "python3", 'case "$*" in -V) echo "Python 3.9.2" ;; *) exit 1 ;; esac')
    r = _run(b, "venv")
    assert r.returncode == 1 and "Python 3.9.2" in r.stderr and "3.11" in r.stderr


def test_package_metadata_builds_without_deprecation_warnings(tmp_path: Path) -> None:
    """project.license as an SPDX string + license-files (a TOML table is deprecated by setuptools)."""
    code = f"from setuptools import build_meta as b; print(b.prepare_metadata_for_build_wheel({str(tmp_path)!r}))"
    r = subprocess.run([sys.executable, "-W", "error", "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    meta = (tmp_path / r.stdout.split()[-1] / "METADATA").read_text()
    assert "License-Expression: Apache-2.0" in meta and "License-File: LICENSE" in meta


def test_gitignore_ignores_no_tracked_file() -> None:
    if not (ROOT / ".git").exists() or shutil.which("git") is None:
        pytest.skip("not a git checkout")
    r = subprocess.run(["git", "ls-files", "-ci", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True, check=True)
    assert r.stdout == "", f"tracked files matched by .gitignore:\n{r.stdout}"


def test_models_readme_lists_the_files_that_ship() -> None:
    text = (ROOT / "models" / "README.md").read_text()
    shipped = [p for p in (ROOT / "models").rglob("*") if p.is_file() and p.name != "README.md"]
    tops = {p.relative_to(ROOT / "models").parts[0] for p in shipped}
    for top in tops:
        assert top in text, f"models/README.md does not mention {top}"
    assert "arrive with" not in text and "future" not in text.lower()


def test_the_demo_extra_covers_every_import_of_the_demo() -> None:
    """`make demo` installs streamwatch + the `demo` extra only: every module its scripts import must come from those."""
    import ast
    import importlib.metadata as md
    import re
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].lower().replace("_", "-") for r in project["dependencies"]}
    wanted |= {re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].lower().replace("_", "-") for r in project["optional-dependencies"]["demo"]}
    local = {p.stem for p in (ROOT / "tools").glob("*.py")} | {"streamwatch"}
    dists = md.packages_distributions()
    missing = []
    for script in ("demo.py", "make_concert_clip.py"):
        for node in ast.walk(ast.parse((ROOT / "tools" / script).read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if not top or top in sys.stdlib_module_names or top in local or top == "__future__":
                    continue
                provided = {d.lower().replace("_", "-") for d in dists.get(top, [])}
                if not provided & wanted:
                    missing.append(f"{script}: {top} ({', '.join(sorted(provided)) or 'not installed'})")
    assert not missing, f"not in the dependencies or the demo extra: {missing}"
