#!/usr/bin/env python3
"""Listen mode in the field's shape: N consecutive publishes by ffmpeg (``-re … -c copy -f flv``),
each received to the end, with the delay from the publisher's first packet (noted by a TCP relay in front
of the listen port) to the first sample (the first decoded frame), p50 and max.

Baseline: FFmpeg's own single-connection listener (``ingest.listen_relay = "ffmpeg"``), against the
managed nginx-rtmp relay (``"nginx"``, the default when installed). The field bar: 20 × 60 s
publishes all complete, first sample ≤ 1.5 s after the publisher's first packet. Run: ``python tools/bench/listen.py [--publishes 20]
[--seconds 60] [--relay nginx|ffmpeg|both]`` (the clip is generated once into artifacts/bench/;
20 × 60 s takes ~25 min per relay).
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tools")]

import make_sample_stream  # noqa: E402

from streamwatch.config import IngestConfig  # noqa: E402
from streamwatch.events.model import HealthEvent, StreamState  # noqa: E402
from streamwatch.ingest import Frame, FrameReader, parse_source  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class FirstPacket:
    """A TCP relay in front of the listen port that notes when each publisher's first byte arrives."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.firsts: list[float] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            client, _ = self.sock.accept()
            first = client.recv(65536)  # the RTMP handshake's C0+C1: the publisher's first packet
            self.firsts.append(time.monotonic())
            up = socket.create_connection(("127.0.0.1", self.upstream))
            up.sendall(first)
            for a, b in ((client, up), (up, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def run(relay: str, clip: Path, publishes: int, seconds: float, expected: int) -> dict[str, object]:
    port = free_port()
    url = f"rtmp://127.0.0.1:{port}/live/bench"
    proxy = FirstPacket(port)
    push = f"rtmp://127.0.0.1:{proxy.port}/live/bench"  # the publisher goes through the relay that notes its first packet
    cfg = IngestConfig(open_timeout_s=5, read_timeout_s=3, listen_relay=relay)  # type: ignore[arg-type]
    reader = FrameReader(parse_source(url, listen=True), "bench", cfg)
    items: list[tuple[float, Frame | HealthEvent]] = []
    thread = threading.Thread(target=lambda: items.extend((time.monotonic(), i) for i in reader), daemon=True)
    thread.start()
    time.sleep(1.5)
    firsts: list[float] = []
    complete = dropped = 0
    for k in range(publishes):
        start = time.monotonic()
        pub = subprocess.run(
            ["ffmpeg", "-nostdin", "-loglevel", "error", "-re", "-i", str(clip), "-c", "copy", "-f", "flv", push], capture_output=True
        )
        time.sleep(cfg.read_timeout_s + 2.0)  # the end of the publish is noticed, held frames drained
        got = [at for at, i in items if isinstance(i, Frame) and at >= start]
        if pub.returncode != 0:
            dropped += 1
        if len(got) >= expected:
            complete += 1
        packet = next((t for t in proxy.firsts if t >= start), start)
        first = got[0] - packet if got else float("nan")
        firsts.append(first)
        print(
            f"  {relay} publish {k + 1}: rc {pub.returncode}, {len(got)}/{expected} frames, "
            f"first sample {first:.2f}s after the publisher's first packet ({packet - start:.2f}s after ffmpeg started)",
            flush=True,
        )
    reader.stop()
    thread.join(15)
    ended = sum(1 for _, i in items if isinstance(i, HealthEvent) and i.state is StreamState.ENDED)
    return {"complete": complete, "dropped": dropped, "firsts": firsts, "ended": ended}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--publishes", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--relay", choices=["nginx", "ffmpeg", "both"], default="both")
    ap.add_argument("--audio", action="store_true", help="publish with AAC audio (OBS-like: audio tags come first)")
    a = ap.parse_args()
    clip = ROOT / "artifacts" / "bench" / f"listen_{a.seconds:g}s.flv"
    if not clip.exists():
        clip.parent.mkdir(parents=True, exist_ok=True)
        make_sample_stream.write_clip(clip, width=640, height=360, fps=25, gop_s=2.0, seconds=a.seconds)
    if a.audio:
        with_audio = clip.with_name(f"{clip.stem}_aac.flv")
        if not with_audio.exists():
            cmd = ["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-f", "lavfi", "-i", f"sine=frequency=440:duration={a.seconds:g}"]
            cmd += ["-i", str(clip), "-map", "0:a", "-map", "1:v", "-c:v", "copy", "-c:a", "aac", "-shortest", str(with_audio)]
            subprocess.run(cmd, check=True)
        clip = with_audio
    import av

    with av.open(str(clip)) as c:
        expected = sum(1 for _ in c.decode(video=0))
    results = {}
    for relay in ["ffmpeg", "nginx"] if a.relay == "both" else [a.relay]:
        results[relay] = run(relay, clip, a.publishes, a.seconds, expected)
    print(f"\n{a.publishes} × {a.seconds:g}s publishes (640x360 H.264, ffmpeg -re -c copy), {expected} frames each")
    for relay, r in results.items():
        firsts = [f for f in r["firsts"] if f == f]  # type: ignore[attr-defined]
        med = statistics.median(firsts) if firsts else float("nan")
        worst = max(firsts) if firsts else float("nan")
        print(
            f"{relay:>6}: complete {r['complete']}/{a.publishes}, publisher dropped {r['dropped']}, "
            f"first sample after the publisher's first packet: p50 {med:.2f}s max {worst:.2f}s, ended events {r['ended']}"
        )
    if "ffmpeg" in results and "nginx" in results:
        fb = [f for f in results["ffmpeg"]["firsts"] if f == f]  # type: ignore[attr-defined]
        nb = [f for f in results["nginx"]["firsts"] if f == f]  # type: ignore[attr-defined]
        if fb and nb:
            print(f"first-frame delay: nginx relay {statistics.median(fb) / statistics.median(nb):.1f}× faster than FFmpeg's listener")


if __name__ == "__main__":
    main()
