"""Shared fixtures: generated media (nothing downloaded) and real local servers on 127.0.0.1."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import make_sample_stream  # noqa: E402
from nats_cluster import free_port, wait_port  # noqa: E402  (the tests import them from here)


@dataclass(frozen=True)
class Clip:
    path: Path
    labels: dict

    def kind_at(self, t: float) -> str | None:
        for s in self.labels["segments"]:
            if s["start"] <= t < s["end"]:
                return str(s["kind"])
        return None

    def near_boundary(self, t: float, margin: float = 1.01) -> bool:
        return any(abs(t - s["start"]) < margin or abs(t - s["end"]) < margin for s in self.labels["segments"])


@pytest.fixture(scope="session")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Clip:
    """The labelled 40 s, 640x360, 30 fps clip with a 2 s GOP."""
    path = tmp_path_factory.mktemp("media") / "labelled.mp4"
    labels = make_sample_stream.write_clip(path, width=640, height=360, fps=30, gop_s=2.0)
    return Clip(path, labels)


@pytest.fixture(scope="session")
def short_clip(tmp_path_factory: pytest.TempPathFactory) -> Clip:
    """A 12 s, 320x180 clip for live-publishing tests (the first 12 s of the timeline)."""
    path = tmp_path_factory.mktemp("media") / "short.flv"
    labels = make_sample_stream.write_clip(path, width=320, height=180, fps=25, gop_s=1.0, seconds=12)
    return Clip(path, labels)


def require_media_tools() -> None:
    missing = [t for t in ("ffmpeg", "nginx") if shutil.which(t) is None]
    if not Path("/usr/lib/nginx/modules/ngx_rtmp_module.so").exists():
        missing.append("libnginx-mod-rtmp")
    if missing:
        pytest.fail(
            f"missing {', '.join(missing)}: install with `apt-get install ffmpeg nginx libnginx-mod-rtmp` (.ci/run does this)",
            pytrace=False,
        )


NGINX_CONF = """{user}
load_module /usr/lib/nginx/modules/ngx_rtmp_module.so;
daemon off; worker_processes 1; pid {d}/nginx.pid; error_log {d}/error.log info;
events {{ worker_connections 256; }}
rtmp {{ server {{ listen 127.0.0.1:{rtmp}; chunk_size 4096;
  application live {{ live on; record off; hls on; hls_path {d}/hls; hls_fragment 1s; hls_playlist_length 6s; }} }} }}
http {{ access_log {d}/access.log; client_body_temp_path {d}/tmp/body; proxy_temp_path {d}/tmp/proxy;
  fastcgi_temp_path {d}/tmp/fastcgi; uwsgi_temp_path {d}/tmp/uwsgi; scgi_temp_path {d}/tmp/scgi;
  types {{ application/vnd.apple.mpegurl m3u8; video/mp2t ts; }}
  server {{ listen 127.0.0.1:{http}; location /hls/ {{ root {d}; add_header Cache-Control no-cache; }}
    location /control {{ rtmp_control all; }} }} }}
"""


@dataclass(frozen=True)
class Nginx:
    rtmp_port: int
    http_port: int
    dir: Path

    def rtmp(self, name: str) -> str:
        return f"rtmp://127.0.0.1:{self.rtmp_port}/live/{name}"

    def hls(self, name: str) -> str:
        return f"http://127.0.0.1:{self.http_port}/hls/{name}.m3u8"

    @property
    def control(self) -> str:
        """nginx-rtmp's control module (drop / redirect / record)."""
        return f"http://127.0.0.1:{self.http_port}/control"


def start_nginx(d: Path) -> tuple[Nginx, subprocess.Popen[bytes]]:
    """Start nginx + libnginx-mod-rtmp in folder ``d`` on ephemeral 127.0.0.1 ports (also used by tools/bench/cluster.py).
    Errors: RuntimeError when it does not come up; the caller terminates the process."""
    require_media_tools()
    (d / "tmp").mkdir(parents=True, exist_ok=True)
    (d / "hls").mkdir(exist_ok=True)
    rtmp, http = free_port(), free_port()
    # As root, nginx's workers would run as `nobody` and could not read pytest's 0700 temp dirs.
    user = "user root root;" if os.geteuid() == 0 else ""
    (d / "nginx.conf").write_text(NGINX_CONF.format(d=d, rtmp=rtmp, http=http, user=user))
    proc = subprocess.Popen(["nginx", "-p", str(d), "-c", str(d / "nginx.conf")], stderr=subprocess.PIPE)
    try:
        wait_port(rtmp)
        wait_port(http)
    except TimeoutError:
        proc.kill()
        err = proc.stderr.read().decode() if proc.stderr else ""
        raise RuntimeError(f"nginx did not start: {err}") from None
    return Nginx(rtmp, http, d), proc


@pytest.fixture(scope="session")
def nginx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nginx]:
    """nginx + libnginx-mod-rtmp on 127.0.0.1 ephemeral ports (RTMP in, HLS out)."""
    server, proc = start_nginx(tmp_path_factory.mktemp("nginx"))
    yield server
    proc.terminate()
    proc.wait(10)


def publish(clip: Path, url: str, *, loop: bool = False, extra: list[str] | None = None) -> subprocess.Popen[bytes]:
    """Publish ``clip`` in real time with ffmpeg (-re), as OBS would."""
    require_media_tools()
    cmd = ["ffmpeg", "-nostdin", "-loglevel", "error", "-re"]
    if loop:
        cmd += ["-stream_loop", "-1"]
    cmd += ["-i", str(clip), "-c", "copy", *(extra or []), "-f", "flv", url]
    return subprocess.Popen(cmd, stdin=subprocess.DEVNULL)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def load_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# --- process exit ------------------------------------------------------------------------------------
# This one process loads torch, onnxruntime, onnx (protobuf), OpenCV and PyAV. On CI their native
# static destructors once crashed the interpreter at exit (SIGSEGV after "168 passed"), turning a
# green run red. Once every test has run and pytest has reported, exit without interpreter
# finalisation, keeping pytest's exit status. STREAMWATCH_TEST_FINALIZE=1 restores a normal exit.
_exit_status: list[int] = []


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _exit_status.append(int(exitstatus))


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    if _exit_status and os.environ.get("STREAMWATCH_TEST_FINALIZE") != "1":
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_exit_status[-1])


# --- NATS JetStream (cluster mode) ---------------------------------------------------------------


@pytest.fixture(scope="session")
def nats3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A 3-node JetStream cluster on 127.0.0.1 (tests/nats_cluster.py); nodes restarted if a test stopped them."""
    from nats_cluster import make_cluster

    cluster = make_cluster(tmp_path_factory.mktemp("nats3"), 3)
    cluster.start()
    cluster.wait_ready()
    yield cluster
    cluster.stop()
