"""tools/gpu_check.sh's real-server path, tried without a GPU: a stand-in ``vllm`` package on the path whose
``vllm.entrypoints.openai.api_server`` is a small OpenAI-compatible server (or one that dies at start-up,
as vLLM does when the GPU memory is short). The script must start it, run the router benchmark and the
eval on a generated set against it, stop it, and say loudly which step failed when one does."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SHIM = r"""
import json, os, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

args = sys.argv[1:]
port = int(args[args.index("--port") + 1])
name = args[args.index("--served-model-name") + 1]
open(os.environ["FAKE_VLLM_PID"], "w").write(str(os.getpid()))
if os.environ.get("FAKE_VLLM_MODE") == "crash":
    print("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB", file=sys.stderr)
    sys.exit(1)
ANSWER = {"exposure": False, "setting": "indoor_stage", "brands": [], "text": [], "outfit": "", "objects": [], "confidence": 0.8}

class H(BaseHTTPRequestHandler):
    def log_message(self, *a): pass
    def _send(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code); self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data))); self.end_headers(); self.wfile.write(data)
    def do_GET(self):
        self._send(200 if self.path == "/health" else 404, {})
    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        assert body["model"] == name, body["model"]
        content = json.dumps(ANSWER) if "response_format" in body else "今天的舞台很美。"
        self._send(200, {"id": "x", "object": "chat.completion", "model": name,
                         "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
                         "usage": {"prompt_tokens": 50, "completion_tokens": 7, "total_tokens": 57}})

ThreadingHTTPServer(("127.0.0.1", port), H).serve_forever()
"""


def fake_vllm(root: Path) -> Path:
    pkg = root / "vllm" / "entrypoints" / "openai"
    pkg.mkdir(parents=True)
    for d in (root / "vllm", root / "vllm" / "entrypoints", pkg):
        (d / "__init__.py").write_text("")
    (pkg / "api_server.py").write_text(SHIM)
    return root


def run_check(tmp: Path, mode: str, with_fake: bool = True) -> subprocess.CompletedProcess[str]:
    path = [str(fake_vllm(tmp / "fake"))] if with_fake else []
    env = {
        **os.environ,
        "PY": sys.executable,
        "PYTHONPATH": os.pathsep.join([*path, str(ROOT)]),
        "GPU_CHECK_VLM_MODEL": str(tmp),  # any existing folder: the stand-in loads nothing
        "GPU_CHECK_REQUESTS": "6",
        "GPU_CHECK_SERVER_WAIT_S": "60",
        "FAKE_VLLM_MODE": mode,
        "FAKE_VLLM_PID": str(tmp / "server.pid"),
    }
    cmd = ["bash", str(ROOT / "tools" / "gpu_check.sh"), "--device", "cpu", "--servers-only", "--out", str(tmp / "out")]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400, cwd=ROOT)


def alive(pid_file: Path) -> bool:
    try:
        os.kill(int(pid_file.read_text()), 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.timeout(420)
def test_the_real_server_path_benchmarks_and_evaluates_then_stops_the_server(tmp_path: Path) -> None:
    pytest.importorskip("skimage")
    pytest.importorskip("segno")
    r = run_check(tmp_path, "ok")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    bench = (tmp_path / "out" / "vlm-bench.txt").read_text()
    rows = {line.split()[0]: line.split() for line in bench.splitlines() if line.split()[:1] in (["compliance"], ["reply"], ["qa"])}
    assert set(rows) == {"compliance", "reply", "qa"}
    assert all(row[1] == row[2] == "2" for row in rows.values()), bench  # every request answered by the model
    assert all(float(row[-1]) > 0 for row in rows.values()), bench  # tokens/s from the reported usage
    evaluated = (tmp_path / "out" / "eval.txt").read_text()
    assert "gpu-check" in evaluated and (tmp_path / "out" / "eval.html").is_file()
    summary = next(line.split() for line in evaluated.splitlines() if line.startswith("gpu-check "))
    assert summary[1:3] == ["12", "0"] and summary[-1] == "7", evaluated  # 12 frames, no failure, 7 tokens each
    assert "real-server path passed (vllm)" in r.stdout
    assert not alive(tmp_path / "server.pid")  # stopped


@pytest.mark.timeout(120)
def test_a_server_that_dies_at_start_is_a_loud_failure(tmp_path: Path) -> None:
    r = run_check(tmp_path, "crash")
    assert r.returncode == 1
    assert "gpu_check: FAILED: the server exited while starting" in r.stderr
    assert "CUDA out of memory" in r.stderr  # the log's tail says why
    assert not (tmp_path / "out" / "vlm-bench.txt").exists()


@pytest.mark.timeout(120)
def test_without_vllm_or_sglang_the_path_is_skipped_and_says_so(tmp_path: Path) -> None:
    import importlib.util

    if importlib.util.find_spec("vllm") or importlib.util.find_spec("sglang"):
        pytest.skip("a real vllm or sglang is installed here")
    r = run_check(tmp_path, "ok", with_fake=False)
    assert r.returncode == 0 and "real-server path skipped: neither vllm nor sglang is importable" in r.stdout
