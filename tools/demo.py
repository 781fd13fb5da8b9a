#!/usr/bin/env python3
"""`make demo`: the daemon end to end on the embedded default, nothing to configure.

1. generates a labelled concert-like clip (planted: contact spam, an unauthorised brand, a sponsor
   that must stay silent, an off-site QR code, a black and a frozen segment);
2. starts ``streamwatch run`` as the RTMP endpoint (listen mode) with the default policy;
3. publishes the clip in real time with ffmpeg, as OBS would;
4. prints alerts live as they arrive over the WebSocket, and the console / overlay page URLs;
5. stops the daemon (SIGTERM), writes the HTML report from the store and the post-ready summary
   (artifacts/demo/summary/: picked frames, post text, fan-art collage).

Everything goes to artifacts/demo/ (the clip, the daemon's log and data, report.html). With ``--hold``
(``make demo ARGS=--hold``) the daemon keeps serving after the clip, so the overlay and moderator
pages stay open and OBS (or ffmpeg) can push another stream to the same RTMP address, until Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

from make_concert_clip import write_concert_clip  # noqa: E402

OUT = ROOT / "artifacts" / "demo"
TOKENS = {"moderator": "demo-moderator", "overlay": "demo-overlay", "submitter": "demo-fan"}
COLORS = {"low": "34", "medium": "33", "high": "31", "critical": "1;31"}


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def health(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
        return json.loads(r.read())  # type: ignore[no-any-return]


def show(ev: dict[str, Any], labels: dict[str, Any]) -> None:
    off = ev["offset"]
    stamp = f"{int(off) // 60:02d}:{off % 60:04.1f}"
    if ev["type"] == "alert":
        color = COLORS.get(ev["severity"], "0")
        text = f" «{ev['evidence']['text']}»" if ev.get("evidence", {}).get("text") else ""
        lag = ""
        if ev.get("received_at") and ev.get("evidence", {}).get("kind") != "health":
            lag = f"  ({max(0.0, time.time() - _epoch(ev['received_at'])):.2f}s after the frame arrived)"
        print(f"\033[{color}m[{stamp}] ALERT {ev['severity']:8s} {ev['rule']:20s}\033[0m {ev['message']}{text}{lag}", flush=True)
    elif ev["type"] == "health":
        what = ev.get("state") or f"{ev['kind']} {'started' if ev.get('active') else 'ended'}"
        reason = ev.get("reason") or ""
        print(f"[{stamp}] health {what}{': ' + reason if reason else ''}", flush=True)


def _epoch(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


async def watch(port: int, labels: dict[str, Any], done: asyncio.Event) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = []
    async with connect(f"ws://127.0.0.1:{port}/ws?token={TOKENS['moderator']}") as ws:
        await ws.recv()
        await ws.send(json.dumps({"type": "subscribe", "channels": ["alerts", "health"], "since": 0}))
        try:
            while True:
                msg = json.loads(await ws.recv())
                for ev in msg["events"] if msg["type"] == "batch" else [msg]:
                    if "id" in ev:
                        got.append(ev)
                        show(ev, labels)
        except ConnectionClosed:
            pass
    done.set()
    return got


def main() -> int:
    ap = argparse.ArgumentParser(description="streamwatch end to end on a generated concert clip (writes to artifacts/demo/)")
    ap.add_argument("--hold", action="store_true", help="keep the daemon serving after the clip, until Ctrl-C")
    args = ap.parse_args()
    if shutil.which("ffmpeg") is None:
        print("ffmpeg is needed to publish the demo stream: `make demo` installs it as root, or: apt-get install ffmpeg", file=sys.stderr)
        return 1
    OUT.mkdir(parents=True, exist_ok=True)
    print(f"writing to {OUT.relative_to(ROOT) if OUT.is_relative_to(ROOT) else OUT}/", flush=True)
    clip = OUT / "concert.mp4"
    if not clip.exists() or not Path(str(clip) + ".labels.json").exists():
        print(f"generating {clip} …", flush=True)
        write_concert_clip(clip, width=1280, height=720, fps=25)
    labels = json.loads(Path(str(clip) + ".labels.json").read_text())
    data = OUT / "data"
    shutil.rmtree(data, ignore_errors=True)
    rtmp = f"rtmp://127.0.0.1:{free_port()}/live/demo"
    cmd = [sys.executable, "-m", "streamwatch", "run", "--listen", "--source", rtmp, "--id", "demo", "--port", "0", "--data", str(data)]
    for role, secret in TOKENS.items():
        cmd += ["--token", f"{role}:{secret}"]
    log = OUT / "daemon.log"
    with log.open("w") as log_file:  # a file, not a pipe: an unread pipe would block the daemon's logging
        daemon = subprocess.Popen(cmd, stderr=log_file, stdout=subprocess.DEVNULL)
    port = None
    deadline = time.monotonic() + 120
    while port is None:
        m = re.search(r"serving http://127\.0\.0\.1:(\d+)", log.read_text())
        port = int(m.group(1)) if m else None
        if port is None and (daemon.poll() is not None or time.monotonic() > deadline):
            print(f"the daemon did not start; see {log}", file=sys.stderr)
            daemon.kill()
            return 1
        time.sleep(0.1)
    base = f"http://127.0.0.1:{port}"
    print(f"\noverlay (OBS browser source, 1920×1080): {base}/overlay?token={TOKENS['overlay']}&stream=demo")
    print(f"moderation console:                      {base}/console?token={TOKENS['moderator']}")
    print(f"moderator view (compact):                {base}/overlay?token={TOKENS['moderator']}&mode=mod")
    print(f"metrics: {base}/metrics   health: {base}/healthz\n", flush=True)
    deadline = time.monotonic() + 30
    while health(port)["streams"]["demo"]["state"] != "connecting" and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1.0)
    planted = ", ".join(f"{p['rule']}@{p['offset']:.0f}s" for p in labels["planted"])
    print(f"publishing {clip.name} in real time ({labels['duration']:.0f} s; planted: {planted}) …\n", flush=True)

    async def fan_image() -> None:
        """A fan sends a picture mid-show; the persona answers (local backend: no VLM configured)."""
        import base64

        import cv2
        import skimage.data

        await asyncio.sleep(12)
        img = cv2.imencode(".jpg", cv2.cvtColor(skimage.data.chelsea(), cv2.COLOR_RGB2BGR))[1].tobytes()
        async with connect(f"ws://127.0.0.1:{port}/ws?token={TOKENS['submitter']}") as ws:
            await ws.recv()
            await ws.send(json.dumps({"type": "subscribe", "channels": ["replies"]}))
            await ws.recv()
            msg = {"type": "submit", "stream": "demo", "user": "小明", "text": "送给星喵的猫猫", "image": base64.b64encode(img).decode()}
            await ws.send(json.dumps(msg))
            while True:
                ev = json.loads(await ws.recv())
                if ev.get("type") in ("reply", "rejected"):
                    what = ev.get("text") or ev.get("reason")
                    print(f"\033[35m[fan image] {ev['type']} to 小明: {what}\033[0m  (shown on the overlay)", flush=True)
                    return

    async def run() -> list[dict[str, Any]]:
        done = asyncio.Event()
        watcher = asyncio.create_task(watch(port, labels, done))
        fan = asyncio.create_task(fan_image())
        pub = await asyncio.create_subprocess_exec(
            "ffmpeg", "-nostdin", "-loglevel", "error", "-re", "-i", str(clip), "-c", "copy", "-f", "flv", rtmp
        )
        await pub.wait()
        await fan
        await asyncio.sleep(2.5)
        if args.hold:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            print(f"\nthe clip has ended; holding: the pages above keep working and {rtmp} takes another publisher", flush=True)
            print("(OBS: Settings → Stream → Custom, or ffmpeg -re -i FILE -c copy -f flv URL). Ctrl-C to stop.", flush=True)
            await stop.wait()
        if daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(watcher, 30)

    events = asyncio.run(run())
    daemon.wait(30)
    report = OUT / "report.html"
    subprocess.run([sys.executable, "-m", "streamwatch", "report", "demo", "--data", str(data), "-o", str(report)], check=True)
    alerts = [e for e in events if e["type"] == "alert"]
    caught = {p["rule"] for p in labels["planted"]} & {a["rule"] for a in alerts}
    print(f"\n{len(alerts)} alerts; planted events caught: {len(caught)}/{len(labels['planted'])}")
    print(f"report: {report}   (daemon log: {log})")
    summary = OUT / "summary"
    done = subprocess.run([sys.executable, "-m", "streamwatch", "summary", "demo", "--data", str(data), "-o", str(summary)],
                          capture_output=True, text=True)  # fmt: skip
    if done.returncode == 0:
        print(f"post-ready summary (图文摘要): {summary}/summary.html\n{done.stdout.split(chr(10) + chr(10))[0]}")
    else:
        print(f"summary failed: {done.stderr.strip()}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
