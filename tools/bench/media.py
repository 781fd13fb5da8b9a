"""Benchmark helpers: a throwaway nginx-rtmp on 127.0.0.1 and ffmpeg publishers."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
from nats_cluster import free_port, wait_port

CONF = """{user}
load_module /usr/lib/nginx/modules/ngx_rtmp_module.so;
daemon off; worker_processes 1; pid {d}/nginx.pid; error_log {d}/error.log warn;
events {{ worker_connections 1024; }}
rtmp {{ server {{ listen 127.0.0.1:{port}; chunk_size 4096; application live {{ live on; record off; }} }} }}
"""


@contextlib.contextmanager
def nginx_rtmp() -> Iterator[int]:
    """Run nginx with the RTMP module; yields its RTMP port (rtmp://127.0.0.1:PORT/live/NAME)."""
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        port = free_port()
        user = "user root root;" if os.geteuid() == 0 else ""
        (d / "nginx.conf").write_text(CONF.format(d=d, port=port, user=user))
        proc = subprocess.Popen(["nginx", "-p", str(d), "-c", str(d / "nginx.conf")], stderr=subprocess.DEVNULL)
        try:
            wait_port(port)
            yield port
        finally:
            proc.terminate()
            proc.wait(10)


def publish(clip: Path, url: str, *, loop: bool = False, start: float = 0.0) -> subprocess.Popen[bytes]:
    """ffmpeg -re publisher (as OBS would), optionally looping and starting ``start`` seconds in."""
    seek = ["-ss", f"{start:.3f}"] if start else []
    looping = ["-stream_loop", "-1"] if loop else []
    cmd = ["ffmpeg", "-nostdin", "-loglevel", "error", *looping, *seek, "-re", "-i", str(clip), "-c", "copy", "-f", "flv", url]
    return subprocess.Popen(cmd, stdin=subprocess.DEVNULL)
