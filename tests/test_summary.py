"""The post-show summary (图文摘要) and the fan-art collage: on the concert clip's real store, with the
local template and with a real OpenAI-compatible server; frames from alert periods are never picked;
banned words in the model's text are regenerated or templated; the collage holds exactly the replied images."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
import pytest
from chat_server import ChatServer

from streamwatch.analysis.policy import load_policy
from streamwatch.analysis.rules import text_is_clean
from streamwatch.cli import main
from streamwatch.config import default_policy
from streamwatch.events.model import AlertEvent, RejectedEvent, ReplyEvent
from streamwatch.events.store import EventStore
from streamwatch.report.post import write_summary
from streamwatch.report.summary import ALERT_AFTER_S, ALERT_BEFORE_S, parse_post, pick_frames
from streamwatch.vlm.registry import Registry, RegistrySpec
from streamwatch.vlm.router import ModelRouter
from streamwatch.vlm.service import VLMService

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
from make_concert_clip import write_concert_clip


@pytest.fixture(scope="module")
def show(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """The concert clip analysed into a store (the demo's data)."""
    d = tmp_path_factory.mktemp("show")
    clip = d / "concert.mp4"
    labels = write_concert_clip(clip)
    assert main(["analyze", str(clip), "-o", str(d / "r.json"), "--data", str(d / "data"), "-q"]) == 0
    return d / "data", labels


def alert_windows(store: EventStore) -> list[tuple[float, float]]:
    return [(a.offset - ALERT_BEFORE_S, a.offset + ALERT_AFTER_S) for a in store.events("recording") if isinstance(a, AlertEvent)]


def test_template_summary_of_the_concert_clip_never_shows_an_alert(show: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    data, labels = show
    out = tmp_path / "sum"
    assert main(["summary", "recording", "--data", str(data), "-o", str(out), "--template"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    picked = [f["offset"] for f in summary["frames"]]
    assert len(picked) >= 3 and picked == sorted(picked)
    store = EventStore(data)
    try:
        windows = alert_windows(store)
    finally:
        store.close()
    # no frame from an alert's moment, and none from a planted event's whole scene (spam, brand, QR, black, frozen)
    assert not [p for p in picked for a, b in windows if a <= p <= b]
    scenes = labels["scenes"]
    for p in picked:
        scene = next(s for s in scenes if s["start"] <= p < s["end"])
        assert scene["expect"] in ("", "sponsor"), (p, scene)
    assert summary["excluded_frames"] >= 3
    for f in summary["frames"]:
        img = cv2.imread(str(out / f["file"]))
        assert img is not None and img.std() > 10  # a real picture: not black, not uniform
    post = summary["post"]
    assert post["model"] == "local" and post["title"] and post["hashtags"]
    assert text_is_clean(load_policy(default_policy()), "recording", post["text"])
    md = (out / "summary.md").read_text()
    assert post["title"] in md and all(f["file"] in md for f in summary["frames"])
    assert "post-summary" in (out / "summary.html").read_text()
    # the same section in the HTML report, frames embedded
    assert main(["report", "recording", "--data", str(data), "-o", str(tmp_path / "r.html")]) == 0
    html = (tmp_path / "r.html").read_text()
    section = html[html.index("id='post-summary'") :]
    assert section.count("data:image/jpeg;base64,") == len(picked) and post["title"] in section


def registry(url: str) -> Registry:
    model = {"id": "writer", "backend": "openai", "endpoint": url, "model_name": "writer", "capabilities": ["summary"]}
    return Registry(RegistrySpec.model_validate({"models": [model], "roles": {"summary": ["writer", "local"]}}))


def summarize(data: Path, out: Path, answers: list[str]) -> tuple[Any, ChatServer]:
    it = iter(answers)
    with ChatServer(lambda r: next(it)) as srv:

        async def go() -> Any:
            router = ModelRouter(registry(srv.url))
            router.start()
            store = EventStore(data)
            try:
                return await write_summary(store, "recording", out, service=VLMService(router), policy=load_policy(default_policy()))
            finally:
                store.close()
                await router.close()

        return asyncio.run(go()), srv


def test_the_summary_role_writes_the_post_from_the_frames_and_timeline(show: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    data, _ = show
    answer = "星光之夜完美落幕\n今晚的舞台灯光璀璨，猫咪和宇航员都来捧场，感谢大家一路陪伴！\n#直播回顾# #星光之夜# #虚拟偶像#"
    result, srv = summarize(data, tmp_path / "s", [answer])
    assert result.post.model == "writer" and result.post.title == "星光之夜完美落幕"
    assert result.post.hashtags == ("直播回顾", "星光之夜", "虚拟偶像")
    body = srv.requests[0]
    user = body["messages"][-1]["content"]
    images = [p for p in user if p["type"] == "image_url"]
    prompt = next(p["text"] for p in user if p["type"] == "text")
    assert len(images) == len(result.frames) >= 3  # the picked frames go with the question
    assert "Length: 00:01:0" in prompt and "Moments shown: 00:00:00" in prompt  # the timeline
    assert f"These {len(images)} images are moments" in prompt
    assert "Chinese" in body["messages"][0]["content"]
    saved = json.loads((tmp_path / "s" / "summary.json").read_text())
    assert saved["post"]["model"] == "writer" and saved["post"]["body"].startswith("今晚的舞台")


def test_a_banned_word_in_the_models_text_is_regenerated_then_templated(show: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    data, _ = show
    spam = "福利来啦\n想要更多现场照片请加微信 idol8888 领取\n#直播#"
    clean = "完美的一晚\n谢谢每一位来看的朋友，我们下次见！\n#直播回顾#"
    result, srv = summarize(data, tmp_path / "a", [spam, clean])
    assert result.post.model == "writer" and "微信" not in result.post.text() and len(srv.requests) == 2  # asked again once
    result, srv = summarize(data, tmp_path / "b", [spam, spam])
    assert result.post.model == "local" and "微信" not in result.post.text()  # then the template
    result, _ = summarize(data, tmp_path / "c", ["no title only", "\n\n"])
    assert result.post.model == "local"  # unusable answers: the template too


def jpeg(color: tuple[int, int, int], size: tuple[int, int] = (200, 150)) -> bytes:
    img = np.zeros((size[1], size[0], 3), np.uint8)
    img[:] = color
    cv2.putText(img, "art", (20, 80), cv2.FONT_HERSHEY_SIMPLEX, 1.5, (255, 255, 255), 3)
    return cv2.imencode(".jpg", img)[1].tobytes()


def test_the_collage_holds_exactly_the_replied_images(tmp_path: Path) -> None:
    store = EventStore(tmp_path / "d")
    now = time.time()
    colors = {"小明": (0, 160, 0), "Alice": (0, 0, 200), "阿花": (200, 200, 0)}  # BGR: green, red, cyan-ish
    for i, (user, bgr) in enumerate(colors.items()):
        path = store.save_image("show", jpeg(bgr))
        store.add(
            ReplyEvent(
                stream="show", at=now + i, offset=10.0 + i, submission=f"s{i}", submitter="danmaku", text="好可爱！", user=user, image=path
            )
        )
    store.add(
        RejectedEvent(stream="show", at=now + 5, offset=20.0, submission="bad", submitter="danmaku", reason="contact_spam", user="spammer")
    )
    store.save_image("show", jpeg((255, 0, 255)))  # a rejected image's file: never in the collage

    async def go() -> Any:
        try:
            return await write_summary(
                store, "show", tmp_path / "out", service=None, policy=load_policy(default_policy()), with_slideshow=True
            )
        finally:
            store.close()

    result = asyncio.run(go())
    assert result.replied == 3 and result.collage is not None
    img = cv2.imread(str(result.collage))
    assert img is not None
    for bgr in colors.values():  # each replied image is in it
        assert (np.abs(img.astype(int) - np.array(bgr)).sum(2) < 40).sum() > 2000
    assert (np.abs(img.astype(int) - np.array((255, 0, 255))).sum(2) < 40).sum() < 50  # the rejected one is not
    with av.open(str(tmp_path / "out" / "slideshow.mp4")) as c:
        assert c.streams.video[0].frames >= 3 * 20 - 2  # 2 s per image at 10 fps
    saved = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert saved["collage"] == "collage.jpg" and saved["replies"] == 3


def test_bad_inputs_get_clear_errors(show: tuple[Path, dict[str, Any]], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data, _ = show
    assert main(["summary", "nosuch", "--data", str(data), "-o", str(tmp_path / "x"), "--template"]) == 1
    assert "no events for stream 'nosuch'" in capsys.readouterr().err and "recording" not in str(list(tmp_path.iterdir()))
    assert main(["summary", "recording", "--data", str(tmp_path / "empty"), "--template"]) == 1
    assert "no event store" in capsys.readouterr().err
    assert main(["summary", "recording", "--data", str(data), "--frames", "0"]) == 1
    assert "--frames" in capsys.readouterr().err


def test_pick_frames_spreads_over_distinct_scenes() -> None:
    from streamwatch.events.store import IndexedFrame

    rng = np.random.default_rng(3)
    centers = [rng.normal(size=64) for _ in range(4)]
    frames = []
    for i in range(40):  # 4 scenes, 10 near-identical frames each
        v = centers[i % 4] + rng.normal(scale=0.05, size=64)
        frames.append(IndexedFrame(i, "s", float(i), 0.0, f"t{i}.jpg", "m", (), (v / np.linalg.norm(v)).astype(np.float32)))
    picks = pick_frames(frames, 4)
    assert sorted(int(f.offset) % 4 for f in picks) == [0, 1, 2, 3]
    assert pick_frames(frames[:1], 6) == frames[:1] and pick_frames([], 3) == []
    assert parse_post("标题\n正文 #标签# #second\n", "m") is not None and parse_post("only one line", "m") is None
