"""The daemon end to end on the labelled concert clip: `analyze` on the file, and `run` over RTMP
with a real publisher (ffmpeg -re), a reconnect, and a WebSocket client reading the alerts."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from conftest import free_port, require_media_tools, stop
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from streamwatch.cli import main
from streamwatch.events.model import AlertEvent
from streamwatch.events.store import EventStore

TOOLS = Path(__file__).resolve().parent.parent / "tools"
sys.path.insert(0, str(TOOLS))
from make_concert_clip import write_concert_clip  # noqa: E402


@pytest.fixture(scope="session")
def concert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    path = tmp_path_factory.mktemp("concert") / "concert.mp4"
    return path, write_concert_clip(path)


def check_alerts(alerts: list[tuple[str, float]], labels: dict[str, Any], shift: float = 0.0, tolerance: float = 1.01) -> None:
    """Every planted event: exactly one alert of its rule within ± one sampling interval; nothing else."""
    planted = [(p["rule"], p["offset"]) for p in labels["planted"]]
    for rule, offset in planted:
        hits = [o for r, o in alerts if r == rule]
        assert len(hits) == 1, f"{rule}: expected one alert, got {hits}"
        assert abs(hits[0] - offset - shift) <= tolerance, f"{rule}: alert at {hits[0]}, planted at {offset}"
    extra = [(r, o) for r, o in alerts if r not in {p[0] for p in planted} and r != "stream_outage"]
    assert not extra, f"unexpected alerts (sponsor or clean scenes): {extra}"


def test_analyze_a_recording_catches_every_planted_event(concert: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    clip, labels = concert
    out = tmp_path / "report.html"
    assert main(["analyze", str(clip), "-o", str(out), "--data", str(tmp_path / "data"), "-q"]) == 0
    store = EventStore(tmp_path / "data")
    alerts = [e for e in store.events("recording") if isinstance(e, AlertEvent)]
    check_alerts([(a.rule, a.offset) for a in alerts], labels)
    for a in alerts:
        if a.evidence.kind != "health":
            assert a.evidence.frame and store.frame_path(a.evidence.frame) is not None
            assert a.received_at is not None
    html = out.read_text()
    assert "contact_spam" in html and "qr_code" in html and "data:image/jpeg;base64," in html


def health(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
        return json.loads(r.read())  # type: ignore[no-any-return]


def test_run_over_rtmp_with_a_reconnect_and_a_websocket_client(concert: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    require_media_tools()
    clip, labels = concert
    rtmp = f"rtmp://127.0.0.1:{free_port()}/live/show"
    cmd = [sys.executable, "-m", "streamwatch", "run", "--listen", "--source", rtmp, "--id", "show", "--port", "0",
           "--token", "moderator:mod-secret-1", "--data", str(tmp_path / "data")]  # fmt: skip
    log = tmp_path / "daemon.log"
    with log.open("w") as log_file:  # a file, not a pipe: an unread pipe would block the daemon's logging
        daemon = subprocess.Popen(cmd, stderr=log_file, env={**os.environ, "STREAMWATCH_LOG_LEVEL": "INFO"})
    port = None
    deadline = time.monotonic() + 60
    while port is None and time.monotonic() < deadline:
        assert daemon.poll() is None, f"daemon exited: {log.read_text()[-2000:]}"
        m = re.search(r"serving http://127\.0\.0\.1:(\d+)", log.read_text())
        port = int(m.group(1)) if m else None
        time.sleep(0.1)
    assert port, "daemon did not report its port"
    for _ in range(100):  # (probing the RTMP port would itself count as a publisher)
        if health(port)["streams"]["show"]["state"] == "connecting":
            break
        time.sleep(0.1)
    else:
        pytest.fail("the daemon never reported the stream as connecting")
    time.sleep(1.0)

    received: list[dict[str, Any]] = []
    close_code: list[int | None] = []

    async def client() -> None:
        async with connect(f"ws://127.0.0.1:{port}/ws?token=mod-secret-1") as ws:
            await ws.recv()
            await ws.send(json.dumps({"type": "subscribe", "channels": ["alerts", "health"], "since": 0}))
            try:
                while True:
                    msg = json.loads(await ws.recv())
                    received.extend(e for e in (msg["events"] if msg["type"] == "batch" else [msg]) if "id" in e)
            except ConnectionClosed as e:
                close_code.append(e.rcvd.code if e.rcvd else None)

    ff = ["ffmpeg", "-nostdin", "-loglevel", "error"]
    part1 = subprocess.Popen([*ff, "-re", "-i", str(clip), "-t", "36", "-c", "copy", "-f", "flv", rtmp])
    part2 = None

    async def scenario() -> None:
        nonlocal part2
        task = asyncio.create_task(client())
        await asyncio.to_thread(part1.wait, 90)
        await asyncio.sleep(4)  # the publisher is away: an outage
        for _ in range(100):  # the listener re-arms once the daemon has noticed (read timeout)
            if (await asyncio.to_thread(health, port))["streams"]["show"]["state"] in ("reconnecting", "ended"):
                break
            await asyncio.sleep(0.2)
        await asyncio.sleep(1.0)
        part2 = await asyncio.to_thread(subprocess.Popen, [*ff, "-ss", "36", "-re", "-i", str(clip), "-c", "copy", "-f", "flv", rtmp])
        await asyncio.to_thread(part2.wait, 90)
        await asyncio.sleep(4)  # let the last frames through analysis
        daemon.send_signal(signal.SIGTERM)
        await asyncio.wait_for(task, 30)

    try:
        asyncio.run(scenario())
        assert daemon.wait(30) == 0
    finally:
        stop(part1)
        if part2 is not None:
            stop(part2)
        if daemon.poll() is None:
            daemon.kill()
    assert close_code == [1001]  # going away on SIGTERM
    alerts = [e for e in received if e["type"] == "alert"]
    lives = [e for e in received if e["type"] == "health" and e.get("state") == "live"]
    assert len(lives) == 2 and lives[1].get("gap_s") is None  # the publisher left: `ended`, not an outage
    assert [e for e in received if e.get("state") == "ended" and lives[0]["id"] < e["id"] < lives[1]["id"]]
    start = lives[0]["offset"]  # stream offset when the publisher arrived (clip time 0)
    back = lives[1]["offset"]  # stream offset when the publisher came back (clip time 36)
    first = [(a["rule"], a["offset"] - start) for a in alerts if a["offset"] < back - 0.5]
    second = [(a["rule"], a["offset"] - back + 36) for a in alerts if a["offset"] >= back - 0.5 and a["rule"] != "stream_outage"]
    check_alerts(first + second, labels, tolerance=1.6)
    outages = [a["offset"] - start for a in alerts if a["rule"] == "stream_outage" and a["offset"] <= back]
    assert outages == []  # the planted reconnect (clip time 36) is an unpublish and a new publish, not an outage
    # (the publisher leaving at the very end is an outage too, if it lasts ≥ 3 s before SIGTERM)
    ids = [e["id"] for e in received]
    assert ids == sorted(set(ids))  # in order, no duplicates
    for a in alerts:
        assert a["received_at"] <= a["at"]


def test_policy_hot_reload_keeps_the_previous_policy_on_a_broken_edit(concert: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    import shutil

    from streamwatch.app import Daemon
    from streamwatch.config import load_settings
    from streamwatch.events.model import HealthEvent, HealthKind

    clip, _ = concert
    shutil.copytree(TOOLS.parent / "models", tmp_path / "m")
    policy = tmp_path / "m" / "policy.toml"
    good = policy.read_text()
    settings = load_settings(
        None,
        {
            "data_dir": tmp_path / "d",
            "streams": [{"id": "s", "source": str(clip)}],
            "ingest": {"realtime": True},
            "analysis": {"policy": policy, "reload_s": 0.2, "analyzers": ["qr"]},
        },
    )
    daemon = Daemon(settings, serve=False)
    seen: dict[str, Any] = {}

    async def scenario() -> None:
        await daemon.ready.wait()
        rules_before = [r.id for r in daemon.engine.policy.rules]
        await asyncio.sleep(0.5)
        await asyncio.to_thread(policy.write_text, good.replace('severity = "high"', 'severity = "urgent"', 1))
        await asyncio.sleep(1.0)
        seen["kept"] = [r.id for r in daemon.engine.policy.rules] == rules_before
        await asyncio.to_thread(policy.write_text, good.replace('id = "gambling"', 'id = "gambling_promo"'))
        await asyncio.sleep(1.0)
        seen["after"] = [r.id for r in daemon.engine.policy.rules]
        daemon.stop()

    async def both() -> None:
        await asyncio.gather(daemon.run(), scenario())

    asyncio.run(both())
    assert seen["kept"] is True
    assert "gambling_promo" in seen["after"] and "gambling" not in seen["after"]
    store = EventStore(tmp_path / "d")
    config = [e for e in store.events("s") if isinstance(e, HealthEvent) and e.kind is HealthKind.CONFIG]
    line = good[: good.index('severity = "high"')].count("\n") + 1  # the broken line
    assert len(config) == 1 and "previous policy kept" in config[0].reason and f"severity (line {line})" in config[0].reason


def test_a_static_scene_costs_one_analysis_per_ttl_not_one_per_sample(tmp_path: Path) -> None:
    from streamwatch.app import Daemon
    from streamwatch.config import load_settings

    clip = tmp_path / "static.mp4"
    write_concert_clip(clip, timeline=((40, "still", "coffee", "关注主播 加微信 xiaomei88 领福利", "", "contact_spam"),))
    settings = load_settings(
        None,
        {
            "data_dir": tmp_path / "d",
            "streams": [{"id": "s", "source": str(clip)}],
            "sampling": {"heartbeat_s": 4},  # keep a frame every 4 s although nothing changes
        },
    )
    kept: list[float] = []
    daemon = Daemon(settings, serve=False, on_analyzed=lambda _s, _l: kept.append(1.0))
    asyncio.run(daemon.run())
    assert len(kept) >= 8  # frames that reached analysis (first + heartbeats)
    # one whole-frame model run; the blinking badge's other state once by region (its tiles only), the rest cache hits
    c = daemon.cascade
    assert c.frames - c.regional == 1 and c.regional <= 1 and c.hits == len(kept) - c.frames
    store = EventStore(tmp_path / "d")
    assert [e.rule for e in store.events("s") if isinstance(e, AlertEvent)] == ["contact_spam"]  # cooldown still applies
    metrics = daemon.metrics.registry
    assert metrics.get_sample_value("streamwatch_cache_lookups_total", {"result": "hit"}) == c.hits


def test_each_stream_can_have_its_own_policy(concert: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    import shutil

    from streamwatch.app import Daemon
    from streamwatch.config import load_settings

    clip, _ = concert
    shutil.copytree(TOOLS.parent / "models", tmp_path / "m")
    lenient = tmp_path / "m" / "lenient.toml"
    text = (tmp_path / "m" / "policy.toml").read_text()
    lenient.write_text(text.replace('ocr = "contact"', 'ocr = "gambling"'))  # this show tolerates contact captions
    settings = load_settings(
        None,
        {
            "data_dir": tmp_path / "d",
            "streams": [{"id": "strict", "source": str(clip)}, {"id": "lenient", "source": str(clip), "policy": lenient}],
            "analysis": {"analyzers": ["ocr"]},
        },
    )
    asyncio.run(Daemon(settings, serve=False).run())
    store = EventStore(tmp_path / "d")
    rules = {sid: {e.rule for e in store.events(sid) if isinstance(e, AlertEvent)} for sid in ("strict", "lenient")}
    assert "contact_spam" in rules["strict"] and "contact_spam" not in rules["lenient"]
    assert "unauthorized_brand" in rules["strict"] and "unauthorized_brand" in rules["lenient"]
