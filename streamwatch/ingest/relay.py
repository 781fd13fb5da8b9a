"""Listen mode's ingest point: a real RTMP server (nginx + libnginx-mod-rtmp) run by streamwatch.

FFmpeg's RTMP listener (``listen=1``) takes one connection, probes for seconds before the first
frame, and dropped healthy publishers in the field. Instead, streamwatch starts nginx with the RTMP
module on the listen address, one application named after the URL's (``rtmp://HOST:PORT/APP/KEY``),
and pulls the stream from it on loopback like any RTMP source. nginx accepts any number of
publishers one after another, keeps a waiting player (so the first packets of a new publish reach
the reader at once), and drops a publisher that sends nothing for the read timeout
(``drop_idle_publisher``), so a hung one gives way to the next. Its ``rtmp_stat`` page, on a
loopback HTTP port, tells whether someone is publishing: a read that ends with nobody publishing is
the publisher's unpublish (``ended``), not an outage. Blocking I/O; the process is stopped with the
reader.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
from pathlib import Path
from urllib.parse import urlsplit

from streamwatch.config import IngestConfig
from streamwatch.errors import SourceOpenError
from streamwatch.ingest.url import SourceKind, SourceSpec

logger = logging.getLogger(__name__)

_CONF = """{user}
load_module {module};
daemon off; worker_processes 1; pid {d}/nginx.pid; error_log {d}/error.log warn;
events {{ worker_connections 1024; }}
rtmp {{ server {{ listen {listen}; chunk_size 4096;
  application {app} {{ live on; record off; idle_streams on; drop_idle_publisher {idle}s; wait_key on;
    allow play 127.0.0.1; deny play all; }} }} }}
http {{ access_log off; client_body_temp_path {d}/tmp/body; proxy_temp_path {d}/tmp/proxy;
  fastcgi_temp_path {d}/tmp/fastcgi; uwsgi_temp_path {d}/tmp/uwsgi; scgi_temp_path {d}/tmp/scgi;
  server {{ listen 127.0.0.1:{stat}; location /stat {{ rtmp_stat all; }} }} }}
"""


def relay_available(cfg: IngestConfig) -> bool:
    """nginx and its RTMP module are installed (for ``listen_relay = "auto"``)."""
    return shutil.which(cfg.nginx) is not None and Path(cfg.nginx_rtmp_module).is_file()


def _die_with_parent() -> None:
    """In the child (Linux): SIGTERM when the thread that started it dies, so a daemon killed with
    kill -9 does not leave nginx holding the listen port for the next start."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RtmpRelay:
    """nginx-rtmp on the listen address of ``spec``; :attr:`pull` is the loopback source to read."""

    def __init__(self, spec: SourceSpec, cfg: IngestConfig) -> None:
        parts = urlsplit(spec.url)
        segs = [s for s in parts.path.split("/") if s]
        if len(segs) < 2 or (parts.port is None and parts.hostname is None):
            raise SourceOpenError(f"listen address {spec.redacted}: use rtmp://HOST:PORT/APP/KEY")
        self.app, self.key = segs[0], "/".join(segs[1:])
        host = parts.hostname or "0.0.0.0"
        self.port = parts.port or 1935
        self.listen = f"{'[' + host + ']' if ':' in host else host}:{self.port}"
        loop_host = "127.0.0.1" if host in ("0.0.0.0", "::", "localhost") else host
        self.pull = SourceSpec(f"rtmp://{loop_host}:{self.port}/{self.app}/{self.key}", SourceKind.RTMP)
        self.cfg, self.redacted = cfg, spec.redacted
        self.dir = Path(tempfile.mkdtemp(prefix="streamwatch-relay-"))
        self.stat_port = _free_port()
        while self.stat_port == self.port:
            self.stat_port = _free_port()
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> RtmpRelay:
        """Start nginx and wait until it listens. Raises SourceOpenError (with nginx's own message)."""
        (self.dir / "tmp").mkdir(exist_ok=True)
        user = "user root root;" if os.geteuid() == 0 else ""  # root's workers would run as nobody
        conf = _CONF.format(
            user=user,
            module=self.cfg.nginx_rtmp_module,
            d=self.dir,
            listen=self.listen,
            app=self.app,
            idle=max(1, round(self.cfg.read_timeout_s)),
            stat=self.stat_port,
        )
        (self.dir / "nginx.conf").write_text(conf)
        cmd = [self.cfg.nginx, "-p", str(self.dir), "-c", str(self.dir / "nginx.conf")]
        try:
            self._proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=_die_with_parent
            )
        except OSError as e:
            raise SourceOpenError(f"cannot start nginx for {self.redacted}: {e.strerror or e}") from None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                err = self._proc.stderr.read().decode(errors="replace").strip() if self._proc.stderr else ""
                self.close()
                raise SourceOpenError(f"nginx could not listen on {self.redacted}: {err[-400:]}")
            if self._stat() is not None:
                logger.info("RTMP relay (nginx) listening on %s", self.redacted)
                return self
            time.sleep(0.05)
        self.close()
        raise SourceOpenError(f"nginx did not start for {self.redacted}")

    def _stat(self) -> ET.Element | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.stat_port}/stat", timeout=2) as r:
                return ET.fromstring(r.read())
        except (urllib.error.URLError, OSError, ET.ParseError):
            return None

    def publishing(self) -> bool | None:
        """Whether a publisher is on the stream key now (None: nginx did not answer)."""
        root = self._stat()
        if root is None:
            return None
        for app in root.iter("application"):
            if app.findtext("name") != self.app:
                continue
            for stream in app.iter("stream"):
                if stream.findtext("name") == self.key and stream.find("publishing") is not None:
                    return True
        return False

    def close(self) -> None:
        """Stop nginx (publishers are disconnected) and remove its folder."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self._proc is not None and self._proc.stderr is not None:
            self._proc.stderr.close()
        shutil.rmtree(self.dir, ignore_errors=True)
