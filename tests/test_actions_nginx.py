"""Actions on a real nginx-rtmp (control module): publishers (ffmpeg -re) of a clip with a planted
off-site QR code, the daemon reading them over RTMP. A rule with ``action = "cut"`` drops the
publisher automatically, or only after a moderator's ``act`` over a real WebSocket; a dry run and a
show whose switch is off leave the publisher on air. The outage after a cut is the cut's, not a fault."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Nginx, publish, stop
from websockets.asyncio.client import connect

from streamwatch.app import Daemon
from streamwatch.config import load_settings
from streamwatch.events.model import ActionEvent, ActionStatus, AlertEvent, Event, HealthEvent
from streamwatch.report import build_report

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
from make_overlay_suite import Overlay, SuiteClip, write_clip  # noqa: E402

MOD = "moderator-secret-1"


@pytest.fixture(scope="module")
def qr_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20 s: a clean picture for 3 s, then an off-site QR code to the end (published in a loop)."""
    out = tmp_path_factory.mktemp("actions") / "qr.mp4"
    clip = SuiteClip("qr", "coffee", 640, 360, 10, 20, 12.0, (Overlay(3, 20, "qr", "https://evil.example/join?g=7", 120, "top-right"),))
    write_clip(clip, out)
    return out


def policy_with(tmp: Path, action: str) -> Path:
    """The shipped policy with ``action`` lines added to the QR rule."""
    shutil.copytree(ROOT / "models", tmp / "m")
    p = tmp / "m" / "policy.toml"
    text = p.read_text(encoding="utf-8")
    p.write_text(text.replace('[rule.when]\nqr = "offsite"', f'{action}\n[rule.when]\nqr = "offsite"', 1), encoding="utf-8")
    return p


def settings(tmp: Path, nginx: Nginx, policy: Path, streams: list[dict[str, Any]], **extra: Any) -> Any:
    return load_settings(
        None,
        {
            "data_dir": tmp / "d",
            "streams": streams,
            "ingest": {"open_timeout_s": 3, "read_timeout_s": 2, "backoff_max_s": 1},
            "analysis": {"policy": policy, "analyzers": ["qr"]},
            "actions": {"nginx": {"url": nginx.control}},
            **extra,
        },
    )


@pytest.fixture
def publishers() -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    procs: dict[str, subprocess.Popen[bytes]] = {}
    yield procs
    for p in procs.values():
        stop(p)


async def until(pred: Callable[[], Any], within: float, what: str) -> Any:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if got := pred():
            return got
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def of(events: list[Event], cls: type, stream: str) -> list[Any]:
    return [e for e in events if isinstance(e, cls) and e.stream == stream]


def test_an_automatic_cut_drops_the_publisher_a_dry_run_and_a_show_switched_off_do_not(
    nginx: Nginx, qr_clip: Path, tmp_path: Path, publishers: dict[str, subprocess.Popen[bytes]]
) -> None:
    policy = policy_with(tmp_path, 'action = "cut"\nauto = true')
    shows = {"cut": "on", "dry": "dry_run", "off": "off"}
    streams = [{"id": s, "source": nginx.rtmp(f"act-{s}"), "actions": mode} for s, mode in shows.items()]
    daemon = Daemon(settings(tmp_path, nginx, policy, streams), serve=False)
    for s in shows:
        publishers[s] = publish(qr_clip, nginx.rtmp(f"act-{s}"), loop=True)
    seen: dict[str, Any] = {}

    async def scenario() -> None:
        await daemon.ready.wait()
        events = lambda: daemon.store.events()  # noqa: E731
        actions = await until(lambda: (a := [e for e in events() if isinstance(e, ActionEvent)]) and len(a) >= 3 and a, 60, "3 actions")
        cut = next(a for a in actions if a.stream == "cut")
        seen["dropped_after"] = await until(lambda: publishers["cut"].poll() is not None and time.time() - cut.at, 10, "the drop")
        await until(lambda: any(h.caused_by == cut.id for h in of(events(), HealthEvent, "cut")), 15, "the outage")
        await asyncio.sleep(4)  # longer than an outage rule's 3 s
        seen["running"] = {s: publishers[s].poll() is None for s in shows}
        seen["events"] = events()
        daemon.stop()

    async def both() -> None:
        await asyncio.gather(daemon.run(), scenario())

    asyncio.run(both())
    evs = seen["events"]
    acts = {s: of(evs, ActionEvent, s) for s in shows}
    alerts = {s: of(evs, AlertEvent, s) for s in shows}
    for s in shows:
        assert [a.rule for a in alerts[s]] == ["qr_code"], s
        assert len(acts[s]) == 1 and acts[s][0].alert_id == alerts[s][0].id and acts[s][0].by == "policy" and acts[s][0].auto, s
    assert [a.status for a in (acts["cut"][0], acts["dry"][0], acts["off"][0])] == [
        ActionStatus.DONE,
        ActionStatus.DRY_RUN,
        ActionStatus.OFF,
    ]
    assert acts["cut"][0].target == "live/act-cut" and "1 publisher(s) dropped" in acts["cut"][0].detail
    assert seen["running"] == {"cut": False, "dry": True, "off": True}
    # the outage that follows is the cut's: marked, and no "stream down" alert
    down = [h for h in of(evs, HealthEvent, "cut") if h.state is not None and h.state.value in ("stalled", "reconnecting")]
    assert down and all(h.caused_by == acts["cut"][0].id for h in down)
    assert not [a for a in alerts["cut"] if a.rule == "stream_outage"]
    report = build_report("cut", evs, until=time.time())
    assert [(p.kind, p.detail) for p in report.periods if p.kind in ("cut", "outage")] == [("cut", f"action #{acts['cut'][0].id}")]
    assert report.outage_s == 0 and [a.status for a in report.actions] == [ActionStatus.DONE]


def test_a_confirm_first_cut_runs_when_a_moderator_acts_over_the_websocket(
    nginx: Nginx, qr_clip: Path, tmp_path: Path, publishers: dict[str, subprocess.Popen[bytes]]
) -> None:
    policy = policy_with(tmp_path, 'action = "cut"')
    streams = [{"id": "desk", "source": nginx.rtmp("act-desk")}]
    server = {"port": 0, "tokens": [{"name": "duty-mod", "role": "moderator", "secret": MOD}]}
    daemon = Daemon(settings(tmp_path, nginx, policy, streams, server=server))
    publishers["desk"] = publish(qr_clip, nginx.rtmp("act-desk"), loop=True)
    seen: dict[str, Any] = {}

    async def client() -> None:
        await daemon.ready.wait()
        assert daemon.server is not None
        async with connect(f"ws://127.0.0.1:{daemon.server.port}/ws?token={MOD}") as ws:
            await ws.recv()  # hello
            await ws.send(json.dumps({"type": "subscribe", "channels": ["alerts", "actions"], "since": 0}))
            got: list[dict[str, Any]] = []
            taken: list[dict[str, Any]] = []

            async def next_of(pred: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
                """The first message so far or to come that ``pred`` accepts (each is taken once)."""
                for m in got:
                    if pred(m) and m not in taken:
                        taken.append(m)
                        return m
                async with asyncio.timeout(60):
                    while True:
                        msg = json.loads(await ws.recv())
                        for m in msg["events"] if msg["type"] == "batch" else [msg]:
                            got.append(m)
                            if pred(m):
                                taken.append(m)
                                return m

            pending = await next_of(lambda m: m["type"] == "action")
            await asyncio.sleep(3)  # nothing happens until someone confirms
            seen["before"] = publishers["desk"].poll()
            await ws.send(json.dumps({"type": "act", "alert": pending["alert_id"], "ref": "x1"}))
            seen["acted"] = await next_of(lambda m: m["type"] == "acted")
            seen["done"] = await next_of(lambda m: m["type"] == "action" and m["status"] != "pending")
            await ws.send(json.dumps({"type": "act", "alert": pending["alert_id"], "ref": "x2"}))
            seen["again"] = await next_of(lambda m: m["type"] == "error")
            await ws.send(json.dumps({"type": "act", "alert": 10**9, "ref": "x3"}))
            seen["unknown"] = await next_of(lambda m: m["type"] == "error")
            seen["pending"], seen["got"] = pending, got
            seen["dropped"] = await until(lambda: publishers["desk"].poll() is not None, 10, "the drop")
        daemon.stop()

    async def both() -> None:
        await asyncio.gather(daemon.run(), client())

    asyncio.run(both())
    pending, acted, done = seen["pending"], seen["acted"], seen["done"]
    alert = next(m for m in seen["got"] if m["type"] == "alert")
    assert (
        pending["status"] == "pending" and pending["alert_id"] == alert["id"] and pending["by"] == "policy" and pending["rule"] == "qr_code"
    )
    assert seen["before"] is None  # still on air while pending
    assert acted["status"] == "done" and acted["alert_id"] == alert["id"] and acted["ref"] == "x1"
    assert done["id"] == acted["id"] and done["by"] == "duty-mod" and done["action"] == "cut" and done["target"] == "live/act-desk"
    assert seen["again"]["code"] == "action_refused" and seen["again"]["ref"] == "x2"
    assert seen["unknown"]["code"] == "unknown_alert"
    assert seen["dropped"]
