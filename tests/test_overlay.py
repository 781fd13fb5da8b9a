"""The overlay page in real headless Chromium (Playwright, system chromium): replies, moderator view, resume."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import pytest
from conftest import free_port
from evserver import TOKENS, EchoResponder, ServerThread, alert
from skimage import data as skdata
from websockets.asyncio.client import connect

from streamwatch.events.model import RejectedEvent, ReplyEvent, ReviewEvent
from streamwatch.server.submit import Submission

ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or "/usr/bin/chromium"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]  # fmt: skip


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is not installed: apt-get install chromium (the .ci/run script does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        yield b
        b.close()


def submit_image(port: int, user: str, text: str) -> dict:
    img = cv2.cvtColor(skdata.chelsea(), cv2.COLOR_RGB2BGR)
    b64 = base64.b64encode(cv2.imencode(".jpg", img)[1].tobytes()).decode()

    async def go() -> dict:
        async with connect(f"ws://127.0.0.1:{port}/ws?token={TOKENS['submitter']}") as ws:
            await ws.recv()
            await ws.send(json.dumps({"type": "subscribe", "channels": ["replies"]}))
            await ws.recv()
            await ws.send(json.dumps({"type": "submit", "stream": "s1", "image": b64, "user": user, "text": text}))
            assert json.loads(await ws.recv())["type"] == "accepted"
            return json.loads(await ws.recv())  # type: ignore[no-any-return]

    with ThreadPoolExecutor(1) as pool:  # Playwright's sync API owns this thread's event loop
        return pool.submit(asyncio.run, go()).result(30)


def test_overlay_shows_replies_as_cards(browser, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ARTIFACTS.mkdir(exist_ok=True)
    with ServerThread(tmp_path / "d", responder=EchoResponder()) as s:
        page = browser.new_page(viewport={"width": 1920, "height": 1080})
        page.goto(f"http://127.0.0.1:{s.port}/overlay?token={TOKENS['overlay']}&stream=s1&card_s=6")
        page.wait_for_selector("body[data-state=connected]", timeout=10_000)
        reply = submit_image(s.port, "小明", "看我的猫")
        card = page.wait_for_selector(f".card[data-id='{reply['id']}']", timeout=10_000)
        assert card is not None
        assert "小明" in card.inner_text() and "picture" in card.inner_text()
        page.wait_for_function(f"document.querySelector(\".card[data-id='{reply['id']}'] img\").naturalWidth > 0", timeout=10_000)
        assert page.evaluate("getComputedStyle(document.body).backgroundColor") == "rgba(0, 0, 0, 0)"  # transparent for OBS
        sel = f".card[data-id='{reply['id']}']"
        page.wait_for_function(f'document.querySelector("{sel}").getBoundingClientRect().right < 1800', timeout=10_000)
        page.screenshot(path=str(ARTIFACTS / "overlay.png"), omit_background=True)
        page.close()


def test_moderator_view_confirms_and_resumes_after_restart_without_duplicates(browser, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ARTIFACTS.mkdir(exist_ok=True)
    port = free_port()
    data = tmp_path / "d"
    s = ServerThread(data, port=port)
    try:
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.goto(f"http://127.0.0.1:{port}/overlay?token={TOKENS['moderator']}&mode=mod")
        page.wait_for_selector("body[data-state=connected]", timeout=10_000)
        first = [s.publish(alert(offset=10.0 + i, message=f"spam {i}")) for i in range(3)]
        page.wait_for_selector(f".alert[data-id='{first[-1].id}']", timeout=10_000)
        page.click(f".alert[data-id='{first[0].id}'] button.confirm")
        page.wait_for_selector(f".alert[data-id='{first[0].id}'][data-review=confirm]", timeout=10_000)
        reviews = [e for e in s.store.events("s1") if isinstance(e, ReviewEvent)]
        assert [(r.alert_id, r.action.value, r.by) for r in reviews] == [(first[0].id, "confirm", "moderator-client")]
        page.screenshot(path=str(ARTIFACTS / "moderator.png"))

        s.close()  # the page notices and retries with backoff
        page.wait_for_selector("body[data-state=reconnecting]", timeout=10_000)
        s = ServerThread(data, port=port)
        later = s.publish(alert(offset=99.0, message="after restart"))
        page.wait_for_selector(f".alert[data-id='{later.id}']", timeout=20_000)
        ids = page.eval_on_selector_all(".alert", "els => els.map(e => Number(e.dataset.id))")
        assert sorted(ids) == [e.id for e in first] + [later.id]  # resumed with since: nothing twice, nothing lost
        assert page.evaluate("window.__streamwatch.lastId") == later.id
        page.close()
    finally:
        s.close()


class TextResponder(EchoResponder):
    """Replies with the fan's own text when there is one (to lay out chosen sentences), else like EchoResponder."""

    async def reply(self, submission: Submission) -> ReplyEvent | RejectedEvent:
        event = await super().reply(submission)
        if isinstance(event, ReplyEvent) and submission.text:
            return dataclasses.replace(event, text=submission.text)
        return event


CARD_METRICS = """id => {
  const card = document.querySelector(`.card[data-id='${id}']`), text = card.querySelector('.text');
  const range = document.createRange(); range.selectNodeContents(text);
  const lines = [...range.getClientRects()].map(r => r.width);
  const lh = parseFloat(getComputedStyle(text).lineHeight);
  return {card: card.getBoundingClientRect().width, width: text.clientWidth, height: text.clientHeight, lh,
          clipped: text.scrollHeight > text.clientHeight + 1, lines};
}"""


def test_danmaku_cards_keep_their_natural_width_and_wrap_chinese_by_character(browser, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """At 1920×1080 a short reply is one line at its natural width (the card was ~270 px wide, one word a
    line, because it took its width from the space left at its off-screen start); a long Chinese reply
    fills its lines character by character; a very long one is clamped to two lines."""
    ARTIFACTS.mkdir(exist_ok=True)
    long_zh = "谢谢小明的画！今晚的舞台也会闪闪发光的，你画的猫咪眼睛好亮，下一首歌就唱给你听哦"  # 40 characters: two lines
    longest = "超长的回复" * 40 + " with some English words in it that go on and on " * 3
    with ServerThread(tmp_path / "d", responder=TextResponder()) as s:
        page = browser.new_page(viewport={"width": 1920, "height": 1080})
        page.goto(f"http://127.0.0.1:{s.port}/overlay?token={TOKENS['overlay']}&stream=s1&card_s=30")
        page.wait_for_selector("body[data-state=connected]", timeout=10_000)
        short = submit_image(s.port, "小明", "")  # "小明 sent a 451×300 picture"
        zh = submit_image(s.port, "小红", long_zh)
        clamp = submit_image(s.port, "小刚", longest)
        got = {}
        for name, reply in (("short", short), ("zh", zh), ("clamp", clamp)):
            page.wait_for_selector(f".card[data-id='{reply['id']}']", timeout=10_000)
            got[name] = page.evaluate(CARD_METRICS, reply["id"])
        short_m, zh_m, clamp_m = got["short"], got["zh"], got["clamp"]
        assert len(short_m["lines"]) == 1 and short_m["height"] <= 1.5 * short_m["lh"], short_m  # one line
        assert short_m["card"] > 450, short_m  # its natural width, not the ~270 px squeeze
        assert len(zh_m["lines"]) == 2 and zh_m["height"] <= 2.5 * zh_m["lh"], zh_m
        assert zh_m["lines"][0] >= 0.95 * zh_m["width"], zh_m  # the first line is full: broken by character
        assert zh_m["card"] <= 1000, zh_m
        assert clamp_m["height"] <= 2.5 * clamp_m["lh"] and clamp_m["clipped"], clamp_m  # clamped to two lines
        assert clamp_m["card"] <= 1000, clamp_m
        page.wait_for_function(
            f"document.querySelector(\".card[data-id='{clamp['id']}']\").getBoundingClientRect().right < 1900", timeout=20_000
        )
        page.screenshot(path=str(ARTIFACTS / "overlay-cards.png"), omit_background=True)
        page.close()
