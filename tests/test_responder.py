"""Audience images and live Q&A with the local backend: input safety through the real analyzers and
policy, persona replies, duplicates, output safety; over a real WebSocket."""

from __future__ import annotations

import asyncio
import base64
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from evserver import ServerThread
from test_analyzers import caption, qr_png, rgb
from websockets.asyncio.client import connect

from streamwatch.analysis.base import create
from streamwatch.analysis.cascade import Cascade
from streamwatch.analysis.detectors import AnalyzerSettings
from streamwatch.analysis.model import AnalyzedFrame, Detection, FrameAnalysis
from streamwatch.analysis.policy import load_policy
from streamwatch.errors import ConfigError
from streamwatch.vlm.persona import load_persona
from streamwatch.vlm.responder import AudienceResponder

MODELS = Path(__file__).resolve().parent.parent / "models"


def b64(img_rgb: np.ndarray) -> str:
    return base64.b64encode(cv2.imencode(".jpg", cv2.cvtColor(img_rgb, cv2.COLOR_RGB2BGR))[1].tobytes()).decode()


@pytest.fixture
def responder_server(tmp_path: Path):  # type: ignore[no-untyped-def]
    analyzers = [create(n, AnalyzerSettings(device="cpu")) for n in ("nudity", "ocr", "qr")]
    pool = ThreadPoolExecutor(2)
    policy = load_policy(MODELS / "policy.toml")
    fa = FrameAnalysis("s1", 12.0, 0, 0, (Detection("ocr", "text", 0.9, (0, 0, 9, 9), "今晚的主题是星空"),), 640, 360)
    latest = {"s1": AnalyzedFrame(fa, np.zeros((360, 640, 3), np.uint8))}
    persona = load_persona(MODELS / "personas/xingmiao.toml")
    holder: dict[str, Any] = {}

    async def make() -> AudienceResponder:
        cascade = Cascade(analyzers, pool)
        holder["cascade"] = cascade
        return AudienceResponder(cascade, lambda _s: policy, persona, latest=latest.get)

    loop = asyncio.new_event_loop()
    responder = loop.run_until_complete(make())
    loop.close()
    with ServerThread(tmp_path / "d", responder=responder) as s:
        yield s
    pool.shutdown()


async def submit(ws: Any, image: str, ref: str) -> dict[str, Any]:
    await ws.send(json.dumps({"type": "submit", "stream": "s1", "image": image, "user": "小明", "text": "送给星喵", "ref": ref}))
    accepted = json.loads(await ws.recv())
    assert accepted["type"] == "accepted", accepted
    async with asyncio.timeout(30):
        while True:
            ev = json.loads(await ws.recv())
            if ev.get("submission") == accepted["submission"]:
                return ev  # type: ignore[no-any-return]


def test_audience_images_are_screened_then_answered_in_persona(responder_server: ServerThread) -> None:
    s = responder_server
    spam = caption("加微信 xiaomei88 领福利")
    scene = cv2.resize(rgb("coffee"), (640, 360)).copy()
    code = qr_png("https://evil.example/x")
    scene[20 : 20 + code.shape[0], 20 : 20 + code.shape[1]] = code

    async def go() -> None:
        async with connect(s.ws_url("submitter")) as ws:
            await ws.recv()
            await ws.send(json.dumps({"type": "subscribe", "channels": ["replies"]}))
            await ws.recv()
            reply = await submit(ws, b64(rgb("chelsea")), "cat")
            assert reply["type"] == "reply" and reply["persona"] == "xingmiao" and reply["model"] == "local"
            assert "送给星喵" in reply["text"] and reply["image"].startswith("/frames/")
            again = await submit(ws, b64(rgb("chelsea")), "cat-again")
            assert again["type"] == "rejected" and again["reason"] == "duplicate"
            bad = await submit(ws, b64(spam), "spam")
            assert bad["type"] == "rejected" and bad["reason"] == "contact_spam"
            qr = await submit(ws, b64(scene), "qr")
            assert qr["type"] == "rejected" and qr["reason"] == "qr_code"
        async with connect(s.ws_url("moderator")) as mod:
            await mod.recv()
            await mod.send(json.dumps({"type": "subscribe", "channels": ["answers"]}))
            await mod.recv()
            await mod.send(json.dumps({"type": "ask", "stream": "s1", "question": "屏幕上写了什么？", "ref": "q1"}))
            assert json.loads(await mod.recv())["type"] == "accepted"
            answer = json.loads(await mod.recv())
            assert answer["type"] == "answer" and "今晚的主题是星空" in answer["text"] and answer["ref"] == "q1"

    asyncio.run(go())


def test_persona_errors_name_the_field(tmp_path: Path) -> None:
    p = tmp_path / "bad.toml"
    p.write_text('id = "x"\nname = "X"\nreply_length = 9000\n')
    with pytest.raises(ConfigError, match=r"reply_length \(line 3\)"):
        load_persona(p)
    assert load_persona(MODELS / "personas/xingmiao.toml").name == "星喵"

