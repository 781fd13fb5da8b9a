"""The moderation console (/console) in real headless Chromium, and its HTTP endpoints (/streams,
/streams/{id}/frame.jpg, /models, /static/…): two moderators, the keyboard flow, live review, filters,
the stream wall, reconnect without duplicates, audience replies, both screen sizes."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from conftest import Nginx, free_port, require_media_tools, stop
from evserver import TOKENS, EchoResponder, ServerThread, alert, health
from make_concert_clip import write_concert_clip
from skimage import data as skdata
from test_full_disk import small_disk  # noqa: F401  (a fixture: a small tmpfs to fill)
from test_overlay import ARTIFACTS, CHROMIUM, FLAGS, submit_image
from websockets.asyncio.client import connect

from streamwatch.analysis.model import AnalyzedFrame, FrameAnalysis
from streamwatch.events.model import AlertEvent, Evidence, HealthKind, ReviewEvent, SceneEvent, Severity, StreamState

MOD2 = "moderator-secret-2"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's Chromium through Playwright, launched as the overlay tests do."""
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is not installed: apt-get install chromium (the .ci/run script does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        yield b
        b.close()


def get(port: int, path: str, token: str | None = None) -> tuple[int, str, bytes]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read()


def analysed(sid: str, offset: float, photo: str = "astronaut", size: tuple[int, int] = (960, 540)) -> AnalyzedFrame:
    rgb = cv2.resize(np.asarray(getattr(skdata, photo)())[..., :3], size, interpolation=cv2.INTER_AREA)
    now = time.time()
    return AnalyzedFrame(FrameAnalysis(sid, offset, now, now, (), size[0], size[1]), np.ascontiguousarray(rgb))


def evidence_frame(s: ServerThread, sid: str = "s1") -> str:
    bgr = cv2.resize(cv2.cvtColor(skdata.coffee(), cv2.COLOR_RGB2BGR), (640, 360))
    return s.store.save_image(sid, cv2.imencode(".jpg", bgr)[1].tobytes())


def test_console_endpoints_auth_limits_and_bad_input(tmp_path: Path) -> None:
    frames: dict[str, AnalyzedFrame] = {}
    with ServerThread(tmp_path / "d", latest=frames.get) as s:
        p = s.port
        status, ctype, body = get(p, "/console")
        assert status == 200 and ctype.startswith("text/html") and b"/static/console.js" in body
        for name in ("console.js", "console-wall.js", "console-panels.js", "console-i18n.js", "console.css"):
            status, ctype, body = get(p, f"/static/{name}")
            assert status == 200 and ("javascript" in ctype or "css" in ctype) and len(body) > 500, name
        for bad in ("/static/../http.py", "/static/overlay.html", "/static/nope.js", "/static/%2e%2e%2fconsole.py", "/static/"):
            assert get(p, bad)[0] == 404, bad
        page = get(p, "/console")[2].decode()
        links = re.findall(r'(?:src|href)="([^"]*)"', page)
        assert links and all(u.startswith("/static/") or u == "data:," for u in links), links  # nothing from elsewhere

        assert get(p, "/streams")[0] == 401
        assert get(p, "/streams", TOKENS["overlay"])[0] == 403
        assert get(p, "/streams", TOKENS["submitter"])[0] == 403
        assert get(p, "/streams", "wrong-secret")[0] == 401
        s.publish(health("s1", 0.0, StreamState.LIVE))
        s.publish(health("s2", 0.0, StreamState.RECONNECTING, reason="read timeout"))
        status, ctype, body = get(p, "/streams", TOKENS["moderator"])
        assert status == 200 and ctype == "application/json"
        streams = {x["id"]: x for x in json.loads(body)["streams"]}
        assert set(streams) == {"s1", "s2"}
        assert streams["s1"]["state"] == "live" and streams["s1"]["frame"] is None and streams["s1"]["for_s"] >= 0
        assert streams["s2"]["state"] == "reconnecting" and streams["s2"]["reason"] == "read timeout"
        assert get(p, f"/streams?token={TOKENS['admin']}")[0] == 200  # the token in the query, as <img> sends it

        assert get(p, "/streams/s1/frame.jpg", TOKENS["moderator"])[0] == 404  # no analysed frame yet
        frames["s1"] = analysed("s1", 12.5)
        status, ctype, body = get(p, "/streams/s1/frame.jpg", TOKENS["moderator"])
        assert status == 200 and ctype == "image/jpeg"
        img = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR)
        assert img.shape == (360, 640, 3)  # long side ≤ 640
        assert get(p, "/streams/s1/frame.jpg", TOKENS["moderator"])[2] == body  # encoded once per frame
        assert json.loads(get(p, "/streams", TOKENS["moderator"])[2])["streams"][0]["frame"]["offset"] == 12.5
        assert get(p, "/streams/s1/frame.jpg")[0] == 401
        assert get(p, "/streams/s1/frame.jpg", TOKENS["overlay"])[0] == 403
        assert get(p, "/streams/nope/frame.jpg", TOKENS["moderator"])[0] == 404
        for bad in ("/streams/s1", "/streams/s1/other.png", "/streams/a%20b/frame.jpg", "/streams/" + "x" * 65 + "/frame.jpg",
                    "/streams//frame.jpg"):  # fmt: skip
            status, ctype, body = get(p, bad, TOKENS["moderator"])
            assert status == 400 and "error" in json.loads(body), bad

        assert get(p, "/models", TOKENS["moderator"])[0] == 403
        assert get(p, "/models")[0] == 401
        assert get(p, "/models", TOKENS["admin"])[0] == 503  # no VLM tier behind this server


def layout_ok(page: Any) -> None:
    """Everything on screen: no sideways scrolling, the wall, the queue and the review buttons visible."""
    vw, vh = page.viewport_size["width"], page.viewport_size["height"]
    assert page.evaluate("document.documentElement.scrollWidth") <= vw
    for sel in ("#wall .tile", "#alerts .arow", "#d-actions .confirm", "#ev-img", "#filters"):
        box = page.locator(sel).first.bounding_box()
        assert box is not None and box["width"] > 0, sel
        assert box["x"] >= 0 and box["x"] + box["width"] <= vw + 1 and box["y"] + box["height"] <= vh + 1, (sel, box)


def rows(page: Any) -> list[int]:
    return page.eval_on_selector_all("#alerts .arow:not([hidden])", "els => els.map(e => Number(e.dataset.id))")  # type: ignore[no-any-return]


def test_two_moderators_review_filter_wall_and_resume(browser, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ARTIFACTS.mkdir(exist_ok=True)
    port = free_port()
    data = tmp_path / "d"
    frames: dict[str, AnalyzedFrame] = {"s1": analysed("s1", 3.0)}
    s = ServerThread(data, port=port, latest=frames.get, responder=EchoResponder())
    try:
        s.publish(health("s1", 0.0, StreamState.LIVE))
        s.publish(health("s2", 0.0, StreamState.CONNECTING))
        old = s.publish(alert("s2", 2.0, "unauthorized_brand", Severity.HIGH, message="history: before the consoles opened"))
        a = browser.new_page(viewport={"width": 1280, "height": 720})
        b = browser.new_page(viewport={"width": 1920, "height": 1080})
        errors: list[str] = []
        for page in (a, b):
            page.on("pageerror", lambda e: errors.append(str(e)))
        a.goto(f"http://127.0.0.1:{port}/console?token={TOKENS['moderator']}")
        b.goto(f"http://127.0.0.1:{port}/console?token={MOD2}")
        for page in (a, b):
            page.wait_for_selector("body[data-state=connected]", timeout=15_000)
            page.wait_for_selector(f".arow[data-id='{old.id}']", timeout=10_000)  # history replayed
        assert a.inner_text("#brand") == "streamwatch 审核台"  # zh-CN by default
        other = browser.new_page(viewport={"width": 1280, "height": 720})
        other.goto(f"http://127.0.0.1:{port}/console?token={TOKENS['overlay']}")
        other.wait_for_selector("body[data-state=error]", timeout=10_000)  # an overlay token is not a desk's
        assert other.inner_text("#conn") == "需要审核员或管理员令牌" and other.locator("#alerts .arow").count() == 0
        other.close()

        frame = evidence_frame(s)
        box = (200, 60, 440, 150)
        ocr = Evidence(kind="ocr", text="加微信 xiaomei88", bbox=box, frame=frame)
        qr = Evidence(kind="qr", text="https://evil.example/join", bbox=(20, 20, 120, 120), frame=frame)
        a1 = s.publish(alert("s1", 10.0, "contact_spam", Severity.HIGH, evidence=ocr))
        a2 = s.publish(alert("s2", 11.0, "qr_code", Severity.MEDIUM, evidence=qr))
        a3 = s.publish(
            alert("s1", 12.0, "nudity", Severity.CRITICAL, evidence=Evidence(kind="detection", bbox=(300, 100, 500, 340), frame=frame))
        )
        a4 = s.publish(alert("s1", 13.0, "contact_spam", Severity.LOW, message="low one"))
        for page in (a, b):
            page.wait_for_selector(f".arow[data-id='{a4.id}']", timeout=10_000)
            assert rows(page) == [a4.id, a3.id, a2.id, a1.id, old.id]  # newest first
            assert page.get_attribute("#detail-body", "data-id") == str(a4.id)  # follows the newest
            assert page.get_attribute("body", "data-chimes") == "2"  # the live high + critical, not the history
            page.wait_for_function("document.title.startsWith('(3) ')", timeout=2_000)  # high/critical pending: history + a1 + a3
        assert a.get_attribute(f".arow[data-id='{a3.id}']", "class") == "arow sev-critical"

        # keyboard: j j k → a3; n, a note, Enter; c confirms it; the other console sees it within a second
        a.keyboard.press("j")
        a.keyboard.press("j")
        a.keyboard.press("k")
        assert a.get_attribute("#detail-body", "data-id") == str(a3.id)
        a.keyboard.press("n")
        a.keyboard.type("露点 已截图")
        a.keyboard.press("Enter")
        a.keyboard.press("c")
        b.wait_for_selector(f".arow[data-id='{a3.id}'][data-review=confirm]", timeout=1_000)
        a.wait_for_selector(f".arow[data-id='{a3.id}'][data-review=confirm]", timeout=1_000)
        assert "moderator-client" in b.inner_text(f".arow[data-id='{a3.id}'] .rv")
        reviews = [e for e in s.store.events() if isinstance(e, ReviewEvent)]
        assert [(r.alert_id, r.action.value, r.by, r.note) for r in reviews] == [(a3.id, "confirm", "moderator-client", "露点 已截图")]
        for page in (a, b):
            page.wait_for_function("document.title.startsWith('(2) ')", timeout=5_000)
        assert a.get_attribute("#detail-body", "data-id") == str(a2.id)  # moved on to the next one
        b.click(f".arow[data-id='{a1.id}']")
        b.click("#d-actions .dismiss")
        a.wait_for_selector(f".arow[data-id='{a1.id}'][data-review=dismiss]", timeout=2_000)

        # the evidence frame with the detection box where the bbox says (in the frame's pixels)
        a.click(f".arow[data-id='{a1.id}']")
        a.wait_for_function("document.getElementById('ev-img').complete && document.getElementById('ev-img').naturalWidth === 640")
        a.wait_for_function(f"document.getElementById('ev-box').getAttribute('x') === '{box[0]}'")
        img = a.locator("#ev-img").bounding_box()
        rect = a.locator("#ev-box").bounding_box()
        sx, sy = img["width"] / 640, img["height"] / 360
        for got, want in ((rect["x"], img["x"] + box[0] * sx), (rect["y"], img["y"] + box[1] * sy),
                          (rect["width"], (box[2] - box[0]) * sx), (rect["height"], (box[3] - box[1]) * sy)):  # fmt: skip
            assert abs(got - want) <= 3, (rect, img)
        assert "加微信 xiaomei88" in a.inner_text("#d-text")
        a.click(f".arow[data-id='{a2.id}']")
        assert "https://evil.example/join" in a.inner_text("#d-text") and "二维码" in a.inner_text("#d-text")

        # filters (on the other console)
        b.select_option("#f-stream", "s2")
        assert rows(b) == [a2.id, old.id]
        b.select_option("#f-stream", "")
        b.select_option("#f-severity", "high")
        assert rows(b) == [a3.id, a1.id, old.id]
        b.select_option("#f-severity", "")
        b.select_option("#f-rule", "contact_spam")
        assert rows(b) == [a4.id, a1.id]
        b.select_option("#f-rule", "")
        b.check("#f-pending")
        assert rows(b) == [a4.id, a2.id, old.id]
        b.uncheck("#f-pending")

        # stream wall: the latest analysed frame, refreshed; outage and back to live
        a.wait_for_selector("#wall .tile[data-stream=s1][data-state=live][data-frame-offset='3']", timeout=5_000)
        frames["s1"] = analysed("s1", 5.0, "chelsea")
        a.wait_for_selector("#wall .tile[data-stream=s1][data-frame-offset='5']", timeout=3_000)
        assert "待审 1" in a.inner_text("#wall .tile[data-stream=s1] .pend")  # a4 (a1 dismissed, a3 confirmed)
        s.publish(health("s1", 6.0, None, kind=HealthKind.BLACK, active=True, reason="black picture"))
        a.wait_for_selector("#wall .tile[data-stream=s1][data-black=true]", timeout=3_000)
        assert "黑屏" in a.inner_text("#wall .tile[data-stream=s1] .badge")  # a black picture is obvious at a glance
        s.publish(health("s1", 9.0, None, kind=HealthKind.BLACK, active=False, duration_s=3.0))
        a.wait_for_selector("#wall .tile[data-stream=s1][data-black=false]", timeout=3_000)
        s.publish(health("s2", 20.0, StreamState.LIVE))
        a.wait_for_selector("#wall .tile[data-stream=s2][data-state=live]", timeout=3_000)
        s.publish(health("s2", 25.0, StreamState.RECONNECTING, reason="publisher gone"))
        a.wait_for_selector("#wall .tile[data-stream=s2][data-state=outage]", timeout=3_000)
        assert "中断" in a.inner_text("#wall .tile[data-stream=s2] .badge")
        # a third stream: its analysis fails for a while, its work stops on a bug and restarts, then it ends
        s.publish(health("s3", 0.0, StreamState.LIVE))
        a.wait_for_selector("#wall .tile[data-stream=s3][data-state=live]", timeout=3_000)
        s.publish(health("s3", 2.0, None, kind=HealthKind.ANALYSIS, active=True, reason="5 frames in a row skipped"))
        a.wait_for_function("document.querySelector('#wall .tile[data-stream=s3] .badge').textContent.includes('分析失败')", timeout=3_000)
        b.wait_for_function("document.querySelector('#wall .tile[data-stream=s3] .badge').textContent.includes('分析失败')", timeout=3_000)
        s.publish(health("s3", 4.0, None, kind=HealthKind.ANALYSIS, active=False, reason="after 9 skipped frames"))
        full = "cannot store events: database or disk is full"  # the data disk filled: a badge while it lasts
        s.publish(health("s3", 4.2, None, kind=HealthKind.STORAGE, active=True, reason=full))
        a.wait_for_function("document.querySelector('#wall .tile[data-stream=s3] .badge').textContent.includes('存储失败')", timeout=3_000)
        s.publish(health("s3", 4.5, None, kind=HealthKind.STORAGE, active=False, duration_s=0.3, reason="writes work again"))
        a.wait_for_function("!document.querySelector('#wall .tile[data-stream=s3] .badge').textContent.includes('存储失败')", timeout=3_000)
        s.publish(health("s3", 5.0, StreamState.STOPPED, reason="internal error (ValueError: x); watching again in 1 s"))
        a.wait_for_selector("#wall .tile[data-stream=s3][data-state=stopped]", timeout=3_000)
        assert "已停止" in a.inner_text("#wall .tile[data-stream=s3] .badge")
        assert "watching again" in (a.get_attribute("#wall .tile[data-stream=s3]", "title") or "")
        assert "分析失败" not in a.inner_text("#wall .tile[data-stream=s3] .badge")
        s.publish(health("s3", 7.0, StreamState.LIVE))
        s.publish(health("s3", 9.0, StreamState.ENDED, reason="stopped by the operator"))
        a.wait_for_selector("#wall .tile[data-stream=s3][data-state=ended]", timeout=3_000)
        b.click("#tabs button[data-tab=timeline]")
        b.select_option("#tl-stream", "s3")
        b.wait_for_selector("#tl-body svg[data-stream=s3] .tl-period[data-kind=gap]", timeout=5_000)  # 5-7 s: not watched
        b.click("#tabs button[data-tab=queue]")

        # a submitter's image and its reply in the Audience panel
        reply = submit_image(port, "小明", "看我的猫")
        b.click("#tabs button[data-tab=audience]")
        b.wait_for_selector(f"#aud-list .sub[data-id='{reply['id']}']", timeout=10_000)
        b.wait_for_function(f"document.querySelector(\"#aud-list .sub[data-id='{reply['id']}'] img\").naturalWidth > 0", timeout=10_000)
        assert "小明" in b.inner_text(f"#aud-list .sub[data-id='{reply['id']}']") and "picture" in b.inner_text("#aud-list")
        b.click("#tabs button[data-tab=timeline]")
        b.select_option("#tl-stream", "s2")
        b.wait_for_selector("#tl-body svg[data-stream=s2] .tl-period[data-kind=outage]", timeout=5_000)
        b.wait_for_selector(f"#tl-body .tl-alert[data-id='{a2.id}']", timeout=5_000)
        s.publish(
            SceneEvent(stream="s1", at=time.time(), offset=8.0, tags=("setting=indoor_stage", "outfit=idol_dress"), model="qwen3-vl-4b")
        )
        b.select_option("#tl-stream", "s1")
        b.wait_for_selector("#tl-body svg[data-stream=s1] .tl-period[data-kind=black]", timeout=5_000)
        b.wait_for_selector("#tl-body svg[data-stream=s1] .tl-scene", timeout=5_000)
        assert "setting=indoor_stage" in b.text_content("#tl-body .tl-scene title")
        assert b.get_attribute("#tl-report", "href").startswith("/report/s1?format=html&token=")
        b.click("#tabs button[data-tab=search]")
        b.fill("#search-q", "xiaomei")
        b.click("#search-form button")
        b.wait_for_selector("#search-mode[data-mode=events]", timeout=5_000)  # no encoder: OCR text of events
        assert b.locator("#search-results .hit").count() == 1
        b.click("#tabs button[data-tab=queue]")
        b.click("#lang")
        assert b.inner_text("#d-actions .confirm").startswith("Confirm") and b.inner_text("#brand") == "streamwatch console"

        a.click(f".arow[data-id='{a1.id}']")
        a.wait_for_function("document.getElementById('ev-img').naturalWidth === 640")
        b.click(f".arow[data-id='{a1.id}']")
        b.wait_for_function("document.getElementById('ev-img').naturalWidth === 640")
        for page in (a, b):
            layout_ok(page)
        a.screenshot(path=str(ARTIFACTS / "console-1280x720.png"))
        b.screenshot(path=str(ARTIFACTS / "console-1920x1080.png"))

        # the server goes away and comes back: resume with since, nothing twice, nothing lost
        s.close()
        a.wait_for_selector("body[data-state=reconnecting]", timeout=10_000)
        s = ServerThread(data, port=port, latest=frames.get)
        a5 = s.publish(alert("s2", 40.0, "qr_code", Severity.CRITICAL, message="after the restart"))
        a.wait_for_selector(f".arow[data-id='{a5.id}']", timeout=20_000)
        assert rows(a) == [a5.id, a4.id, a3.id, a2.id, a1.id, old.id]
        assert a.get_attribute(f".arow[data-id='{a3.id}']", "data-review") == "confirm"
        assert a.get_attribute("body", "data-chimes") == "3"
        assert not errors, errors
        a.close()
        b.close()
    finally:
        s.close()


def test_alerts_the_full_disk_could_not_store_are_shown_at_once_and_once(browser, small_disk, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    disk = small_disk(8)
    port = free_port()
    s = ServerThread(disk.path / "d", port=port)
    try:
        s.publish(health("s1", 0.0, StreamState.LIVE))
        first = s.publish(alert("s1", 1.0, "contact_spam", Severity.HIGH, message="stored before the disk filled"))
        page = browser.new_page(viewport={"width": 1280, "height": 720})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(f"http://127.0.0.1:{port}/console?token={TOKENS['moderator']}")
        page.wait_for_selector(f".arow[data-id='{first.id}']", timeout=15_000)
        with sqlite3.connect(s.store.path) as db:  # an empty WAL: the next commit needs new room (else it may fit in old pages)
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        disk.fill()
        why = "evidence not saved: cannot write evidence image: [Errno 28] No space left on device"
        ev = Evidence(kind="qr", text="https://spam.example/join", bbox=(10, 10, 90, 90), unsaved=why)
        held = [s.publish(alert("s1", 2.0 + i, "qr_code", Severity.HIGH, message=f"while full {i}", evidence=ev)) for i in range(3)]
        assert [h.id for h in held] == [0, 0, 0]  # not stored: delivered live, unsaved
        page.wait_for_function("document.querySelectorAll('#alerts .arow').length === 4", timeout=5_000)
        assert rows(page) == [-3, -2, -1, first.id]  # newest first, as they came
        page.click(".arow[data-id='-2']")
        page.wait_for_function("document.getElementById('ev-noframe').textContent.includes('证据图片未保存')", timeout=3_000)
        assert page.get_attribute("#ev-noframe", "title") == why and page.is_hidden("#ev-img")
        disk.free()
        for _ in range(100):  # stored with their ids once there is room
            if not s.bus.held:
                break
            time.sleep(0.1)
        stored = [e.message for e in s.store.events("s1") if isinstance(e, AlertEvent)]
        assert not s.bus.held and stored[1:] == [f"while full {i}" for i in range(3)]
        after = s.publish(alert("s1", 9.0, "contact_spam", Severity.LOW, message="after"))
        page.wait_for_selector(f".arow[data-id='{after.id}']", timeout=5_000)
        assert rows(page) == [after.id, -3, -2, -1, first.id]  # the held alerts are not shown a second time
        assert not errors, errors
        page.close()
    finally:
        s.close()


# --- with the daemon: RTMP in, real analysis, two moderators ------------------------------------------

# (seconds, kind, photo, caption, qr, expected rule): contact spam at 4 s, the publisher leaves at 12 s
TIMELINE = (
    (4, "drift", "astronaut", "", "", ""),
    (6, "drift", "coffee", "关注主播 加微信 xiaomei88 领福利", "", "contact_spam"),
    (4, "drift", "chelsea", "", "", ""),
    (8, "drift", "rocket", "", "", ""),
)
DAEMON_TOKENS = {"moderator": "desk-secret-1", "moderator2": "desk-secret-2", "submitter": "fan-secret-1"}


def submit(port: int, token: str, stream: str, user: str, text: str) -> dict[str, Any]:
    """A fan's picture (a real photo) through a submitter connection; returns its reply or rejection."""
    img = cv2.cvtColor(skdata.chelsea(), cv2.COLOR_RGB2BGR)
    b64 = base64.b64encode(cv2.imencode(".jpg", img)[1].tobytes()).decode()

    async def go() -> dict[str, Any]:
        async with connect(f"ws://127.0.0.1:{port}/ws?token={token}") as ws:
            await ws.recv()
            await ws.send(json.dumps({"type": "subscribe", "channels": ["replies"]}))
            await ws.recv()
            await ws.send(json.dumps({"type": "submit", "stream": stream, "image": b64, "user": user, "text": text}))
            assert json.loads(await ws.recv())["type"] == "accepted"
            return json.loads(await ws.recv())  # type: ignore[no-any-return]

    with ThreadPoolExecutor(1) as pool:  # Playwright's sync API owns this thread's event loop
        return pool.submit(asyncio.run, go()).result(60)


def start_daemon(tmp_path: Path, rtmp: str, *, listen: bool = True) -> tuple[subprocess.Popen[bytes], int, Path]:
    idle = f"rtmp://127.0.0.1:{free_port()}/live/idle"
    tokens = "".join(
        f'[[server.tokens]]\nname = "{name}"\nrole = "{"submitter" if name == "submitter" else "moderator"}"\nsecret = "{secret}"\n'
        for name, secret in DAEMON_TOKENS.items()
    )
    cfg = tmp_path / "streamwatch.toml"
    cfg.write_text(
        f'data_dir = "{tmp_path / "data"}"\n[server]\nport = 0\n{tokens}'
        f'[[streams]]\nid = "show"\nsource = "{rtmp}"\nlisten = {str(listen).lower()}\n'
        f'[[streams]]\nid = "idle"\nsource = "{idle}"\nlisten = true\n'
    )
    log = tmp_path / "daemon.log"
    with log.open("w") as out:  # a file, not a pipe: an unread pipe would block the daemon's logging
        daemon = subprocess.Popen([sys.executable, "-m", "streamwatch", "run", "-c", str(cfg)], stderr=out,
                                  env={**os.environ, "STREAMWATCH_LOG_LEVEL": "INFO"})  # fmt: skip
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        assert daemon.poll() is None, f"daemon exited: {log.read_text()[-3000:]}"
        m = re.search(r"serving http://127\.0\.0\.1:(\d+)", log.read_text())
        if m:
            return daemon, int(m.group(1)), log
        time.sleep(0.2)
    daemon.kill()
    pytest.fail(f"the daemon did not report its port: {log.read_text()[-3000:]}")


def test_console_with_the_daemon_over_rtmp(browser, nginx: Nginx, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    require_media_tools()
    ARTIFACTS.mkdir(exist_ok=True)
    clip = tmp_path / "show.mp4"
    write_concert_clip(clip, timeline=TIMELINE)
    # the daemon pulls the show from a media server: a publisher that goes away there is an outage
    # (in listen mode a publisher's unpublish ends the stream as `ended` instead)
    rtmp = nginx.rtmp("console-show")
    daemon, port, _log = start_daemon(tmp_path, rtmp, listen=False)
    publishers: list[subprocess.Popen[bytes]] = []
    ff = ["ffmpeg", "-nostdin", "-loglevel", "error"]
    try:
        a = browser.new_page(viewport={"width": 1280, "height": 720})
        b = browser.new_page(viewport={"width": 1920, "height": 1080})
        a.goto(f"http://127.0.0.1:{port}/console?token={DAEMON_TOKENS['moderator']}")
        b.goto(f"http://127.0.0.1:{port}/console?token={DAEMON_TOKENS['moderator2']}&lang=en")
        for page in (a, b):
            page.wait_for_selector("body[data-state=connected]", timeout=15_000)
            page.wait_for_selector("#wall .tile[data-stream=show][data-state=connecting]", timeout=15_000)
        assert a.get_attribute("#wall .tile[data-stream=idle]", "data-state") == "connecting"
        time.sleep(1.0)  # (probing the RTMP port would itself count as a publisher)

        publishers.append(subprocess.Popen([*ff, "-re", "-i", str(clip), "-t", "12", "-c", "copy", "-f", "flv", rtmp]))
        a.wait_for_selector("#wall .tile[data-stream=show][data-state=live]", timeout=20_000)
        a.wait_for_selector("#wall .tile[data-stream=show][data-frames]:not([data-frames='0'])", timeout=10_000)
        first = float(a.get_attribute("#wall .tile[data-stream=show]", "data-frame-offset"))
        a.wait_for_function(  # the picture follows the stream (a new analysed frame within a few seconds)
            f"Number(document.querySelector('#wall .tile[data-stream=show]').dataset.frameOffset) > {first}", timeout=6_000
        )

        row = "#alerts .arow[data-rule=contact_spam]"
        for page in (a, b):
            page.wait_for_selector(row, timeout=30_000)
        aid = int(a.get_attribute(row, "data-id"))
        a.click(f".arow[data-id='{aid}']")
        a.wait_for_function("document.getElementById('ev-img').naturalWidth > 0", timeout=10_000)
        a.wait_for_function("Number(document.getElementById('ev-box').getAttribute('width')) > 0", timeout=5_000)
        img, rect = a.locator("#ev-img").bounding_box(), a.locator("#ev-box").bounding_box()
        assert img["x"] - 2 <= rect["x"] and rect["x"] + rect["width"] <= img["x"] + img["width"] + 2  # the caption box, inside the frame
        assert rect["y"] > img["y"] + img["height"] / 2  # the caption band is in the lower half of the picture
        assert "xiaomei88" in a.inner_text("#d-text").replace(" ", "")

        a.keyboard.press("c")  # confirm with the keyboard; the other moderator sees it within a second
        b.wait_for_selector(f".arow[data-id='{aid}'][data-review=confirm]", timeout=1_000)
        assert "moderator" in b.inner_text(f".arow[data-id='{aid}'] .rv")

        # the publisher stops at 12 s: outage; it comes back: live again
        a.wait_for_selector("#wall .tile[data-stream=show][data-state=outage]", timeout=30_000)
        b.wait_for_selector("#wall .tile[data-stream=show][data-state=outage]", timeout=5_000)
        time.sleep(1.0)
        publishers.append(subprocess.Popen([*ff, "-ss", "12", "-re", "-i", str(clip), "-c", "copy", "-f", "flv", rtmp]))
        a.wait_for_selector("#wall .tile[data-stream=show][data-state=live]", timeout=30_000)

        reply = submit(port, DAEMON_TOKENS["submitter"], "show", "小明", "看我的猫")
        assert reply["type"] == "reply", reply
        b.click("#tabs button[data-tab=audience]")
        b.wait_for_selector(f"#aud-list .sub[data-id='{reply['id']}']", timeout=10_000)
        b.wait_for_function(f"document.querySelector(\"#aud-list .sub[data-id='{reply['id']}'] img\").naturalWidth > 0", timeout=10_000)
        assert reply["text"] in b.inner_text(f"#aud-list .sub[data-id='{reply['id']}']")
        b.screenshot(path=str(ARTIFACTS / "console-audience.png"))
        b.click("#tabs button[data-tab=timeline]")
        b.select_option("#tl-stream", "show")
        b.wait_for_selector("#tl-body .tl-period[data-kind=outage]", timeout=5_000)
        b.screenshot(path=str(ARTIFACTS / "console-timeline.png"))

        a.click(f".arow[data-id='{aid}']")
        a.wait_for_function("Number(document.getElementById('ev-box').getAttribute('width')) > 0", timeout=5_000)
        time.sleep(2.5)  # a fresh picture on the wall
        layout_ok(a)
        a.screenshot(path=str(ARTIFACTS / "console-daemon.png"))
        ids = rows(a)
        assert len(ids) == len(set(ids))
        a.close()
        b.close()
    finally:
        for p in publishers:
            stop(p)
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(30)
        except subprocess.TimeoutExpired:
            daemon.kill()


def test_admin_models_panel_switches_and_live_qa(browser, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A running daemon with two OpenAI-compatible test servers: the admin's Models panel shows the role
    chains and requests, switches qa to the other model and shows the result; Q&A from the console; a model
    that fails shows in the model health list (breaker open, the role falling back, unusable output)."""
    import threading

    from chat_server import ChatServer

    from streamwatch.app import Daemon
    from streamwatch.config import load_settings

    with ChatServer(lambda r: "from A") as a, ChatServer(lambda r: "from B", slow_s=0.3) as b:
        models = [
            {"id": mid, "backend": "openai", "endpoint": srv.url, "model_name": mid, "capabilities": ["qa", "reply"]}
            for mid, srv in (("a", a), ("b", b))
        ]
        registry = tmp_path / "registry.json"
        registry.write_text(json.dumps({"models": models, "roles": {"qa": ["a", "local"]}}))
        settings = load_settings(
            None,
            {
                "data_dir": tmp_path / "d",
                "streams": [{"id": "s", "source": f"rtmp://127.0.0.1:{free_port()}/live/x", "listen": True}],
                "server": {"port": 0, "tokens": [{"name": f"{r}-client", "role": r, "secret": s} for r, s in TOKENS.items()]},
                "analysis": {"analyzers": ["qr"]},
                "vlm": {"registry": registry, "min_switch_interval_s": 60},
            },
        )
        daemon = Daemon(settings)
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=lambda: loop.run_until_complete(daemon.run()), daemon=True)
        thread.start()
        try:
            deadline = time.monotonic() + 30
            while not daemon.ready.is_set():
                assert time.monotonic() < deadline and thread.is_alive()
                time.sleep(0.05)
            assert daemon.server is not None
            port = daemon.server.port
            status, _, body = get(port, "/models", TOKENS["admin"])
            info = json.loads(body)
            assert status == 200 and info["chains"]["qa"] == ["a", "local"] and {"a", "b", "local"} <= set(info["models"])

            mod = browser.new_page(viewport={"width": 1280, "height": 720})
            mod.goto(f"http://127.0.0.1:{port}/console?token={TOKENS['moderator']}&lang=en")
            mod.wait_for_selector("body[data-state=connected]", timeout=15_000)
            assert not mod.locator("#tabs button[data-tab=models]").is_visible()  # admins only
            mod.click("#tabs button[data-tab=audience]")
            mod.wait_for_selector("#ask-stream option[value=s]", state="attached", timeout=10_000)
            mod.select_option("#ask-stream", "s")
            mod.fill("#ask-q", "who is on stage?")
            mod.click("#ask-form button")
            mod.wait_for_selector("#qa-list .qa", timeout=20_000)
            assert "from A" in mod.inner_text("#qa-list .qa")

            adm = browser.new_page(viewport={"width": 1280, "height": 720})
            adm.goto(f"http://127.0.0.1:{port}/console?token={TOKENS['admin']}&lang=en")
            adm.wait_for_selector("body[data-state=connected][data-role=admin]", timeout=15_000)
            adm.click("#tabs button[data-tab=models]")
            adm.wait_for_selector("#models-table tr[data-role=qa]", timeout=10_000)
            assert adm.inner_text("#models-table tr[data-role=qa] .chain b") == "a"
            adm.wait_for_selector("#models-requests td", timeout=10_000)
            assert "ok 1" in adm.inner_text("#models-requests")  # the question above, served by a
            adm.select_option("#sw-role", "qa")
            adm.select_option("#sw-model", "b")
            adm.click("#switch-form button")
            adm.wait_for_selector("#sw-status[data-result=switched]", timeout=30_000)
            assert "a → b" in adm.inner_text("#sw-status")
            adm.wait_for_function("document.querySelector('#models-table tr[data-role=qa] .chain b').textContent === 'b'", timeout=10_000)
            adm.select_option("#sw-model", "a")  # too soon after the last switch: refused, with the reason
            adm.click("#switch-form button")
            adm.wait_for_selector("#sw-status[data-result=error]", timeout=10_000)
            assert "allowed in" in adm.inner_text("#sw-status")
            assert adm.locator("#sw-log li").count() == 2 and "a → b" in adm.inner_text("#sw-log li.switched")
            assert adm.inner_text("#models-health") == "no model failures"  # a switch is no failure
            # b answers two questions with a body that is no chat completion (each tried twice): its breaker
            # opens, a answers them, and the Models tab lists why (the moderator's answers come from a)
            b.script = ["garbage"] * 4
            for n, q in enumerate(("still there?", "and now?"), start=2):
                mod.fill("#ask-q", q)
                mod.click("#ask-form button")
                mod.wait_for_function(f"document.querySelectorAll('#qa-list .qa').length >= {n}", timeout=30_000)
            assert mod.locator("#qa-list .qa", has_text="from A").count() == 3
            adm.wait_for_selector("#models-health li.failing", timeout=15_000)
            health = adm.inner_text("#models-health")
            assert "b: circuit open" in health and "qa: falls back from b to a" in health and "unusable answers" in health
            adm.screenshot(path=str(ARTIFACTS / "console-models.png"))
            mod.close()
            adm.close()
        finally:
            loop.call_soon_threadsafe(daemon.stop)
            thread.join(30)


def test_search_tab_finds_frames_with_the_encoder(browser, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """With a vision encoder (a tiny CLIP exported to ONNX), Search asks /search and shows the frames."""
    pytest.importorskip("torch")
    import tiny_encoder

    from streamwatch.analysis.encoder import Encoder, index_frame
    from streamwatch.analysis.encoder_export import export_encoder, sample_images
    from streamwatch.analysis.search import FrameSearch, hit_json

    export_encoder(str(tiny_encoder.build(tmp_path / "ckpt", "clip")), tmp_path / "enc", name="tiny-clip", exporter="legacy")
    enc = Encoder(tmp_path / "enc", device="cpu")
    with ServerThread(tmp_path / "d") as s:
        now = time.time()  # frames of a show running now: nothing here depends on when housekeeping runs
        for i, img in enumerate(sample_images(4)):
            fa = FrameAnalysis("s1", float(i * 10), now - 40 + i * 10, now - 40 + i * 10, (), 1, 1, embedding=enc.embed_images([img])[0])
            index_frame(s.store, fa, img, "tiny-clip")
        fs = FrameSearch(enc, s.store)
        s.server._http.search = lambda q, st, n: [hit_json(h) for h in fs.search(q, stream=st, limit=n)]
        page = browser.new_page(viewport={"width": 1280, "height": 720})
        page.goto(f"http://127.0.0.1:{s.port}/console?token={TOKENS['moderator']}")
        page.wait_for_selector("body[data-state=connected]", timeout=15_000)
        page.click("#tabs button[data-tab=search]")
        page.fill("#search-q", "一只猫")
        page.click("#search-form button")
        page.wait_for_selector("#search-mode[data-mode=encoder]", timeout=20_000)
        page.wait_for_function("document.querySelectorAll('#search-results .hit').length === 4", timeout=10_000)
        page.wait_for_function("[...document.querySelectorAll('#search-results .hit img')].every(i => i.naturalWidth > 0)", timeout=10_000)
        assert "s1 · 00:00:" in page.inner_text("#search-results")
        page.close()
