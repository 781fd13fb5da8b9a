"""Real OpenAI-compatible VLM servers for tests: ``transformers serve`` (through tools/hf_serve.py) and
llama.cpp's ``llama-server`` (built by ``make llama-server``), each on 127.0.0.1 with a tiny random-weight
checkpoint built offline by tools/tiny_vlm.py. Both are started as real subprocesses and stopped by PID."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
from nats_cluster import free_port

ROOT = Path(__file__).resolve().parents[1]


def llama_server_binary() -> Path | None:
    """``$STREAMWATCH_LLAMA_SERVER``, else the one ``make llama-server`` caches, else llama-server on the PATH."""
    env = os.environ.get("STREAMWATCH_LLAMA_SERVER")
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "streamwatch" / "llama.cpp" / "llama-server"
    for candidate in (Path(env) if env else None, cache, Path(shutil.which("llama-server") or "/nonexistent")):
        if candidate is not None and candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


class Server:
    """A server subprocess with its log file; ``url`` is its OpenAI base URL (…/v1)."""

    def __init__(self, cmd: list[str], port: int, log: Path, env: dict[str, str] | None = None, ready_path: str = "/health") -> None:
        self.cmd, self.port, self.log_path, self.ready_path = cmd, port, log, ready_path
        self.env = {**os.environ, **(env or {})}
        self.url = f"http://127.0.0.1:{port}/v1"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 120.0) -> Server:
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(self.cmd, stdout=self._log, stderr=subprocess.STDOUT, env=self.env, cwd=ROOT)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.cmd[0]} exited with {self.proc.returncode}: {self.log()[-2000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{self.port}{self.ready_path}", timeout=2).status_code == 200:
                    return self
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"{self.cmd[0]} not ready within {timeout_s:g}s: {self.log()[-2000:]}")

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()


@contextlib.contextmanager
def hf_serve(log: Path) -> Iterator[Server]:
    """``transformers serve`` through tools/hf_serve.py (the processor loader patched for no torchvision)."""
    port = free_port()
    cmd = [sys.executable, str(ROOT / "tools" / "hf_serve.py"), "--host", "127.0.0.1", "--port", str(port), "--log-level", "info"]
    srv = Server(cmd, port, log, env={"HF_HUB_OFFLINE": "1"}).start()
    try:
        yield srv
    finally:
        srv.stop()


@contextlib.contextmanager
def llama_server(binary: Path, model: Path, mmproj: Path, log: Path) -> Iterator[Server]:
    port = free_port()
    cmd = [str(binary), "-m", str(model), "--mmproj", str(mmproj), "-c", "4096", "-t", "2", "--host", "127.0.0.1", "--port", str(port)]
    srv = Server(cmd, port, log).start()
    try:
        yield srv
    finally:
        srv.stop()
