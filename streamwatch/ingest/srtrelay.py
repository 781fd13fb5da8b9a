"""SRT through a relay: the FFmpeg CLI (Debian's is built with libsrt) reads the source, PyAV reads its MPEG-TS.

PyAV's bundled FFmpeg has no SRT. For each connection streamwatch runs ``ffmpeg -i srt://… -c copy
-f mpegts pipe:1`` as a child process and PyAV demuxes its stdout (:class:`RelayPipe`, a file-like
object whose reads wait at most the read timeout). The child is the connection: when the publisher
stops, FFmpeg's SRT read fails, the child exits and the pipe ends; the reader then reconnects with
backoff like any live source, starting a new child. In listener mode (``srt://:PORT?mode=listener``)
the child waits for a caller; it is kept across open timeouts, so a publisher is never refused
between two of them. Stderr is kept (masked) for the error message. Blocking I/O.
"""

from __future__ import annotations

import functools
import logging
import os
import select
import shutil
import subprocess
import threading
from urllib.parse import parse_qsl, urlsplit

from streamwatch.config import IngestConfig
from streamwatch.errors import BadSource, SourceOpenError, SourceTimeout
from streamwatch.ingest.relay import _die_with_parent
from streamwatch.ingest.url import SourceSpec
from streamwatch.redact import mask_text

logger = logging.getLogger(__name__)

_STDERR_KEEP = 4000  # characters of the child's stderr kept for the error message
# The relay's own probe: it copies, so it only needs the programme's streams; PyAV probes after it.
# 1 s → 0.2 s took the first byte from 2.2 s to 1.2 s after the call (320x180 test publish, one VM).
RELAY_PROBE_US = 200_000


@functools.cache
def ffmpeg_protocols(ffmpeg: str) -> frozenset[str]:
    """The input protocols of the FFmpeg CLI at ``ffmpeg`` (empty when it is missing or does not run)."""
    path = shutil.which(ffmpeg)
    if path is None:
        return frozenset()
    try:
        out = subprocess.run([path, "-hide_banner", "-protocols"], capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return frozenset()
    lines = out.stdout.splitlines()
    if "Input:" not in lines:
        return frozenset()
    start = lines.index("Input:") + 1
    end = lines.index("Output:") if "Output:" in lines else len(lines)
    return frozenset(line.strip() for line in lines[start:end] if line.strip())


def check_relay(spec: SourceSpec, cfg: IngestConfig) -> None:
    """BadSource (one line) when the relay an SRT source needs is missing or was built without SRT."""
    if "srt" in ffmpeg_protocols(cfg.ffmpeg):
        return
    why = "is not installed" if shutil.which(cfg.ffmpeg) is None else "was built without SRT (libsrt)"
    raise BadSource(
        f"SRT source {spec.redacted} needs the FFmpeg CLI as a relay (PyAV's FFmpeg has no SRT), and {cfg.ffmpeg} {why}: "
        "install Debian's ffmpeg (apt-get install ffmpeg) or set ingest.ffmpeg"
    )


def is_listener(url: str) -> bool:
    """Whether an ``srt://`` URL asks streamwatch to wait for the publisher (``mode=listener``, or no host)."""
    parts = urlsplit(url)
    mode = dict(parse_qsl(parts.query)).get("mode", "")
    return mode == "listener" or (mode != "caller" and not parts.hostname)


class RelayPipe:
    """The child's stdout as the read-only file-like object PyAV reads; a read waits at most ``timeout`` s."""

    def __init__(self, fd: int, timeout: float) -> None:
        self._fd, self.timeout, self.received = fd, timeout, 0
        self._head = b""  # read ahead by :meth:`first` (given back by the next read)

    def first(self) -> bool:
        """Read ahead the first bytes: False at the end (the child exited without sending anything)."""
        self._head = os.read(self._fd, 65536)
        self.received += len(self._head)
        return bool(self._head)

    def wait(self, timeout: float) -> bool:
        """Whether data (or the end) is ready within ``timeout`` seconds."""
        return bool(select.select([self._fd], [], [], timeout)[0])

    def read(self, n: int = -1) -> bytes:
        if n <= 0:
            return b""
        if self._head:
            data, self._head = self._head[:n], self._head[n:]
            return data
        if not self.wait(self.timeout):
            raise TimeoutError(f"no data for {self.timeout:g}s")
        data = os.read(self._fd, n)
        self.received += len(data)
        return data


class SrtRelay:
    """One FFmpeg child reading ``spec`` and writing MPEG-TS to a pipe; :meth:`connect` (re)starts it."""

    def __init__(self, spec: SourceSpec, cfg: IngestConfig) -> None:
        check_relay(spec, cfg)
        self.spec, self.cfg = spec, cfg
        self.listener = is_listener(spec.url)
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr: list[str] = []
        self._pipe: RelayPipe | None = None
        self._drainer: threading.Thread | None = None

    def _start(self) -> None:
        url = self.spec.url
        if self.listener and "mode=" not in url:
            url += ("&" if "?" in url else "?") + "mode=listener"
        cmd = [self.cfg.ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error", "-fflags", "nobuffer"]
        cmd += [
            "-analyzeduration",
            str(RELAY_PROBE_US),
            "-i",
            url,
            "-map",
            "0",
            "-c",
            "copy",
            "-f",
            "mpegts",
            "-flush_packets",
            "1",
            "pipe:1",
        ]
        try:
            proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=_die_with_parent
            )
        except OSError as e:
            raise SourceOpenError(f"cannot start the SRT relay ({self.cfg.ffmpeg}) for {self.spec.redacted}: {e.strerror or e}") from None
        self._stderr = []
        self._drainer = threading.Thread(target=self._drain, args=(proc,), name="srt-relay-stderr", daemon=True)
        self._drainer.start()
        assert proc.stdout is not None
        self._proc, self._pipe = proc, RelayPipe(proc.stdout.fileno(), self.cfg.read_timeout_s)
        logger.debug("SRT relay started for %s (%s)", self.spec.redacted, "listener" if self.listener else "caller")

    def _drain(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            self._stderr.append(mask_text(line.decode(errors="replace").strip().replace(self.spec.url, self.spec.redacted)))
            del self._stderr[:-20]

    def error(self) -> str:
        """The child's last stderr lines (masked), or its exit status."""
        text = "; ".join(s for s in self._stderr if s)[-_STDERR_KEEP:]
        if text:
            return text
        return f"relay exited ({self._proc.returncode})" if self._proc is not None and self._proc.returncode is not None else ""

    def connect(self) -> RelayPipe:
        """The pipe of a child with data ready, waiting up to the open timeout.

        SourceTimeout when nothing came (a listener's child is kept for the next call: nobody called
        yet); SourceOpenError with FFmpeg's message when the child exited without data.
        """
        if self._proc is None or self._proc.poll() is not None or (self._pipe is not None and self._pipe.received):
            self.close()
            self._start()
        assert self._pipe is not None and self._proc is not None
        if not self._pipe.wait(self.cfg.open_timeout_s):
            if not self.listener:
                self.close()
            raise SourceTimeout(f"timed out opening {self.spec.redacted}")
        if self._pipe.first():
            return self._pipe
        try:
            self._proc.wait(3)
        except subprocess.TimeoutExpired:
            pass
        if self._drainer is not None:
            self._drainer.join(1)
        why = self.error() or "the relay exited"
        self.close()
        raise SourceOpenError(f"cannot open {self.spec.redacted}: {why}")

    def close(self) -> None:
        """Stop the child (the SRT connection closes) and release its pipes."""
        proc, self._proc, self._pipe = self._proc, None, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(3)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for f in (proc.stdout, proc.stderr):
            if f is not None:
                f.close()
